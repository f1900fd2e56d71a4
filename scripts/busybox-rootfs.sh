#!/usr/bin/env bash
# Writes a busybox root filesystem as a tar: the static busybox from Debian's busybox-static,
# its applet links, /etc/passwd and /etc/group with root and nobody, and /tmp. This is how the
# project makes base images without an internet registry (see ../shared/DESIGN.md).
# Usage: scripts/busybox-rootfs.sh OUT.tar
set -euo pipefail
out=${1:?usage: $0 OUT.tar}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "busybox-rootfs.sh: $busybox missing: apt-get install busybox-static" >&2; exit 1; }
dir=$(mktemp -d)
chmod 755 "$dir"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir"/{bin,etc,tmp,root,proc,sys,dev,var/tmp}
chmod 1777 "$dir/tmp" "$dir/var/tmp"
cp "$busybox" "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
# Fixed owner and mtime, sorted names: the same busybox gives the same tar.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@946684800 -C "$dir" -cf "$out" .
