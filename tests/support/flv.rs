//! Reads FLV files written by ffmpeg into tags, so crafted RTMP clients can send real
//! media (with whatever faults a test needs).

/// One FLV tag: type 8 audio, 9 video, 18 script data.
#[derive(Debug, Clone)]
pub struct Tag {
    pub kind: u8,
    pub timestamp: u32,
    pub body: Vec<u8>,
}

pub fn read_tags(path: &std::path::Path) -> Vec<Tag> {
    let data = std::fs::read(path).expect("read flv");
    assert_eq!(&data[..3], b"FLV", "not an FLV file");
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut pos = header_len + 4;
    let mut tags = Vec::new();
    while pos + 11 <= data.len() {
        let kind = data[pos] & 0x1f;
        let size = u32::from_be_bytes([0, data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let ts = u32::from_be_bytes([data[pos + 7], data[pos + 4], data[pos + 5], data[pos + 6]]);
        let start = pos + 11;
        if start + size > data.len() {
            break;
        }
        tags.push(Tag {
            kind,
            timestamp: ts,
            body: data[start..start + size].to_vec(),
        });
        pos = start + size + 4;
    }
    tags
}
