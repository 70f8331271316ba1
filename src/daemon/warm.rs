//! A channel's warm view: members of its swarm recently heard of, kept by the box daemon for
//! every channel it carries, so that zapping to a channel dials live members at once.
//!
//! The actor of a channel's node (tuned or standby) shows the view every membership record it
//! receives (an origin's redirect, a deputy's or a gossip's members, a partner rejection's
//! sample); the view keeps the freshest [`WARM_VIEW`] of them, our own nodes excepted. It
//! reads the core's traffic and never changes it: the core keeps its own mCache.

use crate::proto::wire::{Control, MemberEntry};
use crate::proto::{PeerAddr, PeerId};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Members a view holds (a zap dials one; the rest are fallbacks and the core's first sample).
pub const WARM_VIEW: usize = 16;
/// Records older than this are not offered to a zap (a member's record lives 60 s in the core).
pub const WARM_FRESH: Duration = Duration::from_secs(45);
/// Warm members a zap dials at most before the configured bootstrap addresses.
pub const WARM_DIALS: usize = 3;

#[derive(Debug, Default)]
pub struct WarmView {
    entries: Vec<(PeerId, PeerAddr, Instant)>,
    /// Our own nodes on this channel (a standby, then a tuned node): never offered.
    own: Vec<PeerId>,
}

pub type SharedView = Arc<Mutex<WarmView>>;

/// Locks a view; a poisoned lock still holds a usable list of addresses.
pub fn lock(v: &SharedView) -> std::sync::MutexGuard<'_, WarmView> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

impl WarmView {
    /// Marks `id` as one of ours (the last few are remembered: a channel's nodes come and go).
    pub fn add_own(&mut self, id: PeerId) {
        if self.own.len() == 4 {
            self.own.remove(0);
        }
        self.own.push(id);
        self.entries.retain(|(e, _, _)| *e != id);
    }

    /// Takes the membership records out of a control message, if it has any.
    pub fn observe(&mut self, msg: &Control, now: Instant) {
        match msg {
            Control::Redirect { deputy, members } => {
                for e in deputy.iter().chain(members) {
                    self.learn(e, now);
                }
            }
            Control::Members(list) | Control::PartnerReject(list) => {
                for e in list {
                    self.learn(e, now);
                }
            }
            _ => {}
        }
    }

    fn learn(&mut self, e: &MemberEntry, now: Instant) {
        if self.own.contains(&e.id) || e.addr.port() == 0 {
            return;
        }
        if let Some(k) = self.entries.iter().position(|(id, _, _)| *id == e.id) {
            self.entries[k] = (e.id, e.addr, now);
            return;
        }
        if self.entries.len() == WARM_VIEW {
            // Full: the stalest record goes.
            if let Some(k) = (0..self.entries.len()).min_by_key(|&k| self.entries[k].2) {
                self.entries.swap_remove(k);
            }
        }
        self.entries.push((e.id, e.addr, now));
    }

    /// Members heard of within [`WARM_FRESH`], freshest first, at most `n`.
    pub fn fresh(&self, now: Instant, n: usize) -> Vec<PeerAddr> {
        let mut live: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, _, at)| now.saturating_duration_since(*at) <= WARM_FRESH)
            .collect();
        live.sort_by_key(|(_, _, at)| std::cmp::Reverse(*at));
        live.into_iter().take(n).map(|(_, a, _)| *a).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, port: u16) -> MemberEntry {
        MemberEntry {
            id: PeerId(id),
            addr: PeerAddr::V4([10, 0, 0, 1], port),
            seq: 0,
            num_partners: 0,
            max_partners: 8,
            ttl_s: 60,
        }
    }

    #[test]
    fn keeps_the_freshest_bounded_and_skips_our_own() {
        let t0 = Instant::now();
        let mut v = WarmView::default();
        v.add_own(PeerId(7));
        let list: Vec<_> = (0..40).map(|i| entry(i, 1000 + i as u16)).collect();
        v.observe(&Control::Members(list[..20].to_vec()), t0);
        v.observe(
            &Control::Redirect {
                deputy: Some(entry(100, 5000)),
                members: list[20..].to_vec(),
            },
            t0 + Duration::from_secs(10),
        );
        assert_eq!(v.len(), WARM_VIEW);
        let fresh = v.fresh(t0 + Duration::from_secs(11), WARM_DIALS);
        assert_eq!(fresh.len(), WARM_DIALS);
        assert!(fresh.iter().all(|a| a.port() >= 1020));
        assert!(!v.entries.iter().any(|(id, _, _)| *id == PeerId(7)));
        // Too old: nothing offered.
        assert!(v
            .fresh(t0 + WARM_FRESH + Duration::from_secs(11), 4)
            .is_empty());
        // Other messages carry no members.
        v.observe(&Control::Join, t0);
        assert_eq!(v.len(), WARM_VIEW);
    }
}
