#!/usr/bin/env python3
"""RTSP pull bench: CPU per pulled camera against ffmpeg, and memory per extra camera.

One GStreamer RTSP camera (tests/support/rtsp_camera.py, profile bench-2mbps: 1280x720
H.264 at 2 Mb/s + AAC, one shared encoder for every client) is pulled over TCP by

1. one edgerec source and, in the same window, `ffmpeg -rtsp_transport tcp -i URL -c copy
   -f hls` recording the same camera: CPU % of one core for each, and their ratio
   (issue 15's target: edgerec <= 0.3x ffmpeg);
2. N edgerec sources at once (default 32, one stream name each): RSS per extra camera
   relative to one (target <= 0.5 MB) and frames dropped (target 0).

This is a benchmark, not a test: numbers depend on the machine. Usage:
    scripts/bench_cameras.py [--cameras 32] [--window 20] [--binary PATH]
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, http_json, proc_cpu_seconds, proc_rss, stop_all  # noqa: E402

CAMERA = os.path.join(ROOT, "tests", "support", "rtsp_camera.py")


def start_camera():
    cam = subprocess.Popen(["/usr/bin/python3", CAMERA, "bench-2mbps"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    line = cam.stdout.readline().split()
    if not line or line[0] != "ready":
        raise SystemExit("the GStreamer RTSP camera did not start (scripts/install-test-deps.sh)")
    return cam, f"rtsp://127.0.0.1:{line[1]}/stream1"


def start_edgerec(binary, work, url, n):
    cfg = os.path.join(work, "edgerec.toml")
    sources = "".join(
        f'[[source]]\napp = "cam"\nstream = "c{i}"\nurl = "{url}"\n' for i in range(n))
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{work}/data"\n[rtmp]\nlisten = "127.0.0.1:0"\n'
                f'[http]\nlisten = "127.0.0.1:0"\n[record]\nflow_continue_duration_s = 0\n'
                f'[storage]\nhigh_watermark_percent = 100\nlow_watermark_percent = 99\n'
                f'{sources}')
    daemon = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.PIPE,
                              stderr=open(os.path.join(work, "log"), "w"), text=True)
    line = daemon.stdout.readline()
    addrs = dict(part.split("=", 1) for part in line.split()[2:])
    deadline = time.monotonic() + 60
    while True:
        recording = [s for s in http_json(addrs["http"], "/api/v1/sources")
                     if s["state"] == "recording"]
        if len(recording) == n:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(recording)} of {n} cameras came up")
        time.sleep(0.2)
    return daemon, addrs["http"]


def stop(daemon):
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)


def cpu_against_ffmpeg(binary, url, window):
    work = tempfile.mkdtemp(prefix="edgerec-bench-cam-")
    os.makedirs(os.path.join(work, "ffmpeg"))
    daemon, _ = start_edgerec(binary, work, url, 1)
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-rtsp_transport", "tcp",
         "-i", url, "-c", "copy", "-f", "hls", "-hls_time", "4", "-hls_list_size", "0",
         os.path.join(work, "ffmpeg", "index.m3u8")])
    try:
        time.sleep(5)  # warm-up: both connected, first segments written
        e0, f0 = proc_cpu_seconds(daemon.pid), proc_cpu_seconds(ffmpeg.pid)
        time.sleep(window)
        e1, f1 = proc_cpu_seconds(daemon.pid), proc_cpu_seconds(ffmpeg.pid)
    finally:
        stop_all([ffmpeg])
        stop(daemon)
        shutil.rmtree(work, ignore_errors=True)
    return 100 * (e1 - e0) / window, 100 * (f1 - f0) / window


def memory_for(binary, url, n, window):
    work = tempfile.mkdtemp(prefix="edgerec-bench-cams-")
    daemon, http = start_edgerec(binary, work, url, n)
    try:
        time.sleep(window)
        rss = proc_rss(daemon.pid)
        cpu0 = proc_cpu_seconds(daemon.pid)
        time.sleep(5)
        cpu = 100 * (proc_cpu_seconds(daemon.pid) - cpu0) / 5
        streams = http_json(http, "/api/v1/streams")
        dropped = sum(s["frames_dropped"] for s in streams)
        media_s = min(s["media_received_ms"] for s in streams) / 1000 if streams else 0
    finally:
        stop(daemon)
        shutil.rmtree(work, ignore_errors=True)
    return rss, dropped, len(streams), media_s, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=32)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--binary", help="an edgerec binary instead of building this tree")
    args = ap.parse_args()
    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "edgerec")
    camera, url = start_camera()
    try:
        e_cpu, f_cpu = cpu_against_ffmpeg(binary, url, args.window)
        rss1, _, _, _, _ = memory_for(binary, url, 1, args.window)
        rssn, dropped, live, media_s, cpu_n = memory_for(binary, url, args.cameras, args.window)
    finally:
        stop_all([camera])
    per_extra = (rssn - rss1) / max(args.cameras - 1, 1) / 1e6
    ratio = e_cpu / f_cpu if f_cpu > 0 else float("inf")
    print(f"one camera, 2 Mb/s H.264 + AAC over TCP, {args.window:.0f} s window:")
    print(f"  edgerec CPU {e_cpu:5.1f} % of a core   ffmpeg -c copy -f hls {f_cpu:5.1f} %   "
          f"ratio {ratio:.2f} (target <= 0.30: {'ok' if ratio <= 0.3 else 'MISSED'})")
    print(f"{args.cameras} cameras at once: {live} live, {dropped} frames dropped "
          f"(target 0: {'ok' if dropped == 0 and live == args.cameras else 'MISSED'}), "
          f"each >= {media_s:.1f} s of media, CPU {cpu_n:.1f} % ({cpu_n / args.cameras:.2f} % per camera)")
    print(f"  RSS 1 camera {rss1 / 1e6:.1f} MB, {args.cameras} cameras {rssn / 1e6:.1f} MB: "
          f"{per_extra:.2f} MB per extra camera (target <= 0.5: {'ok' if per_extra <= 0.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
