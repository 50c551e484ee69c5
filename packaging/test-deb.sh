#!/usr/bin/env bash
# The .deb in a real Debian 12 under systemd (issue 9, test 6): install with apt (dependencies resolve), the unit
# enabled but not started until a hub is configured; configure it → active as user fieldgate with its watchdog,
# telemetry at a fieldgate-hub on the host's loopback; upgrade to a rebuilt newer version → the edited
# configuration and the spooled records survive; purge → state, user and group gone.
# Where the machine cannot boot a container, it says so and runs the install/upgrade/purge checks in a chroot
# without systemd (the daemon then runs by hand as root for the spool check).
# Usage: packaging/test-deb.sh   (builds the packages with packaging/build-deb.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
. scripts/lib-nspawn.sh
ensure_rootfs
OBSTACLE=$(boot_obstacle)
BOOTED=$([ -z "$OBSTACLE" ] && echo 1 || echo 0)

ARCH=$(dpkg --print-architecture)
OLD=0.1.0
NEW=0.1.1
bash packaging/build-deb.sh --version "$OLD" --no-hub
bash packaging/build-deb.sh --version "$NEW" --no-hub --no-lintian  # the same build, a newer version
swift build --product fieldgate-hub >/dev/null
HUB_BIN=$(swift build --show-bin-path)/fieldgate-hub

make_work fieldgate-deb
mkdir -p "$WORK/debs" "$WORK/results" "$WORK/config/devices.d"
cp "dist/fieldgate_${OLD}_${ARCH}.deb" "dist/fieldgate_${NEW}_${ARCH}.deb" "$WORK/debs/"
start_hub
GW_KEY=$(create_device deb-gateway)
LEAF_KEY=$(create_device deb-leaf)
# The operator's edit of the shipped conffile, a leaf the hub knows, and one it does not (its readings stay
# spooled: they must survive the upgrade).
write_gateway_config "$WORK/config" deb-gateway "edited by the operator"
printf '[[leaf]]\ndevice_id = "deb-leaf"\nadapter = "udp"\n\n[[leaf]]\ndevice_id = "deb-unknown"\nadapter = "udp"\n' >"$WORK/config/devices.d/leaves.toml"
printf '[keys]\ndeb-gateway = "%s"\ndeb-leaf = "%s"\ndeb-unknown = "%s"\n' "$GW_KEY" "$LEAF_KEY" "$LEAF_KEY" >"$WORK/config/secrets.toml"

write_check_unit "$WORK/check.service" "fieldgate package check" /check.sh
cat >"$WORK/check.sh" <<SCRIPT
#!/bin/bash
exec >/results/log 2>&1
set -x
r() { echo "\$2" >"/results/\$1"; }
booted() { [ $BOOTED = 1 ]; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y /debs/fieldgate_${OLD}_${ARCH}.deb && r installed yes
booted && r enabled "\$(systemctl is-enabled fieldgated)"
booted && r active-unconfigured "\$(systemctl is-active fieldgated)"
r user "\$(id -nG fieldgate)"
r statedir "\$(stat -c '%U %a' /var/lib/fieldgate)"
# Configure as an operator would, then start.
cp /config/ca.pem /config/fieldgate.toml /etc/fieldgate/
cp /config/devices.d/leaves.toml /etc/fieldgate/devices.d/
install -m 0640 -g fieldgate /config/secrets.toml /etc/fieldgate/secrets.toml
fieldgatectl config check && r config-check ok
if booted; then
  systemctl start fieldgated
  r active "\$(systemctl is-active fieldgated)"
  r watchdog "\$(systemctl show -p WatchdogUSec --value fieldgated)"
  r runs-as "\$(stat -c %U /proc/\$(systemctl show -p MainPID --value fieldgated))"
  # Issue 19: dialout comes from the user database (the unit names no SupplementaryGroups=).
  r process-in-dialout "\$(grep -q "^Groups:.*\\b\$(getent group dialout | cut -d: -f3)\\b" /proc/\$(systemctl show -p MainPID --value fieldgated)/status && echo yes)"
else
  fieldgated run --config /etc/fieldgate/fieldgate.toml --log-level warning & DAEMON=\$!
  sleep 2
fi
printf '{"device":"deb-leaf","values":{"via":"the package"}}' >/dev/udp/127.0.0.1/$UDP_PORT
for i in 1 2 3; do printf '{"device":"deb-unknown","values":{"n":%d}}' \$i >/dev/udp/127.0.0.1/$UDP_PORT; done
sleep 3
if booted; then
  # Issue 18.10: the receive buffer under the unit, and a 50k-datagram burst from the host accounted for.
  fieldgatectl status --json >/results/status-before-burst.json
  journalctl -u fieldgated -o cat | grep 'UDP receive buffer' >/results/rcvbuf-log || true
  touch /results/ready-for-burst
  for i in \$(seq 1 1200); do [ -f /results/burst-done ] && break; sleep 0.1; done
  sleep 3
  fieldgatectl status --json >/results/status-after-burst.json
fi
booted || { kill \$DAEMON; wait \$DAEMON; }
r spooled-before "\$(fieldgatectl spool inspect --leaf deb-unknown --json | grep -c '"leaf"')"
# Upgrade: keep the operator's configuration (as apt does without a terminal).
apt-get install -y -o Dpkg::Options::=--force-confold /debs/fieldgate_${NEW}_${ARCH}.deb && r upgraded yes
r version "\$(dpkg-query -W -f='\${Version}' fieldgate)"
r binary-version "\$(fieldgated --version) \$(fieldgatectl --version)"
grep -q 'edited by the operator' /etc/fieldgate/fieldgate.toml && r config-kept yes
sleep 2
booted && r active-after-upgrade "\$(systemctl is-active fieldgated)"
# Issue 19: no libdispatch priority noise, no systemd warning about the configuration directory's mode.
booted && journalctl -b -o verbose --grep 'Failed to set thread priority|ConfigurationDirectory' >/results/journal-noise
booted && r nice-configured "\$(systemctl show -p LimitNICE --value fieldgated)"
booted && r nice-effective "\$(awk '/Max nice/ {print \$5}' /proc/\$(systemctl show -p MainPID --value fieldgated)/limits)"
r spooled-after "\$(fieldgatectl spool inspect --leaf deb-unknown --json | grep -c '"leaf"')"
# Purge: state, user and group go.
apt-get purge -y fieldgate && r purged yes
r state-after-purge "\$(ls -d /var/lib/fieldgate 2>/dev/null || echo gone)"
r user-after-purge "\$(getent passwd fieldgate || echo gone)"
r group-after-purge "\$(getent group fieldgate || echo gone)"
booted && r unit-after-purge "\$(systemctl list-unit-files fieldgated.service --no-legend | wc -l)"
booted && systemctl poweroff
exit 0
SCRIPT

BURST=50000
burst_from_host() {  # once the container says so: $BURST datagrams as fast as python sends them, then one more
  for _ in $(seq 1 3000); do [ -f "$WORK/results/ready-for-burst" ] && break; sleep 0.1; done
  [ -f "$WORK/results/ready-for-burst" ] || return 0
  python3 - "$UDP_PORT" "$BURST" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(b'{"device":"deb-leaf","values":{"burst":%d}}' % i, ("127.0.0.1", port))
time.sleep(1)  # the kernel's drop count travels with the next datagram the daemon takes
s.sendto(b'{"device":"deb-leaf","values":{"burst":"end"}}', ("127.0.0.1", port))
PY
  touch "$WORK/results/burst-done"
}

if [ "$BOOTED" = 1 ]; then
  echo "test-deb: booting the container (hub on 127.0.0.1:$AMQPS_PORT)"
  burst_from_host & BURSTER=$!
  boot_container \
    --bind-ro="$WORK/debs:/debs" --bind-ro="$WORK/config:/config" \
    --bind-ro="$WORK/check.service:/etc/systemd/system/check.service" --bind-ro="$WORK/check.sh:/check.sh" \
    --bind="$WORK/results:/results" \
    systemd.wants=check.service
  kill $BURSTER 2>/dev/null || true
else
  echo "test-deb: cannot boot a container ($OBSTACLE): install, upgrade and purge checked in a chroot without systemd"
  cp "$WORK/check.sh" "$WORK/config/check.sh"
  run_in_chroot /config/check.sh "$WORK/debs:/debs" "$WORK/config:/config" "$WORK/results:/results"
fi

fail() { echo "test-deb: FAILED: $*"; echo "--- log"; tail -120 "$WORK/results/log" 2>/dev/null; echo "--- console"; tail -20 "$WORK/console.log"; exit 1; }
expect() {  # file, expected content
  [ -f "$WORK/results/$1" ] || fail "$1: the check did not get that far"
  [ "$(cat "$WORK/results/$1")" = "$2" ] || fail "$1: expected '$2', got '$(cat "$WORK/results/$1")'"
}
expect installed yes
[ "$BOOTED" = 1 ] && expect enabled enabled
[ "$BOOTED" = 1 ] && expect active-unconfigured inactive
case "$(cat "$WORK/results/user")" in *fieldgate*dialout*|*dialout*fieldgate*) ;; *) fail "user groups: $(cat "$WORK/results/user")" ;; esac
expect statedir "fieldgate 750"
expect config-check ok
if [ "$BOOTED" = 1 ]; then
  expect active active
  expect watchdog 30s
  expect runs-as fieldgate
  expect process-in-dialout yes
fi
"$HUB_BIN" monitor-events $URL --timeout 5 --from-start 2>/dev/null | grep -q 'the package' || fail "telemetry did not reach the hub"
if [ "$BOOTED" = 1 ]; then
  [ -f "$WORK/results/status-after-burst.json" ] || fail "burst: the check did not get that far"
  BURST_RESULT=$(python3 - "$WORK/results" "$UDP_PORT" "$BURST" <<'PY'
import json, sys
d, port, burst = sys.argv[1], sys.argv[2], int(sys.argv[3]) + 1
def udp(name):
    a = json.load(open(f"{d}/{name}"))["adapters"][f"udp:{port}"]
    return a["readings"], a["spool_refused"], a["kernel_drops"], sum(a["rejected"].values()), a["receive_buffer_bytes"]
b, a = udp("status-before-burst.json"), udp("status-after-burst.json")
taken, refused, dropped, rejected = (a[i] - b[i] for i in range(4))
ok = taken + refused + dropped + rejected == burst
print(f"{'ok' if ok else 'MISMATCH'} sent {burst}: taken {taken}, spool refused {refused}, kernel drops {dropped}, rejected {rejected}; receive buffer {a[4] // 1024} KiB")
PY
)
  echo "test-deb: UDP burst under the unit: $BURST_RESULT (host net.core.rmem_max $(cat /proc/sys/net/core/rmem_max))"
  case "$BURST_RESULT" in ok*) ;; *) fail "the burst is not accounted for: $BURST_RESULT" ;; esac
  grep -q 'UDP receive buffer' "$WORK/results/rcvbuf-log" || fail "the receive buffer was not logged at start"
  echo "test-deb: logged at start: $(head -1 "$WORK/results/rcvbuf-log")"
fi
expect spooled-before 3
expect upgraded yes
expect version "$NEW"
expect binary-version "$NEW $NEW"
[ "$BOOTED" = 1 ] && journal_noise "$WORK/results" 2  # started, then restarted by the upgrade
expect config-kept yes
[ "$BOOTED" = 1 ] && expect active-after-upgrade active
expect spooled-after 3
expect purged yes
expect state-after-purge gone
expect user-after-purge gone
expect group-after-purge gone
[ "$BOOTED" = 1 ] && expect unit-after-purge 0
[ "$BOOTED" = 1 ] || echo "test-deb: (not booted: $OBSTACLE; the unit's start, watchdog and restart were not checked)"
if [ "$BOOTED" = 1 ]; then
  echo "test-deb: ok — apt install (not started without a hub), configured → active as fieldgate (dialout) with WatchdogSec=30s, telemetry at the hub; upgrade $OLD → $NEW kept the edited configuration and 3 spooled records; purge removed state, user and group"
else
  echo "test-deb: ok (chroot) — apt install (user fieldgate in dialout, state directory), config check, telemetry at the hub from fieldgated run by hand; upgrade $OLD → $NEW kept the edited configuration and 3 spooled records; purge removed state, user and group"
fi
echo "test-deb: fieldgate_${OLD}_${ARCH}.deb $(du -h "dist/fieldgate_${OLD}_${ARCH}.deb" | cut -f1), /usr/sbin/fieldgated $(dpkg-deb --fsys-tarfile "dist/fieldgate_${OLD}_${ARCH}.deb" | tar -tvf - ./usr/sbin/fieldgated | awk '{printf "%.1f MB", $3/1048576}')"
