//! Defences against hostile peers that the core owns: the ban table, and the per-peer budget
//! that bounds how much one peer may teach our mCache.
//!
//! A peer that sends a segment that fails verification (the driver checks signatures before
//! the core sees a segment) is banned by peer id and by listen address for
//! `Config::ban_duration`: its links are closed, its hellos refused, it is never dialled, and
//! the membership records it taught us are dropped. The table holds at most [`MAX_BANS`]
//! entries; when full, the ban closest to its end makes room, so a flood of fresh identities
//! cannot grow it.

use super::time::{Duration, Instant};
use super::wire::{PeerAddr, PeerId};

/// Bans held at once. A swarm with more polluters than this rotates the oldest out; each one
/// is banned again the moment it sends another bad segment.
pub const MAX_BANS: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Ban {
    id: Option<PeerId>,
    addr: Option<PeerAddr>,
    until: Instant,
}

/// Banned peer ids and listen addresses, each until a time.
#[derive(Clone, Debug, Default)]
pub struct Bans {
    bans: Vec<Ban>,
    /// Bans ever made (a counter for stats; the table itself forgets).
    total: u64,
}

impl Bans {
    /// Bans `id` and `addr` until `until`. The same pair banned again is extended.
    pub fn ban(&mut self, id: Option<PeerId>, addr: Option<PeerAddr>, until: Instant) {
        if id.is_none() && addr.is_none() {
            return;
        }
        self.total += 1;
        if let Some(b) = self.bans.iter_mut().find(|b| b.id == id && b.addr == addr) {
            b.until = b.until.max(until);
            return;
        }
        if self.bans.len() >= MAX_BANS {
            if let Some(k) = (0..self.bans.len()).min_by_key(|&k| self.bans[k].until) {
                self.bans.swap_remove(k);
            }
        }
        self.bans.push(Ban { id, addr, until });
    }

    pub fn id_banned(&self, id: PeerId, now: Instant) -> bool {
        self.bans.iter().any(|b| b.id == Some(id) && b.until > now)
    }

    pub fn addr_banned(&self, addr: PeerAddr, now: Instant) -> bool {
        self.bans
            .iter()
            .any(|b| b.addr == Some(addr) && b.until > now)
    }

    /// Forgets bans that have run out.
    pub fn expire(&mut self, now: Instant) {
        self.bans.retain(|b| b.until > now);
    }

    /// Bans in force (or not yet expired by [`Bans::expire`]).
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The banned peer ids, for reports.
    pub fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.bans.iter().filter_map(|b| b.id)
    }
}

/// A count that refills every `period`: how many membership records one link may teach us
/// per gossip interval. Past it, records from that link are ignored until the next period,
/// so one chatty or hostile peer cannot fill the mCache with its own choice of members.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    used: u32,
    since: Instant,
}

impl Budget {
    pub fn new(now: Instant) -> Self {
        Budget {
            used: 0,
            since: now,
        }
    }

    /// Takes one unit if `limit` per `period` allows it.
    pub fn take(&mut self, now: Instant, limit: u32, period: Duration) -> bool {
        if now.saturating_since(self.since) >= period {
            self.used = 0;
            self.since = now;
        }
        if self.used >= limit {
            return false;
        }
        self.used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(s)
    }

    #[test]
    fn bans_expire_extend_and_stay_bounded() {
        let mut b = Bans::default();
        let a = PeerAddr::V4([10, 0, 0, 1], 7000);
        b.ban(Some(PeerId(1)), Some(a), at(60));
        assert!(b.id_banned(PeerId(1), at(10)));
        assert!(b.addr_banned(a, at(10)));
        assert!(!b.id_banned(PeerId(2), at(10)));
        assert!(!b.id_banned(PeerId(1), at(60)), "a ban ends at its time");
        // The same peer again extends its ban; a new id at the same address is a new entry.
        b.ban(Some(PeerId(1)), Some(a), at(120));
        assert_eq!(b.len(), 1);
        assert!(b.addr_banned(a, at(100)));
        b.ban(Some(PeerId(3)), Some(a), at(120));
        assert_eq!(b.len(), 2);
        assert!(b.id_banned(PeerId(1), at(100)) && b.id_banned(PeerId(3), at(100)));
        for i in 0..1000u64 {
            b.ban(Some(PeerId(100 + i)), None, at(200 + i));
            assert!(b.len() <= MAX_BANS);
        }
        // The newest bans survive; the one closest to its end was pushed out.
        assert!(b.id_banned(PeerId(1099), at(150)));
        assert!(!b.addr_banned(a, at(100)));
        b.expire(at(10_000));
        assert!(b.is_empty());
        assert_eq!(b.total(), 1003);
    }

    #[test]
    fn budget_refills_each_period() {
        let mut g = Budget::new(at(0));
        let p = Duration::from_secs(10);
        assert!((0..5).all(|_| g.take(at(1), 5, p)));
        assert!(!g.take(at(9), 5, p));
        assert!(g.take(at(11), 5, p));
    }
}
