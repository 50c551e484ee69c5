#!/usr/bin/env bash
# The official Azure IoT service SDK for Python (azure-iot-hub with uamqp, pinned in Tests/peers/requirements.txt)
# against fieldgate-hub, with fieldgated and a UDP leaf behind it (issue 17):
#   - seed 002's SendCloudToDeviceMessage.py, unchanged but for its connection string and device id, sends two
#     C2D messages over AMQP (TLS, SASL MSSBCBS, CBS put-token with the iothubowner policy, /messages/devicebound);
#     both reach the leaf with their message-id, correlation-id, content-type and application property;
#   - a C2D with iothub-ack=full sent through the SDK comes back as a Success record on
#     /messages/serviceBound/feedback, read with uamqp; a batch the reader releases comes back to the next read;
#   - a device uploads a file through IoT Hub file upload (HTTPS); its notification is read over AMQP with uamqp from
#     /messages/serviceBound/filenotifications;
#   - seed 004's reboot flow through IoTHubRegistryManager over HTTPS (invoke_device_method `reboot` on the
#     gateway's identity → 200, then iothubDM.reboot.lastReboot in its twin), and the SDK's registry and twin calls.
# Everything runs in a private network namespace (only its loopback), so the SDK reaches the hub as IoT Hub is
# reached: host name "localhost", AMQPS on 5671, HTTPS on 443; no port of the machine is touched.
# What the SDK needs pointed at the emulator: the hub's CA for uamqp, which trusts certifi's bundle only
# (Tests/peers/with_ca.py runs the unchanged script with certifi.where() answering the hub's CA; REQUESTS_CA_BUNDLE
# does the same for the SDK's HTTPS calls).
# Usage: scripts/sdk-e2e.sh [BIN_DIR]   (default: swift build --show-bin-path; needs fieldgate-hub and fieldgated)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
BIN=${1:-$(swift build --show-bin-path)}
BIN=$(cd "$BIN" && pwd)
if [ -z "${FIELDGATE_SDK_NETNS:-}" ]; then
  exec timeout 300 unshare --net env FIELDGATE_SDK_NETNS=1 bash "$0" "$BIN"
fi
ip link set lo up
HUB=$BIN/fieldgate-hub
PY=$PWD/.venv-peers/bin/python
WORK=$(mktemp -d /tmp/fieldgate-sdk.XXXXXX)
pids=()
cleanup() {
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
  echo "sdk-e2e: FAILED: $*"
  for f in seed002.log seed004.log leaf.log feedback.log gateway.log hub.log; do [ -f "$WORK/$f" ] && { echo "--- $f"; tail -25 "$WORK/$f"; }; done
  exit 1
}

export FIELDGATE_HUB_STATE=$WORK/hub
URL="--url http://127.0.0.1:8080"
"$HUB" certs --dns localhost >/dev/null
"$HUB" serve --amqps-port 5671 --https-port 443 --http-port 8080 --log-level notice >"$WORK/hub.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do "$HUB" device list $URL >/dev/null 2>&1 && break; sleep 0.2; done
key() { sed -n 's/.*SharedAccessKey=\([^;]*\).*/\1/p' <<<"$("$HUB" device create "$1" $URL)"; }
GW_KEY=$(key sdk-gateway)
LEAF_KEY=$(key sdk-leaf)
CA=$FIELDGATE_HUB_STATE/certs/ca.pem
CS=$(cat "$FIELDGATE_HUB_STATE/service-connection-string")

mkdir -p "$WORK/gw"
cat >"$WORK/gw/fieldgate.toml" <<TOML
[hub]
host = "localhost"
port = 5671
ca_file = "$CA"
[gateway]
device_id = "sdk-gateway"
reboot_command = ["true"]
[upload]
logs = true
[spool]
directory = "$WORK/gw/spool"
[udp]
bind = "127.0.0.1"
port = 47000
[control]
socket = "$WORK/gw/control.sock"
[[leaf]]
device_id = "sdk-leaf"
adapter = "udp"
TOML
(umask 077; printf '[keys]\nsdk-gateway = "%s"\nsdk-leaf = "%s"\n' "$GW_KEY" "$LEAF_KEY" >"$WORK/gw/secrets.toml")
"$BIN/fieldgated" run --config "$WORK/gw/fieldgate.toml" --log-level notice >"$WORK/gateway.log" 2>&1 &
pids+=($!)
"$BIN/fieldgated" simulate-udp-leaf --device sdk-leaf --port 47000 --duration 240 >"$WORK/leaf.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$HUB" monitor-events --from-start --timeout 1 $URL 2>/dev/null | grep -q '"sdk-leaf"' && break; done

# Seed 002, filled in as its reader would; Enter answers its closing prompt.
sed -e "s|{IoTHubConnectionString}|$CS|" -e "s|{deviceId}|sdk-leaf|" Tests/peers/seeds/SendCloudToDeviceMessage.py >"$WORK/SendCloudToDeviceMessage.py"
echo | timeout 60 "$PY" Tests/peers/with_ca.py "$CA" "$WORK/SendCloudToDeviceMessage.py" >"$WORK/seed002.log" 2>&1 \
  || fail "seed 002 exited $?"
grep -q "Unexpected error" "$WORK/seed002.log" && fail "seed 002 reported an error"
for i in 0 1; do
  for _ in $(seq 50); do grep -q "\"message_$i\"" "$WORK/leaf.log" && break; sleep 0.2; done
  line=$(grep "\"message_$i\"" "$WORK/leaf.log" || true)
  for want in "\"correlationId\":\"correlation_$i\"" '"contentType":"application/json"' "\"testProperty\":\"PropMsg_$i\"" 'service client sent a message'; do
    grep -qF "$want" <<<"$line" || fail "message_$i at the leaf lacks $want: $line"
  done
done
echo "sdk-e2e: seed 002 (azure-iot-hub send_c2d_message over AMQP) → fieldgated → the UDP leaf: message_0 and message_1 with correlation-id, content-type and testProperty"

# Delivery feedback (seed 000's flow, with the Python SDK and uamqp).
send_acked() {  # message id
  cat >"$WORK/send_acked.py" <<PYTHON
from azure.iot.hub import IoTHubRegistryManager
IoTHubRegistryManager("$CS").send_c2d_message("sdk-leaf", "{\"ack\": \"me\"}", properties={"messageId": "$1", "iothub-ack": "full"})
print("sent $1")
PYTHON
  timeout 60 "$PY" Tests/peers/with_ca.py "$CA" "$WORK/send_acked.py" >>"$WORK/seed002.log" 2>&1
}
send_acked sdk-feedback-1 || fail "send_c2d_message with iothub-ack=full"
grep -q "sdk-feedback-1" "$WORK/leaf.log" || { sleep 3; grep -q "sdk-feedback-1" "$WORK/leaf.log" || fail "the acked message did not reach the leaf"; }
timeout 60 "$PY" Tests/peers/feedback_receiver.py "$CS" "$CA" 1 30 >"$WORK/feedback.log" 2>&1 || fail "no feedback record read"
grep -q '"originalMessageId": "sdk-feedback-1"' "$WORK/feedback.log" || fail "feedback: $(cat "$WORK/feedback.log")"
grep -q '"statusCode": "Success"' "$WORK/feedback.log" || fail "feedback status: $(cat "$WORK/feedback.log")"
grep -q '"contentType": "application/vnd.microsoft.iothub.feedback.json"' "$WORK/feedback.log" || fail "feedback content type"
grep -q '"deviceId": "sdk-leaf"' "$WORK/feedback.log" || fail "feedback device"
# Released records are not lost: the same reader gets them again, once.
send_acked sdk-feedback-2 || fail "send_c2d_message with iothub-ack=full"
timeout 60 "$PY" Tests/peers/feedback_receiver.py "$CS" "$CA" 1 30 --release-first >"$WORK/feedback.log" 2>&1 || fail "released feedback did not come back"
grep -q '"released": 1' "$WORK/feedback.log" || fail "the reader did not release a batch: $(cat "$WORK/feedback.log")"
[ "$(grep -c '"originalMessageId": "sdk-feedback-2"' "$WORK/feedback.log")" = 1 ] || fail "after a release: $(cat "$WORK/feedback.log")"
echo "sdk-e2e: feedback over AMQP (uamqp, /messages/serviceBound/feedback): Success for sdk-feedback-1 (content type application/vnd.microsoft.iothub.feedback.json); a released batch came back once"

# File upload as a device does it (HTTPS with requests, the device's own SAS), and the file-upload notification read
# over AMQP with uamqp, as a service SDK reads /messages/serviceBound/filenotifications. (The gateway's logs method
# uploads through the same endpoints; it is checked with a real journal in scripts/systemd-e2e.sh.)
DEVICE_CS=$("$HUB" device show sdk-leaf --connection-string-only $URL)
blob=$(timeout 60 "$PY" Tests/peers/device_upload.py "$DEVICE_CS" "$CA" "sdk/readings.txt" "uploaded by a device" 2>"$WORK/upload.log") \
  || fail "device file upload: $(cat "$WORK/upload.log")"
[ "$blob" = "sdk-leaf/sdk/readings.txt" ] || fail "the hub named the blob $blob"
[ "$("$HUB" files get $URL "$blob")" = "uploaded by a device" ] || fail "the blob $blob does not hold what was uploaded"
timeout 60 "$PY" Tests/peers/feedback_receiver.py "$CS" "$CA" 1 30 --file-notifications >"$WORK/filenotifications.log" 2>&1 \
  || fail "no file notification read: $(cat "$WORK/filenotifications.log")"
grep -q "\"blobName\": \"$blob\"" "$WORK/filenotifications.log" || fail "file notification: $(cat "$WORK/filenotifications.log")"
grep -q '"blobSizeInBytes": 20' "$WORK/filenotifications.log" || fail "file notification size: $(cat "$WORK/filenotifications.log")"
grep -q '"contentType": "application/vnd.microsoft.iothub.filenotification.json"' "$WORK/filenotifications.log" || fail "file notification content type"
# Without a readable journal (no journald here), the gateway's logs method says so instead of uploading nothing.
"$HUB" method invoke $URL sdk-gateway logs --payload '{"since": "1h"}' >"$WORK/logs.log" 2>&1 || true
grep -q "no journal file is readable" "$WORK/logs.log" || fail "logs method without a journal: $(cat "$WORK/logs.log")"
echo "sdk-e2e: file upload: a device (requests, its SAS) uploaded $blob; its notification read over AMQP with uamqp (/messages/serviceBound/filenotifications); the logs method without a journal answers why"

# Seed 004's reboot flow over the HTTPS REST API (invoke_device_method, get_twin) on the gateway's own identity.
timeout 90 "$PY" Tests/peers/with_ca.py "$CA" Tests/peers/seed004_reboot.py "$CS" sdk-gateway >"$WORK/seed004.log" 2>&1 \
  || fail "seed 004: $(tail -5 "$WORK/seed004.log")"
grep -q "reboot: status 200" "$WORK/seed004.log" || fail "seed 004: $(cat "$WORK/seed004.log")"
echo "sdk-e2e: seed 004 over HTTPS (IoTHubRegistryManager.invoke_device_method reboot → 200, get_twin → $(grep lastReboot "$WORK/seed004.log"))"

# The registry and twin calls over HTTPS.
timeout 90 "$PY" Tests/peers/with_ca.py "$CA" Tests/peers/registry_calls.py "$CS" sdk-registry-device >"$WORK/registry.log" 2>&1 \
  || fail "registry calls: $(tail -5 "$WORK/registry.log")"
grep -q "delete_device: gone" "$WORK/registry.log" || fail "registry calls: $(cat "$WORK/registry.log")"
grep -q "create_device_with_certificate_authority: certificateAuthority" "$WORK/registry.log" || fail "registry calls (X.509): $(cat "$WORK/registry.log")"
echo "sdk-e2e: IoTHubRegistryManager over HTTPS: create/get/update/delete_device_with_sas, get_twin, update_twin, replace_twin, create_device_with_x509, create_device_with_certificate_authority"
