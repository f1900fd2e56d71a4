#!/usr/bin/env bash
# Runs hoist's test suite on this machine, installing what the tests need first.
# Idempotent: it installs only what is missing. Needs root (the sandbox tests use namespaces,
# mounts and cgroups; the image tests start a real registry).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
install_missing "${TEST_PACKAGES[@]}"

cargo test --workspace --locked --no-fail-fast "$@"
