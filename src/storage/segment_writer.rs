//! One segment file on flash, written per crash-safety invariant 1: bytes go to
//! `NAME.part`, are made durable (write + fdatasync) at least every flush interval by the
//! caller, and on [`SegmentWriter::seal`] the file is fsynced, renamed to `NAME` and the
//! folder fsynced. Only after `seal` returns may the index name the file.
//!
//! The folder entry of a new `.part` must be durable before its first flush counts. At a
//! segment cut the recorder creates the next file first ([`SegmentWriter::create_deferred`])
//! and passes it to the old file's seal, whose one folder fsync covers both the rename and
//! the creation: two fsyncs per segment instead of three, and the folder's block is
//! written once. A deferred file not covered that way syncs its folder at its first
//! [`SegmentWriter::make_durable`].
//!
//! Flash-friendly: only whole pages are written before the seal. Bytes go to the page
//! cache once a [`SPILL_BYTES`] run of whole pages has accumulated, as the muxer hands
//! over each packet ([`TsOut`]), so the process's own buffer, and so its RSS, stays at
//! [`SPILL_BYTES`] however large a keyframe is, and the partial last page is written once, at the
//! seal, instead of being rewritten by every periodic fdatasync (which would write that
//! page again each second and wear the card). So "durable" at a periodic flush means
//! everything but the last partial page (under 4 KiB, ~16 ms of a 2 Mb/s stream).
//!
//! Drop-behind: once bytes are durable their page-cache pages are clean, and a recorder
//! writes far more than anyone reads back soon, so the writer asks the kernel to free them
//! at once (`POSIX_FADV_DONTNEED`) rather than let a box's few hundred MB of RAM fill with
//! write-once media that the kernel must later reclaim. The freed pages are reused hot by
//! the next writes. A live viewer or the uploader reads a segment back from flash, and
//! the kernel caches it again for whoever reads it next.
//!
//! The writer never decides *when* to flush (the recorder does, from media and wall
//! time) and never touches the index.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{sync_dir, PART_SUFFIX};
use crate::metrics;
use crate::mux::ts::{TsOut, PACKET_SIZE};

/// The page size writes are aligned to before the seal.
pub const PAGE: usize = 4096;
/// Buffered bytes past which whole pages are handed to the page cache. The buffer counts
/// toward each stream's RSS, and 128 KiB writes measured no cheaper than 32 KiB ones
/// within the bench's run-to-run noise (`scripts/bench.py --binary`, N=32).
pub const SPILL_BYTES: usize = 32 * 1024;

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
    /// Whether the file's folder entry is durable (a folder fsync ran after its creation).
    entry_durable: bool,
    /// A write that failed while the muxer was handing over packets; every later call
    /// reports it, and nothing more is buffered.
    failed: Option<io::Error>,
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
        let mut writer = SegmentWriter::create_deferred(dir, name)?;
        sync_dir(dir)?;
        writer.entry_durable = true;
        Ok(writer)
    }

    /// Creates `dir/NAME.part` without syncing its folder: the caller passes it to the
    /// previous segment's [`seal`](Self::seal), or its first flush syncs the folder.
    pub fn create_deferred(dir: &Path, name: &str) -> io::Result<SegmentWriter> {
        let part = dir.join(format!("{name}{PART_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(part)?;
        Ok(SegmentWriter {
            file,
            dir: dir.to_owned(),
            name: name.to_owned(),
            // Packets arrive one at a time and whole pages leave at the threshold.
            buf: Vec::with_capacity(SPILL_BYTES + PACKET_SIZE),
            written: 0,
            durable: 0,
            entry_durable: false,
            failed: None,
        })
    }

    /// The buffer, for tests that append raw bytes.
    #[cfg(test)]
    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The write error met while packets were handed over, if any.
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
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

    /// Hands whole pages to the page cache once [`SPILL_BYTES`] are buffered, and
    /// reports a write that failed while packets were handed over. Cheap to call after
    /// every frame.
    pub fn spill(&mut self) -> io::Result<()> {
        self.check()?;
        if self.buf.len() >= SPILL_BYTES {
            self.write_whole_pages()?;
        }
        Ok(())
    }

    fn write_whole_pages(&mut self) -> io::Result<()> {
        let whole = self.buf.len() / PAGE * PAGE;
        if whole > 0 {
            write_timed(&mut self.file, &self.buf[..whole])?;
            self.written += whole as u64;
            self.buf.drain(..whole);
        }
        Ok(())
    }

    /// Writes the whole pages and fdatasyncs: everything appended so far, but the last
    /// partial page, survives a crash.
    pub fn make_durable(&mut self) -> io::Result<()> {
        self.check()?;
        self.write_whole_pages()?;
        if self.written != self.durable {
            let started = Instant::now();
            self.file.sync_data()?;
            metrics::global()
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            if !self.entry_durable {
                sync_dir(&self.dir)?;
                self.entry_durable = true;
            }
            drop_behind(&self.file, self.durable, self.written);
            self.durable = self.written;
        }
        Ok(())
    }

    /// Makes the file durable under its final name. After this returns the index may
    /// point at it. The folder fsync also makes `next`'s creation durable: pass the
    /// segment that follows, created with [`create_deferred`](Self::create_deferred) in
    /// the same folder.
    pub fn seal(mut self, next: Option<&mut SegmentWriter>) -> io::Result<SealedSegment> {
        self.check()?;
        if !self.buf.is_empty() {
            write_timed(&mut self.file, &self.buf)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        let started = Instant::now();
        self.file.sync_all()?;
        metrics::global()
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        drop_behind(&self.file, self.durable, self.written);
        let part = self.dir.join(format!("{}{PART_SUFFIX}", self.name));
        std::fs::rename(&part, self.dir.join(&self.name))?;
        sync_dir(&self.dir)?;
        if let Some(next) = next.filter(|n| n.dir == self.dir) {
            next.entry_durable = true;
        }
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

impl TsOut for SegmentWriter {
    fn put(&mut self, packet: &[u8; PACKET_SIZE]) {
        if self.failed.is_some() {
            return;
        }
        self.buf.extend_from_slice(packet);
        if self.buf.len() >= SPILL_BYTES {
            if let Err(e) = self.write_whole_pages() {
                self.failed = Some(e);
            }
        }
    }
}

/// Writes `bytes` to `file`, counted in `edgerec_written_bytes_total` and timed in
/// `edgerec_segment_write_seconds`.
fn write_timed(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let started = Instant::now();
    file.write_all(bytes)?;
    let m = metrics::global();
    m.segment_write_seconds
        .observe(started.elapsed().as_secs_f64());
    m.written_bytes.inc_by(bytes.len() as u64);
    Ok(())
}

/// Drop-behind: tells the kernel the durable range `from..to` will not be read soon, so
/// its (now clean) page-cache pages are freed at once instead of aging out. Advice only:
/// a failure changes no byte on disk, and tmpfs ignores it.
fn drop_behind(file: &File, from: u64, to: u64) {
    if to <= from {
        return;
    }
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to - from),
    ) else {
        return;
    };
    let _ = nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_file_until_sealed_then_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("00000001.ts.part");
        let mut w = SegmentWriter::create(dir.path(), "00000001.ts").unwrap();
        w.buffer().extend_from_slice(&[0x47; PAGE + 188]);
        assert!(w.is_dirty());
        assert_eq!(w.durable_len(), 0);
        w.make_durable().unwrap();
        // Whole pages only: the tail waits for the seal.
        assert_eq!(w.durable_len(), PAGE as u64);
        assert_eq!(std::fs::metadata(&part).unwrap().len(), PAGE as u64);
        w.buffer().extend_from_slice(&[0x47; 188]);
        let sealed = w.seal(None).unwrap();
        assert_eq!(sealed.bytes, PAGE as u64 + 376);
        assert!(!part.exists());
        let data = std::fs::read(dir.path().join("00000001.ts")).unwrap();
        assert_eq!(data.len(), PAGE + 376);
    }

    #[test]
    fn spill_hands_whole_pages_to_the_file_without_syncing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), "00000003.ts").unwrap();
        w.buffer().extend_from_slice(&[7; SPILL_BYTES - 1]);
        w.spill().unwrap();
        assert_eq!(
            w.buffer().len(),
            SPILL_BYTES - 1,
            "below the threshold nothing moves"
        );
        w.buffer().extend_from_slice(&[7; 100]);
        w.spill().unwrap();
        assert_eq!(w.buffer().len(), (SPILL_BYTES + 99) % PAGE);
        assert_eq!(w.len(), SPILL_BYTES as u64 + 99);
        assert_eq!(w.durable_len(), 0, "spilling is not a sync");
    }

    /// Page-cache pages of `path` that are resident, from mincore(2) on a mapping.
    #[allow(unsafe_code)]
    fn resident_pages(path: &Path) -> usize {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let pages = len.div_ceil(PAGE);
        let mut vec = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of a file we opened, only passed to mincore
        // and unmapped before returning; `vec` has one byte per page of the mapping.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED);
            assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
            libc::munmap(addr, len);
        }
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    #[test]
    fn packets_leave_in_whole_pages_as_they_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), "00000005.ts").unwrap();
        let capacity = w.buf.capacity();
        // A 1 MB keyframe's worth of packets never gathers in memory.
        for i in 0..5_600u32 {
            w.put(&[i as u8; PACKET_SIZE]);
            assert!(w.buf.len() < SPILL_BYTES);
        }
        assert_eq!(w.buf.capacity(), capacity, "the buffer never grew");
        assert_eq!(w.len(), 5_600 * PACKET_SIZE as u64);
        let sealed = w.seal(None).unwrap();
        let data = std::fs::read(dir.path().join(&sealed.name)).unwrap();
        assert_eq!(data.len(), 5_600 * PACKET_SIZE);
        assert!(data
            .chunks(PACKET_SIZE)
            .enumerate()
            .all(|(i, p)| p.iter().all(|&b| b == i as u8)));
    }

    #[test]
    fn durable_pages_leave_the_page_cache() {
        // Under the target dir, on the build's disk: tmpfs has no page cache to drop.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        let fs = nix::sys::statfs::statfs(dir.path()).unwrap();
        if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
            eprintln!(
                "skipped: {} is tmpfs, which keeps every page",
                base.display()
            );
            return;
        }
        let part = dir.path().join("00000004.ts.part");
        let mut w = SegmentWriter::create(dir.path(), "00000004.ts").unwrap();
        w.buffer().extend_from_slice(&[9; 8 * PAGE]);
        w.spill().unwrap();
        assert_eq!(resident_pages(&part), 8, "written, not yet durable: cached");
        w.buffer().extend_from_slice(&[9; 100]);
        w.make_durable().unwrap();
        assert_eq!(resident_pages(&part), 0, "durable pages are dropped");
        let sealed = w.seal(None).unwrap();
        let path = dir.path().join(&sealed.name);
        assert_eq!(resident_pages(&path), 0, "the sealed tail is dropped too");
        assert_eq!(std::fs::read(&path).unwrap(), vec![9; 8 * PAGE + 100]);
    }

    #[test]
    fn abandon_keeps_only_durable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), "00000002.ts").unwrap();
        w.buffer().extend_from_slice(&[1; PAGE]);
        w.make_durable().unwrap();
        w.buffer().extend_from_slice(&[2; SPILL_BYTES]);
        w.spill().unwrap();
        assert_eq!(w.abandon(), PAGE as u64);
        let data = std::fs::read(dir.path().join("00000002.ts.part")).unwrap();
        assert_eq!(data, vec![1; PAGE]);
    }

    #[test]
    fn a_deferred_file_gets_its_folder_entry_from_the_seal_before_it_or_its_first_flush() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut old = SegmentWriter::create(dir.path(), "00000001.ts").unwrap();
        assert!(old.entry_durable);
        old.buffer().extend_from_slice(&[1; 188]);
        let mut next = SegmentWriter::create_deferred(dir.path(), "00000002.ts").unwrap();
        let mut elsewhere = SegmentWriter::create_deferred(other.path(), "00000002.ts").unwrap();
        assert!(!next.entry_durable && !elsewhere.entry_durable);
        old.seal(Some(&mut next)).unwrap();
        assert!(
            next.entry_durable,
            "the seal's folder fsync covers the next file"
        );
        old = SegmentWriter::create(dir.path(), "00000003.ts").unwrap();
        old.seal(Some(&mut elsewhere)).unwrap();
        assert!(
            !elsewhere.entry_durable,
            "another folder's entry is not covered"
        );
        elsewhere.buffer().extend_from_slice(&[2; PAGE]);
        elsewhere.make_durable().unwrap();
        assert!(
            elsewhere.entry_durable,
            "the first flush syncs the folder itself"
        );
        assert_eq!(elsewhere.durable_len(), PAGE as u64);
    }
}
