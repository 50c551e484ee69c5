#!/usr/bin/env bash
# Builds products as they ship (packaging/release-flags.sh: static Swift runtime, hardening, hot code laid out
# together) into .build/static, for the benchmarks that measure the shipped binary: valgrind 3.19 runs only
# statically linked Swift programs, and daemon-memory's figures depend on the layout.
# Usage: scripts/static-build.sh PRODUCT...   e.g. scripts/static-build.sh fieldgated fieldgate-hub fieldgate-bench proton-floor proton-floor-swift
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /opt/swift/usr/bin ] && export PATH=/opt/swift/usr/bin:$PATH
[ $# -gt 0 ] || { echo "usage: $0 PRODUCT..." >&2; exit 2; }
source packaging/release-flags.sh
mkdir -p .build/static
release_flags gold packaging/hot-code.symbols .build/static/hot-code.sections
# The order file is an input SwiftPM does not track: relink every time, so a new list takes effect.
for product in "$@"; do
  rm -f ".build/static/release/$product"
  if [ "$product" = proton-floor ]; then
    # The memory floor is C with Proton and OpenSSL only (SwiftPM would link the Swift runtime into it), bound at
    # start as the shipped fieldgated is (lazy binding maps the dynamic linker's pages again later).
    mkdir -p .build/static/release
    cc -O2 -Wall -Wl,-z,now -Wl,-z,relro -I Sources/CProtonFloor/include -o .build/static/release/proton-floor \
      Sources/proton-floor/main.c Sources/CProtonFloor/proton_floor.c -lqpid-proton -lcrypto
    continue
  fi
  swift build "${RELEASE_FLAGS[@]}" --scratch-path .build/static --product "$product"
done
