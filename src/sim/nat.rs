//! Home routers in the simulator: which peers cannot be dialled, what a dial-back and a hole
//! punch meet there.
//!
//! A share of the peers (`--nat-fraction`, drawn per peer from a generator of its own so that
//! the rest of the run draws what it would without NATs) sits behind a router that drops
//! every connection it did not ask for: a dial to such a peer fails after the connect timeout,
//! as a SYN into a NAT does, and a dial-back to it never arrives. Its own dials go out as any
//! peer's. Each such router is "punchable" with probability `--punchable`: two peers behind
//! punchable routers (or one behind a punchable router and one that can be dialled) that
//! start a punch toward each other within [`PUNCH_WINDOW`] get one link, both sides told it
//! is outbound; any other punch fails after the connect timeout. The source is never behind a
//! NAT. Only what the daemon's driver produces goes in: `LinkUp`, `DialFailed`,
//! `DialBackProof` and `DialBackDone`.

use super::{addr_of, index_of, Ev, Sim, SimLink, CONNECT_TIMEOUT};
use crate::proto::node::LateCause;
use crate::proto::rng::Rng;
use crate::proto::wire::PeerId;
use crate::proto::{Duration, Instant, LinkId, PeerAddr};
use std::collections::HashMap;

/// Two punches toward each other meet if they start this close together: the driver retries
/// its connect for a few seconds (the namespace lab's routers keep a SYN's mapping ~2 s).
pub const PUNCH_WINDOW: Duration = Duration::from_secs(2);

/// What stands in front of a peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Router {
    /// Dialled directly (a public address, a forwarded port).
    Open,
    /// A NAT that drops unsolicited connections; `punchable`: it keeps a port's mapping for
    /// the peer's own outgoing SYN (endpoint-independent, port-preserving), so a simultaneous
    /// open gets through.
    Nat { punchable: bool },
}

/// The simulator's NAT state.
pub struct Nat {
    rng: Rng,
    fraction: f64,
    punchable: f64,
    /// By slot.
    routers: Vec<Router>,
    /// Punches waiting for the other side's: (from, to) -> (when it starts, address dialled).
    waiting: HashMap<(u32, u32), (Instant, PeerAddr)>,
    /// Punch attempts (one per side) and those that became a link.
    pub punches: u64,
    pub punches_linked: u64,
    /// Dial-backs carried out, and those that reached the asker.
    pub dial_backs: u64,
    pub dial_backs_arrived: u64,
    /// `COOLSTREAM_SIM_DEBUG=nat`: print each session's class and figures, each miss, and
    /// every peer's partners by class every [`DEBUG_SAMPLE_EVERY`] (see [`Sim::nat_debug_sample`]).
    pub debug: bool,
}

/// How often `COOLSTREAM_SIM_DEBUG=nat` samples every peer's partners.
pub const DEBUG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

impl Nat {
    pub fn new(seed: u64, fraction: f64, punchable: f64) -> Self {
        Nat {
            rng: Rng::new(seed ^ 0x6e61_7421_6e61_7421),
            fraction: fraction.clamp(0.0, 1.0),
            punchable: punchable.clamp(0.0, 1.0),
            routers: Vec::new(),
            waiting: HashMap::new(),
            punches: 0,
            punches_linked: 0,
            dial_backs: 0,
            dial_backs_arrived: 0,
            debug: std::env::var("COOLSTREAM_SIM_DEBUG").is_ok_and(|v| v == "nat"),
        }
    }

    /// Draws the router of a new slot (the source, slot 0, is open).
    pub fn add_slot(&mut self, source: bool) {
        let r = if !source && self.rng.chance(self.fraction) {
            Router::Nat {
                punchable: self.rng.chance(self.punchable),
            }
        } else {
            Router::Open
        };
        self.routers.push(r);
    }

    /// Whether a dial to slot `ix` gets through.
    pub fn dialable(&self, ix: u32) -> bool {
        self.routers
            .get(ix as usize)
            .is_none_or(|r| *r == Router::Open)
    }

    /// The class a diagnostic prints: `open`, `natp` (punchable), `natx` (not).
    fn class(&self, ix: u32) -> &'static str {
        match self.routers.get(ix as usize) {
            Some(Router::Nat { punchable: true }) => "natp",
            Some(Router::Nat { punchable: false }) => "natx",
            _ => "open",
        }
    }

    fn punchable(&self, ix: u32) -> bool {
        match self.routers.get(ix as usize) {
            Some(Router::Nat { punchable }) => *punchable,
            _ => true,
        }
    }

    /// Share of slots that can be dialled (the source excluded).
    pub fn open_fraction(&self) -> f64 {
        let peers = self.routers.len().saturating_sub(1);
        if peers == 0 {
            return 1.0;
        }
        let open = self.routers[1..]
            .iter()
            .filter(|r| **r == Router::Open)
            .count();
        open as f64 / peers as f64
    }
}

impl Sim {
    /// `Output::DialBack`: a connect to `remote` and one frame; the proof reaches a peer that
    /// can be dialled after the handshake and the frame (a round trip and a half).
    pub(super) fn nat_dial_back(&mut self, from: u32, remote: PeerAddr, nonce: u64) {
        self.nat.dial_backs += 1;
        let Some(to) = index_of(remote).filter(|&t| (t as usize) < self.slots.len() && t != from)
        else {
            return;
        };
        let one_way = self.one_way(from, to);
        if !self.nat.dialable(to) || !self.alive(to) {
            // A NAT drops the SYN (a connect timeout); a vanished process is refused.
            let at = if self.nat.dialable(to) {
                self.now + one_way.mul(2)
            } else {
                self.now + CONNECT_TIMEOUT
            };
            let ev = Ev::DialBackDone {
                to: from,
                nonce,
                connected: false,
            };
            self.push(at, ev);
            return;
        }
        self.nat.dial_backs_arrived += 1;
        self.push(self.now + one_way.mul(3), Ev::Proof { to, nonce });
        let ev = Ev::DialBackDone {
            to: from,
            nonce,
            connected: true,
        };
        self.push(self.now + one_way.mul(2), ev);
    }

    /// `Output::Punch`: meets the other side's punch toward us, or waits for it.
    pub(super) fn nat_punch(&mut self, from: u32, remote: PeerAddr, at: Instant) {
        self.nat.punches += 1;
        let at = at.max(self.now);
        let Some(to) = index_of(remote).filter(|&t| (t as usize) < self.slots.len() && t != from)
        else {
            self.push(at + CONNECT_TIMEOUT, Ev::DialFailed { to: from, remote });
            return;
        };
        if let Some((their_at, their_remote)) = self.nat.waiting.remove(&(to, from)) {
            let close = at
                .saturating_since(their_at)
                .max(their_at.saturating_since(at))
                <= PUNCH_WINDOW;
            if close && self.nat.punchable(from) && self.nat.punchable(to) && self.alive(to) {
                let one_way = self.one_way(from, to);
                let up = at.max(their_at) + one_way.mul(2);
                let link = self.new_sim_link(from, to);
                self.nat.punches_linked += 2;
                self.push(
                    up,
                    Ev::LinkUp {
                        to: from,
                        link,
                        remote,
                        outbound: true,
                    },
                );
                self.push(
                    up,
                    Ev::LinkUp {
                        to,
                        link,
                        remote: their_remote,
                        outbound: true,
                    },
                );
            } else {
                self.push(at + CONNECT_TIMEOUT, Ev::DialFailed { to: from, remote });
                self.push(
                    their_at + CONNECT_TIMEOUT,
                    Ev::DialFailed {
                        to,
                        remote: their_remote,
                    },
                );
            }
            return;
        }
        if self.nat.dialable(to) {
            // Nothing to punch through: the SYN reaches a listening socket (an ordinary
            // dial, made at `at`).
            if self.alive(to) && self.nat.punchable(from) {
                let one_way = self.one_way(from, to);
                let link = self.new_sim_link(from, to);
                self.nat.punches_linked += 1;
                self.push(
                    at + one_way.mul(3),
                    Ev::LinkUp {
                        to,
                        link,
                        remote: addr_of(from),
                        outbound: false,
                    },
                );
                self.push(
                    at + one_way.mul(2),
                    Ev::LinkUp {
                        to: from,
                        link,
                        remote,
                        outbound: true,
                    },
                );
            } else {
                self.push(at + CONNECT_TIMEOUT, Ev::DialFailed { to: from, remote });
            }
            return;
        }
        self.nat.waiting.insert((from, to), (at, remote));
        self.push(at + PUNCH_WINDOW, Ev::PunchExpire { from, to });
    }

    /// A punch whose other side never came fails (its connect timed out).
    pub(super) fn nat_punch_expire(&mut self, from: u32, to: u32) {
        if let Some((at, remote)) = self.nat.waiting.remove(&(from, to)) {
            let fail = (at + CONNECT_TIMEOUT).max(self.now);
            self.push(fail, Ev::DialFailed { to: from, remote });
        }
    }

    /// Diagnostic (`COOLSTREAM_SIM_DEBUG=nat`): one line per live peer: `natp t slot class
    /// joined partners open_partners reach`.
    pub(super) fn nat_debug_sample(&self) {
        let by_id: HashMap<PeerId, u32> = (0..self.slots.len() as u32)
            .filter_map(|ix| self.slots[ix as usize].node.as_ref().map(|n| (n.id(), ix)))
            .collect();
        let t = self.now.as_secs_f64();
        for (ix, s) in self.slots.iter().enumerate().skip(1) {
            let Some(n) = s.node.as_ref() else { continue };
            let (mut all, mut open, mut src) = (0, 0, 0);
            for p in n.partner_ids() {
                all += 1;
                match by_id.get(&p) {
                    Some(0) => src += 1,
                    Some(&j) if self.nat.dialable(j) => open += 1,
                    _ => {}
                }
            }
            let reach = match n.reachability().reachable {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            };
            eprintln!(
                "natp {t:.0} {ix} {} {:.1} {all} {open} {src} {reach}",
                self.nat.class(ix as u32),
                s.joined_at.as_secs_f64()
            );
        }
    }

    /// Diagnostic: a miss at slot `ix` (`natmiss t slot class since_join partners seq kind`;
    /// `kind` is `skip`, or the cause of a late segment that paused playback).
    pub(super) fn nat_debug_miss(&self, ix: u32, seq: u32, late: Option<&LateCause>) {
        let kind = match late {
            None => "skip",
            Some(LateCause::InFlight { .. }) => "inflight",
            Some(LateCause::Unrequested { .. }) => "unrequested",
            Some(LateCause::Unheld) => "unheld",
        };
        let s = &self.slots[ix as usize];
        let partners = s.node.as_ref().map_or(0, |n| n.partner_ids().count());
        eprintln!(
            "natmiss {:.1} {ix} {} {:.1} {partners} {seq} {kind}",
            self.now.as_secs_f64(),
            self.nat.class(ix),
            self.now.saturating_since(s.joined_at).as_secs_f64()
        );
    }

    /// Diagnostic: one line per session at the end (`natsess slot class up joined lived
    /// played missed startup reach punches punches_linked links_refused busy_received`).
    pub(super) fn nat_debug_report(&self) {
        for (ix, s) in self.slots.iter().enumerate().skip(1) {
            let (stats, ahead) = match (&s.node, &s.final_stats) {
                (Some(n), _) => (n.stats(), n.segments_ahead(self.now)),
                (None, Some((st, a))) => (st.clone(), *a),
                (None, None) => continue,
            };
            let end = s.left_at.unwrap_or(self.now);
            let rs = s.node.as_ref().map(|n| n.reach_stats()).unwrap_or_default();
            eprintln!(
                "natsess {ix} {} {:.1} {:.1} {:.1} {} {} {:.2} {} {} {} {} {}",
                self.nat.class(ix as u32),
                s.up_factor,
                s.joined_at.as_secs_f64(),
                end.saturating_since(s.joined_at).as_secs_f64(),
                stats.played.saturating_sub(ahead),
                stats.missed,
                stats
                    .first_play_at
                    .map_or(-1.0, |t| t.saturating_since(s.joined_at).as_secs_f64()),
                s.node
                    .as_ref()
                    .map_or("gone", |n| match n.reachability().reachable {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "unknown",
                    }),
                rs.punches,
                rs.punches_linked,
                stats.links_refused,
                stats.busy_received
            );
        }
    }

    fn new_sim_link(&mut self, a: u32, b: u32) -> LinkId {
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let one_way = self.one_way(a, b);
        self.links.insert(
            link.0,
            SimLink {
                a,
                b,
                a_open: true,
                b_open: true,
                last_to_b: Instant::ZERO,
                last_to_a: Instant::ZERO,
                one_way,
            },
        );
        link
    }
}
