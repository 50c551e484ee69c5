#!/usr/bin/env bash
# fieldgated under real systemd (issue 8, test 10): a Debian 12 root file system booted with systemd-nspawn
# (docs/toolchain.md §5) runs systemd/fieldgated.service against a fieldgate-hub on the host's loopback. Checks:
# the unit becomes active (Type=notify READY), runs as the fieldgate user with its watchdog configured, telemetry
# from a UDP leaf reaches the hub over AMQP over WebSockets, and a frozen daemon (SIGSTOP) is killed by the watchdog and restarted.
# Where the machine cannot boot a container, it says why and exits 0. Usage: scripts/systemd-e2e.sh [bin dir]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-$(swift build --show-bin-path 2>/dev/null || echo .build/debug)}
. scripts/lib-nspawn.sh
[ -x "$BIN/fieldgated" ] && [ -x "$BIN/fieldgate-hub" ] || { echo "systemd-e2e: build first ($BIN/fieldgated missing)"; exit 1; }
obstacle=$(boot_obstacle); [ -z "$obstacle" ] || skip "cannot boot a container: $obstacle"
ensure_rootfs
HUB_BIN=$BIN/fieldgate-hub

make_work fieldgate-e2e
mkdir -p "$WORK/etc/devices.d" "$WORK/results" "$WORK/units/fieldgated.service.d"
start_hub
GW_KEY=$(create_device e2e-gateway)
LEAF_KEY=$(create_device e2e-leaf)

write_gateway_config "$WORK/etc" e2e-gateway "the end-to-end check"
# Over AMQP over WebSockets (the hub's HTTPS port): the tunnel (libcurl, TLS, framing) under the unit's sandbox.
sed -i "s|^\[hub\]|[hub]\ntransport = \"amqps-websocket\"\nwebsocket_port = $HTTPS_PORT\nproxy = \"none\"|" "$WORK/etc/fieldgate.toml"
# The gateway's logs method (issue 23.2): journal excerpts uploaded through the hub's file upload.
printf '[upload]\nlogs = true\n' >>"$WORK/etc/fieldgate.toml"
# e2e-stranger is not registered at the hub: its refusals are logged with its LEAF field (the logs method's filter).
printf '[[leaf]]\ndevice_id = "e2e-leaf"\nadapter = "udp"\n\n[[leaf]]\ndevice_id = "e2e-stranger"\nadapter = "udp"\n' >"$WORK/etc/devices.d/leaf.toml"
printf '[keys]\ne2e-gateway = "%s"\ne2e-leaf = "%s"\ne2e-stranger = "%s"\n' "$GW_KEY" "$LEAF_KEY" "$LEAF_KEY" >"$WORK/etc/secrets.toml"
chmod 600 "$WORK/etc/secrets.toml"

# The shipped unit, with a short watchdog for the test.
printf '[Service]\nWatchdogSec=3s\nRestartSec=1s\n' >"$WORK/units/fieldgated.service.d/e2e.conf"
cat >"$WORK/units/fieldgate-e2e.service" <<'UNIT'
[Unit]
Description=fieldgate end-to-end check
After=systemd-sysusers.service
[Service]
Type=oneshot
ExecStart=/bin/bash /e2e.sh
UNIT
cat >"$WORK/e2e.sh" <<SCRIPT
#!/bin/bash
exec >/results/log 2>&1
set -x
# As the package sets it up: the keys root:fieldgate 0640 (the group exists only once the container booted).
install -d -m 0750 -g fieldgate /etc/fieldgate && cp -a /config/. /etc/fieldgate/
chgrp fieldgate /etc/fieldgate/secrets.toml && chmod 0640 /etc/fieldgate/secrets.toml
systemctl start fieldgated
systemctl is-active fieldgated >/results/active
systemctl show fieldgated -p ActiveState -p SubState -p WatchdogUSec -p NRestarts -p StatusText -p Type >/results/show-before
stat -c %U "/proc/\$(systemctl show -p MainPID --value fieldgated)" >/results/user
printf '{"device":"e2e-leaf","values":{"e2e":"through systemd"}}' >/dev/udp/127.0.0.1/$UDP_PORT
sleep 3
# The host invokes the logs method now (it waits for this file) and says when it has the answer.
touch /results/logs-wanted
for i in \$(seq 160); do [ -f /results/logs-done ] && break; sleep 0.25; done
kill -STOP "\$(systemctl show -p MainPID --value fieldgated)"
for i in \$(seq 60); do [ "\$(systemctl show -p NRestarts --value fieldgated)" -ge 1 ] && break; sleep 0.25; done
for i in \$(seq 40); do systemctl is-active -q fieldgated && break; sleep 0.25; done
systemctl show fieldgated -p ActiveState -p NRestarts >/results/show-after
journalctl -u fieldgated --no-pager -o short-monotonic >/results/journal
systemctl poweroff
SCRIPT

# While the container runs: once the daemon is up there, the logs method, from the service side.
(
  for _ in $(seq 480); do [ -f "$WORK/results/logs-wanted" ] && break; sleep 0.25; done
  "$HUB_BIN" method invoke $URL e2e-gateway logs --payload '{"since": "10m", "priority": "info"}' --timeout 30 >"$WORK/results/logs-answer" 2>&1
  "$HUB_BIN" method invoke $URL e2e-gateway logs --payload '{"since": "10m", "leaf": "e2e-stranger"}' --timeout 30 >"$WORK/results/logs-answer-leaf" 2>&1
  touch "$WORK/results/logs-done"
) &

echo "systemd-e2e: booting the container (hub on 127.0.0.1:$AMQPS_PORT)"
SWIFT_RUNTIME=()
[ -d /opt/swift ] && SWIFT_RUNTIME=(--bind-ro=/opt/swift)  # a debug build links the Swift runtime from there
boot_container "${SWIFT_RUNTIME[@]}" \
  --bind-ro="$BIN/fieldgated:/usr/sbin/fieldgated" \
  --bind-ro="$BIN/fieldgated:/usr/bin/fieldgatectl" \
  --bind-ro="$PWD/systemd/fieldgated.service:/etc/systemd/system/fieldgated.service" \
  --bind-ro="$PWD/systemd/sysusers.conf:/etc/sysusers.d/fieldgate.conf" \
  --bind-ro="$WORK/units/fieldgated.service.d:/etc/systemd/system/fieldgated.service.d" \
  --bind-ro="$WORK/units/fieldgate-e2e.service:/etc/systemd/system/fieldgate-e2e.service" \
  --bind-ro="$WORK/etc:/config" \
  --bind-ro="$WORK/e2e.sh:/e2e.sh" \
  --bind="$WORK/results:/results" \
  systemd.wants=fieldgate-e2e.service

fail() { echo "systemd-e2e: FAILED: $*"; echo "--- log"; cat "$WORK/results/log" 2>/dev/null; echo "--- journal"; tail -40 "$WORK/results/journal" 2>/dev/null; echo "--- console"; tail -30 "$WORK/console.log"; exit 1; }
[ -f "$WORK/results/active" ] || fail "the check never ran"
[ "$(cat "$WORK/results/active")" = active ] || fail "fieldgated did not become active"
grep -q '^WatchdogUSec=3s' "$WORK/results/show-before" || fail "no watchdog: $(cat "$WORK/results/show-before")"
grep -q '^StatusText=hub:' "$WORK/results/show-before" || fail "no STATUS= text: $(cat "$WORK/results/show-before")"
[ "$(tr -d ' ' <"$WORK/results/user")" = fieldgate ] || fail "runs as $(cat "$WORK/results/user"), not fieldgate"
"$HUB_BIN" monitor-events $URL --timeout 5 --from-start 2>/dev/null | grep -q 'through systemd' \
  || fail "the UDP reading did not reach the hub"
grep -q 'connected to localhost over AMQP over WebSockets' "$WORK/results/journal" \
  || fail "the journal does not show the WebSocket connection: $(grep -m3 uplink "$WORK/results/journal")"
grep -q 'Watchdog timeout' "$WORK/results/journal" || fail "systemd logged no watchdog timeout for the frozen daemon"
grep -q '^NRestarts=1' "$WORK/results/show-after" && grep -q '^ActiveState=active' "$WORK/results/show-after" \
  || fail "not restarted by the watchdog: $(cat "$WORK/results/show-after")"
# The logs method: 200 with a blob name; the blob is gzip'd JSON lines of fieldgated's journal entries.
grep -q '"status" *: *200' "$WORK/results/logs-answer" || fail "the logs method did not answer 200: $(cat "$WORK/results/logs-answer")"
blob=$(sed -n 's/.*"blobName" *: *"\([^"]*\)".*/\1/p' "$WORK/results/logs-answer" | head -1)
[ -n "$blob" ] || fail "the logs answer names no blob: $(cat "$WORK/results/logs-answer")"
"$HUB_BIN" files get $URL "$blob" -o "$WORK/logs.jsonl.gz" || fail "the blob $blob is not in the hub's store"
gunzip -c "$WORK/logs.jsonl.gz" >"$WORK/logs.jsonl" || fail "the uploaded logs are not gzip"
grep -q '"message":"uplink\[0\]: connected to localhost over AMQP over WebSockets' "$WORK/logs.jsonl" \
  || fail "the uploaded excerpt lacks the connection line: $(head -c 600 "$WORK/logs.jsonl")"
grep -q '"FIELDGATE_COMPONENT":"Uplink"' "$WORK/logs.jsonl" || fail "the excerpt's entries lack their fields: $(head -c 400 "$WORK/logs.jsonl")"
if grep -q '"priority":7' "$WORK/logs.jsonl"; then fail "priority info let debug entries through"; fi
"$HUB_BIN" files notifications $URL | grep -q "\"blobName\" *: *\"$blob\"" || fail "no file-upload notification for $blob"
entries=$(sed -n 's/.*"entries" *: *\([0-9]*\).*/\1/p' "$WORK/results/logs-answer" | head -1)
# The leaf filter: only entries about e2e-stranger (the hub's refusals of it).
leafblob=$(sed -n 's/.*"blobName" *: *"\([^"]*\)".*/\1/p' "$WORK/results/logs-answer-leaf" | head -1)
[ -n "$leafblob" ] || fail "the logs method with a leaf filter named no blob: $(cat "$WORK/results/logs-answer-leaf")"
"$HUB_BIN" files get $URL "$leafblob" -o "$WORK/logs-leaf.jsonl.gz" || fail "the blob $leafblob is not in the hub's store"
gunzip -c "$WORK/logs-leaf.jsonl.gz" >"$WORK/logs-leaf.jsonl"
leafentries=$(grep -c . "$WORK/logs-leaf.jsonl" || true)
[ "$leafentries" -gt 0 ] || fail "no journal entry about e2e-stranger"
[ "$(grep -c '"LEAF":"e2e-stranger"' "$WORK/logs-leaf.jsonl")" = "$leafentries" ] || fail "the leaf filter let other entries through: $(grep -v '"LEAF":"e2e-stranger"' "$WORK/logs-leaf.jsonl" | head -c 400)"

echo "systemd-e2e: ok — active as user fieldgate (Type=notify, WatchdogSec=3s, status \"$(sed -n 's/^StatusText=//p' "$WORK/results/show-before")\"), telemetry reached the hub, the frozen daemon was killed by the watchdog and restarted; the logs method uploaded $entries journal entries as $blob ($leafentries about e2e-stranger with its filter)"
