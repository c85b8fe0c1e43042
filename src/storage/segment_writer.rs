//! One segment file on flash, written per crash-safety invariant 1: bytes go to
//! `NAME.part`, are made durable (write + fdatasync) at least every flush interval by the
//! caller, and on [`SegmentWriter::seal`] the file is fsynced, renamed to `NAME` and the
//! folder fsynced. Only after `seal` returns may the index name the file.
//!
//! The writer never decides *when* to flush (the recorder does, from media and wall
//! time) and never touches the index.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{sync_dir, PART_SUFFIX};

/// An open `.part` segment.
pub struct SegmentWriter {
    file: File,
    dir: PathBuf,
    name: String,
    /// Bytes produced but not yet written to the file.
    buf: Vec<u8>,
    /// Bytes written to the file.
    written: u64,
    /// Bytes known durable (fdatasync returned after they were written).
    durable: u64,
}

/// A segment file under its final name, durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    pub name: String,
    pub bytes: u64,
}

impl SegmentWriter {
    /// Creates `dir/NAME.part` (replacing a leftover) and makes its folder entry durable.
    pub fn create(dir: &Path, name: &str) -> io::Result<SegmentWriter> {
        let part = dir.join(format!("{name}{PART_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(part)?;
        sync_dir(dir)?;
        Ok(SegmentWriter {
            file,
            dir: dir.to_owned(),
            name: name.to_owned(),
            buf: Vec::with_capacity(512 * 1024),
            written: 0,
            durable: 0,
        })
    }

    /// The buffer muxers append to; its contents reach the file on the next
    /// [`make_durable`](Self::make_durable) or [`seal`](Self::seal).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes in the segment so far (buffered or written).
    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes that would survive a power cut right now.
    pub fn durable_len(&self) -> u64 {
        self.durable
    }

    /// Whether anything is not yet durable.
    pub fn is_dirty(&self) -> bool {
        !self.buf.is_empty() || self.written != self.durable
    }

    /// Writes the buffer and fdatasyncs: everything appended so far survives a crash.
    pub fn make_durable(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        if self.written != self.durable {
            self.file.sync_data()?;
            self.durable = self.written;
        }
        Ok(())
    }

    /// Makes the file durable under its final name. After this returns the index may
    /// point at it.
    pub fn seal(mut self) -> io::Result<SealedSegment> {
        self.make_durable()?;
        self.file.sync_all()?;
        let part = self.dir.join(format!("{}{PART_SUFFIX}", self.name));
        std::fs::rename(&part, self.dir.join(&self.name))?;
        sync_dir(&self.dir)?;
        Ok(SealedSegment {
            name: self.name,
            bytes: self.written,
        })
    }

    /// After a write error (a full disk): drops what never became durable and leaves the
    /// `.part` file cut at the last durable byte, for startup recovery to adopt. Best
    /// effort: a failure here leaves the file for recovery as it is.
    pub fn abandon(self) -> u64 {
        let _ = self.file.set_len(self.durable);
        let _ = self.file.sync_all();
        self.durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_file_until_sealed_then_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), "00000001.ts").unwrap();
        w.buffer().extend_from_slice(&[0x47; 188]);
        assert!(w.is_dirty());
        assert_eq!(w.durable_len(), 0);
        w.make_durable().unwrap();
        assert_eq!(w.durable_len(), 188);
        assert_eq!(
            std::fs::metadata(dir.path().join("00000001.ts.part"))
                .unwrap()
                .len(),
            188
        );
        w.buffer().extend_from_slice(&[0x47; 188]);
        let sealed = w.seal().unwrap();
        assert_eq!(sealed.bytes, 376);
        assert!(!dir.path().join("00000001.ts.part").exists());
        assert_eq!(
            std::fs::read(dir.path().join("00000001.ts")).unwrap().len(),
            376
        );
    }

    #[test]
    fn abandon_keeps_only_durable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), "00000002.ts").unwrap();
        w.buffer().extend_from_slice(&[1; 100]);
        w.make_durable().unwrap();
        w.buffer().extend_from_slice(&[2; 100]);
        assert_eq!(w.abandon(), 100);
        assert_eq!(
            std::fs::read(dir.path().join("00000002.ts.part")).unwrap(),
            vec![1; 100]
        );
    }
}
