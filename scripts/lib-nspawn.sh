# Shared by the end-to-end scripts that boot Debian 12 under systemd-nspawn (docs/toolchain.md §5). Source it.
CACHE=${FIELDGATE_E2E_CACHE:-/var/cache/fieldgate-e2e}

skip() { echo "$(basename "$0"): SKIPPED: $*"; exit 0; }

# Why this machine cannot boot the container (empty when it can). FIELDGATE_E2E_NO_BOOT=1 pretends it cannot.
boot_obstacle() {
  [ -n "${FIELDGATE_E2E_NO_BOOT:-}" ] && { echo "FIELDGATE_E2E_NO_BOOT is set"; return; }
  command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn is missing"; return; }
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || { echo "no overlayfs for a throw-away root"; return; }
  true
}

# Builds the cached bookworm root file system once (about a minute).
ensure_rootfs() {
  [ "$(id -u)" = 0 ] || skip "needs root"
  command -v debootstrap >/dev/null || skip "debootstrap missing (scripts/setup.sh installs it)"
  if [ -x "$CACHE/rootfs/lib/systemd/systemd" ]; then
    # A root cached before fieldgated linked libcurl (AMQP over WebSockets) gets it added once.
    ls "$CACHE"/rootfs/usr/lib/*/libcurl.so.4 >/dev/null 2>&1 && return 0
    DEBIAN_FRONTEND=noninteractive chroot "$CACHE/rootfs" apt-get -q install -y --no-install-recommends libcurl4 \
      >"$CACHE/libcurl.log" 2>&1 && return 0
    rm -rf "$CACHE/rootfs"
  fi
  local mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  rm -rf "$CACHE/rootfs.tmp"; mkdir -p "$CACHE"
  echo "$(basename "$0"): debootstrap bookworm into $CACHE/rootfs (cached for later runs)"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libqpid-proton11,libmodbus5,libsystemd0,libssl3,libcurl4,passwd,adduser \
    bookworm "$CACHE/rootfs.tmp" "${mirror:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; skip "debootstrap failed (no Debian mirror reachable?)"; }
  mv "$CACHE/rootfs.tmp" "$CACHE/rootfs"
}

# Runs a script in a throw-away copy of the root without booting it (no systemd): the fallback where nspawn
# cannot run. Bind mounts "src:dst" go in a private mount namespace; output: $WORK/console.log.
run_in_chroot() {  # script, bind...
  local script=$1; shift
  rm -rf "$WORK/root"; cp -a "$CACHE/rootfs" "$WORK/root"
  local mounts="mount -t proc proc '$WORK/root/proc'"
  for b in "$@"; do mkdir -p "$WORK/root${b#*:}"; mounts="$mounts; mount --bind '${b%%:*}' '$WORK/root${b#*:}'"; done
  timeout 180 unshare --mount --propagation private bash -c "$mounts; chroot '$WORK/root' /bin/bash '$script'" >"$WORK/console.log" 2>&1 || true
  rm -rf "$WORK/root"
}

# Boots the cached root with a throw-away overlay (every change is discarded) and a private /run/systemd, so
# nspawn's bookkeeping stays off the host; extra nspawn options are passed through, the last argument goes to
# the container's systemd (e.g. systemd.wants=check.service). Output: $WORK/console.log. Bounded to
# $BOOT_TIMEOUT seconds (180).
boot_container() {
  timeout "${BOOT_TIMEOUT:-180}" unshare --mount --propagation private bash -c '
    mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd
    exec systemd-nspawn -D "$0" --volatile=overlay --register=no --keep-unit --boot --console=pipe -q \
      "${@:1:$#-1}" -- "${@: -1}"' "$CACHE/rootfs" "$@" >"$WORK/console.log" 2>&1 || true
}

# A fieldgate-hub on loopback with fresh certificates: sets HUB_PID, AMQPS_PORT, HTTPS_PORT (HTTPS and AMQP over
# WebSockets), UDP_PORT, URL; needs $WORK, $HUB_BIN.
start_hub() {
  AMQPS_PORT=$((20000 + RANDOM % 20000)); HTTP_PORT=$((AMQPS_PORT + 1)); UDP_PORT=$((AMQPS_PORT + 2)); HTTPS_PORT=$((AMQPS_PORT + 3))
  URL="--url http://127.0.0.1:$HTTP_PORT"
  export FIELDGATE_HUB_STATE=$WORK/hub
  mkdir -p "$WORK/hub"
  "$HUB_BIN" certs --dns localhost >/dev/null
  # shellcheck disable=SC2086 # HUB_ARGS: extra serve options, word-split on purpose
  "$HUB_BIN" serve --amqps-port "$AMQPS_PORT" --http-port "$HTTP_PORT" --https-port "$HTTPS_PORT" --log-level warning ${HUB_ARGS:-} >"$WORK/hub.log" 2>&1 &
  HUB_PID=$!
  for _ in $(seq 50); do "$HUB_BIN" device list $URL >/dev/null 2>&1 && break; sleep 0.2; done
}

# The primary key of a new device at the hub.
create_device() { sed -n 's/.*SharedAccessKey=\([^;]*\).*/\1/p' <<<"$("$HUB_BIN" device create "$1" $URL)"; }

# A scratch directory ($WORK) removed on exit, with the hub stopped first.
make_work() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  HUB_PID=
  trap '{ [ -n "$HUB_PID" ] && kill "$HUB_PID"; wait; } 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# fieldgate.toml for a gateway in the container talking to start_hub's hub, with the hub's CA beside it:
# $1 = directory (mounted as /etc/fieldgate), $2 = the gateway's device id, $3 = a first comment line.
write_gateway_config() {
  cp "$WORK/hub/certs/ca.pem" "$1/ca.pem"
  cat >"$1/fieldgate.toml" <<TOML
# $3
[hub]
host = "localhost"
address = "127.0.0.1"
port = $AMQPS_PORT
ca_file = "/etc/fieldgate/ca.pem"
[gateway]
device_id = "$2"
[udp]
bind = "127.0.0.1"
port = $UDP_PORT
TOML
}

# Issue 19: no libdispatch "Failed to set thread priority" and no ConfigurationDirectory warning in the journal.
# $1 = results directory (journal-noise: `journalctl -o verbose` of such lines; nice-configured/nice-effective: the
# unit's LimitNICE and the daemon's RLIMIT_NICE), $2 = how many times the daemon started. Where systemd could not
# apply LimitNICE (a sandbox without CAP_SYS_RESOURCE, as some CI machines are: the daemon's limit stays 0), the
# one libdispatch worker that asks for nice -4 still logs once per start: that many lines are allowed, no more.
journal_noise() {
  local dir=$1 starts=$2 config priority
  config=$(grep -c 'MESSAGE=.*ConfigurationDirectory' "$dir/journal-noise" || true)
  priority=$(grep -c 'MESSAGE=Failed to set thread priority' "$dir/journal-noise" || true)
  [ "$config" = 0 ] || fail "systemd warned about ConfigurationDirectory: $(grep MESSAGE= "$dir/journal-noise")"
  [ "$(cat "$dir/nice-configured")" = 24 ] || fail "the unit's LimitNICE is $(cat "$dir/nice-configured"), expected 24 (nice -4)"
  if [ "$(cat "$dir/nice-effective")" = 24 ]; then
    [ "$priority" = 0 ] || fail "libdispatch could not set its priorities: $(grep MESSAGE= "$dir/journal-noise")"
  else
    (( (0x$(awk '/^CapBnd/ {print $2}' /proc/self/status) >> 24) & 1 )) \
      && fail "systemd did not apply LimitNICE (RLIMIT_NICE $(cat "$dir/nice-effective")) although this machine has CAP_SYS_RESOURCE"
    [ "$priority" -le "$starts" ] || fail "$priority libdispatch priority lines for $starts starts: $(grep -e MESSAGE= -e _COMM= -e _CMDLINE= "$dir/journal-noise")"
    echo "$(basename "$0"): note: systemd could not apply LimitNICE here (RLIMIT_NICE stays $(cat "$dir/nice-effective"); this machine's capability bounding set lacks CAP_SYS_RESOURCE): $priority libdispatch line(s) for $starts start(s), as expected here"
  fi
}

# A oneshot unit that runs a check script once the container has booted: $1 = unit file to write, $2 = description,
# $3 = the script's path inside the container.
write_check_unit() {
  printf '[Unit]\nDescription=%s\nAfter=multi-user.target\n[Service]\nType=oneshot\nExecStart=/bin/bash %s\n' "$2" "$3" >"$1"
}
