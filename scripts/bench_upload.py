#!/usr/bin/env python3
"""Upload figures for issue 3, printed as a table:

- upload throughput of edgerec vs a plain `curl --upload-file` (SigV4) to the same
  s3s-fs store under the same `tc tbf` cap on the loopback of a network namespace this
  script creates (never the host's lo);
- time from a recording finishing to its completion callback arriving (idle link).

Needs root (netns, tc), ffmpeg, curl >= 7.75 and s3s-fs (scripts/install-test-deps.sh).
Usage: sudo scripts/bench_upload.py [--rate-mbit 80] [--mb 128]
"""
import argparse
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

NS = "edgerec-bench"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S3_PORT, RTMP_PORT, HTTP_PORT, CB_PORT = 19100, 19351, 19181, 19190
AK, SK = "benchkey", "benchsecret"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def outer(argv):
    """Creates the namespace and re-runs this script inside it."""
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        return subprocess.run(["ip", "netns", "exec", NS, sys.executable, __file__, "--inner", *argv]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", NS])


def cap(rate_mbit):
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], stderr=subprocess.DEVNULL)
    if rate_mbit:
        sh("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", f"{rate_mbit}mbit",
           "burst", "256kb", "latency", "500ms")


def api(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}{path}", timeout=10) as r:
        return json.load(r)


def wait(what, limit, cond):
    deadline = time.time() + limit
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Receiver(http.server.BaseHTTPRequestHandler):
    arrivals = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.arrivals.append(time.time())
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def start_daemon(work, binary):
    cfg = os.path.join(work, "edgerec.toml")
    with open(cfg, "w") as f:
        f.write(f"""data_dir = "{work}/data"
[rtmp]
listen = "127.0.0.1:{RTMP_PORT}"
[http]
listen = "127.0.0.1:{HTTP_PORT}"
[record]
flow_continue_duration_s = 0
[upload]
enabled = true
concurrency = 2
[upload.s3]
endpoint = "http://127.0.0.1:{S3_PORT}"
bucket = "recordings"
access_key = "{AK}"
secret_key = "{SK}"
[callback]
url = "http://127.0.0.1:{CB_PORT}/cb"
key = "k"
allow_insecure = true
""")
    p = subprocess.Popen([binary, "run", "-c", cfg], stdout=subprocess.PIPE,
                         stderr=open(os.path.join(work, "daemon.log"), "a"), text=True)
    wait("daemon", 30, lambda: "listening" in (p.stdout.readline() or ""))
    return p


def inner(args):
    work = tempfile.mkdtemp(prefix="edgerec-bench-upload-")
    procs = []  # whatever is still running when the bench ends or fails is stopped
    try:
        _run(args, work, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def _run(args, work, procs):
    binary = os.path.join(ROOT, "target", "release", "edgerec")
    s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    store_dir = os.path.join(work, "store")
    os.makedirs(os.path.join(store_dir, "recordings"))
    seconds = max(2, int(args.mb / 9))
    clip = os.path.join(work, "noise.flv")
    sh("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
       f"nullsrc=s=640x360:r=25:d={seconds},geq=lum='random(1)*255':cb=128:cr=128",
       "-f", "lavfi", "-i", f"sine=duration={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
       "-qp", "0", "-g", "25", "-c:a", "aac", "-f", "flv", clip)

    # 1. Record the clip with the store down and no cap, then stop the daemon.
    cap(0)
    d = start_daemon(work, binary)
    procs.append(d)
    sh("ffmpeg", "-v", "error", "-i", clip, "-c", "copy", "-f", "flv",
       f"rtmp://127.0.0.1:{RTMP_PORT}/live/bench")
    rec = wait("recording finished", 30, lambda: [r for r in api("/api/v1/recordings") if r["state"] == "finished"])[0]
    total = rec["bytes"]
    d.send_signal(signal.SIGTERM)
    d.wait()

    # 2. Under the cap: curl uploads a file of the same size, then edgerec its backlog.
    store = subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(S3_PORT), "--access-key", AK,
                              "--secret-key", SK, store_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(store)
    time.sleep(0.5)
    cap(args.rate_mbit)
    blob = os.path.join(work, "blob")
    with open(blob, "wb") as f:
        f.write(os.urandom(total))
    t0 = time.time()
    sh("curl", "-sS", "-o", "/dev/null", "--fail", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{AK}:{SK}",
       "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "--upload-file", blob, f"http://127.0.0.1:{S3_PORT}/recordings/curl-baseline")
    curl_s = time.time() - t0

    server = http.server.ThreadingHTTPServer(("127.0.0.1", CB_PORT), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t0 = time.time()
    d = start_daemon(work, binary)
    procs.append(d)
    wait("upload", 3600, lambda: api(f"/api/v1/recordings/{rec['id']}")["upload_state"] == "uploaded")
    edgerec_s = time.time() - t0

    # 3. No cap: time from a short recording finishing to its callback.
    cap(0)
    Receiver.arrivals.clear()
    short = os.path.join(work, "short.flv")
    sh("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=4", "-f", "lavfi",
       "-i", "sine=duration=4", "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-c:a", "aac", "-f", "flv", short)
    sh("ffmpeg", "-v", "error", "-i", short, "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{RTMP_PORT}/live/short")
    finished = time.time()
    wait("callback", 60, lambda: Receiver.arrivals)
    callback_s = Receiver.arrivals[0] - finished

    d.send_signal(signal.SIGTERM)
    d.wait()
    store.terminate()
    server.shutdown()
    mb = total / 1e6
    print(f"cap {args.rate_mbit} Mbit/s (tc tbf on the namespace's lo), {mb:.1f} MB in {rec['segments']} segments")
    print(f"{'client':<28} {'seconds':>8} {'MB/s':>8} {'of curl':>8}")
    print(f"{'curl --upload-file':<28} {curl_s:8.2f} {mb / curl_s:8.2f} {'100%':>8}")
    print(f"{'edgerec (start to uploaded)':<28} {edgerec_s:8.2f} {mb / edgerec_s:8.2f} {curl_s / edgerec_s * 100:7.1f}%")
    print(f"recording finished -> callback delivered: {callback_s:.2f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate-mbit", type=int, default=80)
    ap.add_argument("--mb", type=int, default=128)
    ap.add_argument("--inner", action="store_true")
    args = ap.parse_args()
    if args.inner:
        inner(args)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespace and tc)")
    sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    rest = [a for a in sys.argv[1:] if a != "--inner"]
    return outer(rest)


if __name__ == "__main__":
    sys.exit(main())
