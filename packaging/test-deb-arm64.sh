#!/usr/bin/env bash
# The arm64 package, proven under emulation on this x86_64 machine (issue 25): a clean Debian 13 trixie arm64 root
# (what Raspberry Pi OS 64-bit is based on) runs under qemu-user-static; there
#   - `apt install ./fieldgate_<v>_arm64.deb` resolves its dependencies from trixie;
#   - `fieldgatectl config check` passes on the demo's configuration;
#   - the arm64 fieldgated, started by hand in the root (a chroot; booting it with nspawn under qemu is untried), connects
#     over TLS to a fieldgate-hub on the host's loopback with two UDP leaves (the arm64 simulate-udp-leaf) and one
#     Modbus TCP leaf (pymodbus on the host), and each leaf's telemetry reaches the hub;
#   - a C2D with ack=full reaches a leaf and the feedback says Success;
#   - the gateway's `reboot` method answers 200 and `lastReboot` appears in its twin;
#   - purge leaves nothing of the package behind (files, configuration, state, user and group).
# It prints the package's size and the resident memory of the emulated fieldgated (qemu's process: the emulator's
# own memory and translated code are in that figure).
# Usage: packaging/test-deb-arm64.sh [--no-build]   (default: builds the package with build-deb.sh --arch arm64)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null   # the host's test peers (pymodbus in .venv-peers) and tools
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
. scripts/lib-nspawn.sh
CACHE=${FIELDGATE_ARM64_CACHE:-/var/cache/fieldgate-arm64}
TARGET=$CACHE/target   # a clean trixie arm64 root, as a user has it (no -dev packages)
BUILD=1
[ "${1:-}" = --no-build ] && BUILD=0

bash packaging/arm64.sh prepare
VERSION=$(sed -n 's/.*FIELDGATE_VERSION"\] ?? "\(.*\)".*/\1/p' Package.swift)
[ "$BUILD" = 1 ] && bash packaging/build-deb.sh --arch arm64 --no-hub
DEB=dist/fieldgate_${VERSION}_arm64.deb
[ -f "$DEB" ] || { echo "test-deb-arm64: $DEB missing (build it: packaging/build-deb.sh --arch arm64)"; exit 1; }

if [ ! -x "$TARGET/usr/bin/apt-get" ]; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  echo "test-deb-arm64: debootstrap trixie arm64 into $TARGET (once, about 8 minutes under qemu)"
  rm -rf "$TARGET.tmp"
  debootstrap --arch=arm64 --variant=minbase --include=ca-certificates,procps trixie "$TARGET.tmp" \
    "${mirror:-http://deb.debian.org/debian}" >"$CACHE/debootstrap-target.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap-target.log"; echo "test-deb-arm64: debootstrap failed"; exit 1; }
  echo 'Acquire::Check-Valid-Until "false";' >"$TARGET.tmp/etc/apt/apt.conf.d/99fieldgate-valid-until"
  mv "$TARGET.tmp" "$TARGET"
fi

swift build --product fieldgate-hub >/dev/null
HUB_BIN=$(swift build --show-bin-path)/fieldgate-hub
make_work fieldgate-deb-arm64
ROOT=$WORK/root
MODBUS_PID=
CHROOT_PID=
# The emulated root goes first (its own PID namespace ends with it), then the host's peers.
trap '{ [ -n "$CHROOT_PID" ] && pkill -KILL -P "$CHROOT_PID"; [ -n "$MODBUS_PID" ] && kill "$MODBUS_PID"; [ -n "$HUB_PID" ] && kill "$HUB_PID"; wait; } 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/debs" "$WORK/results" "$WORK/config"
cp "$DEB" "$WORK/debs/"
start_hub
MODBUS_PORT=$((AMQPS_PORT + 4))   # start_hub holds AMQPS_PORT … AMQPS_PORT + 3
declare -A KEY
for d in fieldgate-arm64 boiler-1 udp-meter-1 udp-meter-2; do KEY[$d]=$(create_device "$d"); done

# The demo's configuration (etc/demo), pointed at this hub and at the root's own paths.
cp -r etc/demo/. "$WORK/config/"
cp "$WORK/hub/certs/ca.pem" "$WORK/config/ca.pem"
sed -i -e "s|@AMQPS_PORT@|$AMQPS_PORT|g" -e "s|@UDP_PORT@|$UDP_PORT|g" -e "s|@MODBUS_PORT@|$MODBUS_PORT|g" \
       -e 's|@HUB_STATE@/certs/ca.pem|/etc/fieldgate/ca.pem|' -e 's|"fieldgate-demo"|"fieldgate-arm64"|' \
       -e 's|@STATE@/gateway/spool|/var/lib/fieldgate/spool|' -e 's|@STATE@/gateway/control.sock|/run/fieldgate/control.sock|' \
       "$WORK/config/fieldgate.toml" "$WORK/config/devices.d/"*.toml
printf '[keys]\n' >"$WORK/config/secrets.toml"
for d in "${!KEY[@]}"; do printf '%s = "%s"\n' "$d" "${KEY[$d]}" >>"$WORK/config/secrets.toml"; done

.venv-peers/bin/python Tests/peers/modbus_server.py --tcp "127.0.0.1:$MODBUS_PORT" --units 1 \
  --control "$WORK/modbus.sock" --ready-file "$WORK/modbus.ready" \
  --init '[{"unit": 1, "table": "holding_registers", "address": 0, "values": [215, 16320, 0, 0, 0, 450]}]' \
  >"$WORK/modbus.log" 2>&1 &
MODBUS_PID=$!
for _ in $(seq 100); do [ -f "$WORK/modbus.ready" ] && break; sleep 0.1; done

cat >"$WORK/config/check.sh" <<SCRIPT
#!/bin/bash
exec >/results/log 2>&1
set -x
r() { echo "\$2" >"/results/\$1"; }
export DEBIAN_FRONTEND=noninteractive
apt-get -q update
apt-get install -y /debs/$(basename "$DEB") && r installed yes
r arch "\$(dpkg-query -W -f='\${Architecture}' fieldgate)"
r fieldgated-arch "\$(od -An -tx1 -j18 -N2 /usr/sbin/fieldgated | tr -d ' ')"
dpkg -L fieldgate >/results/files
r user "\$(id -nG fieldgate)"
cp /config/ca.pem /config/fieldgate.toml /etc/fieldgate/
cp /config/devices.d/*.toml /etc/fieldgate/devices.d/
cp /config/profiles.d/*.toml /etc/fieldgate/profiles.d/
install -m 0600 /config/secrets.toml /etc/fieldgate/secrets.toml
fieldgatectl config check && r config-check ok
mkdir -p /run/fieldgate
fieldgated run --config /etc/fieldgate/fieldgate.toml --log-level notice >/results/daemon.log 2>&1 & DAEMON=\$!
fieldgated simulate-udp-leaf --device udp-meter-1 --port $UDP_PORT --duration 600 >/results/leaf-1.log 2>&1 & L1=\$!
fieldgated simulate-udp-leaf --device udp-meter-2 --port $UDP_PORT --interval 2 --duration 600 >/results/leaf-2.log 2>&1 & L2=\$!
touch /results/running
for i in \$(seq 600); do [ -f /results/host-done ] && break; sleep 0.5; done
r rss-kb "\$(awk '/^VmRSS/{print \$2}' /proc/\$DAEMON/status)"
fieldgatectl status >/results/status 2>&1 || true
kill \$L1 \$L2; kill \$DAEMON; wait \$DAEMON; r daemon-exit \$?
apt-get purge -y fieldgate && r purged yes
left=\$(while read -r f; do [ -f "\$f" ] || [ -L "\$f" ] && echo "\$f"; done </results/files)
r files-after-purge "\${left:-none}"
r etc-after-purge "\$(cd /etc/fieldgate 2>/dev/null && find . -type f | sort | paste -sd' ' || echo gone)"
r state-after-purge "\$(ls -d /var/lib/fieldgate 2>/dev/null || echo gone)"
r user-after-purge "\$(getent passwd fieldgate || echo gone)"
r group-after-purge "\$(getent group fieldgate || echo gone)"
r package-after-purge "\$(dpkg-query -W -f='\${db:Status-Status}' fieldgate 2>/dev/null || echo gone)"
exit 0
SCRIPT

fail() {
  echo "test-deb-arm64: FAILED: $*"
  for f in feedback-raw leaf-1.log reboot; do [ -f "$WORK/results/$f" ] && { echo "--- $f"; tail -15 "$WORK/results/$f"; }; done
  echo "--- log"; tail -60 "$WORK/results/log" 2>/dev/null; echo "--- daemon"; tail -30 "$WORK/results/daemon.log" 2>/dev/null; echo "--- hub"; tail -20 "$WORK/hub.log"; exit 1; }
expect() {  # file, expected content
  [ -f "$WORK/results/$1" ] || fail "$1: the check did not get that far"
  [ "$(cat "$WORK/results/$1")" = "$2" ] || fail "$1: expected '$2', got '$(cat "$WORK/results/$1")'"
}

echo "test-deb-arm64: a throw-away copy of the trixie arm64 root; the package installed and run there under qemu (chroot)"
cp -a "$TARGET" "$ROOT"
ARGS=("$ROOT" "$WORK/debs" "$WORK/config" "$WORK/results")
# Own mount and PID namespaces: the root's maintainer scripts see (and can signal) only the root's processes. The
# namespace's first process ignores TERM, and unshare ignores it while it waits: a KILL to unshare ends it, and
# --kill-child then ends the namespace's first process and with it every process in the namespace.
timeout --kill-after=10 900 unshare --mount --pid --fork --kill-child --propagation private bash -c '
  root=$0
  mount -t proc proc "$root/proc"; mount -t sysfs sysfs "$root/sys"; mount -t tmpfs tmpfs "$root/run"
  for b in debs config results; do mkdir -p "$root/$b"; done
  mount --bind "$1" "$root/debs"; mount --bind "$2" "$root/config"; mount --bind "$3" "$root/results"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  exec chroot "$root" /bin/bash /config/check.sh' "${ARGS[@]}" &
CHROOT_PID=$!
for _ in $(seq 1200); do [ -f "$WORK/results/running" ] || ! kill -0 $CHROOT_PID 2>/dev/null && break; sleep 0.5; done
[ -f "$WORK/results/running" ] || { wait $CHROOT_PID || true; fail "the package did not install and start"; }

kill -0 "$HUB_PID" 2>/dev/null || fail "the hub exited while the package was installed"
kill -0 "$MODBUS_PID" 2>/dev/null || fail "the Modbus simulator exited"
# The three leaves' telemetry, each as itself.
seen=
for _ in $(seq 60); do
  events=$("$HUB_BIN" monitor-events $URL --timeout 2 --from-start 2>/dev/null || true)
  seen=$(for d in boiler-1 udp-meter-1 udp-meter-2; do if grep -q "\"$d\"" <<<"$events"; then echo "$d"; fi; done | paste -sd' ')
  [ "$seen" = "boiler-1 udp-meter-1 udp-meter-2" ] && break
  sleep 2
done
[ "$seen" = "boiler-1 udp-meter-1 udp-meter-2" ] || { touch "$WORK/results/host-done"; wait $CHROOT_PID || true; fail "telemetry from: '$seen'"; }
echo "$seen" >"$WORK/results/telemetry"
# C2D with ack=full to a UDP leaf: the leaf acknowledges, the feedback says Success.
"$HUB_BIN" c2d send udp-meter-1 '{"setpoint": 22.5}' --message-id arm64-c2d-1 --ack full $URL >/dev/null
feedback=
for _ in $(seq 6); do feedback+=$("$HUB_BIN" feedback --wait 10 $URL 2>/dev/null || true); grep -q arm64-c2d-1 <<<"$feedback" && break; done
echo "$feedback" >"$WORK/results/feedback-raw"
grep -Eq '"originalMessageId" *: *"arm64-c2d-1"' <<<"$feedback" && grep -Eq '"statusCode" *: *"Success"' <<<"$feedback" \
  && echo Success >"$WORK/results/feedback"
grep -q 'arm64-c2d-1' "$WORK/results/leaf-1.log" && echo yes >"$WORK/results/leaf-got-c2d"
# The gateway's reboot (seed 004): 200, then lastReboot in its twin.
"$HUB_BIN" method invoke fieldgate-arm64 reboot --timeout 30 $URL >"$WORK/results/reboot" 2>&1 || true
for _ in $(seq 20); do
  "$HUB_BIN" twin show fieldgate-arm64 $URL 2>/dev/null | grep -q lastReboot && { echo yes >"$WORK/results/last-reboot"; break; }
  sleep 1
done
touch "$WORK/results/host-done"
wait $CHROOT_PID || true
CHROOT_PID=

expect installed yes
expect arch arm64
expect fieldgated-arch b700   # ELF e_machine 183 = EM_AARCH64
case "$(cat "$WORK/results/user")" in *fieldgate*dialout*|*dialout*fieldgate*) ;; *) fail "user groups: $(cat "$WORK/results/user")" ;; esac
expect config-check ok
expect feedback Success
expect leaf-got-c2d yes
grep -q '"status" *: *200' "$WORK/results/reboot" || fail "reboot: $(cat "$WORK/results/reboot")"
expect last-reboot yes
expect daemon-exit 0
expect purged yes
expect files-after-purge none
# What the operator added (CA, leaves, profiles) stays, as dpkg keeps files it does not own; the package's own
# configuration (fieldgate.toml, a conffile) and secrets.toml are gone.
expect etc-after-purge "./ca.pem ./devices.d/modbus-boiler.toml ./devices.d/udp-meters.toml ./profiles.d/demo-boiler.toml"
expect state-after-purge gone
expect user-after-purge gone
expect group-after-purge gone
expect package-after-purge gone
size=$(du -k "$DEB" | cut -f1)
echo "test-deb-arm64: ok (chroot under qemu-user, daemon started by hand; systemd-nspawn under qemu was not tried) — apt install resolved the trixie dependencies; config check; fieldgated (arm64) over TLS to the hub with boiler-1 (Modbus TCP), udp-meter-1 and udp-meter-2 sending telemetry; C2D ack=full → Success; reboot → 200 and lastReboot in the twin; purge left nothing of the package"
echo "test-deb-arm64: $(basename "$DEB") ${size} KB; Depends: $(dpkg-deb -f "$DEB" Depends)"
echo "test-deb-arm64: resident memory of the emulated fieldgated with the demo's 3 leaves + the gateway: $(cat "$WORK/results/rss-kb") KB (qemu's RSS, emulator included)"
