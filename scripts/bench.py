#!/usr/bin/env python3
"""Recording bench: CPU, memory and write amplification per stream.

Pushes N copies of a pre-encoded 2 Mb/s clip (`ffmpeg -re -stream_loop -1 -c copy`) into
a release build of edgerec and, when nginx with libnginx-mod-rtmp is installed, into
nginx-rtmp with `hls on` side by side, and prints for each N:

- CPU % of one core per stream over a fixed window (per-thread schedstat nanoseconds;
  utime+stime ticks from /proc/PID/stat if a thread exited during the window),
- RSS total, and RSS per extra stream relative to N=1,
- bytes written to disk (/proc/PID/io write_bytes) divided by media bytes received (RTMP
  bytes the server read from its publishers' sockets, measured the same way for both
  servers: tcp_info bytes_received minus the receive queue, from `ss`), and its two
  factors: bytes the process wrote
  (wchar: MPEG-TS segments, playlists, index) per byte received, and bytes the storage
  layer wrote (whole pages, again each time a page is re-dirtied) per byte written;

then checks each figure against issue 2's target (CPU per stream at most half of
nginx-rtmp's in the same run, RSS per extra stream at most 0.5 MB, written/received at
most 1.02).

This is a benchmark, not a test: numbers depend on the machine. Usage:
    scripts/bench.py [--streams 1,8,32] [--window 20] [--repeat 3] [--no-nginx]
                     [--by-thread] [--binary PATH] [--loadgen] [--scrape]

With --loadgen the streams come from one process (benches/publish_load) instead of an
ffmpeg each, so hundreds fit on a small box (`--loadgen --no-nginx --streams 1,300`), and
each row also reports frames dropped and the worst segment lateness.

With --scrape each N runs without and with a poller that fetches /metrics and every API
path the status page polls, once a second, and prints CPU per stream for both (issue 18:
an operator watching must not cost the recordings): `--scrape --no-nginx --streams 8`.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def make_clip(path):
    if os.path.exists(path):
        return
    tmp = path + ".tmp.flv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration=60",
         "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=60",
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
         "-b:v", "2M", "-maxrate", "2M", "-bufsize", "4M", "-g", "50", "-keyint_min", "50",
         "-sc_threshold", "0", "-c:a", "aac", "-b:a", "128k", "-f", "flv", tmp],
        check=True)
    os.rename(tmp, path)


def proc_cpu_seconds(pid):
    """On-CPU time of the process: utime + stime in clock ticks (10 ms here) from
    /proc/PID/stat, which also counts threads that have exited."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def task_cpu_ns(pid):
    """Per live thread (on-CPU nanoseconds, context switches, name) from
    /proc/PID/task/TID/{schedstat,comm}: far finer than clock ticks, but blind to
    threads that exit during the window."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                stat = f.read().split()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            out[(pid, tid)] = (int(stat[0]), int(stat[2]), name)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def proc_rss(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def proc_io(pid):
    """(write_bytes, wchar) from /proc/PID/io: bytes sent to the storage layer (whole
    pages, counted each time a page is dirtied) and bytes passed to write(2)."""
    fields = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, value = line.split(":")
            fields[key] = int(value)
    return fields.get("write_bytes", 0), fields.get("wchar", 0)


def tcp_bytes_read(port):
    """Bytes the server has read from its established connections on `port`: each
    socket's tcp_info bytes_received minus what still waits in its receive queue."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    total, queued = 0, 0
    for line in out.splitlines():
        if not line[:1].isspace():
            queued = int(line.split()[0])  # Recv-Q: the State column is omitted
        elif m := re.search(r"\bbytes_received:(\d+)", line):
            total += int(m.group(1)) - queued
    return total


def sample(pids, port):
    io = [proc_io(p) for p in pids]
    tasks = {}
    for p in pids:
        tasks.update(task_cpu_ns(p))
    return {
        "cpu": sum(proc_cpu_seconds(p) for p in pids),
        "tasks": tasks,
        "rss": sum(proc_rss(p) for p in pids),
        "write": sum(write for write, _ in io),
        "wchar": sum(wchar for _, wchar in io),
        "received": tcp_bytes_read(port),
        "t": time.monotonic(),
    }


LOADGEN = None  # benches/publish_load's executable, with --loadgen


def loadgen_binary():
    """Builds benches/publish_load (release) and returns its executable."""
    out = subprocess.run(["cargo", "bench", "--locked", "--bench", "publish_load", "--no-run",
                          "--message-format=json"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "publish_load":
            return msg["executable"]
    raise SystemExit("publish_load was not built")


def push(url, clip, n, stream_prefix, seconds=3600):
    if LOADGEN:
        addr, app = url.removeprefix("rtmp://").split("/", 1)
        return [subprocess.Popen([LOADGEN, addr, app, stream_prefix, str(n), clip, str(int(seconds))],
                                 stdout=subprocess.DEVNULL)]
    return [subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1",
         "-i", clip, "-c", "copy", "-f", "flv", f"{url}/{stream_prefix}{i}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]


def stop_all(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def http_json(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return json.load(r)


def scraper(http, stop):
    """What a Prometheus server and an open status page ask for, every second: /metrics
    and every JSON path the page polls."""
    paths = ["/metrics", "/healthz", "/api/v1/streams", "/api/v1/recordings",
             "/api/v1/storage", "/api/v1/uploads", "/api/v1/callbacks"]
    while not stop.wait(1.0):
        for path in paths:
            with urllib.request.urlopen(f"http://{http}{path}", timeout=5) as r:
                r.read()


def bench_edgerec(binary, clip, n, window, flush_ms, extra="", scrape=False):
    """One run; `extra` is appended to the config (e.g. `[[template]]` sections); `scrape`
    polls /metrics and the status page's API paths every second during the window."""
    work = tempfile.mkdtemp(prefix="edgerec-bench-")
    cfg = os.path.join(work, "edgerec.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "{work}/data"\n[rtmp]\nlisten = "127.0.0.1:0"\nmax_connections = 512\nmax_connections_per_ip = 512\n'
                f'[http]\nlisten = "127.0.0.1:0"\n[record]\nflow_continue_duration_s = 0\n'
                f'flush_interval_ms = {flush_ms}\nwriter_budget_total_kb = 4194304\n'
                # Only a really full disk may refuse the bench's publishes, not a shared
                # disk that happens to be past the default 90 % watermark.
                f'[storage]\nhigh_watermark_percent = 100\nlow_watermark_percent = 99\n'
                f'{extra}\n')
    daemon = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.PIPE,
                              stderr=open(os.path.join(work, "log"), "w"), text=True)
    line = daemon.stdout.readline()
    addrs = dict(part.split("=", 1) for part in line.split()[2:])
    pushers = push(f"rtmp://{addrs['rtmp']}/live", clip, n, "bench")
    try:
        deadline = time.monotonic() + 30 + n * 0.02
        while len(http_json(addrs["http"], "/api/v1/streams")) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(http_json(addrs['http'], '/api/v1/streams'))} of {n} streams came up")
            time.sleep(0.2)
        time.sleep(5)  # warm-up: first segments, allocator steady state
        port = int(addrs["rtmp"].rsplit(":", 1)[1])
        stop = threading.Event()
        poller = threading.Thread(target=scraper, args=(addrs["http"], stop), daemon=True)
        if scrape:
            poller.start()
        s0 = sample([daemon.pid], port)
        time.sleep(window)
        s1 = sample([daemon.pid], port)
        stop.set()
        if scrape:
            poller.join()
        live = http_json(addrs["http"], "/api/v1/streams")
        dropped = sum(s.get("frames_dropped", 0) for s in live)
        lateness = max((segment_lateness_ms(addrs["http"], s["recording_id"]) for s in live),
                       default=0)
    finally:
        stop_all(pushers)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    r = result(s0, s1, n)
    r.update(frames_dropped=dropped, lateness_ms=lateness, streams_live=len(live))
    return r


def segment_lateness_ms(http, recording_id):
    """How much later than its media time a segment of the recording began (arrival
    time), worst segment: a stalled ingest or writer shows here."""
    rec = http_json(http, f"/api/v1/recordings/{recording_id}")
    segs = rec.get("segment_list") or []
    if not segs:
        return 0
    def ms(t):
        return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000
    first, media, worst = ms(segs[0]["start_time"]), 0.0, 0.0
    for s in segs:
        worst = max(worst, ms(s["start_time"]) - first - media)
        media += s["duration_s"] * 1000
    return worst


def bench_nginx(clip, n, window):
    work = tempfile.mkdtemp(prefix="nginx-bench-")
    os.chmod(work, 0o755)  # the www-data worker must reach hls/
    os.makedirs(f"{work}/hls", exist_ok=True)
    os.makedirs(f"{work}/logs", exist_ok=True)
    shutil.chown(f"{work}/hls", "www-data", "www-data")
    port = 19350
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(f"""load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
user www-data;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/error.log;
events {{ worker_connections 1024; }}
rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; hls on; hls_path {work}/hls; hls_fragment 4s; }} }} }}
""")
    subprocess.run(["nginx", "-p", work, "-c", f"{work}/nginx.conf"], check=True)
    time.sleep(0.5)
    with open(f"{work}/nginx.pid") as f:
        master = int(f.read())
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(master)], capture_output=True,
                                                text=True).stdout.split()]
    pushers = push(f"rtmp://127.0.0.1:{port}/live", clip, n, "bench")
    try:
        time.sleep(8)
        s0 = sample(workers, port)
        time.sleep(window)
        s1 = sample(workers, port)
    finally:
        stop_all(pushers)
        subprocess.run(["nginx", "-p", work, "-c", f"{work}/nginx.conf", "-s", "stop"])
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)
    return result(s0, s1, n)


def result(s0, s1, n):
    elapsed = s1["t"] - s0["t"]
    received = s1["received"] - s0["received"]
    by_thread = {}
    for t, (ns, switches, name) in s1["tasks"].items():
        ns0, switches0, _ = s0["tasks"].get(t, (0, 0, name))
        group = by_thread.setdefault(re.sub(r"[-_ ]?\d+$", "", name), [0, 0, 0])
        group[0] += ns - ns0
        group[1] += switches - switches0
        group[2] += 1
    if set(s0["tasks"]) <= set(s1["tasks"]):
        cpu_s = sum(ns for ns, _, _ in by_thread.values()) / 1e9
    else:  # a thread exited during the window: only the tick counts include it
        cpu_s = s1["cpu"] - s0["cpu"]
    cpu_pct = cpu_s / elapsed * 100
    written = s1["write"] - s0["write"]
    handed = s1["wchar"] - s0["wchar"]
    return {
        "n": n,
        "cpu_per_stream_pct": cpu_pct / n,
        "rss_mb": s1["rss"] / 1e6,
        "written_mb": written / 1e6,
        "write_amp": written / received if received else float("nan"),
        # Split of write_amp: what the process wrote (container, playlists, index) per
        # byte received, and what the storage layer wrote per byte the process wrote.
        "app_amp": handed / received if received else float("nan"),
        "page_amp": written / handed if handed else float("nan"),
        "by_thread": {name: (ns / elapsed / 1e6, switches / elapsed, count)
                      for name, (ns, switches, count) in by_thread.items()},
    }


def median_run(runs):
    """The run with the median CPU, carrying every run's CPU figure for the table."""
    ordered = sorted(runs, key=lambda r: r["cpu_per_stream_pct"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["cpu_runs"] = [r["cpu_per_stream_pct"] for r in runs]
    return median


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per server and N; the table shows the median-CPU run and "
                    "lists every run's CPU (this VM's run-to-run spread is about +-20 %%)")
    ap.add_argument("--binary", help="an edgerec binary to measure instead of building this tree "
                    "(to compare two builds)")
    ap.add_argument("--by-thread", action="store_true",
                    help="also print CPU ms/s and context switches/s per thread group")
    ap.add_argument("--loadgen", action="store_true",
                    help="publish from one process (benches/publish_load) instead of an ffmpeg "
                    "per stream: for hundreds of streams; also prints frames dropped and the "
                    "worst segment lateness")
    ap.add_argument("--flush-ms", type=int, default=1000,
                    help="edgerec's flush_interval_ms (nginx never fsyncs; 60000 shows the cost of durability)")
    ap.add_argument("--scrape", action="store_true",
                    help="for each N, runs without and with a scraper polling /metrics and the "
                    "status page's API paths every second, and prints CPU per stream for both")
    args = ap.parse_args()
    counts = [int(x) for x in args.streams.split(",")]

    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "edgerec")
    clip = os.path.join(tempfile.gettempdir(), "edgerec-bench-2mbps.flv")
    make_clip(clip)
    if args.loadgen:
        global LOADGEN
        LOADGEN = loadgen_binary()

    if args.scrape:
        print(f"window {args.window:.0f} s per run, {args.repeat} run(s) each, median CPU; "
              "scraper: /metrics + the page's 6 API paths every second")
        print(f"{'N':>3} | {'CPU %/stream':>12} | {'with scraper':>12} | {'scraper %/core':>14} | {'dropped':>7}")
        for n in counts:
            plain, scraped = [], []
            for _ in range(args.repeat):
                plain.append(bench_edgerec(binary, clip, n, args.window, args.flush_ms))
                scraped.append(bench_edgerec(binary, clip, n, args.window, args.flush_ms, scrape=True))
            a, b = median_run(plain), median_run(scraped)
            extra = (b["cpu_per_stream_pct"] - a["cpu_per_stream_pct"]) * n
            print(f"{n:>3} | {a['cpu_per_stream_pct']:>12.3f} | {b['cpu_per_stream_pct']:>12.3f} | "
                  f"{extra:>14.3f} | {a['frames_dropped'] + b['frames_dropped']:>7}")
        return

    with_nginx = (not args.no_nginx and shutil.which("nginx")
                  and os.path.exists("/usr/lib/nginx/modules/ngx_rtmp_module.so"))
    rows = []
    for n in counts:
        # Alternating the servers spreads slow drifts of the machine over both.
        e_runs, g_runs = [], []
        for _ in range(args.repeat):
            e_runs.append(bench_edgerec(binary, clip, n, args.window, args.flush_ms))
            if with_nginx:
                g_runs.append(bench_nginx(clip, n, args.window))
        rows.append((median_run(e_runs), median_run(g_runs) if with_nginx else None))
        print(f"measured N={n}", file=sys.stderr)

    base_e = rows[0][0]["rss_mb"]
    base_g = rows[0][1]["rss_mb"] if with_nginx else 0
    print(f"window {args.window:.0f} s per run; clip 2 Mb/s H.264 720p25 + AAC 128k; "
          f"{os.cpu_count()} cores; edgerec flush_interval_ms={args.flush_ms}")
    print(f"{'N':>3} | {'server':<10} | {'CPU %/stream':>12} | {'RSS MB':>7} | "
          f"{'RSS/extra MB':>12} | {'written/received':>16} | {'= wchar/received':>16} | {'x written/wchar':>15}")
    for e, g in rows:
        for name, r, base in (("edgerec", e, base_e), ("nginx-rtmp", g, base_g)):
            if r is None:
                continue
            extra = rss_per_extra(r, base)
            print(f"{r['n']:>3} | {name:<10} | {r['cpu_per_stream_pct']:>12.3f} | {r['rss_mb']:>7.1f} | "
                  f"{extra:>12.3f} | {r['write_amp']:>16.4f} | {r['app_amp']:>16.4f} | {r['page_amp']:>15.4f}")
            if args.repeat > 1:
                print("      CPU %/stream per run: " + ", ".join(f"{c:.3f}" for c in r["cpu_runs"]))
            if args.by_thread:
                for name, (ms, sw, count) in sorted(r["by_thread"].items(), key=lambda kv: -kv[1][0]):
                    print(f"      {name:<18} x{count:<3} {ms:8.3f} ms/s {sw:8.1f} switches/s")
    print_targets(rows, base_e)


def rss_per_extra(r, base_rss):
    """RSS per stream beyond the first, against the first row's (N=1) RSS."""
    return (r["rss_mb"] - base_rss) / (r["n"] - 1) if r["n"] > 1 else float("nan")


def print_targets(rows, base_rss):
    """The issue's three targets, each against this run's figures."""
    def verdict(ok):
        return "met" if ok else "NOT MET"

    print("targets (issue 2):")
    if rows[0][1] is not None:
        parts = []
        for e, g in rows:
            ratio = e["cpu_per_stream_pct"] / g["cpu_per_stream_pct"]
            parts.append(f"N={e['n']} {ratio:.1%} {verdict(ratio <= 0.5)}")
        print("  CPU per stream at most half of nginx-rtmp's: " + ", ".join(parts))
    extra = [(e["n"], rss_per_extra(e, base_rss)) for e, _ in rows if e["n"] > 1]
    if extra:
        print("  RSS per extra stream at most 0.5 MB: "
              + ", ".join(f"N={n} {mb:.2f} MB {verdict(mb <= 0.5)}" for n, mb in extra))
    print("  written/received at most 1.02: "
          + ", ".join(f"N={e['n']} {e['write_amp']:.3f} {verdict(e['write_amp'] <= 1.02)}"
                      for e, _ in rows))
    print("load (issue 17): "
          + ", ".join(f"N={e['n']} live {e['streams_live']}, frames dropped {e['frames_dropped']} "
                      f"{verdict(e['frames_dropped'] == 0)}, worst segment lateness "
                      f"{e['lateness_ms']:.0f} ms" for e, _ in rows))


if __name__ == "__main__":
    main()
