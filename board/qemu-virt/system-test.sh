#!/usr/bin/env bash
# The full-system test: the arm64 .deb installed on an emulated board, booted by systemd,
# recording a publish, surviving a power cut. Installs the host tools it needs (as root),
# builds the .deb (board/package-deb.sh) unless given one, builds or reuses the disk image
# (build-image.sh, cached), then runs scenario.py. Prints each stage's duration.
#
#   board/qemu-virt/system-test.sh [--deb FILE] [--work DIR]
#     --deb FILE  an edgerec_*_arm64.deb to install (default: build one)
#     --work DIR  image, kernel, console logs (default: target/qemu-virt)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

usage() { sed -n '7,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
deb="" work="$ROOT/target/qemu-virt"
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) [ $# -ge 2 ] || usage; deb="$2"; shift ;;
    --work) [ $# -ge 2 ] || usage; work="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "system-test: needs root (debootstrap, image file ownership)" >&2; exit 1; }
mkdir -p "$work"
work="$(realpath "$work")"

declare -a timings=()
stage() {
  local name=$1 t0=$SECONDS; shift
  echo "==> $name"
  "$@"
  timings+=("$(printf '%-28s %4ds' "$name" $((SECONDS - t0)))")
}

installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

host_tools() {
  local need=() p
  for p in qemu-system-arm debootstrap qemu-user-static e2fsprogs python3 ffmpeg; do
    installed "$p" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || echo "system-test: apt-get update reported errors; trying the install anyway" >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # The arm64 architecture (apt's view of the kernel package; the cross toolchain too).
  "$ROOT/board/cross-build.sh" aarch64 --install-only
}

stage "host tools" host_tools
if [ -z "$deb" ]; then
  stage "build .deb (arm64)" "$ROOT/board/package-deb.sh" aarch64 --out "$work"
  version=$(awk -F'"' '/^version/ { print $2; exit }' "$ROOT/Cargo.toml")
  deb="$work/edgerec_${version}_arm64.deb"
fi
stage "disk image" "$HERE/build-image.sh" "$deb" "$work"
stage "scenario" python3 "$HERE/scenario.py" --image "$work/image.ext4" --kernel "$work/vmlinuz" --work "$work"

echo "==> system-test stage timings"
for t in "${timings[@]}"; do echo "  $t"; done
echo "  total                        ${SECONDS}s"
