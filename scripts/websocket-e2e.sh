#!/usr/bin/env bash
# AMQP over WebSockets through a real HTTP proxy (issue 20). Two network namespaces joined by a veth pair:
#   net (10.77.0.1): fieldgate-hub (AMQPS 5671, HTTPS + WebSockets 443) and tinyproxy (3128 with Basic auth,
#                    3129 that allows CONNECT to 8443 only) and an intercepting proxy (3130) that presents another
#                    certificate for the hub's name;
#   gw  (10.77.0.2): fieldgated. The site's firewall (nftables, on the far side of the link) resets every TCP
#                    connection from the gateway except to the proxies, so the only way out is a proxy, as on a
#                    locked-down site. 10.77.0.9 (hub-old) is a dead address there: nothing listens.
# The gateway is configured as a site would be: transport "auto", a first hub host that is dead, the real hub as
# fallback host, the authenticating proxy. Checks, in order:
#   1. wrong proxy password: a clear error (407, or tinyproxy's 401), retries, readings spooled meanwhile;
#   2. right password: AMQPS fails, the fallback host is reached over WebSockets through the proxy; every reading
#      arrives; the gateway's own `status` and `reboot` (seed 004) methods answer over it; its twin says host and
#      transport and has lastReboot; fieldgatectl check passes with 5671 closed as a warning;
#   3. a stream of readings across a proxy restart and a hub restart: nothing lost;
#   4. a proxy whose rules refuse CONNECT to 443: a clear 403 error (status and fieldgatectl check); the readings
#      spooled meanwhile go out later through a proxy without authentication;
#   5. TLS interception (another certificate for the hub's name): refused, no token sent to it.
# Usage: scripts/websocket-e2e.sh [bin dir]. Needs root, iproute2, nftables, tinyproxy (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-$(swift build --show-bin-path 2>/dev/null || echo .build/debug)}
HUB_BIN=$BIN/fieldgate-hub GW_BIN=$BIN/fieldgated CTL_BIN=$BIN/fieldgatectl
for b in "$HUB_BIN" "$GW_BIN" "$CTL_BIN"; do [ -x "$b" ] || { echo "websocket-e2e: build first ($b missing)"; exit 1; }; done
[ "$(id -u)" = 0 ] || { echo "websocket-e2e: SKIPPED: needs root (network namespaces)"; exit 0; }
for t in ip nft tinyproxy python3; do command -v $t >/dev/null || { echo "websocket-e2e: $t missing (scripts/setup.sh installs it)"; exit 1; }; done

SUFFIX=$$
NET=fg-net-$SUFFIX GW=fg-gw-$SUFFIX
WORK=$(mktemp -d /tmp/fieldgate-ws-e2e.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NET" 2>/dev/null || true
  ip netns del "$GW" 2>/dev/null || true
  rm -rf "/etc/netns/$NET" "/etc/netns/$GW" "$WORK"
}
trap cleanup EXIT
fail() {
  echo "websocket-e2e: FAILED: $*"
  echo "--- fieldgated (last 30 lines)"; tail -30 "$WORK/gw.log" 2>/dev/null || true
  echo "--- hub"; tail -10 "$WORK/hub.log" 2>/dev/null || true
  echo "--- tinyproxy"; tail -10 "$WORK/proxy/log" 2>/dev/null || true
  exit 1
}
say() { echo "websocket-e2e: $*"; }
in_net() { ip netns exec "$NET" "$@"; }
in_gw() { ip netns exec "$GW" "$@"; }
# (Background processes start with `ip netns exec` itself, not these functions, so $! is the process.)

# --- the two hosts
ip netns add "$NET"; ip netns add "$GW"
ip link add "fgn$SUFFIX" type veth peer name "fgg$SUFFIX"
ip link set "fgn$SUFFIX" netns "$NET"; ip link set "fgg$SUFFIX" netns "$GW"
in_net ip addr add 10.77.0.1/24 dev "fgn$SUFFIX"; in_net ip addr add 10.77.0.9/24 dev "fgn$SUFFIX"; in_net ip link set "fgn$SUFFIX" up; in_net ip link set lo up
in_gw ip addr add 10.77.0.2/24 dev "fgg$SUFFIX"; in_gw ip link set "fgg$SUFFIX" up; in_gw ip link set lo up
# Names resolve through each namespace's own hosts file (ip netns exec mounts /etc/netns/NAME/hosts).
for ns in "$NET" "$GW"; do
  mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1 localhost\n10.77.0.1 hub.fieldgate.test\n10.77.0.9 hub-old.fieldgate.test\n' >"/etc/netns/$ns/hosts"
done
# The site's firewall: from the gateway, only the proxies are reachable (a reset, so refusals are quick).
in_net nft -f - <<'NFT'
table inet site {
  chain in {
    type filter hook input priority 0;
    ip saddr 10.77.0.2 tcp dport { 3128, 3129, 3130, 3131 } accept
    ip saddr 10.77.0.2 meta l4proto tcp reject with tcp reset
  }
}
NFT

# --- the hub
mkdir -p "$WORK/hub" "$WORK/etc/devices.d" "$WORK/proxy" "$WORK/spool"
export FIELDGATE_HUB_STATE=$WORK/hub
"$HUB_BIN" certs --dir "$WORK/hub/certs" --dns hub.fieldgate.test >/dev/null
start_hub() {
  ip netns exec "$NET" "$HUB_BIN" serve --host-name hub.fieldgate.test --bind 10.77.0.1 --amqps-port 5671 --https-port 443 \
    --http-port 8080 --state-dir "$WORK/hub" --log-level warning >>"$WORK/hub.log" 2>&1 &
  HUB_PID=$!; PIDS+=("$HUB_PID")
  for _ in $(seq 100); do in_net "$HUB_BIN" device list $URL >/dev/null 2>&1 && return; sleep 0.1; done
  fail "the hub did not start"
}
URL="--url http://10.77.0.1:8080"
start_hub
key_of() { sed -n 's/.*SharedAccessKey=\([^;]*\).*/\1/p' <<<"$(in_net "$HUB_BIN" device create "$1" $URL)"; }
GW_KEY=$(key_of ws-gateway); LEAF_KEY=$(key_of ws-leaf)

# --- the proxies
start_tinyproxy() {  # port, extra config lines
  local port=$1; shift
  printf 'Port %s\nListen 10.77.0.1\nTimeout 600\nMaxClients 50\nAllow 10.77.0.0/24\nLogLevel Connect\nLogFile "%s"\n' \
    "$port" "$WORK/proxy/log" >"$WORK/proxy/$port.conf"
  printf '%s\n' "$@" >>"$WORK/proxy/$port.conf"
  ip netns exec "$NET" tinyproxy -d -c "$WORK/proxy/$port.conf" >>"$WORK/proxy/out" 2>&1 &
  PIDS+=("$!"); eval "PROXY_$port=$!"
  for _ in $(seq 50); do in_net bash -c "exec 3<>/dev/tcp/10.77.0.1/$port" 2>/dev/null && return; sleep 0.1; done
  fail "tinyproxy on $port did not start"
}
touch "$WORK/proxy/log"; chmod 666 "$WORK/proxy/log"
start_tinyproxy 3128 'ConnectPort 443' 'BasicAuth fg s3cret-proxy'
start_tinyproxy 3129 'ConnectPort 8443'
start_tinyproxy 3131 'ConnectPort 443'
# An intercepting proxy: CONNECT answered 200, then TLS terminated with a certificate from another CA for the hub's
# name (what a TLS-inspecting middlebox does).
"$HUB_BIN" certs --dir "$WORK/mitm" --dns hub.fieldgate.test >/dev/null
cat >"$WORK/mitm.py" <<'PY'
import socket, ssl, sys, threading
cert, key, log = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); srv.bind(("10.77.0.1", 3130)); srv.listen(16)
def serve(c):
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(4096)
            if not chunk: return
            head += chunk
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        t = ctx.wrap_socket(c, server_side=True)
        data = t.recv(65536)  # only a client that accepted our certificate gets here
        open(log, "a").write("CLIENT SENT %d BYTES INSIDE TLS\n" % len(data))
    except Exception as e:
        open(log, "a").write("refused: %s\n" % e)
    finally:
        c.close()
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
ip netns exec "$NET" python3 "$WORK/mitm.py" "$WORK/mitm/server.pem" "$WORK/mitm/server.key" "$WORK/mitm.log" &
PIDS+=("$!")

# --- the gateway
cp "$WORK/hub/certs/ca.pem" "$WORK/etc/ca.pem"
UDP_PORT=47000
write_config() {  # proxy URL, proxy password
  cat >"$WORK/etc/fieldgate.toml" <<TOML
[hub]
host = "hub-old.fieldgate.test"
fallback_hosts = ["hub.fieldgate.test"]
transport = "auto"
fallback_after_failures = 2
proxy = "$1"
ca_file = "$WORK/etc/ca.pem"
[gateway]
device_id = "ws-gateway"
reboot_command = ["/bin/true"]
[spool]
directory = "$WORK/spool"
[control]
socket = "$WORK/control.sock"
[udp]
bind = "127.0.0.1"
port = $UDP_PORT
TOML
  printf '[[leaf]]\ndevice_id = "ws-leaf"\nadapter = "udp"\n' >"$WORK/etc/devices.d/leaf.toml"
  printf '[keys]\nws-gateway = "%s"\nws-leaf = "%s"\n[proxy]\npassword = "%s"\n' "$GW_KEY" "$LEAF_KEY" "$2" >"$WORK/etc/secrets.toml"
  chmod 600 "$WORK/etc/secrets.toml"
}
start_gateway() {
  ip netns exec "$GW" "$GW_BIN" --config "$WORK/etc/fieldgate.toml" --log-level info >>"$WORK/gw.log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  for _ in $(seq 100); do [ -S "$WORK/control.sock" ] && in_gw "$CTL_BIN" status --socket "$WORK/control.sock" >/dev/null 2>&1 && return; sleep 0.1; done
  fail "fieldgated did not start"
}
stop_gateway() { kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; rm -f "$WORK/control.sock"; }
status_json() { in_gw "$CTL_BIN" status --socket "$WORK/control.sock" --json; }
wait_for() {  # seconds, description, command…
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "$what (within $seconds s)"
}
send_readings() {  # from, to (inclusive), pause seconds between
  for n in $(seq "$1" "$2"); do
    in_gw bash -c "printf '{\"device\":\"ws-leaf\",\"values\":{\"n\":$n}}' >/dev/udp/127.0.0.1/$UDP_PORT"
    [ "${3:-0}" = 0 ] || sleep "$3"
  done
}
delivered() {  # the distinct reading numbers the hub has accepted from ws-leaf
  in_net "$HUB_BIN" monitor-events $URL --device ws-leaf --from-start --timeout 2 2>/dev/null \
    | grep -o '\\"n\\":[0-9]*\|"n":[0-9]*' | grep -o '[0-9]*$' | sort -un | wc -l
}
has_delivered() { [ "$(delivered)" -ge "$1" ]; }
status_has() { status_json | grep -q "$1"; }
twin_has() { in_net "$HUB_BIN" twin show "$1" $URL | grep -q "$2"; }

# 1. A wrong proxy password.
write_config "http://fg@10.77.0.1:3128" "wrong-password"
start_gateway
send_readings 1 20
wait_for 60 "a credentials error in the status" status_has "refused our credentials"
grep -q 'wrong-password' "$WORK/gw.log" && fail "the proxy password appears in the log"
[ "$(delivered)" = 0 ] || fail "readings arrived although the only way out refused the gateway"
say "1. wrong proxy password: \"$(status_json | grep -o 'the proxy[^"]*credentials[^"]*' | head -1)\"; the password is not in the log; 20 readings spooled"

# 2. The right password: the dead host, then AMQPS fail; WebSockets through the proxy to the fallback host work.
stop_gateway
write_config "http://fg@10.77.0.1:3128" "s3cret-proxy"
start_gateway
wait_for 90 "the 20 spooled readings at the hub" has_delivered 20
status_json >"$WORK/status.json"
grep -q '"transport" *: *"amqps-websocket"' "$WORK/status.json" || fail "status does not say amqps-websocket: $(cat "$WORK/status.json")"
grep -q '"host" *: *"hub.fieldgate.test"' "$WORK/status.json" || fail "status does not name the fallback host"
grep -q 'hub-old.fieldgate.test over AMQPS' "$WORK/gw.log" || fail "the dead first host was not tried first"
grep -q 'CONNECT.*hub.fieldgate.test:443\|Established connection to host "hub.fieldgate.test"' "$WORK/proxy/log" \
  || fail "tinyproxy did not carry the tunnel"
in_net "$HUB_BIN" method invoke ws-gateway status $URL --timeout 15 >"$WORK/method.json" || fail "the gateway's status method"
grep -q '"status" *: *200' "$WORK/method.json" && grep -q 'amqps-websocket' "$WORK/method.json" \
  || fail "the status method's answer: $(cat "$WORK/method.json")"
wait_for 30 "the gateway twin reporting the WebSocket route" twin_has ws-gateway amqps-websocket
# Seed 004: the reboot method (the command is /bin/true here) answered, lastReboot reported in the twin.
in_net "$HUB_BIN" method invoke ws-gateway reboot $URL --timeout 15 >"$WORK/reboot.json" || fail "the reboot method"
grep -q '"status" *: *200' "$WORK/reboot.json" || fail "reboot answered: $(cat "$WORK/reboot.json")"
wait_for 30 "lastReboot in the gateway twin" twin_has ws-gateway lastReboot
say "2. fallback host over WebSockets through the authenticating proxy: 20/20 delivered; status and reboot methods answered; the twin names host and transport and has lastReboot"

# 3. A stream across a proxy restart, then across a hub restart. The hub keeps received events in memory only, so
#    the first part is counted before the hub goes down; the second is sent while it is down and coming back.
send_readings 21 70 0.05 &
SENDER=$!
sleep 1
kill "$PROXY_3128"; wait "$PROXY_3128" 2>/dev/null || true
start_tinyproxy 3128 'ConnectPort 443' 'BasicAuth fg s3cret-proxy'
wait "$SENDER"
wait_for 90 "readings 1-70 across the proxy restart" has_delivered 70
kill "$HUB_PID"; wait "$HUB_PID" 2>/dev/null || true
send_readings 71 120 0.05 &
SENDER=$!
sleep 1
start_hub
wait "$SENDER"
wait_for 90 "readings 71-120 across the hub restart" has_delivered 50
opens=$(status_json | grep -o '"opens" *: *[0-9]*' | head -1 | grep -o '[0-9]*$')
[ "$opens" -ge 3 ] || fail "the connection was not re-opened after both restarts ($opens opens)"
say "3. proxy restart mid-stream: 70/70 delivered; hub restart mid-stream: 50/50 delivered; $opens connections opened"

# fieldgatectl check on such a site: 5671 closed is a warning under auto, the WebSocket route and the keys pass.
stop_gateway
write_config "http://fg@10.77.0.1:3128" "s3cret-proxy"
sed -i 's/^fallback_hosts.*//; s/^host = .*/host = "hub.fieldgate.test"/' "$WORK/etc/fieldgate.toml"
in_gw "$CTL_BIN" check --config "$WORK/etc/fieldgate.toml" >"$WORK/check.txt" 2>&1 || fail "fieldgatectl check failed: $(cat "$WORK/check.txt")"
grep -q '✓ websocket' "$WORK/check.txt" && grep -q '✓ credentials' "$WORK/check.txt" && grep -q '! tcp' "$WORK/check.txt" \
  || fail "fieldgatectl check: $(cat "$WORK/check.txt")"
say "   fieldgatectl check: $(grep -c '✓' "$WORK/check.txt") passed; $(grep '! tcp' "$WORK/check.txt" | cut -c1-90)…"

# 4. A proxy that refuses CONNECT to 443; fieldgatectl check says so too.
write_config "http://10.77.0.1:3129" "unused"
sed -i 's/^fallback_hosts.*//; s/^host = .*/host = "hub.fieldgate.test"/; s/^transport = .*/transport = "amqps-websocket"/' "$WORK/etc/fieldgate.toml"
start_gateway
wait_for 30 "a 403 error in the status" status_has "HTTP 403"
in_gw "$CTL_BIN" check --config "$WORK/etc/fieldgate.toml" >"$WORK/check.txt" 2>&1 && fail "check passed through a refusing proxy"
grep -q '✗ websocket.*HTTP 403' "$WORK/check.txt" || fail "fieldgatectl check: $(cat "$WORK/check.txt")"
send_readings 121 130
sleep 2
[ "$(delivered)" = 50 ] || fail "readings went through a proxy that refuses CONNECT to 443"
# The same readings, spooled meanwhile, through a proxy without authentication that allows 443.
stop_gateway
sed -i 's|^proxy = .*|proxy = "http://10.77.0.1:3131"|' "$WORK/etc/fieldgate.toml"
start_gateway
wait_for 60 "readings 121-130 through the proxy without authentication" has_delivered 60
say "4. a proxy refusing CONNECT to 443: \"$(grep -o 'the proxy[^"]*403[^)]*)' "$WORK/check.txt" | head -1)\" (status and fieldgatectl check); the 10 readings sent meanwhile arrived later through a proxy without authentication"

# 5. TLS interception.
stop_gateway
sed -i 's|^proxy = .*|proxy = "http://10.77.0.1:3130"|' "$WORK/etc/fieldgate.toml"
start_gateway
wait_for 30 "a TLS error in the status" status_has "TLS"
sleep 1
grep -q 'CLIENT SENT' "$WORK/mitm.log" 2>/dev/null && fail "the gateway sent data to the intercepting proxy"
say "5. TLS interception refused: $(status_json | grep -o 'TLS with[^"]*' | head -1 | cut -c1-160)"
stop_gateway
say "ok"
