//! The actor: the one task that owns a [`Node`] and moves everything between it and the world.
//!
//! Its loop is `select!{ biased; shutdown, link events, ingest, the core's timer, stats tick }`,
//! then the matching `handle_*` with the monotonic clock's `now`, then a drain of
//! `poll_output` (inputs the drain itself produces, such as a dial refused for want of a
//! permit, are fed back before the next wait), then `poll_timeout` is read again. It never
//! awaits a peer: sends go to link writers with `try_send`, dials and accepts run in their own
//! tasks and report back on the event queue.

use super::clock::{wall_us, Clock};
use super::guard::{Admitted, Guard, Handshake};
use super::keys::{sha256, ChannelKey, Verifier};
use super::link::{self, to_peer_addr, to_socket_addr, Counters, LinkError};
use super::reach;
use super::stats::{write_json, Diagnostics, NodeReport};
use super::{LinkEvent, NodeOptions, DIAL_TIMEOUT, EVENT_QUEUE, MAX_DIAL_BACKS, MAX_LINKS};
use crate::media::segmenter::Cut;
use crate::output::{Feed, FeedItem};
use crate::proto::reach::ReachVia;
use crate::proto::wire::{flags, SharedBody};
use crate::proto::{Command, Input, LateCause, LinkId, Node, Output, PeerId, Role, Seq};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

/// A closed link's writer may flush what was queued for this long, then it is cut.
const CLOSE_FLUSH: Duration = Duration::from_secs(3);
/// At shutdown, departures get this long to leave.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Stats are refreshed this often, and written to `--stats-json` every other time.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Uploads aborted by the core remembered until their writer reports them: a node has at
/// most a few uploads of segments in progress at a time (`proto::inflight`).
const ABORTS_REMEMBERED: usize = 64;

struct LinkHandle {
    tx: mpsc::Sender<crate::proto::Message<SharedBody>>,
    /// The other end's address (banned at the door if it pollutes).
    ip: std::net::IpAddr,
    /// Opened when we ask this peer for segments (see [`link::FrameGate`]).
    gate: Arc<link::FrameGate>,
    reader: AbortHandle,
    writer: JoinHandle<()>,
}

pub(super) struct Actor {
    node: Node<SharedBody>,
    role: Role,
    clock: Clock,
    links: HashMap<LinkId, LinkHandle>,
    /// Writers of closed links still flushing, with when to give up on each.
    closing: Vec<(JoinHandle<()>, tokio::time::Instant)>,
    next_link: u64,
    events_tx: mpsc::Sender<LinkEvent>,
    events_rx: mpsc::Receiver<LinkEvent>,
    permits: Arc<Semaphore>,
    body_budget: Arc<Semaphore>,
    verifier: Verifier,
    counters: Arc<Counters>,
    upload_bytes_per_s: u64,
    deferred: VecDeque<Input<SharedBody>>,
    /// Uploads the core aborted (`Output::Abort`), whose writer's end is not news to it: the
    /// writer sends the abort record when the segment's body is aborted, and reports it.
    /// At most [`ABORTS_REMEMBERED`], the oldest forgotten first.
    aborted_uploads: VecDeque<(LinkId, crate::proto::Seq)>,
    /// Segments arriving in pieces, completed when one of them comes whole on any link.
    arriving: link::Arriving,
    feed: Option<Arc<Feed>>,
    key: Option<ChannelKey>,
    next_seq: Seq,
    ingested: u64,
    segment_log: Option<std::fs::File>,
    /// The latest segment handed to the player: its playout deadline and the source's ingest
    /// time (µs since the epoch); with `edge`, the lag.
    last_play: Option<(crate::proto::Instant, u64)>,
    /// The live edge as this peer knows it: the newest segment received (by ingest time), and
    /// when it arrived here (wall µs). Only verified segments count.
    edge: Option<(u64, u64)>,
    /// The most segments reported played so far.
    played_high: std::sync::atomic::AtomicU64,
    name: String,
    /// Whether `name` is still to be learnt from the stream (the SDT of each played segment).
    learn_name: bool,
    stats_json: Option<std::path::PathBuf>,
    report: Option<watch::Sender<NodeReport>>,
    started: std::time::Instant,
    /// Source only: where to listen once the pre-roll is cut.
    listen_later: Option<std::net::SocketAddr>,
    acceptor: Option<JoinHandle<()>>,
    /// A failure that ends the node (the deferred listen could not bind).
    fatal: Option<super::DaemonError>,
    guard: Guard,
    play_log: Option<std::fs::File>,
    pollute: bool,
    /// The box daemon's warm view of this channel, shown the membership records we receive.
    warm: Option<super::warm::SharedView>,
    outputs: Option<super::stats::OutputsFn>,
    /// The bootstrap addresses joined through, and failed dials to each since it last
    /// answered: the first failure, and then every power of two, is a warning.
    bootstrap: HashMap<std::net::SocketAddr, u32>,
    /// Why this node has no partners, when a dial to a bootstrap said so (stats: `problem`).
    problem: Option<String>,
    /// Media bytes and microseconds of the segments played: the stream's real rate.
    played_bytes: u64,
    played_us: u64,
    /// Set once the upload cap was found below the stream's rate (stats: `upload_warning`).
    upload_warning: Option<String>,
    /// When a segment late for want of any holder was last a warning.
    unheld_warned: Option<std::time::Instant>,
    /// The port mapping of our listener, when one is kept.
    nat: Option<watch::Receiver<crate::nat::Status>>,
    /// Whether the mapping's status can still change (its task runs).
    nat_live: bool,
    /// The external address last told to the core (`Input::Reachability`).
    nat_told: Option<Option<std::net::SocketAddr>>,
    /// Dial-backs in flight for peers that asked, at most [`MAX_DIAL_BACKS`].
    dial_backs: Arc<Semaphore>,
    /// Hole punches this driver tried, and those that connected.
    punched: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

/// Segments played before the stream's rate is judged against the upload cap.
const RATE_SEGMENTS_US: u64 = 3_000_000;
/// A segment late because no partner holds it is a warning at most this often (info else).
const UNHELD_WARN_EVERY: Duration = Duration::from_secs(30);

/// Where the actor takes connections from.
pub(super) enum Listen {
    Now(TcpListener),
    /// Bind here once the source has cut [`super::SOURCE_PREROLL`] segments.
    AfterPreroll(std::net::SocketAddr),
}

impl Actor {
    pub(super) fn new(opts: &mut NodeOptions, node: Node<SharedBody>) -> Self {
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        // Sequence numbers continue roughly where a restarted source left off: seconds since
        // the epoch, so a new run does not reuse numbers peers still hold.
        let next_seq = Seq((wall_us() / 1_000_000) as u32);
        Actor {
            role: opts.role,
            clock: Clock::new(),
            links: HashMap::new(),
            closing: Vec::new(),
            next_link: 1,
            events_tx,
            events_rx,
            permits: Arc::new(Semaphore::new(MAX_LINKS)),
            body_budget: opts
                .body_budget
                .clone()
                .unwrap_or_else(|| Arc::new(Semaphore::new(link::BODY_BUDGET_KIB))),
            verifier: Verifier::new(opts.channel),
            counters: Arc::new(Counters::default()),
            upload_bytes_per_s: opts.upload_kbps * 1000 / 8,
            deferred: VecDeque::new(),
            aborted_uploads: VecDeque::new(),
            arriving: link::Arriving::default(),
            feed: opts.feed.clone(),
            key: opts.key.take(),
            next_seq,
            ingested: 0,
            segment_log: opts.segment_log.take(),
            last_play: None,
            edge: None,
            played_high: std::sync::atomic::AtomicU64::new(0),
            name: opts.name.clone(),
            learn_name: opts.learn_name,
            stats_json: opts.stats_json.clone(),
            report: opts.report.take(),
            started: std::time::Instant::now(),
            listen_later: None,
            acceptor: None,
            fatal: None,
            guard: Guard::default(),
            play_log: opts.play_log.take(),
            pollute: opts.pollute,
            warm: opts.warm.clone(),
            outputs: opts.outputs.take(),
            bootstrap: HashMap::new(),
            problem: None,
            played_bytes: 0,
            played_us: 0,
            upload_warning: None,
            unheld_warned: None,
            nat_live: opts.nat.is_some(),
            nat: opts.nat.take(),
            nat_told: None,
            dial_backs: Arc::new(Semaphore::new(MAX_DIAL_BACKS)),
            punched: Arc::default(),
            node,
        }
    }

    pub(super) fn node_id(&self) -> PeerId {
        self.node.id()
    }

    pub(super) fn join(&mut self, bootstrap: &[std::net::SocketAddr]) {
        let now = self.clock.now();
        self.bootstrap = bootstrap.iter().map(|a| (*a, 0)).collect();
        let bootstrap = bootstrap.iter().map(|a| to_peer_addr(*a)).collect();
        if let Err(e) = self.node.command(now, Command::Join { bootstrap }) {
            log::error!("cannot join: {e:?}");
        }
        self.drain();
    }

    /// Runs until `shutdown` resolves, then leaves the swarm gracefully.
    pub(super) async fn run(
        mut self,
        listen: Listen,
        mut ingest: Option<mpsc::Receiver<Cut>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<NodeReport, super::DaemonError> {
        let listen_ip = match &listen {
            Listen::Now(l) => l.local_addr().ok().map(|a| a.ip()),
            Listen::AfterPreroll(a) => Some(a.ip()),
        };
        self.tell_reachability(listen_ip);
        match listen {
            Listen::Now(l) => self.start_accepting(l),
            Listen::AfterPreroll(a) => self.listen_later = Some(a),
        }
        let mut stats_tick = tokio::time::interval(STATS_EVERY);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        tokio::pin!(shutdown);
        loop {
            let deadline = self.node.poll_timeout();
            let sleep_to = deadline.map(|t| self.clock.to_tokio(t));
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                ev = self.events_rx.recv() => {
                    // The actor holds a sender itself, so the queue never closes.
                    if let Some(ev) = ev {
                        self.on_event(ev);
                    }
                }
                cut = recv_opt(&mut ingest) => match cut {
                    Some(cut) => self.on_cut(cut),
                    None => {
                        log::warn!("the input ended; the channel goes on without new segments");
                        ingest = None;
                    }
                },
                _ = sleep_opt(sleep_to) => {
                    self.node.handle_timeout(self.clock.now());
                }
                _ = stats_tick.tick() => {
                    ticks += 1;
                    self.housekeeping(ticks % 2 == 0);
                }
                changed = nat_changed(&mut self.nat, self.nat_live) => {
                    self.nat_live = changed;
                    self.tell_mapping();
                }
            }
            // A busy event queue must not starve the core's timers.
            if let Some(t) = self.node.poll_timeout() {
                let now = self.clock.now();
                if t <= now {
                    self.node.handle_timeout(now);
                }
            }
            self.drain();
            if self.fatal.is_some() {
                break;
            }
        }
        if let Some(a) = self.acceptor.take() {
            a.abort();
        }
        let fatal = self.fatal.take();
        let report = self.leave().await;
        match fatal {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// What the driver knows of this node's reachability, told to the core at start: a source
    /// is dialled by definition (peers join through it); a dual-stack or IPv6 listener's
    /// global IPv6 address, when the box has one; the port mapping, if one is made already.
    fn tell_reachability(&mut self, listen_ip: Option<std::net::IpAddr>) {
        let now = self.clock.now();
        if self.role == Role::Source {
            self.node.handle_input(
                now,
                Input::Reachability {
                    reachable: Some(true),
                    external: None,
                    v6: None,
                    via: ReachVia::Config,
                },
            );
        }
        let v6 = match listen_ip {
            Some(std::net::IpAddr::V6(ip)) if ip.is_unspecified() => reach::global_ipv6(),
            Some(std::net::IpAddr::V6(ip)) if (ip.segments()[0] & 0xe000) == 0x2000 => Some(ip),
            _ => None,
        };
        if let Some(ip) = v6 {
            let port = self.node.config().listen_port;
            log::info!("IPv6: [{ip}]:{port}, gossiped once a partner has dialled it back");
            self.node.handle_input(
                now,
                Input::Reachability {
                    reachable: None,
                    external: None,
                    v6: Some(crate::proto::PeerAddr::V6(ip.octets(), port)),
                    via: ReachVia::Config,
                },
            );
        }
        self.tell_mapping();
        self.drain();
    }

    /// Tells the core what the port mapping says now, when it changed: a mapping makes us
    /// dialable at the router's address; a lost one leaves it to a dial-back.
    fn tell_mapping(&mut self) {
        let Some(rx) = self.nat.as_mut() else {
            return;
        };
        let external = rx.borrow_and_update().external;
        if self.nat_told == Some(external) {
            return;
        }
        self.nat_told = Some(external);
        if let Some(e) = external {
            log::info!("port mapping: peers dial this node at {e}");
        }
        self.node.handle_input(
            self.clock.now(),
            Input::Reachability {
                reachable: external.map(|_| true),
                external: external.map(to_peer_addr),
                v6: None,
                via: ReachVia::PortMapping,
            },
        );
    }

    fn start_accepting(&mut self, listener: TcpListener) {
        self.acceptor = Some(tokio::spawn(accept_loop(
            listener,
            self.permits.clone(),
            self.guard.clone(),
            self.events_tx.clone(),
        )));
    }

    async fn leave(mut self) -> NodeReport {
        let now = self.clock.now();
        // Partners as they were, for the final report (leaving drops them all).
        let partners = self.node.stats().partners;
        let _ = self.node.command(now, Command::Leave);
        self.drain();
        // Whatever the node did not close itself (links it never heard of), close now.
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            self.close_link(id);
        }
        let until = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
        for (w, _) in self.closing.drain(..) {
            let abort = w.abort_handle();
            if tokio::time::timeout_at(until, w).await.is_err() {
                abort.abort();
            }
        }
        let mut report = self.report();
        report.partners = partners;
        self.publish(&report, true);
        report
    }

    fn on_event(&mut self, ev: LinkEvent) {
        let now = self.clock.now();
        match ev {
            LinkEvent::Accepted {
                stream,
                addr,
                permit,
                admitted,
                handshake,
            } => {
                let link =
                    self.start_link(stream, addr.ip(), (permit, Some(admitted)), Some(handshake));
                self.node.handle_input(
                    now,
                    Input::LinkUp {
                        link,
                        remote: to_peer_addr(addr),
                        outbound: false,
                    },
                );
            }
            LinkEvent::Dialed {
                remote,
                result,
                permit,
            } => {
                match result {
                    Ok(stream) => {
                        let addr = to_socket_addr(remote);
                        if let Some(n) = self.bootstrap.get_mut(&addr) {
                            if *n > 0 {
                                log::info!("bootstrap {addr} answers again");
                            }
                            *n = 0;
                            self.problem = None;
                        }
                        let ip = addr.ip();
                        let link = self.start_link(stream, ip, (permit, None), None);
                        self.node.handle_input(
                            now,
                            Input::LinkUp {
                                link,
                                remote,
                                outbound: true,
                            },
                        );
                    }
                    Err(e) => {
                        let addr = to_socket_addr(remote);
                        match self.bootstrap.get_mut(&addr) {
                            // A bootstrap that does not answer leaves a new peer with nobody to
                            // join through: said at warn level, less often as it goes on (the
                            // core retries every few seconds).
                            Some(n) => {
                                *n = n.saturating_add(1);
                                if n.is_power_of_two() {
                                    log::warn!(
                                    "cannot reach bootstrap {addr}: {e} ({} failed, still trying)",
                                    if *n == 1 { "1 try".to_string() } else { format!("{n} tries") }
                                );
                                }
                                self.problem = Some(format!("cannot reach bootstrap {addr}: {e}"));
                            }
                            None => log::debug!("dial {addr} failed: {e}"),
                        }
                        drop(permit);
                        self.node.handle_input(now, Input::DialFailed { remote });
                    }
                }
            }
            LinkEvent::Received { link, msg, _permit } => {
                // The link verified the segment's signature: its ingest time is the source's.
                if let crate::proto::Message::Segment(seg) = &msg {
                    self.note_edge(seg.origin_us);
                    // Uploads of a copy still arriving elsewhere go on from this one.
                    self.arriving.whole(seg);
                }
                if let (Some(w), crate::proto::Message::Ctl(c)) = (&self.warm, &msg) {
                    super::warm::lock(w).observe(c, std::time::Instant::now());
                }
                if self.links.contains_key(&link) {
                    self.node.handle_input(now, Input::Received { link, msg });
                }
            }
            LinkEvent::Proof { link, nonce } => {
                // The connection carried nothing else: it is gone for the core too.
                if let Some(h) = self.links.remove(&link) {
                    h.reader.abort();
                    h.writer.abort();
                    self.node.handle_input(now, Input::LinkDown { link });
                }
                self.node
                    .handle_input(self.clock.now(), Input::DialBackProof { nonce });
            }
            LinkEvent::DialBackDone { nonce, connected } => {
                self.node
                    .handle_input(now, Input::DialBackDone { nonce, connected });
            }
            LinkEvent::Begun { link, segment } => {
                if self.links.contains_key(&link) {
                    self.arriving.begun(&segment);
                    self.node
                        .handle_input(now, Input::SegmentBegun { link, segment });
                }
            }
            LinkEvent::Pieces { link, seq, done } => {
                if self.links.contains_key(&link) {
                    let input = Input::PieceArrived {
                        link,
                        seq,
                        pieces_done: done,
                    };
                    self.node.handle_input(now, input);
                }
            }
            LinkEvent::Aborted { link, seq } => {
                if self.links.contains_key(&link) {
                    self.node
                        .handle_input(now, Input::SegmentAborted { link, seq });
                }
            }
            LinkEvent::Sent { link, seq, .. } => {
                // An upload the core aborted is over for it already.
                if let Some(k) = self.aborted_uploads.iter().position(|&a| a == (link, seq)) {
                    self.aborted_uploads.remove(k);
                } else if self.links.contains_key(&link) {
                    self.node.handle_input(now, Input::Sent { link });
                }
            }
            LinkEvent::Down { link, why } => {
                if let Some(h) = self.links.remove(&link) {
                    match why {
                        LinkError::Eof => log::debug!("link {} closed by peer", link.0),
                        ref e => log::info!("link {} down: {e}", link.0),
                    }
                    if why.is_pollution() {
                        // The core bans the sender's id and listen address and closes every
                        // link to it; the door refuses its address from now on.
                        let ban = self.node.config().ban_duration.as_micros();
                        let ban = Duration::from_micros(ban);
                        self.guard.ban(h.ip, ban, std::time::Instant::now());
                        log::warn!("link {}: polluted segment from {}: banned", link.0, h.ip);
                        self.links.insert(link, h);
                        self.node.handle_input(now, Input::Polluted { link });
                        self.drain();
                        match self.links.remove(&link) {
                            Some(h) => {
                                h.reader.abort();
                                h.writer.abort();
                            }
                            None => return,
                        }
                    } else {
                        h.reader.abort();
                        h.writer.abort();
                    }
                    self.node.handle_input(now, Input::LinkDown { link });
                }
            }
        }
    }

    fn on_cut(&mut self, cut: Cut) {
        let Some(key) = &self.key else { return };
        let mut f = 0;
        if cut.entry_point {
            f |= flags::ENTRY_POINT;
        }
        if cut.discontinuity {
            f |= flags::DISCONTINUITY;
        }
        let seq = self.next_seq;
        self.next_seq = seq.next();
        let origin = wall_us();
        if let Some(log) = self.segment_log.as_mut() {
            let hex: String = sha256(&cut.data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let _ = writeln!(
                log,
                "{} {} {} {hex}",
                seq.0,
                cut.data.len(),
                cut.duration_us
            );
        }
        let seg = key.sign_segment(seq, origin, cut.duration_us, f, cut.data);
        self.ingested += 1;
        if let Some(feed) = &self.feed {
            feed.publish(FeedItem::Segment {
                seg: seg.clone(),
                due: std::time::Instant::now(),
            });
        }
        self.node.handle_input(self.clock.now(), Input::Ingest(seg));
        if self.ingested >= super::SOURCE_PREROLL {
            if let Some(addr) = self.listen_later.take() {
                match super::bind_listener(addr) {
                    Ok(l) => {
                        log::info!("on air: accepting peers on {addr}");
                        self.start_accepting(l);
                    }
                    Err(e) => self.fatal = Some(e),
                }
            }
        }
    }

    /// Registers a connected stream as a link and starts its reader and writer. The writer
    /// holds `place` (the link permit, the address's count) until it is done.
    fn start_link(
        &mut self,
        stream: TcpStream,
        ip: std::net::IpAddr,
        place: (tokio::sync::OwnedSemaphorePermit, Option<Admitted>),
        handshake: Option<Handshake>,
    ) -> LinkId {
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(link::WRITER_QUEUE);
        let gate = Arc::new(link::FrameGate::default());
        let reader = tokio::spawn(link::reader(
            link,
            rd,
            self.verifier.clone(),
            self.events_tx.clone(),
            self.body_budget.clone(),
            self.counters.clone(),
            gate.clone(),
            handshake,
        ))
        .abort_handle();
        let writer = tokio::spawn(link::writer(
            link,
            wr,
            rx,
            self.events_tx.clone(),
            self.upload_bytes_per_s,
            self.counters.clone(),
            place,
        ));
        self.links.insert(
            link,
            LinkHandle {
                tx,
                ip,
                gate,
                reader,
                writer,
            },
        );
        link
    }

    /// Closes a link from our side: the writer flushes what is queued, the reader stops.
    fn close_link(&mut self, link: LinkId) {
        if let Some(h) = self.links.remove(&link) {
            h.reader.abort();
            drop(h.tx);
            self.closing
                .push((h.writer, tokio::time::Instant::now() + CLOSE_FLUSH));
        }
    }

    /// Drops a link at once (it failed, or its queue overflowed) and tells the core.
    fn kill_link(&mut self, link: LinkId) {
        if let Some(h) = self.links.remove(&link) {
            h.reader.abort();
            h.writer.abort();
            self.deferred.push_back(Input::LinkDown { link });
        }
    }

    /// Carries out everything the core asked for, feeding back what that produced.
    fn drain(&mut self) {
        loop {
            while let Some(o) = self.node.poll_output() {
                self.on_output(o);
            }
            let Some(input) = self.deferred.pop_front() else {
                break;
            };
            self.node.handle_input(self.clock.now(), input);
        }
    }

    fn on_output(&mut self, o: Output<SharedBody>) {
        match o {
            Output::Send { link, msg } => {
                let Some(h) = self.links.get(&link) else {
                    return;
                };
                let msg = if self.pollute { polluted(msg) } else { msg };
                if link::asks_for_segments(&msg) {
                    h.gate.open();
                }
                if let Err(e) = h.tx.try_send(msg) {
                    if matches!(e, mpsc::error::TrySendError::Full(_)) {
                        log::info!("link {}: send queue full, closing it", link.0);
                        self.counters
                            .queue_full
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.kill_link(link);
                }
            }
            Output::Dial { remote } => {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let events = self.events_tx.clone();
                        tokio::spawn(async move {
                            let addr = to_socket_addr(remote);
                            let result =
                                match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
                                    .await
                                {
                                    Ok(r) => r,
                                    Err(_) => Err(std::io::Error::new(
                                        std::io::ErrorKind::TimedOut,
                                        "connect timed out",
                                    )),
                                };
                            let _ = events
                                .send(LinkEvent::Dialed {
                                    remote,
                                    result,
                                    permit,
                                })
                                .await;
                        });
                    }
                    Err(_) => self.deferred.push_back(Input::DialFailed { remote }),
                }
            }
            Output::Close { link } => self.close_link(link),
            // The writer sends the abort record itself: the body it forwards was aborted by
            // the reader of the link it came on, for the same reason the core aborts.
            Output::Abort { link, seq } => {
                if self.aborted_uploads.len() >= ABORTS_REMEMBERED {
                    self.aborted_uploads.pop_front();
                }
                self.aborted_uploads.push_back((link, seq));
            }
            Output::Play { segment, deadline } => {
                self.note_edge(segment.origin_us);
                self.last_play = Some((deadline, segment.origin_us));
                self.measure_rate(segment.payload.data.len(), segment.duration_us);
                if self.learn_name {
                    self.learn_name(&segment.payload.data);
                }
                if let Some(log) = self.play_log.as_mut() {
                    let d = &segment.payload.data;
                    let hex: String = sha256(d).iter().map(|b| format!("{b:02x}")).collect();
                    let _ = writeln!(log, "{} {} {hex}", segment.seq.0, d.len());
                }
                if let Some(feed) = &self.feed {
                    let due = self.clock.to_tokio(deadline).into_std();
                    feed.publish(FeedItem::Segment { seg: segment, due });
                }
            }
            Output::Late { seq, pause, cause } => {
                // Nobody holding a segment is starvation, not bad luck: said aloud (at most
                // every UNHELD_WARN_EVERY), with what may cause it.
                let now = std::time::Instant::now();
                let loud = matches!(cause, LateCause::Unheld)
                    && self
                        .unheld_warned
                        .is_none_or(|t| now.duration_since(t) >= UNHELD_WARN_EVERY);
                let text = format!(
                    "segment {} late ({}); playback pauses {:.1} s",
                    seq.0,
                    late_cause_text(cause),
                    pause.as_secs_f64()
                );
                if loud {
                    self.unheld_warned = Some(now);
                    log::warn!(
                        "{text}: the swarm is short of upload for this stream (partners {}{})",
                        self.node.stats().partners,
                        self.upload_warning
                            .as_deref()
                            .map_or(String::new(), |w| format!("; {w}"))
                    );
                } else {
                    log::info!("{text}");
                }
            }
            Output::DialBack { remote, nonce } => {
                let Ok(permit) = self.dial_backs.clone().try_acquire_owned() else {
                    log::debug!("dial-back to {remote:?} refused: {MAX_DIAL_BACKS} in flight");
                    self.deferred.push_back(Input::DialBackDone {
                        nonce,
                        connected: false,
                    });
                    return;
                };
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let connected = reach::prove(to_socket_addr(remote), nonce).await;
                    drop(permit);
                    let _ = events
                        .send(LinkEvent::DialBackDone { nonce, connected })
                        .await;
                });
            }
            Output::Punch { remote, at } => match self.permits.clone().try_acquire_owned() {
                // A peer behind our own router: its address is our router's, which does not
                // loop back to the LAN (no hairpin), so the punch cannot meet it.
                _ if self
                    .node
                    .reachability()
                    .observed
                    .is_some_and(|o| o.same_ip(&remote)) =>
                {
                    log::debug!("hole punch to {remote:?}: behind our own router, not tried");
                    self.deferred.push_back(Input::DialFailed { remote });
                }
                Ok(permit) => {
                    let events = self.events_tx.clone();
                    let at = self.clock.to_tokio(at);
                    let port = self.node.config().listen_port;
                    let punched = self.punched.clone();
                    tokio::spawn(async move {
                        let result = reach::punch(to_socket_addr(remote), port, at).await;
                        Counters::add(&punched[0], 1);
                        match &result {
                            Ok(_) => {
                                Counters::add(&punched[1], 1);
                                log::info!("hole punch to {remote:?}: connected");
                            }
                            Err(e) => log::info!("hole punch to {remote:?} failed: {e}"),
                        }
                        let _ = events
                            .send(LinkEvent::Dialed {
                                remote,
                                result,
                                permit,
                            })
                            .await;
                    });
                }
                Err(_) => self.deferred.push_back(Input::DialFailed { remote }),
            },
            Output::Missed { seq, .. } => {
                log::info!("segment {} missed its deadline: skipped", seq.0);
                if let Some(feed) = &self.feed {
                    feed.publish(FeedItem::Gap { seq });
                }
            }
        }
    }

    fn housekeeping(&mut self, write: bool) {
        let now = tokio::time::Instant::now();
        self.closing.retain(|(w, until)| {
            if *until <= now {
                w.abort();
            }
            !w.is_finished()
        });
        let report = self.report();
        self.publish(&report, write);
    }

    fn publish(&mut self, report: &NodeReport, write: bool) {
        if write {
            if let Some(p) = &self.stats_json {
                if let Err(e) = write_json(p, report) {
                    log::warn!("cannot write {}: {e}", p.display());
                }
            }
        }
        if let Some(w) = &self.report {
            let _ = w.send(report.clone());
        }
    }

    /// A segment of ingest time `origin_us` is here now: the live edge moves on if it is newer.
    fn note_edge(&mut self, origin_us: u64) {
        if self.edge.is_none_or(|(o, _)| origin_us > o) {
            self.edge = Some((origin_us, wall_us()));
        }
    }

    /// How far behind the live edge this peer knows the picture is, in seconds: from the
    /// ingest time of the segment playing now to the arrival here of the newest segment
    /// received (its transit from the source included). Segments handed to the player play
    /// back to back, so the one playing now is the latest handed, less what is still ahead
    /// of its deadline. A stalled picture with nothing newer arriving does not add lag: it
    /// grows only as far as the edge moves on.
    fn lag(&self, now: crate::proto::Instant) -> Option<f64> {
        let (deadline, origin) = self.last_play?;
        let (_, arrived) = self.edge?;
        let ahead = deadline.saturating_since(now).as_micros() as i128;
        let playing = origin as i128 - ahead;
        Some((arrived as i128 - playing) as f64 / 1e6)
    }

    /// The channel's name from a played segment's SDT, for a peer not told it: its stats (and
    /// so `ctl`, metrics and the status page) say the name players know, with or without
    /// outputs. The feed, if any, learns the same name from the same segments.
    fn learn_name(&mut self, data: &[u8]) {
        if let Some(n) = crate::output::stream_name(data) {
            if n != self.name {
                if self.feed.is_none() {
                    log::info!("channel name from the stream: {n}");
                }
                self.name = n;
            }
        }
    }

    /// Counts a played segment towards the stream's rate; once a few seconds are in, a cap
    /// below one copy of the stream is a warning (this node cannot even relay what it plays).
    fn measure_rate(&mut self, bytes: usize, duration_us: u32) {
        self.played_bytes += bytes as u64;
        self.played_us += duration_us as u64;
        if self.upload_warning.is_some() || self.played_us < RATE_SEGMENTS_US {
            return;
        }
        let stream_kbps = self.played_bytes * 8 * 1000 / self.played_us;
        let cap_kbps = self.upload_bytes_per_s * 8 / 1000;
        if self.role == Role::Peer && cap_kbps < stream_kbps {
            let w = format!(
                "upload cap {cap_kbps} kbit/s is below the stream's {stream_kbps} kbit/s: this peer cannot relay one copy; give --upload-kbps {} or more if the uplink has it",
                stream_kbps * 2
            );
            log::warn!("{w}");
            self.upload_warning = Some(w);
        }
    }

    pub(super) fn report(&self) -> NodeReport {
        let now = self.clock.now();
        let s = self.node.stats();
        let c = &self.counters;
        let up = Counters::get(&c.upload_bytes);
        let down = Counters::get(&c.download_bytes);
        let payload = Counters::get(&c.payload_up) + Counters::get(&c.payload_down);
        // Handed segments still ahead of their deadline are not counted yet; the estimate of
        // how many are ahead can step back after a stall (a segment stalled for is counted
        // missed, not played, yet moves the deadline on), so the count is kept from ever
        // going down: it is a counter to its readers (`coolstream_segments_played_total`).
        let due = s
            .played
            .saturating_sub(self.node.segments_ahead(now))
            .max(self.played_high.load(std::sync::atomic::Ordering::Relaxed));
        self.played_high
            .store(due, std::sync::atomic::Ordering::Relaxed);
        let continuity = match (self.role, s.first_play_at) {
            (Role::Source, _) => 1.0,
            (_, None) => 0.0,
            (_, Some(_)) if due + s.missed == 0 => 1.0,
            _ => due as f64 / (due + s.missed) as f64,
        };
        // Startup and lag are reported once a segment has played by its deadline: beside
        // zero segments played they read as nonsense.
        let startup_s = match (s.joined_at, s.first_play_at) {
            (Some(j), Some(p)) if due > 0 => Some(p.saturating_since(j).as_secs_f64()),
            _ => None,
        };
        let lag_s = self.lag(now).filter(|_| due > 0);
        let players = self.feed.as_ref().map_or(0, |f| f.subscribers());
        let nat = self.nat.as_ref().map_or_else(Default::default, |rx| {
            super::reach::NatFigures::of(&rx.borrow(), tokio::time::Instant::now())
        });
        let reach = self.node.reachability();
        let rs = self.node.reach_stats();
        NodeReport {
            role: match self.role {
                Role::Source => "source".into(),
                Role::Peer => "peer".into(),
            },
            channel: self.node.config().channel.to_hex(),
            name: self.name.clone(),
            continuity,
            startup_s,
            lag_s,
            partners: s.partners,
            members: s.members,
            links: self.links.len(),
            segments_played: due,
            segments_missed: s.missed,
            segments_ingested: self.ingested,
            payload_bytes: payload,
            control_bytes: (up + down).saturating_sub(payload),
            upload_bytes: up,
            download_bytes: down,
            bad_segments: Counters::get(&c.bad_segments),
            bad_frames: Counters::get(&c.bad_frames),
            uptime_s: self.started.elapsed().as_secs_f64(),
            players,
            outputs: match (&self.outputs, self.feed.is_some()) {
                (Some(f), true) => f(players).as_array().cloned().unwrap_or_default(),
                _ => Vec::new(),
            },
            busy_sent: s.busy_sent,
            busy_received: s.busy_received,
            request_timeouts: s.request_timeouts,
            stalls: s.stalls,
            id: format!("{:016x}", self.node.id().0),
            banned: self
                .node
                .bans()
                .ids()
                .map(|id| format!("{:016x}", id.0))
                .collect(),
            bans_total: self.node.bans().total(),
            store_bytes: self.node.store().bytes_held(),
            // A dial failure explains no partners, not a node that has some.
            problem: self.problem.clone().filter(|_| s.partners == 0),
            stream_kbps: (self.played_us > 0)
                .then(|| self.played_bytes as f64 * 8.0 * 1000.0 / self.played_us as f64),
            upload_warning: self.upload_warning.clone(),
            reachable: reach.reachable,
            external_addr: nat.external_addr,
            ipv6_addr: reach.v6.map(|a| to_socket_addr(a).to_string()),
            ipv6_reachable: reach.v6.and(reach.v6_open),
            reach: super::stats::ReachFigures {
                dial_backs_asked: rs.dial_backs_asked,
                dial_backs_proved: rs.dial_backs_proved,
                dial_backs_timed_out: rs.dial_backs_timed_out,
                dial_backs_done: rs.dial_backs_done,
                dial_backs_refused: rs.dial_backs_refused,
                introductions_made: rs.introductions_made,
                introductions_taken: rs.introductions_taken,
                punches: rs.punches,
                punches_linked: rs.punches_linked,
                punches_tried: Counters::get(&self.punched[0]),
                punches_connected: Counters::get(&self.punched[1]),
            },
            nat_method: nat.nat_method,
            nat_lease_s: nat.nat_lease_s,
            nat_error: nat.nat_error,
            diag: Diagnostics {
                requests_sent: s.requests_sent,
                segments_received: s.segments_received,
                duplicates: s.duplicates,
                uploads: s.uploads,
                missed_in_flight: s.missed_in_flight,
                missed_unrequested: s.missed_unrequested,
                stall_s: s.stall_us as f64 / 1e6,
                busy_reasons: s.busy_reasons,
                sched_no_slot: s.sched_no_slot,
                sched_too_late: s.sched_too_late,
                positions_refused: s.positions_refused,
                sched_budget_spent: s.sched_budget_spent,
                no_hello: Counters::get(&c.no_hello),
                slow_frames: Counters::get(&c.slow_frames),
                uploads_partial: s.uploads_partial,
                aborts_sent: s.aborts_sent,
                aborts_received: s.aborts_received,
            },
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the mapping's status changes (true), or its task has ended (false); never
/// while `live` is false.
async fn nat_changed(rx: &mut Option<watch::Receiver<crate::nat::Status>>, live: bool) -> bool {
    match rx {
        Some(r) if live => r.changed().await.is_ok(),
        _ => std::future::pending().await,
    }
}

async fn sleep_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The test hook behind [`super::NodeOptions::pollute`]: a segment as a polluter would send
/// it, with valid framing: by `seq % 3`, bytes altered in the second half of its pieces under
/// the signed manifest (bad pieces after good ones: a relay forwarding it as it arrives has
/// sent the first half on when the bad one comes), the right bytes under a forged signature
/// (a bad manifest), or a manifest one piece hash short (out of bounds).
fn polluted(msg: crate::proto::Message<SharedBody>) -> crate::proto::Message<SharedBody> {
    use crate::proto::wire::SegmentBody;
    use crate::proto::Message;
    match msg {
        Message::Segment(mut seg) => {
            let mut body = SegmentBody::clone(&seg.payload);
            match seg.seq.0 % 3 {
                0 => {
                    let pieces = crate::proto::manifest::piece_count(body.data.len() as u32);
                    let from = pieces / 2 * crate::proto::manifest::PIECE_SIZE;
                    for b in body.data.iter_mut().skip(from + 188).step_by(997) {
                        *b ^= 0x5a;
                    }
                }
                1 => body.signature[1][7] ^= 1,
                _ => {
                    body.hashes.pop();
                }
            }
            seg.payload = Arc::new(body);
            Message::Segment(seg)
        }
        m => m,
    }
}

/// Accepts connections while a link permit is free (the permit is taken before `accept`, so
/// a full node leaves new connections in the kernel's backlog), and only from addresses the
/// guard admits (not banned, not over their share).
async fn accept_loop(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    guard: Guard,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, addr)) => {
                // A dual-stack listener shows IPv4 peers as ::ffff:a.b.c.d: the door, the bans
                // and the core see them as the IPv4 addresses they are.
                let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                backoff = Duration::from_millis(10);
                let (admitted, handshake) = match guard.admit(addr.ip(), std::time::Instant::now())
                {
                    Ok(a) => a,
                    Err(why) => {
                        log::debug!("refused a connection from {addr}: {why:?}");
                        continue;
                    }
                };
                if events
                    .send(LinkEvent::Accepted {
                        stream,
                        addr,
                        permit,
                        admitted,
                        handshake,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                log::warn!("accept failed: {e}");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// A late segment's whereabouts, for the log.
fn late_cause_text(cause: LateCause) -> String {
    match cause {
        LateCause::InFlight { asked, holders } => format!(
            "asked {:.1} s ago, {holders} partner(s) hold it",
            asked.as_secs_f64(),
        ),
        LateCause::Unrequested { holders } => {
            format!("not asked for; {holders} partner(s) hold it")
        }
        LateCause::Unheld => "no partner holds it".to_string(),
    }
}
