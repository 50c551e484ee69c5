#!/usr/bin/env bash
# Builds for arm64 (Raspberry Pi OS 64-bit and Debian 13 "trixie" on arm64) on an x86_64 Debian machine, and runs
# arm64 programs under qemu-user. See packaging/README.md ("arm64") for why it is built this way:
#   - the compiler is Debian's Swift 6.2 (package swiftlang, from sid: its x86_64 compiler needs glibc >= 2.42, so
#     it runs in a sid amd64 root, the "toolchain root");
#   - it compiles and links against a trixie arm64 root, the "sysroot", that holds the arm64 -dev packages
#     (Proton, libmodbus, libsystemd, OpenSSL, libstdc++) and the arm64 Swift resources of the same Swift build
#     (its static runtime is linked into fieldgated, so the package needs no Swift runtime installed);
#   - arm64 programs (dpkg-shlibdeps, the test suites) run inside the sysroot under qemu-user-static; lintian runs in
#     the toolchain root (it reads the arm64 package, it does not run it).
# Both roots are made once with debootstrap and cached in $FIELDGATE_ARM64_CACHE (default
# /var/cache/fieldgate-arm64): about 8 minutes and 2 GB of downloads the first time, 7.5 GB on disk.
#
# Usage: packaging/arm64.sh prepare               make or update the cached roots (installs debootstrap, qemu)
#        packaging/arm64.sh swift ARGS…           runs `swift ARGS…` in the toolchain root, in this repository,
#                                                 with the arm64 SDK available as --swift-sdk trixie-arm64
#        packaging/arm64.sh toolchain CMD…        runs CMD in the toolchain root, in this repository (/src)
#        packaging/arm64.sh sysroot CMD…          runs CMD in the arm64 root under qemu, this repository at /src
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FIELDGATE_ARM64_CACHE:-/var/cache/fieldgate-arm64}
TOOLCHAIN=$CACHE/toolchain   # sid, amd64: Debian's Swift
SYSROOT=$CACHE/sysroot       # trixie, arm64: -dev packages, the arm64 Swift resources, dpkg-dev, lintian
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SYSROOT_PACKAGES=(libqpid-proton11-dev libmodbus-dev libsystemd-dev libssl-dev libcurl4-openssl-dev zlib1g-dev libstdc++-14-dev libc6-dev
                  libgcc-14-dev dpkg-dev)
# lintian runs here, natively: under emulation it takes over half an hour on fieldgated.
TOOLCHAIN_PACKAGES=(swiftlang git pkgconf libc6-dev binutils-aarch64-linux-gnu ca-certificates lintian)

say() { echo "arm64: $*" >&2; }

# Debian's mirror may serve a suite whose Release file is past its Valid-Until (a frozen snapshot).
APT_CONF='Acquire::Check-Valid-Until "false";'
apt_in() {  # root, apt-get args…
  local root=$1; shift
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -q -o DPkg::Lock::Timeout=600 "$@"
}

ensure_host_tools() {
  local missing=()
  for p in debootstrap qemu-user-static; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
  fi
}

# qemu-user-static's handler, registered with the F flag (the interpreter is opened now, so it works in chroots).
ensure_binfmt() {
  [ -d /proc/sys/fs/binfmt_misc ] || { say "no binfmt_misc in this kernel: cannot run arm64 programs"; exit 1; }
  [ -f /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ ! -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register
  fi
  grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || echo 1 >/proc/sys/fs/binfmt_misc/qemu-aarch64
}

debootstrap_root() {  # suite, arch, dir
  local suite=$1 arch=$2 dir=$3
  [ -x "$dir/usr/bin/apt-get" ] && return 0
  say "debootstrap $suite $arch into $dir (once)"
  rm -rf "$dir.tmp"; mkdir -p "$CACHE"
  debootstrap --arch="$arch" --variant=minbase "$suite" "$dir.tmp" "$MIRROR" >"$CACHE/debootstrap-$suite-$arch.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap-$suite-$arch.log"; say "debootstrap $suite $arch failed"; exit 1; }
  echo "$APT_CONF" >"$dir.tmp/etc/apt/apt.conf.d/99fieldgate-valid-until"
  mv "$dir.tmp" "$dir"
}

ensure_installed() {  # root, packages…
  local root=$1; shift
  local missing=()
  for p in "$@"; do
    chroot "$root" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} in $root"
  in_root "$root" apt-get -q update >/dev/null
  in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 install -y \
    --no-install-recommends "${missing[@]}" >"$CACHE/install.log" 2>&1 || { tail -20 "$CACHE/install.log"; exit 1; }
}

# The arm64 Swift resources (stdlib modules, static and shared runtime, Foundation, XCTest, Swift Testing) of the
# very Swift build the toolchain root runs: Swift has no stable ABI on Linux.
ensure_swift_resources() {
  local version
  version=$(chroot "$TOOLCHAIN" dpkg-query -W -f='${Version}' swiftlang)
  [ "$(cat "$SYSROOT/usr/libexec/swift/.fieldgate-version" 2>/dev/null)" = "$version" ] && return 0
  say "arm64 Swift $version resources into the sysroot"
  grep -qx arm64 <(chroot "$TOOLCHAIN" dpkg --print-foreign-architectures) || {
    chroot "$TOOLCHAIN" dpkg --add-architecture arm64
    in_root "$TOOLCHAIN" apt-get -q update >/dev/null
  }
  local debs=$TOOLCHAIN/tmp/swift-arm64
  rm -rf "$debs" "$CACHE/swift-arm64"; mkdir -p "$debs"
  in_root "$TOOLCHAIN" sh -c "cd /tmp/swift-arm64 && apt-get -q download swiftlang:arm64=$version libswiftlang:arm64=$version" >/dev/null
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$CACHE/swift-arm64"; done
  rm -rf "$debs" "$SYSROOT/usr/libexec/swift"
  mkdir -p "$SYSROOT/usr/libexec/swift/lib"
  # lib/swift/clang points at lib/clang: the compiler's own C headers (stddef.h, …) and runtime for aarch64.
  mv "$CACHE/swift-arm64/usr/libexec/swift/lib/swift" "$CACHE/swift-arm64/usr/libexec/swift/lib/swift_static" \
     "$CACHE/swift-arm64/usr/libexec/swift/lib/clang" "$SYSROOT/usr/libexec/swift/lib/"
  rm -rf "$CACHE/swift-arm64"
  ln -sfn ../libexec/swift/lib/swift "$SYSROOT/usr/lib/swift"
  ln -sfn ../libexec/swift/lib/swift_static "$SYSROOT/usr/lib/swift_static"
  echo "$version" >"$SYSROOT/usr/libexec/swift/.fieldgate-version"
}

# The Swift SDK: the sysroot with the arm64 resources in it, linked by the toolchain's lld.
write_sdk() {
  local bundle=$TOOLCHAIN/sdks/trixie-arm64.artifactbundle
  mkdir -p "$bundle/sdk"
  cat >"$bundle/info.json" <<'JSON'
{"schemaVersion": "1.0",
 "artifacts": {"trixie-arm64": {"type": "swiftSDK", "version": "1", "variants": [{"path": "sdk"}]}}}
JSON
  cat >"$bundle/sdk/swift-sdk.json" <<'JSON'
{"schemaVersion": "4.0",
 "targetTriples": {"aarch64-unknown-linux-gnu": {
   "sdkRootPath": "/sysroot",
   "swiftResourcesPath": "/sysroot/usr/lib/swift",
   "swiftStaticResourcesPath": "/sysroot/usr/lib/swift_static",
   "toolsetPaths": ["toolset.json"]}}}
JSON
  cat >"$bundle/sdk/toolset.json" <<'JSON'
{"schemaVersion": "1.0", "rootPath": "/usr/libexec/swift/bin",
 "swiftCompiler": {"extraCLIOptions": ["-use-ld=lld"]}}
JSON
  # SwiftPM resolves packages from the machine's mirror exactly as the host build does.
  [ -f /etc/gitconfig ] && cp /etc/gitconfig "$TOOLCHAIN/etc/gitconfig"
  mkdir -p "$TOOLCHAIN/opt/swift-packages" "$TOOLCHAIN/sysroot" "$TOOLCHAIN/src" "$SYSROOT/src"
}

# Runs a command in a root with /proc, in a private mount namespace (nothing stays mounted on the host).
in_root() {  # root, cmd…
  local root=$1; shift
  unshare --mount --propagation private bash -c 'mount -t proc proc "$0/proc"; exec chroot "$0" "$@"' "$root" "$@"
}

prepare() {
  [ "$(id -u)" = 0 ] || { say "needs root (debootstrap, chroot)"; exit 1; }
  ensure_host_tools
  ensure_binfmt
  debootstrap_root sid amd64 "$TOOLCHAIN"
  ensure_installed "$TOOLCHAIN" "${TOOLCHAIN_PACKAGES[@]}"
  debootstrap_root trixie arm64 "$SYSROOT"
  ensure_installed "$SYSROOT" "${SYSROOT_PACKAGES[@]}"
  ensure_swift_resources
  write_sdk
}

# The toolchain root with the sysroot, this repository and the package mirror mounted.
in_toolchain() {  # cmd…
  ensure_binfmt
  unshare --mount --propagation private bash -c '
    tc=$0 sysroot=$1 repo=$2; shift 2
    mount -t proc proc "$tc/proc"
    mount --bind "$sysroot" "$tc/sysroot"
    mount --bind "$repo" "$tc/src"
    [ -d /opt/swift-packages ] && mount --bind -o ro /opt/swift-packages "$tc/opt/swift-packages"
    cd "$tc" && exec chroot . env -i HOME=/root PATH=/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
      bash -c "cd /src && exec \"\$@\"" bash "$@"' "$TOOLCHAIN" "$SYSROOT" "$REPO" "$@"
}

in_sysroot() {  # cmd…
  ensure_binfmt
  unshare --mount --propagation private bash -c '
    root=$0 repo=$1; shift
    mount -t proc proc "$root/proc"
    mount --bind "$repo" "$root/src"
    cd "$root" && exec chroot . env -i HOME=/root PATH=/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
      bash -c "cd /src && exec \"\$@\"" bash "$@"' "$SYSROOT" "$REPO" "$@"
}

case "${1:-}" in
  prepare) prepare ;;
  swift) shift; [ -x "$TOOLCHAIN/usr/bin/swift" ] || prepare; in_toolchain swift "$@" ;;
  toolchain) shift; in_toolchain "$@" ;;
  sysroot) shift; in_sysroot "$@" ;;
  *) echo "usage: $0 prepare | swift ARGS… | toolchain CMD… | sysroot CMD…" >&2; exit 2 ;;
esac
