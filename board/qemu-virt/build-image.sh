#!/usr/bin/env bash
# Builds the disk the full-system test boots: a minimal Debian bookworm arm64 root
# filesystem (debootstrap) with Debian's arm64 cloud kernel, the edgerec .deb installed with
# dpkg, and this board's config; plus the kernel image to hand to `qemu-system-aarch64 -kernel`.
#
#   board/qemu-virt/build-image.sh DEB OUT_DIR      -> OUT_DIR/image.ext4, OUT_DIR/vmlinuz
#
# The root filesystem without edgerec (debootstrap, both stages, ~5 min) is cached as a
# tarball in $EDGEREC_QEMU_CACHE (default ~/.cache/edgerec/qemu-virt), keyed on this script,
# the package list, the kernel package version and the mirror; a cached one restores in
# seconds. The .deb goes in fresh on every run.
#
# Foreign-architecture steps (debootstrap's second stage, dpkg -i) run in a chroot through
# qemu-aarch64-static registered in a private binfmt_misc of a user namespace (Linux >= 6.7),
# so the host's binfmt_misc is never touched. Needs root (debootstrap, file ownership) and
# the tools system-test.sh installs: debootstrap, qemu-user-static, e2fsprogs, apt with the
# arm64 architecture (for the kernel package).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE=bookworm
PACKAGES=systemd-sysv,udev,kmod,iproute2,e2fsprogs,procps,netbase,qemu-guest-agent
IMAGE_SIZE=1G
CACHE="${EDGEREC_QEMU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgerec/qemu-virt}"

[ $# -eq 2 ] || { sed -n '6p' "${BASH_SOURCE[0]}" | sed 's/^# *//' >&2; exit 2; }
deb="$(realpath "$1")" out="$2"
[ -f "$deb" ] || { echo "build-image: no such .deb: $deb" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "build-image: needs root (debootstrap, file ownership)" >&2; exit 1; }
mkdir -p "$out" "$CACHE"

t0=$EPOCHREALTIME
say() { awk -v a="$t0" -v b="$EPOCHREALTIME" -v m="$*" 'BEGIN { printf "[image %6.1f s] %s\n", b - a, m }'; }

# The Debian mirror apt already uses (deb822 or one-line sources), else the default.
mirror() {
  local m
  m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 ~ /debian/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# Runs bash CODE as root of a new user namespace (uids and gids 0-65535 map to the same host
# ids) with a private binfmt_misc in which aarch64 ELF files run through qemu-aarch64-static.
# The F flag opens the interpreter now, so it also works inside a chroot. The id maps are
# written from outside by this (root) shell: unshare's --map-users would need newuidmap and
# /etc/subuid entries.
in_arm_userns() {
  local reg=':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F'
  local fifo upid
  fifo=$(mktemp -u /tmp/edgerec-userns.XXXXXX)
  # shellcheck disable=SC2016 # expanded inside the namespace
  mkfifo -m 0600 "$fifo"
  # shellcheck disable=SC2016 # expanded inside the namespace
  unshare --user --mount --pid --fork --mount-proc \
    env container=lxc REG="$reg" FIFO="$fifo" CODE="$1" bash -euo pipefail -c '
      read -r _ <"$FIFO"
      mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
      printf "%s" "$REG" >/proc/sys/fs/binfmt_misc/register
      eval "$CODE"' &
  upid=$!
  until [ "$(readlink "/proc/$upid/ns/user")" != "$(readlink /proc/self/ns/user)" ]; do sleep 0.05; done
  echo '0 0 65536' >"/proc/$upid/uid_map"
  echo '0 0 65536' >"/proc/$upid/gid_map"
  echo go >"$fifo"
  rm -f "$fifo"
  wait "$upid"
}

kernel_package() { # the versioned package linux-image-cloud-arm64 depends on
  apt-cache depends linux-image-cloud-arm64:arm64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { sub(/:arm64$/, "", $2); print $2; exit }'
}

kpkg=$(kernel_package)
[ -n "$kpkg" ] || { echo "build-image: apt knows no linux-image-cloud-arm64:arm64 (dpkg --add-architecture arm64; apt-get update)" >&2; exit 1; }
kver=$(apt-cache policy "$kpkg:arm64" | awk '/Candidate:/ { print $2 }')
MIRROR=$(mirror)
key=$(printf '%s\n' "$SUITE" "$PACKAGES" "$kpkg=$kver" "$MIRROR" "$(sha256sum <"${BASH_SOURCE[0]}")" |
  sha256sum | cut -c1-16)
rootfs_tar="$CACHE/rootfs-$key.tar.gz" vmlinuz_cached="$CACHE/vmlinuz-$key"

build_rootfs() {
  local stage="$CACHE/stage-$key" kdir="$CACHE/kernel-$key"
  rm -rf "$stage" "$kdir"
  say "debootstrap first stage ($SUITE arm64 minbase from $MIRROR)"
  debootstrap --foreign --arch=arm64 --variant=minbase --include="$PACKAGES" \
    "$SUITE" "$stage" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }

  say "kernel: $kpkg $kver"
  mkdir -p "$kdir"
  (cd "$kdir" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg:arm64")
  dpkg-deb -x "$kdir"/*.deb "$kdir/x"
  cp -a "$kdir"/x/lib/modules "$stage/lib/"
  cp "$kdir"/x/boot/vmlinuz-* "$kdir/vmlinuz"

  say "debootstrap second stage (emulated) and board setup"
  # shellcheck disable=SC2016 # expanded inside the namespace
  STAGE="$stage" in_arm_userns '
    chroot "$STAGE" /debootstrap/debootstrap --second-stage >/dev/null
    chroot "$STAGE" sh -c "depmod -a \$(ls /lib/modules)"
    chroot "$STAGE" systemctl enable systemd-networkd.service >/dev/null 2>&1
    chroot "$STAGE" apt-get clean' ||
    { tail -20 "$stage/debootstrap/debootstrap.log" >&2 2>/dev/null; exit 1; }

  echo edgerec-qemu >"$stage/etc/hostname"
  printf '/dev/nvme0n1 / ext4 rw,noatime,errors=remount-ro 0 1\n' >"$stage/etc/fstab"
  # QEMU user networking: the guest is 10.0.2.15, the host's forwarded ports arrive there.
  # Static, so boot does not wait for DHCP.
  cat >"$stage/etc/systemd/network/10-qemu.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
EOF
  # The console log is the test's window into the guest: journal lines go to the serial port.
  mkdir -p "$stage/etc/systemd/journald.conf.d"
  printf '[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\n' \
    >"$stage/etc/systemd/journald.conf.d/console.conf"
  rm -rf "$stage/var/lib/apt/lists"/* "$stage/var/cache/apt"/*.bin

  say "caching root filesystem"
  tar -C "$stage" -I 'gzip -1' --numeric-owner -cf "$rootfs_tar.tmp" .
  mv "$kdir/vmlinuz" "$vmlinuz_cached"
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  rm -rf "$stage" "$kdir"
  # Older keys are stale inputs.
  find "$CACHE" -maxdepth 1 \( -name 'rootfs-*.tar.gz' -o -name 'vmlinuz-*' \) \
    ! -name "*$key*" -delete
}

if [ -f "$rootfs_tar" ] && [ -f "$vmlinuz_cached" ]; then
  say "cached root filesystem $rootfs_tar"
else
  build_rootfs
fi

stage="$out/stage"
rm -rf "$stage" "$out/image.ext4"
mkdir -p "$stage"
tar -C "$stage" --numeric-owner -xzf "$rootfs_tar"
say "installing $(basename "$deb")"
cp "$deb" "$stage/tmp/edgerec.deb"
# shellcheck disable=SC2016 # expanded inside the namespace
STAGE="$stage" in_arm_userns '
  chroot "$STAGE" dpkg -i /tmp/edgerec.deb
  rm "$STAGE/tmp/edgerec.deb"'
# The board profile, as an operator would install it (README beside this script).
cp "$HERE/edgerec.toml" "$stage/etc/edgerec/edgerec.toml"
install -D -m 0644 "$HERE/limits.conf" "$stage/etc/systemd/system/edgerec.service.d/limits.conf"
cp "$vmlinuz_cached" "$out/vmlinuz"
say "mkfs.ext4 -d ($IMAGE_SIZE)"
mkfs.ext4 -q -L rootfs -d "$stage" "$out/image.ext4" "$IMAGE_SIZE"
rm -rf "$stage"
say "image ready: $out/image.ext4"
