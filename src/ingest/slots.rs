//! Connection slots of a listener (the publish listeners, and the API on top): at most
//! `max_connections` at once, and at most `max_connections_per_ip` from one peer, so one
//! host holding idle sockets cannot lock every encoder (or every operator) out. A slot is taken at accept and given back when its guard drops.
//!
//! IPv6 peers count per /64 (one host is routinely handed a whole /64 and can pick a new
//! source address per connection); IPv4-mapped IPv6 addresses count as the IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot of the listener is taken.
    Full { limit: usize },
    /// The peer already holds its share.
    PeerFull { limit: usize },
}

impl std::fmt::Display for NoSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoSlot::Full { limit } => write!(f, "too many connections (limit {limit})"),
            NoSlot::PeerFull { limit } => {
                write!(f, "too many connections from this address (limit {limit})")
            }
        }
    }
}

/// The slots of one listener (or of listeners that share a limit), cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    per_peer: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_peer: HashMap<PeerKey, usize>,
}

/// What a peer is counted by: its IPv4 address or its IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerKey(u128);

impl PeerKey {
    fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(u128::from(u32::from(v4))),
                // Top bit set keeps IPv6 keys apart from IPv4 ones.
                None => PeerKey((u128::from(v6) >> 64) | (1 << 127)),
            },
        }
    }
}

impl ConnectionSlots {
    pub fn new(total: usize, per_peer: usize) -> ConnectionSlots {
        ConnectionSlots {
            inner: Arc::new(Inner {
                total,
                per_peer,
                held: Mutex::new(Held::default()),
            }),
        }
    }

    /// A slot for a connection from `peer`, held until the guard drops.
    pub fn try_take(&self, peer: IpAddr) -> Result<Slot, NoSlot> {
        let key = PeerKey::of(peer);
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= self.inner.total {
            return Err(NoSlot::Full {
                limit: self.inner.total,
            });
        }
        let mine = held.by_peer.entry(key).or_insert(0);
        if *mine >= self.inner.per_peer {
            return Err(NoSlot::PeerFull {
                limit: self.inner.per_peer,
            });
        }
        *mine += 1;
        held.total += 1;
        Ok(Slot {
            slots: self.inner.clone(),
            key,
        })
    }
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Inner>,
    key: PeerKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= 1;
        if let Some(n) = held.by_peer.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.by_peer.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_gets_its_share_and_others_the_rest() {
        let slots = ConnectionSlots::new(5, 2);
        let a1 = slots.try_take(ip("10.0.0.1")).unwrap();
        let _a2 = slots.try_take(ip("10.0.0.1")).unwrap();
        assert_eq!(
            slots.try_take(ip("10.0.0.1")).unwrap_err(),
            NoSlot::PeerFull { limit: 2 }
        );
        let _b1 = slots.try_take(ip("10.0.0.2")).unwrap();
        let _b2 = slots.try_take(ip("10.0.0.2")).unwrap();
        let _c1 = slots.try_take(ip("10.0.0.3")).unwrap();
        assert_eq!(
            slots.try_take(ip("10.0.0.4")).unwrap_err(),
            NoSlot::Full { limit: 5 }
        );
        drop(a1);
        let _a3 = slots.try_take(ip("10.0.0.1")).unwrap();
        assert!(slots.try_take(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn a_freed_slot_forgets_the_peer() {
        let slots = ConnectionSlots::new(4, 1);
        drop(slots.try_take(ip("10.0.0.1")).unwrap());
        assert!(slots.inner.held.lock().unwrap().by_peer.is_empty());
        assert_eq!(slots.inner.held.lock().unwrap().total, 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let slots = ConnectionSlots::new(10, 1);
        let _a = slots.try_take(ip("2001:db8:1:2::1")).unwrap();
        assert!(slots.try_take(ip("2001:db8:1:2:ffff::9")).is_err());
        let _b = slots.try_take(ip("2001:db8:1:3::1")).unwrap();
        let _c = slots.try_take(ip("192.0.2.7")).unwrap();
        assert!(slots.try_take(ip("::ffff:192.0.2.7")).is_err());
    }
}
