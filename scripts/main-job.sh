#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (as root):
#   1. installs the system parts that are missing (Debian: docker-registry, busybox-static, podman);
#   2. builds hoist;
#   3. starts the CNCF registry on 127.0.0.1:5000 unless one answers there;
#   4. makes a busybox root filesystem for the example's base;
#   5. builds examples/hello with hoist and pushes it to the registry;
#   6. runs the pushed image by digest with podman, as the build's output says.
set -euo pipefail
cd "$(dirname "$0")/.."
registry=127.0.0.1:5000
image=$registry/hoist/hello:latest

. scripts/lib.sh
install_missing docker-registry busybox-static podman runc curl ca-certificates

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

./scripts/busybox-rootfs.sh examples/hello/rootfs.tar

"$hoist" build -t "$image" --push --iidfile /tmp/hoist-main-job.iid --metadata-file /tmp/hoist-main-job.json examples/hello
digest=$(sed -n 's/.*"containerimage.digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' /tmp/hoist-main-job.json)
[ -n "$digest" ] || { echo "main-job: no digest in the metadata file" >&2; exit 1; }

# podman as this kind of machine needs it: runc (crun fails on its hybrid cgroups), a registry
# that is plain HTTP on loopback, no CNI network, and an open-files hard limit below podman's
# default (no CAP_SYS_RESOURCE).
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
echo "main-job: podman run --rm ${image%:*}@$digest"
podman --runtime runc run --rm --tls-verify=false --network none \
  --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" "${image%:*}@$digest"
