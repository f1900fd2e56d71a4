# Shared by the scripts: installs Debian packages that are missing, without letting their
# services start (the Debian docker-registry package would otherwise listen on *:5000).
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]}" >&2
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    guard=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
}

# What building and testing hoist needs: the CNCF registry, skopeo and umoci to check images,
# podman and runc to run them, busybox for sandbox rootfs, htpasswd and openssl for registry
# auth, GNU time for the peak memory of hoist in the hostile scale tests, slirp4netns for the
# RUN steps' default network, debootstrap for the Debian base of the apt tests, ssh-agent and
# a static libc for the RUN --mount=type=ssh test's agent client, git for ADD of git
# repositories (hoist runs it) and the git daemon its tests serve them with. Building hoist needs no C
# toolchain beyond the machine's gcc (no cmake).
TEST_PACKAGES=(ca-certificates docker-registry skopeo umoci podman runc busybox-static
  apache2-utils openssl curl zstd bzip2 xz-utils time slirp4netns debootstrap openssh-client
  libc6-dev gzip python3 git)
