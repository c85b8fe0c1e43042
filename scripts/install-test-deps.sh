#!/usr/bin/env bash
# Installs the real peers the integration tests drive, only where missing:
# ffmpeg/ffprobe (publish RTMP, decode recordings), socat and openssl (a TLS front with a
# private CA for a store; RTMPS/HTTPS certificates), curl (HTTPS), GStreamer's RTSP server
# with python3-gi (the camera stand-in), promtool (Debian's prometheus), Chromium and node
# (the status page) from apt (Debian/Ubuntu, as root or via sudo), puppeteer-core from npm,
# schemathesis from PyPI (the OpenAPI test), and the
# S3-compatible stores from crates.io with `cargo install`: s3s-fs 0.14.1 (~4 min to
# build) and Garage 2.5.0 (~5 min, see below; cache ~/.cargo/bin).
# The tests find them via $EDGEREC_S3S_FS / $EDGEREC_GARAGE, else ~/.cargo/bin, else PATH.
set -euo pipefail

S3S_FS_VERSION=0.14.1
GARAGE_VERSION=2.5.0

# --- apt: ffmpeg ---------------------------------------------------------------------
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v mount >/dev/null 2>&1 || need+=(mount)
command -v socat >/dev/null 2>&1 || need+=(socat)      # TLS in front of a test store
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # its throwaway CA, TLS and HMAC checks
command -v curl >/dev/null 2>&1 || need+=(curl)        # the API over HTTPS
command -v sha256sum >/dev/null 2>&1 || need+=(coreutils)  # token hashes
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool check metrics (/metrics)
command -v chromium >/dev/null 2>&1 || need+=(chromium)      # the status page in a real browser
command -v node >/dev/null 2>&1 || need+=(nodejs npm)        # drives it (puppeteer-core)
# The RTSP camera stand-in: GStreamer's RTSP server through the system python's gi.
if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" >/dev/null 2>&1 \
   || ! gst-inspect-1.0 x264enc >/dev/null 2>&1 || ! gst-inspect-1.0 avenc_aac >/dev/null 2>&1 \
   || ! gst-inspect-1.0 x265enc >/dev/null 2>&1 || ! gst-inspect-1.0 rtph264pay >/dev/null 2>&1; then
  need+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
         gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp
         gstreamer1.0-tools)
fi

if [ ${#need[@]} -eq 0 ]; then
  echo "test peers: apt packages present ($(ffmpeg -version | head -n1))"
else
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "install-test-deps: need root (or sudo) to apt-get install: ${need[*]}" >&2
      exit 1
    fi
  fi
  echo "test peers: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A broken index for another architecture (armhf, added by the cross build) is no reason
  # to stop: the lists that did update are enough for these packages.
  $sudo apt-get update -qq || echo "install-test-deps: apt-get update reported errors (above); trying the install anyway" >&2
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  ffmpeg -version | head -n1
fi

# --- npm: puppeteer-core for the browser test (no browser download: Debian's chromium) ---
browser_dir="$(cd "$(dirname "$0")/../tests/browser" && pwd)"
if [ ! -d "$browser_dir/node_modules/puppeteer-core" ]; then
  echo "test peers: npm ci in tests/browser"
  (cd "$browser_dir" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

# --- PyPI: schemathesis for the OpenAPI test, in its own venv (Debian's python3 refuses
# pip installs into the system; the venv is cached under ~/.cache across clones) ---------
SCHEMATHESIS_VERSION=4.32.5 # tests/openapi.rs looks for this version's venv
st_venv="${XDG_CACHE_HOME:-$HOME/.cache}/edgerec/schemathesis-$SCHEMATHESIS_VERSION"
if [ -z "${EDGEREC_SCHEMATHESIS:-}" ] && [ ! -x "$st_venv/bin/st" ]; then
  echo "test peers: schemathesis $SCHEMATHESIS_VERSION into $st_venv"
  if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  rm -rf "$st_venv"
  /usr/bin/python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- cargo: S3 stores ----------------------------------------------------------------
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

# Where the tests will look for NAME: the env override, ~/.cargo/bin, then PATH.
locate() { # ENV_VAR NAME
  local override="${!1:-}"
  if [ -n "$override" ]; then echo "$override"
  elif [ -x "$cargo_bin/$2" ]; then echo "$cargo_bin/$2"
  else command -v "$2" || true
  fi
}

# Is BIN version WANT? Its `--version` output, else (for the copy in ~/.cargo/bin)
# cargo's install record.
has_version() { # BIN NAME WANT
  local bin=$1 name=$2 want=$3 out
  [ -n "$bin" ] && [ -x "$bin" ] || return 1
  out=$("$bin" --version 2>/dev/null | head -n1 || true)
  [[ " $out " =~ [^0-9.]v?${want//./\\.}[^0-9.-] ]] && return 0
  [ "$bin" = "$cargo_bin/$name" ] && command -v cargo >/dev/null 2>&1 &&
    cargo install --list 2>/dev/null | grep -qx "$name v$want:"
}

cargo_peer() { # ENV_VAR NAME VERSION [cargo install args...]
  local env=$1 name=$2 version=$3 bin
  shift 3
  bin=$(locate "$env" "$name")
  if has_version "$bin" "$name" "$version"; then
    echo "test peers: $name $version present ($bin)"
    return
  fi
  if [ -n "${!env:-}" ]; then
    echo "install-test-deps: \$$env=${!env} is not $name $version" >&2
    exit 1
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "install-test-deps: need cargo to install $name $version" >&2
    exit 1
  fi
  echo "test peers: cargo install $name@$version ${bin:+(found ${bin}, wrong version)}"
  local t0=$SECONDS
  cargo install "$name@$version" --locked --force "$@"
  echo "test peers: $name $version installed in $((SECONDS - t0)) s"
  has_version "$cargo_bin/$name" "$name" "$version" || {
    echo "install-test-deps: $cargo_bin/$name does not report version $version" >&2
    exit 1
  }
}

cargo_peer EDGEREC_S3S_FS s3s-fs "$S3S_FS_VERSION" --features binary
# The tests need Garage's S3 API with sqlite metadata, and move a few MB: without the
# default metrics, lmdb and k2v features and at opt-level 1 it builds in ~4.5 min on 2 cores
# instead of ~22.
CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo_peer EDGEREC_GARAGE garage "$GARAGE_VERSION" \
  --no-default-features --features bundled-libs,sqlite
