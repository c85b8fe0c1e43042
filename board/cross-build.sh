#!/usr/bin/env bash
# Cross-builds edgerec for an ARM board without docker, with Debian's own cross toolchain
# (Debian 12+: rustc-web/cargo-web, the target's libstd-rust-web-dev, gcc-<triple>, qemu-user).
# Installs whatever is missing (dpkg --add-architecture, one apt-get update, apt-get install;
# as root or via sudo), then by default builds `--release --locked` and prints the stripped
# binary, `file` output and size; fails if the aarch64 binary is over 10 MB (10^6 bytes).
#
#   board/cross-build.sh TARGET [--release] [--tests] [--run-unit-tests] [--run-tests [--select "CARGO-TEST-ARGS"]] [--install-only] [-- TEST-ARGS...]
#     TARGET            aarch64-unknown-linux-gnu (aarch64, arm64)
#                       armv7-unknown-linux-gnueabihf (armv7, armhf)
#     --release         the release binary (the default when no other mode is given)
#     --tests           build the test binaries (dev profile) and print their paths
#     --run-unit-tests  run the lib unit tests under qemu-user (TEST-ARGS go to the harness)
#     --run-tests       run the whole suite (unit and integration) under qemu-user: the test
#                       harnesses and the daemon they spawn are ARM code, the peers native;
#                       --select "--lib --test NAME ..." runs only those test targets
#     --install-only    only install the missing packages
#
# Honours CARGO_TARGET_DIR (default: target/). Debian's compiler is named explicitly
# (/usr/bin/cargo, RUSTC=/usr/bin/rustc, RUSTDOC) because a rustup toolchain is usually first on PATH
# and rustup cannot add targets offline. Prefer a separate CARGO_TARGET_DIR from rustup's builds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc # doc tests too: rustup's rustdoc has no ARM std
MAX_BYTES=10000000 # aarch64 size budget: 10 MB, stripped

usage() { sed -n '8,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

target="" do_release=0 do_tests=0 do_run=0 do_run_all=0 install_only=0 test_args=() select=()
while [ $# -gt 0 ]; do
  case "$1" in
    --release) do_release=1 ;;
    --tests) do_tests=1 ;;
    --run-unit-tests) do_run=1 ;;
    --run-tests) do_run_all=1 ;;
    --select) shift; read -r -a select <<<"${1:-}" ;;
    --install-only) install_only=1 ;;
    --) shift; test_args=("$@"); break ;;
    -h|--help) usage ;;
    -*) echo "cross-build: unknown option $1" >&2; usage ;;
    *) [ -z "$target" ] || usage; target="$1" ;;
  esac
  shift
done
[ $((do_release + do_tests + do_run + do_run_all)) -gt 0 ] || do_release=1

case "$target" in
  aarch64|arm64|aarch64-unknown-linux-gnu)
    T=aarch64-unknown-linux-gnu DEB_ARCH=arm64 GNU=aarch64-linux-gnu QEMU=qemu-aarch64 ;;
  armv7|armhf|armv7-unknown-linux-gnueabihf)
    T=armv7-unknown-linux-gnueabihf DEB_ARCH=armhf GNU=arm-linux-gnueabihf QEMU=qemu-arm ;;
  *) usage ;;
esac
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/$T/release/edgerec"
cfg=(--config "target.$T.linker=\"$GNU-gcc\"")

# step NAME CMD...: runs CMD and prints how long it took.
step() {
  local name="$1" t0="$EPOCHREALTIME"; shift
  echo "== $name"
  "$@"
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "== %s: %.1f s\n", n, b - a }'
}

installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

install_missing() {
  local need=() sudo="" p
  for p in rustc-web cargo-web "libstd-rust-web-dev:$DEB_ARCH" "gcc-$GNU" "libc6:$DEB_ARCH" \
           qemu-user file; do
    installed "$p" || need+=("$p")
  done
  if [ ${#need[@]} -eq 0 ]; then echo "all present for $DEB_ARCH"; std_matches_compiler; return; fi
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "cross-build: need root or sudo to install: ${need[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH" || $sudo dpkg --add-architecture "$DEB_ARCH"
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || echo "cross-build: apt-get update reported errors (above); going on" >&2
  local debs=()
  mapfile -t debs < <(fetch_stale_foreign "${need[@]}")
  $sudo apt-get install -y -qq "${need[@]}" "${debs[@]}" >/dev/null
  std_matches_compiler
}

# The target's std must come from the same rustc-web build as the compiler.
std_matches_compiler() {
  local want have
  want=$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null || true)
  have=$(dpkg-query -W -f='${Version}' "libstd-rust-web-dev:$DEB_ARCH" 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "cross-build: libstd-rust-web-dev:$DEB_ARCH is ${have:-missing}, rustc-web is ${want:-missing}" >&2
    exit 1
  fi
}

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }'; }

# A mirror sometimes serves a stale index for one architecture ("File has unexpected size
# ... Mirror sync in progress?"): apt then offers older $DEB_ARCH builds than the host's,
# e.g. a target std that does not match rustc-web, or a Multi-Arch: same library whose
# version must equal the host's. For each such package (and, transitively, its
# dependencies), fetch the host version's .deb for $DEB_ARCH from the same pool directory
# and print its path for `apt-get install`. Prints nothing when the index is sound.
fetch_stale_foreign() {
  local host_arch queue=() seen=" " p hv dep uri dir
  host_arch=$(dpkg --print-architecture)
  dir=$(mktemp -d /tmp/cross-build-debs.XXXXXX)
  for p in "$@"; do [[ $p == *:"$DEB_ARCH" ]] && queue+=("${p%:*}"); done
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]} queue=("${queue[@]:1}")
    [[ $seen == *" $p "* ]] && continue
    seen+="$p "
    hv=$(candidate "$p:$host_arch")
    [ -z "$hv" ] && continue
    if [ "$hv" != "$(candidate "$p:$DEB_ARCH")" ]; then
      uri=$(apt-get download --print-uris "$p:$host_arch" 2>/dev/null | head -n1 | cut -d"'" -f2)
      uri=${uri%_"$host_arch".deb}_$DEB_ARCH.deb
      echo "cross-build: stale $DEB_ARCH index for $p; fetching $hv from ${uri%/*}/" >&2
      /usr/lib/apt/apt-helper download-file "$uri" "$dir/${p}_$DEB_ARCH.deb" >/dev/null ||
        { echo "cross-build: cannot fetch $uri" >&2; exit 1; }
      echo "$dir/${p}_$DEB_ARCH.deb"
    fi
    # Every package's dependencies, stale or not: a current one (libxml2) may need a stale
    # one (liblzma5) that nothing else names.
    for dep in $(apt-cache show --no-all-versions "$p:$host_arch" |
      awk -F': ' '/^(Pre-)?Depends:/ { print $2 }' | tr ',|' '\n' | awk '{ print $1 }' | sed 's/:any$//'); do
      queue+=("$dep")
    done
  done
}

build_release() {
  cd "$ROOT"
  "$CARGO" build --release --locked --target "$T" "${cfg[@]}"
  # The release profile strips; strip here too in case a profile override did not.
  file -b "$BIN" | grep -q ', stripped' || "$GNU-strip" "$BIN"
}

report_release() {
  local bytes
  bytes=$(stat -c %s "$BIN")
  echo "binary: $BIN"
  echo "file:   $(file -b "$BIN")"
  awk -v b="$bytes" 'BEGIN { printf "size:   %.2f MB (%d bytes)\n", b / 1e6, b }'
  if [ "$T" = aarch64-unknown-linux-gnu ] && [ "$bytes" -gt "$MAX_BYTES" ]; then
    echo "cross-build: $T binary is over the 10 MB budget" >&2
    exit 1
  fi
}

build_tests() {
  cd "$ROOT"
  # JSON on stdout for the executable paths (test harnesses live in deps/; the plain binary
  # is built too, for the integration tests); compiler diagnostics still go to stderr.
  "$CARGO" test --no-run --locked --target "$T" "${cfg[@]}" --message-format=json-render-diagnostics \
    | grep -o '"executable":"[^"]*/deps/[^"]*"' | cut -d'"' -f4 | sort -u
}

run_unit_tests() {
  cd "$ROOT"
  "$CARGO" test --locked --target "$T" --lib "${cfg[@]}" --config "target.$T.runner=\"$QEMU\"" \
    -- "${test_args[@]}"
}

run_all_tests() {
  cd "$ROOT"
  # qemu-user does not follow an execve into another ARM binary (no binfmt_misc needed or
  # touched): tests/support spawns the daemon through $EDGEREC_TEST_RUNNER instead.
  EDGEREC_TEST_RUNNER="$QEMU" "$CARGO" test --locked --target "$T" "${cfg[@]}" "${select[@]}" \
    --config "target.$T.runner=\"$QEMU\"" -- "${test_args[@]}"
}

step "install missing packages ($DEB_ARCH)" install_missing
[ $install_only = 0 ] || exit 0
[ -d "/usr/lib/rustlib/$T" ] || { echo "cross-build: no Rust std for $T in /usr/lib/rustlib" >&2; exit 1; }
echo "toolchain: $("$CARGO" --version), $("$RUSTC" --version), target $T"

if [ $do_release = 1 ]; then step "cargo build --release ($T)" build_release; report_release; fi
if [ $do_tests = 1 ]; then step "cargo test --no-run ($T)" build_tests; fi
if [ $do_run = 1 ]; then step "lib unit tests under $QEMU ($T)" run_unit_tests; fi
if [ $do_run_all = 1 ]; then step "all tests under $QEMU ($T)" run_all_tests; fi
