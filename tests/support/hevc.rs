//! HEVC test input for Enhanced RTMP: x265 Annex B output split into access units, and an
//! HEVCDecoderConfigurationRecord built from its parameter sets (ISO/IEC 14496-15 8.3.3).

use edgerec::media::bits::remove_emulation_prevention;
use edgerec::media::nal::split_annex_b;

pub struct AccessUnit {
    pub keyframe: bool,
    /// Length-prefixed (4-byte) NAL units, parameter sets and AUDs left out.
    pub data: Vec<u8>,
}

fn nal_type(nal: &[u8]) -> u8 {
    (nal[0] >> 1) & 0x3f
}

/// Encodes `seconds` of 640x360 25 fps HEVC (1 s GOP, no B-frames) and returns its access
/// units and the hvcC record.
pub fn encode_clip(seconds: u32) -> (Vec<AccessUnit>, Vec<u8>) {
    let args: Vec<String> = [
        "-f".to_owned(),
        "lavfi".to_owned(),
        "-i".to_owned(),
        format!("testsrc2=size=640x360:rate=25:duration={seconds}"),
    ]
    .into_iter()
    .chain(
        [
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "keyint=25:min-keyint=25:bframes=0:log-level=error",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "hevc",
        ]
        .map(str::to_owned),
    )
    .collect();
    let path = super::media::generated(&format!("clip-{seconds}s"), "hevc", &args);
    let data = std::fs::read(&path).unwrap();
    let (mut vps, mut sps, mut pps) = (None, None, None);
    let mut aus: Vec<AccessUnit> = Vec::new();
    for nal in split_annex_b(&data) {
        let t = nal_type(nal);
        match t {
            32 => vps = Some(nal.to_vec()),
            33 => sps = Some(nal.to_vec()),
            34 => pps = Some(nal.to_vec()),
            35 => {}
            0..=31 => {
                let first_slice = nal.get(2).is_some_and(|b| b & 0x80 != 0);
                if first_slice || aus.is_empty() {
                    aus.push(AccessUnit {
                        keyframe: (16..=23).contains(&t),
                        data: Vec::new(),
                    });
                }
                let au = aus.last_mut().unwrap();
                au.data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                au.data.extend_from_slice(nal);
            }
            _ => {
                if let Some(au) = aus.last_mut() {
                    au.data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    au.data.extend_from_slice(nal);
                }
            }
        }
    }
    let (vps, sps, pps) = (vps.unwrap(), sps.unwrap(), pps.unwrap());
    let rbsp = remove_emulation_prevention(&sps);
    let mut rec = vec![1u8];
    // general_profile_space..general_level_idc: 12 bytes after the NAL header and the
    // vps_id/max_sub_layers/temporal_id_nesting byte.
    rec.extend_from_slice(&rbsp[3..15]);
    rec.extend_from_slice(&[0xf0, 0x00, 0xfc, 0xfd, 0xf8, 0xf8, 0x00, 0x00, 0x0f, 3]);
    for (t, nal) in [(32u8, &vps), (33, &sps), (34, &pps)] {
        rec.push(0x80 | t);
        rec.extend_from_slice(&1u16.to_be_bytes());
        rec.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        rec.extend_from_slice(nal);
    }
    (aus, rec)
}

/// Publishes `aus` over Enhanced RTMP (`hvc1` tags, 25 fps) on a fresh connection to
/// `rtmp_addr` as `live/STREAM`, then deletes the stream. Panics unless the publish starts.
pub fn publish(rtmp_addr: &str, stream: &str, aus: &[AccessUnit], hvcc: &[u8]) {
    let mut c = super::rtmp_client::RawClient::connect(rtmp_addr);
    let (id, codes) = c.publish("live", stream, true);
    assert!(
        codes.iter().any(|c| c == "NetStream.Publish.Start"),
        "{codes:?}"
    );
    let mut seq = vec![0x80 | (1 << 4)];
    seq.extend_from_slice(b"hvc1");
    seq.extend_from_slice(hvcc);
    c.session.video(id, 0, &seq);
    for (i, au) in aus.iter().enumerate() {
        let frame_type = if au.keyframe { 1 } else { 2 };
        let mut body = vec![0x80 | (frame_type << 4) | 3];
        body.extend_from_slice(b"hvc1");
        body.extend_from_slice(&au.data);
        c.session.video(id, i as u32 * 40, &body);
        if i % 16 == 0 {
            c.flush().unwrap();
        }
    }
    c.session.delete_stream(id);
    c.flush().unwrap();
}
