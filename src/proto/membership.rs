//! The mCache: a node's bounded partial view of the swarm's members.
//!
//! Records are DONet's `<seq, id, addr, num_partner, ttl>`. They arrive from the origin's
//! redirect, a deputy's answer, partner rejections and periodic gossip; a record with a higher
//! `seq` replaces an older one; each expires `ttl` after it was learned. A departure (announced
//! by the leaver, or on its behalf by a partner that saw it crash) leaves a tombstone until the
//! record would have expired, so the same departure is neither re-learned from stale gossip nor
//! forwarded twice. The table never holds more than its capacity: when full, the record closest
//! to expiry makes room. It holds only members that can be dialled: a record that says its
//! member cannot be (no IPv6 address either) replaces nothing and is not kept, since every use
//! of the table (partner candidates, redirects, a deputy's sample) ends in a dial.

use super::rng::Rng;
use super::time::{Duration, Instant};
use super::wire::{MemberEntry, PeerId, Reach};

/// Longest TTL we honour from a record, whatever the sender claims.
pub const MAX_TTL_S: u16 = 300;
/// Odds of a partner candidate whose record says how it can be dialled against one whose
/// record does not know yet ([`MCache::pick_candidate`]).
pub const REACH_KNOWN_ODDS: u64 = 16;

#[derive(Clone, Debug)]
struct Record {
    entry: MemberEntry,
    expires: Instant,
    departed: bool,
    /// The peer that told us, if it was not the member itself: a banned peer's word is
    /// dropped with it ([`MCache::forget_via`]).
    via: Option<PeerId>,
}

#[derive(Clone, Debug)]
pub struct MCache {
    cap: usize,
    me: PeerId,
    records: Vec<Record>,
    /// `records[i].entry.id`, kept in step with `records`: a compact array makes the
    /// lookup by id (on every record learned) a scan of 8-byte keys.
    ids: Vec<PeerId>,
    /// `evict_key(&records[i])`, kept in step with `records` likewise.
    keys: Vec<u64>,
}

/// A record nobody can dial: unreachable, and no IPv6 address to try instead.
fn undialable(e: &MemberEntry) -> bool {
    e.reach == Reach::Unreachable && e.v6.is_none()
}

/// Eviction order as one number: tombstones first, then the record closest to expiry
/// (`(!departed, expires)` compared as a pair).
fn evict_key(r: &Record) -> u64 {
    ((!r.departed as u64) << 63) | r.expires.as_micros()
}

impl MCache {
    pub fn new(cap: usize, me: PeerId) -> Self {
        MCache {
            cap: cap.max(1),
            me,
            records: Vec::with_capacity(cap.max(1)),
            ids: Vec::with_capacity(cap.max(1)),
            keys: Vec::with_capacity(cap.max(1)),
        }
    }

    fn find(&self, id: PeerId) -> Option<usize> {
        self.ids.iter().position(|&r| r == id)
    }

    fn swap_remove(&mut self, i: usize) {
        self.records.swap_remove(i);
        self.ids.swap_remove(i);
        self.keys.swap_remove(i);
    }

    /// Keeps the records for which `keep` holds, in order.
    fn retain(&mut self, mut keep: impl FnMut(&Record) -> bool) {
        let mut w = 0;
        for r in 0..self.records.len() {
            if keep(&self.records[r]) {
                self.records.swap(w, r);
                self.ids.swap(w, r);
                self.keys.swap(w, r);
                w += 1;
            }
        }
        self.records.truncate(w);
        self.ids.truncate(w);
        self.keys.truncate(w);
    }

    /// Takes in a record. Returns true if it told us something new (a new member or a newer
    /// record of a known one).
    pub fn learn(&mut self, entry: MemberEntry, now: Instant) -> bool {
        self.learn_via(entry, now, None)
    }

    /// [`MCache::learn`], remembering which peer passed the record on.
    pub fn learn_via(&mut self, mut entry: MemberEntry, now: Instant, via: Option<PeerId>) -> bool {
        let via = via.filter(|v| *v != entry.id);
        if entry.id == self.me || entry.ttl_s == 0 {
            return false;
        }
        entry.ttl_s = entry.ttl_s.min(MAX_TTL_S);
        if undialable(&entry) {
            // What we held of it is out of date: it can no longer be dialled.
            if let Some(i) = self.find(entry.id) {
                let r = &self.records[i];
                if !r.departed && entry.seq >= r.entry.seq {
                    self.swap_remove(i);
                }
            }
            return false;
        }
        let expires = now + Duration::from_secs(entry.ttl_s as u64);
        if let Some(i) = self.find(entry.id) {
            let r = &mut self.records[i];
            let newer = entry.seq > r.entry.seq;
            if r.departed && !newer {
                return false;
            }
            if newer || (entry.seq == r.entry.seq && expires > r.expires) {
                r.entry = entry;
                r.expires = r.expires.max(expires);
                r.departed = false;
                r.via = via;
                self.keys[i] = evict_key(r);
                return newer;
            }
            return false;
        }
        if self.records.len() >= self.cap {
            // Make room: drop the record closest to expiry (tombstones first).
            // The first of the smallest keys, as `min_by_key` would pick.
            let mut victim: Option<(usize, u64)> = None;
            for (i, &k) in self.keys.iter().enumerate() {
                if victim.is_none_or(|(_, m)| k < m) {
                    victim = Some((i, k));
                }
            }
            if let Some((i, _)) = victim {
                self.swap_remove(i);
            }
        }
        let r = Record {
            entry,
            expires,
            departed: false,
            via,
        };
        self.ids.push(entry.id);
        self.keys.push(evict_key(&r));
        self.records.push(r);
        true
    }

    /// Sets what we found out ourselves about `id`'s reachability (we dialled it back): an
    /// undialable member's record goes.
    pub fn set_reach(&mut self, id: PeerId, reach: Reach) {
        if let Some(i) = self.find(id) {
            if self.records[i].departed {
                return;
            }
            self.records[i].entry.reach = reach;
            if undialable(&self.records[i].entry) {
                self.swap_remove(i);
            }
        }
    }

    /// Records that `id` left. Returns true if this is news (the caller forwards it then).
    pub fn depart(&mut self, id: PeerId, seq: u32, now: Instant) -> bool {
        if id == self.me {
            return false;
        }
        match self.find(id) {
            Some(i) => {
                let r = &mut self.records[i];
                if r.departed || seq < r.entry.seq {
                    return false;
                }
                r.departed = true;
                r.entry.seq = seq;
                r.expires = r.expires.max(now + Duration::from_secs(30));
                self.keys[i] = evict_key(r);
                true
            }
            // Unknown to us: nothing to forget and, in a partial view, nobody near us to tell.
            None => false,
        }
    }

    /// Forgets `id` outright (a dial to it failed).
    pub fn forget(&mut self, id: PeerId) {
        if let Some(i) = self.find(id) {
            self.swap_remove(i);
        }
    }

    /// Forgets every record at `addr`, its advertised or its v6 address (a dial to it
    /// failed; we may not know its id).
    pub fn forget_addr(&mut self, addr: super::wire::PeerAddr) {
        self.retain(|r| r.entry.addr != addr && r.entry.v6 != Some(addr));
    }

    /// Forgets every record that `via` passed on to us (it was banned: what it said about the
    /// swarm may point at its accomplices or at nobody).
    pub fn forget_via(&mut self, via: PeerId) {
        self.retain(|r| r.via != Some(via));
    }

    /// Drops expired records.
    pub fn expire(&mut self, now: Instant) {
        self.retain(|r| r.expires > now);
    }

    /// Live members known.
    pub fn len(&self) -> usize {
        self.records.iter().filter(|r| !r.departed).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record of a live member with its TTL set to what remains of it.
    fn live(&self, now: Instant) -> impl Iterator<Item = MemberEntry> + '_ {
        self.records
            .iter()
            .filter(move |r| !r.departed && r.expires > now)
            .map(move |r| {
                let mut e = r.entry;
                e.ttl_s = r
                    .expires
                    .saturating_since(now)
                    .as_secs_f64()
                    .min(MAX_TTL_S as f64) as u16;
                e
            })
            .filter(|e| e.ttl_s > 0)
    }

    /// Up to `n` random live records for which `keep` holds (for gossip, redirects, partner
    /// candidates).
    pub fn sample(
        &self,
        rng: &mut Rng,
        n: usize,
        now: Instant,
        mut keep: impl FnMut(&MemberEntry) -> bool,
    ) -> Vec<MemberEntry> {
        let mut v: Vec<MemberEntry> = self.live(now).filter(|e| keep(e)).collect();
        if v.len() > n {
            // Partial Fisher-Yates: the first n are a uniform sample.
            for i in 0..n {
                let j = i + rng.below(v.len() - i);
                v.swap(i, j);
            }
            v.truncate(n);
        }
        v
    }

    /// A random live member that passes `keep`, drawn with odds in proportion to how many
    /// partners it takes (members that upload more take more), and small odds for a member
    /// whose record says it is full (the record may be stale). Weighting by free room instead
    /// would send every newcomer to other newcomers, which hold nothing yet.
    pub fn pick_candidate(
        &self,
        rng: &mut Rng,
        now: Instant,
        mut keep: impl FnMut(&MemberEntry) -> bool,
    ) -> Option<MemberEntry> {
        // Members that have been around a while (their record's counter grows each gossip
        // round) hold more of the stream and are settled: a newcomer does better with them.
        // A member that has not found out whether it can be dialled may sit behind a NAT
        // (a dial to it then costs the connect timeout): members known to be dialable go
        // first, REACH_KNOWN_ODDS to one.
        let weight = |e: &MemberEntry| {
            let settled = 1 + e.seq.min(6) as u64;
            let w = if e.num_partners < e.max_partners {
                e.max_partners.max(1) as u64 * settled
            } else {
                settled
            };
            if e.reach == Reach::Unknown {
                w
            } else {
                w * REACH_KNOWN_ODDS
            }
        };
        // One pass: the filter may be costly (the caller's checks against its links), so
        // each record is judged once and the draw walks what passed.
        let mut passed: Vec<(u64, MemberEntry)> = Vec::with_capacity(self.records.len());
        let mut total = 0u64;
        for e in self.live(now) {
            if keep(&e) {
                let w = weight(&e);
                total += w;
                passed.push((w, e));
            }
        }
        if total == 0 {
            return None;
        }
        let mut x = rng.next_u64() % total;
        for (w, e) in passed {
            if x < w {
                return Some(e);
            }
            x -= w;
        }
        None
    }

    pub fn get(&self, id: PeerId) -> Option<&MemberEntry> {
        self.find(id)
            .map(|i| &self.records[i])
            .filter(|r| !r.departed)
            .map(|r| &r.entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::PeerAddr;

    fn e(id: u64, seq: u32, ttl: u16) -> MemberEntry {
        MemberEntry {
            id: PeerId(id),
            addr: PeerAddr::V4([10, 0, 0, id as u8], 1),
            seq,
            num_partners: 1,
            max_partners: 8,
            ttl_s: ttl,
            reach: Reach::Unknown,
            v6: None,
        }
    }

    #[test]
    fn newer_replaces_older_and_self_is_ignored() {
        let mut m = MCache::new(8, PeerId(99));
        let t = Instant::ZERO;
        assert!(m.learn(e(1, 1, 30), t));
        assert!(!m.learn(e(1, 1, 30), t));
        assert!(m.learn(e(1, 2, 30), t));
        assert!(!m.learn(e(99, 5, 30), t));
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(PeerId(1)).unwrap().seq, 2);
    }

    #[test]
    fn records_passed_on_by_a_peer_go_with_it() {
        let mut m = MCache::new(8, PeerId(0));
        m.learn_via(e(1, 1, 30), Instant::ZERO, Some(PeerId(7)));
        m.learn_via(e(2, 1, 30), Instant::ZERO, Some(PeerId(8)));
        m.learn_via(e(7, 1, 30), Instant::ZERO, Some(PeerId(7)));
        m.forget_via(PeerId(7));
        assert!(m.get(PeerId(1)).is_none());
        assert!(m.get(PeerId(2)).is_some());
        assert!(
            m.get(PeerId(7)).is_some(),
            "its own record is not passed on"
        );
    }

    #[test]
    fn undialable_members_are_not_kept() {
        let mut m = MCache::new(8, PeerId(0));
        let t = Instant::ZERO;
        assert!(m.learn(e(1, 1, 30), t));
        let mut gone = e(1, 2, 30);
        gone.reach = Reach::Unreachable;
        assert!(!m.learn(gone, t));
        assert!(
            m.get(PeerId(1)).is_none(),
            "a newer undialable record drops the old"
        );
        let mut v6 = gone;
        v6.v6 = Some(PeerAddr::V6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            7000,
        ));
        assert!(m.learn(v6, t), "an IPv6 address can still be dialled");
        assert!(m.learn(e(2, 1, 30), t));
        m.set_reach(PeerId(2), Reach::Reachable);
        assert_eq!(m.get(PeerId(2)).unwrap().reach, Reach::Reachable);
        m.set_reach(PeerId(2), Reach::Unreachable);
        assert!(m.get(PeerId(2)).is_none());
        m.forget_addr(v6.v6.unwrap());
        assert!(m.get(PeerId(1)).is_none(), "forgotten by its v6 address");
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let mut m = MCache::new(4, PeerId(0));
        for i in 1..100 {
            m.learn(e(i, 1, (i % 50 + 1) as u16), Instant::ZERO);
            assert!(m.records.len() <= 4);
        }
    }

    #[test]
    fn ttl_expiry_and_departure_tombstones() {
        let mut m = MCache::new(8, PeerId(0));
        m.learn(e(1, 1, 10), Instant::ZERO);
        m.learn(e(2, 1, 100), Instant::ZERO);
        m.expire(Instant::ZERO + Duration::from_secs(11));
        assert!(m.get(PeerId(1)).is_none());
        let now = Instant::ZERO + Duration::from_secs(12);
        assert!(m.depart(PeerId(2), 1, now));
        assert!(!m.depart(PeerId(2), 1, now), "a departure is news once");
        assert!(
            !m.learn(e(2, 1, 100), now),
            "stale gossip does not revive it"
        );
        assert!(m.get(PeerId(2)).is_none());
        assert!(m.learn(e(2, 2, 100), now), "a rejoin with a newer seq does");
        assert!(!m.depart(PeerId(3), 0, now), "unknown members are not news");
    }

    #[test]
    fn candidates_with_room_are_preferred() {
        let mut m = MCache::new(8, PeerId(0));
        let mut full = e(1, 1, 60);
        full.num_partners = 8;
        let mut roomy = e(2, 1, 60);
        roomy.num_partners = 0;
        roomy.max_partners = 16;
        m.learn(full, Instant::ZERO);
        m.learn(roomy, Instant::ZERO);
        let mut rng = Rng::new(4);
        let picks = (0..1700)
            .filter(|_| {
                m.pick_candidate(&mut rng, Instant::ZERO, |_| true)
                    .unwrap()
                    .id
                    == PeerId(2)
            })
            .count();
        // Odds 16 x 2 : 2 (both records have counter 1).
        assert!((1500..1700).contains(&picks), "{picks}");
        assert!(m
            .pick_candidate(&mut rng, Instant::ZERO, |_| false)
            .is_none());
    }

    #[test]
    fn sample_is_bounded_and_ttl_counts_down() {
        let mut m = MCache::new(64, PeerId(0));
        for i in 1..=40 {
            m.learn(e(i, 1, 60), Instant::ZERO);
        }
        let mut rng = Rng::new(1);
        let now = Instant::ZERO + Duration::from_secs(20);
        let s = m.sample(&mut rng, 8, now, |x| x.id.0 % 2 == 0);
        assert_eq!(s.len(), 8);
        assert!(s.iter().all(|x| x.id.0 % 2 == 0 && x.ttl_s == 40));
    }
}
