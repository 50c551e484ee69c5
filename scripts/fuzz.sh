#!/usr/bin/env bash
# Fuzzes the spool's segment and ledger decoders with libFuzzer + ASan for a bounded time (default 30 s).
# Seeds: real segment files written by spool-harness. A crash leaves its input in Fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
seconds=${1:-30}
swift build --product spool-harness
swift build --package-path Fuzz --sanitize=fuzzer --sanitize=address --product spool-fuzz
corpus=$(mktemp -d)
seed=$(mktemp -d)
trap 'rm -rf "$corpus" "$seed"' EXIT
"$(swift build --show-bin-path)/spool-harness" "$seed/spool" always > /dev/null & pid=$!
sleep 0.3; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
for f in "$seed"/spool/segments/*.seg "$seed"/spool/ledger; do [ -f "$f" ] && head -c 4096 "$f" > "$corpus/$(basename "$f")"; done
mkdir -p Fuzz/artifacts
# The Swift backtracer would swallow the crash before libFuzzer saves it (feasibility.md §7).
SWIFT_BACKTRACE=enable=no "$(swift build --package-path Fuzz --sanitize=fuzzer --sanitize=address --show-bin-path)/spool-fuzz" \
    -max_total_time="$seconds" -max_len=8192 -artifact_prefix=Fuzz/artifacts/ "$corpus" 2>&1 | tail -n 5
