//! Fuzz targets for every parser that faces the network or the card, and the memory oracle
//! they all run under.
//!
//! Owns: the body of each target ([`run`] by name), shared by the cargo-fuzz binaries in
//! `fuzz_targets/` and by the main crate's `tests/fuzz_corpus.rs`, which replays the saved
//! corpus (`fuzz/corpus/<target>/`) and fixed findings (`fuzz/regressions/<target>/`) as an
//! ordinary test. A target panics on a finding: a crash in the code under test, a broken
//! invariant it checks (round trips, TS packet rules), or more memory held at once than
//! its budget (the oracle below), so that "an 11-byte message makes us hold 8 MiB" is a
//! finding like any crash.
//!
//! The oracle is a counting global allocator ([`PeakAlloc`]) rather than libFuzzer's
//! `-malloc_limit_mb`, which needs a sanitizer runtime: the targets run without one
//! (`cargo fuzz -s none`, the stable toolchain) at several times the speed.
//!
//! Loaded two ways (crate root here, `#[path]` module in the test), so it names its own
//! items through `super::`, never `crate::`.

mod media;
mod rtmp;
mod rtsp;
mod seeds;
mod ts;

#[allow(unused_imports)] // Used by the fuzz binaries, not by the corpus replay.
pub use seeds::{seeds, write_seeds_if_asked};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every target, by the name of its binary and corpus folder.
pub const TARGETS: &[&str] = &[
    "rtmp_handshake",
    "rtmp_chunk",
    "rtmp_session",
    "amf0",
    "flv_demux",
    "codec_config",
    "nal",
    "ts_mux",
    "ts_scan",
    "ts_demux",
    "rtsp_session",
    "rtp",
    "sdp",
];

/// Memory any target may hold at once beyond what it held before: the parsers' fixed
/// buffers (a handshake block, a TS packet, a 64 KiB RTSP frame) and the target's own
/// bookkeeping.
const FIXED_BUDGET: usize = 2 << 20;
/// And per input byte: what decoding one byte may legitimately cost (an AMF0 value per
/// byte at worst is ~56 bytes; a frame is copied a few times on its way through).
const BUDGET_PER_INPUT_BYTE: usize = 64;

/// Runs target `name` on `data`; panics on a finding. Unknown names panic too.
pub fn run(name: &str, data: &[u8]) {
    within_budget(name, data.len(), || match name {
        "rtmp_handshake" => rtmp::handshake(data),
        "rtmp_chunk" => rtmp::chunk(data),
        "rtmp_session" => rtmp::session(data),
        "amf0" => rtmp::amf0(data),
        "flv_demux" => rtmp::flv_demux(data),
        "codec_config" => media::codec_config(data),
        "nal" => media::nal(data),
        "ts_mux" => ts::mux(data),
        "ts_scan" => ts::scan(data),
        "ts_demux" => ts::demux(data),
        "rtsp_session" => rtsp::session(data),
        "rtp" => rtsp::rtp(data),
        "sdp" => rtsp::sdp(data),
        other => panic!("no fuzz target {other:?}"),
    });
}

/// Runs `body` (target `name` on an input of `input_len` bytes) and panics if it held
/// more than the budget at any one time.
pub fn within_budget(name: &str, input_len: usize, body: impl FnOnce()) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    body();
    let held = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let budget = FIXED_BUDGET + BUDGET_PER_INPUT_BYTE * input_len;
    assert!(
        held <= budget,
        "{name}: {held} bytes held at once for a {input_len}-byte input (budget {budget})"
    );
}

/// Bytes allocated and not yet freed, and the most of that since [`run`] began.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The memory oracle: the system allocator, counting. Install it in each binary that runs
/// targets (`#[global_allocator] static A: PeakAlloc = PeakAlloc;`).
pub struct PeakAlloc;

impl PeakAlloc {
    fn grew(by: usize) {
        let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Whether [`PeakAlloc`] is this binary's allocator (else the oracle sees nothing held and
/// checks nothing): the corpus replay asserts it.
pub fn oracle_installed() -> bool {
    let before = LIVE.load(Ordering::Relaxed);
    let probe = std::hint::black_box(vec![0u8; 4096]);
    let counted = LIVE.load(Ordering::Relaxed) >= before + probe.len();
    drop(probe);
    counted
}

/// Reads the fuzzer's bytes as a sequence of operations.
struct Ops<'a> {
    data: &'a [u8],
}

impl<'a> Ops<'a> {
    fn new(data: &'a [u8]) -> Self {
        Ops { data }
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        let hi = self.byte().unwrap_or(0);
        let lo = self.byte().unwrap_or(0);
        u16::from_be_bytes([hi, lo])
    }

    /// A length-prefixed (u16) piece, or whatever is left if it is shorter.
    fn piece(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16()).min(self.data.len());
        let (piece, rest) = self.data.split_at(len);
        self.data = rest;
        piece
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
