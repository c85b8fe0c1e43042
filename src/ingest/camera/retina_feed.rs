//! The RTSP client side of a camera source, on `retina` 0.4 (it already handles the
//! camera quirks: stale sessions, bad RTP-Info, mis-set marker bits, Annex B in
//! `sprop-parameter-sets`, RTP over TCP or UDP).
//!
//! Owns: turning a retina session into [`Pulled`] items. Picks the first H.264/H.265
//! video track and the first AAC audio track; audio MPEG-TS cannot carry (G.711, Opus,
//! ...) is left out with a reason, never transcoded. Timestamps: retina's extended
//! timestamps relative to the PLAY response's `rtptime` (both tracks on one timeline when
//! the camera sends RTP-Info, else each from its first packet), rescaled to 90 kHz, the
//! audio then moved by the first sender reports when they disagree ([`super::track_sync`]);
//! video decode times are synthesised with `media::reorder` from the SPS's reorder depth.
//! Parameters come from the SDP when the camera puts them there, else from the first
//! in-band parameter sets; a change mid-stream yields new `Params` before its frame.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use retina::client::{
    Credentials, Demuxed, InitialTimestampPolicy, PlayOptions, Session, SessionGroup,
    SessionOptions, SetupOptions, TcpTransportOptions, Transport, UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};

use super::track_sync::TrackSync;
use super::{CameraConnector, CameraFeed, FeedInfo, Pulled};
use crate::config::{RtspTransport, SourceSpec};
use crate::media::aac::AacConfig;
use crate::media::avc::{self, AvcConfig};
use crate::media::hevc::{self, HevcConfig};
use crate::media::reorder::DtsSynth;
use crate::media::{rescale, CodecParams, Frame, TrackKind, TICKS_PER_SECOND};

/// Connects with retina. One session group for every camera, so a stale session left by
/// a dropped TCP connection is torn down before the camera is asked again.
#[derive(Default)]
pub struct RetinaConnector {
    group: Arc<SessionGroup>,
}

impl CameraConnector for RetinaConnector {
    fn connect(&self, spec: SourceSpec) -> BoxFuture<'static, Result<Box<dyn CameraFeed>, String>> {
        let group = self.group.clone();
        Box::pin(async move {
            let feed = RetinaFeed::open(&spec, group).await?;
            Ok(Box::new(feed) as Box<dyn CameraFeed>)
        })
    }
}

struct VideoTrack {
    stream: usize,
    codec: &'static str,
    params: Option<CodecParams>,
    synth: DtsSynth,
}

struct RetinaFeed {
    demuxed: Demuxed,
    info: FeedInfo,
    video: Option<VideoTrack>,
    /// The audio stream index and whether its parameters have been sent.
    audio: Option<(usize, bool)>,
    queue: VecDeque<Pulled>,
    /// Moves the audio onto the video's timeline by their sender reports, if the source
    /// asks for it.
    sync: Option<TrackSync>,
    /// The TLS tunnel of an `rtsps://` camera, closed with the feed.
    _tunnel: Option<super::tls_tunnel::Tunnel>,
}

impl RetinaFeed {
    async fn open(spec: &SourceSpec, group: Arc<SessionGroup>) -> Result<RetinaFeed, String> {
        let (url, creds) = spec.split_credentials()?;
        let (url, tunnel) = if url.scheme() == "rtsps" {
            let tunnel = super::tls_tunnel::open(spec, &url).await?;
            (tunnel.local_url.clone(), Some(tunnel))
        } else {
            (url, None)
        };
        let options = SessionOptions::default()
            .creds(creds.map(|(username, password)| Credentials { username, password }))
            .user_agent(format!("edgerec/{}", env!("CARGO_PKG_VERSION")))
            .session_group(group);
        let mut session = Session::describe(url, options)
            .await
            .map_err(|e| format!("DESCRIBE failed: {e}"))?;
        let streams = session.streams();
        let video = streams
            .iter()
            .position(|s| s.media() == "video" && matches!(s.encoding_name(), "h264" | "h265"));
        let first_audio = streams.iter().position(|s| s.media() == "audio");
        let mut info = FeedInfo::default();
        let audio = match first_audio {
            Some(i) if streams[i].encoding_name() == "mpeg4-generic" => Some(i),
            // AAC, but retina (0.4) does not depacketize RFC 6416 LATM.
            Some(i) if streams[i].encoding_name() == "mp4a-latm" => {
                info.audio_dropped =
                    Some("mp4a-latm: AAC in LATM is not read from cameras".to_owned());
                None
            }
            Some(i) => {
                info.audio_dropped = Some(format!(
                    "{}: not storable in MPEG-TS",
                    streams[i].encoding_name()
                ));
                None
            }
            None => None,
        };
        if video.is_none() && audio.is_none() {
            let offered: Vec<String> = streams
                .iter()
                .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
                .collect();
            return Err(format!(
                "nothing recordable in the camera's SDP (offers {}); edgerec records \
                 H.264/H.265 video and AAC audio",
                if offered.is_empty() {
                    "no media".to_owned()
                } else {
                    offered.join(", ")
                }
            ));
        }
        let transport = match spec.transport {
            RtspTransport::Tcp => Transport::Tcp(TcpTransportOptions::default()),
            RtspTransport::Udp => Transport::Udp(UdpTransportOptions::default()),
        };
        for i in video.iter().chain(audio.iter()) {
            session
                .setup(
                    *i,
                    SetupOptions::default()
                        .transport(transport.clone())
                        .frame_format(FrameFormat::MP4),
                )
                .await
                .map_err(|e| format!("SETUP failed: {e}"))?;
        }
        let playing = session
            .play(PlayOptions::default().initial_timestamp(InitialTimestampPolicy::Permissive))
            .await
            .map_err(|e| format!("PLAY failed: {e}"))?;
        let mut video = video.map(|i| VideoTrack {
            stream: i,
            codec: if playing.streams()[i].encoding_name() == "h265" {
                "h265"
            } else {
                "h264"
            },
            params: None,
            synth: DtsSynth::new(0),
        });
        info.video = video.as_ref().map(|v| v.codec.to_owned());
        info.audio = audio.map(|_| "aac".to_owned());
        let mut queue = VecDeque::new();
        if let Some(v) = video.as_mut() {
            // Parameters from the SDP (`sprop-*`), when the camera gives them.
            if let Some(ParametersRef::Video(p)) = playing.streams()[v.stream].parameters() {
                v.take_params(p.extra_data(), &mut queue)?;
            }
        }
        // AAC's config is always in the SDP: announce it before any frame, or the
        // recorder would restart its first segment when the audio track appears.
        let mut audio_sent = false;
        if let Some(i) = audio {
            if let Some(ParametersRef::Audio(p)) = playing.streams()[i].parameters() {
                let config = AacConfig::parse(p.extra_data())
                    .map_err(|e| format!("camera's AAC config: {e}"))?;
                queue.push_back(Pulled::Params(CodecParams::Aac(config)));
                audio_sent = true;
            }
        }
        let demuxed = playing
            .demuxed()
            .map_err(|e| format!("cannot demux: {e}"))?;
        Ok(RetinaFeed {
            demuxed,
            info,
            video,
            audio: audio.map(|i| (i, audio_sent)),
            queue,
            sync: spec.align_by_sender_reports.then(TrackSync::default),
            _tunnel: tunnel,
        })
    }

    /// Reads until at least one item is queued; false at the end of the session.
    async fn fill(&mut self) -> Result<bool, String> {
        while self.queue.is_empty() {
            let item = match self.demuxed.next().await {
                None => {
                    if let Some(v) = self.video.as_mut() {
                        self.queue
                            .extend(v.synth.flush().into_iter().map(Pulled::Frame));
                    }
                    return Ok(!self.queue.is_empty());
                }
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(item)) => item,
            };
            match item {
                CodecItem::VideoFrame(f) => {
                    let Some(v) = self.video.as_mut().filter(|v| v.stream == f.stream_id()) else {
                        continue;
                    };
                    if f.has_new_parameters() || v.params.is_none() {
                        if let Some(ParametersRef::Video(p)) =
                            self.demuxed.streams()[v.stream].parameters()
                        {
                            v.take_params(p.extra_data(), &mut self.queue)?;
                        }
                    }
                    if v.params.is_none() {
                        continue; // Nothing decodable before the first parameter sets.
                    }
                    let ts = f.timestamp();
                    let pts = rescale(
                        ts.elapsed(),
                        i64::from(ts.clock_rate().get()),
                        TICKS_PER_SECOND,
                    );
                    v.synth.push(Frame {
                        kind: TrackKind::Video,
                        dts: pts,
                        pts,
                        keyframe: f.is_random_access_point()
                            || (v.codec == "h265" && has_irap(f.data())),
                        data: Bytes::from(f.into_data()),
                    });
                    while let Some(frame) = v.synth.pop() {
                        self.queue.push_back(Pulled::Frame(frame));
                    }
                }
                CodecItem::AudioFrame(f) => {
                    let Some((stream, sent)) = self.audio.as_mut() else {
                        continue;
                    };
                    if *stream != f.stream_id() {
                        continue;
                    }
                    if !*sent {
                        let Some(ParametersRef::Audio(p)) =
                            self.demuxed.streams()[*stream].parameters()
                        else {
                            continue;
                        };
                        let config = AacConfig::parse(p.extra_data())
                            .map_err(|e| format!("camera's AAC config: {e}"))?;
                        self.queue
                            .push_back(Pulled::Params(CodecParams::Aac(config)));
                        *sent = true;
                    }
                    let ts = f.timestamp();
                    let pts = rescale(
                        ts.elapsed(),
                        i64::from(ts.clock_rate().get()),
                        TICKS_PER_SECOND,
                    );
                    let Some(pts) = self.sync.as_mut().map_or(Some(pts), |s| s.audio(pts)) else {
                        continue; // Time already recorded, before the audio was moved back.
                    };
                    self.queue.push_back(Pulled::Frame(Frame {
                        kind: TrackKind::Audio,
                        dts: pts,
                        pts,
                        keyframe: true,
                        data: Bytes::copy_from_slice(f.data()),
                    }));
                }
                CodecItem::Rtcp(rtcp) => {
                    let video = self.video.as_ref().map(|v| v.stream);
                    let audio = self.audio.as_ref().map(|(a, _)| *a);
                    let kind = if Some(rtcp.stream_id()) == video {
                        TrackKind::Video
                    } else if Some(rtcp.stream_id()) == audio {
                        TrackKind::Audio
                    } else {
                        continue;
                    };
                    let Some(ts) = rtcp.rtp_timestamp() else {
                        continue;
                    };
                    let Some(Ok(Some(sr))) = rtcp.pkts().next().map(|p| p.as_sender_report())
                    else {
                        continue;
                    };
                    let at = rescale(
                        ts.elapsed(),
                        i64::from(ts.clock_rate().get()),
                        TICKS_PER_SECOND,
                    );
                    let ntp = sr.ntp_timestamp().0;
                    let sync = self.sync.as_mut();
                    if let Some(alignment) = sync.and_then(|s| s.report(kind, at, ntp)) {
                        self.queue.push_back(Pulled::Aligned(alignment));
                    }
                    // The camera's clock, from the recorded video track's reports (or the
                    // audio's, without video): both follow one capture clock.
                    if kind == TrackKind::Video || video.is_none() {
                        self.queue.push_back(Pulled::WallClock {
                            at,
                            unix_ms: crate::clock::ntp_to_unix_ms(ntp),
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(true)
    }
}

impl VideoTrack {
    /// New decoder configuration (`extra_data` is an avcC or hvcC record): frames held
    /// under the old one go first, then the new `Params`; the reorder depth is re-read.
    fn take_params(
        &mut self,
        extra_data: &[u8],
        queue: &mut VecDeque<Pulled>,
    ) -> Result<(), String> {
        let (params, depth) = if self.codec == "h265" {
            let c = HevcConfig::parse(extra_data)
                .map_err(|e| format!("camera's H.265 parameters: {e}"))?;
            let depth = c.sps.first().and_then(|s| hevc::reorder_depth(s).ok());
            (CodecParams::H265(c), depth)
        } else {
            let c = AvcConfig::parse(extra_data)
                .map_err(|e| format!("camera's H.264 parameters: {e}"))?;
            let depth = c.sps.first().and_then(|s| avc::reorder_depth(s).ok());
            (CodecParams::H264(c), depth)
        };
        if self.params.as_ref() == Some(&params) {
            return Ok(());
        }
        queue.extend(self.synth.flush().into_iter().map(Pulled::Frame));
        // An SPS we cannot read: assume the worst common case (x264's b-pyramid).
        self.synth.set_depth(depth.unwrap_or(2));
        self.params = Some(params.clone());
        queue.push_back(Pulled::Params(params));
        Ok(())
    }
}

/// Whether an H.265 access unit (4-byte lengths) holds an IRAP picture. retina 0.4
/// counts only IDR pictures as random access points; encoders with open GOPs (x265's
/// default) send CRA pictures instead, which start a segment as well.
fn has_irap(au: &[u8]) -> bool {
    crate::media::nal::iter_length_prefixed(au, 4)
        .map_while(Result::ok)
        .any(|nal| {
            nal.first()
                .is_some_and(|&b| hevc::is_irap(hevc::nal_type(b)))
        })
}

impl CameraFeed for RetinaFeed {
    fn info(&self) -> &FeedInfo {
        &self.info
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Pulled>, String>> {
        Box::pin(async move {
            if !self.fill().await? {
                return Ok(None);
            }
            Ok(self.queue.pop_front())
        })
    }
}
