#!/usr/bin/env bash
# Day one with the package (issue 19, item 8), in a booted Debian 12 with a fieldgate-hub on the host's loopback as
# the hub, using fieldgatectl alone: apt install → `fieldgatectl connect` with the gateway's connection string (it
# writes the files, checks, enables and starts the service) → `fieldgatectl check` → `leaf add` from a leaf's
# connection string → its telemetry at the hub → `leaf add` of a second leaf with a new key → its telemetry, with the
# same daemon process and the same hub connection (no restart, no reconnect) → a refused reload fails
# `systemctl reload` with the reason and stays in `fieldgatectl status` → `leaf remove`.
# Usage: packaging/test-day-one.sh   (builds dist/fieldgate_<version>_<arch>.deb first)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
. scripts/lib-nspawn.sh
ensure_rootfs
OBSTACLE=$(boot_obstacle)
[ -z "$OBSTACLE" ] || skip "cannot boot a container: $OBSTACLE"

ARCH=$(dpkg --print-architecture)
VERSION=$(sed -n 's/.*FIELDGATE_VERSION"\] ?? "\(.*\)".*/\1/p' Package.swift)
DEB=dist/fieldgate_${VERSION}_${ARCH}.deb
bash packaging/build-deb.sh --version "$VERSION" --no-hub --no-lintian  # never a stale package (a no-op rebuild when it is current)
swift build --product fieldgate-hub >/dev/null
HUB_BIN=$(swift build --show-bin-path)/fieldgate-hub

make_work fieldgate-day-one
mkdir -p "$WORK/debs" "$WORK/results" "$WORK/config"
cp "$DEB" "$WORK/debs/"
start_hub
cp "$WORK/hub/certs/ca.pem" "$WORK/config/ca.pem"
# What `az iot hub device-identity connection-string show` would print for each device.
"$HUB_BIN" device create day-one-gw $URL | tail -1 >"$WORK/config/gateway.cs"
"$HUB_BIN" device create day-one-1 $URL | tail -1 >"$WORK/config/leaf1.cs"
sed -n 's/.*SharedAccessKey=\([^;]*\).*/\1/p' <<<"$("$HUB_BIN" device create day-one-2 $URL)" >"$WORK/config/leaf2.key"

write_check_unit "$WORK/check.service" "fieldgate day-one check" /check.sh
cat >"$WORK/check.sh" <<SCRIPT
#!/bin/bash
exec >/results/log 2>&1
set -x
r() { echo "\$2" >"/results/\$1"; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y /debs/$(basename "$DEB") && r installed yes
# The hub's CA (a real IoT Hub's certificate chains to the system's trust store: no --ca-file there); the
# container resolves no "localhost", so the hub is named by its address (TLS still verifies "localhost").
cp /config/ca.pem /etc/fieldgate/hub-ca.pem
fieldgatectl connect --port $AMQPS_PORT --address 127.0.0.1 --ca-file /etc/fieldgate/hub-ca.pem </config/gateway.cs >/results/connect.out 2>&1; r connect "\$?"
r active "\$(systemctl is-active fieldgated)"
fieldgatectl check >/results/check.out 2>&1; r check "\$?"
fieldgatectl leaf add --connection-string "\$(cat /config/leaf1.cs)" --udp-port $UDP_PORT --udp-bind 127.0.0.1 >/results/leaf1.out 2>&1; r leaf1 "\$?"
PID=\$(systemctl show -p MainPID --value fieldgated)
printf '{"device":"day-one-1","values":{"step":"first leaf"}}' >/dev/udp/127.0.0.1/$UDP_PORT
fieldgatectl leaf add day-one-2 --key "\$(cat /config/leaf2.key)" >/results/leaf2.out 2>&1; r leaf2 "\$?"
printf '{"device":"day-one-2","values":{"step":"second leaf, no restart"}}' >/dev/udp/127.0.0.1/$UDP_PORT
sleep 2
r same-process "\$([ "\$PID" = "\$(systemctl show -p MainPID --value fieldgated)" ] && echo yes)"
fieldgatectl status --json >/results/status.json
fieldgatectl leaf list >/results/list.out
# A reload the daemon refuses: systemctl reload fails, the reason is in status and in the journal at error priority.
printf '[[leaf]]\ndevice_id = "no-key-yet"\nadapter = "udp"\n' >/etc/fieldgate/devices.d/no-key-yet.toml
systemctl reload fieldgated; r refused-reload "\$?"
fieldgatectl status >/results/status-refused.out
r refused-at-err "\$(journalctl -u fieldgated -p err -o cat | grep -c 'reload refused')"
rm /etc/fieldgate/devices.d/no-key-yet.toml
systemctl reload fieldgated; r good-reload "\$?"
fieldgatectl leaf remove day-one-2 >/results/remove.out 2>&1; r remove "\$?"
fieldgatectl status --json >/results/status-end.json
journalctl -u fieldgated -o cat >/results/journal
r nice-configured "\$(systemctl show -p LimitNICE --value fieldgated)"
r nice-effective "\$(awk '/Max nice/ {print \$5}' /proc/\$(systemctl show -p MainPID --value fieldgated)/limits)"
journalctl -b -o verbose --grep 'Failed to set thread priority|ConfigurationDirectory' >/results/journal-noise
systemctl poweroff
SCRIPT

echo "test-day-one: booting the container (hub on 127.0.0.1:$AMQPS_PORT)"
boot_container \
  --bind-ro="$WORK/debs:/debs" --bind-ro="$WORK/config:/config" \
  --bind-ro="$WORK/check.service:/etc/systemd/system/check.service" --bind-ro="$WORK/check.sh:/check.sh" \
  --bind="$WORK/results:/results" \
  systemd.wants=check.service

fail() {
  echo "test-day-one: FAILED: $*"
  for f in connect.out check.out leaf1.out leaf2.out status-refused.out remove.out; do
    [ -f "$WORK/results/$f" ] && { echo "--- $f"; cat "$WORK/results/$f"; }
  done
  echo "--- log"; tail -60 "$WORK/results/log" 2>/dev/null; echo "--- journal"; tail -40 "$WORK/results/journal" 2>/dev/null
  echo "--- console"; tail -20 "$WORK/console.log"; exit 1
}
expect() {  # file, expected content
  [ -f "$WORK/results/$1" ] || fail "$1: the check did not get that far"
  [ "$(cat "$WORK/results/$1")" = "$2" ] || fail "$1: expected '$2', got '$(cat "$WORK/results/$1")'"
}
expect installed yes
expect connect 0
grep -q '✓ fieldgated is connected: gateway day-one-gw ready' "$WORK/results/connect.out" || fail "connect did not report the gateway ready"
expect active active
expect check 0
grep -q '^✓ credentials' "$WORK/results/check.out" && ! grep -q '^✗' "$WORK/results/check.out" || fail "check: a check did not pass"
expect leaf1 0
expect leaf2 0
grep -q '✓ day-one-2 is ready on the hub' "$WORK/results/leaf2.out" || fail "leaf add did not see the new leaf ready"
expect same-process yes
OPENS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connections"][0]["opens"])' "$WORK/results/status.json")
[ "$OPENS" = 1 ] || fail "the hub connection was opened $OPENS times (a leaf added must not reconnect)"
EVENTS=$("$HUB_BIN" monitor-events $URL --timeout 5 --from-start 2>/dev/null)
grep -q 'first leaf' <<<"$EVENTS" || fail "the first leaf's telemetry did not reach the hub"
grep -q 'second leaf, no restart' <<<"$EVENTS" || fail "the second leaf's telemetry did not reach the hub"
[ "$(cat "$WORK/results/refused-reload")" != 0 ] || fail "systemctl reload exited 0 for a refused configuration"
grep -q 'RELOAD REFUSED.*no-key-yet' "$WORK/results/status-refused.out" || fail "status does not show the refused reload"
[ "$(cat "$WORK/results/refused-at-err")" -ge 1 ] || fail "the refused reload is not in the journal at error priority"
expect good-reload 0
journal_noise "$WORK/results" 3  # the daemon, and fieldgatectl reload twice (ExecReload runs under the unit)
expect remove 0
echo "test-day-one: ok — apt install; fieldgatectl connect (files written, every check passed, service enabled and started, gateway ready);" \
  "leaf add ×2 (from a connection string, from a key): telemetry of both at the hub, same process, hub connection opened once;" \
  "a refused reload fails systemctl reload and shows in status and at error priority; leaf remove"
echo "test-day-one: what the operator saw:"
for f in connect.out check.out leaf1.out leaf2.out status-refused.out remove.out list.out; do
  echo "  \$ ${f%.out}"; sed 's/^/    /' "$WORK/results/$f"
done
