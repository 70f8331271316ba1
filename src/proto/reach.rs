//! Reachability: whether this node can be dialled, how it finds out (what its driver knows, a
//! dial-back by a partner), and the hole-punching introductions that let two nodes that cannot
//! be dialled meet.
//!
//! This module owns the node's own reachability ([`ReachState`]), the bounded budgets for the
//! dial-backs and introductions a node does for others ([`Introducer`]), and the policy that
//! reads membership records by reachability ([`dialable`], [`hand_out_rank`]). `node` wires it
//! to links and messages; the driver does the socket work (`Output::DialBack`,
//! `Output::Punch`).
//!
//! - A node learns its reachability from its driver (`Input::Reachability`: a router's port
//!   mapping, a configured public address, its global IPv6 address) or, when nothing says,
//!   from a dial-back: it asks a partner (`DialBackRequest { nonce, port }`); the partner
//!   answers with the address it sees the link come from (`DialBackAnswer`) and, within its
//!   budget, connects to that IP at `port` and sends `DialBackProof { nonce }` as the only
//!   frame. The proof (`Input::DialBackProof`) makes the node reachable; no proof within
//!   [`DIAL_BACK_WAIT`] makes it unreachable, re-checked every [`RECHECK_EVERY`].
//! - A dial-back only ever goes to the IP the request came from, at most
//!   [`DIAL_BACKS_PER_PERIOD`] per [`BUDGET_PERIOD`] in all and one per link per period: it
//!   cannot be aimed at a third party, and a flood of requests costs a few connects.
//! - A node's global IPv6 address is routed, but most home routers drop what comes in
//!   unasked: its record carries it only once a partner dialled it
//!   (`DialBackRequestV6 { nonce, addr }`, asked on another link than an IPv4 one, answered
//!   the same way). Its links are mostly IPv4, which cannot show the address, so the
//!   request names it; the answerer dials the link's own IP when the link is IPv6, else the
//!   named address, only for a partner, only if it has IPv6 itself, and within the same
//!   budgets. A named address could be a third party's, as an address in a membership
//!   record can: one connect and one 14-byte frame per link and period.
//! - A node that cannot be dialled and wants partners asks its partners for introductions
//!   (`IntroRequest`, at most every [`INTRO_REQUEST_EVERY`]). A partner that holds two such
//!   requests from different peers introduces them to each other (`Introduce`), both at the
//!   same agreed moment; each dials the other from its listen port (TCP simultaneous open).
//!   Introductions are bounded per period (made and taken), and a pair is introduced at most
//!   once per [`REINTRODUCE_AFTER`].
//! - What others dial a node by (its reachability, advertised port, IPv6 address) is
//!   announced to its partners the moment it changes to something dialable, not at the next
//!   gossip round.

use super::bans::Budget;
use super::node::LinkId;
use super::time::{Duration, Instant};
use super::wire::{MemberEntry, PeerAddr, PeerId, Reach};

/// How a driver (or the node itself) found out its reachability.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReachVia {
    /// The router forwards the port (UPnP-IGD, PCP, NAT-PMP).
    PortMapping,
    /// A partner dialled us back (or did not, in time).
    DialBack,
    /// The operator says so (a public source, a box in a DMZ), or the listen address is
    /// itself public.
    Config,
}

/// What a node knows of its own reachability, for its driver's status and stats.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReachStatus {
    /// Whether its advertised (IPv4) address can be dialled; `None` while unknown.
    pub reachable: Option<bool>,
    /// Its external address: the router's mapping, else what a partner sees it come from.
    pub external: Option<PeerAddr>,
    /// Its global IPv6 address (it dials members' IPv6 addresses from it).
    pub v6: Option<PeerAddr>,
    /// Whether that address can be dialled: a home router routes IPv6 but most filter what
    /// comes in unasked, so the record carries it only once a partner dialled it (`None`
    /// while unknown).
    pub v6_open: Option<bool>,
    /// How `reachable` was found out.
    pub via: Option<ReachVia>,
    /// The address the last dial-back answer said our link came from.
    pub observed: Option<PeerAddr>,
}

/// Counters of the reachability work (stats, the simulator's figures).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReachStats {
    /// Dial-backs we asked for, that proved us reachable, and that timed out.
    pub dial_backs_asked: u64,
    pub dial_backs_proved: u64,
    pub dial_backs_timed_out: u64,
    /// Dial-back requests we carried out for others, and refused (budget spent).
    pub dial_backs_done: u64,
    pub dial_backs_refused: u64,
    /// Introductions we made (pairs), and introductions we acted on.
    pub introductions_made: u64,
    pub introductions_taken: u64,
    /// Punches we started, and those that became a link.
    pub punches: u64,
    pub punches_linked: u64,
}

/// How long a dial-back may take before the asker counts itself unreachable: the driver's
/// connect timeout (3 s) and a round trip and a half of 300 ms. (2 s, which a SYN lost once
/// still meets, marked undialable peers sooner and cost the flash crowd of 300 churn peers
/// 0.016 of continuity on seeds 1 and 2: they sought more partners while the swarm formed.)
pub const DIAL_BACK_WAIT: Duration = Duration::from_millis(3500);
/// An unreachable (or unproven) node asks again this often: a router may have been fixed, a
/// mapping made by hand.
pub const RECHECK_EVERY: Duration = Duration::from_secs(300);
/// A node refused a dial-back (the answerer's budget was spent) asks another partner after
/// this long.
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(2);
/// Period of every budget below.
pub const BUDGET_PERIOD: Duration = Duration::from_secs(10);
/// Dial-backs a node carries out for others per period: a source answering a joining crowd
/// proves 10 a second, each a TCP connect and one 14-byte frame. Each asks for its own link
/// (a connection and a hello): a dial-back costs the asker as much as the answerer.
pub const DIAL_BACKS_PER_PERIOD: u32 = 100;
/// Dial-back requests answered per link per period (one is all an honest asker needs).
pub const DIAL_BACKS_PER_LINK: u32 = 1;
/// Introductions (pairs) a node makes per period.
pub const INTRODUCTIONS_PER_PERIOD: u32 = 16;
/// Introductions a node acts on per period (each starts a punch).
pub const INTRODUCTIONS_TAKEN_PER_PERIOD: u32 = 8;
/// An undialable node that wants partners asks for introductions this often.
pub const INTRO_REQUEST_EVERY: Duration = Duration::from_secs(2);
/// Partners asked per round of introduction requests.
pub const INTRO_REQUEST_FANOUT: usize = 2;
/// Introduction requests an introducer holds (from different peers) while it waits for a
/// second one to pair with; one older than [`SEEKER_FRESH`] is stale.
pub const MAX_SEEKERS: usize = 16;
pub const SEEKER_FRESH: Duration = Duration::from_secs(6);
/// Pairs introduced lately, remembered so as not to introduce them again.
pub const MAX_RECENT_PAIRS: usize = 64;
pub const REINTRODUCE_AFTER: Duration = Duration::from_secs(120);
/// Added to the longer one-way delay of the two introduced links: the punch starts after
/// both introductions have arrived, whatever the jitter.
pub const PUNCH_MARGIN: Duration = Duration::from_millis(250);

/// A dial-back asked for.
#[derive(Clone, Copy, Debug)]
struct Pending {
    nonce: u64,
    link: LinkId,
    at: Instant,
    /// The answer said a dial-back is on its way: only then does a silence mean we cannot
    /// be dialled.
    dialing: bool,
}

/// A node's own reachability, and the dial-back it is waiting for.
#[derive(Clone, Debug)]
pub struct ReachState {
    status: ReachStatus,
    /// The driver's word (a port mapping, configuration): a dial-back does not overrule it.
    from_driver: bool,
    /// The dial-back we wait for.
    pending: Option<Pending>,
    /// No dial-back is asked before this (after a refusal, an answer, a timeout).
    next_ask: Instant,
    /// The same for our IPv6 address, asked on another link than `pending`'s (an answer
    /// does not name its request).
    pending6: Option<Pending>,
    next_ask6: Instant,
    next_intro_request: Instant,
    pub stats: ReachStats,
}

impl ReachState {
    pub fn new(now: Instant) -> Self {
        ReachState {
            status: ReachStatus::default(),
            from_driver: false,
            pending: None,
            next_ask: now,
            pending6: None,
            next_ask6: now,
            next_intro_request: now,
            stats: ReachStats::default(),
        }
    }

    pub fn status(&self) -> ReachStatus {
        self.status
    }

    /// What our own membership record says of us.
    pub fn reach(&self) -> Reach {
        match self.status.reachable {
            None => Reach::Unknown,
            Some(true) => Reach::Reachable,
            Some(false) => Reach::Unreachable,
        }
    }

    /// Our global IPv6 address, if the driver found one: we may dial members' IPv6
    /// addresses.
    pub fn v6(&self) -> Option<PeerAddr> {
        self.status.v6
    }

    /// Our IPv6 address as our record gives it: once a dial-back proved it can be dialled.
    pub fn advertised_v6(&self) -> Option<PeerAddr> {
        self.status.v6.filter(|_| self.status.v6_open == Some(true))
    }

    /// Our router's external IPv4 address, when we know we sit behind one: it maps a port
    /// for us, or we cannot be dialled and a partner saw us come from it. A member
    /// advertised at that IP is behind the same router, and a home router does not loop a
    /// packet back to its own WAN address ([`dialable`], [`Introducer::on_request`]). A
    /// node dialled back at its observed address may be a public host (or several nodes on
    /// one host, loopback): it filters nothing.
    pub fn router_ip(&self) -> Option<PeerAddr> {
        let behind =
            self.status.via == Some(ReachVia::PortMapping) || self.status.reachable == Some(false);
        self.status
            .external
            .filter(|e| behind && matches!(e, PeerAddr::V4(..)))
    }

    /// The port others should dial on our advertised IPv4 address: the router's external
    /// port when it forwards one.
    pub fn advertised_port(&self, listen_port: u16) -> u16 {
        match (self.status.via, self.status.external) {
            (Some(ReachVia::PortMapping), Some(e)) if e.port() != 0 => e.port(),
            _ => listen_port,
        }
    }

    /// The driver's word. `reachable: None` leaves what is known (a mapping that failed says
    /// nothing about a public address); `external` and `v6` replace what was known when given
    /// (a v6 address that is not global unicast is ignored).
    pub fn on_driver(
        &mut self,
        reachable: Option<bool>,
        external: Option<PeerAddr>,
        v6: Option<PeerAddr>,
        via: ReachVia,
    ) {
        if let Some(r) = reachable {
            self.status.reachable = Some(r);
            self.status.via = Some(via);
            self.from_driver = via != ReachVia::DialBack;
            self.pending = None;
        }
        if let Some(e) = external.filter(|e| e.port() != 0) {
            self.status.external = Some(e);
        }
        if let Some(a) = v6 {
            let a = a.is_global_v6().then_some(a);
            if a != self.status.v6 {
                // A new address is proved anew.
                self.status.v6 = a;
                self.status.v6_open = None;
                self.pending6 = None;
            }
        }
    }

    /// Whether a dial-back should be asked for now: nothing (driver, proof) settled it, none
    /// is pending, and the last one is old enough.
    pub fn wants_dial_back(&self, now: Instant) -> bool {
        !self.from_driver && self.pending.is_none() && now >= self.next_ask
    }

    /// Starts a dial-back on `link`; the caller sends `DialBackRequest { nonce, port }`.
    pub fn ask(&mut self, now: Instant, link: LinkId, nonce: u64) {
        self.pending = Some(Pending {
            nonce,
            link,
            at: now,
            dialing: false,
        });
        self.stats.dial_backs_asked += 1;
        // Asked again at the recheck, whatever the outcome (a timeout sets it too).
        self.next_ask = now + RECHECK_EVERY;
    }

    /// Whether a dial-back of our IPv6 address should be asked for now: we have one, none
    /// is pending, and the last one is old enough (an address proved open is re-checked
    /// as an IPv4 one is).
    pub fn wants_dial_back6(&self, now: Instant) -> bool {
        self.status.v6.is_some() && self.pending6.is_none() && now >= self.next_ask6
    }

    /// The link a dial-back of our IPv4 address waits on: a dial-back of our IPv6 address
    /// is asked on another.
    pub fn pending_link(&self) -> Option<LinkId> {
        self.pending.map(|p| p.link)
    }

    /// Starts a dial-back of our IPv6 address on `link`; the caller sends
    /// `DialBackRequestV6 { nonce, addr }`.
    pub fn ask6(&mut self, now: Instant, link: LinkId, nonce: u64) {
        self.pending6 = Some(Pending {
            nonce,
            link,
            at: now,
            dialing: false,
        });
        self.stats.dial_backs_asked += 1;
        self.next_ask6 = now + RECHECK_EVERY;
    }

    /// The answer to our request on `link`.
    pub fn on_answer(&mut self, now: Instant, link: LinkId, observed: PeerAddr, dialing: bool) {
        if let Some(p) = self.pending6.as_mut().filter(|p| p.link == link) {
            p.dialing = dialing;
            if !dialing {
                // The answerer has no IPv6 or no budget: another partner, soon.
                self.pending6 = None;
                self.next_ask6 = now + ASK_AGAIN_AFTER;
            }
            return;
        }
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if p.link != link {
            return;
        }
        p.dialing = dialing;
        self.status.observed = Some(observed);
        if self.status.external.is_none() || self.status.via != Some(ReachVia::PortMapping) {
            self.status.external = Some(observed);
        }
        if !dialing {
            self.pending = None;
            self.next_ask = now + ASK_AGAIN_AFTER;
        }
    }

    /// A dial-back proof arrived; true if it was the one we wait for (we are reachable).
    pub fn on_proof(&mut self, nonce: u64) -> bool {
        if self.pending6.is_some_and(|p| p.nonce == nonce) {
            self.pending6 = None;
            self.stats.dial_backs_proved += 1;
            self.status.v6_open = Some(true);
            return true;
        }
        match self.pending {
            Some(p) if p.nonce == nonce => {
                self.pending = None;
                self.stats.dial_backs_proved += 1;
                if !self.from_driver {
                    self.status.reachable = Some(true);
                    self.status.via = Some(ReachVia::DialBack);
                }
                true
            }
            _ => false,
        }
    }

    /// The link a pending dial-back was asked on went down before it was answered: ask
    /// another (one already on its way is still waited for).
    pub fn on_link_down(&mut self, now: Instant, link: LinkId) {
        if self.pending.is_some_and(|p| p.link == link && !p.dialing) {
            self.pending = None;
            self.next_ask = now;
        }
        if self.pending6.is_some_and(|p| p.link == link && !p.dialing) {
            self.pending6 = None;
            self.next_ask6 = now;
        }
    }

    /// Time passes: a dial-back on its way and not proved within [`DIAL_BACK_WAIT`] makes us
    /// unreachable; a request never answered is asked again elsewhere.
    pub fn tick(&mut self, now: Instant) {
        if let Some(p) = self.pending6 {
            if now.saturating_since(p.at) >= DIAL_BACK_WAIT {
                self.pending6 = None;
                if p.dialing {
                    self.stats.dial_backs_timed_out += 1;
                    self.status.v6_open = Some(false);
                } else {
                    self.next_ask6 = now + ASK_AGAIN_AFTER;
                }
            }
        }
        let Some(p) = self.pending else {
            return;
        };
        if now.saturating_since(p.at) < DIAL_BACK_WAIT {
            return;
        }
        self.pending = None;
        if !p.dialing {
            self.next_ask = now + ASK_AGAIN_AFTER;
            return;
        }
        self.stats.dial_backs_timed_out += 1;
        if !self.from_driver {
            self.status.reachable = Some(false);
            self.status.via = Some(ReachVia::DialBack);
        }
    }

    /// Whether to ask partners for introductions now (and starts the wait for the next).
    pub fn wants_introductions(&mut self, now: Instant, partners: usize, target: usize) -> bool {
        if self.status.reachable != Some(false)
            || self.advertised_v6().is_some()
            || partners >= target
            || now < self.next_intro_request
        {
            return false;
        }
        self.next_intro_request = now + INTRO_REQUEST_EVERY;
        true
    }
}

/// A dial-back we carried out.
#[derive(Clone, Copy, Debug)]
struct Dialled {
    nonce: u64,
    id: PeerId,
    at: Instant,
    held: Option<MemberEntry>,
}

/// An introduction request waiting for a second one.
#[derive(Clone, Copy, Debug)]
struct Seeker {
    link: LinkId,
    id: PeerId,
    /// Where its link comes from: two seekers at one IP are behind one router, which
    /// would not loop their punches back to its own address.
    from: PeerAddr,
    at: Instant,
}

/// What a node does for others, bounded: dial-backs and introductions.
#[derive(Clone, Debug)]
pub struct Introducer {
    dial_backs: Budget,
    /// Links whose request was carried out this period, and when.
    answered: Vec<(LinkId, Instant)>,
    made: Budget,
    taken: Budget,
    /// Dial-backs we carried out and whose outcome the driver may report: nonce, asker,
    /// when, and the asker's record held back until the outcome says how to hand it out.
    /// At most [`DIAL_BACKS_PER_PERIOD`].
    dialled: Vec<Dialled>,
    /// Introduction requests waiting for a partner to pair with.
    seekers: Vec<Seeker>,
    /// Pairs introduced lately (smaller id first), and when.
    recent: Vec<(PeerId, PeerId, Instant)>,
}

impl Introducer {
    pub fn new(now: Instant) -> Self {
        Introducer {
            dial_backs: Budget::new(now),
            answered: Vec::new(),
            dialled: Vec::new(),
            made: Budget::new(now),
            taken: Budget::new(now),
            seekers: Vec::new(),
            recent: Vec::new(),
        }
    }

    /// Remembers a dial-back to `id` under `nonce`, for its outcome.
    pub fn dialled(&mut self, now: Instant, nonce: u64, id: PeerId) {
        if self.dialled.len() >= DIAL_BACKS_PER_PERIOD as usize {
            self.dialled.remove(0);
        }
        self.dialled.push(Dialled {
            nonce,
            id,
            at: now,
            held: None,
        });
    }

    /// Holds `rec` (a joiner's record, of unknown reach) until the dial-back to its member
    /// tells whether it can be dialled; gives it back if no dial-back to it is under way.
    pub fn hold(&mut self, rec: MemberEntry) -> Result<(), MemberEntry> {
        match self.dialled.iter_mut().find(|d| d.id == rec.id) {
            Some(d) => {
                d.held = Some(rec);
                Ok(())
            }
            None => Err(rec),
        }
    }

    /// A dial-back of ours with `nonce` is done: the peer it went to, and the record held
    /// for it (once).
    pub fn dial_back_done(&mut self, nonce: u64) -> Option<(PeerId, Option<MemberEntry>)> {
        let k = self.dialled.iter().position(|d| d.nonce == nonce)?;
        let d = self.dialled.swap_remove(k);
        Some((d.id, d.held))
    }

    /// Dial-backs whose outcome the driver did not report within [`DIAL_BACK_WAIT`] (a
    /// driver that does not say): the records held for them, to be learned as they are.
    pub fn unreported(&mut self, now: Instant) -> Vec<MemberEntry> {
        let mut out = Vec::new();
        self.dialled.retain(|d| {
            let keep = now.saturating_since(d.at) < DIAL_BACK_WAIT;
            if !keep {
                out.extend(d.held);
            }
            keep
        });
        out
    }

    /// Whether to carry out a dial-back for a request on `link`: one per link and
    /// [`DIAL_BACKS_PER_PERIOD`] in all per period.
    pub fn may_dial_back(&mut self, now: Instant, link: LinkId) -> bool {
        self.answered
            .retain(|a| now.saturating_since(a.1) < BUDGET_PERIOD);
        let per_link = self.answered.iter().filter(|a| a.0 == link).count();
        if per_link as u32 >= DIAL_BACKS_PER_LINK
            || !self
                .dial_backs
                .take(now, DIAL_BACKS_PER_PERIOD, BUDGET_PERIOD)
        {
            return false;
        }
        // At most DIAL_BACKS_PER_PERIOD entries are younger than the period.
        self.answered.push((link, now));
        true
    }

    /// Whether to act on an introduction.
    pub fn may_take(&mut self, now: Instant) -> bool {
        self.taken
            .take(now, INTRODUCTIONS_TAKEN_PER_PERIOD, BUDGET_PERIOD)
    }

    /// A partner on `link` (peer `id`, its link coming from `from`) asks for an
    /// introduction. Returns the link of a waiting seeker to introduce it to, if there is one
    /// at another IP, not introduced to it lately, and the budget allows; otherwise it waits
    /// (at most [`MAX_SEEKERS`], the oldest dropped).
    pub fn on_request(
        &mut self,
        now: Instant,
        link: LinkId,
        id: PeerId,
        from: PeerAddr,
    ) -> Option<LinkId> {
        self.seekers
            .retain(|s| now.saturating_since(s.at) < SEEKER_FRESH && s.link != link && s.id != id);
        self.recent
            .retain(|r| now.saturating_since(r.2) < REINTRODUCE_AFTER);
        let pair = |a: PeerId, b: PeerId| if a < b { (a, b) } else { (b, a) };
        let recent = &self.recent;
        let found = self.seekers.iter().position(|s| {
            let (a, b) = pair(s.id, id);
            !s.from.same_ip(&from) && !recent.iter().any(|r| r.0 == a && r.1 == b)
        });
        if let Some(k) = found {
            if self.made.take(now, INTRODUCTIONS_PER_PERIOD, BUDGET_PERIOD) {
                let s = self.seekers.remove(k);
                let (a, b) = pair(s.id, id);
                if self.recent.len() >= MAX_RECENT_PAIRS {
                    self.recent.remove(0);
                }
                self.recent.push((a, b, now));
                return Some(s.link);
            }
        }
        if self.seekers.len() >= MAX_SEEKERS {
            self.seekers.remove(0);
        }
        self.seekers.push(Seeker {
            link,
            id,
            from,
            at: now,
        });
        None
    }

    /// Forgets a link's request and count (it closed).
    pub fn on_link_down(&mut self, link: LinkId) {
        self.seekers.retain(|s| s.link != link);
    }

    pub fn seekers(&self) -> usize {
        self.seekers.len()
    }
}

/// The address to dial a member at, if it may be dialled: its v6 address when both sides
/// have IPv6, else its advertised address unless its record says it cannot be dialled or
/// it is at `router_ip`, the external IP of the router we sit behind
/// ([`ReachState::router_ip`]): our router does not loop a dial back to its own address.
pub fn dialable(e: &MemberEntry, own_v6: bool, router_ip: Option<PeerAddr>) -> Option<PeerAddr> {
    match (own_v6, e.v6) {
        (true, Some(a)) => Some(a),
        _ if e.reach == Reach::Unreachable => None,
        _ if router_ip.is_some_and(|r| r.same_ip(&e.addr)) => None,
        _ => Some(e.addr),
    }
}

/// Order in which records are handed out (a redirect, a deputy's sample, a rejection): those
/// that can be dialled first, unproven ones next, undialable ones last. Lower is earlier.
pub fn hand_out_rank(e: &MemberEntry) -> u8 {
    match (e.reach, e.v6.is_some()) {
        (Reach::Reachable, _) => 0,
        (_, true) => 1,
        (Reach::Unknown, false) => 2,
        (Reach::Unreachable, false) => 3,
    }
}

/// The one-way delays of two links an introducer joins, as the wait it asks each side for:
/// both punch at the same moment, [`PUNCH_MARGIN`] after the later introduction arrives.
pub fn punch_delays(one_way_a: Duration, one_way_b: Duration) -> (u16, u16) {
    let at = one_way_a.max(one_way_b) + PUNCH_MARGIN;
    let ms = |d: Duration| {
        (at.saturating_sub(d).as_micros() / 1000).min(super::wire::MAX_PUNCH_DELAY_MS as u64) as u16
    };
    (ms(one_way_a), ms(one_way_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distinct public address per peer number.
    fn ip(k: u64) -> PeerAddr {
        PeerAddr::V4([198, 18, (k >> 8) as u8, k as u8], 40_000)
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn a_dial_back_proves_reachable_and_a_silence_unreachable() {
        let mut r = ReachState::new(at(0));
        assert_eq!(r.reach(), Reach::Unknown);
        assert!(r.wants_dial_back(at(0)));
        r.ask(at(0), LinkId(1), 77);
        assert!(!r.wants_dial_back(at(10)));
        assert!(!r.on_proof(78), "a wrong nonce proves nothing");
        assert!(r.on_proof(77));
        assert_eq!(r.reach(), Reach::Reachable);
        assert!(!r.on_proof(77), "a proof counts once");

        let mut r = ReachState::new(at(0));
        r.ask(at(0), LinkId(1), 5);
        r.on_answer(
            at(40),
            LinkId(1),
            PeerAddr::V4([198, 51, 100, 2], 7000),
            true,
        );
        r.on_link_down(at(50), LinkId(1));
        r.tick(at(0) + (DIAL_BACK_WAIT - Duration::from_millis(1)));
        assert_eq!(r.reach(), Reach::Unknown);
        r.tick(at(0) + DIAL_BACK_WAIT);
        assert_eq!(r.reach(), Reach::Unreachable);
        assert_eq!(r.stats.dial_backs_timed_out, 1);
        assert!(!r.wants_dial_back(at(6_000)));
        assert!(r.wants_dial_back(at(0) + RECHECK_EVERY));
    }

    #[test]
    fn a_refused_dial_back_is_asked_again_elsewhere_and_the_answer_tells_our_address() {
        let mut r = ReachState::new(at(0));
        r.ask(at(0), LinkId(3), 9);
        let seen = PeerAddr::V4([198, 51, 100, 2], 40000);
        r.on_answer(at(50), LinkId(4), seen, false);
        assert!(
            r.status().observed.is_none(),
            "an answer on another link is ignored"
        );
        r.on_answer(at(50), LinkId(3), seen, false);
        assert_eq!(r.status().external, Some(seen));
        assert!(r.wants_dial_back(at(50) + ASK_AGAIN_AFTER));
        r.tick(at(60_000));
        assert_eq!(r.reach(), Reach::Unknown, "no timeout for a refusal");
        // Never answered: asked again, not counted unreachable.
        r.ask(at(60_000), LinkId(5), 10);
        r.tick(at(60_000) + DIAL_BACK_WAIT);
        assert_eq!(r.reach(), Reach::Unknown);
        assert!(r.wants_dial_back(at(60_000) + DIAL_BACK_WAIT + ASK_AGAIN_AFTER));
        // The link goes before the answer: asked again at once.
        let mut r = ReachState::new(at(0));
        r.ask(at(0), LinkId(1), 11);
        r.on_link_down(at(10), LinkId(1));
        assert!(r.wants_dial_back(at(10)));
    }

    #[test]
    fn the_drivers_word_stands_and_a_mapped_port_is_advertised() {
        let mut r = ReachState::new(at(0));
        let ext = PeerAddr::V4([203, 0, 113, 9], 17000);
        r.on_driver(Some(true), Some(ext), None, ReachVia::PortMapping);
        assert_eq!(r.reach(), Reach::Reachable);
        assert_eq!(r.advertised_port(7000), 17000);
        assert!(!r.wants_dial_back(at(0)));
        // A v6 address that is not global unicast is not advertised.
        r.on_driver(
            None,
            None,
            Some(PeerAddr::V6(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                7000,
            )),
            ReachVia::Config,
        );
        assert_eq!(r.v6(), None);
        assert_eq!(
            r.reach(),
            Reach::Reachable,
            "None leaves reachability as it was"
        );
        let g = PeerAddr::V6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            7000,
        );
        r.on_driver(None, None, Some(g), ReachVia::Config);
        assert_eq!(r.v6(), Some(g));
    }

    #[test]
    fn dial_backs_are_bounded_per_link_and_in_all() {
        let mut i = Introducer::new(at(0));
        assert!(i.may_dial_back(at(0), LinkId(1)));
        assert!(
            !i.may_dial_back(at(1), LinkId(1)),
            "one per link per period"
        );
        let mut done = 1;
        for k in 2..1000 {
            if i.may_dial_back(at(2), LinkId(k)) {
                done += 1;
            }
        }
        assert_eq!(done, DIAL_BACKS_PER_PERIOD);
        assert!(i.answered.len() <= DIAL_BACKS_PER_PERIOD as usize);
        let later = at(0) + BUDGET_PERIOD;
        assert!(i.may_dial_back(later, LinkId(1)), "the next period");
    }

    #[test]
    fn a_joiners_record_waits_for_its_dial_back() {
        let mut i = Introducer::new(at(0));
        let rec = MemberEntry {
            id: PeerId(4),
            addr: PeerAddr::V4([203, 0, 113, 4], 7000),
            seq: 0,
            num_partners: 0,
            max_partners: 8,
            ttl_s: 60,
            reach: Reach::Unknown,
            v6: None,
        };
        assert!(i.hold(rec).is_err(), "no dial-back to it: learned at once");
        i.dialled(at(0), 99, PeerId(4));
        assert!(i.hold(rec).is_ok());
        assert_eq!(i.dial_back_done(98), None);
        assert_eq!(i.dial_back_done(99), Some((PeerId(4), Some(rec))));
        assert_eq!(i.dial_back_done(99), None, "once");
        // Unreported: given back after the wait.
        i.dialled(at(0), 7, PeerId(4));
        i.hold(rec).unwrap();
        assert!(i.unreported(at(100)).is_empty());
        assert_eq!(i.unreported(at(0) + DIAL_BACK_WAIT), vec![rec]);
        for k in 0..1000 {
            i.dialled(at(1), k, PeerId(k));
        }
        assert!(i.dialled.len() <= DIAL_BACKS_PER_PERIOD as usize);
    }

    #[test]
    fn introductions_pair_two_seekers_once_and_stay_bounded() {
        let mut i = Introducer::new(at(0));
        assert_eq!(i.on_request(at(0), LinkId(1), PeerId(10), ip(10)), None);
        assert_eq!(
            i.on_request(at(0), LinkId(1), PeerId(10), ip(10)),
            None,
            "one seat per peer"
        );
        assert_eq!(i.seekers(), 1);
        assert_eq!(
            i.on_request(at(1), LinkId(2), PeerId(20), ip(20)),
            Some(LinkId(1))
        );
        assert_eq!(i.seekers(), 0);
        // The same pair again, soon: not introduced twice.
        assert_eq!(i.on_request(at(2), LinkId(1), PeerId(10), ip(10)), None);
        assert_eq!(i.on_request(at(3), LinkId(2), PeerId(20), ip(20)), None);
        // Many seekers: the table stays bounded.
        for k in 0..100u64 {
            let _ = i.on_request(at(4), LinkId(100 + k), PeerId(100 + k), ip(100 + k));
            assert!(i.seekers() <= MAX_SEEKERS);
        }
        // Introductions per period are bounded.
        let mut j = Introducer::new(at(0));
        let mut made = 0;
        for k in 0..100u64 {
            if j.on_request(at(5), LinkId(k), PeerId(k), ip(k)).is_some() {
                made += 1;
            }
        }
        assert_eq!(made, INTRODUCTIONS_PER_PERIOD);
    }

    #[test]
    fn two_seekers_at_one_ip_are_not_introduced_to_each_other() {
        let mut i = Introducer::new(at(0));
        let router = PeerAddr::V4([203, 0, 113, 50], 40_001);
        assert_eq!(i.on_request(at(0), LinkId(1), PeerId(10), router), None);
        // Behind the same router (another port): waits rather than being paired.
        let same = router.with_port(40_002);
        assert_eq!(i.on_request(at(0), LinkId(2), PeerId(20), same), None);
        assert_eq!(i.seekers(), 2);
        // A seeker elsewhere is paired with the first of them.
        assert_eq!(
            i.on_request(at(1), LinkId(3), PeerId(30), ip(30)),
            Some(LinkId(1))
        );
    }

    #[test]
    fn a_member_at_our_routers_ip_is_not_dialled_unless_both_have_v6() {
        let wan = PeerAddr::V4([203, 0, 113, 50], 7001);
        let mut e = MemberEntry {
            id: PeerId(1),
            addr: wan.with_port(7002),
            seq: 1,
            num_partners: 0,
            max_partners: 8,
            ttl_s: 60,
            reach: Reach::Reachable,
            v6: None,
        };
        assert_eq!(dialable(&e, false, Some(wan)), None);
        assert_eq!(dialable(&e, false, None), Some(e.addr));
        assert_eq!(
            dialable(&e, false, Some(PeerAddr::V4([203, 0, 113, 51], 7001))),
            Some(e.addr)
        );
        let v6 = PeerAddr::V6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            7000,
        );
        e.v6 = Some(v6);
        assert_eq!(dialable(&e, true, Some(wan)), Some(v6));
        assert_eq!(dialable(&e, false, Some(wan)), None);

        // Which IP counts as our router's: a mapping's, or the observed one of a node that
        // cannot be dialled; not that of a node proved reachable by a dial-back (a public
        // host, or several nodes on one host).
        let mut r = ReachState::new(at(0));
        assert_eq!(r.router_ip(), None);
        r.on_driver(Some(true), Some(wan), None, ReachVia::PortMapping);
        assert_eq!(r.router_ip(), Some(wan));
        let mut r = ReachState::new(at(0));
        r.ask(at(0), LinkId(1), 9);
        r.on_answer(at(0), LinkId(1), wan, true);
        assert_eq!(r.router_ip(), None, "unknown yet");
        r.tick(at(0) + DIAL_BACK_WAIT);
        assert_eq!(r.status().reachable, Some(false));
        assert_eq!(r.router_ip(), Some(wan));
        let mut r = ReachState::new(at(0));
        r.ask(at(0), LinkId(1), 9);
        r.on_answer(at(0), LinkId(1), wan, true);
        assert!(r.on_proof(9));
        assert_eq!(r.router_ip(), None);
    }

    #[test]
    fn undialable_records_are_not_dialled_unless_both_have_v6() {
        let v6 = PeerAddr::V6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            7000,
        );
        let mut e = MemberEntry {
            id: PeerId(1),
            addr: PeerAddr::V4([203, 0, 113, 1], 7000),
            seq: 1,
            num_partners: 0,
            max_partners: 8,
            ttl_s: 60,
            reach: Reach::Unreachable,
            v6: None,
        };
        assert_eq!(dialable(&e, true, None), None);
        e.v6 = Some(v6);
        assert_eq!(dialable(&e, false, None), None);
        assert_eq!(dialable(&e, true, None), Some(v6));
        e.reach = Reach::Unknown;
        assert_eq!(dialable(&e, false, None), Some(e.addr));
        assert!(
            hand_out_rank(&e)
                < hand_out_rank(&MemberEntry {
                    v6: None,
                    reach: Reach::Unreachable,
                    ..e
                })
        );
    }

    #[test]
    fn both_sides_of_an_introduction_punch_at_the_same_moment() {
        let (a, b) = punch_delays(Duration::from_millis(20), Duration::from_millis(140));
        assert_eq!(20 + a as u64, 140 + b as u64);
        assert_eq!(b as u64, PUNCH_MARGIN.as_micros() / 1000);
    }
}
