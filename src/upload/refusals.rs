//! Telling refused credentials from a refused object. A store answers `AccessDenied` (or
//! another 401/403) both when the box's credentials are wrong, which concerns every
//! object and must pause the store without parking anything, and when a policy denies one
//! prefix (or, on some stores, an upload id it no longer knows), which concerns that
//! object only and must not hold up the queue.
//!
//! The rule: a refusal of an object that was not refused since the store's last success
//! is treated as store-wide (pause), and the queue prefers objects not refused since then
//! ([`Refusals::is_suspect`]), so the next attempt goes to another object. If another
//! object goes through, the next refusal of the first is its own fault: it backs off and
//! is parked after `max_attempts`. When every object is refused, no success ever comes
//! and the store stays paused. Sans-IO; held in memory (after a restart each object gets
//! one store-wide refusal again before it counts).

use std::collections::HashMap;

/// Whom a refusal concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Possibly every object (credentials): pause the store.
    Store,
    /// This object: other objects went through since it was last refused.
    Object,
}

#[derive(Debug, Default)]
pub struct Refusals {
    /// Objects that went through.
    successes: u64,
    /// Object id -> `successes` when it was last refused.
    refused: HashMap<String, u64>,
}

impl Refusals {
    /// Object `id` went through.
    pub fn succeeded(&mut self, id: &str) {
        self.successes += 1;
        self.refused.remove(id);
    }

    /// The store refused object `id` (401/403).
    pub fn refused(&mut self, id: &str) -> Refused {
        let verdict = match self.refused.get(id) {
            Some(&at) if at < self.successes => Refused::Object,
            _ => Refused::Store,
        };
        self.refused.insert(id.to_owned(), self.successes);
        verdict
    }

    /// Whether `id` was refused since the last success: the queue tries others first.
    pub fn is_suspect(&self, id: &str) -> bool {
        self.refused.get(id) == Some(&self.successes)
    }

    /// `id` left the queue (parked or uploaded elsewhere).
    pub fn forget(&mut self, id: &str) {
        self.refused.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_prefix_is_the_objects_fault_once_others_go_through() {
        let mut r = Refusals::default();
        assert_eq!(r.refused("denied"), Refused::Store);
        assert!(r.is_suspect("denied"));
        assert!(!r.is_suspect("allowed"));
        r.succeeded("allowed");
        assert!(!r.is_suspect("denied"), "tried again after the success");
        assert_eq!(r.refused("denied"), Refused::Object);
        assert_eq!(r.refused("denied"), Refused::Store, "no success in between");
        r.forget("denied");
        assert!(!r.is_suspect("denied"));
    }

    #[test]
    fn refused_credentials_never_blame_an_object() {
        let mut r = Refusals::default();
        for _ in 0..100 {
            for id in ["a", "b", "c"] {
                assert_eq!(r.refused(id), Refused::Store);
                assert!(r.is_suspect(id));
            }
        }
    }
}
