#!/usr/bin/env bash
# Installs the real peers the integration tests drive, only where missing:
# ffmpeg/ffprobe (publish RTMP, decode recordings). Debian/Ubuntu, as root or via sudo.
set -euo pipefail

need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v mount >/dev/null 2>&1 || need+=(mount)

if [ ${#need[@]} -eq 0 ]; then
  echo "test peers: all present ($(ffmpeg -version | head -n1))"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-test-deps: need root (or sudo) to apt-get install: ${need[*]}" >&2
    exit 1
  fi
fi
echo "test peers: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
ffmpeg -version | head -n1
