#!/usr/bin/env python3
"""Look-back bench (issue 19): memory per idle-but-live stream, and how soon a clip starts.

N ffmpeg publishers push the 2 Mb/s bench clip (720p25 H.264 + AAC, GOP 2 s; see
bench.py) to an app that no rule records, so the daemon only keeps each stream's
look-back in RAM (`[record] lookback_s`, `lookback_mib`). For the look-back off
(`lookback_s = 0`) and on (the defaults, 30 s / 8 MiB) it prints RSS at 1 and N streams
and RSS per extra idle-but-live stream, once the look-back has filled (35 s). With the
look-back on it then asks for a clip with a 10 s pre-roll on one stream and prints how
long the request took to answer and how far back the clip's first segment starts.

This is a benchmark, not a test: numbers depend on the machine. Usage:
    scripts/bench_lookback.py [--streams 8] [--binary PATH]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, http_json, make_clip, proc_rss, push, stop_all  # noqa: E402

FILL_S = 35


def start_daemon(binary, work, lookback):
    cfg = os.path.join(work, "edgerec.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{work}/data"\n[rtmp]\nlisten = "127.0.0.1:0"\n'
                f'[http]\nlisten = "127.0.0.1:0"\n[record]\n{lookback}\n'
                '[storage]\nhigh_watermark_percent = 100\nlow_watermark_percent = 99\n'
                '[[template]]\nname = "clip"\nhls = { enabled = true }\n'
                '[[rule]]\napp = "idle"\nenabled = false\n')
    daemon = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.PIPE,
                              stderr=open(os.path.join(work, "log"), "w"), text=True)
    line = daemon.stdout.readline()
    return daemon, dict(part.split("=", 1) for part in line.split()[2:])


def post_json(addr, path, body):
    req = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def rss_with(binary, clip, n, lookback, clip_after=False):
    """RSS (bytes) with n idle-but-live streams; with `clip_after`, also (request ms,
    seconds the clip reaches back before its request)."""
    work = tempfile.mkdtemp(prefix="edgerec-lookback-")
    daemon, addrs = start_daemon(binary, work, lookback)
    pushers = push(f"rtmp://{addrs['rtmp']}/idle", clip, n, "cam")
    try:
        time.sleep(FILL_S)
        rss = proc_rss(daemon.pid)
        clip_figures = None
        if clip_after:
            asked = time.time()
            t0 = time.monotonic()
            task = post_json(addrs["http"], "/api/v1/tasks",
                             {"app": "idle", "stream": "cam0", "template": "clip",
                              "start_time": "", "end_time": asked + 4, "pre_roll_s": 10})
            answered_ms = (time.monotonic() - t0) * 1000
            deadline = time.monotonic() + 30
            while True:
                t = http_json(addrs["http"], f"/api/v1/tasks/{task['task_id']}")
                if t["state"] == "finished" and t["recordings"]:
                    rec = http_json(addrs["http"], f"/api/v1/recordings/{t['recordings'][0]}")
                    if rec["state"] == "finished":
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"the clip did not finish: {t}")
                time.sleep(0.2)
            start = rec["start_time"].replace("Z", "+00:00")
            from datetime import datetime
            reach = asked - datetime.fromisoformat(start).timestamp()
            clip_figures = (answered_ms, reach, rec["duration_s"])
    finally:
        stop_all(pushers)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return rss, clip_figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--binary", help="an edgerec binary to measure instead of building this tree")
    args = ap.parse_args()
    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "edgerec")
    clip = os.path.join(tempfile.gettempdir(), "edgerec-bench-2mbps.flv")
    make_clip(clip)
    n = args.streams
    print(f"{n} idle-but-live streams, 2 Mb/s each, measured {FILL_S} s after they start")
    print(f"{'look-back':<22} | {'RSS 1 MB':>8} | {f'RSS {n} MB':>9} | {'per extra stream MB':>19}")
    for name, lookback in [("off (lookback_s = 0)", "lookback_s = 0"), ("on (30 s / 8 MiB)", "")]:
        one, _ = rss_with(binary, clip, 1, lookback)
        many, figures = rss_with(binary, clip, n, lookback, clip_after=bool(not lookback))
        per = (many - one) / (n - 1) / 1e6
        print(f"{name:<22} | {one / 1e6:>8.1f} | {many / 1e6:>9.1f} | {per:>19.2f}")
    if figures:
        answered_ms, reach, duration = figures
        print(f"clip with pre_roll_s = 10 and 4 s after: POST answered in {answered_ms:.0f} ms; "
              f"starts {reach:.1f} s before the request (GOP 2 s); {duration:.1f} s long")


if __name__ == "__main__":
    main()
