#!/usr/bin/env python3
"""The full-system scenario on an emulated arm64 board (see system-test.sh, which builds the
image and calls this).

Boots the image with qemu-system-aarch64 (-M virt, NVMe root, RTMP and HTTP forwarded to
127.0.0.1), then from the host:
  1. waits for the recorder (the .deb's unit, enabled at install) to answer /healthz;
  2. publishes a 10 s stream with ffmpeg, checks the recording through the API and decodes
     its HLS playlist over the forwarded port;
  3. publishes a second stream and, mid-recording, hard powers off the VM (SIGKILL qemu);
  4. boots again and checks: both recordings listed and not live, the cut one decodes
     without errors up to the cut minus at most flush_interval + a sync + one GOP (from the
     media the recorder had acknowledged, `media_received_ms` in /api/v1/streams), the first
     one unchanged, and `edgerec fsck` in the guest (through the QEMU guest agent) finds the
     index consistent with the files.
Prints how long each step took. Exit status 0 only if every check passed.
"""

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "edgerec.toml"), "rb") as f:
    BOARD = tomllib.load(f)  # the config the image carries
FPS = 25
GOP_S = 1.0  # -g 25 at 25 fps
FLUSH_S = BOARD["record"]["flush_interval_ms"] / 1000
# The sync in flight when the power goes: a flush interval is counted from a sync's start,
# so media handed over while that sync runs is at risk too. Under emulation on a busy
# 2-core host the run cut 1.54 s with FLUSH_S + GOP_S = 1.5 s: a sync of tens of ms.
SYNC_S = 0.25
SEGMENT_S = BOARD["record"]["segment_duration_s"]
CLEAN_S = 10  # the first publish
# Media acknowledged before the power cut: eight segments and half of the ninth.
CUT_AFTER_S = 8 * SEGMENT_S + SEGMENT_S / 2
BOOT_TIMEOUT_S = 240

T0 = time.monotonic()


def say(msg):
    print(f"[scenario {time.monotonic() - T0:6.1f} s] {msg}", flush=True)


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)
    say(f"ok: {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Board:
    """One qemu-system-aarch64 process; killing it is a power cut."""

    def __init__(self, args, work):
        self.args, self.work = args, work
        self.rtmp_port, self.http_port = free_port(), free_port()
        self.proc = None
        self.boots = 0

    def power_on(self):
        self.boots += 1
        self.console = os.path.join(self.work, f"console-{self.boots}.log")
        self.qga = os.path.join(self.work, "qga.sock")
        if os.path.exists(self.qga):
            os.unlink(self.qga)
        fwd = f"hostfwd=tcp:127.0.0.1:{self.rtmp_port}-:1935,hostfwd=tcp:127.0.0.1:{self.http_port}-:8080"
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
            "-display", "none", "-no-reboot",
            "-kernel", self.args.kernel,
            "-append", "root=/dev/nvme0n1 ro console=ttyAMA0 panic=-1",
            # cache=unsafe: a guest flush is not passed on as an fdatasync of the image on
            # the host. The power cut is a SIGKILL of qemu, which keeps every write the
            # guest issued (it is in the host's page cache either way) and loses the guest's
            # own page cache, so what survives is the same as with the default writeback;
            # but a host busy writing back a cross build can make each host fdatasync take
            # seconds, which stalled the recorder behind the guest's fsyncs and made the
            # loss check measure the CI machine instead of edgerec.
            "-drive", f"file={self.args.image},if=none,format=raw,id=d0,cache=unsafe",
            "-device", "nvme,drive=d0,serial=ci0",
            # restrict=on: the guest reaches nothing; only the forwarded ports come in.
            "-netdev", f"user,id=n0,restrict=on,{fwd}",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-chardev", f"socket,path={self.qga},server=on,wait=off,id=qga0",
            "-device", "virtio-serial",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.console}",
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        started = time.monotonic()
        while time.monotonic() - started < BOOT_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise Failed(f"qemu exited with {self.proc.returncode} during boot (see {self.console})")
            try:
                if http_get(self, "/healthz", timeout=3)[0] == 200:
                    took = time.monotonic() - started
                    say(f"boot {self.boots}: recorder healthy {took:.1f} s after power-on")
                    return took
            except OSError:
                pass
            time.sleep(1)
        raise Failed(f"boot {self.boots}: no healthy recorder after {BOOT_TIMEOUT_S} s (see {self.console})")

    def pull_the_plug(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def shutdown(self):
        if self.proc and self.proc.poll() is None:
            try:
                # Not guest-shutdown: its `shutdown +0` needs logind, which needs D-Bus.
                self.guest_agent("guest-exec", {"path": "/bin/systemctl", "arg": ["poweroff"]})
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired, Failed):
                self.pull_the_plug()

    def guest_agent(self, command, arguments):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(self.qga)
            f = s.makefile("rwb")
            sync_id = int(time.time()) & 0xFFFFFF
            # guest-sync flushes anything a previous client left in the channel.
            f.write(json.dumps({"execute": "guest-sync", "arguments": {"id": sync_id}}).encode() + b"\n")
            f.flush()
            while json.loads(f.readline()).get("return") != sync_id:
                pass
            f.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
            f.flush()
            reply = json.loads(f.readline())
            if "error" in reply:
                raise Failed(f"guest agent {command}: {reply['error']}")
            return reply["return"]

    def run_in_guest(self, shell, timeout=180):
        """Runs a shell command as root in the guest; returns (exit code, output)."""
        pid = self.guest_agent(
            "guest-exec", {"path": "/bin/sh", "arg": ["-c", shell], "capture-output": True}
        )["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.guest_agent("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")) + base64.b64decode(st.get("err-data", ""))
                return st.get("exitcode", -1), out.decode(errors="replace")
            time.sleep(1)
        raise Failed(f"guest command timed out: {shell}")


def http_get(board, path, timeout=10):
    url = f"http://127.0.0.1:{board.http_port}{path}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def api(board, path):
    status, body = http_get(board, path)
    if status != 200:
        raise Failed(f"GET {path}: HTTP {status}")
    return json.loads(body)


def publish(board, stream, seconds):
    """ffmpeg publishing test media (320x240 H.264, 1 s GOP, AAC) in real time."""
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-g", str(int(FPS * GOP_S)), "-keyint_min", str(int(FPS * GOP_S)), "-sc_threshold", "0",
        "-b:v", "300k", "-c:a", "aac", "-b:a", "64k",
        "-f", "flv", f"rtmp://127.0.0.1:{board.rtmp_port}/live/{stream}",
    ]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def decode(board, recording):
    """Fetches a recording's HLS playlist and segments from the board and decodes them on
    the host: (video frames, seconds, decoder errors). The segments are fetched and joined
    (MPEG-TS concatenates) rather than played from the URL: an open (EVENT) playlist makes
    ffmpeg start at the live edge and wait for more."""
    base = f"/hls/recordings/{recording}/"
    text = http_get(board, base + "index.m3u8")[1].decode()
    uris = [line for line in text.splitlines() if line and not line.startswith("#")]
    if not uris:
        raise Failed(f"the playlist of {recording} lists no segments:\n{text}")
    joined = os.path.join(board.work, f"{recording}.ts")
    with open(joined, "wb") as out:
        for uri in uris:
            out.write(http_get(board, uri if uri.startswith("/") else base + uri)[1])
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
         "-show_entries", "stream=nb_read_frames", "-of", "json", joined],
        capture_output=True, text=True, timeout=300,
    )
    if out.returncode != 0:
        raise Failed(f"ffprobe {joined}: {out.stderr.strip()}")
    frames = int(json.loads(out.stdout)["streams"][0]["nb_read_frames"])
    errors = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", joined, "-f", "null", "-"],
        capture_output=True, text=True, timeout=300,
    ).stderr.strip()
    say(f"decoded {recording}: {len(uris)} segments, {frames} video frames")
    return frames, frames / FPS, errors


def recording_of(board, stream):
    rows = [r for r in api(board, "/api/v1/recordings") if r["stream"] == stream]
    if len(rows) != 1:
        raise Failed(f"expected one recording of live/{stream}, found {len(rows)}")
    return rows[0]


def wait_closed(board, stream, timeout):
    """Waits for the recording of live/STREAM to leave the `recording` state."""
    deadline = time.monotonic() + timeout
    while (rec := recording_of(board, stream))["state"] == "recording":
        if time.monotonic() > deadline:
            raise Failed(f"live/{stream} still recording {timeout} s after the publisher left")
        time.sleep(0.5)
    return rec


def wait_live(board, stream, min_media_ms, timeout):
    """Polls /api/v1/streams until the stream has at least min_media_ms acknowledged;
    returns the newest view."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in api(board, "/api/v1/streams"):
            if s["stream"] == stream and s["media_received_ms"] >= min_media_ms:
                return s
        time.sleep(0.25)
    raise Failed(f"live/{stream} did not reach {min_media_ms} ms of media within {timeout} s")


def scenario(board):
    timings = {}
    timings["first boot"] = board.power_on()
    check(api(board, "/api/v1/recordings") == [], "a fresh board has no recordings")
    _, mode = board.run_in_guest("stat -c '%a %U %G' /etc/edgerec/edgerec.toml")
    check(mode.strip() == "640 root edgerec",
          f"the config, which may hold secrets, is 640 root:edgerec ({mode.strip()})")
    _, limits = board.run_in_guest("systemctl show edgerec -p MemoryMax -p TasksMax -p LimitNOFILE")
    check(set(limits.split()) == {"MemoryMax=335544320", "TasksMax=128", "LimitNOFILE=4096"},
          f"the board's limits.conf is in force ({' '.join(limits.split())})")

    # 1. A clean publish.
    t = time.monotonic()
    ff = publish(board, "clean", CLEAN_S)
    _, err = ff.communicate(timeout=CLEAN_S + 60)
    check(ff.returncode == 0, f"ffmpeg published {CLEAN_S} s to the board ({err.decode().strip()})")
    clean = wait_closed(board, "clean", 30)
    say(f"recording {clean['id']}: {clean['state']}, {clean['duration_s']} s, {clean['segments']} segments")
    check(clean["state"] in ("resumable", "finished"), "the clean recording is closed")
    check(abs(clean["duration_s"] - CLEAN_S) <= GOP_S, f"its duration is {CLEAN_S} s within a GOP")
    frames, secs, errors = decode(board, clean["id"])
    check(not errors, f"its HLS segments decode without errors ({errors[:300]})")
    check(frames >= (CLEAN_S - GOP_S) * FPS, f"{frames} video frames decoded ({secs:.2f} s)")
    timings["clean publish + checks"] = time.monotonic() - t

    # 2. Power cut mid-recording.
    t = time.monotonic()
    ff = publish(board, "cut", 600)
    live = wait_live(board, "cut", int(CUT_AFTER_S * 1000), CUT_AFTER_S + 90)
    acked_s = live["media_received_ms"] / 1000
    board.pull_the_plug()
    say(f"power cut with {acked_s:.2f} s of live/cut acknowledged ({live['segments_written']} segments written)")
    ff.kill()
    ff.wait()
    timings["publish until power cut"] = time.monotonic() - t

    # 3. Reboot and verify.
    timings["boot after power cut"] = board.power_on()
    t = time.monotonic()
    cut = recording_of(board, "cut")
    say(f"recording {cut['id']}: {cut['state']}, {cut['duration_s']} s, {cut['segments']} segments")
    check(cut["state"] in ("resumable", "finished"), "the cut recording was recovered, not left live")
    # A segment the recorder had committed before the cut must still have its index row:
    # recovery re-adopting it from its file would mean a commit was not durable (sled's
    # own flush is not; see src/index/mod.rs).
    kept = [s for s in api(board, f"/api/v1/recordings/{cut['id']}")["segment_list"] if not s["recovered"]]
    check(len(kept) >= live["segments_written"],
          f"{len(kept)} segment rows kept of the {live['segments_written']} committed before the cut")
    floor = acked_s - FLUSH_S - SYNC_S - GOP_S
    check(cut["duration_s"] >= floor,
          f"indexed duration {cut['duration_s']} s >= {floor:.2f} s (acknowledged - flush - sync - GOP)")
    frames, secs, errors = decode(board, cut["id"])
    check(not errors, f"the cut recording decodes without errors ({errors[:300]})")
    check(secs >= floor, f"{frames} frames decoded = {secs:.2f} s >= {floor:.2f} s")
    check(secs <= acked_s + GOP_S, f"and no more than was acknowledged ({acked_s:.2f} s)")
    again = recording_of(board, "clean")
    check((again["segments"], again["bytes"]) == (clean["segments"], clean["bytes"]),
          "the first recording is unchanged")
    code, out = board.run_in_guest(
        "systemctl stop edgerec && runuser -u edgerec -- edgerec fsck -c /etc/edgerec/edgerec.toml; "
        "echo exit=$?; systemctl start edgerec")
    say("guest: edgerec fsck\n  " + out.strip().replace("\n", "\n  "))
    check("exit=0" in out and "0 finding(s)" in out, "fsck in the guest: index consistent with the files")
    timings["checks after reboot"] = time.monotonic() - t
    return timings


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--kernel", required=True)
    p.add_argument("--work", required=True, help="console logs and the guest agent socket")
    args = p.parse_args()
    board = Board(args, args.work)
    try:
        timings = scenario(board)
    except Exception as e:  # noqa: BLE001 -- any failure: report it with the console logs
        say(f"FAILED: {e if isinstance(e, Failed) else repr(e)}")
        for log in sorted(f for f in os.listdir(args.work) if f.startswith("console-")):
            path = os.path.join(args.work, log)
            print(f"--- last lines of {path}")
            with open(path, errors="replace") as f:
                print("".join(f.readlines()[-40:]))
        return 1
    finally:
        board.shutdown()
    print("scenario timings:")
    for name, secs in timings.items():
        print(f"  {name:<26} {secs:6.1f} s")
    print(f"  {'total':<26} {time.monotonic() - T0:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
