#!/usr/bin/env bash
# The demo: fieldgate-hub (a strict local IoT Hub) plus a scripted device, with data flowing both ways:
# telemetry up, a C2D message down with feedback (seed 000), a direct method `reboot` answered and reported in
# the twin (seed 004). Installs what it needs (scripts/setup.sh). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
swift build --product fieldgate-hub
HUB=$(swift build --show-bin-path)/fieldgate-hub

AMQPS_PORT=${AMQPS_PORT:-5671}
HTTP_PORT=${HTTP_PORT:-8080}
export FIELDGATE_HUB_STATE=${FIELDGATE_HUB_STATE:-$PWD/demo-state}
URL="--url http://127.0.0.1:$HTTP_PORT"
mkdir -p "$FIELDGATE_HUB_STATE"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "TLS certificates for the hub (local CA, DNS name localhost)"
"$HUB" certs --dns localhost

step "fieldgate-hub serve (AMQPS :$AMQPS_PORT, service API :$HTTP_PORT)"
"$HUB" serve --amqps-port "$AMQPS_PORT" --http-port "$HTTP_PORT" --log-level warning &
pids+=($!)
for _ in $(seq 50); do "$HUB" device list $URL >/dev/null 2>&1 && break; sleep 0.2; done

step "device create myFirstNodeDevice"
"$HUB" device delete myFirstNodeDevice $URL >/dev/null 2>&1 || true
CS=$("$HUB" device create myFirstNodeDevice $URL)
echo "$CS"

step "a scripted device: telemetry every second, completes C2D, answers reboot"
"$HUB" simulate-device --connection-string "$CS" --port "$AMQPS_PORT" --ca-file "$FIELDGATE_HUB_STATE/certs/ca.pem" --duration 12 &
pids+=($!)
sleep 3

step "cloud → device: C2D with ack=full (seed 000)"
"$HUB" c2d send myFirstNodeDevice "Cloud to device message." --message-id "My Message ID" --ack full $URL
step "feedback"
"$HUB" feedback --wait 10 $URL

step "cloud → device: C2D with properties (seeds 001/002)"
"$HUB" c2d send myFirstNodeDevice '{"service client sent a message": 12.40}' --message-id message_0 \
  --correlation-id correlation_0 --content-type application/json --property testProperty=PropMsg_0 $URL

step "direct method reboot (seed 004)"
"$HUB" method invoke myFirstNodeDevice reboot --timeout 30 $URL
sleep 1
step "twin show: properties.reported.iothubDM.reboot.lastReboot"
"$HUB" twin show myFirstNodeDevice $URL

step "device → cloud: the last telemetry events the hub received"
"$HUB" monitor-events --from-start --count 3 $URL
sleep 1
echo
echo "demo done (state in $FIELDGATE_HUB_STATE)"
