#!/usr/bin/env bash
# Fuzzes with libFuzzer + ASan, each target for a bounded time (default 30 s): the spool's segment and ledger
# decoders (seeds: real segment files written by spool-harness), the UDP datagram decoder (seeds: datagrams of
# every format) and the serial framers and frame decoders. A crash leaves its input in Fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
seconds=${1:-30}
swift build --product spool-harness
# --sanitize=fuzzer instruments only the fuzz targets' own files, not the modules they test (the spool target had
# 29 coverage counters: libFuzzer was mutating blind). The coverage flags reach every Swift module of the build.
# SwiftPM does not rebuild dependencies when only -Xswiftc changes: a build made without them needs
# `rm -rf Fuzz/.build` once.
fuzz_build=(--package-path Fuzz --sanitize=fuzzer --sanitize=address
            -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp)
for target in spool-fuzz udp-fuzz frame-fuzz; do swift build "${fuzz_build[@]}" --product "$target"; done
bin=$(swift build "${fuzz_build[@]}" --show-bin-path)
corpus=$(mktemp -d)
seed=$(mktemp -d)
udp=$(mktemp -d)
frames=$(mktemp -d)
trap 'rm -rf "$corpus" "$seed" "$udp" "$frames"' EXIT
"$(swift build --show-bin-path)/spool-harness" "$seed/spool" always > /dev/null & pid=$!
sleep 0.3; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
for f in "$seed"/spool/segments/*.seg "$seed"/spool/ledger; do [ -f "$f" ] && head -c 4096 "$f" > "$corpus/$(basename "$f")"; done
mkdir -p Fuzz/artifacts
# The Swift backtracer would swallow the crash before libFuzzer saves it (docs/toolchain.md §7).
SWIFT_BACKTRACE=enable=no "$bin/spool-fuzz" \
    -max_total_time="$seconds" -max_len=8192 -artifact_prefix=Fuzz/artifacts/ "$corpus" 2>&1 | tail -n 20
# UDP seeds: the first byte picks the source (0: any, 1: the fenced leaf's, 2: the mapped one's, 3: IPv6).
printf '\000{"device":"open","ts":1700000000000,"values":{"t":1},"props":{"u":"C"}}' > "$udp/json"
printf '\001{"device":"fenced","values":{"a":[1,2]}}' > "$udp/fenced"
printf '\002W:+0012.50kg' > "$udp/mapped"
printf '\000{"device":"open","type":"reply","id":"m-1","status":200,"payload":{"x":1}}' > "$udp/reply"
printf '\000{"device":"signed","ts":1700000000000,"values":{}}\nsig=AAAA' > "$udp/signed"
printf '\000{"device":"open","ts":1.7e12,"values":{"big":1e308,"small":-2.5E-300}}' > "$udp/exponents"
SWIFT_BACKTRACE=enable=no "$bin/udp-fuzz" \
    -max_total_time="$seconds" -max_len=2100 -artifact_prefix=Fuzz/artifacts/ "$udp" 2>&1 | tail -n 20
# Serial seeds: the first byte picks where the stream is cut in two reads.
printf '\007T=21.5 H=60\nid1,2,3\n{"id":"a","v":1}\n' > "$frames/lines"
printf '\003\002W\020\003x\003\000\003abc' > "$frames/markers"
SWIFT_BACKTRACE=enable=no "$bin/frame-fuzz" \
    -max_total_time="$seconds" -max_len=512 -artifact_prefix=Fuzz/artifacts/ "$frames" 2>&1 | tail -n 20
