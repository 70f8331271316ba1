//! The networked daemon: the only layer with sockets, tokio, clocks, files and signals.
//!
//! It drives the same sans-IO [`Node`](crate::proto::Node) the simulator drives. One actor
//! task owns the node ([`actor`]); each TCP link has a reader and a writer task ([`link`]);
//! the source's input runs in its own task ([`crate::media::input`]) and hands cut segments
//! to the actor, which signs them ([`keys`]); played segments go to the outputs through a
//! [`Feed`]. Every queue is bounded by a named constant, and a peer's bad bytes cost only its
//! own link.
//!
//! Shutdown: the future passed to [`run_node`] resolving (SIGINT/SIGTERM in the commands, a
//! timer in the demo and tests) makes the node leave: departures and byes are queued and
//! flushed for up to two seconds, outputs close, the final stats are written.

pub mod actor;
pub mod boxd;
pub mod clock;
#[cfg(feature = "sim")]
pub mod demo;
pub mod guard;
pub mod keys;
pub mod link;
pub mod logging;
pub mod memory;
pub mod notify;
pub mod reach;
pub mod roles;
pub mod stats;
pub mod warm;

use crate::media::segmenter::Cut;
use crate::output::Feed;
use crate::proto::wire::{ChannelId, SharedBody};
use crate::proto::{Config, LinkId, Message, Node, PeerAddr, PeerId, Role};
use keys::ChannelKey;
use link::LinkError;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

pub use stats::NodeReport;

/// Links (TCP connections of every kind, open or flushing) one node holds at most. A little
/// above the core's own `max_links`, so that a full node can still say "full" to a newcomer.
pub const MAX_LINKS: usize = 80;
/// Events from link, dial and accept tasks waiting for the actor.
pub const EVENT_QUEUE: usize = 1024;
/// Segments cut by the source's input and not yet signed and ingested.
pub const INGEST_QUEUE: usize = 16;
/// A TCP connect that has not completed by then has failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Dial-backs one node carries out at once for peers that asked (the core's own budget
/// allows a few per second; past this many in flight, one is refused).
pub const MAX_DIAL_BACKS: usize = 8;
/// Segments a source cuts before it opens its port: a peer that came earlier would find
/// nothing to start from. One is enough: a peer that joins a channel with little history
/// holds its first play back as if the history were there (the core's `choose_start`), so a
/// restarted source is on air again as soon as it has cut a segment. Until then dials are
/// refused and peers retry.
pub const SOURCE_PREROLL: u64 = 1;
/// Default upload cap of a node, in kbit/s (about four times a 768 kbit/s channel).
pub const DEFAULT_UPLOAD_KBPS: u64 = 3000;
/// The stream rate nodes assume until segments show the real one, in kbit/s.
pub const DEFAULT_STREAM_KBPS: u64 = 768;

/// What a link task or a dial/accept task tells the actor.
#[derive(Debug)]
pub enum LinkEvent {
    Accepted {
        stream: TcpStream,
        addr: SocketAddr,
        permit: OwnedSemaphorePermit,
        admitted: guard::Admitted,
        handshake: guard::Handshake,
    },
    Dialed {
        remote: PeerAddr,
        result: std::io::Result<TcpStream>,
        permit: OwnedSemaphorePermit,
    },
    /// A whole, verified message. The permit holds its bytes in the body budget until the
    /// actor has handed it to the core.
    Received {
        link: LinkId,
        msg: Message<SharedBody>,
        _permit: OwnedSemaphorePermit,
    },
    /// A segment's manifest arrived on `link` and was checked; `segment`'s payload is the
    /// body that fills as its pieces are checked.
    Begun {
        link: LinkId,
        segment: crate::proto::Segment<SharedBody>,
    },
    /// The first `done` pieces of `seq` arriving on `link` are checked.
    Pieces {
        link: LinkId,
        seq: crate::proto::Seq,
        done: u32,
    },
    /// The sender on `link` aborted the segment `seq` it was sending (an abort record).
    Aborted {
        link: LinkId,
        seq: crate::proto::Seq,
    },
    /// A segment frame has been written whole, or (`aborted`) cut short with an abort record
    /// because the segment it forwarded while it arrived will not complete.
    Sent {
        link: LinkId,
        seq: crate::proto::Seq,
        aborted: bool,
    },
    Down {
        link: LinkId,
        why: LinkError,
    },
    /// An accepted connection's first frame was a dial-back proof: the peer we asked dialled
    /// us through the address we gossip. The reader has ended; the connection is closed.
    Proof {
        link: LinkId,
        nonce: u64,
    },
    /// A dial-back we carried out for a peer: whether it connected and wrote the proof.
    DialBackDone {
        nonce: u64,
        connected: bool,
    },
}

/// Why the daemon could not run.
#[derive(Debug)]
pub enum DaemonError {
    Io(String, std::io::Error),
    Key(String, keys::KeyError),
    Config(String),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::Io(what, e) => write!(f, "{what}: {e}"),
            DaemonError::Key(what, e) => write!(f, "{what}: {e}"),
            DaemonError::Config(what) => write!(f, "{what}"),
        }
    }
}
impl std::error::Error for DaemonError {}

/// Everything one node of the daemon needs.
pub struct NodeOptions {
    pub role: Role,
    pub channel: ChannelId,
    /// Shown in stats and used for `/ch/NAME.ts`.
    pub name: String,
    /// `name` is provisional (a peer not told it): the stream's SDT names the channel.
    pub learn_name: bool,
    /// Where to dial into the swarm (peers only).
    pub bootstrap: Vec<SocketAddr>,
    pub upload_kbps: u64,
    pub stream_kbps: u64,
    pub segment_ms: u64,
    pub stats_json: Option<PathBuf>,
    /// Where played (peer) or ingested (source) segments go.
    pub feed: Option<Arc<Feed>>,
    /// The source's signing key.
    pub key: Option<ChannelKey>,
    /// Source only: one line per cut segment (`seq len duration_us sha256`), for tests and
    /// debugging.
    pub segment_log: Option<std::fs::File>,
    /// Live figures, refreshed every second (the demo reads them).
    pub report: Option<watch::Sender<NodeReport>>,
    /// Peer only: one line per segment handed to the player (`seq len sha256`), to compare
    /// with the source's segment log.
    pub play_log: Option<std::fs::File>,
    /// Reserve the segment store's memory at start ([`memory::reserve_heap`]). Off where
    /// several nodes share one process (the demo).
    pub reserve_memory: bool,
    /// Test hook, never set by the commands' flags: this node alters every segment it
    /// uploads (set by the environment variable [`POLLUTE_ENV`]). The polluter tests use it
    /// to play a hostile peer with the real binary.
    pub pollute: bool,
    /// The core's segment store budget in bytes, when not the core's default.
    pub store_bytes: Option<u64>,
    /// The links' body budget, KiB permits (the box's memory plan's `frames`, one for all its
    /// nodes, leaving ones included); when none, the node makes its own of
    /// [`link::BODY_BUDGET_KIB`].
    pub body_budget: Option<Arc<tokio::sync::Semaphore>>,
    /// Partners sought and accepted at most (M and the accept limit), when not the core's
    /// defaults (the box daemon's `limits.max_partners`).
    pub partners: Option<(usize, usize)>,
    /// Membership records this node hears of are shown to this view (the box daemon's).
    pub warm: Option<warm::SharedView>,
    /// This node's outputs for its stats (`outputs`), given its players.
    pub outputs: Option<stats::OutputsFn>,
    /// The port mapping of this node's listener ([`reach::PortMapping::status`]).
    pub nat: Option<watch::Receiver<crate::nat::Status>>,
}

/// Environment variable that makes a node corrupt the segments it uploads, for tests of the
/// defences (see [`NodeOptions::pollute`]).
pub const POLLUTE_ENV: &str = "COOLSTREAM_TEST_POLLUTE";

impl NodeOptions {
    pub fn new(role: Role, channel: ChannelId) -> Self {
        NodeOptions {
            role,
            channel,
            name: String::new(),
            learn_name: false,
            bootstrap: Vec::new(),
            upload_kbps: DEFAULT_UPLOAD_KBPS,
            stream_kbps: DEFAULT_STREAM_KBPS,
            segment_ms: 1000,
            stats_json: None,
            feed: None,
            key: None,
            segment_log: None,
            report: None,
            outputs: None,
            play_log: None,
            reserve_memory: false,
            pollute: std::env::var_os(POLLUTE_ENV).is_some_and(|v| v == "1"),
            store_bytes: None,
            body_budget: None,
            partners: None,
            warm: None,
            nat: None,
        }
    }
}

/// The core's configuration for these options.
pub fn node_config(opts: &NodeOptions, listen_port: u16) -> Config {
    let mut c = Config::new(opts.channel, opts.role, opts.stream_kbps.max(8) * 1000 / 8);
    c.listen_port = listen_port;
    // This driver carries out dial-backs and hole punches (the actor's `Output::DialBack` and
    // `Output::Punch`).
    c.dial_back = true;
    c.hole_punch = true;
    c.upload_bytes_per_s = opts.upload_kbps.max(8) * 1000 / 8;
    c.segment_duration = crate::proto::Duration::from_millis(opts.segment_ms.max(100));
    if let Some(b) = opts.store_bytes {
        c.store_bytes = b;
    }
    if let Some((m, max)) = opts.partners {
        c.partners = m;
        c.max_partners = max;
    }
    c
}

/// A random peer id and core seed from the operating system.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to the clock and pid (ids only need to differ).
        return clock::wall_us() ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b)
}

/// Runs one node until `shutdown` resolves; returns its final figures. A peer listens on
/// `listen` at once; a source checks it can, and opens it for good once its pre-roll
/// ([`SOURCE_PREROLL`]) is cut from `ingest`, the receiving end of its input's segment queue.
pub async fn run_node(
    opts: NodeOptions,
    listen: SocketAddr,
    ingest: Option<mpsc::Receiver<Cut>>,
    shutdown: impl Future<Output = ()>,
) -> Result<NodeReport, DaemonError> {
    let listener = bind_listener(listen)?;
    if opts.role == Role::Source {
        let port = local_port(&listener)?;
        drop(listener);
        let later = actor::Listen::AfterPreroll(SocketAddr::new(listen.ip(), port));
        return run_with(opts, later, port, ingest, shutdown).await;
    }
    run_peer_on(opts, listener, shutdown).await
}

/// Runs a peer node on a listener the caller bound (the box daemon hands each tuned node a
/// copy of one long-lived listener, so its port never closes across zaps).
pub async fn run_peer_on(
    opts: NodeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<NodeReport, DaemonError> {
    let port = local_port(&listener)?;
    run_with(opts, actor::Listen::Now(listener), port, None, shutdown).await
}

fn local_port(l: &TcpListener) -> Result<u16, DaemonError> {
    Ok(l.local_addr()
        .map_err(|e| DaemonError::Io("listener address".into(), e))?
        .port())
}

async fn run_with(
    mut opts: NodeOptions,
    listen: actor::Listen,
    port: u16,
    ingest: Option<mpsc::Receiver<Cut>>,
    shutdown: impl Future<Output = ()>,
) -> Result<NodeReport, DaemonError> {
    if opts.role == Role::Source && opts.key.is_none() {
        return Err(DaemonError::Config("a source needs its key".into()));
    }
    if opts.role == Role::Peer && opts.bootstrap.is_empty() {
        return Err(DaemonError::Config(
            "a peer needs a bootstrap address".into(),
        ));
    }
    let mut cfg = node_config(&opts, port);
    if opts.reserve_memory {
        memory::reserve_heap(cfg.store_bytes as usize + memory::RESERVE_SLACK);
    }
    let mut actor = {
        let now = clock::Clock::new().now();
        // Segment origin stamps are wall-clock µs; the core counts from the daemon's start.
        // The core places them on its own clock by this offset (the actor's clock starts
        // within microseconds of this one), which its lag cap and stall sizing depend on.
        cfg.origin_offset_us = clock::wall_us() as i64 - now.as_micros() as i64;
        let node = Node::new(cfg, PeerId(random_u64()), random_u64(), now);
        actor::Actor::new(&mut opts, node)
    };
    if let Some(w) = &opts.warm {
        warm::lock(w).add_own(actor.node_id());
    }
    log::info!(
        "{:?} {:?} on channel {} listening on port {port}",
        opts.role,
        actor.node_id(),
        opts.channel.to_hex()
    );
    if opts.role == Role::Peer {
        actor.join(&opts.bootstrap);
    }
    actor.run(listen, ingest, shutdown).await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => {
            // No signal handling available: run until killed.
            std::future::pending::<()>().await
        }
    }
}

/// Binds a TCP listener for peers, with address reuse so a restarted node gets its port back.
/// `[::]` listens on IPv6 and IPv4 both (IPV6_V6ONLY off, whatever the system's default); on a
/// system without IPv6 it falls back to `0.0.0.0` on the same port.
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    bind_with(addr, false)
}

/// [`bind_listener`] for a peer port, with SO_REUSEPORT too: a hole punch dials out from the
/// port peers know ([`reach::punch`]), on a socket bound beside this one.
pub fn bind_peer_listener(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    bind_with(addr, true)
}

fn bind_with(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, DaemonError> {
    let err = |e| DaemonError::Io(format!("cannot listen on {addr}"), e);
    let dual = matches!(addr.ip(), std::net::IpAddr::V6(v6) if v6.is_unspecified());
    let s = match bind_socket(addr, dual, reuse_port) {
        Err(e) if dual && no_ipv6(&e) => {
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            log::info!("no IPv6 on this system: listening on {v4}");
            bind_socket(v4, false, reuse_port)
        }
        r => r,
    }
    .map_err(err)?;
    TcpListener::from_std(std::net::TcpListener::from(s)).map_err(err)
}

fn bind_socket(addr: SocketAddr, dual: bool, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if dual {
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(reuse_port)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s)
}

/// Whether a socket error says the system has no IPv6 (a kernel built without it, or with it
/// disabled).
fn no_ipv6(e: &std::io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    const EADDRNOTAVAIL: i32 = 99;
    matches!(e.raw_os_error(), Some(EAFNOSUPPORT | EADDRNOTAVAIL))
}
