//! `[rtsp]`: the RTSP publish (ANNOUNCE/RECORD) listener. Parsing, defaults and
//! validation only; the listener is `ingest::rtsp`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// `[rtsp]`: the RTSP publish listener. Off unless `listen` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    /// Listen address, e.g. `"0.0.0.0:8554"`. Default `""`: off.
    pub listen: String,
    /// Most simultaneous RTSP connections; more are closed at accept. Default 64 (1-4096).
    pub max_connections: usize,
    /// Most simultaneous connections from one address (IPv6: one /64). Default 16 (1-4096).
    pub max_connections_per_ip: usize,
    /// A publisher that has not sent RECORD within this many seconds of connecting is
    /// disconnected. Default 10 (1-300).
    pub handshake_timeout_s: u64,
    /// A recording publisher that sends no RTP for this many seconds is disconnected (the
    /// recording becomes resumable). Default 30 (1-3600).
    pub idle_timeout_s: u64,
    /// Largest interleaved frame or UDP packet accepted, in KiB. Default 64 (1-64; an
    /// interleaved frame cannot be larger).
    pub max_packet_kb: u32,
    /// UDP ports for RTP/RTCP pairs (even RTP port, RTCP the next), `"LOW-HIGH"`.
    /// Default `"30000-30100"`.
    pub udp_port_range: String,
}

impl Default for RtspConfig {
    fn default() -> Self {
        RtspConfig {
            listen: String::new(),
            max_connections: 64,
            max_connections_per_ip: 16,
            handshake_timeout_s: 10,
            idle_timeout_s: 30,
            max_packet_kb: 64,
            udp_port_range: "30000-30100".into(),
        }
    }
}

impl RtspConfig {
    /// The listen address; `None` when RTSP is off (or the address does not parse, which
    /// [`validate`] reports).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return None;
        }
        listen.parse().ok()
    }

    /// The UDP port range (inclusive), when it parses and holds at least one pair.
    pub fn udp_ports(&self) -> Option<(u16, u16)> {
        let (lo, hi) = self.udp_port_range.split_once('-')?;
        let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        (lo >= 1024 && hi > lo).then_some((lo, hi))
    }
}

/// Range and format problems of `[rtsp]`.
pub(super) fn validate(r: &RtspConfig, problems: &mut Vec<ConfigProblem>) {
    let mut range = |key: &str, value: u64, lo: u64, hi: u64| {
        if value < lo || value > hi {
            problems.push(ConfigProblem {
                key: format!("rtsp.{key}"),
                message: format!("{value} is out of range; allowed {lo}-{hi}"),
            });
        }
    };
    range("max_connections", r.max_connections as u64, 1, 4096);
    range(
        "max_connections_per_ip",
        r.max_connections_per_ip as u64,
        1,
        4096,
    );
    range("handshake_timeout_s", r.handshake_timeout_s, 1, 300);
    range("idle_timeout_s", r.idle_timeout_s, 1, 3600);
    range("max_packet_kb", u64::from(r.max_packet_kb), 1, 64);
    if !r.listen.trim().is_empty() && r.listen_addr().is_none() {
        problems.push(ConfigProblem {
            key: "rtsp.listen".into(),
            message: format!(
                "{:?} is not an address; use e.g. \"0.0.0.0:8554\", or \"\" for off",
                r.listen
            ),
        });
    }
    if r.udp_ports().is_none() {
        problems.push(ConfigProblem {
            key: "rtsp.udp_port_range".into(),
            message: format!(
                "{:?} is not \"LOW-HIGH\" with 1024 <= LOW < HIGH <= 65535",
                r.udp_port_range
            ),
        });
    }
}

/// The start-up warning for an RTSP listener reachable beyond this box without publish
/// authentication.
pub(super) fn warning(r: &RtspConfig, auth_off: bool) -> Option<ConfigProblem> {
    let addr = r.listen_addr()?;
    (auth_off && !addr.ip().is_loopback()).then(|| ConfigProblem {
        key: "publish_auth".into(),
        message: format!(
            "RTSP listens on {addr} with publish authentication off: anyone who reaches it \
             can publish to any stream name (see [publish_auth])"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn off_by_default_and_parsed_when_set() {
        let c = Config::default();
        assert!(c.rtsp.listen_addr().is_none());
        assert_eq!(c.rtsp.udp_ports(), Some((30000, 30100)));
        let c = Config::parse("[rtsp]\nlisten = \"127.0.0.1:8554\"\nidle_timeout_s = 5\n").unwrap();
        assert_eq!(
            c.rtsp.listen_addr(),
            Some("127.0.0.1:8554".parse().unwrap())
        );
        assert_eq!((c.rtsp.idle_timeout_s, c.rtsp.max_packet_kb), (5, 64));
        assert!(c.validate().is_empty());
        assert!(Config::parse("[rtsp]\nlisten_on = \"x\"\n").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = Config::parse(
            "[rtsp]\nlisten = \"nope\"\nmax_packet_kb = 65\nudp_port_range = \"5000-4000\"\n",
        )
        .unwrap();
        let mut keys: Vec<_> = c.validate().into_iter().map(|p| p.key).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["rtsp.listen", "rtsp.max_packet_kb", "rtsp.udp_port_range"]
        );
    }

    #[test]
    fn open_rtsp_beyond_loopback_warns() {
        let c = Config::parse(
            "[rtmp]\nlisten = \"127.0.0.1:1935\"\n[rtsp]\nlisten = \"0.0.0.0:8554\"\n",
        )
        .unwrap();
        assert!(c
            .warnings()
            .iter()
            .any(|w| w.message.contains("RTSP listens")));
        let c = Config::parse("[rtsp]\nlisten = \"127.0.0.1:8554\"\n").unwrap();
        assert!(!c.warnings().iter().any(|w| w.message.contains("RTSP")));
    }
}
