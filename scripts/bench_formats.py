#!/usr/bin/env python3
"""Recording-model bench: what a template with all four formats costs while recording,
against HLS only, in the same run.

MP4, FLV and AAC files are derived from the stored TS segments when they are read, so
recording with all four formats must write the same bytes to flash as HLS only (target:
at most 1.01 x, /proc/PID/io write_bytes) and cost the same CPU per stream. Runs N
streams of bench.py's 2 Mb/s clip into a release build, alternating the two templates
`--repeat` times, and prints the medians and the ratios. The cost of packaging itself
(MB/s of TS per core, peak RSS) is measured by `cargo bench --bench package`.

This is a benchmark, not a test. Usage:
    scripts/bench_formats.py [--streams 4] [--window 20] [--repeat 3] [--binary PATH]
"""

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the sibling script: clip, daemon runs, /proc sampling)

TEMPLATES = {
    "hls only": "",
    "hls+mp4+flv+aac": (
        '[[template]]\nname = "all"\nhls = { }\nmp4 = { record_interval_s = 60 }\n'
        'flv = { record_interval_s = 60 }\naac = { record_interval_s = 60 }\n'
        '[[rule]]\napp = "live"\ntemplate = "all"\n'
    ),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--binary")
    args = ap.parse_args()
    binary = args.binary or os.path.join(bench.ROOT, "target", "release", "edgerec")
    if args.binary is None:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=bench.ROOT, check=True)
    clip = os.path.join(bench.ROOT, "target", "bench-clip-2mbps.flv")
    bench.make_clip(clip)
    runs = {name: [] for name in TEMPLATES}
    for i in range(args.repeat):
        for name, extra in TEMPLATES.items():
            r = bench.bench_edgerec(binary, clip, args.streams, args.window, 1000, extra)
            runs[name].append(r)
            print(f"run {i + 1} {name:>16}: CPU {r['cpu_per_stream_pct']:.3f} %/stream, "
                  f"written {r['written_mb']:.1f} MB, written/received {r['write_amp']:.4f}", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs)
                  for k in ("cpu_per_stream_pct", "write_amp", "rss_mb")}
           for name, rs in runs.items()}
    print(f"\nN={args.streams}, window {args.window:.0f} s, medians of {args.repeat} runs")
    print(f"{'template':>16} | {'CPU %/stream':>12} | {'written/received':>16} | {'RSS MB':>7}")
    for name, m in med.items():
        print(f"{name:>16} | {m['cpu_per_stream_pct']:>12.3f} | {m['write_amp']:>16.4f} | {m['rss_mb']:>7.1f}")
    base, four = med["hls only"], med["hls+mp4+flv+aac"]
    ratio = four["write_amp"] / base["write_amp"]
    cpu = four["cpu_per_stream_pct"] / base["cpu_per_stream_pct"]
    print(f"\nbytes written, four formats / HLS only: {ratio:.4f} "
          f"({'MET' if ratio <= 1.01 else 'NOT MET'}: target <= 1.01)")
    print(f"CPU per stream, four formats / HLS only: {cpu:.3f} "
          f"(recording cost is one TS capture either way; noise on a shared VM is a few %)")


if __name__ == "__main__":
    main()
