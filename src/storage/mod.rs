//! The flash layout and every media file operation: where recordings live, the segment
//! writer and its fsync discipline ([`SegmentWriter`]), startup recovery ([`recovery`])
//! and the offline consistency check ([`fsck`]).
//!
//! Layout: `DATA_DIR/media/<app>/<stream>/<recording-id>/<seq:08>.ts`, with
//! `<seq:08>.ts.part` while a segment is open. All IO here is blocking; async callers run
//! it on a blocking thread (the recorder has its own thread per stream).

pub mod fsck;
pub mod recovery;
pub mod retention;
mod segment_writer;

pub use segment_writer::{SealedSegment, SegmentWriter};

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Suffix of a segment that is still being written.
pub const PART_SUFFIX: &str = ".part";

pub use crate::stream_key::{validate_name, NameError};

/// The media tree of one data dir.
#[derive(Debug, Clone)]
pub struct Storage {
    media_dir: PathBuf,
}

impl Storage {
    pub fn new(media_dir: PathBuf) -> Storage {
        Storage { media_dir }
    }

    pub fn media_dir(&self) -> &Path {
        &self.media_dir
    }

    /// `media/<app>/<stream>/<id>`. The names were validated at publish time.
    pub fn recording_dir(&self, app: &str, stream: &str, id: &str) -> PathBuf {
        self.media_dir.join(app).join(stream).join(id)
    }

    /// Creates a recording's folder and makes every new level durable.
    pub fn create_recording_dir(&self, app: &str, stream: &str, id: &str) -> io::Result<PathBuf> {
        let dir = self.recording_dir(app, stream, id);
        let mut created = Vec::new();
        let mut cur = dir.as_path();
        while !cur.exists() {
            created.push(cur.to_owned());
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        std::fs::create_dir_all(&dir)?;
        // Fsync each parent that gained an entry, deepest first.
        for path in created.iter() {
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(dir)
    }

    /// Removes a recording's folder (phase 2 of a two-phase delete). Missing is fine.
    pub fn remove_recording_dir(&self, app: &str, stream: &str, id: &str) -> io::Result<()> {
        let dir = self.recording_dir(app, stream, id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Free and total bytes of the filesystem holding the media.
    pub fn disk_space(&self) -> io::Result<DiskSpace> {
        let st = nix::sys::statvfs::statvfs(&self.media_dir).map_err(io::Error::from)?;
        let frag = st.fragment_size() as u64;
        Ok(DiskSpace {
            total_bytes: st.blocks() as u64 * frag,
            available_bytes: st.blocks_available() as u64 * frag,
        })
    }

    /// Whether new files can be created in the media folder (for `/healthz`).
    pub fn is_writable(&self) -> bool {
        nix::unistd::access(&self.media_dir, nix::unistd::AccessFlags::W_OK).is_ok()
    }
}

/// Filesystem capacity.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct DiskSpace {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Makes a folder's entries (creations, renames, unlinks) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The sequence number in a segment file name (`00000012.ts` or `00000012.ts.part`).
pub fn parse_segment_file_name(name: &str) -> Option<(u32, bool)> {
    let (stem, part) = match name.strip_suffix(PART_SUFFIX) {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let digits = stem.strip_suffix(".ts")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(|seq| (seq, part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_the_data_dir_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "..\\x",
            "a\0b",
            "tab\there",
            ".hidden",
            &"x".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["live", "cam-01", "Main_Stage.2", "演播室", "a b"] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn segment_file_names_round_trip() {
        assert_eq!(parse_segment_file_name("00000012.ts"), Some((12, false)));
        assert_eq!(
            parse_segment_file_name("00000012.ts.part"),
            Some((12, true))
        );
        assert_eq!(parse_segment_file_name("12.ts"), None);
        assert_eq!(parse_segment_file_name("index.m3u8"), None);
    }
}
