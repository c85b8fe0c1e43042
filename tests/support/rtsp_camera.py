#!/usr/bin/python3
"""An IP camera stand-in for the tests: GStreamer's RTSP server serving live test video
(and audio) at rtsp://127.0.0.1:PORT/stream1.

Usage: rtsp_camera.py PROFILE[^LIE][@SKEW] [PORT]   (PORT 0 or absent: any free port)
Prints "ready PORT" on stdout once it listens. @SKEW (seconds, may be negative) sets the
camera's clock that far from the real one: its RTCP sender reports say so. ^LIE (seconds)
makes the PLAY response's RTP-Info claim the audio track's rtptime that much later than
it is (a camera quirk: its audio then seems to start LIE seconds early), while its sender
reports stay true.

Profiles: h264-aac, h264-bframes (lookahead and B-frames; a lip-sync probe from two
sources), sync (a lip-sync probe: see TICKS), h265-aac, h264-pcma, resizes (320x240, then 640x360
after 4 s), mjpeg (nothing edgerec can record), stalls (sends 3 s of video, then keeps
the session but sends no more RTP: a valve before the payloader closes), bench-2mbps
(scripts/bench_cameras.py).
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

VIDEO = ("videotestsrc is-live=true pattern=ball ! "
         "video/x-raw,width=320,height=240,framerate=25/1,format=I420 ! ")
H264 = "x264enc tune=zerolatency key-int-max=25 bitrate=500 ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 "
# The payloader's caps would negotiate Constrained Baseline (no B-frames): ask for Main.
H264_B = "x264enc bframes=2 b-adapt=false key-int-max=25 bitrate=500 ! video/x-h264,profile=main ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 "
H265 = "x265enc tune=zerolatency key-int-max=25 bitrate=500 ! h265parse config-interval=-1 ! rtph265pay name=pay0 pt=96 "
AUDIO = "audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=48000,channels=2 ! audioconvert ! "
AAC = "avenc_aac bitrate=64000 ! aacparse ! rtpmp4gpay name=pay1 pt=97 "
PCMA = "audioresample ! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 pt=8 "

# Lip-sync probes: the audio ticks once a second (on the pipeline's running time) and the
# picture is a waveform of the same ticks, so each tick shows as a bright frame; the A/V
# offset of a recording can be measured in its decoded content, not just its timestamps.
TICKS_SRC = "audiotestsrc is-live=true wave=ticks volume=0.8 ! audio/x-raw,rate=48000,channels=1 ! "
SCOPE = ("audioconvert ! wavescope shader=none style=lines ! videorate ! "
         "video/x-raw,width=320,height=240,framerate=25/1 ! videoconvert ! video/x-raw,format=I420 ! ")
# One source for both tracks (the audio queue holds what x264's lookahead keeps back).
TICKS = (TICKS_SRC + "tee name=t t. ! queue max-size-time=5000000000 max-size-buffers=0 "
         "max-size-bytes=0 ! audioconvert ! " + AAC + "t. ! queue ! " + SCOPE)
# Two sources (as a camera's sensor and microphone are), ticking on one clock.
SPLIT_VIDEO = TICKS_SRC + SCOPE
SPLIT_AUDIO = TICKS_SRC + "audioconvert ! " + AAC

PROFILES = {
    "h264-aac": VIDEO + H264 + AUDIO + AAC,
    "h264-bframes": SPLIT_VIDEO + H264_B + SPLIT_AUDIO,
    "h265-aac": VIDEO + H265 + AUDIO + AAC,
    "h264-pcma": VIDEO + H264 + AUDIO + PCMA,
    # The bench's camera: 720p H.264 at 2 Mb/s + AAC, encoded once for every client.
    "bench-2mbps": "videotestsrc is-live=true pattern=snow ! "
                   "video/x-raw,width=1280,height=720,framerate=25/1,format=I420 ! "
                   "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=50 bitrate=2000 ! "
                   "h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 " + AUDIO + AAC,
    # Starts at 320x240 and switches to 640x360 after 4 s (a camera whose resolution is
    # changed from its web page): new parameter sets in-band, mid-session.
    "resizes": "videotestsrc is-live=true pattern=ball ! "
               "video/x-raw,width=640,height=480,framerate=25/1,format=I420 ! videoscale ! "
               "capsfilter name=size caps=video/x-raw,width=320,height=240 ! " + H264 + AUDIO + AAC,
    "sync": TICKS + H264,
    "mjpeg": VIDEO + "jpegenc ! rtpjpegpay name=pay0 pt=26 ",
    "stalls": VIDEO + "x264enc tune=zerolatency key-int-max=25 ! h264parse config-interval=-1 ! "
              "valve name=gate drop=false ! rtph264pay name=pay0 pt=96 ",
}


def set_rtpbin(factory, **props):
    """Sets properties on the rtpbin of each media the factory makes."""
    def on_element(_bin, element):
        factory_name = element.get_factory().get_name() if element.get_factory() else ""
        if factory_name == "rtpbin":
            for name, value in props.items():
                element.set_property(name.replace("_", "-"), value)

    def configured(_factory, media):
        media.get_element().get_parent().connect("element-added", on_element)

    factory.connect("media-configure", configured)


def skewed_clock(factory, skew_s):
    """Runs the media on a clock `skew_s` off the real one, and makes rtpbin date its
    sender reports by that clock (as NTP: seconds since 1900) instead of the host's."""
    clock = Gst.SystemClock(clock_type=Gst.ClockType.REALTIME)
    internal = clock.get_internal_time()
    ntp_epoch_s = 2208988800
    clock.set_calibration(internal, internal + (ntp_epoch_s + skew_s) * Gst.SECOND, 1, 1)
    factory.set_clock(clock)
    set_rtpbin(factory, ntp_time_source="clock-time")


def lie_in_rtp_info(server, lie_s, audio_rate=48000):
    """Rewrites every RTP-Info header the server sends: the audio track's (stream=1)
    rtptime is put `lie_s` seconds of its clock later."""
    field = GstRtsp.RTSPHeaderField.RTP_INFO

    def on_send(_client, _session, msg):
        res, value = msg.get_header(field, 0)
        if res != GstRtsp.RTSPResult.OK:
            return
        entries = []
        for entry in value.split(","):
            parts = entry.strip().split(";")
            if parts[0].endswith("stream=1"):
                for i, p in enumerate(parts):
                    if p.startswith("rtptime="):
                        t = (int(p[8:]) + int(lie_s * audio_rate)) % (1 << 32)
                        parts[i] = "rtptime=%d" % t
            entries.append(";".join(parts))
        msg.remove_header(field, -1)
        msg.add_header(field, ", ".join(entries))

    server.connect("client-connected", lambda _s, client: client.connect("send-message", on_send))


def main():
    profile, _, skew = sys.argv[1].partition("@")
    profile, _, lie = profile.partition("^")
    port = sys.argv[2] if len(sys.argv) > 2 else "0"
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( " + PROFILES[profile] + ")")
    factory.set_shared(True)
    # Sender reports dated by capture time, as RFC 3550 means them. rtpbin's default is
    # send time, which under load put the reports of a track behind x264's lookahead
    # over a second off its RTP-Info (and its content).
    set_rtpbin(factory, rtcp_sync_send_time=False)
    if skew:
        skewed_clock(factory, int(skew))
    if lie:
        lie_in_rtp_info(server, float(lie))
    if profile == "resizes":
        def resize(size):
            size.set_property("caps", Gst.Caps.from_string("video/x-raw,width=640,height=360"))
            return False

        def configured_resize(_factory, media):
            GLib.timeout_add_seconds(4, resize, media.get_element().get_by_name("size"))

        factory.connect("media-configure", configured_resize)
    if profile == "stalls":
        def close_gate(gate):
            gate.set_property("drop", True)
            return False

        def configured(_factory, media):
            gate = media.get_element().get_by_name("gate")
            GLib.timeout_add_seconds(3, close_gate, gate)

        factory.connect("media-configure", configured)
    server.get_mount_points().add_factory("/stream1", factory)
    if server.attach(None) == 0:
        print("cannot listen on port " + port, file=sys.stderr)
        sys.exit(1)
    print("ready %d" % server.get_bound_port(), flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
