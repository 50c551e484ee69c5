# shellcheck shell=bash
# The flags of a shipped build, for packaging/build-deb.sh and scripts/static-build.sh:
# - release, with the Swift runtime linked statically (Debian 12 has no Swift runtime package);
# - Debian's hardening: immediate binding (-z now) with RELRO; glibc's fortified functions in our C code come from
#   Package.swift (release);
# - the code a running gateway uses, laid out together: packaging/hot-code.symbols lists it (one symbol per line,
#   written by `fieldgate-bench daemon-memory --hot-code`), every Swift function gets its own section so the linker
#   can move it, and the kernel, which maps code in 64 KiB neighbourhoods around each page touched, then maps a
#   little of it instead of a few pages from everywhere. A symbol the build no longer has is skipped.
#
# release_flags LINKER SYMBOLS [SECTIONS]: sets RELEASE_FLAGS. LINKER is gold (Swift's default on Linux: it orders
# sections, so the list is rewritten as section names into the file SECTIONS) or lld (it orders symbols).
release_flags() {
  local linker=$1 symbols=$2 sections=${3:-}
  RELEASE_FLAGS=(-c release --static-swift-stdlib -Xlinker -z -Xlinker now -Xlinker -z -Xlinker relro -Xcc -O2
    -Xswiftc -Xfrontend -Xswiftc -function-sections)
  case "$linker" in
    gold)
      sed 's/^/.text./' "$symbols" >"$sections"
      RELEASE_FLAGS+=(-Xlinker "--section-ordering-file=$sections") ;;
    lld)
      RELEASE_FLAGS+=(-Xlinker "--symbol-ordering-file=$symbols" -Xlinker --no-warn-symbol-ordering) ;;
    *) echo "release_flags: linker gold or lld, not $linker" >&2; return 2 ;;
  esac
}
