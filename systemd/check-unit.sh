#!/usr/bin/env bash
# Checks systemd/fieldgated.service offline (issue 8, part 5): `systemd-analyze verify` must print nothing (it
# exits 0 even for unknown keys, docs/toolchain.md §6), and `systemd-analyze security --offline=yes` must rate the
# unit's exposure at 1.5 or less. Needs systemd-analyze (252+) and the host's units under /lib/systemd/system.
# Usage: systemd/check-unit.sh [path/to/fieldgated]   (default: a stand-in executable)
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/fieldgated.service
binary=${1:-}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# A root with the host's units, the unit under test and its ExecStart (verify checks that it is executable).
mkdir -p "$root/lib/systemd" "$root/usr/sbin" "$root/etc/systemd/system" "$root/bin"
cp -a /lib/systemd/system "$root/lib/systemd/system"
cp "$unit" "$root/lib/systemd/system/fieldgated.service"
cp systemd/fieldgate-update.path systemd/fieldgate-update.service "$root/lib/systemd/system/"
if [ -n "$binary" ]; then cp "$binary" "$root/usr/sbin/fieldgated"; else printf '#!/bin/sh\n' >"$root/usr/sbin/fieldgated"; fi
chmod 755 "$root/usr/sbin/fieldgated"
cp /bin/kill "$root/bin/kill"
mkdir -p "$root/usr/bin" && cp "$root/usr/sbin/fieldgated" "$root/usr/bin/fieldgatectl"

# --man=no: the man pages come with the package (issue 9), not with this tree.
verify=$(systemd-analyze verify --man=no --root="$root" fieldgated.service fieldgate-update.path fieldgate-update.service 2>&1 || true)
if [ -n "$verify" ]; then
  echo "check-unit: systemd-analyze verify complained:"; echo "$verify"; exit 1
fi
echo "check-unit: systemd-analyze verify: clean (fieldgated.service, fieldgate-update.path and .service)"

security=$(systemd-analyze security --offline=yes --root="$root" fieldgated.service 2>&1 || true)
exposure=$(sed -n 's/.*Overall exposure level for fieldgated.service: \([0-9.]*\).*/\1/p' <<<"$security")
if [ -z "$exposure" ]; then
  echo "check-unit: systemd-analyze security gave no exposure level:"; echo "$security"; exit 1
fi
echo "check-unit: systemd-analyze security: exposure $exposure (limit 1.5)"
if awk -v e="$exposure" 'BEGIN { exit !(e > 1.5) }'; then
  echo "$security" | grep -E '^✗' || true
  exit 1
fi
