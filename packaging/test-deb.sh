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

cat >"$WORK/check.service" <<'UNIT'
[Unit]
Description=fieldgate package check
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/bash /check.sh
UNIT
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
install -m 0600 /config/secrets.toml /etc/fieldgate/secrets.toml
fieldgatectl config check && r config-check ok
if booted; then
  systemctl start fieldgated
  r active "\$(systemctl is-active fieldgated)"
  r watchdog "\$(systemctl show -p WatchdogUSec --value fieldgated)"
  r runs-as "\$(stat -c %U /proc/\$(systemctl show -p MainPID --value fieldgated))"
else
  fieldgated run --config /etc/fieldgate/fieldgate.toml --log-level warning & DAEMON=\$!
  sleep 2
fi
printf '{"device":"deb-leaf","values":{"via":"the package"}}' >/dev/udp/127.0.0.1/$UDP_PORT
for i in 1 2 3; do printf '{"device":"deb-unknown","values":{"n":%d}}' \$i >/dev/udp/127.0.0.1/$UDP_PORT; done
sleep 3
booted || { kill \$DAEMON; wait \$DAEMON; }
r spooled-before "\$(fieldgatectl spool inspect --leaf deb-unknown --json | grep -c '"leaf"')"
# Upgrade: keep the operator's configuration (as apt does without a terminal).
apt-get install -y -o Dpkg::Options::=--force-confold /debs/fieldgate_${NEW}_${ARCH}.deb && r upgraded yes
r version "\$(dpkg-query -W -f='\${Version}' fieldgate)"
grep -q 'edited by the operator' /etc/fieldgate/fieldgate.toml && r config-kept yes
sleep 2
booted && r active-after-upgrade "\$(systemctl is-active fieldgated)"
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

if [ "$BOOTED" = 1 ]; then
  echo "test-deb: booting the container (hub on 127.0.0.1:$AMQPS_PORT)"
  boot_container \
    --bind-ro="$WORK/debs:/debs" --bind-ro="$WORK/config:/config" \
    --bind-ro="$WORK/check.service:/etc/systemd/system/check.service" --bind-ro="$WORK/check.sh:/check.sh" \
    --bind="$WORK/results:/results" \
    systemd.wants=check.service
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
fi
"$HUB_BIN" monitor-events $URL --timeout 5 --from-start 2>/dev/null | grep -q 'the package' || fail "telemetry did not reach the hub"
expect spooled-before 3
expect upgraded yes
expect version "$NEW"
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
