#!/usr/bin/env bash
# The demo: fieldgate-hub (a strict local IoT Hub) + fieldgated (the gateway, configured from etc/demo) + a
# simulated Modbus TCP boiler (pymodbus) + two simulated UDP leaf devices, with data flowing both ways through the
# gateway's one AMQP connection: telemetry up; C2D with feedback (seed 000, with properties as in seeds 001/002)
# writing a Modbus register, leaf methods and desired properties down; the gateway's own `reboot` (seed 004) with
# lastReboot in its twin. Installs what it needs (scripts/setup.sh). Debian 12, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
swift build --product fieldgate-hub
swift build --product fieldgated
swift build --product fieldgatectl
BIN=$(swift build --show-bin-path)
HUB=$BIN/fieldgate-hub
GW=$BIN/fieldgated
CTL=$BIN/fieldgatectl

AMQPS_PORT=${AMQPS_PORT:-5671}
HTTP_PORT=${HTTP_PORT:-8080}
UDP_PORT=${UDP_PORT:-47000}
MODBUS_PORT=${MODBUS_PORT:-5020}
STATE=${DEMO_STATE:-$PWD/demo-state}
export FIELDGATE_HUB_STATE=$STATE/hub
URL="--url http://127.0.0.1:$HTTP_PORT"
rm -rf "$STATE"
mkdir -p "$FIELDGATE_HUB_STATE" "$STATE/gateway"
pids=()
# Stop in reverse order: leaves, then the gateway (it closes its connection), then the hub.
cleanup() {
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
key_of() { sed -n 's/.*SharedAccessKey=\([^;]*\).*/\1/p' <<<"$1"; }

step "fieldgate-hub: TLS certificates (local CA, DNS name localhost), then serve (AMQPS :$AMQPS_PORT, service API :$HTTP_PORT)"
"$HUB" certs --dns localhost
"$HUB" serve --amqps-port "$AMQPS_PORT" --http-port "$HTTP_PORT" --log-level warning &
pids+=($!)
for _ in $(seq 50); do "$HUB" device list $URL >/dev/null 2>&1 && break; sleep 0.2; done

step "device identities: the gateway itself, a Modbus boiler and two UDP leaves"
GW_KEY=$(key_of "$("$HUB" device create fieldgate-demo $URL)")
B1_KEY=$(key_of "$("$HUB" device create boiler-1 $URL)")
M1_KEY=$(key_of "$("$HUB" device create udp-meter-1 $URL)")
M2_KEY=$(key_of "$("$HUB" device create udp-meter-2 $URL)")
"$HUB" device list $URL

step "a simulated Modbus TCP boiler (pymodbus, :$MODBUS_PORT): temperature 21.5 °C drifting, pressure 1.5 bar, setpoint 45.0 °C"
MODBUS_CONTROL=$STATE/modbus.sock
.venv-peers/bin/python Tests/peers/modbus_server.py --tcp "127.0.0.1:$MODBUS_PORT" --units 1 \
  --control "$MODBUS_CONTROL" --ready-file "$STATE/modbus.ready" --wander 1:holding_registers:0 \
  --init '[{"unit": 1, "table": "holding_registers", "address": 0, "values": [215, 16320, 0, 0, 0, 450]}]' &
pids+=($!)
for _ in $(seq 100); do [ -f "$STATE/modbus.ready" ] && break; sleep 0.1; done
modbus() { socat - "UNIX-CONNECT:$MODBUS_CONTROL" <<<"$1"; }

step "fieldgated configuration (etc/demo → $STATE/gateway: fieldgate.toml, devices.d/, profiles.d/, secrets.toml)"
cp -r etc/demo/. "$STATE/gateway/"
sed -i -e "s|@AMQPS_PORT@|$AMQPS_PORT|g" -e "s|@UDP_PORT@|$UDP_PORT|g" -e "s|@MODBUS_PORT@|$MODBUS_PORT|g" \
       -e "s|@STATE@|$STATE|g" -e "s|@HUB_STATE@|$FIELDGATE_HUB_STATE|g" \
       "$STATE/gateway/fieldgate.toml" "$STATE/gateway/devices.d/"*.toml
# Keys live apart from the configuration, readable by the daemon alone.
(umask 077; cat >"$STATE/gateway/secrets.toml" <<TOML
[keys]
fieldgate-demo = "$GW_KEY"
boiler-1 = "$B1_KEY"
udp-meter-1 = "$M1_KEY"
udp-meter-2 = "$M2_KEY"
TOML
)
cat "$STATE/gateway/fieldgate.toml" "$STATE/gateway/devices.d/"*.toml
echo "(+ profiles.d/demo-boiler.toml: the boiler's register map; secrets.toml, mode $(stat -c %a "$STATE/gateway/secrets.toml"): the device keys)"
"$CTL" config check --config "$STATE/gateway/fieldgate.toml"

step "fieldgated run (one AMQP connection for the gateway and all three leaves)"
"$GW" run --config "$STATE/gateway/fieldgate.toml" --log-level notice &
pids+=($!)
sleep 2

step "two simulated UDP leaves: a reading every second; they print what the gateway sends them"
"$GW" simulate-udp-leaf --device udp-meter-1 --port "$UDP_PORT" --duration 20 &
pids+=($!)
"$GW" simulate-udp-leaf --device udp-meter-2 --port "$UDP_PORT" --interval 2 --duration 20 &
pids+=($!)
sleep 3

step "device → cloud: telemetry at the hub, each leaf as itself (the boiler: a full report, then changes past the deadband)"
"$HUB" monitor-events --from-start --count 6 $URL

step "cloud → Modbus leaf: C2D {\"setpoint\": 60} to boiler-1 with ack=full; the gateway writes holding register 5"
"$HUB" c2d send boiler-1 '{"setpoint": 60}' --message-id "demo-modbus-1" --ack full $URL
"$HUB" feedback --wait 10 $URL
echo "the simulator's holding register 5 (setpoint × 10): $(modbus '{"cmd": "get", "unit": 1, "table": "holding_registers", "address": 5, "count": 1}')"

step "cloud → Modbus leaf: direct methods write (with read-back) and read on boiler-1"
"$HUB" method invoke boiler-1 write --payload '{"points": {"pump": true, "setpoint": 55.5}, "readback": true}' --timeout 10 $URL
"$HUB" method invoke boiler-1 read --payload '{"points": ["temperature", "pressure", "setpoint", "pump"]}' --timeout 10 $URL

step "cloud → Modbus leaf: desired poll_ms and a deadband on boiler-1; the gateway reports what it applied"
"$HUB" twin patch boiler-1 --desired '{"poll_ms": 2000, "points": {"temperature": {"deadband": 1.0}}}' $URL >/dev/null
sleep 2
"$HUB" twin show boiler-1 $URL

step "cloud → leaf: C2D with ack=full and properties (seeds 000/001/002); the leaf acknowledges it"
"$HUB" c2d send udp-meter-1 '{"setpoint": 22.5}' --message-id "demo-c2d-1" --ack full --property testProperty=PropMsg_0 $URL
"$HUB" feedback --wait 10 $URL

step "cloud → leaf: direct method 'write' on udp-meter-1, answered by the device"
"$HUB" method invoke udp-meter-1 write --payload '{"setpoint": 23}' --timeout 10 $URL

step "cloud → leaf: desired property on udp-meter-2; the gateway reports what was applied"
"$HUB" twin patch udp-meter-2 --desired '{"pollSeconds": 5}' $URL >/dev/null
sleep 2
"$HUB" twin show udp-meter-2 $URL

step "the gateway's own identity: direct method reboot (seed 004), then its twin has lastReboot"
"$HUB" method invoke fieldgate-demo reboot --timeout 30 $URL
sleep 2
"$HUB" twin show fieldgate-demo $URL

step "the gateway's status method"
"$HUB" method invoke fieldgate-demo status $URL
echo

step "the operator's view: fieldgatectl over the control socket"
"$CTL" status --socket "$STATE/gateway/control.sock"
echo
"$CTL" devices --socket "$STATE/gateway/control.sock"
echo
echo "demo done (state in $STATE)"
