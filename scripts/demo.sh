#!/usr/bin/env bash
# The demo: fieldgate-hub (a strict local IoT Hub) + fieldgated (the gateway) + two simulated UDP leaf devices,
# with data flowing both ways through the gateway's one AMQP connection: telemetry up; C2D with feedback (seed 000,
# with properties as in seeds 001/002), a leaf method and a desired-property change down; the gateway's own
# `reboot` (seed 004) with lastReboot in its twin. Installs what it needs (scripts/setup.sh). Debian 12, as root.
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

step "device identities: the gateway itself and two UDP leaves"
GW_KEY=$(key_of "$("$HUB" device create fieldgate-demo $URL)")
M1_KEY=$(key_of "$("$HUB" device create udp-meter-1 $URL)")
M2_KEY=$(key_of "$("$HUB" device create udp-meter-2 $URL)")
"$HUB" device list $URL

step "fieldgated configuration ($STATE/gateway: fieldgate.toml, devices.d/, secrets.toml)"
mkdir -p "$STATE/gateway/devices.d"
cat >"$STATE/gateway/fieldgate.toml" <<TOML
[hub]
host = "localhost"
address = "127.0.0.1"
port = $AMQPS_PORT
ca_file = "$FIELDGATE_HUB_STATE/certs/ca.pem"

[gateway]
device_id = "fieldgate-demo"
reboot_command = ["true"]   # the demo does not reboot this machine

[spool]
directory = "$STATE/gateway/spool"
cap_mb = 64

[udp]
bind = "127.0.0.1"
port = $UDP_PORT

[control]
socket = "$STATE/gateway/control.sock"
TOML
cat >"$STATE/gateway/devices.d/udp-meters.toml" <<TOML
[[leaf]]
device_id = "udp-meter-1"
adapter = "udp"
allowed_sources = ["127.0.0.1"]

[[leaf]]
device_id = "udp-meter-2"
adapter = "udp"
TOML
# Keys live apart from the configuration, readable by the daemon alone.
(umask 077; cat >"$STATE/gateway/secrets.toml" <<TOML
[keys]
fieldgate-demo = "$GW_KEY"
udp-meter-1 = "$M1_KEY"
udp-meter-2 = "$M2_KEY"
TOML
)
cat "$STATE/gateway/fieldgate.toml" "$STATE/gateway/devices.d/udp-meters.toml"
echo "(+ secrets.toml, mode $(stat -c %a "$STATE/gateway/secrets.toml"): the three device keys)"

step "fieldgated run (one AMQP connection for the gateway and both leaves)"
"$GW" run --config "$STATE/gateway/fieldgate.toml" --log-level notice &
pids+=($!)
sleep 2

step "two simulated UDP leaves: a reading every second; they print what the gateway sends them"
"$GW" simulate-udp-leaf --device udp-meter-1 --port "$UDP_PORT" --duration 20 &
pids+=($!)
"$GW" simulate-udp-leaf --device udp-meter-2 --port "$UDP_PORT" --interval 2 --duration 20 &
pids+=($!)
sleep 3

step "device → cloud: telemetry at the hub, each leaf as itself"
"$HUB" monitor-events --from-start --count 4 $URL

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
