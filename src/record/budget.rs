//! The memory of frames on their way to the flash writers. Each stream may have
//! `writer_budget_kb` in flight, and all streams together `writer_budget_total_kb`: a card
//! that stalls for everyone cannot make the daemon hold streams x the per-stream budget.
//! A frame over either budget is dropped by the ingest (counted; the segment closes with a
//! discontinuity when room returns), so a publisher is never blocked by flash.
//!
//! Bytes are charged as the frame will be muxed (see `charge`), taken when a frame is
//! queued and given back when its [`Batch`] is dropped, whether it was written or lost with
//! a recorder that stopped, so no path leaks budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::LiveStats;
use crate::media::Frame;

/// A byte budget shared by threads.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes if they fit.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.limit).then_some(used + n)
            })
            .is_ok()
    }

    pub fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Frames handed to a writer thread, charged to their stream's and the total budget until
/// dropped.
pub(crate) struct Batch {
    pub frames: Vec<Frame>,
    bytes: usize,
    stream: Arc<LiveStats>,
    total: Arc<Budget>,
}

impl Batch {
    /// `bytes` were taken from `total` frame by frame; they are added to the stream's
    /// in-flight count here.
    pub fn new(
        frames: Vec<Frame>,
        bytes: usize,
        stream: Arc<LiveStats>,
        total: Arc<Budget>,
    ) -> Batch {
        stream.in_flight.fetch_add(bytes, Ordering::AcqRel);
        Batch {
            frames,
            bytes,
            stream,
            total,
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.stream
            .in_flight
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.total.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_takes_what_fits_and_gets_it_back() {
        let b = Budget::new(100);
        assert!(b.try_take(60));
        assert!(!b.try_take(41));
        assert!(b.try_take(40));
        assert!(!b.try_take(1));
        b.give_back(60);
        assert_eq!(b.used(), 40);
        assert!(b.try_take(60));
    }

    #[test]
    fn a_dropped_batch_gives_its_bytes_back_to_both_budgets() {
        let total = Arc::new(Budget::new(1000));
        let stats = Arc::new(super::super::placeholder_stats("live", "s", "rtmp"));
        assert!(total.try_take(300));
        let batch = Batch::new(Vec::new(), 300, stats.clone(), total.clone());
        assert_eq!(stats.in_flight.load(Ordering::Acquire), 300);
        // Lost with a stopped recorder: the channel drops it.
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        drop(rx);
        assert!(tx.send(batch).is_err());
        assert_eq!(stats.in_flight.load(Ordering::Acquire), 0);
        assert_eq!(total.used(), 0);
    }
}
