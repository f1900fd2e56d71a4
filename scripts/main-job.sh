#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (as root):
#   1. installs the system parts that are missing (Debian: docker-registry, busybox-static, podman,
#      slirp4netns for the RUN steps' default network);
#   2. builds hoist;
#   3. starts the CNCF registry on 127.0.0.1:5000 unless one answers there;
#   4. builds and pushes a busybox base image (examples/busybox: FROM scratch, ADD of a root
#      filesystem made from Debian's busybox-static);
#   5. builds and pushes examples/hello, a small multi-stage app on that base;
#   6. runs the pushed app by digest with `hoist run`, and with podman when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
registry=127.0.0.1:5000
base=$registry/hoist/busybox:latest
image=$registry/hoist/hello:latest

. scripts/lib.sh
install_missing docker-registry busybox-static podman runc curl ca-certificates slirp4netns

cargo build --release --locked -q
hoist=$PWD/target/release/hoist

if ! curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
  state=/var/tmp/hoist-main-job-registry
  mkdir -p "$state/data"
  cat > "$state/config.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $state/data
  delete:
    enabled: true
http:
  addr: $registry
YAML
  echo "main-job: starting the registry on $registry (log: $state/registry.log)"
  setsid -f sh -c "echo \$\$ > $state/registry.pid; exec /usr/bin/docker-registry serve $state/config.yml" \
    >"$state/registry.log" 2>&1
  for _ in $(seq 50); do curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://$registry/v2/" >/dev/null
fi

./scripts/busybox-rootfs.sh examples/busybox/rootfs.tar
echo "main-job: building the base image $base"
"$hoist" build -t "$base" --push examples/busybox

echo "main-job: building the app $image"
"$hoist" build -t "$image" --push --build-arg "BASE=$base" \
  --metadata-file /tmp/hoist-main-job.json examples/hello
digest=$(sed -n 's/.*"containerimage.digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' /tmp/hoist-main-job.json)
[ -n "$digest" ] || { echo "main-job: no digest in the metadata file" >&2; exit 1; }
pinned=${image%:*}@$digest

echo "main-job: hoist run --rm $pinned"
"$hoist" run --rm "$pinned"

if command -v podman >/dev/null; then
  # podman as this kind of machine needs it: runc (crun fails on its hybrid cgroups), a registry
  # that is plain HTTP on loopback, no CNI network, and an open-files hard limit below podman's
  # default (no CAP_SYS_RESOURCE).
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  echo "main-job: podman run --rm $pinned"
  podman --runtime runc run --rm --tls-verify=false --network none \
    --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" "$pinned"
fi
