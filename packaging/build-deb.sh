#!/usr/bin/env bash
# Builds fieldgate_<version>_<arch>.deb (fieldgated + fieldgatectl, the unit, /etc/fieldgate) and
# fieldgate-hub_<version>_<arch>.deb (the local IoT Hub emulator, optional) into dist/, from a release build with
# the Swift runtime linked statically (Debian 12 has no Swift runtime package; Swift has no stable ABI on Linux).
# Depends come from dpkg-shlibdeps run against the target's own root.
#   amd64 (the default on x86_64): for Debian 12 bookworm, built with the machine's Swift toolchain.
#   arm64 (--arch arm64, on x86_64): for Debian 13 trixie / Raspberry Pi OS 64-bit, cross-built with Debian's
#     Swift 6.2 against a trixie arm64 root (packaging/arm64.sh makes both roots once and caches them).
# Usage: packaging/build-deb.sh [--arch amd64|arm64] [--version V] [--no-hub] [--no-lintian]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
VERSION=$(sed -n 's/.*FIELDGATE_VERSION"\] ?? "\(.*\)".*/\1/p' Package.swift)
HUB=1
LINTIAN=1
ARCH=$(dpkg --print-architecture)
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --no-hub) HUB=0; shift ;;
    --no-lintian) LINTIAN=0; shift ;;
    *) echo "usage: $0 [--arch amd64|arm64] [--version V] [--no-hub] [--no-lintian]" >&2; exit 2 ;;
  esac
done
for tool in dpkg-deb dpkg-shlibdeps; do command -v $tool >/dev/null || { echo "build-deb: $tool missing (apt install dpkg-dev)"; exit 1; }; done

# Release, static Swift runtime, Debian's hardening, the running gateway's code laid out together.
source packaging/release-flags.sh
if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
  CROSS=
  UNITDIR=lib/systemd/system         # bookworm's lintian wants units under /lib
  mkdir -p .build
  STAGE=$(mktemp -d)
  release_flags gold packaging/hot-code.symbols "$STAGE/hot-code.sections"
  FLAGS=("${RELEASE_FLAGS[@]}")
  swift_build() { FIELDGATE_VERSION=$VERSION swift build "${FLAGS[@]}" "$@"; }
  strip_binary() { strip "$@"; }
  in_target() { "$@"; }               # runs a tool of the target's Debian
  run_lintian() { lintian "$@"; }
  target_path() { echo "$1"; }
elif [ "$ARCH" = arm64 ] && [ "$(dpkg --print-architecture)" = amd64 ]; then
  CROSS=1
  UNITDIR=usr/lib/systemd/system     # trixie's lintian wants units under /usr/lib (merged /usr)
  bash packaging/arm64.sh prepare
  mkdir -p .build-arm64
  STAGE=$(mktemp -d "$PWD/.build-arm64/stage.XXXXXX")  # inside the repository: the roots see it at /src
  release_flags lld /src/packaging/hot-code.symbols   # the SDK links with lld
  FLAGS=("${RELEASE_FLAGS[@]}")
  swift_build() {
    bash packaging/arm64.sh toolchain env FIELDGATE_VERSION="$VERSION" swift build --scratch-path .build-arm64 --swift-sdks-path /sdks --swift-sdk trixie-arm64 \
      "${FLAGS[@]}" "$@"
  }
  target_path() { echo "/src/${1#"$PWD"/}"; }
  strip_binary() { local args=("${@:1:$#-1}"); bash packaging/arm64.sh toolchain aarch64-linux-gnu-strip "${args[@]}" "$(target_path "${@: -1}")"; }
  in_target() { bash packaging/arm64.sh sysroot "$@"; }
  run_lintian() { bash packaging/arm64.sh toolchain lintian "$@"; }  # natively: under qemu it takes half an hour
else
  echo "build-deb: cannot build $ARCH on $(dpkg --print-architecture) (arm64 is cross-built on amd64)" >&2; exit 2
fi
trap 'rm -rf "$STAGE"' EXIT

products=(fieldgated)
[ "$HUB" = 1 ] && products+=(fieldgate-hub)
for p in "${products[@]}"; do swift_build --product "$p"; done
BIN=$(swift_build --show-bin-path | tail -n 1)
[ -n "$CROSS" ] && BIN=$PWD/${BIN#/src/}
OUT=dist
mkdir -p "$OUT"

# dpkg-shlibdeps wants a debian/control with the binary package; it runs from the stage's top.
depends() {  # $1 = package root, $2.. = binaries
  local root=$1; shift
  mkdir -p "$STAGE/shlibs/debian"
  printf 'Source: fieldgate\n\nPackage: x\nArchitecture: any\n' >"$STAGE/shlibs/debian/control"
  local shlibs
  shlibs=$(target_path "$STAGE/shlibs")
  in_target bash -c 'cd "$0" && dpkg-shlibdeps -O "$@" 2>/dev/null' "$shlibs" "${@/#/$(target_path "$root")/}" \
    | sed -n 's/^shlibs:Depends=//p'
}

# libcurl is loaded when first used (dlopen; Sources/CCurlTunnel/curl_common.h), so dpkg-shlibdeps does not see it:
# the package that ships the target's libcurl.so.4 (libcurl4 on Debian 12, libcurl4t64 on 13), at 7.85 or later
# (CURLOPT_PROTOCOLS_STR; a thread-safe curl_global_init).
curl_depends() {
  local package
  package=$(in_target dpkg-query -S '*/libcurl.so.4' 2>/dev/null | head -n 1 | cut -d: -f1)
  [ -n "$package" ] || { echo "build-deb: no libcurl.so.4 in the target's root (apt install libcurl4-openssl-dev)" >&2; exit 1; }
  echo "$package (>= 7.85)"
}
CURL_DEPENDS=$(curl_depends)

md5sums() {  # $1 = package root: DEBIAN/md5sums of every shipped file but the conffiles
  (cd "$1" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | grep -v -x -F -f <(sed 's|^/||' DEBIAN/conffiles 2>/dev/null || true) \
     | sort | xargs -r md5sum >DEBIAN/md5sums)
}

docs() {  # $1 = package root, $2 = package name
  install -d "$1/usr/share/doc/$2"
  install -m 0644 packaging/debian/copyright "$1/usr/share/doc/$2/copyright"
  sed "s/@VERSION@/$VERSION/; s/^fieldgate /$2 /" packaging/debian/changelog | gzip -9n >"$1/usr/share/doc/$2/changelog.gz"
}

# --- fieldgate
R=$STAGE/fieldgate
install -D -m 0755 "$BIN/fieldgated" "$R/usr/sbin/fieldgated"
strip_binary --strip-unneeded --remove-section=.comment --remove-section=.note "$R/usr/sbin/fieldgated"
install -d "$R/usr/bin"
ln -s ../sbin/fieldgated "$R/usr/bin/fieldgatectl"
install -D -m 0644 systemd/fieldgated.service "$R/$UNITDIR/fieldgated.service"
install -D -m 0644 systemd/fieldgate-update.path "$R/$UNITDIR/fieldgate-update.path"
install -D -m 0644 systemd/fieldgate-update.service "$R/$UNITDIR/fieldgate-update.service"
install -D -m 0644 systemd/sysusers.conf "$R/usr/lib/sysusers.d/fieldgate.conf"
install -D -m 0644 systemd/sysctl.conf "$R/usr/lib/sysctl.d/30-fieldgate.conf"
# 0644/0755 as shipped; the postinst narrows them to the fieldgate group.
install -D -m 0644 etc/fieldgate/fieldgate.toml "$R/etc/fieldgate/fieldgate.toml"
install -d -m 0755 "$R/etc/fieldgate/devices.d" "$R/etc/fieldgate/profiles.d"
install -D -m 0644 etc/fieldgate/devices.d/example-udp.toml.example "$R/usr/share/doc/fieldgate/examples/devices.d/example-udp.toml"
install -D -m 0644 etc/fieldgate/devices.d/example-modbus.toml.example "$R/usr/share/doc/fieldgate/examples/devices.d/example-modbus.toml"
install -D -m 0644 etc/fieldgate/profiles.d/example-boiler.toml.example "$R/usr/share/doc/fieldgate/examples/profiles.d/example-boiler.toml"
install -D -m 0644 etc/fieldgate/secrets.toml.example "$R/usr/share/doc/fieldgate/examples/secrets.toml"
install -D -m 0644 systemd/README.md "$R/usr/share/doc/fieldgate/README.systemd"
# Shell completions, generated by the binary itself (ArgumentParser) run as each of its two names; a cross-built
# binary runs in the target's root under qemu-user.
completion() {  # $1 = program name, $2 = shell
  in_target bash -c 'exec -a "$1" "$0" --generate-completion-script "$2"' "$(target_path "$BIN/fieldgated")" "$1" "$2"
}
for prog in fieldgatectl fieldgated; do
  install -d "$R/usr/share/bash-completion/completions" "$R/usr/share/zsh/vendor-completions" "$R/usr/share/fish/vendor_completions.d"
  completion "$prog" bash | sed "1{/^#!/d}" >"$R/usr/share/bash-completion/completions/$prog"  # sourced, not run
  completion "$prog" zsh >"$R/usr/share/zsh/vendor-completions/_$prog"
  completion "$prog" fish >"$R/usr/share/fish/vendor_completions.d/$prog.fish"
done
for page in fieldgated.8 fieldgatectl.1 fieldgate.toml.5; do
  section=${page##*.}
  install -d "$R/usr/share/man/man$section"
  gzip -9n <"packaging/man/$page" >"$R/usr/share/man/man$section/$page.gz"
done
docs "$R" fieldgate
install -D -m 0644 packaging/debian/lintian-overrides "$R/usr/share/lintian/overrides/fieldgate"
# Newer lintian (trixie on) no longer has the init.d tag: overriding it there is itself an error.
[ -n "$CROSS" ] && sed -i '/systemd is the only supported init/d; /package-supports-alternative-init-but-no-init.d-script/d' "$R/usr/share/lintian/overrides/fieldgate"
install -d "$R/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$R/DEBIAN/$s"; done
echo /etc/fieldgate/fieldgate.toml >"$R/DEBIAN/conffiles"
cat >"$R/DEBIAN/control" <<CONTROL
Package: fieldgate
Version: $VERSION
Architecture: $ARCH
Maintainer: fieldgate maintainers <maintainers@fieldgate.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$R" | cut -f1)
Depends: $(depends "$R" usr/sbin/fieldgated), $CURL_DEPENDS, systemd, adduser
Recommends: gpgv
Suggests: fieldgate-hub
Section: net
Priority: optional
Homepage: https://github.com/fieldgate/fieldgate
Description: field gateway from local devices to Azure IoT Hub
 fieldgated connects leaf devices (UDP senders, serial lines) to Azure IoT
 Hub, each as its own device identity, all over one AMQP connection. Readings
 go through a durable store-and-forward spool on disk, so nothing is lost while
 the hub is unreachable. Cloud-to-device messages, direct methods and device
 twins reach the leaves.
 .
 Runs under systemd with readiness, a progress-fed watchdog and live reload;
 fieldgatectl shows its state. Optionally updates itself from a package the
 gateway's device twin names, with rollback, within a maintenance window.
CONTROL
md5sums "$R"
dpkg-deb --root-owner-group -Zxz --build "$R" "$OUT/fieldgate_${VERSION}_${ARCH}.deb" >/dev/null
echo "build-deb: $OUT/fieldgate_${VERSION}_${ARCH}.deb ($(du -h "$OUT/fieldgate_${VERSION}_${ARCH}.deb" | cut -f1); fieldgated $(du -h "$R/usr/sbin/fieldgated" | cut -f1) installed)"

# --- fieldgate-hub
if [ "$HUB" = 1 ]; then
  H=$STAGE/fieldgate-hub
  install -D -m 0755 "$BIN/fieldgate-hub" "$H/usr/bin/fieldgate-hub"
  strip_binary --strip-unneeded --remove-section=.comment --remove-section=.note "$H/usr/bin/fieldgate-hub"
  install -d "$H/usr/share/man/man1"
  gzip -9n <packaging/man/fieldgate-hub.1 >"$H/usr/share/man/man1/fieldgate-hub.1.gz"
  docs "$H" fieldgate-hub
  install -D -m 0644 packaging/debian/lintian-overrides-hub "$H/usr/share/lintian/overrides/fieldgate-hub"
  install -d "$H/DEBIAN"
  cat >"$H/DEBIAN/control" <<CONTROL
Package: fieldgate-hub
Version: $VERSION
Architecture: $ARCH
Maintainer: fieldgate maintainers <maintainers@fieldgate.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$H" | cut -f1)
Depends: $(depends "$H" usr/bin/fieldgate-hub), $CURL_DEPENDS
Section: net
Priority: optional
Homepage: https://github.com/fieldgate/fieldgate
Description: local Azure IoT Hub emulator for offline development
 fieldgate-hub speaks the device side of Azure IoT Hub over AMQP (TLS, CBS,
 telemetry, cloud-to-device messages, direct methods, twins) and offers a
 service API to send messages with feedback, invoke methods, patch twins and
 watch events. Optional: fieldgate does not need it to run.
CONTROL
  md5sums "$H"
  dpkg-deb --root-owner-group -Zxz --build "$H" "$OUT/fieldgate-hub_${VERSION}_${ARCH}.deb" >/dev/null
  echo "build-deb: $OUT/fieldgate-hub_${VERSION}_${ARCH}.deb ($(du -h "$OUT/fieldgate-hub_${VERSION}_${ARCH}.deb" | cut -f1))"
fi

if [ "$LINTIAN" = 1 ]; then
  [ -n "$CROSS" ] || command -v lintian >/dev/null || { echo "build-deb: lintian missing (apt install --no-install-recommends lintian)"; exit 1; }
  # Any tag not overridden (with its justification in packaging/debian/lintian-overrides*) fails the build.
  debs=()
  for d in "$OUT"/*_"${VERSION}"_"${ARCH}".deb; do debs+=("$(target_path "$PWD/$d")"); done
  report=$(run_lintian --fail-on none "${debs[@]}" 2>&1) || { echo "build-deb: lintian did not finish:"; echo "$report" | tail -5; exit 1; }
  findings=$(grep -v -e "^N: " -e "running with root privileges" <<<"$report" || true)
  if [ -n "$findings" ]; then echo "build-deb: lintian:"; echo "$findings"; exit 1; fi
  echo "build-deb: lintian clean"
fi
