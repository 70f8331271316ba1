//! The deterministic discrete-event simulator: thousands of the same [`Node`]s the daemon runs,
//! joined by a modelled network.
//!
//! One event queue ordered by (time, insertion number), one seeded generator, no wall clock and
//! no hash-map iteration anywhere in what decides the run: the same seed gives the same trace
//! (hashed into `trace_hash`) and the same JSON. The payload is [`SimPayload`], a bare length,
//! so no node holds media bytes.
//!
//! The loop pops an event, feeds it to its node, and drains the node's outputs: a control
//! message is delivered one latency later; a segment becomes a transfer on the sender's uplink
//! ([`net::Uplink`]) and is delivered when it has crossed, and the sender is told `Sent`;
//! dials become `LinkUp` after a round trip, or `DialFailed` if nobody is there; closes reach
//! the other side after one latency, behind data already in flight. After each drain the node's
//! next timeout is re-armed with one `Wake` event (a stale one is skipped).

pub mod metrics;
pub mod nat;
pub mod net;
pub mod queue;
pub mod scenario;

use crate::proto::manifest::PIECE_SIZE;
use crate::proto::rng::Rng;
use crate::proto::wire::FRAME_PREFIX_LEN;
use crate::proto::wire::{wire_len, ChannelId, Role, SimPayload};
use crate::proto::{
    Command, Config, Duration, Input, Instant, LinkId, Message, Node, NodeStats, Output, PeerAddr,
    PeerId, Segment, Seq,
};
use metrics::{quantile, Histogram, Summary};
use net::{loss_delay, Place, Shape, Uplink};
pub use scenario::Scenario;
use scenario::{
    draw_upload, mean_upload, stratified_uploads, ARRIVAL_WINDOW_S, DEFAULT_UPLOAD_MIX,
    SOURCE_UPLOAD_FACTOR,
};
use std::collections::HashMap;

/// A peer counts in the continuity figures once this many of its deadlines have passed
/// (a churned peer seen for two segments says little about the swarm).
pub const MIN_DEADLINES: u64 = 10;
/// How many events ahead the loop asks for the memory an event will touch.
const PREFETCH_AHEAD: usize = 8;
/// Port every simulated node listens on.
const SIM_PORT: u16 = 7000;
/// How long a dial to a vanished host waits before failing (a crashed box answers nothing).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Share of peers that cannot be dialled, by default: about two thirds of P2P peers sit
/// behind a NAT or firewall (Tribler measured 64 %); some of those get a port mapped.
pub const DEFAULT_NAT_FRACTION: f64 = 0.6;
/// Share of NATs a TCP simultaneous open gets through, by default (docs/SIMULATION.md).
pub const DEFAULT_PUNCHABLE: f64 = 0.8;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub peers: usize,
    pub seed: u64,
    pub duration_s: f64,
    pub scenario: Scenario,
    pub partners: usize,
    pub rate_kbps: u64,
    /// Peers' upload classes: (multiple of the stream rate, share of peers).
    pub upload_mix: Vec<(f64, f64)>,
    /// Multiplies every peer's upload (not the source's).
    pub upload_scale: f64,
    /// Packet loss probability on every path.
    pub loss: f64,
    pub segment_s: f64,
    pub mean_session_s: f64,
    /// Share of churn departures that are crashes (no goodbye).
    pub crash_fraction: f64,
    /// The source's upload budget, in stream rates (its link has `SOURCE_UPLOAD_FACTOR`).
    pub source_budget: f64,
    /// Download capacity of a peer, in stream rates, shared by every transfer coming to it.
    pub download_factor: f64,
    /// First segment number (to test the u32 wrap).
    pub start_seq: u32,
    /// Print progress to stderr.
    pub progress: bool,
    /// Node settings applied to every peer (and the source), by [`Config::set`] name.
    pub settings: Vec<(String, String)>,
    /// Share of peers behind a NAT that drops connections it did not ask for ([`nat`]).
    pub nat_fraction: f64,
    /// Peers ask for introductions and punch holes (the nodes' `hole_punch`).
    pub punch: bool,
    /// Share of those NATs a simultaneous open gets through.
    pub punchable: f64,
}

impl SimConfig {
    /// Checks `settings` against a node configuration before a run starts.
    pub fn check_settings(&self) -> Result<(), crate::proto::config::SettingError> {
        let mut c = Config::new(ChannelId([0; 32]), Role::Peer, 1000);
        for (k, v) in &self.settings {
            c.set(k, v)?;
        }
        Ok(())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            peers: 100,
            seed: 1,
            duration_s: 120.0,
            scenario: Scenario::Static,
            partners: 5,
            rate_kbps: 768,
            upload_mix: DEFAULT_UPLOAD_MIX.to_vec(),
            upload_scale: 1.0,
            loss: 0.0,
            segment_s: 1.0,
            mean_session_s: 300.0,
            crash_fraction: 0.5,
            source_budget: 1.9,
            download_factor: 10.0,
            start_seq: 0,
            progress: false,
            settings: Vec::new(),
            nat_fraction: DEFAULT_NAT_FRACTION,
            punch: true,
            punchable: DEFAULT_PUNCHABLE,
        }
    }
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: u32,
        link: LinkId,
        msg: Message<SimPayload>,
    },
    LinkUp {
        to: u32,
        link: LinkId,
        remote: PeerAddr,
        outbound: bool,
    },
    DialFailed {
        to: u32,
        remote: PeerAddr,
    },
    LinkDown {
        to: u32,
        link: LinkId,
    },
    Wake {
        node: u32,
    },
    UplinkDone {
        node: u32,
        version: u64,
    },
    /// The first `pieces` pieces of `segment` reached `to` on `link` (`first`: its head with
    /// them: the receiver checks the manifest, then the pieces).
    Piece {
        to: u32,
        link: LinkId,
        segment: Segment<SimPayload>,
        pieces: u32,
        first: bool,
    },
    /// The sender on `link` aborted `seq` (its own upstream failed): the abort record.
    Aborted {
        to: u32,
        link: LinkId,
        seq: Seq,
    },
    Ingest,
    Join {
        node: u32,
    },
    Leave {
        node: u32,
        crash: bool,
    },
    /// A dial-back's proof reached `to`'s listener.
    Proof {
        to: u32,
        nonce: u64,
    },
    /// How `to`'s dial-back went (its driver saw the connect succeed or fail).
    DialBackDone {
        to: u32,
        nonce: u64,
        connected: bool,
    },
    /// `from`'s punch toward `to` waited long enough for the other side's.
    PunchExpire {
        from: u32,
        to: u32,
    },
}

impl Ev {
    /// The simulated link the event travels on, if any.
    fn link(&self) -> Option<LinkId> {
        match self {
            Ev::Deliver { link, .. }
            | Ev::LinkUp { link, .. }
            | Ev::LinkDown { link, .. }
            | Ev::Piece { link, .. }
            | Ev::Aborted { link, .. } => Some(*link),
            _ => None,
        }
    }

    fn tag(&self) -> (u64, u32) {
        match self {
            Ev::Deliver { to, .. } => (1, *to),
            Ev::LinkUp { to, .. } => (2, *to),
            Ev::DialFailed { to, .. } => (3, *to),
            Ev::LinkDown { to, .. } => (4, *to),
            Ev::Wake { node } => (5, *node),
            Ev::UplinkDone { node, .. } => (6, *node),
            Ev::Ingest => (7, 0),
            Ev::Join { node } => (8, *node),
            Ev::Leave { node, .. } => (9, *node),
            Ev::Proof { to, .. } => (11, *to),
            Ev::DialBackDone { to, .. } => (13, *to),
            Ev::PunchExpire { from, .. } => (12, *from),
            Ev::Piece { to, .. } => (14, *to),
            Ev::Aborted { to, .. } => (15, *to),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Life {
    Waiting,
    Alive,
    Left,
    Crashed,
}

struct Slot {
    node: Option<Node<SimPayload>>,
    up: u64,
    up_factor: f64,
    uplink: Uplink<Message<SimPayload>>,
    armed: Option<Instant>,
    /// The uplink completion event last queued (time, uplink version), to queue each once.
    uplink_armed: Option<(Instant, u64)>,
    joined_at: Instant,
    left_at: Option<Instant>,
    final_stats: Option<(NodeStats, u64)>,
    uploaded_bytes: u64,
    freezes: metrics::Freezes,
    /// The transfers coming to this node (sender, link), which share its downlink; entries
    /// whose transfer ended are dropped at the next [`World::share_downlink`].
    incoming: Vec<(u32, LinkId)>,
}

/// The part of a slot read for events about other nodes.
struct Hot {
    place: Place,
    down: u64,
    life: Life,
}

/// Two ends of a simulated TCP connection and whether each still has it open.
struct SimLink {
    a: u32,
    b: u32,
    a_open: bool,
    b_open: bool,
    /// Latest delivery scheduled in each direction (a to b, b to a): TCP delivers in order.
    last_to_b: Instant,
    last_to_a: Instant,
    /// One-way delay between the ends (as `Place::one_way` gives it, either way round), kept
    /// here so that a send reads the link it uses and not the other end's place.
    one_way: Duration,
}

impl SimLink {
    fn other(&self, me: u32) -> u32 {
        if me == self.a {
            self.b
        } else {
            self.a
        }
    }
    fn open_at(&self, me: u32) -> bool {
        if me == self.a {
            self.a_open
        } else {
            self.b_open
        }
    }
    /// The delivery time of a message from `from` that would arrive at `at`, kept in order.
    fn in_order(&mut self, from: u32, at: Instant) -> Instant {
        let last = if from == self.a {
            &mut self.last_to_b
        } else {
            &mut self.last_to_a
        };
        *last = (*last).max(at);
        *last
    }
    fn close_at(&mut self, me: u32) {
        if me == self.a {
            self.a_open = false;
        } else {
            self.b_open = false;
        }
    }
}

/// The open links by id. Ids are handed out in sequence from 1, so the table is a vector
/// indexed by id (one load per lookup, where a hash table took two scattered ones); a
/// closed link leaves an empty entry behind.
#[derive(Default)]
struct LinkTable {
    by_id: Vec<Option<SimLink>>,
}

impl LinkTable {
    fn get(&self, id: &u64) -> Option<&SimLink> {
        self.by_id.get(*id as usize)?.as_ref()
    }
    fn get_mut(&mut self, id: &u64) -> Option<&mut SimLink> {
        self.by_id.get_mut(*id as usize)?.as_mut()
    }
    fn insert(&mut self, id: u64, l: SimLink) {
        let i = id as usize;
        if i >= self.by_id.len() {
            self.by_id.resize_with(i + 1, || None);
        }
        self.by_id[i] = Some(l);
    }
    fn remove(&mut self, id: &u64) {
        if let Some(e) = self.by_id.get_mut(*id as usize) {
            *e = None;
        }
    }
}

/// A fixed, seedless hasher for the link table (looked up, never iterated).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);
impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
type IdBuild = std::hash::BuildHasherDefault<IdHasher>;

pub struct Sim {
    cfg: SimConfig,
    now: Instant,
    end: Instant,
    queue: queue::EventQueue<Ev>,
    slots: Vec<Slot>,
    /// What an event about another node looks up (is it there, where, how fast it
    /// downloads), by slot, apart from the large `Slot`s: a compact table stays in cache.
    hot: Vec<Hot>,
    links: LinkTable,
    next_link: u64,
    rng: Rng,
    channel: ChannelId,
    segment_bytes: u32,
    next_segment: Seq,
    stream_started: Option<Instant>,
    segments_ingested: u64,
    lag: Histogram,
    /// Segment arrival delay after ingest, every copy delivered (a diagnostic).
    arrival: Histogram,
    hops: [u64; 32],
    idle_samples: [u64; 4],
    kinds: [u64; 16],
    ctl_kinds: [u64; 32],
    src_ctl: [u64; 32],
    payload_bytes: u64,
    control_bytes: u64,
    events: u64,
    trace: u64,
    outbuf: Vec<Output<SimPayload>>,
    /// Every missed deadline printed to stderr, with its time and node
    /// (`COOLSTREAM_SIM_DEBUG=misses`), for debugging.
    debug_misses: bool,
    /// Node whose events are printed to stderr (`COOLSTREAM_SIM_DEBUG=N`), for debugging.
    debug_node: Option<u32>,
    /// Segment whose spread is printed (`COOLSTREAM_SIM_TRACE_SEQ=N`), and when each node got it.
    trace_seq: Option<u32>,
    trace_got: HashMap<u32, Instant, IdBuild>,
    flowbuf: Vec<net::Flow<Message<SimPayload>>>,
    piecebuf: Vec<net::PieceOut<Message<SimPayload>>>,
    /// Scratch for sharing a downlink (net::share_downlink).
    share_buf: (Vec<u64>, Vec<usize>, Vec<u64>),
    /// Who is behind a NAT; punches waiting for their other side.
    nat: nat::Nat,
}

fn addr_of(ix: u32) -> PeerAddr {
    PeerAddr::V4([10, (ix >> 16) as u8, (ix >> 8) as u8, ix as u8], SIM_PORT)
}

fn index_of(addr: PeerAddr) -> Option<u32> {
    match addr {
        PeerAddr::V4([10, a, b, c], SIM_PORT) => {
            Some((a as u32) << 16 | (b as u32) << 8 | c as u32)
        }
        _ => None,
    }
}

/// Largest population addresses can name (10.0.0.0/8).
pub const MAX_NODES: usize = 1 << 24;

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let stream_bytes = cfg.rate_kbps * 1000 / 8;
        let segment_bytes = (stream_bytes as f64 * cfg.segment_s) as u32;
        let mut channel = [0u8; 32];
        for b in channel.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let mut sim = Sim {
            end: Instant::ZERO + Duration::from_secs_f64(cfg.duration_s),
            now: Instant::ZERO,
            queue: queue::EventQueue::default(),
            slots: Vec::new(),
            hot: Vec::new(),
            links: LinkTable::default(),
            next_link: 1,
            rng,
            channel: ChannelId(channel),
            segment_bytes,
            next_segment: Seq(cfg.start_seq),
            stream_started: None,
            segments_ingested: 0,
            lag: Histogram::default(),
            arrival: Histogram::default(),
            hops: [0; 32],
            idle_samples: [0; 4],
            kinds: [0; 16],
            ctl_kinds: [0; 32],
            src_ctl: [0; 32],
            payload_bytes: 0,
            control_bytes: 0,
            events: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            outbuf: Vec::new(),
            trace_seq: std::env::var("COOLSTREAM_SIM_TRACE_SEQ")
                .ok()
                .and_then(|v| v.parse().ok()),
            trace_got: HashMap::default(),
            debug_misses: std::env::var("COOLSTREAM_SIM_DEBUG").is_ok_and(|v| v == "misses"),
            debug_node: std::env::var("COOLSTREAM_SIM_DEBUG")
                .ok()
                .and_then(|v| v.parse().ok()),
            flowbuf: Vec::new(),
            piecebuf: Vec::new(),
            share_buf: Default::default(),
            nat: nat::Nat::new(cfg.seed, cfg.nat_fraction, cfg.punchable),
            cfg,
        };
        // The source is node 0, live from the start.
        let src = sim.add_slot(SOURCE_UPLOAD_FACTOR, true);
        sim.start_node(src);
        sim.push(Instant::ZERO, Ev::Ingest);
        // The initial population arrives spread over the arrival window.
        let start = sim.cfg.scenario.arrivals_start_s();
        let mix = sim.cfg.upload_mix.clone();
        for f in stratified_uploads(&mut sim.rng, &mix, sim.cfg.peers) {
            let f = f * sim.cfg.upload_scale;
            let ix = sim.add_slot(f, false);
            let at = start + sim.rng.unit() * ARRIVAL_WINDOW_S;
            sim.push(
                Instant::ZERO + Duration::from_secs_f64(at),
                Ev::Join { node: ix },
            );
        }
        sim
    }

    fn stream_bytes(&self) -> u64 {
        self.cfg.rate_kbps * 1000 / 8
    }

    fn add_slot(&mut self, up_factor: f64, source: bool) -> u32 {
        let ix = self.slots.len() as u32;
        assert!(
            self.slots.len() < MAX_NODES,
            "simulated population exceeds 10.0.0.0/8"
        );
        let stream = self.stream_bytes() as f64;
        let up = (stream * up_factor).max(1.0) as u64;
        let down = if source {
            up
        } else {
            (stream * self.cfg.download_factor) as u64
        };
        let place = Place::random(&mut self.rng);
        self.nat.add_slot(source);
        self.hot.push(Hot {
            place,
            down,
            life: Life::Waiting,
        });
        self.slots.push(Slot {
            node: None,
            up,
            up_factor,
            uplink: Uplink::new(up),
            armed: None,
            uplink_armed: None,
            joined_at: Instant::ZERO,
            left_at: None,
            final_stats: None,
            uploaded_bytes: 0,
            freezes: metrics::Freezes::default(),
            incoming: Vec::new(),
        });
        ix
    }

    fn node_config(&self, source: bool, up: u64) -> Config {
        let role = if source { Role::Source } else { Role::Peer };
        let mut c = Config::new(self.channel, role, self.stream_bytes());
        c.listen_port = SIM_PORT;
        c.partners = self.cfg.partners.max(1);
        if !source {
            c.max_partners = c.max_partners.max(c.partners + 3);
        }
        c.segment_duration = Duration::from_secs_f64(self.cfg.segment_s);
        // The simulated driver dials back (`nat_dial_back`) and punches (`nat_punch`).
        c.dial_back = true;
        c.hole_punch = self.cfg.punch;
        for (k, v) in &self.cfg.settings {
            // Checked when the configuration was made (`SimConfig::check_settings`).
            let _ = c.set(k, v);
        }
        c.upload_bytes_per_s = if source {
            // The source's own budget, below its link's capacity: it seeds, the swarm relays.
            up.min((self.stream_bytes() as f64 * self.cfg.source_budget) as u64)
        } else {
            up
        };
        c
    }

    fn start_node(&mut self, ix: u32) {
        let source = ix == 0;
        let cfg = self.node_config(source, self.slots[ix as usize].up);
        let id = PeerId(self.rng.next_u64());
        let seed = self.rng.next_u64();
        let mut node = Node::new(cfg, id, seed, self.now);
        if !source {
            // Joining cannot fail on a fresh peer with a bootstrap address.
            let _ = node.command(
                self.now,
                Command::Join {
                    bootstrap: vec![addr_of(0)],
                },
            );
        }
        if std::env::var("COOLSTREAM_SIM_DEBUG").is_ok_and(|v| v == "slots") {
            eprintln!("slot {ix}: up {:.1}x", self.slots[ix as usize].up_factor);
        }
        let s = &mut self.slots[ix as usize];
        s.node = Some(node);
        self.hot[ix as usize].life = Life::Alive;
        s.joined_at = self.now;
        s.uplink = Uplink::new(s.up);
        self.drain(ix);
        if !source && self.cfg.scenario == Scenario::Churn {
            let stay = self.rng.exp(self.cfg.mean_session_s);
            let crash = self.rng.chance(self.cfg.crash_fraction);
            self.push(
                self.now + Duration::from_secs_f64(stay),
                Ev::Leave { node: ix, crash },
            );
        }
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.queue.push(at, ev);
    }

    fn one_way(&self, a: u32, b: u32) -> Duration {
        self.hot[a as usize]
            .place
            .one_way(&self.hot[b as usize].place)
    }

    fn alive(&self, ix: u32) -> bool {
        self.hot
            .get(ix as usize)
            .is_some_and(|s| s.life == Life::Alive)
    }

    /// Processes the next event if it is due by `until`; false when none is.
    fn step_one(&mut self, until: Instant) -> bool {
        match self.queue.peek_time() {
            Some(at) if at <= until && at <= self.end => {}
            _ => return false,
        }
        let (at, ev) = self.queue.pop().expect("peeked");
        self.prefetch_ahead();
        debug_assert!(at >= self.now, "time went backwards");
        self.now = at;
        self.events += 1;
        let (kind, node) = ev.tag();
        self.kinds[(kind as usize).min(15)] += 1;
        if let Ev::Deliver {
            msg: Message::Ctl(c),
            ..
        } = &ev
        {
            let k = ctl_kind(c);
            self.ctl_kinds[k] += 1;
        }
        self.trace = mix(
            self.trace,
            at.as_micros() ^ (kind << 56) ^ ((node as u64) << 24),
        );
        self.step(ev);
        true
    }

    /// Loads into cache what the events a few places ahead will touch (their node, where it
    /// is, their link), in two steps: a node's tables can be found once the node is in cache.
    /// Only a hint: what runs is the same with or without it.
    fn prefetch_ahead(&self) {
        use crate::proto::prefetch::lines;
        if let Some(ev) = self.queue.peek_ahead(PREFETCH_AHEAD) {
            let (_, ix) = ev.tag();
            if let Some(s) = self.slots.get(ix as usize) {
                lines(s as *const Slot, std::mem::size_of::<Slot>());
            }
            if let Some(h) = self.hot.get(ix as usize) {
                lines(h as *const Hot, std::mem::size_of::<Hot>());
            }
            if let Some(link) = ev.link() {
                if let Some(e) = self.links.by_id.get(link.0 as usize) {
                    lines(
                        e as *const Option<SimLink>,
                        std::mem::size_of::<Option<SimLink>>(),
                    );
                }
            }
        }
        if let Some(ev) = self.queue.peek_ahead(PREFETCH_AHEAD / 2) {
            let (_, ix) = ev.tag();
            if let Some(n) = self.slots.get(ix as usize).and_then(|s| s.node.as_ref()) {
                n.prefetch_tables();
            }
        }
    }

    /// Runs to the end and summarises.
    pub fn run(mut self) -> Summary {
        let started = std::time::Instant::now();
        let mut next_report = 0.1;
        let mut next_nat_sample = Instant::ZERO;
        while self.step_one(self.end) {
            if self.nat.debug && self.now >= next_nat_sample {
                self.nat_debug_sample();
                next_nat_sample = self.now + nat::DEBUG_SAMPLE_EVERY;
            }
            if self.cfg.progress {
                let done = self.now.as_secs_f64() / self.cfg.duration_s;
                if done >= next_report {
                    eprintln!(
                        "sim: {:>3.0}% ({:.0} s simulated, {} events, {:.1} s wall)",
                        done * 100.0,
                        self.now.as_secs_f64(),
                        self.events,
                        started.elapsed().as_secs_f64()
                    );
                    next_report += 0.1;
                }
            }
        }
        self.now = self.end;
        if self.debug_misses {
            eprintln!("source control bytes by kind: {:?}", &self.src_ctl);
        }
        if self.nat.debug {
            self.nat_debug_report();
        }
        let mut summary = self.summary();
        summary.wall_s = started.elapsed().as_secs_f64();
        summary
    }

    /// Runs until `t` seconds of simulated time (for tests that look at the swarm mid-run).
    pub fn run_until(&mut self, t: f64) {
        let until = (Instant::ZERO + Duration::from_secs_f64(t)).min(self.end);
        while self.step_one(until) {}
        self.now = self.now.max(until);
    }

    /// Simulated time now, in seconds.
    pub fn now_s(&self) -> f64 {
        self.now.as_secs_f64()
    }

    /// Node `ix`'s counters while it is in the swarm (0 is the source; peers are 1..).
    pub fn node_stats(&self, ix: usize) -> Option<NodeStats> {
        self.slots.get(ix)?.node.as_ref().map(|n| n.stats())
    }

    /// Peers ever created (in the swarm or gone), the source not counted.
    pub fn peer_slots(&self) -> usize {
        self.slots.len() - 1
    }

    /// Takes peer `ix` out now: it crashes (silent) or leaves (departure messages).
    pub fn remove_peer(&mut self, ix: usize, crash: bool) {
        if ix > 0 && self.alive(ix as u32) {
            self.finish_session(ix as u32, crash);
        }
    }

    fn step(&mut self, ev: Ev) {
        if self.debug_node.is_some_and(|d| d == ev.tag().1) {
            eprintln!("{:?} {:?}", self.now, ev);
        }
        match ev {
            Ev::Deliver { to, link, mut msg } => {
                let ok = self.alive(to) && self.links.get(&link.0).is_some_and(|l| l.open_at(to));
                if ok {
                    if let Message::Segment(seg) = &mut msg {
                        let d = self.now.as_micros() as f64 - seg.origin_us as f64;
                        self.arrival.add(d / 1e6);
                        seg.payload.hops += 1;
                        self.hops[(seg.payload.hops as usize).min(31)] += 1;
                        if self.trace_seq == Some(seg.seq.0) {
                            self.trace_got.entry(to).or_insert(self.now);
                            eprintln!(
                                "TRACE got {:.3} node {} up {:.1}x hops {}",
                                self.now.as_secs_f64() - seg.origin_us as f64 / 1e6,
                                to,
                                self.slots[to as usize].up_factor,
                                seg.payload.hops
                            );
                        }
                    }
                    let seq = match &msg {
                        Message::Segment(s) => Some(s.seq),
                        Message::Ctl(_) => None,
                    };
                    self.input(to, Input::Received { link, msg });
                    if let Some(seq) = seq {
                        self.release_held(to, seq);
                    }
                }
            }
            Ev::Piece {
                to,
                link,
                segment,
                pieces,
                first,
            } => {
                let ok = self.alive(to) && self.links.get(&link.0).is_some_and(|l| l.open_at(to));
                if ok {
                    let seq = segment.seq;
                    if first {
                        self.input(to, Input::SegmentBegun { link, segment });
                    }
                    let piece = Input::PieceArrived {
                        link,
                        seq,
                        pieces_done: pieces,
                    };
                    self.input(to, piece);
                    self.release_held(to, seq);
                }
            }
            Ev::Aborted { to, link, seq } => {
                let ok = self.alive(to) && self.links.get(&link.0).is_some_and(|l| l.open_at(to));
                if ok {
                    self.input(to, Input::SegmentAborted { link, seq });
                }
            }
            Ev::LinkUp {
                to,
                link,
                remote,
                outbound,
            } => {
                let Some(l) = self.links.get(&link.0) else {
                    return;
                };
                let peer = l.other(to);
                if !l.open_at(to) || !self.alive(to) {
                    return;
                }
                if outbound && !self.alive(peer) {
                    // The host vanished during the handshake.
                    self.links.remove(&link.0);
                    self.input(to, Input::DialFailed { remote });
                    return;
                }
                self.input(
                    to,
                    Input::LinkUp {
                        link,
                        remote,
                        outbound,
                    },
                );
            }
            Ev::Proof { to, nonce } => {
                if self.alive(to) {
                    self.input(to, Input::DialBackProof { nonce });
                }
            }
            Ev::PunchExpire { from, to } => self.nat_punch_expire(from, to),
            Ev::DialBackDone {
                to,
                nonce,
                connected,
            } => {
                if self.alive(to) {
                    self.input(to, Input::DialBackDone { nonce, connected });
                }
            }
            Ev::DialFailed { to, remote } => {
                if self.debug_misses && self.alive(to) {
                    eprintln!("dialfail {}", self.debug_who(to));
                }
                if self.alive(to) {
                    self.input(to, Input::DialFailed { remote });
                }
            }
            Ev::LinkDown { to, link } => {
                let Some(l) = self.links.get_mut(&link.0) else {
                    return;
                };
                if !l.open_at(to) {
                    return;
                }
                l.close_at(to);
                let other = l.other(to);
                if !l.a_open && !l.b_open {
                    self.links.remove(&link.0);
                }
                if self.alive(to) {
                    self.slots[to as usize].uplink.cancel(self.now, link);
                    self.share_downlink(other);
                    self.arm_uplink(to);
                    self.input(to, Input::LinkDown { link });
                }
            }
            Ev::Wake { node } => {
                let alive = self.hot[node as usize].life == Life::Alive;
                let s = &mut self.slots[node as usize];
                if s.armed != Some(self.now) || !alive {
                    return;
                }
                s.armed = None;
                if let Some(n) = s.node.as_mut() {
                    n.handle_timeout(self.now);
                }
                self.drain(node);
            }
            Ev::UplinkDone { node, version } => {
                if self.slots[node as usize].uplink.version != version || !self.alive(node) {
                    return;
                }
                let mut done = std::mem::take(&mut self.flowbuf);
                let mut pieces = std::mem::take(&mut self.piecebuf);
                self.slots[node as usize]
                    .uplink
                    .take_events(self.now, &mut done, &mut pieces);
                for p in pieces.drain(..) {
                    let open = self.links.get(&p.link.0).is_some_and(|l| l.open_at(node));
                    let Message::Segment(segment) = p.msg else {
                        continue;
                    };
                    if !open {
                        continue;
                    }
                    let at = self.arrival(p.link, node, p.to, self.now, PIECE_SIZE as u64);
                    self.push(
                        at,
                        Ev::Piece {
                            to: p.to,
                            link: p.link,
                            segment,
                            pieces: p.pieces,
                            first: p.first,
                        },
                    );
                }
                self.piecebuf = pieces;
                for f in done.drain(..) {
                    self.share_downlink(f.to);
                    let open = self.links.get(&f.link.0).is_some_and(|l| l.open_at(node));
                    if !open {
                        continue;
                    }
                    let bytes = wire_len(&f.msg) as u64;
                    let at = self.arrival(f.link, node, f.to, self.now, bytes);
                    self.push(
                        at,
                        Ev::Deliver {
                            to: f.to,
                            link: f.link,
                            msg: f.msg,
                        },
                    );
                    self.input(node, Input::Sent { link: f.link });
                }
                self.flowbuf = done;
                self.arm_uplink(node);
            }
            Ev::Ingest => {
                if self.debug_node.is_some() || std::env::var("COOLSTREAM_SIM_DEBUG").is_ok() {
                    self.sample_idle();
                }
                let seq = self.next_segment;
                self.next_segment = seq.next();
                self.stream_started.get_or_insert(self.now);
                self.segments_ingested += 1;
                let seg = Segment {
                    seq,
                    origin_us: self.now.as_micros(),
                    duration_us: (self.cfg.segment_s * 1e6) as u32,
                    flags: crate::proto::wire::flags::ENTRY_POINT,
                    payload: SimPayload {
                        len: self.segment_bytes,
                        hops: 0,
                    },
                };
                self.input(0, Input::Ingest(seg));
                self.push(
                    self.now + Duration::from_secs_f64(self.cfg.segment_s),
                    Ev::Ingest,
                );
            }
            Ev::Join { node } => self.start_node(node),
            Ev::Leave { node, crash } => {
                if !self.alive(node) {
                    return;
                }
                self.finish_session(node, crash);
                // Arrivals keep the population steady.
                if self.cfg.scenario == Scenario::Churn {
                    let f =
                        draw_upload(&mut self.rng, &self.cfg.upload_mix) * self.cfg.upload_scale;
                    let ix = self.add_slot(f, false);
                    let gap = self.rng.exp(1.0);
                    self.push(
                        self.now + Duration::from_secs_f64(gap),
                        Ev::Join { node: ix },
                    );
                }
            }
        }
    }

    /// Ends node `ix`'s session: gracefully (departure messages go out) or by crashing.
    fn finish_session(&mut self, ix: u32, crash: bool) {
        if !crash {
            if let Some(n) = self.slots[ix as usize].node.as_mut() {
                let _ = n.command(self.now, Command::Leave);
            }
            self.drain(ix);
        }
        let now = self.now;
        let s = &mut self.slots[ix as usize];
        if let Some(n) = s.node.take() {
            s.final_stats = Some((n.stats(), n.segments_ahead(now)));
        }
        self.hot[ix as usize].life = if crash { Life::Crashed } else { Life::Left };
        s.left_at = Some(now);
        let receivers: Vec<u32> = s.uplink.receivers().collect();
        s.uplink.clear();
        s.armed = None;
        for r in receivers {
            self.share_downlink(r);
        }
    }

    /// Shares node `rx`'s downlink among the transfers coming to it (net::share_downlink)
    /// and re-arms the senders whose transfers' rates moved.
    fn share_downlink(&mut self, rx: u32) {
        let mut incoming = std::mem::take(&mut self.slots[rx as usize].incoming);
        let slots = &self.slots;
        incoming.retain(|&(from, link)| slots[from as usize].uplink.has_flow(link));
        if !incoming.is_empty() {
            let (mut demands, mut order, mut caps) = std::mem::take(&mut self.share_buf);
            demands.clear();
            demands.extend(
                incoming
                    .iter()
                    .map(|&(from, _)| self.slots[from as usize].uplink.capacity()),
            );
            net::share_downlink(self.hot[rx as usize].down, &demands, &mut order, &mut caps);
            for (&(from, link), &cap) in incoming.iter().zip(&caps) {
                if self.slots[from as usize]
                    .uplink
                    .set_cap(self.now, link, cap)
                {
                    self.arm_uplink(from);
                }
            }
            self.share_buf = (demands, order, caps);
        }
        self.slots[rx as usize].incoming = incoming;
    }

    /// The one-way delay from `from` to `to` over `link` (read from the link while it is
    /// in the table).
    fn link_one_way(&self, link: LinkId, from: u32, to: u32) -> Duration {
        match self.links.get(&link.0) {
            Some(l) => l.one_way,
            None => self.one_way(from, to),
        }
    }

    fn path_delay(&mut self, link: LinkId, from: u32, to: u32, bytes: u64) -> Duration {
        let one_way = self.link_one_way(link, from, to);
        one_way + loss_delay(&mut self.rng, self.cfg.loss, bytes, one_way.mul(2))
    }

    /// When a message of `bytes` from `from` to `to` on `link`, whose last byte leaves the
    /// sender at `out`, arrives: one path delay later, and not before what was sent ahead of
    /// it on the link (TCP delivers in order).
    fn arrival(&mut self, link: LinkId, from: u32, to: u32, out: Instant, bytes: u64) -> Instant {
        let at = out + self.path_delay(link, from, to, bytes);
        self.links
            .get_mut(&link.0)
            .map_or(at, |l| l.in_order(from, at))
    }

    /// Sends a control record of `bytes` from `ix` to `to` on `link`, out on the sender's
    /// uplink among its segments (net::Uplink::send_control); says when it arrives.
    fn send_record(&mut self, ix: u32, link: LinkId, to: u32, bytes: u64) -> Instant {
        self.control_bytes += bytes;
        let out = self.slots[ix as usize]
            .uplink
            .send_control(self.now, link, bytes);
        self.arrival(link, ix, to, out, bytes)
    }

    /// Node `ix` may hold more of `seq` than before (a piece checked, or all of it): its
    /// transfers of it that waited for those pieces move on.
    fn release_held(&mut self, ix: u32, seq: Seq) {
        let s = &mut self.slots[ix as usize];
        let Some(held) = s.node.as_ref().and_then(|n| n.pieces_held(seq)) else {
            return;
        };
        if s.uplink.raise_held(self.now, seq.0, held) {
            self.arm_uplink(ix);
        }
    }

    fn input(&mut self, ix: u32, input: Input<SimPayload>) {
        if let Some(n) = self.slots[ix as usize].node.as_mut() {
            n.handle_input(self.now, input);
        }
        self.drain(ix);
    }

    fn arm_uplink(&mut self, ix: u32) {
        let s = &mut self.slots[ix as usize];
        if let Some(t) = s.uplink.next_event() {
            let key = (t.max(self.now), s.uplink.version);
            if s.uplink_armed != Some(key) {
                s.uplink_armed = Some(key);
                self.push(
                    key.0,
                    Ev::UplinkDone {
                        node: ix,
                        version: key.1,
                    },
                );
            }
        }
    }

    /// Carries out everything node `ix` asked for, then re-arms its timer.
    fn drain(&mut self, ix: u32) {
        let mut outs = std::mem::take(&mut self.outbuf);
        if let Some(n) = self.slots[ix as usize].node.as_mut() {
            while let Some(o) = n.poll_output() {
                outs.push(o);
            }
        }
        let mut uplink_changed = false;
        let debug = self.debug_node == Some(ix);
        for o in outs.drain(..) {
            if debug {
                match &o {
                    Output::Send {
                        link,
                        msg: Message::Ctl(c),
                    } => {
                        eprintln!("{:?}   -> {:?} {:?}", self.now, link, c)
                    }
                    Output::Send {
                        link,
                        msg: Message::Segment(sg),
                    } => {
                        eprintln!("{:?}   -> {:?} segment {:?}", self.now, link, sg.seq)
                    }
                    Output::Missed { seq, .. } => eprintln!("{:?}   MISSED {:?}", self.now, seq),
                    Output::Late { seq, pause, cause } => {
                        eprintln!(
                            "{:?}   LATE {:?} pause {:?} {:?}",
                            self.now, seq, pause, cause
                        )
                    }
                    Output::Play { segment, deadline } => {
                        eprintln!("{:?}   play {:?} due {:?}", self.now, segment.seq, deadline)
                    }
                    other => eprintln!("{:?}   {:?}", self.now, other),
                }
            }
            match o {
                Output::Send { link, msg } => {
                    let Some(l) = self.links.get(&link.0) else {
                        continue;
                    };
                    if !l.open_at(ix) {
                        continue;
                    }
                    let to = l.other(ix);
                    let bytes = wire_len(&msg) as u64;
                    self.slots[ix as usize].uploaded_bytes += bytes;
                    match &msg {
                        Message::Segment(s) => {
                            let payload = s.payload.len as u64;
                            self.payload_bytes += payload;
                            self.control_bytes += bytes - payload;
                            // Its share of the receiver's downlink is set just below; alone,
                            // it is the downlink or this uplink, whichever is less.
                            let cap = self.hot[to as usize].down.min(self.slots[ix as usize].up);
                            let prio = s.origin_us;
                            if self.trace_seq == Some(s.seq.0) {
                                let had = self
                                    .trace_got
                                    .get(&ix)
                                    .map_or(0.0, |t| self.now.as_secs_f64() - t.as_secs_f64());
                                eprintln!(
                                    "TRACE send {:.3} {} -> {} ({:.1}x, had it {:.3} s, busy flows {})",
                                    self.now.as_secs_f64() - s.origin_us as f64 / 1e6,
                                    ix,
                                    to,
                                    self.slots[ix as usize].up_factor,
                                    had,
                                    self.slots[ix as usize].uplink.flow_count()
                                );
                            }
                            // It goes no further than the pieces the sender holds (all of
                            // them unless the segment is still arriving here).
                            let held = self.slots[ix as usize]
                                .node
                                .as_ref()
                                .and_then(|n| n.pieces_held(s.seq))
                                .unwrap_or(0);
                            let shape = Shape {
                                head: bytes - payload,
                                media: payload,
                                held,
                                key: s.seq.0,
                            };
                            self.slots[ix as usize]
                                .uplink
                                .start_shaped(self.now, link, to, shape, cap, prio, msg);
                            let incoming = &mut self.slots[to as usize].incoming;
                            if !incoming.contains(&(ix, link)) {
                                incoming.push((ix, link));
                            }
                            self.share_downlink(to);
                            uplink_changed = true;
                        }
                        Message::Ctl(c) => {
                            if ix == 0 && self.debug_misses {
                                self.src_ctl[ctl_kind(c)] += bytes;
                            }
                            let at = self.send_record(ix, link, to, bytes);
                            self.push(at, Ev::Deliver { to, link, msg });
                        }
                    }
                }
                Output::Dial { remote } => {
                    if self.debug_misses && index_of(remote) == Some(0) {
                        eprintln!("dialsrc {}", self.debug_who(ix));
                    }
                    self.dial(ix, remote)
                }
                Output::Close { link } => {
                    let Some(l) = self.links.get_mut(&link.0) else {
                        continue;
                    };
                    if !l.open_at(ix) {
                        continue;
                    }
                    l.close_at(ix);
                    let (other, other_open) = (l.other(ix), l.open_at(l.other(ix)));
                    let other_alive = self.alive(other);
                    if !other_open || !other_alive {
                        self.links.remove(&link.0);
                    } else {
                        let d = self.link_one_way(link, ix, other) + Duration::from_micros(1);
                        let now = self.now;
                        let at = self
                            .links
                            .get_mut(&link.0)
                            .map_or(now + d, |l| l.in_order(ix, now + d));
                        self.push(at, Ev::LinkDown { to: other, link });
                    }
                    self.slots[ix as usize].uplink.cancel(self.now, link);
                    self.share_downlink(other);
                    uplink_changed = true;
                }
                Output::Abort { link, seq } => {
                    let Some(l) = self.links.get(&link.0) else {
                        continue;
                    };
                    let to = l.other(ix);
                    if !l.open_at(ix) {
                        continue;
                    }
                    if self.slots[ix as usize]
                        .uplink
                        .cancel_key(self.now, link, seq.0)
                    {
                        self.share_downlink(to);
                        uplink_changed = true;
                        // The abort record, behind what was sent of the segment.
                        let at = self.send_record(ix, link, to, FRAME_PREFIX_LEN as u64);
                        self.push(at, Ev::Aborted { to, link, seq });
                    }
                }
                Output::Play { segment, deadline } => {
                    let lag = deadline.as_micros() as f64 - segment.origin_us as f64;
                    self.lag.add(lag / 1e6);
                    self.slots[ix as usize]
                        .freezes
                        .play(deadline.as_micros(), segment.duration_us as u64);
                }
                Output::Missed { seq, .. } => {
                    if self.nat.debug {
                        self.nat_debug_miss(ix, seq.0, None);
                    }
                    if self.debug_misses {
                        eprintln!("miss {} seq {}", self.debug_who(ix), seq.0);
                    }
                }
                Output::Late { seq, cause, .. } => {
                    if self.nat.debug {
                        self.nat_debug_miss(ix, seq.0, Some(&cause));
                    }
                    if self.debug_misses {
                        eprintln!("late {} seq {} {cause:?}", self.debug_who(ix), seq.0);
                    }
                }
                Output::DialBack { remote, nonce } => self.nat_dial_back(ix, remote, nonce),
                Output::Punch { remote, at } => self.nat_punch(ix, remote, at),
            }
        }
        self.outbuf = outs;
        if uplink_changed {
            self.arm_uplink(ix);
        }
        // Re-arm the node's timer if it moved earlier (a later one is found when it fires).
        let s = &mut self.slots[ix as usize];
        if let Some(n) = s.node.as_ref() {
            if let Some(t) = n.poll_timeout() {
                let t = t.max(self.now);
                if s.armed.is_none_or(|a| t < a) {
                    s.armed = Some(t);
                    self.push(t, Ev::Wake { node: ix });
                }
            }
        }
    }

    fn dial(&mut self, from: u32, remote: PeerAddr) {
        let target = index_of(remote).filter(|&t| (t as usize) < self.slots.len() && t != from);
        let Some(to) = target else {
            self.push(self.now, Ev::DialFailed { to: from, remote });
            return;
        };
        let rtt_one_way = self.one_way(from, to);
        let rtt = rtt_one_way.mul(2);
        if !self.nat.dialable(to) {
            // The router drops the SYN: the connect times out, whoever is behind it.
            self.push(
                self.now + CONNECT_TIMEOUT,
                Ev::DialFailed { to: from, remote },
            );
            return;
        }
        match self.hot[to as usize].life {
            Life::Alive => {
                let link = LinkId(self.next_link);
                self.next_link += 1;
                self.links.insert(
                    link.0,
                    SimLink {
                        a: from,
                        b: to,
                        a_open: true,
                        b_open: true,
                        last_to_b: Instant::ZERO,
                        last_to_a: Instant::ZERO,
                        one_way: rtt_one_way,
                    },
                );
                // The acceptor learns of the connection just before the dialer's first bytes
                // arrive (same instant, queued first).
                let one_way = self.one_way(from, to);
                self.push(
                    self.now + rtt + one_way,
                    Ev::LinkUp {
                        to,
                        link,
                        remote: addr_of(from),
                        outbound: false,
                    },
                );
                self.push(
                    self.now + rtt,
                    Ev::LinkUp {
                        to: from,
                        link,
                        remote,
                        outbound: true,
                    },
                );
            }
            // A process that exited on a live host: refused after a round trip.
            Life::Left | Life::Waiting => {
                self.push(self.now + rtt, Ev::DialFailed { to: from, remote })
            }
            // A host that is gone: the connect times out.
            Life::Crashed => self.push(
                self.now + CONNECT_TIMEOUT,
                Ev::DialFailed { to: from, remote },
            ),
        }
    }

    /// The summary of the run so far (the `sim --json` fields of docs/INTERFACE.md).
    pub fn summary(&mut self) -> Summary {
        let now = self.now;
        let mut cis = Vec::new();
        let mut startups = Vec::new();
        let mut late_startups = Vec::new();
        let mut late_cis: Vec<f64> = Vec::new();
        let mut played = 0u64;
        let mut missed = 0u64;
        let mut never_started = 0usize;
        let mut sessions = 0usize;
        let mut frozen_us = 0u64;
        let mut watched_us = 0u64;
        let mut longest_freezes = Vec::new();
        let mut delivered_bytes = 0f64;
        let mut peer_seconds = 0f64;
        let seg_bytes = self.segment_bytes as f64;
        for (ix, s) in self.slots.iter().enumerate().skip(1) {
            let (stats, ahead) = match (&s.node, &s.final_stats) {
                (Some(n), _) => (n.stats(), n.segments_ahead(now)),
                (None, Some((st, a))) => (st.clone(), *a),
                (None, None) => continue,
            };
            sessions += 1;
            let end = s.left_at.unwrap_or(now);
            let lifetime = end.saturating_since(s.joined_at).as_secs_f64();
            peer_seconds += lifetime;
            let due = stats.played.saturating_sub(ahead);
            played += due;
            missed += stats.missed;
            delivered_bytes += due as f64 * seg_bytes;
            if let (Some(t), true) = (stats.first_play_at, s.joined_at.as_secs_f64() > 30.0) {
                let st = t.saturating_since(s.joined_at).as_secs_f64();
                if st > 6.0 && std::env::var("COOLSTREAM_SIM_DEBUG").is_ok_and(|v| v == "stats") {
                    eprintln!(
                        "slow start: slot {ix} up {:.1}x joined {:.1} startup {st:.2}",
                        s.up_factor,
                        s.joined_at.as_secs_f64()
                    );
                }
                late_startups.push(st);
            }
            if let Some(t) = stats.first_play_at {
                let (total, longest) = s.freezes.until(end.as_micros());
                frozen_us += total;
                watched_us += end.saturating_since(t).as_micros();
                longest_freezes.push(longest as f64 / 1e6);
            }
            match stats.first_play_at {
                Some(t) => startups.push(t.saturating_since(s.joined_at).as_secs_f64()),
                None if lifetime >= 10.0 => {
                    never_started += 1;
                    startups.push(lifetime);
                }
                None => {}
            }
            if due + stats.missed >= MIN_DEADLINES {
                let ci = due as f64 / (due + stats.missed) as f64;
                if ci < 0.9 && std::env::var("COOLSTREAM_SIM_DEBUG").is_ok_and(|v| v == "lowci") {
                    eprintln!(
                        "low CI {ci:.3}: slot {ix} up {:.1}x joined {:.0} lived {lifetime:.0} played {due} missed {} stalls {} ({:.0} s)",
                        s.up_factor,
                        s.joined_at.as_secs_f64(),
                        stats.missed,
                        stats.stalls,
                        stats.stall_us as f64 / 1e6
                    );
                }
                cis.push(ci);
                if s.joined_at.as_secs_f64() > 100.0 {
                    late_cis.push(ci);
                }
            }
        }
        cis.sort_by(f64::total_cmp);
        startups.sort_by(f64::total_cmp);
        longest_freezes.sort_by(f64::total_cmp);
        if std::env::var("COOLSTREAM_SIM_DEBUG").is_ok_and(|v| v == "stats") {
            self.debug_stats();
            late_startups.sort_by(f64::total_cmp);
            late_cis.sort_by(f64::total_cmp);
            eprintln!(
                "continuity of sessions joining after 100 s: n {} mean {:.4} p5 {:.4}",
                late_cis.len(),
                late_cis.iter().sum::<f64>() / late_cis.len().max(1) as f64,
                quantile(&late_cis, 0.05)
            );
            eprintln!(
                "startup of sessions joining after 30 s: n {} p50 {:.2} p95 {:.2}",
                late_startups.len(),
                quantile(&late_startups, 0.5),
                quantile(&late_startups, 0.95)
            );
        }
        let stream = self.stream_bytes() as f64;
        let streamed_s = self
            .stream_started
            .map_or(0.0, |t| now.saturating_since(t).as_secs_f64());
        let source_up = self.slots[0].uploaded_bytes as f64;
        let mean_up = mean_upload(&self.cfg.upload_mix) * self.cfg.upload_scale;
        // r_max: the rate the upload capacity could sustain for everyone, at most the stream.
        let n = self.cfg.peers.max(1) as f64;
        let r_max = stream.min((SOURCE_UPLOAD_FACTOR * stream + n * mean_up * stream) / n);
        let delivered_rate = if peer_seconds > 0.0 {
            delivered_bytes / peer_seconds
        } else {
            0.0
        };
        // Live peers: (found reachable, found out at all, all).
        let reach_known = self.slots[1..]
            .iter()
            .filter_map(|s| s.node.as_ref())
            .map(|n| n.reachability().reachable)
            .fold((0usize, 0usize, 0usize), |(r, k, n), x| {
                (
                    r + (x == Some(true)) as usize,
                    k + x.is_some() as usize,
                    n + 1,
                )
            });
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        Summary {
            peers: self.cfg.peers,
            seed: self.cfg.seed,
            duration_s: self.cfg.duration_s,
            scenario: self.cfg.scenario.name().to_string(),
            partners: self.cfg.partners,
            rate_kbps: self.cfg.rate_kbps,
            upload_scale: self.cfg.upload_scale,
            mean_upload_ratio: mean_up,
            loss: self.cfg.loss,
            continuity_mean: mean(&cis),
            continuity_p5: quantile(&cis, 0.05),
            continuity_min: cis.first().copied().unwrap_or(0.0),
            continuity_global: if played + missed > 0 {
                played as f64 / (played + missed) as f64
            } else {
                0.0
            },
            stall_ratio: if watched_us > 0 {
                frozen_us as f64 / watched_us as f64
            } else {
                0.0
            },
            stall_p95_s: quantile(&longest_freezes, 0.95),
            peers_measured: cis.len(),
            sessions,
            never_started,
            startup_p50_s: quantile(&startups, 0.5),
            startup_p95_s: quantile(&startups, 0.95),
            lag_p50_s: self.lag.quantile(0.5),
            lag_p95_s: self.lag.quantile(0.95),
            startup_cdf_s: metrics::cdf_points(&startups),
            lag_cdf_s: self.lag.cdf_points(),
            continuity_cdf: metrics::cdf_points(&cis),
            overhead: if self.payload_bytes > 0 {
                self.control_bytes as f64 / self.payload_bytes as f64
            } else {
                0.0
            },
            source_upload_ratio: if streamed_s > 0.0 {
                source_up / (stream * streamed_s)
            } else {
                0.0
            },
            rmax_fraction: if r_max > 0.0 {
                delivered_rate / r_max
            } else {
                0.0
            },
            segments_played: played,
            segments_missed: missed,
            payload_bytes: self.payload_bytes,
            control_bytes: self.control_bytes,
            events: self.events,
            wall_s: 0.0,
            trace_hash: format!("{:016x}", self.trace),
            nat_fraction: self.cfg.nat_fraction,
            punch: self.cfg.punch,
            reachable_fraction: reach_known.0 as f64 / reach_known.2.max(1) as f64,
            reach_known_fraction: reach_known.1 as f64 / reach_known.2.max(1) as f64,
            punches: self.nat.punches,
            punch_success: self.nat.punches_linked as f64 / self.nat.punches.max(1) as f64,
        }
    }

    /// Diagnostic: how often an idle uplink could have served a partner.
    fn sample_idle(&mut self) {
        for ix in 1..self.slots.len() {
            let s = &self.slots[ix];
            let Some(n) = &s.node else { continue };
            let busy = s.uplink.busy() || n.uploading();
            let useful = n.useful_to_partners();
            let k = (busy as usize) * 2 + useful as usize;
            self.idle_samples[k] += 1;
        }
    }

    /// A node as the `misses` trace names it: now, its index, how long it has been in the
    /// swarm and playing (-1: not yet), its upload class and partner count.
    fn debug_who(&self, ix: u32) -> String {
        let s = &self.slots[ix as usize];
        let stats = s.node.as_ref().map(|n| n.stats());
        let playing = stats
            .as_ref()
            .and_then(|st| st.first_play_at)
            .map_or(-1.0, |t| self.now.saturating_since(t).as_secs_f64());
        format!(
            "{:.1} node {ix} age {:.1} playing {playing:.1} up {:.1} partners {}",
            self.now.as_secs_f64(),
            self.now.saturating_since(s.joined_at).as_secs_f64(),
            s.up_factor,
            stats.map_or(0, |st| st.partners)
        )
    }

    fn debug_stats(&self) {
        eprintln!("events by kind (1 deliver, 2 linkup, 3 dialfail, 4 linkdown, 5 wake, 6 uplink, 7 ingest, 8 join, 9 leave, 11 proof, 12 punch expiry, 13 dial-back done, 14 piece, 15 abort): {:?}", &self.kinds);
        eprintln!("control messages by kind: {:?}", &self.ctl_kinds);
        eprintln!(
            "uplink samples: idle&useless {} idle&USEFUL {} busy&useless {} busy&useful {}",
            self.idle_samples[0], self.idle_samples[1], self.idle_samples[2], self.idle_samples[3]
        );
        let mut t = NodeStats::default();
        let mut n = 0u64;
        let mut partner_hist = [0u32; 16];
        for s in self.slots.iter().skip(1) {
            let Some(node) = &s.node else { continue };
            let st = node.stats();
            n += 1;
            partner_hist[st.partners.min(15)] += 1;
            t.played += st.played;
            t.missed += st.missed;
            t.segments_received += st.segments_received;
            t.duplicates += st.duplicates;
            t.uploads += st.uploads;
            t.requests_sent += st.requests_sent;
            t.busy_received += st.busy_received;
            t.busy_sent += st.busy_sent;
            t.request_timeouts += st.request_timeouts;
            t.links_refused += st.links_refused;
            t.members += st.members;
            t.missed_in_flight += st.missed_in_flight;
            t.missed_unrequested += st.missed_unrequested;
            t.stalls += st.stalls;
            t.stall_us += st.stall_us;
            for r in 0..7 {
                t.busy_reasons[r] += st.busy_reasons[r];
            }
            t.sched_no_slot += st.sched_no_slot;
            t.sched_too_late += st.sched_too_late;
            t.sched_budget_spent += st.sched_budget_spent;
            t.uploads_partial += st.uploads_partial;
            t.aborts_sent += st.aborts_sent;
            t.aborts_received += st.aborts_received;
        }
        eprintln!("live peers {n}; partners histogram {partner_hist:?}");
        for class in [0.5, 1.0, 2.0, 4.0] {
            let (mut p, mut m, mut k, mut st, mut up, mut cap) =
                (0u64, 0u64, 0u64, 0u64, 0u64, 0f64);
            let (mut par, mut ch) = (0u64, 0u64);
            for s in self.slots.iter().skip(1) {
                let Some(node) = &s.node else { continue };
                if (s.up_factor / self.cfg.upload_scale - class).abs() > 1e-6 {
                    continue;
                }
                let st2 = node.stats();
                let (a, b) = node.push_state();
                par += a as u64;
                ch += b as u64;
                p += st2.played;
                m += st2.missed;
                up += st2.uploads;
                cap += s.up_factor * self.now.saturating_since(s.joined_at).as_secs_f64()
                    / self.cfg.segment_s;
                st += st2.stalls;
                k += 1;
            }
            eprintln!(
                "class {class}x: {k} peers, CI {:.4}, stalls {st}, upload use {:.3}, parents {:.2}, children {:.2}",
                p as f64 / (p + m).max(1) as f64,
                up as f64 / cap.max(1.0),
                par as f64 / k.max(1) as f64,
                ch as f64 / k.max(1) as f64
            );
        }
        eprintln!("totals: {t:?}");
        eprintln!("hops: {:?}", &self.hops[..20]);
        eprintln!(
            "arrival after ingest p10/50/90/99: {:.2}/{:.2}/{:.2}/{:.2} s",
            self.arrival.quantile(0.1),
            self.arrival.quantile(0.5),
            self.arrival.quantile(0.9),
            self.arrival.quantile(0.99)
        );
        if let Some(src) = &self.slots[0].node {
            eprintln!("source: {:?}", src.stats());
        }
    }

    /// Checks the caps and symmetry every node must hold; returns what is wrong.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_id: HashMap<PeerId, u32, IdBuild> = HashMap::default();
        for (ix, s) in self.slots.iter().enumerate() {
            if let Some(n) = &s.node {
                by_id.insert(n.id(), ix as u32);
            }
        }
        let mut asymmetric = 0usize;
        let mut relations = 0usize;
        for s in &self.slots {
            let Some(n) = &s.node else { continue };
            let c = n.config();
            let partners: Vec<PeerId> = n.partner_ids().collect();
            if partners.len() > c.partner_cap() {
                return Err(format!(
                    "{:?} has {} partners > {}",
                    n.id(),
                    partners.len(),
                    c.partner_cap()
                ));
            }
            let (req, up, links) = n.queue_lengths();
            if req > c.max_requests || up > c.upload_queue_capacity || links > c.max_links {
                return Err(format!(
                    "{:?} over a cap: requests {req}, uploads {up}, links {links}",
                    n.id()
                ));
            }
            for p in partners {
                // A partner that crashed is noticed by heartbeat timeout; until then the
                // relation is one-sided by nature, so only live pairs count.
                let Some(m) = by_id
                    .get(&p)
                    .and_then(|&j| self.slots[j as usize].node.as_ref())
                else {
                    continue;
                };
                relations += 1;
                let back = m.partner_ids().any(|q| q == n.id());
                if !back {
                    asymmetric += 1;
                }
            }
        }
        // Partnerships being set up or torn down are one-sided for a latency: allow a few.
        if relations > 0 && asymmetric * 20 > relations {
            return Err(format!(
                "{asymmetric} of {relations} partnerships are one-sided"
            ));
        }
        Ok(())
    }
}

/// A small number per control message kind (diagnostics).
fn ctl_kind(c: &crate::proto::wire::Control) -> usize {
    use crate::proto::wire::Control as C;
    match c {
        C::Hello(_) => 0,
        C::Bye(_) => 1,
        C::Join => 2,
        C::Redirect { .. } => 3,
        C::MembersRequest => 4,
        C::Members(_) => 5,
        C::Depart { .. } => 6,
        C::PartnerRequest { .. } => 7,
        C::PartnerAccept => 8,
        C::PartnerReject(_) => 9,
        C::BufferMap { .. } => 10,
        C::Have { .. } => 11,
        C::Subscribe { .. } => 12,
        C::SubscribeReply { .. } => 13,
        C::Unsubscribe { .. } => 14,
        C::Offer { .. } => 15,
        C::Decline { .. } => 16,
        C::Request { .. } => 17,
        C::Cancel { .. } => 18,
        C::Busy { .. } => 19,
        C::KeepAlive => 20,
        C::DialBackRequest { .. } => 21,
        C::DialBackAnswer { .. } => 22,
        C::DialBackProof { .. } => 23,
        C::IntroRequest => 24,
        C::Introduce { .. } => 25,
        C::DialBackRequestV6 { .. } => 26,
    }
}

fn mix(h: u64, x: u64) -> u64 {
    let mut z = (h ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z ^= z >> 29;
    z.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}
