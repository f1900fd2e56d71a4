#!/usr/bin/env bash
# Runs hoist's test suite on this machine, installing what the tests need first.
# Idempotent: it installs only what is missing. Needs root (the sandbox tests use namespaces,
# mounts and cgroups; the image tests start a real registry).
set -euo pipefail
cd "$(dirname "$0")/.."

# System parts the tests use, from Debian's packages.
packages=(ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

cargo test --workspace --locked "$@"
