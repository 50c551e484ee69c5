#!/usr/bin/env bash
# Software update, rollback, the maintenance window and factory reset (issue 22, docs/software-update.md), with the
# real package in a booted Debian 12 (systemd-nspawn). The packages come from a real web server (nginx on the host's
# loopback, HTTPS with the hub's certificates); the hub routes twin change events, so every reported firmware status
# is read back in order. Phases, each driven from the service side through the gateway's twin:
#   1. a corrupt download (checksum mismatch)  → error; the old version keeps running
#   1b. the good package signed by a foreign key → error (signatures required: [update] keyring)
#   2. a window three hours away               → the update waits, pending in the twin
#   3. the window opens                        → downloading, verifying, applying, rebooting, current: the new version
#                                                runs, the configuration and the spooled readings kept
#   3b. the old version again                  → refused (no downgrades)
#   4. a version that exits at start           → rolled back to the running version (rebuilt as a package from its
#                                                installed files), `rolledback` with the reason, spooled readings intact;
#                                                the helper is killed during its confirmation wait and started again
#                                                (a power cut's stand-in): it settles the install from its marker
#   5. factoryReset while off                  → 403;  6. enabled → 200, the spool cleared, the service back
# Usage: packaging/test-update.sh [--rebuild]   (reuses dist/fieldgate_0.1.0 and 0.1.1 that test-deb.sh built)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
. scripts/lib-nspawn.sh
obstacle=$(boot_obstacle); [ -z "$obstacle" ] || skip "cannot boot a container: $obstacle"
ensure_rootfs
command -v nginx >/dev/null || skip "nginx missing (scripts/setup.sh installs it)"

ARCH=$(dpkg --print-architecture)
OLD=0.1.0
NEW=0.1.1
BROKEN=0.1.2
if [ "${1:-}" = --rebuild ] || [ ! -f "dist/fieldgate_${OLD}_${ARCH}.deb" ] || [ ! -f "dist/fieldgate_${NEW}_${ARCH}.deb" ]; then
  bash packaging/build-deb.sh --version "$OLD" --no-hub --no-lintian
  bash packaging/build-deb.sh --version "$NEW" --no-hub --no-lintian
fi
swift build --product fieldgate-hub >/dev/null
HUB_BIN=$(swift build --show-bin-path)/fieldgate-hub

make_work fieldgate-update
NGINX_PID=
trap '{ [ -n "$HUB_PID" ] && kill "$HUB_PID"; [ -n "$NGINX_PID" ] && kill "$NGINX_PID"; wait; } 2>/dev/null || true; [ -n "${FIELDGATE_KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
mkdir -p "$WORK/debs" "$WORK/results" "$WORK/config/devices.d" "$WORK/www/corrupt"
cp "dist/fieldgate_${OLD}_${ARCH}.deb" "$WORK/debs/"
cp "dist/fieldgate_${NEW}_${ARCH}.deb" "dist/fieldgate_${OLD}_${ARCH}.deb" "$WORK/www/"

# A version that never becomes ready: the new package with fieldgated replaced by a script that exits at start
# (fieldgatectl, the same program under another name, still works: the package's scripts use it).
dpkg-deb -R "dist/fieldgate_${NEW}_${ARCH}.deb" "$WORK/broken"
sed -i "s/^Version: .*/Version: $BROKEN/" "$WORK/broken/DEBIAN/control"
rm -f "$WORK/broken/DEBIAN/md5sums"
install -d "$WORK/broken/usr/lib/fieldgate-test"
mv "$WORK/broken/usr/sbin/fieldgated" "$WORK/broken/usr/lib/fieldgate-test/fieldgated"
cat >"$WORK/broken/usr/sbin/fieldgated" <<'SH'
#!/bin/bash
case "$(basename "$0")" in fieldgatectl) exec -a fieldgatectl /usr/lib/fieldgate-test/fieldgated "$@" ;; esac
[ "${1:-}" = --version ] && exec /usr/lib/fieldgate-test/fieldgated --version
echo "fieldgated (test build $0): exits at start, never ready" >&2
exit 1
SH
chmod 755 "$WORK/broken/usr/sbin/fieldgated"
dpkg-deb --root-owner-group -Zxz --build "$WORK/broken" "$WORK/www/fieldgate_${BROKEN}_${ARCH}.deb" >/dev/null
# A corrupt copy of the good package under its own name: its bytes do not match the good one's SHA-256.
cp "$WORK/www/fieldgate_${NEW}_${ARCH}.deb" "$WORK/www/corrupt/fieldgate_${NEW}_${ARCH}.deb"
printf 'corruption' | dd of="$WORK/www/corrupt/fieldgate_${NEW}_${ARCH}.deb" bs=1 seek=4096 conv=notrunc status=none
SHA_NEW=$(sha256sum "$WORK/www/fieldgate_${NEW}_${ARCH}.deb" | cut -d' ' -f1)
SHA_BROKEN=$(sha256sum "$WORK/www/fieldgate_${BROKEN}_${ARCH}.deb" | cut -d' ' -f1)
SHA_OLD=$(sha256sum "$WORK/www/fieldgate_${OLD}_${ARCH}.deb" | cut -d' ' -f1)
# The site's signing key: packages are signed (detached, OpenPGP) and the gateway's keyring holds its public key.
# Another key signs a copy of the good package: a signature the gateway must refuse.
export GNUPGHOME=$WORK/gnupg
mkdir -m 700 "$GNUPGHOME" "$WORK/gnupg-other"
gpg --batch --quiet --passphrase '' --quick-gen-key 'fieldgate site <updates@site.invalid>' ed25519 sign never
GNUPGHOME=$WORK/gnupg-other gpg --batch --quiet --passphrase '' --quick-gen-key 'someone else <x@other.invalid>' ed25519 sign never
for v in $OLD $NEW $BROKEN; do gpg --batch --quiet --detach-sign -o "$WORK/www/fieldgate_${v}_${ARCH}.deb.sig" "$WORK/www/fieldgate_${v}_${ARCH}.deb"; done
mkdir -p "$WORK/www/foreign"
cp "$WORK/www/fieldgate_${NEW}_${ARCH}.deb" "$WORK/www/foreign/"
GNUPGHOME=$WORK/gnupg-other gpg --batch --quiet --detach-sign -o "$WORK/www/foreign/fieldgate_${NEW}_${ARCH}.deb.sig" "$WORK/www/foreign/fieldgate_${NEW}_${ARCH}.deb"

HUB_ARGS=--twin-change-events start_hub
GW=upd-gateway
GW_KEY=$(create_device $GW)
LEAF_KEY=$(create_device upd-leaf)

# The package server: nginx, HTTPS with the hub's certificate (the gateway trusts the hub's CA through ca_file).
PKG_PORT=$((AMQPS_PORT + 7))
cat >"$WORK/nginx.conf" <<NGINX
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 64; }
http {
  access_log $WORK/nginx-access.log;
  types { application/vnd.debian.binary-package deb; }
  server {
    listen 127.0.0.1:$PKG_PORT ssl;
    server_name localhost;
    ssl_certificate $WORK/hub/certs/server.pem;
    ssl_certificate_key $WORK/hub/certs/server.key;
    root $WORK/www;
  }
}
NGINX
nginx -c "$WORK/nginx.conf" & NGINX_PID=$!
BASE=https://localhost:$PKG_PORT
for _ in $(seq 50); do curl -sf --cacert "$WORK/hub/certs/ca.pem" -o /dev/null "$BASE/fieldgate_${NEW}_${ARCH}.deb" && break; sleep 0.1; done

write_gateway_config "$WORK/config" $GW "edited by the operator"
gpg --batch --export >"$WORK/config/update-keyring.gpg"
cat >>"$WORK/config/fieldgate.toml" <<TOML
[update]
enabled = true
keyring = "/etc/fieldgate/update-keyring.gpg"
confirm_seconds = 30
ca_file = "/etc/fieldgate/ca.pem"
factory_reset = false
TOML
printf '[[leaf]]\ndevice_id = "upd-leaf"\nadapter = "udp"\n\n[[leaf]]\ndevice_id = "upd-unknown"\nadapter = "udp"\n' >"$WORK/config/devices.d/leaves.toml"
printf '[keys]\n%s = "%s"\nupd-leaf = "%s"\nupd-unknown = "%s"\n' $GW "$GW_KEY" "$LEAF_KEY" "$LEAF_KEY" >"$WORK/config/secrets.toml"

write_check_unit "$WORK/check.service" "fieldgate update check" /check.sh
cat >"$WORK/check.sh" <<SCRIPT
#!/bin/bash
exec >/results/log 2>&1
set -x
r() { echo "\$2" >"/results/\$1"; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y /debs/fieldgate_${OLD}_${ARCH}.deb && r installed yes
cp /config/ca.pem /config/fieldgate.toml /etc/fieldgate/
install -m 0644 /config/update-keyring.gpg /etc/fieldgate/update-keyring.gpg
cp /config/devices.d/leaves.toml /etc/fieldgate/devices.d/
install -m 0640 -g fieldgate /config/secrets.toml /etc/fieldgate/secrets.toml
systemctl start fieldgated
r path-unit "\$(systemctl is-active fieldgate-update.path)"
# Readings of a leaf the hub does not know: they stay spooled through every phase (until the factory reset).
for i in 1 2 3; do printf '{"device":"upd-unknown","values":{"n":%d}}' \$i >/dev/udp/127.0.0.1/$UDP_PORT; done
sleep 3
touch /results/ready
# The host asks for snapshots (snap-NAME) and for the factory reset to be enabled; it says when it is done.
for _ in \$(seq 2400); do
  [ -f /results/host-done ] && break
  for req in /results/snap-*; do
    [ -e "\$req" ] || continue
    name=\${req#/results/snap-}; rm -f "\$req"
    { echo "version=\$(dpkg-query -W -f='\${Version}' fieldgate)"
      echo "active=\$(systemctl is-active fieldgated)"
      echo "spooled=\$(fieldgatectl spool inspect --leaf upd-unknown --json | grep -c '"leaf"')"
      echo "config=\$(grep -c 'edited by the operator' /etc/fieldgate/fieldgate.toml)"
      echo "running=\$(fieldgated --version)"; } >/results/state-\$name.tmp
    mv /results/state-\$name.tmp /results/state-\$name
  done
  if [ -f /results/drop-kept ]; then
    # As on a gateway whose running version came from apt: the helper must rebuild it as a package to roll back.
    rm -f /results/drop-kept /var/lib/fieldgate-update/installed.deb
    touch /results/kept-dropped
  fi
  # A power cut's stand-in: once the broken version is installed and the helper waits for its confirmation, the
  # helper is killed, then started again as at boot; it must settle the install from its marker.
  if [ -f /results/kill-helper ] && [ "\$(dpkg-query -W -f='\${Status} \${Version}' fieldgate)" = "install ok installed $BROKEN" ] \
     && grep -q '"confirming"' /var/lib/fieldgate-update/progress.json 2>/dev/null; then
    rm -f /results/kill-helper
    systemctl kill -s KILL fieldgate-update.service
    sleep 1
    systemctl start --no-block fieldgate-update.service
    touch /results/helper-killed
  fi
  if [ -f /results/enable-reset ]; then
    rm -f /results/enable-reset
    sed -i 's/^factory_reset = false/factory_reset = true/' /etc/fieldgate/fieldgate.toml
    systemctl restart fieldgated
    touch /results/reset-enabled
  fi
  sleep 0.25
done
fieldgatectl update status >/results/update-status 2>&1 || true
journalctl -u fieldgated -u fieldgate-update -o short-monotonic --no-pager >/results/journal
systemctl poweroff
SCRIPT

fail() {
  echo "test-update: FAILED: $*"
  echo "--- twin"; "$HUB_BIN" twin show $URL $GW 2>/dev/null | head -60
  echo "--- container log"; tail -40 "$WORK/results/log" 2>/dev/null
  echo "--- journal"; tail -60 "$WORK/results/journal" 2>/dev/null
  echo "--- console"; tail -20 "$WORK/console.log"
  exit 1
}
# The gateway's reported section $1 (JSON), now.
reported() {
  "$HUB_BIN" twin show $URL $GW 2>/dev/null | python3 -c 'import json,sys
t = json.load(sys.stdin); print(json.dumps(t.get("properties", {}).get("reported", {}).get(sys.argv[1])))' "$1"
}
# Waits up to $2 s until the python expression $3 holds for reported section $1 (as `s`).
wait_reported() {
  local section=$1 seconds=$2 expr=$3
  for _ in $(seq $((seconds * 4))); do
    if reported "$section" | python3 -c "import json,sys; s = json.load(sys.stdin); sys.exit(0 if ($expr) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.25
  done
  return 1
}
desired() { "$HUB_BIN" twin patch $URL $GW --desired "$1" >/dev/null; }
snap() {  # container state after a phase: results/state-$1
  touch "$WORK/results/snap-$1"
  for _ in $(seq 120); do [ -f "$WORK/results/state-$1" ] && return 0; sleep 0.25; done
  echo "test-update: no snapshot $1" >&2
}
hhmm() { date -u -d "@$(( $(date +%s) + $1 ))" +%H:%M; }

# The host's side, while the container runs: every phase through the twin, from the service side.
drive() {
  for _ in $(seq 960); do [ -f "$WORK/results/ready" ] && break; sleep 0.25; done
  [ -f "$WORK/results/ready" ] || { echo "container never ready" >"$WORK/results/host-error"; touch "$WORK/results/host-done"; return; }
  wait_reported firmware 60 "s and s['currentFwVersion'] == '$OLD' and s['fwUpdateStatus'] == 'current'" \
    || { echo "phase 0: the gateway did not report its firmware $OLD" >"$WORK/results/host-error"; touch "$WORK/results/host-done"; return; }
  # 1. A corrupt download.
  desired "{\"firmware\": {\"fwVersion\": \"$NEW\", \"fwPackageURI\": \"$BASE/corrupt/fieldgate_${NEW}_${ARCH}.deb\", \"fwPackageCheckValue\": \"$SHA_NEW\"}}"
  wait_reported firmware 120 "s['fwUpdateStatus'] == 'error'" || echo "phase 1: no error for the corrupt download" >>"$WORK/results/host-error"
  reported firmware >"$WORK/results/firmware-corrupt"
  snap corrupt
  # 1b. The good package, signed by a key the gateway does not hold.
  desired "{\"firmware\": {\"fwVersion\": \"$NEW\", \"fwPackageURI\": \"$BASE/foreign/fieldgate_${NEW}_${ARCH}.deb\", \"fwPackageCheckValue\": \"$SHA_NEW\"}}"
  wait_reported firmware 120 "s['fwUpdateStatus'] == 'error' and 'signature' in s['fwUpdateSubstatus']" || echo "phase 1b: a foreign signature was not refused" >>"$WORK/results/host-error"
  reported firmware >"$WORK/results/firmware-foreign"
  snap foreign
  # 2. A window three hours away: the good package waits.
  desired "{\"maintenance\": {\"window\": {\"start\": \"$(hhmm 10800)\", \"durationMinutes\": 30, \"timezone\": \"UTC\"}}, \"firmware\": {\"fwVersion\": \"$NEW\", \"fwPackageURI\": \"$BASE/fieldgate_${NEW}_${ARCH}.deb\", \"fwPackageCheckValue\": \"$SHA_NEW\"}}"
  wait_reported firmware 60 "s['fwUpdateStatus'] == 'current' and s['pendingFwVersion'] == '$NEW' and 'maintenance window' in s['fwUpdateSubstatus']" \
    || echo "phase 2: the update did not wait for the window" >>"$WORK/results/host-error"
  sleep 5
  reported maintenance >"$WORK/results/maintenance-deferred"
  reported firmware >"$WORK/results/firmware-deferred"
  snap deferred
  # 3. The window opens (it began a minute ago): the update goes.
  desired "{\"maintenance\": {\"window\": {\"start\": \"$(hhmm -60)\", \"durationMinutes\": 120, \"timezone\": \"UTC\"}}}"
  wait_reported firmware 240 "s['currentFwVersion'] == '$NEW' and s['fwUpdateStatus'] == 'current'" \
    || echo "phase 3: $NEW was not reported current" >>"$WORK/results/host-error"
  reported firmware >"$WORK/results/firmware-updated"
  snap updated
  # 3b. Back to the old version through the twin: refused (no downgrades unless allow_downgrade).
  desired "{\"firmware\": {\"fwVersion\": \"$OLD\", \"fwPackageURI\": \"$BASE/fieldgate_${OLD}_${ARCH}.deb\", \"fwPackageCheckValue\": \"$SHA_OLD\"}}"
  wait_reported firmware 120 "s['fwUpdateStatus'] == 'error' and s['pendingFwVersion'] == '$OLD'" || echo "phase 3b: the downgrade was not refused" >>"$WORK/results/host-error"
  reported firmware >"$WORK/results/firmware-downgrade"
  # 4. A version that never becomes ready: rolled back, to the running version rebuilt as a package.
  touch "$WORK/results/drop-kept"
  for _ in $(seq 40); do [ -f "$WORK/results/kept-dropped" ] && break; sleep 0.25; done
  touch "$WORK/results/kill-helper"
  desired "{\"firmware\": {\"fwVersion\": \"$BROKEN\", \"fwPackageURI\": \"$BASE/fieldgate_${BROKEN}_${ARCH}.deb\", \"fwPackageCheckValue\": \"$SHA_BROKEN\"}}"
  wait_reported firmware 300 "s['pendingFwVersion'] == '$BROKEN' and s['fwUpdateStatus'] in ('rolledback', 'error')" || echo "phase 4: no rollback reported" >>"$WORK/results/host-error"
  reported firmware >"$WORK/results/firmware-rolledback"
  snap rolledback
  # 5. Factory reset while off, then 6. on.
  "$HUB_BIN" method invoke $URL $GW factoryReset --timeout 20 >"$WORK/results/reset-off" 2>&1 || true
  touch "$WORK/results/enable-reset"
  for _ in $(seq 240); do [ -f "$WORK/results/reset-enabled" ] && break; sleep 0.25; done
  for _ in $(seq 40); do  # the restarted daemon's gateway identity back at the hub
    "$HUB_BIN" method invoke $URL $GW status --timeout 5 >/dev/null 2>&1 && break; sleep 0.5
  done
  "$HUB_BIN" method invoke $URL $GW factoryReset --timeout 20 >"$WORK/results/reset-on" 2>&1 || true
  wait_reported iothubDM 120 "s and s.get('factoryReset', {}).get('status') == 'done'" || echo "phase 6: the reset was not reported done" >>"$WORK/results/host-error"
  reported iothubDM >"$WORK/results/dm-reset"
  sleep 8  # long enough for the reset daemon to see the desired firmware again (it must not retry $BROKEN)
  snap reset
  touch "$WORK/results/host-done"
}

echo "test-update: booting the container (hub on 127.0.0.1:$AMQPS_PORT, packages on $BASE)"
drive & DRIVER=$!
BOOT_TIMEOUT=900 boot_container \
  --bind-ro="$WORK/debs:/debs" --bind-ro="$WORK/config:/config" \
  --bind-ro="$WORK/check.service:/etc/systemd/system/check.service" --bind-ro="$WORK/check.sh:/check.sh" \
  --bind="$WORK/results:/results" \
  systemd.wants=check.service
wait $DRIVER 2>/dev/null || true

[ -f "$WORK/results/installed" ] || fail "the package was not installed"
[ "$(cat "$WORK/results/path-unit")" = active ] || fail "fieldgate-update.path is $(cat "$WORK/results/path-unit"), not active"
[ -f "$WORK/results/host-error" ] && fail "$(cat "$WORK/results/host-error")"
state() { sed -n "s/^$2=//p" "$WORK/results/state-$1" 2>/dev/null; }
expect_state() {  # phase, key, value
  [ "$(state "$1" "$2")" = "$3" ] || fail "after $1: $2 is '$(state "$1" "$2")', expected '$3'"
}
# Statuses in order, from the hub's twin change events.
EVENTS=$("$HUB_BIN" monitor-events $URL --device $GW --from-start --timeout 3 2>/dev/null || true)
STATUSES=$(python3 -c '
import json, sys
out = []
for line in sys.stdin:
    e = json.loads(line)
    if e.get("annotations", {}).get("iothub-message-source") != "twinChangeEvents": continue
    f = json.loads(e["body"])["properties"]["reported"].get("firmware")
    if f and (not out or out[-1] != (f["fwUpdateStatus"], f["pendingFwVersion"] or f["currentFwVersion"])):
        out.append((f["fwUpdateStatus"], f["pendingFwVersion"] or f["currentFwVersion"]))
print(" ".join(f"{s}:{v}" for s, v in out))' <<<"$EVENTS")
echo "test-update: reported fwUpdateStatus in order: $STATUSES"
has_run() {  # the statuses $@ appear in this order, back to back
  python3 -c 'import sys; seq = sys.argv[1].split(); want = sys.argv[2:]
sys.exit(0 if any(seq[i:i + len(want)] == want for i in range(len(seq))) else 1)' "$STATUSES" "$@"
}
# 1.
has_run "downloading:$NEW" "verifying:$NEW" "error:$NEW" || fail "phase 1 statuses: $STATUSES"
grep -q 'checksum mismatch' "$WORK/results/firmware-corrupt" || fail "phase 1: $(cat "$WORK/results/firmware-corrupt")"
expect_state corrupt version $OLD; expect_state corrupt active active
# 1b.
grep -q 'does not verify' "$WORK/results/firmware-foreign" || fail "phase 1b: $(cat "$WORK/results/firmware-foreign")"
expect_state foreign version $OLD; expect_state foreign active active
# 2.
grep -q "\"pendingUpdate\": *\"$NEW\"" "$WORK/results/maintenance-deferred" || fail "phase 2: maintenance $(cat "$WORK/results/maintenance-deferred")"
expect_state deferred version $OLD
# 3.
has_run "downloading:$NEW" "verifying:$NEW" "applying:$NEW" "rebooting:$NEW" "current:$NEW" || fail "phase 3 statuses: $STATUSES"
expect_state updated version $NEW; expect_state updated active active; expect_state updated running $NEW
expect_state updated config 1; expect_state updated spooled 3
# 3b.
grep -q 'downgrades are refused' "$WORK/results/firmware-downgrade" || fail "phase 3b: $(cat "$WORK/results/firmware-downgrade")"
# 4.
has_run "downloading:$BROKEN" "verifying:$BROKEN" "applying:$BROKEN" "rebooting:$BROKEN" "rolledback:$BROKEN" || fail "phase 4 statuses: $STATUSES"
grep -q "did not confirm" "$WORK/results/firmware-rolledback" || fail "phase 4: $(cat "$WORK/results/firmware-rolledback")"
[ -f "$WORK/results/helper-killed" ] || fail "phase 4: the helper was not killed during its confirmation wait"
grep -q "the install of $BROKEN was interrupted" "$WORK/results/journal" || fail "phase 4: the restarted helper did not take up the interrupted install"
expect_state rolledback version $NEW; expect_state rolledback active active; expect_state rolledback spooled 3; expect_state rolledback config 1
# 5., 6.
grep -q '"status" *: *403' "$WORK/results/reset-off" || fail "factoryReset while off: $(cat "$WORK/results/reset-off")"
grep -q '"status" *: *200' "$WORK/results/reset-on" || fail "factoryReset when on: $(cat "$WORK/results/reset-on")"
expect_state reset active active; expect_state reset spooled 0; expect_state reset version $NEW
# The reset kept the record of the failed $BROKEN: it was not tried again.
[ "$(grep -o "downloading:$BROKEN" <<<"$STATUSES" | wc -l)" = 1 ] || fail "$BROKEN was tried again after the factory reset: $STATUSES"
echo "test-update: firmware after the update:   $(cat "$WORK/results/firmware-updated")"
echo "test-update: firmware after the rollback: $(cat "$WORK/results/firmware-rolledback")"
echo "test-update: factory reset: $(cat "$WORK/results/dm-reset")"
echo "test-update: ok — corrupt download and a foreign signature refused ($OLD kept running), update deferred by the window then $OLD → $NEW (configuration and 3 spooled readings kept), downgrade to $OLD refused, $BROKEN rolled back to $NEW (rebuilt from its installed files, by a helper killed and restarted mid-wait), factoryReset 403 when off and done when on"
