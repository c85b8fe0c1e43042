#!/usr/bin/env bash
# Packages edgerec as a .deb for an ARM board (arm64 or armhf) with plain dpkg-deb, no
# cargo-deb: the release binary (built with board/cross-build.sh unless --no-build and it
# exists), the systemd unit, the default /etc/edgerec/edgerec.toml (a conffile), sysusers and
# tmpfiles entries, and maintainer scripts that create the user, enable and start the service.
#
#   board/package-deb.sh TARGET [--out DIR] [--no-build]
#     TARGET      aarch64 / arm64 / aarch64-unknown-linux-gnu, or armv7 / armhf / armv7-unknown-linux-gnueabihf
#     --out DIR   where to write the .deb (default: target/deb)
#     --no-build  package the existing binary in $CARGO_TARGET_DIR (default target/) as is
#
# The maintainer is taken from $DEB_MAINTAINER (default below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAINTAINER="${DEB_MAINTAINER:-edgerec maintainers <edgerec@localhost>}"

usage() { sed -n '7,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

target="" out="$ROOT/target/deb" build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; out="$2"; shift ;;
    --no-build) build=0 ;;
    -h|--help) usage ;;
    -*) echo "package-deb: unknown option $1" >&2; usage ;;
    *) [ -z "$target" ] || usage; target="$1" ;;
  esac
  shift
done
case "$target" in
  aarch64|arm64|aarch64-unknown-linux-gnu) T=aarch64-unknown-linux-gnu ARCH=arm64 ;;
  armv7|armhf|armv7-unknown-linux-gnueabihf) T=armv7-unknown-linux-gnueabihf ARCH=armhf ;;
  *) usage ;;
esac
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$T/release/edgerec"

t0=$EPOCHREALTIME
elapsed() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

if [ $build = 1 ] || [ ! -x "$BIN" ]; then
  "$ROOT/board/cross-build.sh" "$T"
  echo "== build: $(elapsed) s"
  t0=$EPOCHREALTIME
fi

# [package] fields of Cargo.toml. A Cargo pre-release (1.2.0-rc.1) sorts before its release
# in dpkg only when written with '~'.
field() { awk -v k="$1" '/^\[/ { p = ($0 == "[package]") } p && $1 == k { sub(/^[^=]*= *"/, ""); sub(/"$/, ""); print; exit }' "$ROOT/Cargo.toml"; }
VERSION="$(field version | tr - '~')"
DESCRIPTION="$(field description)"

# Only glibc may be needed. libgcc_s (Rust's unwinder) is in libgcc-s1, which libc6 depends on.
needed=$(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
  case "$lib" in
    libc.so.6|libm.so.6|libgcc_s.so.1|ld-linux*) ;;
    *) echo "package-deb: $BIN needs $lib, not covered by Depends: libc6" >&2; exit 1 ;;
  esac
done
glibc=$(readelf --dyn-syms -W "$BIN" | grep -o 'GLIBC_[0-9.]*' | cut -d_ -f2 | sort -uV | tail -n1)

# Inputs the lead maintains next to the code.
src_unit="$ROOT/systemd/edgerec.service"
src_conf="$ROOT/board/edgerec.toml"
src_sysusers="$ROOT/systemd/edgerec.sysusers"
src_tmpfiles="$ROOT/systemd/edgerec.tmpfiles"
for f in "$src_unit" "$src_conf" "$src_sysusers" "$src_tmpfiles"; do
  [ -f "$f" ] || { echo "package-deb: missing $f" >&2; exit 1; }
done

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/edgerec"
install -D -m 0755 "$BIN" "$pkg/usr/bin/edgerec"
install -D -m 0644 "$src_unit" "$pkg/lib/systemd/system/edgerec.service"
# 0640: the config may hold S3 and callback secrets; postinst gives it to group edgerec.
install -D -m 0640 "$src_conf" "$pkg/etc/edgerec/edgerec.toml"
install -D -m 0644 "$src_sysusers" "$pkg/usr/lib/sysusers.d/edgerec.conf"
install -D -m 0644 "$src_tmpfiles" "$pkg/usr/lib/tmpfiles.d/edgerec.conf"
install -d -m 0755 "$pkg/usr/share/doc/edgerec" "$pkg/DEBIAN"
install -m 0644 "$ROOT/README.md" "$pkg/usr/share/doc/edgerec/README.md" # the unit's Documentation=
install -m 0644 "$ROOT/CHANGELOG.md" "$pkg/usr/share/doc/edgerec/CHANGELOG.md"
# A native package's changelog.gz is in Debian's format: one entry, dated by the last commit.
when=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}")
printf 'edgerec (%s) stable; urgency=medium\n\n  * Release %s; see CHANGELOG.md.\n\n -- %s  %s\n' \
  "$VERSION" "$VERSION" "$MAINTAINER" "$when" | gzip -9n > "$pkg/usr/share/doc/edgerec/changelog.gz"
cat > "$pkg/usr/share/doc/edgerec/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: edgerec

Files: *
Copyright: the edgerec authors
License: MIT or Apache-2.0

License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy of this
 software and associated documentation files (the "Software"), to deal in the Software
 without restriction, including without limitation the rights to use, copy, modify, merge,
 publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
 to whom the Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all copies or
 substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
 INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR
 PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE
 FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
 OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
 DEALINGS IN THE SOFTWARE.
EOF
chmod 0644 "$pkg/usr/share/doc/edgerec/"*

cat > "$pkg/DEBIAN/control" <<EOF
Package: edgerec
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: libc6 (>= $glibc)
Section: video
Priority: optional
Description: ${DESCRIPTION%%:*}
$(fold -s -w 78 <<<"$DESCRIPTION" | sed 's/ *$//; s/^/ /')
EOF
echo /etc/edgerec/edgerec.toml > "$pkg/DEBIAN/conffiles"

# Maintainer scripts, modelled on what debhelper generates for a unit, sysusers and tmpfiles.
cat > "$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null; then systemd-sysusers edgerec.conf; fi
    # The config may hold secrets: readable by root and the service's group only. An
    # admin's dpkg-statoverride for it wins.
    conf=/etc/edgerec/edgerec.toml
    if [ -f "$conf" ] && getent group edgerec >/dev/null &&
        ! dpkg-statoverride --list "$conf" >/dev/null 2>&1; then
        chgrp edgerec "$conf"
        chmod 0640 "$conf"
    fi
    # Only on a running systemd, as debhelper does: in a chroot or image build (no /proc)
    # systemd-tmpfiles-setup.service creates the directories at the first boot.
    if [ -d /run/systemd/system ] && command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create edgerec.conf >/dev/null || true
    fi
    # Enabled on first install; an admin's `systemctl disable` survives upgrades.
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper unmask edgerec.service >/dev/null || true
        if deb-systemd-helper --quiet was-enabled edgerec.service; then
            deb-systemd-helper enable edgerec.service >/dev/null || true
        else
            deb-systemd-helper update-state edgerec.service >/dev/null || true
        fi
    else
        systemctl enable edgerec.service >/dev/null 2>&1 || true
    fi
    # (Re)start only on a running systemd (not in a chroot or image build). A start failure,
    # e.g. a config still to be edited, is reported by systemd and does not fail the install.
    # deb-systemd-invoke honours policy-rc.d (image builds that forbid starting daemons).
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if command -v deb-systemd-invoke >/dev/null; then
            deb-systemd-invoke restart edgerec.service || failed=1
        else
            systemctl restart edgerec.service || failed=1
        fi
        [ -z "${failed:-}" ] || echo "edgerec: the service did not start, see: journalctl -u edgerec" >&2
    fi
fi
exit 0
EOF

cat > "$pkg/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# Stop on removal; on upgrade the service keeps running until postinst restarts it.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    if command -v deb-systemd-invoke >/dev/null; then
        deb-systemd-invoke stop edgerec.service || true
    else
        systemctl stop edgerec.service || true
    fi
fi
exit 0
EOF

cat > "$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask edgerec.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge edgerec.service >/dev/null || true
        deb-systemd-helper unmask edgerec.service >/dev/null || true
    fi
    # Recordings, the sled index and the upload queue in /var/lib/edgerec are data: kept on
    # remove and upgrade, deleted only on purge. The system user is left in place, as is usual.
    rm -rf /var/lib/edgerec
fi
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/edgerec_${VERSION}_$ARCH.deb"
dpkg-deb --build --root-owner-group "$pkg" "$deb" >/dev/null
echo "== package: $(elapsed) s"
echo "deb:  $deb"
echo "size: $(awk -v b="$(stat -c %s "$deb")" 'BEGIN { printf "%.2f MB", b / 1e6 }')"
echo "Depends: libc6 (>= $glibc); NEEDED: $(paste -sd' ' <<<"$needed")"
