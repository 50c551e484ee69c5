#!/usr/bin/env bash
# Installs everything fieldgate needs on Debian 12 (run as root): the C libraries it links, the tools its
# tests drive (socat, openssl, libfuse2 for the spool's power-cut file system, tinyproxy, nginx serving update
# packages), and the pinned PyPI test peers
# (pymodbus, fusepy) in a private venv (.venv-peers).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libqpid-proton11-dev libmodbus-dev libsystemd-dev libssl-dev libcurl4-openssl-dev zlib1g-dev pkg-config socat openssl curl
              iproute2 procps systemd systemd-container debootstrap dpkg-dev lintian libfuse2 tinyproxy nftables nginx gpg)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$@"
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
  # The image's docker-clean hook deletes downloaded .debs after every dpkg run, which breaks installs that
  # apt splits into several dpkg calls (libsystemd-dev upgrades systemd). Repair and retry (docs/toolchain.md §1).
  if ! apt_install "${missing[@]}"; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 --fix-broken install -y
    apt_install "${missing[@]}"
  fi
fi

# Pinned test peers (pymodbus and friends) live in their own venv so they never touch the system Python.
if [ -f Tests/peers/requirements.txt ]; then
  if [ ! -x .venv-peers/bin/python ]; then python3 -m venv .venv-peers; fi
  if ! cmp -s Tests/peers/requirements.txt .venv-peers/.installed 2>/dev/null; then
    .venv-peers/bin/pip install -q --disable-pip-version-check -r Tests/peers/requirements.txt
    cp Tests/peers/requirements.txt .venv-peers/.installed
  fi
fi

command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
swift --version >/dev/null
echo "setup: ok"
