//! The part of an ANNOUNCE's SDP (RFC 8866) a recorder needs: per media section its kind,
//! payload type, encoding name, clock rate, channels, `a=fmtp` parameters and `a=control`
//! URL (RFC 7826 appendix D.1.1, RFC 2326 appendix C.1.1).
//!
//! Owns: that minimal parse, hand-written (a dozen line kinds; `sdp-types` would add a
//! dependency for the same work and still leave rtpmap/fmtp to us). Never decides what is
//! recordable: that is [`super::rtp::RtpTrack::for_media`]. Bad input is an [`SdpError`]
//! naming the line, never a panic.

use thiserror::Error;

/// Most media sections accepted in one SDP.
pub const MAX_MEDIA: usize = 8;
/// Most lines accepted in one SDP.
const MAX_LINES: usize = 1024;

/// A malformed SDP; the ANNOUNCE is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    #[error("sdp is not UTF-8")]
    NotUtf8,
    #[error("sdp line {line}: {detail}")]
    BadLine { line: usize, detail: String },
    #[error("sdp has no media section")]
    NoMedia,
    #[error("sdp has more than {MAX_MEDIA} media sections")]
    TooManyMedia,
    #[error("sdp has more than {MAX_LINES} lines")]
    TooManyLines,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    /// `video`, `audio`, ... as written.
    pub kind: String,
    /// The first payload type of the `m=` line (the one a publisher sends).
    pub payload_type: u8,
    /// Encoding name from `a=rtpmap`, lower-cased (`h264`, `h265`, `mpeg4-generic`,
    /// `pcma`, ...), or the static payload type's name.
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
    /// `a=fmtp` parameters for the payload type, keys lower-cased, in order.
    pub fmtp: Vec<(String, String)>,
    /// `a=control`, if any.
    pub control: Option<String>,
}

impl MediaDesc {
    /// The `a=fmtp` parameter `key` (case-insensitive).
    pub fn fmtp(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.fmtp
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The parsed session description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sdp {
    pub media: Vec<MediaDesc>,
}

/// Static payload types of RFC 3551 section 6 that a camera may use without `a=rtpmap`.
fn static_payload(pt: u8) -> Option<(&'static str, u32, Option<u16>)> {
    match pt {
        0 => Some(("pcmu", 8000, Some(1))),
        8 => Some(("pcma", 8000, Some(1))),
        9 => Some(("g722", 8000, Some(1))),
        10 => Some(("l16", 44100, Some(2))),
        11 => Some(("l16", 44100, Some(1))),
        14 => Some(("mpa", 90000, None)),
        26 => Some(("jpeg", 90000, None)),
        32 => Some(("mpv", 90000, None)),
        33 => Some(("mp2t", 90000, None)),
        _ => None,
    }
}

/// Parses an SDP body.
pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    let mut sdp = Sdp::default();
    for (i, raw) in text.lines().enumerate() {
        if i >= MAX_LINES {
            return Err(SdpError::TooManyLines);
        }
        let line = raw.trim_end_matches('\r');
        let n = i + 1;
        let bad = |detail: &str| SdpError::BadLine {
            line: n,
            detail: detail.to_owned(),
        };
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(bad("not `x=value`"));
        };
        if kind.len() != 1 {
            return Err(bad("type is not one letter"));
        }
        match kind {
            "m" => {
                if sdp.media.len() == MAX_MEDIA {
                    return Err(SdpError::TooManyMedia);
                }
                let mut fields = value.split_ascii_whitespace();
                let (Some(media), Some(_port), Some(_proto), Some(fmt)) =
                    (fields.next(), fields.next(), fields.next(), fields.next())
                else {
                    return Err(bad("m= needs media, port, proto and a format"));
                };
                let payload_type: u8 = fmt
                    .parse()
                    .ok()
                    .filter(|pt| *pt < 128)
                    .ok_or_else(|| bad("payload type is not 0-127"))?;
                let (encoding, clock_rate, channels) = static_payload(payload_type)
                    .map_or((String::new(), 0, None), |(e, c, ch)| (e.to_owned(), c, ch));
                sdp.media.push(MediaDesc {
                    kind: media.to_ascii_lowercase(),
                    payload_type,
                    encoding,
                    clock_rate,
                    channels,
                    fmtp: Vec::new(),
                    control: None,
                });
            }
            "a" => {
                let Some(media) = sdp.media.last_mut() else {
                    continue; // session-level attributes: nothing we need
                };
                let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                match name {
                    "rtpmap" => {
                        let (pt, map) = arg.split_once(' ').ok_or_else(|| bad("rtpmap"))?;
                        if pt.trim().parse::<u8>().ok() != Some(media.payload_type) {
                            continue;
                        }
                        let mut parts = map.trim().split('/');
                        let encoding = parts.next().unwrap_or("").to_ascii_lowercase();
                        let clock_rate = parts
                            .next()
                            .and_then(|c| c.parse::<u32>().ok())
                            .filter(|c| *c > 0)
                            .ok_or_else(|| bad("rtpmap clock rate"))?;
                        let channels = match parts.next() {
                            None => None,
                            Some(c) => Some(c.parse().map_err(|_| bad("rtpmap channels"))?),
                        };
                        media.encoding = encoding;
                        media.clock_rate = clock_rate;
                        media.channels = channels;
                    }
                    "fmtp" => {
                        let (pt, params) = arg.split_once(' ').unwrap_or((arg, ""));
                        if pt.trim().parse::<u8>().ok() != Some(media.payload_type) {
                            continue;
                        }
                        media.fmtp = params
                            .split(';')
                            .filter_map(|p| {
                                let p = p.trim();
                                if p.is_empty() {
                                    return None;
                                }
                                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                                Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            })
                            .collect();
                    }
                    "control" => media.control = Some(arg.trim().to_owned()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if sdp.media.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(sdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ffmpeg 5.1 announces for `-c copy -f rtsp` of an H.264 + AAC FLV.
    pub(crate) const FFMPEG_SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\n\
        c=IN IP4 127.0.0.1\r\nt=0 0\r\na=tool:libavformat 59.27.100\r\n\
        m=video 0 RTP/AVP 96\r\nb=AS:1000\r\na=rtpmap:96 H264/90000\r\n\
        a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAMg8WLZY=,aOvjyyLA; profile-level-id=64001E\r\n\
        a=control:streamid=0\r\n\
        m=audio 0 RTP/AVP 97\r\nb=AS:128\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n\
        a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=1188\r\n\
        a=control:streamid=1\r\n";

    #[test]
    fn parses_what_ffmpeg_announces() {
        let sdp = parse(FFMPEG_SDP.as_bytes()).unwrap();
        assert_eq!(sdp.media.len(), 2);
        let v = &sdp.media[0];
        assert_eq!((v.kind.as_str(), v.payload_type), ("video", 96));
        assert_eq!((v.encoding.as_str(), v.clock_rate), ("h264", 90000));
        assert_eq!(v.fmtp("packetization-mode"), Some("1"));
        assert!(v
            .fmtp("sprop-parameter-sets")
            .unwrap()
            .ends_with(",aOvjyyLA"));
        assert_eq!(v.control.as_deref(), Some("streamid=0"));
        let a = &sdp.media[1];
        assert_eq!(
            (a.encoding.as_str(), a.clock_rate),
            ("mpeg4-generic", 48000)
        );
        assert_eq!(a.channels, Some(1));
        assert_eq!(a.fmtp("Config"), Some("1188"));
        assert_eq!(a.fmtp("sizelength"), Some("13"));
    }

    #[test]
    fn static_pcma_without_rtpmap() {
        let sdp = parse(b"v=0\r\nm=audio 0 RTP/AVP 8\r\na=control:track2\r\n").unwrap();
        let a = &sdp.media[0];
        assert_eq!((a.encoding.as_str(), a.clock_rate), ("pcma", 8000));
        assert_eq!(a.control.as_deref(), Some("track2"));
    }

    #[test]
    fn malformed_sdp_is_an_error_not_a_panic() {
        assert_eq!(parse(b"v=0\r\n"), Err(SdpError::NoMedia));
        assert!(matches!(
            parse(b"v=0\r\nm=video\r\n"),
            Err(SdpError::BadLine { line: 2, .. })
        ));
        assert!(parse(b"m=video 0 RTP/AVP 300\r\n").is_err());
        assert!(parse(b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264\r\n").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
        assert!(parse(b"garbage").is_err());
        let many: String = (0..9).map(|_| "m=audio 0 RTP/AVP 0\r\n").collect();
        assert_eq!(parse(many.as_bytes()), Err(SdpError::TooManyMedia));
        for len in 0..FFMPEG_SDP.len() {
            let _ = parse(&FFMPEG_SDP.as_bytes()[..len]);
        }
    }
}
