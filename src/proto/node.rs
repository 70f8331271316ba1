//! A DONet node as a sans-IO state machine: the source or a peer of one channel.
//!
//! The driver feeds it [`Input`]s and [`Command`]s with the current time, calls
//! [`Node::handle_timeout`] at [`Node::poll_timeout`], and after every call drains
//! [`Node::poll_output`] until it returns `None`: messages to send, links to dial or close, and
//! segments to hand to the player. The node never reads a clock, opens a socket or draws
//! randomness it was not seeded with, so the simulator and the daemon drive the very same code.
//!
//! What happens, in DONet's terms:
//! - **Join**: dial a bootstrap node (the origin) with `Join`; it answers with a deputy and a
//!   first sample of members; the deputy's `Members` fill the mCache; partners are dialled from
//!   it until the node has M.
//! - **Gossip**: every `gossip_interval` the node sends its own record (with a fresh `seq`) and
//!   a random sample of its mCache to a few partners. Leavers send `Depart`; a partner that
//!   times out is announced departed on its behalf.
//! - **Buffer maps**: a full map when a partnership starts (and every 30 s), then a `Have`
//!   for every new segment, sent when its head arrives, to each partner that lacks it; both
//!   carry the sender's upload backlog.
//! - **Scheduling**: see [`super::scheduler`]: urgent segments first, then rarest first, each
//!   from the partner that would deliver it soonest; requests carry their deadline.
//! - **Serving**: a request about to miss its deadline goes first, otherwise the freshest
//!   segment (it is the one the swarm still has to spread); a full queue turns away its
//!   stalest request for a fresher one, and a request that cannot be met gets `Busy` so the
//!   requester goes elsewhere at once. A segment is forwarded while it still streams in.
//! - **Refinement**: every `refine_interval` partner scores are updated; above its target the
//!   worst goes (once the segments in flight on that link are through: its queued requests
//!   are served, its new ones turned away), at the target a new candidate is tried. Stronger
//!   uplinks aim for more partners.
//! - **Playout**: a joining peer picks a start behind its partners' newest (no later than the
//!   median partner's playback position), plays it when it arrives, and from then on each
//!   segment is due one duration after the previous one. A segment late at its deadline is
//!   counted missed once; playback pauses for it (up to the lag recent arrivals call for,
//!   never past `max_lag`) or skips it if it is lost.
//!
//! A peer that misbehaves (a message before hello, a wrong channel, garbage) costs only its
//! own link. What a partner says is checked before policy reads it: positions beyond
//! [`POSITION_HORIZON`] of ours are refused (`checked_position`, `checked_map`), every ranking
//! of positions is by offset from one reference (a total order), every loop over a position a
//! partner supplies is bounded by the store's window, and its claimed upload only seeds the
//! rate we measure (see [`super::partners`]). [`Node::check_invariants`] states what holds
//! after every call whatever partners say; `harness::node_partners` checks it.

use super::bans::{Bans, Budget};
use super::buffer_map::BufferMap;
use super::config::Config;
use super::inflight::{Begun, InFlight, InProgress};
use super::membership::MCache;
use super::partners::Partner;
use super::reach::{dialable, Introducer, ReachState, ReachStats, ReachStatus, ReachVia};
use super::rng::Rng;
use super::scheduler::{self, Pick, Supplier, Want};
use super::seq::Seq;
use super::store::{Inserted, Store};
use super::time::{Duration, Instant};
use super::timer::{Timer, TimerTable};
use super::wire::{
    ByeReason, Control, Hello, MemberEntry, Message, Payload, PeerAddr, PeerId, Reach, Role,
    Segment, MAGIC, MAX_ENTRIES_PER_MESSAGE, VERSION,
};
use std::collections::VecDeque;

mod nat;

/// A link (a TCP connection in the daemon), named by the driver. Unique per node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LinkId(pub u64);

/// Something that happened outside the node.
#[derive(Debug)]
pub enum Input<P> {
    /// A link is open. `remote` is the address dialled (outbound) or the peer's socket
    /// address (inbound; its port is replaced by the one in the peer's hello).
    LinkUp {
        link: LinkId,
        remote: PeerAddr,
        outbound: bool,
    },
    /// A dial we asked for did not connect.
    DialFailed { remote: PeerAddr },
    /// The link closed from the other side or failed.
    LinkDown { link: LinkId },
    /// A message arrived whole (and, for a segment, its manifest and every piece verified by
    /// the driver).
    Received { link: LinkId, msg: Message<P> },
    /// A segment's manifest arrived on `link` and the driver checked it; its pieces follow
    /// (`PieceArrived`) and then the whole segment (`Received`), unless its sender aborts it
    /// (`SegmentAborted`) or the link fails. `segment.payload` is the driver's handle to the
    /// body as it fills: an upload of it goes no faster than its pieces are checked (the
    /// daemon's writer waits for each; the simulator holds the transfer at the pieces its
    /// sender holds). Optional: a driver that reports only whole segments loses cut-through.
    SegmentBegun { link: LinkId, segment: Segment<P> },
    /// The first `pieces_done` pieces of `seq` arriving on `link` are checked.
    PieceArrived {
        link: LinkId,
        seq: Seq,
        pieces_done: u32,
    },
    /// The sender on `link` gave up sending `seq` mid-way (its own upstream failed): what
    /// came of it is dropped and it is asked elsewhere.
    SegmentAborted { link: LinkId, seq: Seq },
    /// A segment sent on this link has left: the node may start its next upload.
    Sent { link: LinkId },
    /// The source's segmenter produced a segment (source only).
    Ingest(Segment<P>),
    /// A segment from this link failed the driver's verification (signature, channel or
    /// length): its sender is banned and the link closed.
    Polluted { link: LinkId },
    /// What the driver knows of the node's reachability: a port mapping's result
    /// (`reachable: Some(true)`, `external`: the router's address and port), the operator's
    /// word, the box's global IPv6 address (`v6`). `None` leaves a field as it was; without a
    /// word on `reachable` the node asks a partner for a dial-back (see `proto::reach`).
    Reachability {
        reachable: Option<bool>,
        external: Option<PeerAddr>,
        v6: Option<PeerAddr>,
        via: ReachVia,
    },
    /// An accepted connection's first frame was a `DialBackProof` with this nonce (the driver
    /// closed that connection; it is no link).
    DialBackProof { nonce: u64 },
    /// Optional: how an `Output::DialBack` went (`connected`: the connect succeeded and the
    /// proof was written; false: refused or timed out). The node marks the asker's record
    /// (the source and deputies hand out dialable records first).
    DialBackDone { nonce: u64, connected: bool },
}

/// Something the node asks of its driver.
#[derive(Debug)]
pub enum Output<P> {
    Send {
        link: LinkId,
        msg: Message<P>,
    },
    Dial {
        remote: PeerAddr,
    },
    /// Close after sending what is queued (a `Bye` has been queued already).
    Close {
        link: LinkId,
    },
    /// Stop sending `seq` on `link` (an upload of a segment still arriving here, whose
    /// upstream failed): the receiver must learn it (the daemon's abort record, the
    /// simulator's `SegmentAborted`) so that it asks elsewhere. No `Sent` follows for it.
    Abort {
        link: LinkId,
        seq: Seq,
    },
    /// Hand this segment to the player; it is due at `deadline`.
    Play {
        segment: Segment<P>,
        deadline: Instant,
    },
    /// `seq` missed its deadline and was skipped (the output marks a discontinuity).
    Missed {
        seq: Seq,
        deadline: Instant,
    },
    /// `seq` missed its deadline and playback pauses for `pause` waiting for it (counted
    /// missed once, here). For logs: a driver need not act on it.
    Late {
        seq: Seq,
        pause: Duration,
        cause: LateCause,
    },
    /// Connect to `remote` (always the IP a link to the asker comes from), send one
    /// `Control::DialBackProof { nonce }` frame, close. No link, no answer to the node: the
    /// asker's driver reports the proof to its node. A failed connect is dropped silently.
    DialBack {
        remote: PeerAddr,
        nonce: u64,
    },
    /// Hole punching: at `at`, connect to `remote` from the listen port (SO_REUSEADDR /
    /// SO_REUSEPORT) while the other side does the same toward us (TCP simultaneous open),
    /// retrying for a few seconds. Report `LinkUp { remote, outbound: true }` (both sides
    /// report outbound; the node with the smaller id asks for the partnership) or
    /// `DialFailed { remote }`.
    Punch {
        remote: PeerAddr,
        at: Instant,
    },
}

/// Where a segment was when its playback deadline passed without it: what a log needs to
/// tell a slow supplier from a starved swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateCause {
    /// Requested `asked` ago from a partner (`holders` partners advertised it).
    InFlight { asked: Duration, holders: u8 },
    /// `holders` partners advertised it and we had not asked: no supplier had a free slot or
    /// could deliver in time.
    Unrequested { holders: u8 },
    /// No partner advertised it (partners hold later ones, or none at all).
    Unheld,
}

/// What the owner of a node asks of it.
#[derive(Clone, Debug)]
pub enum Command {
    /// Join the swarm through these bootstrap nodes (peers only).
    Join { bootstrap: Vec<PeerAddr> },
    /// Leave: tell partners, close every link, go quiet.
    Leave,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CommandError {
    /// The source does not join; it is the origin.
    SourceCannotJoin,
    AlreadyJoined,
    NoBootstrap,
    /// The node has left; make a new one.
    Left,
}

/// Counters a driver reports (stats JSON, control socket, simulator metrics).
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub joined_at: Option<Instant>,
    pub first_play_at: Option<Instant>,
    pub played: u64,
    pub missed: u64,
    pub partners: usize,
    pub members: usize,
    pub segments_received: u64,
    pub duplicates: u64,
    pub uploads: u64,
    pub requests_sent: u64,
    pub busy_received: u64,
    pub busy_sent: u64,
    pub request_timeouts: u64,
    pub links_refused: u64,
    /// Times playback paused for a late segment, and for how long in all (µs).
    pub stalls: u64,
    pub stall_us: u64,
    /// Misses whose segment was requested but had not arrived, and misses that some partner
    /// held but we had not requested (the rest no partner held).
    pub missed_in_flight: u64,
    pub missed_unrequested: u64,
    /// Busy answers by reason: not a partner, not held, copies, per-partner queue,
    /// partnership ending, queue full or backlog, deadline.
    pub busy_reasons: [u64; 7],
    /// Scheduling: wanted segments left for later because no supplier had a free slot, or
    /// none could deliver in time; and passes that found the request budget spent.
    pub sched_no_slot: u64,
    pub sched_too_late: u64,
    pub sched_budget_spent: u64,
    /// Positions partners stated that lay beyond [`POSITION_HORIZON`] of ours and were
    /// refused (a map, a have, a play position, an offer).
    pub positions_refused: u64,
    /// Cut-through: uploads started of a segment still arriving, uploads aborted because its
    /// upstream failed, and transfers to us that our supplier aborted.
    pub uploads_partial: u64,
    pub aborts_sent: u64,
    pub aborts_received: u64,
}

/// Why we dialled someone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    /// The origin: join, and ask it to partner if it has room.
    Bootstrap,
    /// The origin again, by a peer whose partners feed it too slowly: join only (the
    /// redirect names a deputy to try), no partner request.
    Rejoin,
    /// The deputy the origin named: ask for members and a partnership.
    Deputy,
    /// A candidate from the mCache.
    Partner,
    /// Accepted from someone else.
    Inbound,
    /// A hole punch to a peer a partner introduced (TCP simultaneous open: both sides dial).
    /// `ask`: this side asks for the partnership (the one with the smaller id); the other
    /// answers as if it had accepted the link.
    Punch { ask: bool },
}

/// Answers a link still owes us.
mod awaiting {
    pub const REDIRECT: u8 = 1;
    pub const MEMBERS: u8 = 2;
    pub const PARTNER: u8 = 4;
}

#[derive(Clone, Copy, Debug)]
struct PeerInfo {
    id: PeerId,
    role: Role,
    listen: PeerAddr,
    upload_bytes_per_s: u64,
}

/// Laid out in order (`repr(C)`): what every input and tick reads first, then the partner
/// (whose scheduling fields lead), then the rest.
#[derive(Debug)]
#[repr(C)]
struct Link {
    id: LinkId,
    one_way: Duration,
    last_recv: Instant,
    last_sent: Instant,
    opened: Instant,
    awaiting: u8,
    purpose: Purpose,
    peer: Option<PeerInfo>,
    partner: Option<Partner>,
    remote: PeerAddr,
    /// Membership records this link may still teach us this gossip interval.
    learned: Budget,
}

/// What a quiet scheduling pass had in hand (see `Node::quiet`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct QuietMark {
    from: Seq,
    links: usize,
    requests: usize,
}

#[derive(Clone, Copy, Debug)]
struct PendingDial {
    addr: PeerAddr,
    purpose: Purpose,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    seq: Seq,
    link: LinkId,
    sent_at: Instant,
    expect_by: Instant,
}

#[derive(Clone, Copy, Debug)]
struct UploadRequest {
    link: LinkId,
    seq: Seq,
    deadline: Instant,
    /// Requester's announced upload rate (the source serves strong uploaders first).
    requester_rate: u64,
    /// A push to a child of the segment's substream (no request, no deadline of its own).
    push: bool,
}

#[derive(Clone, Copy, Debug)]
enum Playout {
    /// Not playing and not trying to.
    Idle,
    /// Waiting for the chosen first segment (see `start_hold` for when it plays).
    Starting { start: Seq, since: Instant },
    /// `next` is due at `deadline`. `stalled`: playback is waiting for `next`, whose first
    /// deadline passed (it was counted missed once).
    Playing {
        next: Seq,
        deadline: Instant,
        stalled: bool,
    },
}

/// How long a link may stay up for a query whose answer never comes.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before trying the bootstrap list again when the swarm could not be reached.
const REBOOTSTRAP_BACKOFF: Duration = Duration::from_secs(2);
/// A peer whose partners feed it too slowly joins again through the origin at most this
/// often (see `rebootstrap_if_starved`): 1,000 peers under churn made 65 joins a second every
/// 2 s, a sixth of the source's upload; every 10 s they cost it 0.05x of the stream rate.
const REJOIN_BACKOFF: Duration = Duration::from_secs(10);
/// Membership records in an origin's redirect (the origin answers every joiner: keep it
/// small, the deputy's answer fills the mCache). 4 rather than 6: the source's upload
/// ratio at 1,000 churn peers 2.00 -> 1.985, startup and continuity unchanged.
const REDIRECT_SAMPLE: usize = 4;
/// Membership records in a partner rejection.
const REJECT_SAMPLE: usize = 4;
/// A starting peer re-picks its first segment if it has not arrived by then.
const START_RETRY: Duration = Duration::from_millis(1500);
/// Full buffer maps go out this often (haves keep partners current in between).
const BUFFER_MAP_REFRESH: Duration = Duration::from_secs(30);
/// Default one-way delay before a link has measured one.
const DEFAULT_ONE_WAY: Duration = Duration::from_millis(60);
/// A supplier that said busy is avoided at least this long.
const BUSY_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// See `Node::critical_before`.
const CRITICAL_MIN: Duration = Duration::from_secs(3);
/// Longest single playback pause for a late segment.
const MAX_STALL: Duration = Duration::from_secs(10);
/// A pause this soon after the previous one lasts at least twice as long (see
/// `on_playout_deadline`). 1,000 churn peers, 600 s, seeds 1-8: continuity mean 0.9754 ->
/// 0.9772, p5 0.914 -> 0.922, lag p50 15.0 -> 16.2 s (p95 stays at the 20 s cap).
const STALL_ESCALATE_WITHIN: Duration = Duration::from_secs(20);
/// Lag kept above the observed arrival delays.
const STALL_MARGIN: Duration = Duration::from_millis(3000);
/// Partners whose newest segment has not moved on for this many segment durations are not
/// "still moving": a segment none of them holds may never come (the source is gone).
const FRONT_STILL_AFTER: u64 = 3;
/// How long a joining peer whose only partner is the source waits for other partners before
/// it chooses where to start.
const SOURCE_ONLY_START_WAIT: Duration = Duration::from_millis(300);
/// How long a joining peer waits for its chosen start segment before it starts at a later
/// one it holds.
const START_PATIENCE: Duration = Duration::from_millis(500);
/// Segment durations a start segment fed by peers must be old before it plays (see
/// `start_hold`).
const START_AGE_FED_BY_PEERS: u64 = 2;
/// A missing segment with this many missing before it, held by nobody, while partners hold
/// later ones, is in a hole in the stream (the source was away), not late.
const GAP_PROBE: u32 = 3;
/// Offers an idle supplier has out at once.
const MAX_OFFERS: usize = 1;
/// An upload the driver has not reported done this long after it should have is forgotten
/// (its link stalled or the data it was forwarding never came).
const UPLOAD_STUCK: Duration = Duration::from_secs(10);
/// A joined peer that has received no new segment for this many segment durations asks the
/// origin again, partners or not: the source may have restarted, and partners that all lost
/// it would otherwise wait among themselves for ever.
const STARVED_AFTER: u64 = 3;
/// A request whose segment is arriving is not withdrawn before this long after its last
/// piece (or its manifest) came.
const PIECE_PATIENCE: Duration = Duration::from_secs(2);
/// Grace past the requester's deadline a supplier still accepts (estimates are rough).
const DEADLINE_GRACE: Duration = Duration::from_millis(200);
/// A peer that refused us as a partner (or could not be reached) is not asked again for this
/// long: in a small swarm the mCache holds few candidates, and without it a full peer would
/// be re-dialled the moment it says no, as fast as the network answers.
const REFUSAL_BACKOFF: Duration = Duration::from_secs(10);
/// The source lets a weak partner go for a much stronger asker only after the weak one has
/// been its partner this long.
const SOURCE_SWAP_AFTER: Duration = Duration::from_secs(10);
/// A partner request from a peer with fewer partners than this is from a newcomer (or an
/// orphan): see [`Config::partner_cap`].
const NEEDY_PARTNERS: usize = 2;
/// Refusals remembered at most (the oldest is forgotten first).
const REFUSAL_MEMORY: usize = 64;
/// A dial not answered within this long no longer holds a place among the partner attempts
/// (`maintain_partners`): the next candidate is dialled beside it. A member answers a connect
/// within a round trip; one behind a NAT that drops unsolicited SYNs never does, and the
/// connect times out only after 3 s. Records of unknown reach are what an origin knows of a
/// joining crowd (its dial-backs prove a few), and 1,000 churn peers at nat-fraction 0.6
/// held 2 partners at 2 s of age against 10 with every peer dialable.
const DIAL_PATIENCE: Duration = Duration::from_secs(1);
/// A peer short of partners with no candidate left to dial asks a partner for members at
/// most this often (see `pull_members`). One answer is at most a message of records (about
/// 1.3 KB); a node asks only while it has fewer partners than it looks for.
const MEMBERS_PULL_EVERY: Duration = Duration::from_secs(2);
/// A partnership that refinement ends is closed once the segments in flight on it, either
/// way, are through, and at the latest after this long: the upload backlog a partner
/// accepts (`max_upload_backlog`, 4 s by default) and a second. Closing at once dropped the
/// other side's queued requests, asked seconds earlier, a few seconds before their
/// deadlines: a third of a 16-peer swarm's misses after startup came from that.
const ENDING_GRACE: Duration = Duration::from_secs(5);
/// A claimed upload counts for at most this many stream rates until measured: the
/// strongest class the simulator's mix and the supported boxes have (4x). A stronger peer
/// is measured up to it as it delivers; a liar gains no more than an honest strong peer.
pub const MAX_PRIOR_FACTOR: u64 = 4;

/// Farthest a position a partner states (a map's newest, a play position) may lie from the
/// node's reference (what it holds or is starting at, or what most partners agree on) and
/// still be taken: four of the largest windows a map can describe, 17 minutes of 1 s
/// segments. Honest partners lie within a window or two of each other; a position outside
/// this is refused, and no loop or ranking ever spans more than this.
pub const POSITION_HORIZON: u32 = 4 * super::buffer_map::MAX_WINDOW;

/// `s` lies within [`POSITION_HORIZON`] of `reference`, either way.
fn near(s: Seq, reference: Seq) -> bool {
    s.offset_from(reference).unsigned_abs() <= POSITION_HORIZON
}

/// The position most of `positions` lie near (within [`POSITION_HORIZON`]), the first such
/// on a tie; none for none. Quadratic: callers pass one position per partner (at most
/// [`super::config::PARTNER_CEILING`] and the newcomers' slack).
fn consensus(positions: &[Seq]) -> Option<Seq> {
    let mut best: Option<(Seq, usize)> = None;
    for &p in positions {
        let n = positions.iter().filter(|&&q| near(q, p)).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((p, n));
        }
    }
    best.map(|(p, _)| p)
}

pub struct Node<P> {
    cfg: Config,
    id: PeerId,
    rng: Rng,
    now: Instant,
    links: Vec<Link>,
    /// `links[i].id` at `i`: a link is looked up by id on every input, and a scan of these
    /// reads a cache line or two where a scan of the links read one per link.
    link_ids: Vec<LinkId>,
    pending_dials: Vec<PendingDial>,
    /// Addresses that refused to partner (or failed to answer) recently: see
    /// [`REFUSAL_BACKOFF`]. At most [`REFUSAL_MEMORY`] entries.
    refusals: Vec<(PeerAddr, Instant)>,
    mcache: MCache,
    store: Store<P>,
    /// Segments whose pieces are still arriving: served as they are checked.
    inflight: InFlight<P>,
    requests: Vec<Request>,
    uploads: Vec<UploadRequest>,
    /// Uploads in progress: link, segment, and when each should be done at our budget.
    active_uploads: Vec<(LinkId, Seq, Instant)>,
    /// Upload budget, bytes (may go below zero by one segment: an upload starts at >= 0).
    tokens: f64,
    tokens_at: Instant,
    /// Source only: per segment, indexed by `seq % window`: copies uploaded, and the upload
    /// capacity of the peers that got them, in quarters of the stream rate.
    copies: Vec<(Seq, u8, u16)>,
    playout: Playout,
    bootstrap: Vec<PeerAddr>,
    bootstrap_next: usize,
    rebootstrap_at: Option<Instant>,
    /// When the newest segment we hold last moved on (see `STARVED_AFTER`).
    last_fresh: Instant,
    /// The newest segment any partner holds, and when we first saw a partner hold it: is the
    /// swarm around us still moving on?
    partners_front: Option<(Seq, Instant)>,
    /// Playback left a hole in the stream to start again after it (see `in_stream_gap`): the
    /// first segment it did not play, counted missed up to where it starts again.
    resume_after: Option<Seq>,
    /// The partnership refinement is ending, and since when (see `ENDING_GRACE`): we ask it
    /// for nothing more, turn its new requests away and close it once nothing is in flight.
    ending: Option<(LinkId, Instant)>,
    member_seq: u32,
    next_gossip: Instant,
    next_refine: Instant,
    next_map_refresh: Instant,
    joined: bool,
    left: bool,
    schedule_due: bool,
    /// The last scheduling pass found no segment it could want (we lack it, have not asked
    /// for it, are not receiving it, and a partner holds it) and no substream it could ask a
    /// parent for, with this much in hand; nothing has changed since but haves of segments
    /// we cannot want. A pass now would do nothing, and is skipped: most haves are of a
    /// segment already asked for, and a pass reads every partner. Everything else that sets
    /// `schedule_due` clears it.
    quiet: Option<QuietMark>,
    last_segment_bytes: u64,
    timers: TimerTable,
    out: VecDeque<Output<P>>,
    stats: NodeStats,
    /// How late after ingest (ms) recent segments reached us, a ring, and how many so far.
    arrival_delays: [u32; 32],
    arrival_count: usize,
    /// The newest segment whose ingest time we know: (seq, origin_us).
    last_origin: Option<(Seq, u64)>,
    /// Offers made and not yet answered: link, segment, when.
    offers: Vec<(LinkId, Seq, Instant)>,
    scratch_wants: Vec<Want>,
    scratch_suppliers: Vec<Supplier>,
    scratch_links: Vec<usize>,
    scratch_picks: Vec<Pick>,
    /// Per supplier, what it holds of the window being scheduled (`BufferMap::bits_from`).
    scratch_held: Vec<[u64; 4]>,
    /// Partners that are not suppliers in the pass being planned.
    scratch_others: Vec<usize>,
    bans: Bans,
    /// The last pause: when, and how long.
    last_stall: Option<(Instant, Duration)>,
    /// Our own reachability and the dial-back we wait for.
    reach: ReachState,
    /// Dial-backs and introductions we do for others.
    introducer: Introducer,
    /// When we last asked for (or were given) a list of members: see `pull_members`.
    members_pulled_at: Option<Instant>,
}

impl<P: Payload> Node<P> {
    pub fn new(cfg: Config, id: PeerId, seed: u64, now: Instant) -> Self {
        let store = Store::new(cfg.window, cfg.store_bytes);
        let window = store.window();
        let mut timers = TimerTable::default();
        timers.set(Timer::Tick, now + cfg.tick);
        let mut rng = Rng::new(seed);
        // Spread periodic work so that nodes started together do not act in lockstep.
        let jitter = |rng: &mut Rng, d: Duration| {
            Duration::from_micros(rng.below(d.as_micros().max(1) as usize) as u64)
        };
        let next_gossip = now + jitter(&mut rng, cfg.gossip_interval);
        let next_refine = now + cfg.refine_interval + jitter(&mut rng, cfg.refine_interval);
        let burst = cfg.upload_bytes_per_s as f64;
        Node {
            mcache: MCache::new(cfg.mcache_capacity, id),
            copies: vec![(Seq(u32::MAX), 0, 0); window as usize],
            last_segment_bytes: (cfg.stream_bytes_per_s as f64 * cfg.segment_duration.as_secs_f64())
                as u64,
            id,
            rng,
            now,
            links: Vec::new(),
            link_ids: Vec::new(),
            pending_dials: Vec::new(),
            refusals: Vec::new(),
            store,
            inflight: InFlight::default(),
            requests: Vec::new(),
            uploads: Vec::new(),
            active_uploads: Vec::new(),
            tokens: burst,
            tokens_at: now,
            playout: Playout::Idle,
            bootstrap: Vec::new(),
            bootstrap_next: 0,
            rebootstrap_at: None,
            last_fresh: now,
            partners_front: None,
            resume_after: None,
            ending: None,
            member_seq: 0,
            next_gossip,
            next_refine,
            next_map_refresh: now + BUFFER_MAP_REFRESH,
            joined: cfg.role == Role::Source,
            left: false,
            schedule_due: false,
            quiet: None,
            timers,
            out: VecDeque::new(),
            stats: NodeStats::default(),
            offers: Vec::new(),
            arrival_delays: [0; 32],
            arrival_count: 0,
            last_origin: None,
            scratch_wants: Vec::new(),
            scratch_suppliers: Vec::new(),
            scratch_links: Vec::new(),
            scratch_picks: Vec::new(),
            scratch_held: Vec::new(),
            scratch_others: Vec::new(),
            bans: Bans::default(),
            last_stall: None,
            reach: ReachState::new(now),
            introducer: Introducer::new(now),
            members_pulled_at: None,
            cfg,
        }
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    /// What the node knows of its own reachability (for status and stats).
    pub fn reachability(&self) -> ReachStatus {
        self.reach.status()
    }

    /// Counters of dial-backs, introductions and punches.
    pub fn reach_stats(&self) -> ReachStats {
        self.reach.stats
    }

    /// Prefetch hint: loads the tables handling an input usually reads first (the node
    /// itself should be in cache already).
    pub fn prefetch_tables(&self) {
        use super::prefetch::slice;
        slice(&self.link_ids, 16);
        // The part of each link a pass reads (see `Link`): up to the partner's play report.
        let hot = core::mem::offset_of!(Link, partner) + 120;
        for l in self.links.iter().take(16) {
            super::prefetch::lines(l as *const Link, hot);
        }
        slice(&self.requests, 16);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn has_left(&self) -> bool {
        self.left
    }

    pub fn stats(&self) -> NodeStats {
        let mut s = self.stats.clone();
        s.partners = self.partner_count();
        s.members = self.mcache.len();
        s
    }

    /// Segments already handed to the player whose deadlines are still ahead of `now` (a
    /// continuity count at `now` leaves them out: their deadline has not passed).
    pub fn segments_ahead(&self, now: Instant) -> u64 {
        match self.playout {
            Playout::Playing { deadline, .. } => {
                let ahead = deadline.saturating_since(now).as_micros();
                ahead.saturating_sub(1) / self.nominal().as_micros().max(1)
            }
            _ => 0,
        }
    }

    /// The store, for drivers that serve players from it (the HTTP output's start point).
    /// Peers banned for sending segments that failed verification.
    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    pub fn store(&self) -> &Store<P> {
        &self.store
    }

    /// Pieces of `seq` we hold checked, counted from its start: all of them once it is whole,
    /// those checked so far while it arrives (what an upload of it may have sent), none if
    /// we hold nothing of it. A driver that paces uploads itself (the simulator) reads it.
    pub fn pieces_held(&self, seq: Seq) -> Option<u32> {
        if let Some(s) = self.store.get(seq) {
            return Some(super::manifest::piece_count(s.payload.len()) as u32);
        }
        self.inflight.get(seq).map(|e| e.done)
    }

    /// Peer ids of current partners (for invariant checks and status).
    pub fn partner_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.links
            .iter()
            .filter(|l| l.partner.is_some())
            .filter_map(|l| l.peer.map(|p| p.id))
    }

    /// Whether some partner lacks a segment we hold that it could still play (a diagnostic:
    /// an idle uplink while this holds is capacity the scheduler left unused).
    pub fn useful_to_partners(&self) -> bool {
        let Some(newest) = self.store.newest() else {
            return false;
        };
        for l in &self.links {
            let Some(p) = &l.partner else { continue };
            let Some((play, at)) = p.playing else {
                continue;
            };
            let ahead = (self.now.saturating_since(at).as_micros()
                / self.cfg.segment_duration.as_micros().max(1)) as u32;
            // Only what we could deliver before its deadline counts.
            let xfer = Duration::for_bytes(self.last_segment_bytes, self.cfg.upload_bytes_per_s);
            let slots = (xfer.as_micros() + 300_000) / self.cfg.segment_duration.as_micros().max(1);
            let mut s = play.add(ahead.saturating_add(1 + slots as u32));
            // Within the store's window back from our newest: nothing older is held.
            if s.offset_from(newest) < -(self.store.window() as i32) {
                s = newest.sub(self.store.window());
            }
            while !s.is_after(newest) {
                if self.store.has(s) && !p.map.has(s) {
                    return true;
                }
                s = s.next();
            }
        }
        false
    }

    /// Uploads in progress or queued (a diagnostic).
    pub fn uploading(&self) -> bool {
        !self.active_uploads.is_empty() || !self.uploads.is_empty()
    }

    /// Substreams with a parent, and subscriptions served (diagnostics).
    pub fn push_state(&self) -> (u32, u32) {
        let parents = self
            .links
            .iter()
            .filter_map(|l| l.partner.as_ref())
            .map(|p| p.parent_of.count_ones())
            .sum();
        (parents, self.children())
    }

    /// Whether a segment may come on `link` because we asked for one: a request (ours, or
    /// our answer to its offer) in flight there, or a substream it pushes to us or was asked
    /// to. A driver accepts segment-sized frames only from such a link; from any other, a
    /// control message's size is all a frame may have.
    pub fn segment_expected(&self, link: LinkId) -> bool {
        self.requests.iter().any(|r| r.link == link)
            || self.link_index(link).is_some_and(|i| {
                self.links[i]
                    .partner
                    .as_ref()
                    .is_some_and(|p| p.parent_of | p.subscribing != 0)
            })
    }

    /// Checks what must hold after every call whatever partners said (for the adversarial
    /// harness, `harness::node_partners`, and tests): every table within its capacity, every
    /// request of ours at a live partner and counted there, no more in flight at a partner
    /// than it may have, no request for a segment we hold or beyond the window from where
    /// playback stands, queued uploads within the queue's bounds, every partner's rate
    /// estimate within its bounds. The first broken one, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.cfg;
        let partners = self.partner_count();
        let bounded = [
            ("links", self.links.len(), cfg.max_links),
            ("partners", partners, cfg.partner_cap()),
            (
                "requests",
                self.requests.len(),
                cfg.max_requests + MAX_OFFERS,
            ),
            (
                "active uploads",
                self.active_uploads.len(),
                cfg.concurrent_uploads,
            ),
            ("offers", self.offers.len(), MAX_OFFERS),
            (
                "segments in progress",
                self.inflight.len(),
                super::inflight::MAX_IN_PROGRESS,
            ),
            ("refusals", self.refusals.len(), REFUSAL_MEMORY),
            ("mcache", self.mcache.len(), cfg.mcache_capacity),
            (
                "store",
                self.store.len() as usize,
                self.store.window() as usize,
            ),
            (
                "pending dials",
                self.pending_dials.len(),
                cfg.max_links + cfg.partner_cap(),
            ),
            (
                "queued pulls",
                self.uploads.iter().filter(|u| !u.push).count(),
                cfg.upload_queue_capacity,
            ),
            (
                "queued pushes",
                self.uploads.iter().filter(|u| u.push).count(),
                cfg.push_queue_per_child * partners,
            ),
        ];
        for (what, n, cap) in bounded {
            if n > cap {
                return Err(format!("{what}: {n} > {cap}"));
            }
        }
        if self.store.reserved() != self.inflight.bytes() {
            return Err(format!(
                "store reserves {} bytes for {} in progress",
                self.store.reserved(),
                self.inflight.bytes()
            ));
        }
        if self.store.bytes_held() + self.store.reserved() > cfg.store_bytes {
            return Err("store and segments in progress over the byte budget".into());
        }
        if self.links.len() != self.link_ids.len()
            || self
                .links
                .iter()
                .zip(&self.link_ids)
                .any(|(l, id)| l.id != *id)
        {
            return Err("link ids out of step with links".into());
        }
        let (floor, ceiling) = self.rate_bounds();
        let from = match self.playout {
            Playout::Idle => None,
            Playout::Starting { start, .. } => Some(start),
            Playout::Playing { next, .. } => Some(next),
        };
        for r in &self.requests {
            let Some(j) = self.link_index(r.link) else {
                return Err(format!("request for {:?} on a closed link", r.seq));
            };
            if self.links[j].partner.is_none() {
                return Err(format!("request for {:?} from a non-partner", r.seq));
            }
            if self.store.has(r.seq) {
                return Err(format!("request for {:?}, which we hold", r.seq));
            }
            // Asked within the window from where playback stands: playback moves on (a
            // request stays until its deadline), never back past a request (a start chosen
            // again withdraws those outside its window).
            if let Some(f) = from {
                if r.seq.offset_from(f) >= cfg.window as i32 {
                    return Err(format!("request for {:?}, playback at {f:?}", r.seq));
                }
            }
        }
        for l in &self.links {
            let Some(p) = &l.partner else { continue };
            let mine = self.requests.iter().filter(|r| r.link == l.id).count();
            if p.inflight != mine {
                return Err(format!(
                    "{:?}: {} in flight, {mine} requests",
                    l.id, p.inflight
                ));
            }
            if mine > cfg.max_requests_per_partner {
                return Err(format!("{:?}: {mine} requests in flight", l.id));
            }
            if p.upload_bytes_per_s < floor.max(1) || p.upload_bytes_per_s > ceiling {
                return Err(format!("{:?}: rate {}", l.id, p.upload_bytes_per_s));
            }
        }
        for u in &self.uploads {
            if self.link_index(u.link).is_none() {
                return Err(format!("upload of {:?} queued for a closed link", u.seq));
            }
        }
        Ok(())
    }

    /// Requests in flight and queued uploads (for invariant checks: both are bounded).
    pub fn queue_lengths(&self) -> (usize, usize, usize) {
        (self.requests.len(), self.uploads.len(), self.links.len())
    }

    /// The next output, until `None`. Drain after every `handle_*` and `command` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.out.pop_front()
    }

    /// When [`Node::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        self.timers.next()
    }

    fn advance(&mut self, now: Instant) {
        // Time only moves forward; an older `now` from the driver is ignored.
        if now > self.now {
            self.now = now;
        }
    }

    pub fn command(&mut self, now: Instant, cmd: Command) -> Result<(), CommandError> {
        self.advance(now);
        if self.left {
            return Err(CommandError::Left);
        }
        match cmd {
            Command::Join { bootstrap } => {
                if self.cfg.role == Role::Source {
                    return Err(CommandError::SourceCannotJoin);
                }
                if self.joined {
                    return Err(CommandError::AlreadyJoined);
                }
                if bootstrap.is_empty() {
                    return Err(CommandError::NoBootstrap);
                }
                self.joined = true;
                self.last_fresh = now;
                self.stats.joined_at = Some(self.now);
                self.bootstrap = bootstrap;
                self.bootstrap_next = self.rng.below(self.bootstrap.len());
                self.dial_bootstrap();
            }
            Command::Leave => self.leave(),
        }
        self.finish();
        Ok(())
    }

    pub fn handle_input(&mut self, now: Instant, input: Input<P>) {
        self.advance(now);
        if self.left {
            return;
        }
        match input {
            Input::LinkUp {
                link,
                remote,
                outbound,
            } => self.on_link_up(link, remote, outbound),
            Input::DialFailed { remote } => self.on_dial_failed(remote),
            Input::LinkDown { link } => {
                if let Some(i) = self.link_index(link) {
                    self.on_partner_lost(i, false);
                    self.remove_link(i);
                }
            }
            Input::Received { link, msg } => {
                if let Some(i) = self.link_index(link) {
                    self.links[i].last_recv = self.now;
                    self.on_message(i, msg);
                }
            }
            Input::SegmentBegun { link, segment } => {
                if let Some(i) = self.link_index(link) {
                    self.links[i].last_recv = self.now;
                    self.on_segment_begun(i, segment);
                }
            }
            Input::PieceArrived {
                link,
                seq,
                pieces_done,
            } => {
                if let Some(i) = self.link_index(link) {
                    self.links[i].last_recv = self.now;
                    self.on_piece(i, seq, pieces_done);
                }
            }
            Input::SegmentAborted { link, seq } => {
                if let Some(i) = self.link_index(link) {
                    self.links[i].last_recv = self.now;
                    self.on_segment_aborted(i, seq);
                }
            }
            Input::Sent { link } => {
                if let Some(k) = self.active_uploads.iter().position(|(l, _, _)| *l == link) {
                    self.active_uploads.remove(k);
                }
                self.start_uploads();
            }
            Input::Ingest(seg) => self.on_ingest(seg),
            Input::Polluted { link } => {
                if let Some(i) = self.link_index(link) {
                    self.on_polluted(i);
                }
            }
            Input::Reachability {
                reachable,
                external,
                v6,
                via,
            } => self.on_reachability(reachable, external, v6, via),
            Input::DialBackProof { nonce } => self.on_dial_back_proof(nonce),
            Input::DialBackDone { nonce, connected } => self.on_dial_back_done(nonce, connected),
        }
        self.finish();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.left {
            return;
        }
        if self.timers.take_expired(Timer::Playout, self.now) {
            self.on_playout_deadline();
        }
        if self.timers.take_expired(Timer::UploadResume, self.now) {
            self.start_uploads();
        }
        if self.timers.take_expired(Timer::Tick, self.now) {
            self.timers.set(Timer::Tick, self.now + self.cfg.tick);
            self.on_tick();
        }
        self.finish();
    }

    /// Work deferred to the end of every call: one scheduling pass however many haves came.
    fn finish(&mut self) {
        if self.schedule_due && !self.left {
            self.schedule_due = false;
            if !self.schedule() {
                self.maintain_parents();
            }
        }
        if !self.left {
            self.maybe_offer();
        }
    }

    // ----- links -----

    fn link_index(&self, link: LinkId) -> Option<usize> {
        debug_assert_eq!(self.link_ids.len(), self.links.len());
        self.link_ids.iter().position(|&l| l == link)
    }

    /// Adds a link (every link goes in here, so that `link_ids` follows `links`).
    fn push_link(&mut self, l: Link) {
        self.link_ids.push(l.id);
        self.links.push(l);
    }

    fn partner_count(&self) -> usize {
        self.links.iter().filter(|l| l.partner.is_some()).count()
    }

    fn send(&mut self, i: usize, c: Control) {
        let l = &mut self.links[i];
        l.last_sent = self.now;
        self.out.push_back(Output::Send {
            link: l.id,
            msg: Message::Ctl(c),
        });
    }

    fn hello(&self) -> Hello {
        Hello {
            magic: MAGIC,
            version: VERSION,
            channel: self.cfg.channel,
            peer_id: self.id,
            listen_port: self.cfg.listen_port,
            role: self.cfg.role,
            upload_kbps: (self.cfg.upload_bytes_per_s * 8 / 1000).min(u32::MAX as u64) as u32,
        }
    }

    fn dial(&mut self, addr: PeerAddr, purpose: Purpose) -> bool {
        if self.pending_dials.len() >= self.cfg.max_pending_dials
            || self.links.len() + self.pending_dials.len() >= self.cfg.max_links
            || self.pending_dials.iter().any(|d| d.addr == addr)
            || self.bans.addr_banned(addr, self.now)
        {
            return false;
        }
        self.pending_dials.push(PendingDial {
            addr,
            purpose,
            at: self.now,
        });
        self.out.push_back(Output::Dial { remote: addr });
        true
    }

    fn dial_bootstrap(&mut self) {
        self.rebootstrap_at = None;
        if !self.bootstrap.is_empty() && !self.dial_origin(Purpose::Bootstrap) {
            self.rebootstrap_at = Some(self.now + REBOOTSTRAP_BACKOFF);
        }
    }

    /// Dials the next address of the bootstrap list.
    fn dial_origin(&mut self, purpose: Purpose) -> bool {
        if self.bootstrap.is_empty() {
            return false;
        }
        let addr = self.bootstrap[self.bootstrap_next % self.bootstrap.len()];
        self.bootstrap_next = self.bootstrap_next.wrapping_add(1);
        self.dial(addr, purpose)
    }

    fn on_link_up(&mut self, link: LinkId, remote: PeerAddr, outbound: bool) {
        let purpose = if outbound {
            match self.pending_dials.iter().position(|d| d.addr == remote) {
                Some(k) => {
                    let d = self.pending_dials.swap_remove(k);
                    Some((d.purpose, self.now.saturating_since(d.at)))
                }
                // A connection we did not ask for: refuse it.
                None => None,
            }
        } else {
            Some((Purpose::Inbound, Duration::ZERO))
        };
        let Some((purpose, dial_rtt)) = purpose else {
            self.out.push_back(Output::Close { link });
            return;
        };
        if self.links.len() >= self.cfg.max_links || self.link_index(link).is_some() {
            self.stats.links_refused += 1;
            self.out.push_back(Output::Send {
                link,
                msg: Message::Ctl(Control::Bye(ByeReason::Full)),
            });
            self.out.push_back(Output::Close { link });
            return;
        }
        let one_way = if outbound && dial_rtt > Duration::ZERO {
            Duration::from_micros(dial_rtt.as_micros() / 2)
        } else {
            DEFAULT_ONE_WAY
        };
        self.push_link(Link {
            id: link,
            remote,
            purpose,
            opened: self.now,
            last_recv: self.now,
            last_sent: self.now,
            peer: None,
            partner: None,
            awaiting: 0,
            one_way,
            learned: Budget::new(self.now),
        });
        let i = self.links.len() - 1;
        if outbound {
            // Hello and the purpose of the call go in one flight: no round trip is spent
            // waiting for the other side's hello.
            self.send(i, Control::Hello(self.hello()));
            match purpose {
                Purpose::Bootstrap => {
                    // First: its answer comes before the redirect that may end the link.
                    self.ask_dial_back(i);
                    self.send(i, Control::Join);
                    // The join tells our listen port, reach unknown: say at once what a
                    // mapping or the driver already told us (under a newer sequence number
                    // than the record the join makes).
                    if self.dialable_now() {
                        self.member_seq = self.member_seq.wrapping_add(1);
                        let rec = self.own_record();
                        self.send(i, Control::Members(vec![rec]));
                    }
                    self.send(i, self.partner_request());
                    self.links[i].awaiting = awaiting::REDIRECT | awaiting::PARTNER;
                }
                Purpose::Rejoin => {
                    self.send(i, Control::Join);
                    self.links[i].awaiting = awaiting::REDIRECT;
                }
                Purpose::Deputy => {
                    self.send(i, Control::MembersRequest);
                    self.send(i, self.partner_request());
                    self.links[i].awaiting = awaiting::MEMBERS | awaiting::PARTNER;
                }
                Purpose::Partner => {
                    self.send(i, self.partner_request());
                    self.links[i].awaiting = awaiting::PARTNER;
                }
                Purpose::Punch { ask } => self.on_punched(i, ask),
                Purpose::Inbound => {}
            }
        }
    }

    fn on_dial_failed(&mut self, remote: PeerAddr) {
        let Some(k) = self.pending_dials.iter().position(|d| d.addr == remote) else {
            return;
        };
        let d = self.pending_dials.swap_remove(k);
        self.mcache.forget_addr(remote);
        self.note_refusal(remote);
        if d.purpose == Purpose::Bootstrap && self.partner_count() == 0 {
            self.rebootstrap_at = Some(self.now + REBOOTSTRAP_BACKOFF);
        }
        self.redial_after_refusal();
    }

    /// After a refusal or a failed dial, a node with no partner tries the next candidate at
    /// once; one that has partners waits for the next tick. Re-dialling at once whatever the
    /// count made every refusal a round trip's worth of new dials: a strong peer looking for
    /// dozens of partners in a swarm of full ones cycled through them as fast as loopback
    /// answers (100,000 hellos a minute at 64 peers).
    fn redial_after_refusal(&mut self) {
        if self.partner_count() == 0 {
            self.maintain_partners();
        }
    }

    /// Closes link `i` from our side, saying why.
    fn close(&mut self, i: usize, reason: ByeReason) {
        self.send(i, Control::Bye(reason));
        self.out.push_back(Output::Close {
            link: self.links[i].id,
        });
        self.remove_link(i);
    }

    /// Forgets link `i` and everything tied to it.
    fn remove_link(&mut self, i: usize) {
        let l = self.links.swap_remove(i);
        self.link_ids.swap_remove(i);
        self.reach_link_gone(l.id);
        // What it was sending us is no longer arriving: it may be wanted again.
        self.quiet = None;
        let id = l.id;
        let had_requests = self.requests.iter().any(|r| r.link == id);
        self.requests.retain(|r| r.link != id);
        self.uploads.retain(|u| u.link != id);
        self.offers.retain(|o| o.0 != id);
        let was_uploading = self.active_uploads.iter().any(|(k, _, _)| *k == id);
        if was_uploading && self.cfg.role == Role::Source {
            // A copy cut short seeds nobody: the segment may go out again.
            let rate = match (&l.partner, l.peer) {
                (Some(p), _) => p.upload_bytes_per_s,
                (None, peer) => peer.map_or(0, |p| p.upload_bytes_per_s),
            };
            let cut: Vec<Seq> = self
                .active_uploads
                .iter()
                .filter(|(k, _, _)| *k == id)
                .map(|&(_, seq, _)| seq)
                .collect();
            for seq in cut {
                self.forget_copy(seq, rate);
            }
        }
        self.active_uploads.retain(|(k, _, _)| *k != id);
        // What was arriving on it will not: the partial copies go, and their uploads with
        // them.
        let mut dropped = Vec::new();
        self.inflight.drop_link(id, &mut dropped);
        for e in dropped {
            self.drop_in_progress(e);
        }
        if was_uploading {
            self.start_uploads();
        }
        if had_requests || l.partner.is_some() {
            self.reschedule();
        }
    }

    /// A partner went away. If it went silent (crashed, not a clean bye), tell the others so
    /// their mCaches drop it too.
    fn on_partner_lost(&mut self, i: usize, crashed: bool) {
        let l = &self.links[i];
        if l.partner.is_none() {
            return;
        }
        let Some(peer) = l.peer else { return };
        if crashed && peer.role == Role::Peer {
            let seq = self.mcache.get(peer.id).map_or(0, |e| e.seq);
            if self.mcache.depart(peer.id, seq, self.now) || self.mcache.get(peer.id).is_none() {
                let from = l.id;
                self.broadcast_except(from, Control::Depart { id: peer.id, seq });
            }
        }
    }

    fn broadcast_except(&mut self, except: LinkId, c: Control) {
        for j in 0..self.links.len() {
            if self.links[j].partner.is_some() && self.links[j].id != except {
                self.send(j, c.clone());
            }
        }
    }

    /// Closes an outbound query link once everything asked on it is answered.
    fn close_if_done(&mut self, i: usize) {
        let l = &self.links[i];
        if l.partner.is_none() && l.awaiting == 0 && l.purpose != Purpose::Inbound {
            self.close(i, ByeReason::Done);
        }
    }

    // ----- messages -----

    fn on_message(&mut self, i: usize, msg: Message<P>) {
        let c = match msg {
            Message::Segment(seg) => {
                if self.links[i].peer.is_none() {
                    self.close(i, ByeReason::Protocol);
                } else {
                    self.on_segment(i, seg);
                }
                return;
            }
            Message::Ctl(c) => c,
        };
        if self.links[i].peer.is_none() {
            match c {
                Control::Hello(h) => self.on_hello(i, h),
                Control::Bye(_) => {
                    if self.links[i].purpose == Purpose::Partner {
                        let remote = self.links[i].remote;
                        self.note_refusal(remote);
                    }
                    let id = self.links[i].id;
                    self.out.push_back(Output::Close { link: id });
                    self.remove_link(i);
                }
                _ => self.close(i, ByeReason::Protocol),
            }
            return;
        }
        match c {
            Control::Hello(_) => self.close(i, ByeReason::Protocol),
            Control::Bye(_) => {
                if self.links[i].awaiting & awaiting::PARTNER != 0 {
                    let remote = self.links[i].remote;
                    self.note_refusal(remote);
                }
                let id = self.links[i].id;
                self.out.push_back(Output::Close { link: id });
                self.remove_link(i);
            }
            Control::Join => self.on_join(i),
            Control::Redirect { deputy, members } => {
                self.members_pulled_at = Some(self.now);
                self.learn_all(i, &members);
                self.links[i].awaiting &= !awaiting::REDIRECT;
                if let Some(d) = deputy {
                    let to = self.dial_addr(&d);
                    if let Some(to) = to.filter(|&a| d.id != self.id && !self.linked_to(d.id, a)) {
                        self.dial(to, Purpose::Deputy);
                    }
                }
                self.close_if_done(i);
                self.maintain_partners();
            }
            Control::MembersRequest => {
                let peer = self.links[i].peer.map(|p| p.id);
                let sample = self.hand_out(MAX_ENTRIES_PER_MESSAGE, |e| Some(e.id) != peer);
                self.send(i, Control::Members(sample));
            }
            Control::Members(entries) => {
                self.members_pulled_at = Some(self.now);
                self.learn_all(i, &entries);
                self.links[i].awaiting &= !awaiting::MEMBERS;
                self.close_if_done(i);
                if self.partner_count() < self.partner_goal() {
                    self.maintain_partners();
                }
            }
            Control::Depart { id, seq } => {
                // Passed on once, by the leaver's own partners: two hops reach the members
                // likely to hold its record; everyone else forgets it when its TTL runs out.
                // (Flooding every departure to the whole swarm cost more than gossip itself.)
                let from_leaver = self.links[i].peer.is_some_and(|p| p.id == id);
                if self.mcache.depart(id, seq, self.now) && from_leaver {
                    let from = self.links[i].id;
                    self.broadcast_except(from, Control::Depart { id, seq });
                }
            }
            Control::PartnerRequest { partners } => self.on_partner_request(i, partners),
            Control::PartnerAccept => {
                if self.links[i].awaiting & awaiting::PARTNER != 0 {
                    self.links[i].awaiting &= !awaiting::PARTNER;
                    // Partners accepted us in the meantime: do not go over our own limit.
                    if self.partner_count() < self.cfg.accept_limit() {
                        self.become_partners(i);
                    } else {
                        self.close(i, ByeReason::Full);
                        return;
                    }
                }
                self.close_if_done(i);
            }
            Control::PartnerReject(entries) => {
                self.learn_all(i, &entries);
                let remote = self.links[i].remote;
                self.note_refusal(remote);
                self.links[i].awaiting &= !awaiting::PARTNER;
                self.close_if_done(i);
                self.redial_after_refusal();
            }
            Control::BufferMap {
                map,
                backlog_ms,
                playing,
                spare,
            } => {
                let now = self.now;
                if self.links[i].partner.is_none() {
                    return;
                }
                let map = self.checked_map(map);
                let playing = self.checked_position(playing);
                if let Some(p) = self.links[i].partner.as_mut() {
                    p.map = map;
                    p.spare = spare;
                    p.playing = playing.map(|s| (s, now));
                    p.note_backlog(now, backlog_ms);
                    self.reschedule();
                }
            }
            Control::Have {
                seq,
                backlog_ms,
                spare,
            } => {
                let now = self.now;
                if self.links[i].partner.is_none() {
                    return;
                }
                let seq = self.checked_position(Some(seq));
                if let Some(p) = self.links[i].partner.as_mut() {
                    if let Some(seq) = seq {
                        p.map.set(seq);
                    }
                    p.spare = spare;
                    p.note_backlog(now, backlog_ms);
                    self.schedule_due = true;
                    if spare > 0 || seq.is_some_and(|s| self.may_want(s)) {
                        self.quiet = None;
                    }
                }
            }
            Control::Request { seq, deadline_ms } => self.on_request(i, seq, deadline_ms),
            Control::Cancel { seq } => {
                let link = self.links[i].id;
                self.uploads.retain(|u| !(u.link == link && u.seq == seq));
            }
            Control::Offer { seq } => self.on_offer(i, seq),
            Control::Decline { seq } => {
                let link = self.links[i].id;
                // Only an answer to an offer of ours says anything (of a segment we hold).
                let Some(k) = self.offers.iter().position(|o| o.0 == link && o.1 == seq) else {
                    return;
                };
                self.offers.swap_remove(k);
                if let Some(p) = self.links[i].partner.as_mut() {
                    // It holds it or will soon: offer something else next time.
                    p.map.set(seq);
                }
                self.reschedule();
            }
            Control::Busy { seq, backlog_ms } => {
                let link = self.links[i].id;
                let now = self.now;
                if let Some(k) = self
                    .requests
                    .iter()
                    .position(|r| r.seq == seq && r.link == link)
                {
                    self.requests.swap_remove(k);
                    self.stats.busy_received += 1;
                    if let Some(p) = self.links[i].partner.as_mut() {
                        p.answered(self.now);
                        p.note_backlog(now, backlog_ms);
                        let wait =
                            Duration::from_millis(backlog_ms as u64 / 2).max(BUSY_BACKOFF_MIN);
                        // Never shortens an avoidance already running (a partnership
                        // being ended is avoided for its whole grace).
                        p.avoid_until = p.avoid_until.max(now + wait);
                        // It may have dropped the segment: do not ask it again for this one.
                        if !self.store.has(seq) {
                            p.map.clear(seq);
                        }
                    }
                    self.reschedule();
                }
            }
            Control::Subscribe { mask, from } => self.on_subscribe(i, mask, from),
            Control::SubscribeReply { accepted, refused } => {
                let now = self.now;
                let backoff = self.cfg.refine_interval.mul(1);
                if let Some(p) = self.links[i].partner.as_mut() {
                    let asked = p.subscribing;
                    p.subscribing &= !(accepted | refused);
                    p.parent_of |= accepted & asked;
                    if refused != 0 {
                        p.spare = 0;
                        p.no_parent_until = now + Duration::from_micros(backoff.as_micros() / 4);
                    }
                    self.reschedule();
                }
            }
            Control::Unsubscribe { mask } => {
                if let Some(p) = self.links[i].partner.as_mut() {
                    p.child_of &= !mask;
                    let link = self.links[i].id;
                    self.uploads.retain(|u| !(u.push && u.link == link));
                }
            }
            Control::KeepAlive => {}
            Control::DialBackRequest { nonce, port } => self.on_dial_back_request(i, nonce, port),
            Control::DialBackAnswer { observed, dialing } => {
                let link = self.links[i].id;
                self.reach.on_answer(self.now, link, observed, dialing);
            }
            Control::DialBackProof { .. } => self.on_misplaced_proof(i),
            Control::IntroRequest => self.on_intro_request(i),
            Control::Introduce { id, addr, delay_ms } => self.on_introduce(i, id, addr, delay_ms),
        }
    }

    fn on_hello(&mut self, i: usize, h: Hello) {
        if h.magic != MAGIC || h.version != VERSION {
            self.stats.links_refused += 1;
            self.close(i, ByeReason::Version);
            return;
        }
        if h.channel != self.cfg.channel {
            self.stats.links_refused += 1;
            self.close(i, ByeReason::WrongChannel);
            return;
        }
        if h.peer_id == self.id {
            self.close(i, ByeReason::Protocol);
            return;
        }
        let listen = self.links[i].remote.with_port(h.listen_port);
        if self.bans.id_banned(h.peer_id, self.now) || self.bans.addr_banned(listen, self.now) {
            self.stats.links_refused += 1;
            self.close(i, ByeReason::Banned);
            return;
        }
        let prior = self.prior_rate(h.upload_kbps);
        let l = &mut self.links[i];
        l.peer = Some(PeerInfo {
            id: h.peer_id,
            role: h.role,
            listen: l.remote.with_port(h.listen_port),
            upload_bytes_per_s: prior,
        });
        if l.purpose == Purpose::Inbound {
            self.send(i, Control::Hello(self.hello()));
        }
    }

    /// What a hello's claimed upload counts for before anything is measured: kept within
    /// [`rate_bounds`](Self::rate_bounds), so that no claim outweighs the strongest uplink
    /// the project plans for.
    fn prior_rate(&self, upload_kbps: u32) -> u64 {
        let (floor, ceiling) = self.rate_bounds();
        (upload_kbps as u64 * 1000 / 8).clamp(floor, ceiling)
    }

    /// Bounds of a partner's rate, claimed or measured: a sixteenth of the stream rate (a
    /// partner that delivers nothing still gets a finite estimate) to
    /// [`MAX_PRIOR_FACTOR`] stream rates.
    fn rate_bounds(&self) -> (u64, u64) {
        let stream = self.cfg.stream_bytes_per_s.max(16);
        (stream / 16, stream.saturating_mul(MAX_PRIOR_FACTOR))
    }

    /// The upload rate we reckon link `j`'s peer has: measured if it is a partner (see
    /// [`Partner::upload_bytes_per_s`]), else its claim as clamped (0 before its hello).
    fn rate_of(&self, j: usize) -> u64 {
        match (&self.links[j].partner, self.links[j].peer) {
            (Some(p), _) => p.upload_bytes_per_s,
            (None, Some(peer)) => peer.upload_bytes_per_s,
            (None, None) => 0,
        }
    }

    /// Learns membership records from link `i`, giving the sender's own record the address
    /// we see it at (a node cannot know its own public address).
    /// At most `max_learned_per_peer` per gossip interval from one link; banned members are
    /// not learned.
    fn learn_all(&mut self, i: usize, entries: &[MemberEntry]) {
        let sender = self.links[i].peer;
        for e in entries {
            let mut e = *e;
            if let Some(p) = sender {
                if p.id == e.id {
                    // The IP the link comes from, the port the member advertises (its
                    // router may forward another than it listens on).
                    let port = e.addr.port();
                    e.addr = p
                        .listen
                        .with_port(if port == 0 { p.listen.port() } else { port });
                }
            }
            if self.bans.id_banned(e.id, self.now) || self.bans.addr_banned(e.addr, self.now) {
                continue;
            }
            let (limit, period) = (self.cfg.max_learned_per_peer, self.cfg.gossip_interval);
            if !self.links[i].learned.take(self.now, limit, period) {
                break;
            }
            self.mcache.learn_via(e, self.now, sender.map(|p| p.id));
        }
    }

    /// A segment from link `i` failed verification: ban its sender by id and listen address,
    /// close every link to it, and forget what it told us about the swarm.
    fn on_polluted(&mut self, i: usize) {
        let Some(peer) = self.links[i].peer else {
            // No hello yet: nothing to ban but an ephemeral port; the link goes.
            self.close(i, ByeReason::Protocol);
            return;
        };
        self.bans.ban(
            Some(peer.id),
            Some(peer.listen),
            self.now + self.cfg.ban_duration,
        );
        self.mcache.forget(peer.id);
        self.mcache.forget_addr(peer.listen);
        self.mcache.forget_via(peer.id);
        while let Some(j) = self
            .links
            .iter()
            .position(|l| l.peer.is_some_and(|p| p.id == peer.id))
        {
            self.close(j, ByeReason::Banned);
        }
    }

    fn linked_to(&self, id: PeerId, addr: PeerAddr) -> bool {
        self.links
            .iter()
            .any(|l| l.peer.is_some_and(|p| p.id == id || p.listen == addr) || l.remote == addr)
            || self.pending_dials.iter().any(|d| d.addr == addr)
    }

    /// The record others should hold of us (its address is filled in by the receiver).
    fn own_record(&self) -> MemberEntry {
        MemberEntry {
            id: self.id,
            addr: PeerAddr::V4([0; 4], self.reach.advertised_port(self.cfg.listen_port)),
            seq: self.member_seq,
            num_partners: self.partner_count().min(u8::MAX as usize) as u8,
            max_partners: self.cfg.accept_limit().min(u8::MAX as usize) as u8,
            ttl_s: self
                .cfg
                .member_ttl
                .as_micros()
                .div_ceil(1_000_000)
                .min(u16::MAX as u64) as u16,
            reach: self.reach.reach(),
            v6: self.reach.v6(),
        }
    }

    fn on_join(&mut self, i: usize) {
        let Some(peer) = self.links[i].peer else {
            return;
        };
        let mut rec = MemberEntry {
            id: peer.id,
            addr: peer.listen,
            seq: 0,
            num_partners: 0,
            max_partners: self.cfg.max_partners.min(u8::MAX as usize) as u8,
            ttl_s: self.cfg.member_ttl.as_micros().div_ceil(1_000_000) as u16,
            reach: Reach::Unknown,
            v6: None,
        };
        let now = self.now;
        let members = self.hand_out(REDIRECT_SAMPLE, |e| e.id != peer.id);
        let deputy = self.mcache.pick_candidate(&mut self.rng, now, |e| {
            e.id != peer.id && dialable(e, false, None).is_some()
        });
        // Newcomers become known to later joiners through the origin.
        if let Some(old) = self.mcache.get(peer.id) {
            rec.seq = old.seq;
            rec.reach = old.reach;
            rec.v6 = old.v6;
        }
        self.learn_joiner(rec);
        self.send(i, Control::Redirect { deputy, members });
    }

    fn partner_request(&self) -> Control {
        Control::PartnerRequest {
            partners: self.partner_count().min(u8::MAX as usize) as u8,
        }
    }

    fn on_partner_request(&mut self, i: usize, asker_partners: u8) {
        let Some(peer) = self.links[i].peer else {
            return;
        };
        let duplicate = self
            .links
            .iter()
            .any(|l| l.partner.is_some() && l.peer.is_some_and(|p| p.id == peer.id));
        // Established peers fill every free slot, so a newcomer would find the swarm full:
        // one with (almost) no partners gets a few slots above the limit, which refinement
        // gives back later.
        let limit = if (asker_partners as usize) < NEEDY_PARTNERS {
            self.cfg.partner_cap()
        } else {
            self.cfg.accept_limit()
        };
        let mut room = self.partner_count() < limit;
        let mut i = i;
        if !room && !duplicate && peer.role == Role::Peer && self.cfg.role == Role::Source {
            // The source's partners carry every segment into the swarm: a full source makes
            // room for a much stronger asker by letting its weakest settled partner go.
            if let Some(j) = self.weakest_partner_below(peer.upload_bytes_per_s / 2) {
                let asker = self.links[i].id;
                self.close(j, ByeReason::Refined);
                match self.link_index(asker) {
                    Some(k) => i = k,
                    None => return,
                }
                room = true;
            }
        }
        if room && !duplicate && peer.role == Role::Peer {
            self.send(i, Control::PartnerAccept);
            self.become_partners(i);
        } else {
            let sample = self.hand_out(REJECT_SAMPLE, |e| {
                e.id != peer.id && e.num_partners < e.max_partners
            });
            self.send(i, Control::PartnerReject(sample));
        }
    }

    /// The link index of the partner with the slowest uplink, if that is at most
    /// `below` bytes/s and it has been a partner for [`SOURCE_SWAP_AFTER`] (time to find
    /// others).
    fn weakest_partner_below(&self, below: u64) -> Option<usize> {
        let now = self.now;
        (0..self.links.len())
            .filter(|&j| {
                self.links[j].partner.as_ref().is_some_and(|p| {
                    p.upload_bytes_per_s <= below
                        && now.saturating_since(p.since) >= SOURCE_SWAP_AFTER
                })
            })
            .min_by_key(|&j| {
                let p = self.links[j]
                    .partner
                    .as_ref()
                    .map_or(0, |p| p.upload_bytes_per_s);
                (p, self.links[j].id.0)
            })
    }

    fn become_partners(&mut self, i: usize) {
        let Some(peer) = self.links[i].peer else {
            return;
        };
        self.links[i].partner = Some(Partner::new(self.now, peer.upload_bytes_per_s));
        let bm = self.buffer_map_message();
        self.send(i, bm);
        self.reschedule();
    }

    // ----- supplying -----

    /// Requests due before this are served first and never turned away for fresher ones:
    /// two transfer times, and never less than `CRITICAL_MIN` (a joining peer's first
    /// segment is due within its startup budget).
    fn critical_before(&self, xfer: Duration) -> Instant {
        self.now + xfer.mul(2).max(CRITICAL_MIN)
    }

    /// Time until the uploads in progress are done.
    fn active_remaining(&self) -> Duration {
        self.active_uploads
            .iter()
            .map(|&(_, _, done)| done.saturating_since(self.now))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// What we tell partners we hold: everything, except that the source only offers the
    /// segments it serves (its freshest), so that nobody picks an older one to start from
    /// and waits for a refusal.
    fn advertised_map(&self) -> super::buffer_map::BufferMap {
        let mut map = *self.store.map();
        // Segments still arriving are served from their first checked piece on.
        for e in self.inflight.iter().filter(|e| e.done > 0) {
            if map.base().dist_to(e.seg.seq) >= 0 {
                map.set(e.seg.seq);
            }
        }
        if self.cfg.role == Role::Source {
            if let (Some(oldest), Some(newest)) = (self.store.oldest(), self.store.newest()) {
                // Only the fresh window is offered; the map's base stays at the oldest
                // segment held, so that a joining peer can tell a channel that has only
                // just begun from one with history (`start_hold`).
                map.slide_to(oldest);
                let fresh = newest.sub(self.cfg.source_fresh_window.saturating_sub(1));
                let mut s = oldest;
                while s.is_before(fresh) {
                    map.clear(s);
                    s = s.next();
                }
            }
        }
        map
    }

    /// Our full buffer map, with what partners need to choose us as a supplier.
    fn buffer_map_message(&self) -> Control {
        Control::BufferMap {
            map: self.advertised_map(),
            backlog_ms: self.backlog_ms(),
            playing: self.playing(),
            spare: self.spare(),
        }
    }

    /// How long our upload queue would take to drain, as advertised to partners.
    fn backlog(&self) -> Duration {
        let queued = self.uploads.len() as u64 * self.last_segment_bytes;
        let deficit = (-self.tokens).max(0.0) as u64;
        let active = self
            .active_uploads
            .iter()
            .map(|&(_, _, done)| done.saturating_since(self.now))
            .max()
            .unwrap_or(Duration::ZERO);
        active + Duration::for_bytes(queued + deficit, self.cfg.upload_bytes_per_s)
    }

    /// Queue length, in time, past which requests are refused: the configured horizon, but
    /// always room for one queued transfer so a slow uplink never idles between requests.
    fn max_backlog(&self) -> Duration {
        let xfer = Duration::for_bytes(self.last_segment_bytes, self.cfg.upload_bytes_per_s);
        self.cfg.max_upload_backlog.max(xfer.mul(2))
    }

    fn backlog_ms(&self) -> u16 {
        self.backlog().as_millis().min(u16::MAX as u64) as u16
    }

    fn copies_of(&self, seq: Seq) -> u8 {
        let (s, n, _) = self.copies[seq.0 as usize % self.copies.len()];
        if s == seq {
            n
        } else {
            0
        }
    }

    /// Source only: `seq` has been seeded enough. At least `source_max_copies` copies, and
    /// peers that got them can relay that many stream rates between them: two copies to
    /// half-rate uplinks pass a segment on no faster than one full-rate peer would, and a
    /// swarm whose source partners are all slow peers starved on two of them (64 real
    /// peers, class-ordered arrivals: continuity 0.54). The copies stay bounded: at most
    /// four times `source_max_copies`.
    fn seeded_enough(&self, seq: Seq) -> bool {
        let (s, n, relay) = self.copies[seq.0 as usize % self.copies.len()];
        if s != seq {
            return false;
        }
        let want = self.cfg.source_max_copies;
        n >= want && (relay >= 4 * want as u16 || n >= want.saturating_mul(4))
    }

    /// A peer's uplink in quarters of the stream rate, as copies count it.
    fn relay_quarters(&self, rate: u64) -> u16 {
        let stream = self.cfg.stream_bytes_per_s.max(1);
        (rate.saturating_mul(4) / stream).clamp(1, 64) as u16
    }

    /// Takes back a copy of `seq` to a peer whose uplink is `rate` bytes/s that never
    /// arrived (its link closed mid-transfer).
    fn forget_copy(&mut self, seq: Seq, rate: u64) {
        let quarters = self.relay_quarters(rate);
        let slot = seq.0 as usize % self.copies.len();
        let (s, n, relay) = self.copies[slot];
        if s == seq {
            self.copies[slot] = (seq, n.saturating_sub(1), relay.saturating_sub(quarters));
        }
    }

    /// Notes a copy of `seq` uploaded to a peer whose uplink is `rate` bytes/s.
    fn note_copy(&mut self, seq: Seq, rate: u64) {
        let quarters = self.relay_quarters(rate);
        let slot = seq.0 as usize % self.copies.len();
        let (s, n, relay) = self.copies[slot];
        self.copies[slot] = if s == seq {
            (seq, n.saturating_add(1), relay.saturating_add(quarters))
        } else {
            (seq, 1, quarters)
        };
    }

    fn on_request(&mut self, i: usize, seq: Seq, deadline_ms: u32) {
        let link = self.links[i].id;
        if self.links[i].peer.is_none() {
            return;
        }
        let is_partner = self.links[i].partner.is_some();
        let queued_here = self
            .uploads
            .iter()
            .filter(|u| u.link == link && !u.push)
            .count();
        let pulls_queued = self.uploads.iter().filter(|u| !u.push).count();
        let deadline = self.now + Duration::from_millis(deadline_ms as u64);
        let len = match (self.store.get(seq), self.inflight.get(seq)) {
            (Some(s), _) => s.payload.len() as u64,
            (None, Some(e)) => e.seg.payload.len() as u64,
            (None, None) => self.last_segment_bytes,
        };
        let xfer = Duration::for_bytes(len, self.cfg.upload_bytes_per_s);
        // When it would be done: after the uploads in progress and the queued ones that go
        // first (those about to miss, and fresher ones).
        let critical_before = self.critical_before(xfer);
        // A request about to miss its deadline (a newcomer's first segments, a late one) is
        // served before everything that is not: only those go ahead of it.
        let critical = deadline <= critical_before;
        let ahead = self
            .uploads
            .iter()
            .filter(|u| {
                let urgent = !u.push && u.deadline <= critical_before;
                if critical {
                    urgent && u.deadline <= deadline
                } else {
                    urgent || u.seq.is_after(seq)
                }
            })
            .count() as u64;
        let finish = self.now + self.active_remaining() + xfer.mul(ahead + 1);
        // A full queue makes room for a fresher request (or a critical one) by turning away
        // its stalest non-critical one: old segments are widely held and their requesters
        // find them elsewhere, while a fresh one has few holders, and this may be one.
        let mut evict = None;
        // Queued uploads are of segments we hold: within the store's window of its newest.
        let reference = self.store.newest().unwrap_or(seq);
        if self.backlog() >= self.max_backlog() || pulls_queued >= self.cfg.upload_queue_capacity {
            evict = (0..self.uploads.len())
                .filter(|&k| {
                    let u = &self.uploads[k];
                    !u.push && u.deadline > critical_before && (critical || u.seq.is_before(seq))
                })
                .min_by_key(|&k| self.uploads[k].seq.offset_from(reference));
        }
        let full = (self.backlog() >= self.max_backlog()
            || pulls_queued >= self.cfg.upload_queue_capacity)
            && evict.is_none();
        // A partner asking far more than it could play is throttled (counted with the
        // per-partner limit).
        let allowed = self.cfg.max_request_rate * self.cfg.refine_interval.as_secs_f64()
            / self.nominal().as_secs_f64().max(1e-3);
        let throttled = self.links[i].partner.as_mut().is_some_and(|p| {
            p.requested = p.requested.saturating_add(1);
            p.requested as f64 > allowed + self.cfg.window as f64 / 4.0
        });
        let reasons = [
            !is_partner,
            !self.holds(seq),
            self.cfg.role == Role::Source && self.seeded_enough(seq),
            queued_here >= self.cfg.upload_queue_per_partner || throttled,
            self.is_ending(link),
            full,
            finish > deadline + DEADLINE_GRACE,
        ];
        if let Some(r) = reasons.iter().position(|&x| x) {
            self.stats.busy_reasons[r] += 1;
            self.stats.busy_sent += 1;
            let backlog_ms = match self.ending {
                // Ending: a backlog of twice the grace left keeps it from asking again (it
                // waits half the backlog) until we close.
                Some((l, since)) if l == link => {
                    let left = (since + ENDING_GRACE).saturating_since(self.now);
                    (left.as_millis() * 2).min(u16::MAX as u64) as u16
                }
                _ => self.backlog_ms(),
            };
            self.send(i, Control::Busy { seq, backlog_ms });
            return;
        }
        if let Some(k) = evict {
            self.turn_away(k);
        }
        self.uploads.push(UploadRequest {
            link,
            seq,
            deadline,
            requester_rate: self.rate_of(i),
            push: false,
        });
        self.start_uploads();
    }

    /// The source turns away at once the queued requests it will never serve: a segment
    /// that has had its copies, or has left its fresh window, goes behind every fresher one
    /// (`next_upload`) and would wait there until its deadline passed, with a dozen other
    /// holders in the swarm. The requester asks one of them instead.
    fn shed_unservable_requests(&mut self) {
        if self.cfg.role != Role::Source {
            return;
        }
        let newest = self.store.newest();
        let soon = self.now + CRITICAL_MIN;
        let mut k = 0;
        while k < self.uploads.len() {
            let u = self.uploads[k];
            let stale =
                newest.is_some_and(|n| u.seq.dist_to(n) >= self.cfg.source_fresh_window as i32);
            if u.push || u.deadline > soon || !(stale || self.seeded_enough(u.seq)) {
                k += 1;
                continue;
            }
            self.turn_away(k);
        }
    }

    /// Drops queued upload `k` and tells its requester we are busy (it asks elsewhere).
    fn turn_away(&mut self, k: usize) {
        let u = self.uploads.swap_remove(k);
        self.stats.busy_sent += 1;
        let backlog_ms = self.backlog_ms();
        if let Some(j) = self.link_index(u.link) {
            self.send(
                j,
                Control::Busy {
                    seq: u.seq,
                    backlog_ms,
                },
            );
        }
    }

    fn refill_tokens(&mut self) {
        let dt = self.now.saturating_since(self.tokens_at).as_secs_f64();
        self.tokens_at = self.now;
        let cap = self.cfg.upload_bytes_per_s as f64;
        self.tokens = (self.tokens + dt * cap).min(cap);
    }

    /// Index of the queued upload to serve next. A request that would miss its deadline if
    /// another upload went first is served first (earliest deadline among those). Otherwise
    /// the freshest segment goes first, to the strongest uploader: it is the one the swarm
    /// still has to spread, and whoever gets it can serve it on. Serving plain earliest
    /// deadline first would keep fresh segments waiting behind old ones and slow every hop.
    /// The source ranks by copies sent first: it should seed each segment, not repeat one.
    fn next_upload(&self) -> Option<usize> {
        let xfer = Duration::for_bytes(self.last_segment_bytes, self.cfg.upload_bytes_per_s);
        let critical_before = self.critical_before(xfer);
        let critical = (0..self.uploads.len())
            .filter(|&k| !self.uploads[k].push && self.uploads[k].deadline <= critical_before)
            .min_by_key(|&k| self.uploads[k].deadline);
        if critical.is_some() && self.cfg.role != Role::Source {
            return critical;
        }
        let source = self.cfg.role == Role::Source;
        // Queued uploads are of segments we held when asked: ranked by their offset from
        // our newest (a total order).
        let reference = self.store.newest().unwrap_or(Seq(0));
        (0..self.uploads.len()).min_by(|&a, &b| {
            let (ua, ub) = (&self.uploads[a], &self.uploads[b]);
            let copies = if source {
                self.copies_of(ua.seq).cmp(&self.copies_of(ub.seq))
            } else {
                core::cmp::Ordering::Equal
            };
            copies
                .then(
                    ub.seq
                        .offset_from(reference)
                        .cmp(&ua.seq.offset_from(reference)),
                )
                .then(ub.requester_rate.cmp(&ua.requester_rate))
                .then(ua.deadline.cmp(&ub.deadline))
        })
    }

    /// Whether another upload may start: `concurrent_uploads` at a time, whether of segments
    /// held whole or still arriving. Letting uploads of segments still arriving run beside
    /// the whole-segment slot (they wait for their upstream's pieces) was measured worse:
    /// 100 churn peers, 180 s, seeds 1-4, continuity 0.9743 against 0.9758 with one slot
    /// (0.944 against 0.958 with 60 % of peers behind NATs): the extra uploads, each charged
    /// whole, held back the next one a partner was waiting for.
    fn upload_slot_free(&self) -> bool {
        self.active_uploads.len() < self.cfg.concurrent_uploads
    }

    fn start_uploads(&mut self) {
        while self.upload_slot_free() && !self.uploads.is_empty() {
            self.refill_tokens();
            if self.tokens < 0.0 {
                let wait =
                    Duration::for_bytes((-self.tokens) as u64 + 1, self.cfg.upload_bytes_per_s);
                self.timers.set(Timer::UploadResume, self.now + wait);
                return;
            }
            let Some(k) = self.next_upload() else { return };
            let u = self.uploads.swap_remove(k);
            let Some(li) = self.link_index(u.link) else {
                continue;
            };
            if u.push {
                let wanted = self.links[li]
                    .partner
                    .as_ref()
                    .is_some_and(|p| !p.map.has(u.seq) && p.child_of != 0);
                let over = self.cfg.role == Role::Source && self.seeded_enough(u.seq);
                if !wanted || over || !self.holds(u.seq) {
                    continue;
                }
            }
            // Already sent there (a push and a request for the same segment): once is enough.
            if self
                .active_uploads
                .iter()
                .any(|a| a.0 == u.link && a.1 == u.seq)
                || self.links[li]
                    .partner
                    .as_ref()
                    .is_some_and(|p| p.sent_recently(u.seq))
            {
                continue;
            }
            let too_late = self.now > u.deadline + DEADLINE_GRACE;
            // The source seeds: copies of the freshest segments only, so that its budget
            // never queues behind old work the swarm can relay itself.
            let over_copies = self.cfg.role == Role::Source
                && (self.seeded_enough(u.seq)
                    || self
                        .store
                        .newest()
                        .is_some_and(|n| u.seq.dist_to(n) >= self.cfg.source_fresh_window as i32));
            // A segment still arriving goes out as its pieces are checked (the driver holds
            // its upload at the pieces we hold).
            let held = match self.store.get(u.seq) {
                Some(s) => Some(s.clone()),
                None => self.inflight.get(u.seq).map(|e| e.seg.clone()),
            };
            let partial = !self.store.has(u.seq);
            let seg = match held {
                Some(s) if !too_late && !over_copies => s,
                _ => {
                    self.stats.busy_sent += 1;
                    let backlog_ms = self.backlog_ms();
                    self.send(
                        li,
                        Control::Busy {
                            seq: u.seq,
                            backlog_ms,
                        },
                    );
                    continue;
                }
            };
            self.tokens -= seg.payload.len() as f64;
            self.note_copy(u.seq, u.requester_rate);
            self.stats.uploads += 1;
            if partial {
                self.stats.uploads_partial += 1;
            }
            let l = &mut self.links[li];
            l.last_sent = self.now;
            if let Some(p) = l.partner.as_mut() {
                p.note_sent(u.seq);
                p.sent += 1;
                // It will hold it: no need to push or announce it there again.
                p.map.set(u.seq);
            }
            let done = self.now
                + Duration::for_bytes(seg.payload.len() as u64, self.cfg.upload_bytes_per_s);
            self.active_uploads.push((u.link, u.seq, done));
            self.out.push_back(Output::Send {
                link: u.link,
                msg: Message::Segment(seg),
            });
        }
    }

    /// An idle uplink is wasted capacity: offer the freshest segment we hold that a partner
    /// lacks and can still play in time. The partner takes it by requesting it (so a segment
    /// it already asked elsewhere for is declined, not sent twice).
    fn maybe_offer(&mut self) {
        let now = self.now;
        self.offers
            .retain(|o| now.saturating_since(o.2) < Duration::from_secs(1));
        if !self.cfg.offers
            || !self.active_uploads.is_empty()
            || !self.uploads.is_empty()
            || self.offers.len() >= MAX_OFFERS
            || self.tokens < 0.0
        {
            return;
        }
        let Some(newest) = self.store.newest() else {
            return;
        };
        let nominal = self.cfg.segment_duration.as_micros().max(1);
        let xfer = Duration::for_bytes(self.last_segment_bytes, self.cfg.upload_bytes_per_s);
        let mut best: Option<(usize, Seq)> = None;
        let n = self.links.len();
        let start = if n > 0 { self.rng.below(n) } else { 0 };
        for k in 0..n {
            let j = (start + k) % n;
            let l = &self.links[j];
            let Some(p) = &l.partner else { continue };
            let Some((play, at)) = p.playing else {
                continue;
            };
            if self.offers.iter().any(|o| o.0 == l.id) || self.is_ending(l.id) {
                continue;
            }
            // The partner's play position now, and the first segment we could still bring
            // before its deadline.
            let played = (now.saturating_since(at).as_micros() / nominal) as u32;
            let lead = ((xfer + l.one_way).as_micros() + 200_000).div_ceil(nominal) as u32;
            let first = play.add(played.saturating_add(lead));
            // Only what we hold can be offered: the store's window back from our newest,
            // however far back the partner says it plays (its position is checked, this bound
            // holds whatever it says).
            let mut s = newest;
            for _ in 0..self.store.window() {
                if s.is_before(first) {
                    break;
                }
                if best.is_some_and(|(_, b)| !s.is_after(b)) {
                    break;
                }
                if self.store.has(s) && !p.map.has(s) {
                    best = Some((j, s));
                    break;
                }
                s = s.sub(1);
            }
        }
        if let Some((j, seq)) = best {
            let link = self.links[j].id;
            self.offers.push((link, seq, now));
            self.send(j, Control::Offer { seq });
        }
    }

    /// A partner offers `seq`: take it with a request unless we hold it, have it coming, or
    /// have asked someone else.
    fn on_offer(&mut self, i: usize, seq: Seq) {
        let taken = self.store.has(seq)
            || self.requests.iter().any(|r| r.seq == seq)
            || self.links[i].partner.is_none()
            || self.is_ending(self.links[i].id)
            || !self.joined
            || self.cfg.role == Role::Source
            || self.requests.len() >= self.cfg.max_requests + MAX_OFFERS
            // An offer fills a slot the partner has free, no more: a partner offering one
            // segment after another would otherwise hold every request we may have out.
            || self.links[i]
                .partner
                .as_ref()
                .is_some_and(|p| p.inflight >= self.cfg.max_requests_per_partner);
        // An offer is taken only of a segment we could play: from where playback stands to a
        // window on (a position beyond that is refused and counted).
        let wanted = match self.playout {
            Playout::Playing { next, .. } | Playout::Starting { start: next, .. } => {
                (0..self.cfg.window as i32).contains(&seq.offset_from(next))
            }
            // Before a start is chosen: any position within the horizon.
            Playout::Idle => self.checked_position(Some(seq)).is_some(),
        };
        if !wanted && !matches!(self.playout, Playout::Idle) {
            // Counts it if it lies beyond the horizon, not merely outside the window.
            let _ = self.checked_position(Some(seq));
        }
        if taken || !wanted {
            self.send(i, Control::Decline { seq });
            return;
        }
        let now = self.now;
        let deadline = self.deadline_of(seq);
        let deadline_ms = deadline
            .saturating_since(now)
            .as_millis()
            .min(u32::MAX as u64) as u32;
        let lead = self.links[i].one_way.mul(2);
        if let Some(p) = self.links[i].partner.as_mut() {
            p.asked(now, lead);
        }
        self.requests.push(Request {
            seq,
            link: self.links[i].id,
            sent_at: now,
            expect_by: now + Duration::from_secs(4),
        });
        self.stats.requests_sent += 1;
        self.send(i, Control::Request { seq, deadline_ms });
    }

    // ----- receiving -----

    fn on_ingest(&mut self, seg: Segment<P>) {
        if self.cfg.role != Role::Source {
            return;
        }
        let seq = seg.seq;
        self.last_segment_bytes = seg.payload.len() as u64;
        if self.store.insert(seg) == Inserted::New {
            self.push_to_children(seq);
            self.announce(seq, None);
        }
    }

    /// Tells every partner that lacks `seq` that we now hold it.
    fn announce(&mut self, seq: Seq, except: Option<LinkId>) {
        let backlog_ms = self.backlog_ms();
        let spare = self.spare();
        for j in 0..self.links.len() {
            let l = &self.links[j];
            if Some(l.id) == except {
                continue;
            }
            if let Some(p) = &l.partner {
                if !p.map.has(seq) {
                    self.send(
                        j,
                        Control::Have {
                            seq,
                            backlog_ms,
                            spare,
                        },
                    );
                }
            }
        }
    }

    fn on_segment(&mut self, i: usize, seg: Segment<P>) {
        let link = self.links[i].id;
        let seq = seg.seq;
        // Whole now (from whichever link): its bytes move from the reservation to the ring,
        // and partners already told at its first piece are not told again.
        let announced = match self.inflight.complete(seq) {
            Some(e) => {
                self.store.release(e.seg.payload.len() as u64);
                e.announced
            }
            None => false,
        };
        if let Some(k) = self.requests.iter().position(|r| r.seq == seq) {
            let r = self.requests.swap_remove(k);
            if let Some(j) = self.link_index(r.link) {
                if let Some(p) = self.links[j].partner.as_mut() {
                    p.answered(self.now);
                    // What it delivered of what we asked it for measures its rate.
                    if r.link == link {
                        p.delivered(seg.payload.len() as u64);
                    }
                }
            }
        }
        if let Some(p) = self.links[i].partner.as_mut() {
            p.received += 1;
            p.map.set(seq);
        }
        self.stats.segments_received += 1;
        self.last_segment_bytes = seg.payload.len() as u64;
        self.note_arrival(seg.origin_us, seq);
        let fresh = self.store.newest().is_none_or(|n| seq.is_after(n));
        match self.store.insert(seg) {
            Inserted::New => {
                if fresh {
                    self.last_fresh = self.now;
                }
                if !announced {
                    self.push_to_children(seq);
                    self.announce(seq, Some(link));
                }
                self.drain_playout();
            }
            Inserted::Duplicate | Inserted::TooOld => self.stats.duplicates += 1,
        }
        self.reschedule();
    }

    // ----- cut-through: segments still arriving -----

    /// We hold `seq` whole, or have it arriving (then it is served as its pieces are
    /// checked).
    fn holds(&self, seq: Seq) -> bool {
        self.store.has(seq) || self.inflight.has(seq)
    }

    /// A checked manifest: `seg` is arriving on link `i`. It is tracked (and its bytes set
    /// aside in the store's budget) if it is new to us, within the store's window, and the
    /// table has room; otherwise it simply arrives whole.
    fn on_segment_begun(&mut self, i: usize, seg: Segment<P>) {
        if self.links[i].peer.is_none() {
            self.close(i, ByeReason::Protocol);
            return;
        }
        let seq = seg.seq;
        self.note_progress(i, seq);
        if self.store.has(seq) || self.inflight.has(seq) || self.inflight.is_full() {
            return;
        }
        // Within the store's window (an older one would not be kept), and near our position.
        if self
            .store
            .newest()
            .is_some_and(|n| n.dist_to(seq) <= -(self.store.window() as i32))
            || self.checked_position(Some(seq)).is_none()
        {
            return;
        }
        let len = seg.payload.len() as u64;
        if !self.store.reserve(len) {
            return;
        }
        let link = self.links[i].id;
        if self.inflight.begin(self.now, link, seg) != Begun::New {
            self.store.release(len);
        }
    }

    /// `seq` is coming on link `i`: a request of ours for it there is not withdrawn while its
    /// pieces keep coming (one served as it arrives at its supplier goes at that upstream's
    /// pace, slower than we reckoned when we asked).
    fn note_progress(&mut self, i: usize, seq: Seq) {
        let link = self.links[i].id;
        let by = self.now + PIECE_PATIENCE;
        if let Some(r) = self
            .requests
            .iter_mut()
            .find(|r| r.seq == seq && r.link == link)
        {
            r.expect_by = r.expect_by.max(by);
        }
    }

    /// Pieces of a segment in progress were checked. At the first, partners learn we hold it
    /// (the have they would get when it is whole, sent now: no more control traffic) and its
    /// substream's children are queued a push; from then on it is served.
    fn on_piece(&mut self, i: usize, seq: Seq, done: u32) {
        self.note_progress(i, seq);
        let link = self.links[i].id;
        let Some(e) = self.inflight.piece(link, seq, done) else {
            return;
        };
        if e.announced {
            return;
        }
        e.announced = true;
        self.last_segment_bytes = e.seg.payload.len() as u64;
        if let Some(p) = self.links[i].partner.as_mut() {
            p.map.set(seq);
        }
        self.push_to_children(seq);
        self.announce(seq, Some(link));
    }

    /// The partner on link `i` gave up sending us `seq`: the partial copy goes (and its
    /// uploads from here), the request is over and the segment is asked elsewhere.
    fn on_segment_aborted(&mut self, i: usize, seq: Seq) {
        let link = self.links[i].id;
        self.stats.aborts_received += 1;
        if let Some(e) = self.inflight.drop_seq(link, seq) {
            self.drop_in_progress(e);
        }
        if let Some(k) = self
            .requests
            .iter()
            .position(|r| r.seq == seq && r.link == link)
        {
            self.requests.swap_remove(k);
            let now = self.now;
            if let Some(p) = self.links[i].partner.as_mut() {
                p.answered(now);
                // It no longer holds it: not asked again for this one.
                p.map.clear(seq);
            }
        }
        self.quiet = None;
        self.reschedule();
    }

    /// A segment in progress will not complete here: its bytes are given back, every upload
    /// of it is aborted (the receiver is told and asks elsewhere) and queued ones are turned
    /// away.
    fn drop_in_progress(&mut self, e: InProgress<P>) {
        let seq = e.seg.seq;
        self.store.release(e.seg.payload.len() as u64);
        let mut k = 0;
        while k < self.active_uploads.len() {
            let (link, s, _) = self.active_uploads[k];
            if s != seq {
                k += 1;
                continue;
            }
            self.active_uploads.swap_remove(k);
            self.stats.aborts_sent += 1;
            self.out.push_back(Output::Abort { link, seq });
            if let Some(j) = self.link_index(link) {
                if let Some(p) = self.links[j].partner.as_mut() {
                    p.map.clear(seq);
                }
            }
        }
        let mut k = 0;
        while k < self.uploads.len() {
            if self.uploads[k].seq != seq {
                k += 1;
            } else if self.uploads[k].push {
                self.uploads.swap_remove(k);
            } else {
                self.turn_away(k);
            }
        }
        self.quiet = None;
        self.reschedule();
        self.start_uploads();
    }

    // ----- playout -----

    fn nominal(&self) -> Duration {
        self.cfg.segment_duration
    }

    /// Hands every in-order segment we hold to the player and arms the deadline timer for the
    /// first one we lack.
    fn drain_playout(&mut self) {
        if let Playout::Starting { start, since } = self.playout {
            // A later segment came first (the chosen one sits in a long queue, often the
            // source's): start at the oldest we hold. `start_hold` keeps the slack a start
            // needs however late the segment.
            let start = if self.store.has(start) {
                start
            } else {
                // (At once only for one that may play within a segment duration: a fresher
                // one, from the source, would hold us longer than the chosen one usually takes
                // to come. Any after `START_PATIENCE`: the chosen one is stuck in a queue.)
                let soon = self.now + self.nominal();
                let impatient = self.now.saturating_since(since) >= START_PATIENCE;
                match self.store.oldest_from(start).filter(|&held| {
                    impatient
                        || self
                            .store
                            .get(held)
                            .is_some_and(|seg| self.start_hold(seg).is_none_or(|at| at <= soon))
                }) {
                    Some(held) => {
                        self.withdraw_requests_outside(held);
                        self.playout = Playout::Starting { start: held, since };
                        held
                    }
                    None => {
                        if !impatient && self.store.oldest_from(start).is_some() {
                            self.timers.set(Timer::Playout, since + START_PATIENCE);
                        }
                        return;
                    }
                }
            };
            // Start once the first `start_buffer` segments are in hand: the ones right after
            // the first are due within seconds, and a joining peer has no slack yet.
            let ready = (0..self.cfg.start_buffer.max(1)).all(|k| self.store.has(start.add(k)));
            let Some(seg) = self.store.get(start).filter(|_| ready) else {
                return;
            };
            if let Some(at) = self.start_hold(seg) {
                self.timers.set(Timer::Playout, at);
                return;
            }
            let seg = seg.clone();
            let dur = Duration::from_micros(seg.duration_us as u64);
            if self.stats.first_play_at.is_none() {
                self.stats.first_play_at = Some(self.now);
            }
            // Starting again after a hole in the stream: what it skipped counts missed.
            if let Some(after) = self.resume_after.take() {
                self.stats.missed += after.dist_to(start).clamp(0, self.cfg.window as i32) as u64;
            }
            self.stats.played += 1;
            self.out.push_back(Output::Play {
                segment: seg,
                deadline: self.now,
            });
            self.playout = Playout::Playing {
                next: start.next(),
                deadline: self.now + dur,
                stalled: false,
            };
        }
        if let Playout::Playing {
            mut next,
            mut deadline,
            mut stalled,
        } = self.playout
        {
            while let Some(seg) = self.store.get(next) {
                let seg = seg.clone();
                let dur = Duration::from_micros(seg.duration_us as u64);
                // A segment we stalled for was counted missed at its first deadline.
                if !stalled {
                    self.stats.played += 1;
                }
                stalled = false;
                self.out.push_back(Output::Play {
                    segment: seg,
                    deadline,
                });
                deadline += dur;
                next = next.next();
            }
            self.playout = Playout::Playing {
                next,
                deadline,
                stalled,
            };
            self.timers.set(Timer::Playout, deadline);
        }
    }

    /// The playback deadline of `next` passed without it. The first time, count it missed and,
    /// if it is on its way (requested, or a partner holds it) and the stall budget allows,
    /// wait one more segment duration for it: the player pauses and the peer's lag grows by
    /// that much, which a peer that started too close to the live edge needs. Otherwise (or
    /// if it is still missing after the wait) skip it: the output marks a discontinuity.
    fn on_playout_deadline(&mut self) {
        let Playout::Playing {
            mut next,
            mut deadline,
            mut stalled,
        } = self.playout
        else {
            // A start held back until now.
            self.drain_playout();
            return;
        };
        while deadline <= self.now && !self.store.has(next) {
            if !stalled {
                self.stats.missed += 1;
                let cause = self.late_cause(next);
                match cause {
                    LateCause::InFlight { .. } => self.stats.missed_in_flight += 1,
                    LateCause::Unrequested { .. } => self.stats.missed_unrequested += 1,
                    LateCause::Unheld => {}
                }
                // It exists (partners hold later ones) and is not in our hands yet: the swarm
                // is slower than our lag. Pausing beats skipping.
                let front = self.note_partners_front();
                let exists = front.is_some_and(|n| !n.is_before(next));
                // Or every partner is behind us (we hold newer segments than any of them) and
                // the swarm still moves on: we played ahead of them, fed by a partner since
                // lost (the source, as a rule), and it reaches them in the swarm's own time.
                // Skipping would skip every segment until they catch up. (Where all stand
                // still at the same segment, the source is gone: skip.)
                let ours = self.store.newest();
                let behind = match (front, self.partners_front) {
                    (Some(n), Some((_, seen)))
                        if n.is_before(next) && ours.is_some_and(|o| o.is_after(n)) =>
                    {
                        let moving =
                            self.now.saturating_since(seen) < self.nominal().mul(FRONT_STILL_AFTER);
                        moving.then(|| n.dist_to(next) as u64)
                    }
                    _ => None,
                };
                if cause == LateCause::Unheld && exists && self.in_stream_gap(next) {
                    // A hole in the stream: the source stopped and came back (its new run
                    // starts after the hole), or the swarm lost a stretch. Waiting or
                    // skipping one segment a duration would only delay the new run: start
                    // again where the stream is, as a joining peer does.
                    self.out.push_back(Output::Missed {
                        seq: next,
                        deadline,
                    });
                    self.resume_after = Some(next.next());
                    self.playout = Playout::Idle;
                    self.reschedule();
                    return;
                }
                // Or it is not cut yet: we play at the live edge (its estimated ingest is less
                // than a segment duration before its deadline). Skipping would keep us there,
                // skipping every segment by the time it takes to reach us.
                let uncut =
                    self.last_origin.is_some() && self.lag_at(next, deadline) < self.nominal();
                let coming = cause != LateCause::Unheld || exists || behind.is_some() || uncut;
                let room = self.cfg.max_lag.saturating_sub(self.lag_at(next, deadline));
                if coming && self.stats.stalls < self.cfg.stall_limit && room >= self.nominal() {
                    // Pause long enough to reach the lag at which segments have been reaching
                    // us, not one segment at a time: one pause instead of many.
                    let mut pause = self.stall_length(next, deadline, behind.unwrap_or(0));
                    // Pausing again soon after the last pause: that one did not reach the lag
                    // the swarm needs (on a young stream it grows as the swarm does). Pause
                    // twice as long: two or three pauses instead of five one after another.
                    if let Some((at, len)) = self.last_stall {
                        if self.now.saturating_since(at) < STALL_ESCALATE_WITHIN {
                            pause = pause.max(len.mul(2)).min(MAX_STALL);
                        }
                    }
                    self.last_stall = Some((self.now, pause));
                    let pause = pause.min(room);
                    self.out.push_back(Output::Late {
                        seq: next,
                        pause,
                        cause,
                    });
                    self.stats.stalls += 1;
                    self.stats.stall_us += pause.as_micros();
                    stalled = true;
                    deadline += pause;
                    continue;
                }
            }
            stalled = false;
            self.out.push_back(Output::Missed {
                seq: next,
                deadline,
            });
            // Forget a pending request for it: too late to matter.
            if let Some(k) = self.requests.iter().position(|r| r.seq == next) {
                let r = self.requests.swap_remove(k);
                if let Some(j) = self.link_index(r.link) {
                    self.send(j, Control::Cancel { seq: r.seq });
                    if let Some(p) = self.links[j].partner.as_mut() {
                        p.answered(self.now);
                    }
                }
            }
            deadline += self.nominal();
            next = next.next();
        }
        self.playout = Playout::Playing {
            next,
            deadline,
            stalled,
        };
        self.drain_playout();
        self.reschedule();
    }

    /// Where `seq` is, its deadline just passed: asked for, held by partners, or nowhere.
    fn late_cause(&self, seq: Seq) -> LateCause {
        let holders = self
            .links
            .iter()
            .filter(|l| l.partner.as_ref().is_some_and(|p| p.map.has(seq)))
            .count()
            .min(u8::MAX as usize) as u8;
        if let Some(r) = self.requests.iter().find(|r| r.seq == seq) {
            LateCause::InFlight {
                asked: self.now.saturating_since(r.sent_at),
                holders,
            }
        } else if holders > 0 {
            LateCause::Unrequested { holders }
        } else {
            LateCause::Unheld
        }
    }

    /// The position what partners say is checked against, and how far past it they may be:
    /// our newest segment (partners may have moved on by one segment per nominal duration
    /// since it came), else where playback starts or stands; none before we hold or chose
    /// anything (then `choose_start` goes by what most partners agree on).
    fn position_reference(&self) -> Option<(Seq, u32)> {
        if let Some(n) = self.store.newest() {
            let quiet = self.now.saturating_since(self.last_fresh).as_micros()
                / self.nominal().as_micros().max(1);
            return Some((n, quiet.min(u32::MAX as u64) as u32));
        }
        match self.playout {
            Playout::Idle => None,
            Playout::Starting { start, .. } => Some((start, 0)),
            Playout::Playing { next, .. } => Some((next, 0)),
        }
    }

    /// A position a partner stated, if it lies within [`POSITION_HORIZON`] of ours (forward,
    /// also as far as the stream has moved on since our newest came); else none, counted.
    fn checked_position(&mut self, s: Option<Seq>) -> Option<Seq> {
        let s = s?;
        let Some((reference, ahead)) = self.position_reference() else {
            return Some(s);
        };
        let d = s.offset_from(reference) as i64;
        if d >= -(POSITION_HORIZON as i64) && d <= POSITION_HORIZON as i64 + ahead as i64 {
            Some(s)
        } else {
            self.stats.positions_refused += 1;
            None
        }
    }

    /// A partner's buffer map, if what it holds lies within [`POSITION_HORIZON`] of our
    /// position; else an empty one at our position (it holds nothing we can use), counted.
    fn checked_map(&mut self, map: BufferMap) -> BufferMap {
        let Some((reference, _)) = self.position_reference() else {
            return map;
        };
        // An empty map states no position (a peer that holds nothing yet sends its default
        // base): kept where its base is near ours, else moved to ours, and never counted.
        let Some(at) = map.newest() else {
            return if near(map.base(), reference) {
                map
            } else {
                BufferMap::empty(reference)
            };
        };
        if self.checked_position(Some(at)).is_some() {
            map
        } else {
            BufferMap::empty(reference)
        }
    }

    /// Chooses where a joining peer starts: `start_behind` segments before the newest any
    /// partner holds, and no later than `start_margin` before the newest that a
    /// `start_quantile` share of partners hold (a segment few hold is still spreading; starting
    /// there leaves no slack for what follows). The start
    /// is moved forward to a segment someone holds if the swarm does not reach back so far.
    fn choose_start(&mut self) {
        // The source offers only its freshest segments: a start chosen from its map alone
        // is at the live edge and must be held back (`start_hold`). Peers' maps, which show
        // the history, usually come within a round trip or two; wait a moment for them.
        if self.fed_by_source_only()
            && self
                .stats
                .joined_at
                .is_some_and(|at| self.now.saturating_since(at) < SOURCE_ONLY_START_WAIT)
        {
            return;
        }
        let mut newests: Vec<Seq> = self
            .links
            .iter()
            .filter_map(|l| l.partner.as_ref().and_then(|p| p.map.newest()))
            .collect();
        // Positions are ranked by their offset from one reference (a total order): the one
        // most partners agree with, and those further than `POSITION_HORIZON` from it are
        // left out (a partner's map off in another part of the sequence range is no guide).
        let Some(reference) = consensus(&newests) else {
            return;
        };
        newests.retain(|s| near(*s, reference));
        newests.sort_by_key(|s| core::cmp::Reverse(s.offset_from(reference)));
        let newest = newests[0];
        // The newest segment (nearly) every partner holds: it has spread through the swarm,
        // so what follows it will too, in time.
        let k = ((newests.len() as f64 * self.cfg.start_quantile).ceil() as usize)
            .clamp(1, newests.len());
        let majority = newests[k - 1].sub(self.cfg.start_margin);
        let behind = newest.sub(self.cfg.start_behind);
        let mut target = if majority.is_before(behind) {
            majority
        } else {
            behind
        };
        // Partners that play have found a lag the swarm can feed: start where the median of
        // them plays now (their reports advance one segment per nominal duration).
        let nominal = self.nominal().as_micros().max(1);
        let mut plays: Vec<Seq> = self
            .links
            .iter()
            .filter_map(|l| l.partner.as_ref().and_then(|p| p.playing))
            .map(|(s, at)| s.add((self.now.saturating_since(at).as_micros() / nominal) as u32))
            .filter(|s| near(*s, reference))
            .collect();
        if !plays.is_empty() {
            plays.sort_by_key(|s| s.offset_from(reference));
            let median = plays[(plays.len() - 1) / 2];
            if median.is_before(target) {
                target = median;
            }
        }
        // The swarm may not reach back so far: start at the first segment someone holds.
        // (After a hole in the stream, the median partner may still stand in it: search
        // the whole window.)
        for _ in 0..self.cfg.window {
            let held = self.store.has(target)
                || self
                    .links
                    .iter()
                    .any(|l| l.partner.as_ref().is_some_and(|p| p.map.has(target)));
            if held {
                break;
            }
            target = target.next();
        }
        self.withdraw_requests_outside(target);
        self.playout = Playout::Starting {
            start: target,
            since: self.now,
        };
        self.drain_playout();
    }

    /// Withdraws our requests for segments outside the window either side of `start`, a
    /// start just chosen or moved: they were made for an earlier one (partners' maps, or
    /// segments far from it, moved it), and their slots are wanted here.
    fn withdraw_requests_outside(&mut self, start: Seq) {
        let window = self.cfg.window as i32;
        let mut k = 0;
        while k < self.requests.len() {
            let d = self.requests[k].seq.offset_from(start);
            if (-window..window).contains(&d) {
                k += 1;
                continue;
            }
            let r = self.requests.swap_remove(k);
            if let Some(j) = self.link_index(r.link) {
                self.send(j, Control::Cancel { seq: r.seq });
                if let Some(p) = self.links[j].partner.as_mut() {
                    p.answered(self.now);
                }
            }
        }
    }

    /// When a start segment in hand may play, if not now. On a stream that has only just
    /// begun (nobody holds a segment `start_behind` before it; the source's map tells its
    /// oldest), once it is `start_behind` segment durations old: there is no history to
    /// start behind, and a peer that played its newest segment at once would find every
    /// following one due the moment it is cut. (At most `start_behind` durations from now,
    /// whatever the clocks say; not after a hole in the stream: that viewer has waited
    /// already.) With history: at once when only the source feeds us (a box zapping to a
    /// channel nobody else watches must not wait 4 s; the source sends each segment as it is
    /// cut), else once it is `START_AGE_FED_BY_PEERS` durations old: what follows comes
    /// through peers a hop or more behind the source, and a peer that started at their newest
    /// would ask for every next segment with no time to spare, ahead of other joiners' starts
    /// (a flash crowd of 200: startup p95 5.52 s on seed 1 without it, 4.43 s with it).
    fn start_hold(&self, seg: &Segment<P>) -> Option<Instant> {
        if self.resume_after.is_some() {
            return None;
        }
        let hist = self.history_before(seg.seq.sub(self.cfg.start_behind));
        let hold_n: u64 = if !hist {
            self.cfg.start_behind as u64
        } else if self.fed_by_source_only() {
            return None;
        } else {
            START_AGE_FED_BY_PEERS
        };
        let behind = self.nominal().mul(hold_n);
        let origin = seg.origin_us as i64 - self.cfg.origin_offset_us;
        let at = (origin + behind.as_micros() as i64).max(0) as u64;
        let at = Instant::ZERO + Duration::from_micros(at);
        (at > self.now).then(|| at.min(self.now + behind))
    }

    /// How long playback pauses for a late segment `next` due at `deadline`: up to the lag
    /// this node needs (the latest of the last 32 arrivals after ingest, plus a margin), and
    /// at least the `behind` segment durations our partners need to reach it (plus one),
    /// whole segment durations, at least one, at most `MAX_STALL`.
    fn stall_length(&self, next: Seq, deadline: Instant, behind: u64) -> Duration {
        let nominal = self.nominal();
        let mut pause = nominal.mul(behind + 1);
        if let Some(needed) = self.needed_lag() {
            let short = needed.saturating_sub(self.lag_at(next, deadline));
            if short > Duration::ZERO {
                let n = short.as_micros().div_ceil(nominal.as_micros().max(1));
                pause = pause.max(nominal.mul(n.max(1)));
            }
        }
        pause.min(MAX_STALL)
    }

    /// `seq` lies in a hole in the stream: neither we nor any partner hold any of the
    /// `GAP_PROBE` segments before it (the caller knows partners hold later ones).
    fn in_stream_gap(&self, seq: Seq) -> bool {
        (1..=GAP_PROBE).all(|k| {
            let s = seq.sub(k);
            !self.store.has(s)
                && !self
                    .links
                    .iter()
                    .any(|l| l.partner.as_ref().is_some_and(|p| p.map.has(s)))
        })
    }

    /// Whether the stream reaches back to `seq`: we or a partner hold it or an older segment
    /// (the source offers only its fresh window; its map's base is its oldest segment).
    /// Whether only the source's map shows anything (a channel nobody else watches).
    fn fed_by_source_only(&self) -> bool {
        self.links
            .iter()
            .filter(|l| l.partner.as_ref().is_some_and(|p| p.map.newest().is_some()))
            .all(|l| l.peer.is_some_and(|p| p.role == Role::Source))
    }

    fn history_before(&self, seq: Seq) -> bool {
        let reaches = |o: Seq| !o.is_after(seq);
        self.store.oldest().is_some_and(reaches)
            || self.links.iter().any(|l| {
                let Some(p) = l.partner.as_ref() else {
                    return false;
                };
                match l.peer.map(|i| i.role) {
                    Some(Role::Source) => reaches(p.map.base()),
                    _ => p.map.oldest().is_some_and(reaches),
                }
            })
    }

    /// The newest segment any partner holds (see `partners_front`).
    fn note_partners_front(&mut self) -> Option<Seq> {
        let front = self
            .links
            .iter()
            .filter_map(|l| l.partner.as_ref().and_then(|p| p.map.newest()))
            .reduce(Seq::max)?;
        if self.partners_front.is_none_or(|(n, _)| front.is_after(n)) {
            self.partners_front = Some((front, self.now));
        }
        Some(front)
    }

    /// The lag `next` would play at if due at `deadline` (its ingest time estimated from the
    /// newest segment whose ingest time we know); zero while we know none.
    fn lag_at(&self, next: Seq, deadline: Instant) -> Duration {
        let Some((seq, origin_us)) = self.last_origin else {
            return Duration::ZERO;
        };
        let origin = origin_us as i64 - self.cfg.origin_offset_us
            + seq.dist_to(next) as i64 * self.nominal().as_micros() as i64;
        Duration::from_micros((deadline.as_micros() as i64 - origin).max(0) as u64)
    }

    /// The lag this node needs, from the arrival delays it has seen.
    fn needed_lag(&self) -> Option<Duration> {
        let n = self.arrival_count.min(self.arrival_delays.len());
        if n == 0 {
            return None;
        }
        // The latest of the recent arrivals: the lag that would have caught all of them.
        let worst = self.arrival_delays[..n].iter().copied().max().unwrap_or(0);
        Some(Duration::from_millis(worst as u64) + STALL_MARGIN)
    }

    /// Notes how long after its ingest a whole segment reached us.
    fn note_arrival(&mut self, seg_origin_us: u64, seq: Seq) {
        let origin = seg_origin_us as i64 - self.cfg.origin_offset_us;
        let delay_ms = ((self.now.as_micros() as i64 - origin).max(0) / 1000).min(u32::MAX as i64);
        let k = self.arrival_count % self.arrival_delays.len();
        self.arrival_delays[k] = delay_ms as u32;
        self.arrival_count += 1;
        if self.last_origin.is_none_or(|(s, _)| seq.is_after(s)) {
            self.last_origin = Some((seq, seg_origin_us));
        }
    }

    /// The segment we play next, if playing.
    fn playing(&self) -> Option<Seq> {
        match self.playout {
            Playout::Playing { next, .. } => Some(next),
            _ => None,
        }
    }

    /// The deadline of `seq` as things stand.
    fn deadline_of(&self, seq: Seq) -> Instant {
        let nominal = self.nominal();
        match self.playout {
            Playout::Playing { next, deadline, .. } => {
                let d = next.dist_to(seq).max(0) as u64;
                deadline + nominal.mul(d)
            }
            Playout::Starting { start, since } => {
                // Playback begins when the start buffer is in hand: all of it is due within
                // the startup budget (fetched in parallel), what follows one duration apart.
                let d = (start.dist_to(seq).max(0) as u64)
                    .saturating_sub(self.cfg.start_buffer.max(1) as u64 - 1);
                (since + self.cfg.startup_budget).max(self.now) + nominal.mul(d)
            }
            Playout::Idle => self.now + nominal.mul(self.cfg.window as u64),
        }
    }

    // ----- scheduling -----

    /// Something a quiet scheduling pass did not see has changed (a link, a request, the
    /// playout): the next pass runs in full.
    fn reschedule(&mut self) {
        self.schedule_due = true;
        self.quiet = None;
    }

    /// One scheduling pass; true when it was skipped as quiet (see `Node::quiet`).
    fn schedule(&mut self) -> bool {
        if self.cfg.role == Role::Source || !self.joined {
            self.quiet = None;
            return false;
        }
        if matches!(self.playout, Playout::Idle) {
            self.choose_start();
        }
        let from = match self.playout {
            Playout::Idle => {
                self.quiet = None;
                return false;
            }
            Playout::Starting { start, .. } => start,
            Playout::Playing { next, .. } => next,
        };
        let budget = self.cfg.max_requests.saturating_sub(self.requests.len());
        if budget == 0 {
            self.stats.sched_budget_spent += 1;
            return false;
        }
        let mark = QuietMark {
            from,
            links: self.links.len(),
            requests: self.requests.len(),
        };
        if self.quiet == Some(mark) {
            return true;
        }
        self.quiet = None;
        let now = self.now;
        let seg_bytes = self.last_segment_bytes.max(1);
        // Suppliers: partners with free request slots that have not just said busy.
        let mut suppliers = std::mem::take(&mut self.scratch_suppliers);
        let mut link_of = std::mem::take(&mut self.scratch_links);
        suppliers.clear();
        link_of.clear();
        let mut others = std::mem::take(&mut self.scratch_others);
        others.clear();
        let mut newest: Option<Seq> = None;
        let mut parents_active = false;
        for (j, l) in self.links.iter().enumerate() {
            let Some(p) = &l.partner else { continue };
            parents_active |= p.parent_of != 0;
            if let Some(n) = p.map.newest() {
                newest = Some(newest.map_or(n, |m| m.max(n)));
            }
            if p.avoid_until > now || suppliers.len() == 64 || self.is_ending(l.id) {
                others.push(j);
                continue;
            }
            let slots = self.cfg.max_requests_per_partner.saturating_sub(p.inflight);
            if slots == 0 {
                others.push(j);
                continue;
            }
            suppliers.push(Supplier {
                free_at: p.free_at(now, seg_bytes),
                bytes_per_s: p.upload_bytes_per_s,
                slots,
                one_way: l.one_way,
            });
            link_of.push(j);
        }
        let mut wants = std::mem::take(&mut self.scratch_wants);
        let mut held = std::mem::take(&mut self.scratch_held);
        wants.clear();
        // Whether any segment could be wanted, from any partner (see `quiet`).
        let mut wanted = true;
        if let (Some(newest), false) = (newest, suppliers.is_empty()) {
            wanted = false;
            let span = from.dist_to(newest).clamp(-1, self.cfg.window as i32 - 1);
            // Only segments we lack, have not asked for, are not receiving, and some supplier
            // holds are looked at: a window of bits at a time, in order.
            let mut k0 = 0i32;
            while k0 <= span {
                let at = from.add(k0 as u32);
                let mine = self.store.map().bits_from(at);
                let mut taken = [0u64; 4];
                let mut mark = |seq: Seq| {
                    let d = at.dist_to(seq);
                    if (0..256).contains(&d) {
                        taken[d as usize / 64] |= 1 << (d % 64);
                    }
                };
                for r in &self.requests {
                    mark(r.seq);
                }
                for e in self.inflight.iter() {
                    mark(e.seg.seq);
                }
                // What each supplier holds from `at` on (bit b of a want's holders: supplier b).
                held.clear();
                let mut any = [0u64; 4];
                for &j in &link_of {
                    if let Some(p) = &self.links[j].partner {
                        let bits = p.map.bits_from(at);
                        for (a, b) in any.iter_mut().zip(bits) {
                            *a |= b;
                        }
                        held.push(bits);
                    } else {
                        held.push([0; 4]);
                    }
                }
                // Partners that are not suppliers now (busy, or no request slot free).
                let mut any_other = [0u64; 4];
                for &j in &others {
                    if let Some(p) = &self.links[j].partner {
                        for (a, b) in any_other.iter_mut().zip(p.map.bits_from(at)) {
                            *a |= b;
                        }
                    }
                }
                let n = (span - k0 + 1).min(256) as u32;
                for w in 0..4 {
                    let lo = w as u32 * 64;
                    let valid = match n.saturating_sub(lo) {
                        0 => 0,
                        m if m >= 64 => u64::MAX,
                        m => (1u64 << m) - 1,
                    };
                    if !mine[w] & !taken[w] & (any[w] | any_other[w]) & valid != 0 {
                        wanted = true;
                    }
                    let mut bits = !mine[w] & !taken[w] & any[w] & valid;
                    while bits != 0 {
                        let bit = bits.trailing_zeros();
                        bits &= bits - 1;
                        let seq = at.add(lo + bit);
                        let mut holders = 0u64;
                        for (b, h) in held.iter().enumerate() {
                            holders |= ((h[w] >> bit) & 1) << b;
                        }
                        if holders == 0 {
                            continue;
                        }
                        let deadline = self.deadline_of(seq);
                        // A parent pushes this one: pull it only if the deadline is close.
                        if parents_active
                            && deadline > now + self.cfg.pull_lead
                            && self.parent_of(seq).is_some()
                        {
                            continue;
                        }
                        wants.push(Want {
                            seq,
                            deadline,
                            holders,
                        });
                    }
                }
                k0 += 256;
            }
        }
        self.scratch_held = held;
        self.scratch_others = others;
        if !wanted {
            // Nothing to ask for: no picks follow, so the mark still holds after the pass.
            self.quiet = Some(mark);
        }
        let mut picks = std::mem::take(&mut self.scratch_picks);
        picks.clear();
        let skipped = scheduler::plan(
            now,
            &mut wants,
            &mut suppliers,
            seg_bytes,
            self.cfg.urgent_within,
            budget,
            &mut picks,
        );
        self.stats.sched_no_slot += skipped.no_slot;
        self.stats.sched_too_late += skipped.too_late;
        for pick in &picks {
            let j = link_of[pick.supplier];
            let deadline = self.deadline_of(pick.seq);
            let deadline_ms = deadline
                .saturating_since(now)
                .as_millis()
                .min(u32::MAX as u64) as u32;
            // Give up on it a while after we expected it: twice the estimate, at least a second.
            let expect = pick.eta.saturating_since(now);
            let expect_by = now + expect.mul(2) + Duration::from_secs(1);
            let lead = self.links[j].one_way.mul(2);
            if let Some(p) = self.links[j].partner.as_mut() {
                p.asked(now, lead);
            }
            self.requests.push(Request {
                seq: pick.seq,
                link: self.links[j].id,
                sent_at: now,
                expect_by,
            });
            self.stats.requests_sent += 1;
            self.send(
                j,
                Control::Request {
                    seq: pick.seq,
                    deadline_ms,
                },
            );
        }
        self.scratch_wants = wants;
        self.scratch_suppliers = suppliers;
        self.scratch_links = link_of;
        self.scratch_picks = picks;
        false
    }

    /// Whether a partner's have of `seq` could give the scheduler something to ask for.
    fn may_want(&self, seq: Seq) -> bool {
        let from = match self.playout {
            Playout::Idle => return true,
            Playout::Starting { start, .. } => start,
            Playout::Playing { next, .. } => next,
        };
        from.dist_to(seq) >= 0 && !self.holds(seq) && !self.requests.iter().any(|r| r.seq == seq)
    }

    // ----- substream push -----

    fn substream(&self, seq: Seq) -> u32 {
        seq.0 % self.cfg.substreams.max(1)
    }

    fn all_substreams(&self) -> u32 {
        let k = self.cfg.substreams.clamp(1, 32);
        if k == 32 {
            u32::MAX
        } else {
            (1 << k) - 1
        }
    }

    /// Subscriptions we serve now.
    fn children(&self) -> u32 {
        self.links
            .iter()
            .filter_map(|l| l.partner.as_ref())
            .map(|p| p.child_of.count_ones())
            .sum()
    }

    /// Subscriptions we can still take, as advertised.
    fn spare(&self) -> u8 {
        self.cfg
            .max_children()
            .saturating_sub(self.children())
            .min(u8::MAX as u32) as u8
    }

    /// The link index of the partner that pushes `seq`'s substream to us.
    fn parent_of(&self, seq: Seq) -> Option<usize> {
        let bit = 1 << self.substream(seq);
        self.links
            .iter()
            .position(|l| l.partner.as_ref().is_some_and(|p| p.parent_of & bit != 0))
    }

    /// Queues `seq` for every child subscribed to its substream that lacks it.
    fn push_to_children(&mut self, seq: Seq) {
        let bit = 1 << self.substream(seq);
        for j in 0..self.links.len() {
            let l = &self.links[j];
            let Some(p) = &l.partner else { continue };
            if p.child_of & bit == 0 || p.map.has(seq) {
                continue;
            }
            let link = l.id;
            let rate = p.upload_bytes_per_s;
            self.enqueue_push(link, seq, rate);
        }
        self.start_uploads();
    }

    fn enqueue_push(&mut self, link: LinkId, seq: Seq, requester_rate: u64) {
        if self.uploads.iter().any(|u| u.link == link && u.seq == seq) {
            return;
        }
        // A child this far behind is better served by pulling: drop its oldest push.
        let mut count = 0;
        let mut oldest: Option<usize> = None;
        for (k, u) in self.uploads.iter().enumerate() {
            if u.push && u.link == link {
                count += 1;
                if oldest.is_none_or(|o| u.seq.is_before(self.uploads[o].seq)) {
                    oldest = Some(k);
                }
            }
        }
        if count >= self.cfg.push_queue_per_child {
            if let Some(o) = oldest {
                self.uploads.swap_remove(o);
            }
        }
        self.uploads.push(UploadRequest {
            link,
            seq,
            deadline: Instant::FAR_FUTURE,
            requester_rate,
            push: true,
        });
    }

    /// A partner asks us to push substreams `mask` from `from` on.
    fn on_subscribe(&mut self, i: usize, mask: u32, from: Seq) {
        let mask = mask & self.all_substreams();
        let Some(p) = self.links[i].partner.as_ref() else {
            self.send(
                i,
                Control::SubscribeReply {
                    accepted: 0,
                    refused: mask,
                },
            );
            return;
        };
        let new = mask & !p.child_of;
        // A partnership being ended takes on no new substreams.
        let mut room = if self.is_ending(self.links[i].id) {
            0
        } else {
            self.spare() as u32
        };
        let mut accepted = mask & p.child_of;
        for j in 0..32 {
            let bit = 1u32 << j;
            if new & bit != 0 && room > 0 {
                accepted |= bit;
                room -= 1;
            }
        }
        let refused = mask & !accepted;
        let link = self.links[i].id;
        let rate = self.rate_of(i);
        if let Some(p) = self.links[i].partner.as_mut() {
            p.child_of |= accepted;
        }
        self.send(i, Control::SubscribeReply { accepted, refused });
        // Back-fill what we hold of those substreams from `from` on, oldest first.
        if let Some(newest) = self.store.newest() {
            let span = from.dist_to(newest);
            if span >= 0 {
                let span = (span as u32).min(self.store.window());
                for d in (0..=span).rev() {
                    let seq = newest.sub(d);
                    let bit = 1 << self.substream(seq);
                    let lacks = self.links[i]
                        .partner
                        .as_ref()
                        .is_some_and(|p| !p.map.has(seq));
                    if accepted & bit != 0 && lacks && self.store.has(seq) {
                        self.enqueue_push(link, seq, rate);
                    }
                }
            }
        }
        self.start_uploads();
    }

    /// Subscribes each substream that has no parent (and no pending request) to the best
    /// partner for it: one with room that is furthest ahead on it, faster on ties.
    fn maintain_parents(&mut self) {
        if self.cfg.role == Role::Source || !self.joined {
            self.quiet = None;
            return;
        }
        let from = match self.playout {
            Playout::Idle => {
                self.quiet = None;
                return;
            }
            Playout::Starting { start, .. } => start,
            Playout::Playing { next, .. } => next,
        };
        let k = self.cfg.substreams.max(1);
        let mut covered = 0u32;
        for l in &self.links {
            if let Some(p) = &l.partner {
                covered |= p.parent_of | p.subscribing;
            }
        }
        let missing = self.all_substreams() & !covered;
        let any_room = self
            .links
            .iter()
            .any(|l| l.partner.as_ref().is_some_and(|p| p.spare > 0));
        if missing == 0 || !any_room {
            // Nothing to ask: `quiet` stands as the scheduling pass left it.
            return;
        }
        self.quiet = None;
        let now = self.now;
        // Each partner's spare room, less what this pass asks of it.
        let mut room: Vec<u32> = self
            .links
            .iter()
            .map(|l| {
                l.partner.as_ref().map_or(0, |p| {
                    if p.no_parent_until <= now && p.map.newest().is_some() {
                        p.spare as u32
                    } else {
                        0
                    }
                })
            })
            .collect();
        let mut asks = vec![0u32; self.links.len()];
        for j in 0..k {
            let bit = 1 << j;
            if missing & bit == 0 {
                continue;
            }
            let mut best: Option<(usize, Seq, u64)> = None;
            for (x, l) in self.links.iter().enumerate() {
                let Some(p) = &l.partner else { continue };
                if room[x] == 0 {
                    continue;
                }
                let Some(newest) = super::partners::newest_in(&p.map, j, k) else {
                    continue;
                };
                let rate = p.upload_bytes_per_s;
                let better = match best {
                    None => true,
                    Some((_, bn, br)) => newest.is_after(bn) || (newest == bn && rate > br),
                };
                if better {
                    best = Some((x, newest, rate));
                }
            }
            if let Some((x, _, _)) = best {
                room[x] -= 1;
                asks[x] |= bit;
            }
        }
        for (x, mask) in asks.into_iter().enumerate() {
            if mask == 0 {
                continue;
            }
            if let Some(p) = self.links[x].partner.as_mut() {
                p.subscribing |= mask;
            }
            self.send(x, Control::Subscribe { mask, from });
        }
    }

    /// Replaces parents that fall behind: one whose newest segment of its substream is
    /// `parent_lag_limit` segments of that substream behind the best partner's, or that holds
    /// segments it has not pushed to us for that long.
    fn check_parents(&mut self) {
        if self.cfg.role == Role::Source {
            return;
        }
        let k = self.cfg.substreams.max(1);
        let limit = (self.cfg.parent_lag_limit * k) as i32;
        let now = self.now;
        for j in 0..k {
            let bit = 1 << j;
            let Some(x) = self
                .links
                .iter()
                .position(|l| l.partner.as_ref().is_some_and(|p| p.parent_of & bit != 0))
            else {
                continue;
            };
            let newest_of = |l: &Link| {
                l.partner
                    .as_ref()
                    .and_then(|p| super::partners::newest_in(&p.map, j, k))
            };
            let parent_newest = newest_of(&self.links[x]);
            let best = self
                .links
                .iter()
                .filter_map(newest_of)
                .reduce(|a, b| a.max(b));
            let mine = super::partners::newest_in(self.store.map(), j, k);
            let behind_best = match (parent_newest, best) {
                (Some(p), Some(b)) => p.dist_to(b) >= limit,
                (None, Some(_)) => true,
                _ => false,
            };
            let not_pushing = match (parent_newest, mine) {
                (Some(p), Some(m)) => m.dist_to(p) >= limit,
                _ => false,
            };
            if behind_best || not_pushing {
                let wait = Duration::from_micros(self.cfg.refine_interval.as_micros() / 2);
                if let Some(p) = self.links[x].partner.as_mut() {
                    p.parent_of &= !bit;
                    p.no_parent_until = now + wait;
                }
                self.send(x, Control::Unsubscribe { mask: bit });
                self.reschedule();
            }
        }
    }

    // ----- housekeeping -----

    fn on_tick(&mut self) {
        let now = self.now;
        self.bans.expire(now);
        self.shed_unservable_requests();
        if !self.inflight.is_empty() {
            let mut stale = Vec::new();
            self.inflight.drop_stale(now, &mut stale);
            for e in stale {
                self.drop_in_progress(e);
            }
        }
        // Links: handshake, heartbeat, keep-alive, idle queries. Walk backwards: closing
        // swap-removes.
        let mut j = self.links.len();
        while j > 0 {
            j -= 1;
            let l = &self.links[j];
            let silent = now.saturating_since(l.last_recv);
            if l.peer.is_none() && now.saturating_since(l.opened) > self.cfg.handshake_timeout {
                self.close(j, ByeReason::Protocol);
            } else if silent > self.cfg.heartbeat_timeout {
                self.on_partner_lost(j, true);
                self.close(j, ByeReason::Timeout);
            } else if l.partner.is_none()
                && l.awaiting == 0
                && now.saturating_since(l.opened) > self.cfg.query_idle_timeout
            {
                self.close(j, ByeReason::Done);
            } else if l.partner.is_none()
                && l.awaiting != 0
                && now.saturating_since(l.opened) > DIAL_TIMEOUT
            {
                self.close(j, ByeReason::Timeout);
            } else if l.partner.is_some()
                && now.saturating_since(l.last_sent) >= self.cfg.keepalive_interval
            {
                self.send(j, Control::KeepAlive);
            }
        }
        // Uploads the driver never finished (their link stalled, or the data they forwarded
        // never came): free the slot.
        let before = self.active_uploads.len();
        self.active_uploads
            .retain(|&(_, _, done)| now.saturating_since(done) < UPLOAD_STUCK);
        if self.active_uploads.len() != before {
            self.start_uploads();
        }
        // Dials the driver never answered.
        self.pending_dials
            .retain(|d| now.saturating_since(d.at) <= DIAL_TIMEOUT);
        self.finish_ending();
        // Requests that took far longer than expected: withdraw and ask elsewhere.
        let mut k = 0;
        while k < self.requests.len() {
            if self.requests[k].expect_by <= now {
                let r = self.requests.swap_remove(k);
                self.stats.request_timeouts += 1;
                if let Some(j) = self.link_index(r.link) {
                    self.send(j, Control::Cancel { seq: r.seq });
                    if let Some(p) = self.links[j].partner.as_mut() {
                        p.answered(self.now);
                        p.avoid_until = p.avoid_until.max(now + Duration::from_secs(1));
                        p.failed = p.failed.saturating_add(1);
                    }
                }
                self.reschedule();
            } else {
                k += 1;
            }
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.cfg.gossip_interval;
            self.gossip();
            self.mcache.expire(now);
        }
        if now >= self.next_map_refresh {
            self.next_map_refresh = now + BUFFER_MAP_REFRESH;
            let bm = self.buffer_map_message();
            for j in 0..self.links.len() {
                if self.links[j].partner.is_some() {
                    self.send(j, bm.clone());
                }
            }
        }
        if now >= self.next_refine {
            self.next_refine = now + self.cfg.refine_interval;
            self.refine();
        }
        if let Playout::Starting { start, since } = self.playout {
            // (Not a start in hand, held back by `start_hold`.)
            if now.saturating_since(since) > START_RETRY && !self.store.has(start) {
                self.playout = Playout::Idle;
            }
        }
        if let Some(at) = self.rebootstrap_at {
            if now >= at && self.partner_count() == 0 {
                self.dial_bootstrap();
            }
        }
        self.note_partners_front();
        self.rebootstrap_if_starved();
        self.reach_tick();
        self.maintain_partners();
        self.check_parents();
        // Time alone (a busy partner's back-off ending, deadlines coming closer) changes
        // which supplier gets what, never whether anything could be wanted: a quiet pass
        // stays quiet (what the tick itself changed that matters has cleared `quiet`).
        self.schedule_due = true;
    }

    /// See `STARVED_AFTER`. Not while linked to the source (its input may just have paused),
    /// and at most once per `REBOOTSTRAP_BACKOFF` (`REJOIN_BACKOFF` while partners move on).
    fn rebootstrap_if_starved(&mut self) {
        let now = self.now;
        let starved = self.nominal().mul(STARVED_AFTER);
        if self.cfg.role != Role::Peer
            || !self.joined
            || now.saturating_since(self.last_fresh) < starved
            || self.rebootstrap_at.is_some_and(|at| now < at)
            || self
                .links
                .iter()
                .any(|l| l.peer.is_some_and(|p| p.role == Role::Source))
        {
            return;
        }
        // Partners that still move on while we do not: the swarm is alive, our partners
        // feed us too slowly. Join again (no partner request: the source is full, and a
        // refusal with a sample of members would cost it more): its redirect names a deputy
        // to try as a partner, and the origin learns that we are alive and settled, which
        // makes its redirects to newcomers better (without these joins its records are mostly
        // newcomers, which hold nothing: startup p95 4.4 s against 4.0 s).
        if self
            .partners_front
            .is_some_and(|(_, seen)| now.saturating_since(seen) < starved)
        {
            self.dial_origin(Purpose::Rejoin);
            self.rebootstrap_at = Some(now + REJOIN_BACKOFF);
            return;
        }
        self.dial_bootstrap();
        self.rebootstrap_at = Some(now + REBOOTSTRAP_BACKOFF);
    }

    fn gossip(&mut self) {
        self.member_seq = self.member_seq.wrapping_add(1);
        let now = self.now;
        let mut partners: Vec<usize> = (0..self.links.len())
            .filter(|&j| self.links[j].partner.is_some())
            .collect();
        if partners.is_empty() {
            return;
        }
        self.rng.shuffle(&mut partners);
        partners.truncate(self.cfg.gossip_fanout);
        for j in partners {
            let to = self.links[j].peer.map(|p| p.id);
            let mut entries = Vec::with_capacity(self.cfg.gossip_entries);
            if self.advertises_itself() {
                entries.push(self.own_record());
            }
            let extra = self.cfg.gossip_entries.saturating_sub(1);
            entries.extend(
                self.mcache
                    .sample(&mut self.rng, extra, now, |e| Some(e.id) != to),
            );
            self.send(j, Control::Members(entries));
        }
    }

    fn refine(&mut self) {
        let period = self.cfg.refine_interval;
        // A partner that advertised segments and did not deliver them goes first.
        let limit = self.cfg.liar_timeouts;
        if let Some(j) = self.links.iter().position(|l| {
            l.peer.is_some_and(|p| p.role == Role::Peer)
                && l.partner.as_ref().is_some_and(|p| p.lies(limit))
        }) {
            self.close(j, ByeReason::Refined);
        }
        let (floor, ceiling) = self.rate_bounds();
        let now = self.now;
        for l in &mut self.links {
            if let Some(p) = l.partner.as_mut() {
                p.close_period(period);
                p.fold_rate(now, floor, ceiling);
            }
        }
        if self.cfg.role == Role::Source {
            return;
        }
        let count = self.partner_count();
        if count > self.partner_goal() {
            // Drop the worst partner that has had a fair chance (never the source).
            let now = self.now;
            let worst = self
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.partner
                        .as_ref()
                        .is_some_and(|p| now.saturating_since(p.since) >= period)
                        && l.peer.is_some_and(|p| p.role == Role::Peer)
                })
                .min_by(|(_, a), (_, b)| {
                    let sa = a.partner.as_ref().map_or(0.0, |p| p.score);
                    let sb = b.partner.as_ref().map_or(0.0, |p| p.score);
                    sa.total_cmp(&sb)
                })
                .map(|(j, _)| j);
            if let (Some(j), None) = (worst, self.ending) {
                self.end_partnership(j);
            }
        } else if count == self.partner_goal() {
            // Try someone new; the next round drops whoever scores worst.
            self.dial_candidate();
        }
    }

    /// Begins to end the partnership on link `j` (refinement): no more requests to it, its
    /// new requests turned away with a busy (it asks elsewhere at once), and the close once
    /// what is in flight either way is through (`finish_ending`).
    fn end_partnership(&mut self, j: usize) {
        let now = self.now;
        self.ending = Some((self.links[j].id, now));
        if let Some(p) = self.links[j].partner.as_mut() {
            p.avoid_until = now + ENDING_GRACE;
            p.no_parent_until = now + ENDING_GRACE;
        }
        self.reschedule();
        self.finish_ending();
    }

    /// Whether link `id` carries the partnership being ended.
    fn is_ending(&self, id: LinkId) -> bool {
        self.ending.is_some_and(|(l, _)| l == id)
    }

    /// Closes the partnership being ended once nothing is in flight on it, or its grace is up.
    fn finish_ending(&mut self) {
        let Some((id, since)) = self.ending else {
            return;
        };
        let Some(j) = self.link_index(id) else {
            self.ending = None;
            return;
        };
        let busy = self.requests.iter().any(|r| r.link == id)
            || self.uploads.iter().any(|u| u.link == id)
            || self.active_uploads.iter().any(|a| a.0 == id);
        if !busy || self.now.saturating_since(since) >= ENDING_GRACE {
            self.ending = None;
            self.close(j, ByeReason::Refined);
        }
    }

    /// Dials partner candidates until partners plus attempts in progress reach M.
    fn maintain_partners(&mut self) {
        if self.cfg.role == Role::Source || !self.joined || self.left {
            return;
        }
        let now = self.now;
        let attempts = self
            .links
            .iter()
            .filter(|l| l.partner.is_none() && l.awaiting & awaiting::PARTNER != 0)
            .count()
            + self
                .pending_dials
                .iter()
                .filter(|d| {
                    !matches!(d.purpose, Purpose::Punch { .. })
                        && now.saturating_since(d.at) < DIAL_PATIENCE
                })
                .count();
        // A punch is a chance, not an attempt that holds a place: candidates are still
        // dialled meanwhile. So is a dial unanswered after `DIAL_PATIENCE`.
        let have = self.partner_count() + attempts;
        let room = self.partner_dial_room();
        for _ in have..self.partner_goal() {
            let dialling = self
                .pending_dials
                .iter()
                .filter(|d| !matches!(d.purpose, Purpose::Punch { .. }))
                .count();
            if dialling >= room {
                break;
            }
            if !self.dial_candidate() {
                self.pull_members();
                break;
            }
        }
        if self.partner_count() == 0
            && attempts == 0
            && self.mcache.is_empty()
            && self.rebootstrap_at.is_none()
        {
            self.rebootstrap_at = Some(self.now + REBOOTSTRAP_BACKOFF);
        }
    }

    /// Partner dials we keep in flight at most. A node nobody can dial keeps half of its
    /// pending-dial room (`max_pending_dials`) for the punches its introductions start: an
    /// introduction finding the room full is dropped, and its candidates are mostly members
    /// of unknown reach, often behind NATs, whose connects time out after 3 s (with the
    /// members pull and `DIAL_PATIENCE` it always has one to dial). 1,000 churn peers at
    /// nat-fraction 0.9, seed 1: punches 74 k -> 100 k, continuity 0.625 -> 0.764.
    fn partner_dial_room(&self) -> usize {
        if self.cfg.hole_punch
            && self.reach.reach() == Reach::Unreachable
            && self.reach.v6().is_none()
        {
            self.cfg.max_pending_dials / 2
        } else {
            usize::MAX
        }
    }

    /// No candidate is left to dial and we have fewer partners than we look for: ask a
    /// partner (a peer before the source) for members, at most every
    /// [`MEMBERS_PULL_EVERY`]. Without it such a node waits for a partner's gossip (every
    /// 10 s, to two of its partners): a peer that cannot be dialled and joined before the
    /// origin knew anyone keeps the source as its only partner until the source's gossip
    /// happens to pick it, and the copies the source seeds it with go no further (1,000
    /// churn peers at nat-fraction 0.6, seed 1: one such peer for 60 s, two segments lost
    /// to the whole swarm, 0.0075 of continuity). A node that can be dialled gets partners
    /// from others' dials; one that cannot has only what it learns.
    fn pull_members(&mut self) {
        let now = self.now;
        if self.partner_count() >= self.cfg.partner_target()
            || self
                .members_pulled_at
                .is_some_and(|t| now.saturating_since(t) < MEMBERS_PULL_EVERY)
        {
            return;
        }
        let peers: Vec<usize> = (0..self.links.len())
            .filter(|&j| {
                let l = &self.links[j];
                l.partner.is_some() && l.peer.is_some_and(|p| p.role == Role::Peer)
            })
            .collect();
        let j = if peers.is_empty() {
            self.links.iter().position(|l| l.partner.is_some())
        } else {
            Some(peers[self.rng.below(peers.len())])
        };
        if let Some(j) = j {
            self.members_pulled_at = Some(now);
            self.send(j, Control::MembersRequest);
        }
    }

    /// Remembers that `addr` refused us (or did not answer), replacing the oldest memory
    /// when full.
    fn note_refusal(&mut self, addr: PeerAddr) {
        let now = self.now;
        self.refusals
            .retain(|&(a, at)| a != addr && now.saturating_since(at) < REFUSAL_BACKOFF);
        if self.refusals.len() == REFUSAL_MEMORY {
            self.refusals.remove(0);
        }
        self.refusals.push((addr, now));
    }

    fn dial_candidate(&mut self) -> bool {
        let now = self.now;
        // Who not to dial (linked, being dialled, refused lately), sorted once so that each
        // mCache record is a lookup rather than a scan of links, dials and refusals.
        let mut ids: Vec<PeerId> = self
            .links
            .iter()
            .filter_map(|l| l.peer.map(|p| p.id))
            .collect();
        let mut addrs: Vec<PeerAddr> = self.links.iter().map(|l| l.remote).collect();
        addrs.extend(self.pending_dials.iter().map(|d| d.addr));
        addrs.extend(
            self.refusals
                .iter()
                .filter(|&&(_, at)| now.saturating_since(at) < REFUSAL_BACKOFF)
                .map(|&(a, _)| a),
        );
        ids.sort_unstable();
        addrs.sort_unstable();
        let me = self.id;
        let v6 = self.reach.v6().is_some();
        let router = self.reach.router_ip();
        let cand = self.mcache.pick_candidate(&mut self.rng, now, |e| {
            e.id != me
                && ids.binary_search(&e.id).is_err()
                && dialable(e, v6, router).is_some_and(|a| addrs.binary_search(&a).is_err())
        });
        match cand.and_then(|e| dialable(&e, v6, router)) {
            Some(a) => self.dial(a, Purpose::Partner),
            None => false,
        }
    }

    fn leave(&mut self) {
        if self.left {
            return;
        }
        let seq = self.member_seq.wrapping_add(1);
        let me = self.id;
        while !self.links.is_empty() {
            let j = self.links.len() - 1;
            if self.links[j].partner.is_some() {
                self.send(j, Control::Depart { id: me, seq });
            }
            self.close(j, ByeReason::Leaving);
        }
        self.pending_dials.clear();
        self.requests.clear();
        self.uploads.clear();
        self.timers = TimerTable::default();
        self.left = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{Hello, SimPayload, MAGIC, VERSION};
    use crate::proto::ChannelId;

    const STREAM: u64 = 96_000;

    /// A source with room for two partners, and a way to bring peers to it.
    struct Origin {
        node: Node<SimPayload>,
        now: Instant,
        next_link: u64,
    }

    impl Origin {
        fn new() -> Self {
            let mut cfg = Config::new(ChannelId([7; 32]), Role::Source, STREAM);
            cfg.max_partners = 2;
            cfg.upload_bytes_per_s = 4 * STREAM;
            let now = Instant::ZERO;
            Origin {
                node: Node::new(cfg, PeerId(1), 1, now),
                now,
                next_link: 1,
            }
        }

        /// A peer uploading `factor` stream rates connects and asks to partner (it already
        /// has partners elsewhere, so no newcomer slack applies). Returns its link and what
        /// the source answered on it, and the links the source closed meanwhile.
        fn ask(&mut self, factor: u64) -> (LinkId, Vec<Control>, Vec<LinkId>) {
            let link = LinkId(self.next_link);
            self.next_link += 1;
            let now = self.now;
            self.node.handle_input(
                now,
                Input::LinkUp {
                    link,
                    remote: PeerAddr::V4([10, 0, 0, link.0 as u8], 7000),
                    outbound: false,
                },
            );
            let hello = Hello {
                magic: MAGIC,
                version: VERSION,
                channel: ChannelId([7; 32]),
                peer_id: PeerId(100 + link.0),
                listen_port: 7000,
                role: Role::Peer,
                upload_kbps: (factor * STREAM * 8 / 1000) as u32,
            };
            for msg in [
                Control::Hello(hello),
                Control::PartnerRequest { partners: 4 },
            ] {
                self.node.handle_input(
                    now,
                    Input::Received {
                        link,
                        msg: Message::Ctl(msg),
                    },
                );
            }
            self.drain(link)
        }

        /// Time passes with every open link keeping alive.
        fn wait(&mut self, secs: u64, links: &[LinkId]) {
            for _ in 0..secs {
                self.now += Duration::from_secs(1);
                let now = self.now;
                for &link in links {
                    self.node.handle_input(
                        now,
                        Input::Received {
                            link,
                            msg: Message::Ctl(Control::KeepAlive),
                        },
                    );
                }
                self.node.handle_timeout(now);
                self.drain(LinkId(0));
            }
        }

        fn drain(&mut self, on: LinkId) -> (LinkId, Vec<Control>, Vec<LinkId>) {
            let mut said = Vec::new();
            let mut closed = Vec::new();
            while let Some(o) = self.node.poll_output() {
                match o {
                    Output::Send {
                        link,
                        msg: Message::Ctl(c),
                    } if link == on => said.push(c),
                    Output::Close { link } => closed.push(link),
                    _ => {}
                }
            }
            (on, said, closed)
        }
    }

    fn accepted(said: &[Control]) -> bool {
        said.iter().any(|c| matches!(c, Control::PartnerAccept))
    }

    #[test]
    fn a_full_source_swaps_its_weakest_settled_partner_for_a_much_stronger_asker() {
        let mut o = Origin::new();
        let (weak1, said, _) = o.ask(1);
        assert!(accepted(&said));
        let (half, said, _) = o.ask(1);
        assert!(accepted(&said));
        // Full, and the partners are new: a strong asker is turned away for now.
        let (_, said, closed) = o.ask(4);
        assert!(!accepted(&said) && closed.is_empty(), "{said:?}");
        o.wait(11, &[weak1, half]);
        // Not much stronger (less than twice): still turned away.
        let (_, said, closed) = o.ask(1);
        assert!(!accepted(&said) && closed.is_empty(), "{said:?}");
        // Four times the weakest: the source lets one weak partner go and takes it.
        let (strong, said, closed) = o.ask(4);
        assert!(accepted(&said), "{said:?}");
        assert_eq!(closed.len(), 1);
        assert!(closed[0] == weak1 || closed[0] == half);
        assert_eq!(o.node.stats().partners, 2);
        // The other weak partner goes the same way; then partners of equal strength stay.
        let weak = if closed[0] == weak1 { half } else { weak1 };
        o.wait(11, &[strong, weak]);
        let (other, said, closed) = o.ask(4);
        assert!(
            accepted(&said) && closed == vec![weak],
            "{said:?} {closed:?}"
        );
        o.wait(11, &[strong, other]);
        let (_, said, closed) = o.ask(4);
        assert!(!accepted(&said) && closed.is_empty(), "{said:?}");
    }

    #[test]
    fn the_source_seeds_slow_peers_with_more_copies_than_fast_ones() {
        let mut cfg = Config::new(ChannelId([7; 32]), Role::Source, STREAM);
        cfg.source_max_copies = 2;
        let mut node: Node<SimPayload> = Node::new(cfg, PeerId(1), 1, Instant::ZERO);
        let seq = Seq(5);
        // Two copies to half-rate peers relay one stream rate between them: not enough.
        node.note_copy(seq, STREAM / 2);
        node.note_copy(seq, STREAM / 2);
        assert!(!node.seeded_enough(seq));
        node.note_copy(seq, STREAM / 2);
        node.note_copy(seq, STREAM / 2);
        assert!(node.seeded_enough(seq));
        // Two copies to full-rate peers are enough; one to a very fast peer is not (two
        // holders at least, should one leave).
        let other = Seq(6);
        node.note_copy(other, 8 * STREAM);
        assert!(!node.seeded_enough(other));
        node.note_copy(other, STREAM);
        assert!(node.seeded_enough(other));
        // The bound: at most four times source_max_copies, however slow the peers.
        let slow = Seq(7);
        for _ in 0..8 {
            assert!(!node.seeded_enough(slow));
            node.note_copy(slow, 1);
        }
        assert!(node.seeded_enough(slow));
        // A copy cut short is taken back.
        let cut = Seq(8);
        node.note_copy(cut, STREAM);
        node.note_copy(cut, STREAM);
        assert!(node.seeded_enough(cut));
        node.forget_copy(cut, STREAM);
        assert!(!node.seeded_enough(cut));
        // A slot reused by a later segment starts again.
        let later = Seq(5 + node.copies.len() as u32);
        assert!(!node.seeded_enough(later));
    }

    /// Link 1, to 10.0.0.1, an established partnership with `partner`'s state.
    fn partner_link(now: Instant, peer: Option<PeerInfo>, partner: Partner) -> Link {
        Link {
            id: LinkId(1),
            remote: PeerAddr::V4([10, 0, 0, 1], 7000),
            purpose: Purpose::Partner,
            opened: now,
            last_recv: now,
            last_sent: now,
            peer,
            partner: Some(partner),
            awaiting: 0,
            one_way: DEFAULT_ONE_WAY,
            learned: Budget::new(now),
        }
    }

    /// A joined peer whose newest segment came `quiet` ago, with one partner whose newest
    /// it first saw `front_age` ago; then what it sends on a link to the origin it dialled,
    /// if it dialled one.
    fn starved_peer_calls_origin(quiet: Duration, front_age: Duration) -> Option<Vec<Control>> {
        let secs = Duration::from_secs;
        let mut node = playing_ahead_of_its_partner(5, front_age);
        let origin = PeerAddr::V4([10, 0, 0, 9], 7000);
        node.bootstrap = vec![origin];
        node.last_fresh = Instant::ZERO + (secs(100) - quiet);
        node.out.clear();
        node.rebootstrap_if_starved();
        let dialled = std::iter::from_fn(|| node.poll_output())
            .any(|o| matches!(o, Output::Dial { remote } if remote == origin));
        if !dialled {
            return None;
        }
        node.on_link_up(LinkId(9), origin, true);
        let sent = std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                Output::Send {
                    link: LinkId(9),
                    msg: Message::Ctl(c),
                } => Some(c),
                _ => None,
            })
            .collect();
        Some(sent)
    }

    #[test]
    fn a_starved_peer_asks_the_origin_to_partner_only_when_its_partners_stand_still_too() {
        let secs = Duration::from_secs;
        // Fed lately: no call.
        assert!(starved_peer_calls_origin(secs(1), secs(1)).is_none());
        // Nothing new for 5 s and partners stand still as long: the source may have
        // restarted; join and ask it to partner.
        let sent = starved_peer_calls_origin(secs(5), secs(5)).unwrap();
        assert!(
            matches!(
                sent[..],
                [
                    Control::Hello(_),
                    Control::Join,
                    Control::PartnerRequest { .. }
                ]
            ),
            "{sent:?}"
        );
        // Partners moved on a second ago: they feed us too slowly; join again for a deputy
        // and to be known at the origin, without a partner request the full source refuses.
        let sent = starved_peer_calls_origin(secs(5), secs(1)).unwrap();
        assert!(
            matches!(sent[..], [Control::Hello(_), Control::Join]),
            "{sent:?}"
        );
    }

    #[test]
    fn refinement_ends_a_partnership_once_what_is_in_flight_on_it_is_through() {
        let secs = Duration::from_secs;
        let link = LinkId(1);
        let outputs = |node: &mut Node<SimPayload>| -> (Vec<Control>, bool) {
            let mut said = Vec::new();
            let mut closed = false;
            while let Some(o) = node.poll_output() {
                match o {
                    Output::Send {
                        link: l,
                        msg: Message::Ctl(c),
                    } if l == link => said.push(c),
                    Output::Close { link: l } => closed |= l == link,
                    _ => {}
                }
            }
            (said, closed)
        };
        for served in [true, false] {
            let mut node = playing_ahead_of_its_partner(12, secs(1));
            node.links[0].peer = Some(PeerInfo {
                id: PeerId(3),
                role: Role::Peer,
                listen: PeerAddr::V4([10, 0, 0, 1], 7000),
                upload_bytes_per_s: STREAM,
            });
            let now = node.now;
            // One partner over the target, a partner long enough to be judged, that holds
            // segments we lack.
            node.cfg.partners = 0;
            let p = node.links[0].partner.as_mut().unwrap();
            p.since = Instant::ZERO;
            for k in 13..=20 {
                p.map.set(Seq(k));
            }
            // The partner asked us for a segment a moment ago; it waits in our queue.
            node.uploads.push(UploadRequest {
                link,
                seq: Seq(11),
                deadline: now + secs(5),
                requester_rate: STREAM,
                push: false,
            });
            node.out.clear();
            node.refine();
            node.schedule();
            let (said, closed) = outputs(&mut node);
            assert!(!closed && said.is_empty(), "{said:?}");
            assert!(node.is_ending(link));
            // Its new requests are turned away (it asks elsewhere), and we ask it for nothing.
            node.on_request(0, Seq(12), 5000);
            let (said, closed) = outputs(&mut node);
            assert!(
                !closed && matches!(said[..], [Control::Busy { seq: Seq(12), .. }]),
                "{said:?}"
            );
            assert!(node.links[0].partner.as_ref().unwrap().avoid_until > now);
            if served {
                // The queued segment went out: nothing is in flight, the partnership ends.
                node.uploads.clear();
            } else {
                // Still queued when the grace is up: it ends anyway.
                node.now = now + ENDING_GRACE;
            }
            node.finish_ending();
            let (said, closed) = outputs(&mut node);
            assert!(
                closed && matches!(said[..], [Control::Bye(ByeReason::Refined)]),
                "{said:?}"
            );
            assert!(node.ending.is_none() && node.links.is_empty());
        }
    }

    /// A peer playing at `Seq(10)`, due now, that holds segments up to `ours`, with one
    /// partner that holds segments up to 7, the newest of which it first saw `front_age` ago.
    fn playing_ahead_of_its_partner(ours: u32, front_age: Duration) -> Node<SimPayload> {
        let cfg = Config::new(ChannelId([7; 32]), Role::Peer, STREAM);
        let now = Instant::ZERO + Duration::from_secs(100);
        let mut node: Node<SimPayload> = Node::new(cfg, PeerId(2), 1, now);
        node.now = now;
        node.joined = true;
        let mut partner = Partner::new(now, STREAM);
        for k in 0..=7 {
            partner.map.set(Seq(k));
        }
        node.push_link(partner_link(now, None, partner));
        node.partners_front = Some((
            Seq(7),
            Instant::ZERO + (Duration::from_secs(100) - front_age),
        ));
        for k in 0..=ours {
            node.store.insert(Segment {
                seq: Seq(k),
                origin_us: 0,
                duration_us: 1_000_000,
                flags: 0,
                payload: SimPayload { len: 1000, hops: 1 },
            });
        }
        node.playout = Playout::Playing {
            next: Seq(10),
            deadline: now,
            stalled: false,
        };
        node
    }

    fn late_or_missed(node: &mut Node<SimPayload>) -> Vec<(Seq, bool)> {
        node.on_playout_deadline();
        std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                Output::Late { seq, .. } => Some((seq, true)),
                Output::Missed { seq, .. } => Some((seq, false)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_pause_soon_after_another_lasts_twice_as_long() {
        // The first pause, as in the test below: about four segment durations.
        let first = |last_stall| {
            let mut node = playing_ahead_of_its_partner(9, Duration::from_millis(500));
            node.last_stall = last_stall;
            assert_eq!(late_or_missed(&mut node), vec![(Seq(10), true)]);
            let Playout::Playing { deadline, .. } = node.playout else {
                panic!("{:?}", node.playout);
            };
            deadline.saturating_since(node.now)
        };
        let alone = first(None);
        let secs = Duration::from_secs;
        let ago = |s: u64| Instant::ZERO + secs(100 - s);
        // Paused for 3 s ten seconds ago: this one lasts at least 6 s.
        assert_eq!(first(Some((ago(10), secs(3)))), alone.max(secs(6)));
        // For 4.5 s: 9 s, whatever the lag it needs (but never over `MAX_STALL`).
        assert_eq!(first(Some((ago(10), Duration::from_millis(4500)))), secs(9));
        assert_eq!(first(Some((ago(10), secs(8)))), MAX_STALL);
        // A pause long ago says nothing about this one.
        assert_eq!(first(Some((ago(30), secs(4)))), alone);
    }

    #[test]
    fn a_peer_ahead_of_its_partners_pauses_while_the_swarm_moves_on_and_skips_when_it_stopped() {
        // We played up to 9, fed by a partner since lost; the partner left got segment 7 half
        // a second ago: the swarm moves on, and 10 reaches it in about three segment
        // durations. Pause (once) rather than skip.
        let mut node = playing_ahead_of_its_partner(9, Duration::from_millis(500));
        assert_eq!(late_or_missed(&mut node), vec![(Seq(10), true)]);
        let Playout::Playing { deadline, .. } = node.playout else {
            panic!("{:?}", node.playout);
        };
        assert!(
            deadline >= node.now + Duration::from_secs(4),
            "paused until {deadline:?}, long enough for the partner to get 8, 9 and 10"
        );
        assert_eq!(node.stats().missed, 1);
        // Nothing new for ten seconds (the source is gone): segment 10 may never come.
        let mut node = playing_ahead_of_its_partner(9, Duration::from_secs(10));
        assert_eq!(late_or_missed(&mut node), vec![(Seq(10), false)]);
        // We stand where the partner stands (both hold 7, nothing after): the source stopped.
        let mut node = playing_ahead_of_its_partner(7, Duration::from_millis(500));
        assert_eq!(late_or_missed(&mut node), vec![(Seq(10), false)]);
        // The same, but 7 was cut 2.5 s ago: 10 is not due out of the source before 100.5 s.
        // We play at the live edge; pause, or we would skip every segment from now on.
        let mut node = playing_ahead_of_its_partner(7, Duration::from_millis(500));
        node.last_origin = Some((Seq(7), 97_500_000));
        assert_eq!(late_or_missed(&mut node), vec![(Seq(10), true)]);
    }

    #[test]
    fn a_hole_in_the_stream_is_jumped_not_waited_through_and_counted_missed() {
        // We played up to 7 and wait for 20; the partner holds 0..=7 and 25..=27: the source
        // was away and its new run starts at 25.
        let mut node = playing_ahead_of_its_partner(7, Duration::from_secs(10));
        for k in 25..=27 {
            node.links[0].partner.as_mut().unwrap().map.set(Seq(k));
        }
        node.playout = Playout::Playing {
            next: Seq(20),
            deadline: node.now,
            stalled: false,
        };
        assert_eq!(late_or_missed(&mut node), vec![(Seq(20), false)]);
        assert!(matches!(node.playout, Playout::Idle), "{:?}", node.playout);
        // It starts again in the new run, at once, and counts 21..start as missed too.
        node.finish();
        let Playout::Starting { start, .. } = node.playout else {
            panic!("{:?}", node.playout);
        };
        assert!(!start.is_before(Seq(25)), "{start:?}");
        node.store.insert(Segment {
            seq: start,
            origin_us: 99_000_000,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload { len: 1000, hops: 1 },
        });
        node.drain_playout();
        assert!(matches!(node.playout, Playout::Playing { .. }));
        assert_eq!(node.stats().missed, 1 + Seq(21).dist_to(start) as u64);
    }

    #[test]
    fn a_start_on_a_stream_that_has_just_begun_waits_for_the_history_it_lacks() {
        let cfg = Config::new(ChannelId([7; 32]), Role::Peer, STREAM);
        let now = Instant::ZERO + Duration::from_secs(100);
        let mut node: Node<SimPayload> = Node::new(cfg, PeerId(2), 1, now);
        node.now = now;
        let seg = |origin_s: f64| Segment {
            seq: Seq(0),
            origin_us: (origin_s * 1e6) as u64,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload { len: 1000, hops: 1 },
        };
        let behind = Duration::from_secs(node.cfg.start_behind as u64);
        // Cut a second ago: it plays once it is `start_behind` durations old.
        assert_eq!(
            node.start_hold(&seg(99.0)),
            Some(Instant::ZERO + Duration::from_secs(99) + behind)
        );
        // Old enough: at once.
        assert_eq!(node.start_hold(&seg(90.0)), None);
        // A clock that says it was cut in the future holds it no longer than that.
        assert_eq!(node.start_hold(&seg(200.0)), Some(now + behind));
        // Starting again after a hole in the stream: at once.
        node.resume_after = Some(Seq(0));
        assert_eq!(node.start_hold(&seg(99.0)), None);
    }

    #[test]
    fn a_start_with_history_waits_only_when_peers_feed_it() {
        let cfg = Config::new(ChannelId([7; 32]), Role::Peer, STREAM);
        let now = Instant::ZERO + Duration::from_secs(100);
        let mut node: Node<SimPayload> = Node::new(cfg, PeerId(2), 1, now);
        node.now = now;
        // A partner that holds a minute of the stream, up to the segment cut at 99.5 s.
        let mut partner = Partner::new(now, STREAM);
        for k in 0..=60 {
            partner.map.set(Seq(k));
        }
        let peer = PeerInfo {
            id: PeerId(3),
            role: Role::Peer,
            listen: PeerAddr::V4([10, 0, 0, 1], 7000),
            upload_bytes_per_s: STREAM,
        };
        node.push_link(partner_link(now, Some(peer), partner));
        let seg = Segment {
            seq: Seq(60),
            origin_us: 99_500_000,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload { len: 1000, hops: 1 },
        };
        let age = Duration::from_secs(START_AGE_FED_BY_PEERS);
        assert_eq!(
            node.start_hold(&seg),
            Some(Instant::ZERO + Duration::from_millis(99_500) + age)
        );
        // The same segment when only the source feeds us: at once.
        node.links[0].peer.as_mut().unwrap().role = Role::Source;
        assert_eq!(node.start_hold(&seg), None);
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;
    use crate::proto::buffer_map::BufferMap;
    use crate::proto::wire::{Hello, SimPayload, MAGIC, VERSION};
    use crate::proto::ChannelId;

    const STREAM: u64 = 96_000;
    const CHANNEL: ChannelId = ChannelId([7; 32]);

    /// A joined peer with room for 32 partners, and `n` inbound partners (links 1..=n).
    fn peer_with_partners(n: u64) -> (Node<SimPayload>, Instant) {
        let mut cfg = Config::new(CHANNEL, Role::Peer, STREAM);
        cfg.upload_bytes_per_s = 4 * STREAM;
        let now = Instant::ZERO;
        let mut node = Node::new(cfg, PeerId(1), 1, now);
        node.command(
            now,
            Command::Join {
                bootstrap: vec![PeerAddr::V4([10, 1, 1, 1], 7000)],
            },
        )
        .expect("a peer joins");
        for k in 1..=n {
            let link = LinkId(k);
            node.handle_input(
                now,
                Input::LinkUp {
                    link,
                    remote: PeerAddr::V4([10, 0, (k >> 8) as u8, k as u8], 7000),
                    outbound: false,
                },
            );
            let hello = Hello {
                magic: MAGIC,
                version: VERSION,
                channel: CHANNEL,
                peer_id: PeerId(100 + k),
                listen_port: 7000,
                role: Role::Peer,
                upload_kbps: 768,
            };
            for c in [
                Control::Hello(hello),
                Control::PartnerRequest { partners: 4 },
            ] {
                node.handle_input(
                    now,
                    Input::Received {
                        link,
                        msg: Message::Ctl(c),
                    },
                );
            }
        }
        while node.poll_output().is_some() {}
        (node, now)
    }

    /// What a node said in answer, in order.
    fn drained(node: &mut Node<SimPayload>) -> Vec<Output<SimPayload>> {
        std::iter::from_fn(|| node.poll_output()).collect()
    }

    fn haves_to(outs: &[Output<SimPayload>], seq: Seq) -> Vec<LinkId> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send {
                    link,
                    msg: Message::Ctl(Control::Have { seq: s, .. }),
                } if *s == seq => Some(*link),
                _ => None,
            })
            .collect()
    }

    fn segment_sent_to(outs: &[Output<SimPayload>], seq: Seq) -> Option<LinkId> {
        outs.iter().find_map(|o| match o {
            Output::Send {
                link,
                msg: Message::Segment(s),
            } if s.seq == seq => Some(*link),
            _ => None,
        })
    }

    fn aborts(outs: &[Output<SimPayload>]) -> Vec<(LinkId, Seq)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Abort { link, seq } => Some((*link, *seq)),
                _ => None,
            })
            .collect()
    }

    fn begin_and_piece(node: &mut Node<SimPayload>, now: Instant, link: u64, seq: Seq) {
        let Message::Segment(mut segment) = segment(seq) else {
            unreachable!()
        };
        segment.payload.len = 6 * super::super::manifest::PIECE_SIZE as u32;
        let link = LinkId(link);
        node.handle_input(now, Input::SegmentBegun { link, segment });
        node.handle_input(
            now,
            Input::PieceArrived {
                link,
                seq,
                pieces_done: 1,
            },
        );
    }

    #[test]
    fn a_segment_is_served_from_its_first_checked_piece_and_its_uploads_aborted_with_its_upstream()
    {
        let (mut node, now) = peer_with_partners(3);
        let seq = Seq(100);
        let Message::Segment(mut head) = segment(seq) else {
            unreachable!()
        };
        head.payload.len = 6 * super::super::manifest::PIECE_SIZE as u32;
        node.handle_input(
            now,
            Input::SegmentBegun {
                link: LinkId(1),
                segment: head,
            },
        );
        // A manifest alone is nothing to serve: nobody is told yet.
        assert!(haves_to(&drained(&mut node), seq).is_empty());
        assert_eq!(node.pieces_held(seq), Some(0));
        assert_eq!(node.store().reserved(), 6 * 16 * 1024);
        // Its first checked piece: every partner but its sender learns we hold it.
        let piece = |n| Input::PieceArrived {
            link: LinkId(1),
            seq,
            pieces_done: n,
        };
        node.handle_input(now, piece(1));
        let mut to = haves_to(&drained(&mut node), seq);
        to.sort();
        assert_eq!(to, [LinkId(2), LinkId(3)]);
        assert_eq!(node.pieces_held(seq), Some(1));
        // A partner asks for it: it goes out at once, as its pieces come.
        let ask = Control::Request {
            seq,
            deadline_ms: 8_000,
        };
        recv(&mut node, now, 2, Message::Ctl(ask.clone()));
        assert_eq!(segment_sent_to(&drained(&mut node), seq), Some(LinkId(2)));
        assert_eq!(node.stats().uploads_partial, 1);
        node.handle_input(now, piece(3));
        assert_eq!(node.pieces_held(seq), Some(3));
        // Its upstream fails: the partial copy goes, and the upload of it is aborted.
        node.handle_input(now, Input::LinkDown { link: LinkId(1) });
        assert_eq!(aborts(&drained(&mut node)), [(LinkId(2), seq)]);
        assert_eq!(node.pieces_held(seq), None);
        assert_eq!(node.store().reserved(), 0);
        node.check_invariants().unwrap();
        // Asked again, we say busy: we hold nothing of it.
        recv(&mut node, now, 2, Message::Ctl(ask));
        assert!(drained(&mut node).iter().any(|o| matches!(
            o,
            Output::Send { link: LinkId(2), msg: Message::Ctl(Control::Busy { seq: s, .. }) } if *s == seq
        )));
    }

    #[test]
    fn an_aborted_supplier_is_asked_no_more_and_a_whole_arrival_is_not_announced_twice() {
        let (mut node, now) = peer_with_partners(3);
        let seq = Seq(200);
        begin_and_piece(&mut node, now, 3, seq);
        drained(&mut node);
        let ask = Control::Request {
            seq,
            deadline_ms: 8_000,
        };
        recv(&mut node, now, 2, Message::Ctl(ask));
        assert_eq!(segment_sent_to(&drained(&mut node), seq), Some(LinkId(2)));
        // Our supplier aborts: ours goes too, with its upload.
        node.handle_input(
            now,
            Input::SegmentAborted {
                link: LinkId(3),
                seq,
            },
        );
        assert_eq!(aborts(&drained(&mut node)), [(LinkId(2), seq)]);
        assert_eq!(node.stats().aborts_received, 1);
        assert_eq!(node.stats().aborts_sent, 1);
        node.check_invariants().unwrap();
        // Another one arrives whole after its first piece: partners were told once.
        let next = Seq(201);
        begin_and_piece(&mut node, now, 1, next);
        assert_eq!(haves_to(&drained(&mut node), next).len(), 2);
        let Message::Segment(mut whole) = segment(next) else {
            unreachable!()
        };
        whole.payload.len = 6 * super::super::manifest::PIECE_SIZE as u32;
        recv(&mut node, now, 1, Message::Segment(whole));
        assert!(haves_to(&drained(&mut node), next).is_empty());
        assert_eq!(node.pieces_held(next), Some(6));
        assert_eq!(node.store().reserved(), 0);
        node.check_invariants().unwrap();
    }

    fn recv(node: &mut Node<SimPayload>, now: Instant, link: u64, msg: Message<SimPayload>) {
        node.handle_input(
            now,
            Input::Received {
                link: LinkId(link),
                msg,
            },
        );
    }

    fn segment(seq: Seq) -> Message<SimPayload> {
        Message::Segment(Segment {
            seq,
            origin_us: 0,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload {
                len: 12_000,
                hops: 1,
            },
        })
    }

    fn offers_sent(node: &mut Node<SimPayload>) -> Vec<(LinkId, Seq)> {
        std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                Output::Send {
                    link,
                    msg: Message::Ctl(Control::Offer { seq }),
                } => Some((link, seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn positions_beyond_the_horizon_are_refused_and_offers_look_back_no_further_than_the_store() {
        let (mut node, now) = peer_with_partners(2);
        node.cfg.offers = true;
        let newest = Seq(5_000_010);
        for k in 0..10 {
            recv(&mut node, now, 1, segment(newest.sub(9 - k)));
        }
        while node.poll_output().is_some() {}
        assert_eq!(node.stats().positions_refused, 0);
        // A peer that holds nothing yet sends an empty map at its default base: no position
        // stated, nothing refused (it was counted, so honest joiners showed as refusals).
        recv(
            &mut node,
            now,
            2,
            Message::Ctl(Control::BufferMap {
                map: BufferMap::empty(Seq(0)),
                backlog_ms: 0,
                playing: None,
                spare: 0,
            }),
        );
        assert_eq!(node.stats().positions_refused, 0);
        // A play position half the sequence range back: refused, and no offer is made
        // (before the check, the search for a segment to offer stepped back from our newest
        // towards it, one segment at a time: up to 2^31 steps).
        let far = newest.sub((1 << 31) - 5);
        let map = |playing| {
            Message::Ctl(Control::BufferMap {
                map: BufferMap::empty(newest.sub(100)),
                backlog_ms: 0,
                playing: Some(playing),
                spare: 0,
            })
        };
        let t = std::time::Instant::now();
        recv(&mut node, now, 2, map(far));
        assert_eq!(node.stats().positions_refused, 1);
        assert_eq!(offers_sent(&mut node), vec![]);
        // A have, an offer and a map's newest as far off: refused too, and the map is not
        // moved (it would have slid past everything it held).
        recv(
            &mut node,
            now,
            2,
            Message::Ctl(Control::Have {
                seq: far,
                backlog_ms: 0,
                spare: 0,
            }),
        );
        recv(&mut node, now, 2, Message::Ctl(Control::Offer { seq: far }));
        let mut off = BufferMap::empty(far);
        off.set(far.add(3));
        recv(
            &mut node,
            now,
            2,
            Message::Ctl(Control::BufferMap {
                map: off,
                backlog_ms: 0,
                playing: None,
                spare: 0,
            }),
        );
        assert_eq!(node.stats().positions_refused, 4);
        // A play position within the horizon but far behind what we hold: the search starts
        // at our newest and stops at the store's window; the freshest segment it lacks goes.
        recv(&mut node, now, 2, map(newest.sub(POSITION_HORIZON)));
        assert_eq!(node.stats().positions_refused, 4);
        assert_eq!(offers_sent(&mut node), vec![(LinkId(2), newest)]);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    /// Two partners hold the stream as it is cut (one 96 kB segment a second): link 1
    /// claims a 400 Mbit/s uplink and delivers what we ask of it in 10 s, link 2 claims the
    /// stream rate (768 kbit/s) and delivers in 0.2 s. For `secs`, the node is driven as a driver would;
    /// returns how many requests each got in each 20 s refinement period.
    fn claims_against_delivery(secs: u64) -> (Node<SimPayload>, Vec<[u32; 2]>) {
        let (mut node, t0) = peer_with_partners(0);
        // Playback runs at most 5 s behind the stream: a 10 s delivery is always too late.
        node.cfg.max_lag = Duration::from_secs(5);
        for (k, kbps) in [(1u64, 400_000u32), (2, 768)] {
            let link = LinkId(k);
            node.handle_input(
                t0,
                Input::LinkUp {
                    link,
                    remote: PeerAddr::V4([10, 0, 0, k as u8], 7000),
                    outbound: false,
                },
            );
            let hello = Hello {
                magic: MAGIC,
                version: VERSION,
                channel: CHANNEL,
                peer_id: PeerId(100 + k),
                listen_port: 7000,
                role: Role::Peer,
                upload_kbps: kbps,
            };
            recv(&mut node, t0, k, Message::Ctl(Control::Hello(hello)));
            recv(
                &mut node,
                t0,
                k,
                Message::Ctl(Control::PartnerRequest { partners: 4 }),
            );
        }
        let seg = |seq: Seq| Segment {
            seq,
            origin_us: 0,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload {
                len: STREAM as u32,
                hops: 1,
            },
        };
        let mut pending: Vec<(Instant, LinkId, Seq)> = Vec::new();
        let mut asked = vec![[0u32; 2]; (secs / 20 + 1) as usize];
        let step = Duration::from_millis(100);
        let mut now = t0;
        for tick in 0..secs * 10 {
            now += step;
            if tick % 10 == 0 {
                // Segment `tick / 10` is cut; both partners have it at once.
                let s = Seq(1000 + (tick / 10) as u32);
                for k in 1..=2 {
                    let have = Control::Have {
                        seq: s,
                        backlog_ms: 0,
                        spare: 0,
                    };
                    recv(&mut node, now, k, Message::Ctl(have));
                }
            }
            let due: Vec<_> = pending.iter().filter(|p| p.0 <= now).copied().collect();
            pending.retain(|p| p.0 > now);
            for (_, link, s) in due {
                recv(&mut node, now, link.0, Message::Segment(seg(s)));
            }
            node.handle_timeout(now);
            while let Some(o) = node.poll_output() {
                if let Output::Send {
                    link,
                    msg: Message::Ctl(Control::Request { seq, .. }),
                } = o
                {
                    let slow = link == LinkId(1);
                    asked[(now.saturating_since(t0).as_micros() / 20_000_000) as usize]
                        [!slow as usize] += 1;
                    let took = Duration::from_millis(if slow { 10_000 } else { 200 });
                    pending.push((now + took, link, seq));
                }
            }
        }
        (node, asked)
    }

    #[test]
    fn a_partner_that_claims_a_huge_upload_and_delivers_slowly_loses_supplier_choice() {
        let (node, asked) = claims_against_delivery(100);
        let rate = |k: usize| {
            node.links[k]
                .partner
                .as_ref()
                .expect("partner")
                .upload_bytes_per_s
        };
        let (slow, fast) = (rate(0), rate(1));
        // The claim counts for 4 stream rates at most, the measurement for what it was: a
        // segment in 10 s (requests that timed out first: nothing, the floor) against one in
        // 0.2 s.
        assert!(slow <= STREAM / 8, "slow partner at {slow} B/s");
        assert!(
            fast >= STREAM && fast > 20 * slow,
            "fast partner at {fast} B/s"
        );
        // It announces every segment first. While only its claim was known it was asked for
        // them (a 4x uplink delivers in time); once measured, the fast one gets nearly all.
        let first = asked[0];
        let last = asked[3];
        assert!(first[0] >= 5, "{asked:?}");
        assert!(last[0] * 10 <= last[1], "{asked:?}");
    }

    #[test]
    fn a_partner_that_claims_a_huge_upload_and_delivers_slowly_is_served_after_one_that_delivers() {
        let (mut node, _) = claims_against_delivery(100);
        let now = node.now;
        let newest = node.store().newest().expect("it holds the stream");
        let (a, b) = (newest, newest.sub(1));
        let request = |seq| {
            Message::Ctl(Control::Request {
                seq,
                deadline_ms: 15_000,
            })
        };
        while node.poll_output().is_some() {}
        // One upload at a time: the first request starts at once, the next two queue for the
        // same segment, and the measured uploader goes first (the claimed 4x one did before).
        recv(&mut node, now, 1, request(a));
        recv(&mut node, now, 1, request(b));
        recv(&mut node, now, 2, request(b));
        let sent = |node: &mut Node<SimPayload>| {
            std::iter::from_fn(|| node.poll_output())
                .filter_map(|o| match o {
                    Output::Send {
                        link,
                        msg: Message::Segment(s),
                    } => Some((link, s.seq)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sent(&mut node), vec![(LinkId(1), a)]);
        node.handle_input(now, Input::Sent { link: LinkId(1) });
        assert_eq!(sent(&mut node), vec![(LinkId(2), b)]);
    }

    /// A peer that joined before the origin knew anyone: an empty redirect, the source its
    /// only partner. Short of partners with no candidate, it asks its partner for members
    /// (at most every `MEMBERS_PULL_EVERY`) instead of waiting for the source's gossip to
    /// pick it, which at 1,000 peers took a minute while the source seeded it with segments
    /// it could pass to nobody.
    #[test]
    fn a_peer_with_no_candidate_left_asks_its_partner_for_members() {
        let mut cfg = Config::new(CHANNEL, Role::Peer, STREAM);
        cfg.upload_bytes_per_s = 4 * STREAM;
        let origin = PeerAddr::V4([10, 1, 1, 1], 7000);
        let mut now = Instant::ZERO;
        let mut node = Node::new(cfg, PeerId(1), 1, now);
        node.command(
            now,
            Command::Join {
                bootstrap: vec![origin],
            },
        )
        .expect("a peer joins");
        while node.poll_output().is_some() {}
        node.handle_input(
            now,
            Input::LinkUp {
                link: LinkId(1),
                remote: origin,
                outbound: true,
            },
        );
        let hello = Hello {
            magic: MAGIC,
            version: VERSION,
            channel: CHANNEL,
            peer_id: PeerId(2),
            listen_port: 7000,
            role: Role::Source,
            upload_kbps: 4 * 768,
        };
        for c in [
            Control::Hello(hello),
            Control::Redirect {
                deputy: None,
                members: Vec::new(),
            },
            Control::PartnerAccept,
        ] {
            recv(&mut node, now, 1, Message::Ctl(c));
        }
        while node.poll_output().is_some() {}
        let start = now;
        let mut asked = Vec::new();
        for _ in 0..12 {
            now += Duration::from_millis(500);
            recv(&mut node, now, 1, Message::Ctl(Control::KeepAlive));
            node.handle_timeout(now);
            while let Some(o) = node.poll_output() {
                if let Output::Send {
                    link: LinkId(1),
                    msg: Message::Ctl(Control::MembersRequest),
                } = o
                {
                    asked.push(now.saturating_since(start));
                }
            }
        }
        assert!(
            asked
                .first()
                .is_some_and(|t| *t <= Duration::from_millis(2500)),
            "asked at {asked:?}"
        );
        assert!(
            asked
                .windows(2)
                .all(|w| w[1] >= w[0] + Duration::from_secs(2)),
            "asked at {asked:?}"
        );
        // The answer names a member: it is dialled, and no more is asked while it is tried.
        let member = MemberEntry {
            id: PeerId(9),
            addr: PeerAddr::V4([10, 0, 0, 9], 7000),
            seq: 1,
            num_partners: 1,
            max_partners: 8,
            ttl_s: 60,
            reach: Reach::Reachable,
            v6: None,
        };
        recv(
            &mut node,
            now,
            1,
            Message::Ctl(Control::Members(vec![member])),
        );
        let dialled = std::iter::from_fn(|| node.poll_output())
            .any(|o| matches!(o, Output::Dial { remote } if remote == member.addr));
        assert!(dialled);
    }

    /// A joiner dials the members its origin named; those behind a NAT never answer and
    /// their connects time out after 3 s. A dial unanswered after `DIAL_PATIENCE` no longer
    /// holds a place: the next candidates are dialled beside it (pending dials stay bounded).
    #[test]
    fn a_dial_unanswered_for_a_second_does_not_hold_back_the_next_candidates() {
        let mut cfg = Config::new(CHANNEL, Role::Peer, STREAM);
        cfg.upload_bytes_per_s = STREAM;
        let origin = PeerAddr::V4([10, 1, 1, 1], 7000);
        let mut now = Instant::ZERO;
        let mut node = Node::new(cfg, PeerId(1), 1, now);
        node.command(
            now,
            Command::Join {
                bootstrap: vec![origin],
            },
        )
        .expect("a peer joins");
        while node.poll_output().is_some() {}
        node.handle_input(
            now,
            Input::LinkUp {
                link: LinkId(1),
                remote: origin,
                outbound: true,
            },
        );
        let hello = Hello {
            magic: MAGIC,
            version: VERSION,
            channel: CHANNEL,
            peer_id: PeerId(2),
            listen_port: 7000,
            role: Role::Source,
            upload_kbps: 4 * 768,
        };
        let members: Vec<MemberEntry> = (0..12u8)
            .map(|k| MemberEntry {
                id: PeerId(10 + k as u64),
                addr: PeerAddr::V4([10, 0, 0, 10 + k], 7000),
                seq: 1,
                num_partners: 1,
                max_partners: 8,
                ttl_s: 60,
                reach: Reach::Unknown,
                v6: None,
            })
            .collect();
        for c in [
            Control::Hello(hello),
            Control::Redirect {
                deputy: None,
                members,
            },
            Control::PartnerAccept,
        ] {
            recv(&mut node, now, 1, Message::Ctl(c));
        }
        let dials = |node: &mut Node<SimPayload>| {
            std::iter::from_fn(|| node.poll_output())
                .filter(|o| matches!(o, Output::Dial { .. }))
                .count()
        };
        let first = dials(&mut node);
        assert!(first >= 3, "{first} dials at once");
        // Nothing answers. Within the first second no more are dialled...
        now += Duration::from_millis(500);
        recv(&mut node, now, 1, Message::Ctl(Control::KeepAlive));
        node.handle_timeout(now);
        assert_eq!(dials(&mut node), 0);
        // ...after it, the next candidates are, up to the bound on pending dials.
        let mut later = 0;
        for _ in 0..3 {
            now += Duration::from_millis(500);
            recv(&mut node, now, 1, Message::Ctl(Control::KeepAlive));
            node.handle_timeout(now);
            later += dials(&mut node);
        }
        assert!(later > 0, "no dial beside the unanswered ones");
        assert!(
            first + later <= node.cfg.max_pending_dials,
            "{first} + {later}"
        );
    }

    /// A peer nobody can dial, with plenty of candidates of unknown reach, keeps half of its
    /// pending-dial room for punches: an introduction that comes while its dials are in
    /// flight still starts one.
    #[test]
    fn an_undialable_peer_keeps_room_for_punches_while_it_dials_candidates() {
        let mut cfg = Config::new(CHANNEL, Role::Peer, STREAM);
        cfg.upload_bytes_per_s = 4 * STREAM;
        cfg.dial_back = true;
        cfg.hole_punch = true;
        let origin = PeerAddr::V4([10, 1, 1, 1], 7000);
        let now = Instant::ZERO;
        let mut node = Node::new(cfg, PeerId(1), 1, now);
        node.command(
            now,
            Command::Join {
                bootstrap: vec![origin],
            },
        )
        .expect("a peer joins");
        node.handle_input(
            now,
            Input::Reachability {
                reachable: Some(false),
                external: None,
                v6: None,
                via: crate::proto::reach::ReachVia::Config,
            },
        );
        while node.poll_output().is_some() {}
        node.handle_input(
            now,
            Input::LinkUp {
                link: LinkId(1),
                remote: origin,
                outbound: true,
            },
        );
        let hello = Hello {
            magic: MAGIC,
            version: VERSION,
            channel: CHANNEL,
            peer_id: PeerId(2),
            listen_port: 7000,
            role: Role::Source,
            upload_kbps: 4 * 768,
        };
        let members: Vec<MemberEntry> = (0..16u8)
            .map(|k| MemberEntry {
                id: PeerId(10 + k as u64),
                addr: PeerAddr::V4([10, 0, 0, 10 + k], 7000),
                seq: 1,
                num_partners: 1,
                max_partners: 8,
                ttl_s: 60,
                reach: Reach::Unknown,
                v6: None,
            })
            .collect();
        for c in [
            Control::Hello(hello),
            Control::Redirect {
                deputy: None,
                members,
            },
            Control::PartnerAccept,
        ] {
            recv(&mut node, now, 1, Message::Ctl(c));
        }
        let dials = std::iter::from_fn(|| node.poll_output())
            .filter(|o| matches!(o, Output::Dial { .. }))
            .count();
        assert!(dials >= 2, "{dials} dials");
        assert!(dials <= node.cfg.max_pending_dials / 2, "{dials} dials");
        let intro = Control::Introduce {
            id: PeerId(77),
            addr: PeerAddr::V4([203, 0, 113, 7], 7000),
            delay_ms: 300,
        };
        recv(&mut node, now, 1, Message::Ctl(intro));
        let punched =
            std::iter::from_fn(|| node.poll_output()).any(|o| matches!(o, Output::Punch { .. }));
        assert!(punched, "the introduction found no room");
    }

    #[test]
    fn a_decline_of_nothing_we_offered_changes_nothing() {
        let (mut node, now) = peer_with_partners(1);
        recv(
            &mut node,
            now,
            1,
            Message::Ctl(Control::Decline { seq: Seq(77) }),
        );
        let p = node.links[0].partner.as_ref().expect("a partner");
        assert!(!p.map.has(Seq(77)));
    }

    #[test]
    fn partners_whose_maps_and_play_positions_span_the_whole_sequence_range_cannot_panic_a_node() {
        // Rust's sort may panic on a comparison that is not a total order: serial-number
        // order over positions spread across the u32 range is not one. 21-30 partners, maps
        // and play positions spread over the range, 16 seeds each.
        for n in 21..=30u64 {
            for seed in 0..16u64 {
                let (mut node, now) = peer_with_partners(n);
                assert_eq!(node.stats().partners, n as usize);
                let mut rng = Rng::new(seed * 1000 + n);
                for k in 1..=n {
                    let base = Seq(rng.next_u64() as u32);
                    let mut map = BufferMap::empty(base);
                    map.set(base.add(rng.below(200) as u32));
                    let msg = Message::Ctl(Control::BufferMap {
                        map,
                        backlog_ms: 0,
                        playing: Some(Seq(rng.next_u64() as u32)),
                        spare: 0,
                    });
                    node.handle_input(
                        now,
                        Input::Received {
                            link: LinkId(k),
                            msg,
                        },
                    );
                }
                // The start first chosen (from one partner's map) never comes: it is chosen
                // again, from every partner's map and play position.
                for t in 1..=4 {
                    node.handle_timeout(now + Duration::from_millis(t * 600));
                    while node.poll_output().is_some() {}
                }
            }
        }
    }
}
