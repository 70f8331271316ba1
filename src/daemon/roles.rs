//! The two kinds of node a command starts: a source (input, segmenter, signer, seed) and a
//! peer (the swarm, and the player outputs), each with its outputs wired to the actor.

use super::keys::ChannelKey;
use super::reach::PortMapping;
use super::stats::NodeReport;
use super::{bind_listener, run_node, run_peer_on, DaemonError, NodeOptions, INGEST_QUEUE};
use crate::media::input::{self, InputSpec};
use crate::output::udp::UdpOut;
use crate::output::{http, udp, Channels, Feed};
use crate::proto::wire::ChannelId;
use crate::proto::Role;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub struct SourceArgs {
    pub key: ChannelKey,
    pub name: String,
    pub input: InputSpec,
    pub listen: SocketAddr,
    /// The upload cap, kbit/s; 0: [`AUTO_UPLOAD_FACTOR`] times the input's measured rate, at
    /// least [`super::DEFAULT_UPLOAD_KBPS`].
    pub upload_kbps: u64,
    pub segment_ms: u64,
    pub segment_log: Option<PathBuf>,
    pub stats_json: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub report: Option<watch::Sender<NodeReport>>,
}

pub struct PeerArgs {
    pub channel: ChannelId,
    pub name: Option<String>,
    pub bootstrap: Vec<SocketAddr>,
    pub listen: SocketAddr,
    pub http: Option<SocketAddr>,
    pub udp_out: Option<UdpOut>,
    /// Fault injection for tests: every Nth played segment is withheld from the players.
    pub drop_every: Option<u32>,
    pub upload_kbps: u64,
    pub stats_json: Option<PathBuf>,
    pub report: Option<watch::Sender<NodeReport>>,
    /// One line per played segment (`seq len sha256`).
    pub play_log: Option<PathBuf>,
    /// How to ask the home router to forward the listener's port.
    pub nat: crate::nat::Method,
    /// The lease asked of the router ([`super::reach::NAT_LEASE`] unless a test asks less).
    pub nat_lease: std::time::Duration,
}

/// Binds the HTTP output and serves `channels` on it; the task ends when the handle is
/// aborted. Returns the task and the address bound.
fn start_http(
    addr: SocketAddr,
    channels: Arc<Channels>,
    status: Option<watch::Receiver<NodeReport>>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), DaemonError> {
    let listener = bind_listener(addr)?;
    let bound = listener.local_addr().map_or(addr, |a| a);
    for f in channels.list() {
        f.served_at(bound);
        log::info!("players: http://{bound}/ch/{}.ts", f.name());
    }
    let status: http::StatusFn = Arc::new(move || match &status {
        Some(rx) => vec![rx.borrow().clone()],
        None => Vec::new(),
    });
    Ok((tokio::spawn(http::serve(listener, channels, status)), bound))
}

/// A source without `--upload-kbps` uploads this many times its input's rate: enough for the
/// first peers' copies and the repairs of a swarm under churn (the simulator's source: 4x).
pub const AUTO_UPLOAD_FACTOR: u64 = 4;
/// A source whose cap is below this many copies of its input is warned about: the first
/// peers cannot all be fed, and they feed everyone else.
pub const MIN_SOURCE_COPIES: u64 = 2;
/// Segments whose rate measures the input before the source goes on air.
const MEASURE_SEGMENTS: usize = 2;
/// How long the source waits for them; an input that slow is measured by what came.
const MEASURE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the first segments of the input to measure its rate (kbit/s), and hands them on:
/// the receiver returned yields every segment, the measured ones first.
async fn measure_input(
    mut rx: mpsc::Receiver<crate::media::segmenter::Cut>,
) -> (Option<u64>, mpsc::Receiver<crate::media::segmenter::Cut>) {
    let mut first = Vec::new();
    let until = tokio::time::Instant::now() + MEASURE_WAIT;
    while first.len() < MEASURE_SEGMENTS {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(c)) => first.push(c),
            _ => break,
        }
    }
    let bytes: u64 = first.iter().map(|c| c.data.len() as u64).sum();
    let us: u64 = first.iter().map(|c| c.duration_us as u64).sum();
    let kbps = (us > 0).then(|| bytes * 8 * 1000 / us);
    let (tx, out) = mpsc::channel(INGEST_QUEUE);
    tokio::spawn(async move {
        for c in first {
            if tx.send(c).await.is_err() {
                return;
            }
        }
        while let Some(c) = rx.recv().await {
            if tx.send(c).await.is_err() {
                return;
            }
        }
    });
    (kbps, out)
}

/// The source's upload cap for an input of `stream_kbps`, and a warning if the one given is
/// too small for it.
pub fn source_upload(given: u64, stream_kbps: Option<u64>) -> (u64, Option<String>) {
    match (given, stream_kbps) {
        (0, Some(r)) => ((AUTO_UPLOAD_FACTOR * r).max(super::DEFAULT_UPLOAD_KBPS), None),
        (0, None) => (super::DEFAULT_UPLOAD_KBPS, None),
        (g, Some(r)) if g < MIN_SOURCE_COPIES * r => (
            g,
            Some(format!(
                "upload cap {g} kbit/s is below {MIN_SOURCE_COPIES} copies of the input's {r} kbit/s: \
                 peers will starve; give --upload-kbps {} or more (or leave it out: {AUTO_UPLOAD_FACTOR}x the input)",
                MIN_SOURCE_COPIES * r
            )),
        ),
        (g, _) => (g, None),
    }
}

pub async fn run_source(
    args: SourceArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<NodeReport, DaemonError> {
    let channel = args.key.channel();
    let opened =
        input::open(&args.input).map_err(|e| DaemonError::Io("cannot open the input".into(), e))?;
    let (cut_tx, cut_rx) = mpsc::channel(INGEST_QUEUE);
    let segment_ms = args.segment_ms;
    let name = args.name.clone();
    let label = args.input.label();
    let reader = tokio::spawn(async move {
        if let Err(e) = input::run(opened, segment_ms, Some(&name), &label, cut_tx).await {
            log::error!("input failed: {e}");
        }
    });
    let segment_log = match &args.segment_log {
        Some(p) => Some(
            std::fs::File::create(p)
                .map_err(|e| DaemonError::Io(format!("cannot create {}", p.display()), e))?,
        ),
        None => None,
    };
    let feed = args
        .http
        .map(|_| Feed::with_aliases(&args.name, vec![channel.to_hex()]));
    let (report_tx, report_rx) = match args.report {
        Some(tx) => {
            let rx = tx.subscribe();
            (tx, rx)
        }
        None => watch::channel(NodeReport::default()),
    };
    let server = match (args.http, &feed) {
        (Some(a), Some(f)) => Some(start_http(
            a,
            Channels::single(f.clone(), false),
            Some(report_rx),
        )?),
        _ => None,
    };
    let http_addr = server.as_ref().map(|s| s.1);
    let server = server.map(|s| s.0);
    log::info!("channel {}", channel.to_hex());
    // The input's rate sets the default upload, and tells the core what a copy costs.
    let (stream_kbps, cut_rx) = measure_input(cut_rx).await;
    let (upload_kbps, warning) = source_upload(args.upload_kbps, stream_kbps);
    match (&warning, stream_kbps) {
        (Some(w), _) => log::warn!("{w}"),
        (None, Some(r)) => log::info!(
            "the input runs at {r} kbit/s; upload cap {upload_kbps} kbit/s{}",
            if args.upload_kbps == 0 {
                format!(" ({AUTO_UPLOAD_FACTOR}x the input, at least the default)")
            } else {
                String::new()
            }
        ),
        (None, None) => {}
    }
    let mut opts = NodeOptions::new(Role::Source, channel);
    opts.outputs = Some(Arc::new(move |players| {
        crate::output::describe(http_addr, None, players)
    }));
    if let Some(r) = stream_kbps {
        opts.stream_kbps = r.max(8);
    }
    opts.name = args.name;
    opts.upload_kbps = upload_kbps;
    opts.segment_ms = args.segment_ms;
    opts.key = Some(args.key);
    opts.segment_log = segment_log;
    opts.reserve_memory = true;
    opts.stats_json = args.stats_json;
    opts.feed = feed;
    opts.report = Some(report_tx);
    let r = run_node(opts, args.listen, Some(cut_rx), shutdown).await;
    reader.abort();
    if let Some(s) = server {
        s.abort();
    }
    r
}

pub async fn run_peer(
    args: PeerArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<NodeReport, DaemonError> {
    let short = args.channel.to_hex()[..12].to_string();
    let name = args.name.clone().unwrap_or_else(|| short.clone());
    let outputs = args.http.is_some() || args.udp_out.is_some();
    // Without --name the channel is called by its short id until its stream's SDT names it.
    let feed = outputs.then(|| match &args.name {
        Some(n) => Feed::with_aliases(n, vec![args.channel.to_hex()]),
        None => Feed::learning(&short, vec![args.channel.to_hex()]),
    });
    if let (Some(f), Some(n)) = (&feed, args.drop_every) {
        f.drop_every(n);
    }
    let (report_tx, report_rx) = match args.report {
        Some(tx) => {
            let rx = tx.subscribe();
            (tx, rx)
        }
        None => watch::channel(NodeReport::default()),
    };
    let mut tasks = Vec::new();
    let mut http_addr = None;
    if let (Some(a), Some(f)) = (args.http, &feed) {
        // Without --name it also serves its one channel under any name.
        let channels = Channels::single(f.clone(), args.name.is_none());
        let (task, bound) = start_http(a, channels, Some(report_rx))?;
        tasks.push(task);
        http_addr = Some(bound);
    }
    // The UDP output's channel can be changed while it runs; this process has one.
    let mut _retarget = None;
    let udp_health = Arc::new(udp::Health::default());
    let udp_out = args.udp_out.clone();
    if let (Some(o), Some(f)) = (args.udp_out, &feed) {
        let (tx, rx) = watch::channel(f.clone());
        _retarget = Some(tx);
        tasks.push(tokio::spawn(udp::run(o, rx, udp_health.clone())));
    }
    let describe: super::stats::OutputsFn = Arc::new(move |players| {
        crate::output::describe(
            http_addr,
            udp_out.as_ref().map(|o| (o, &*udp_health)),
            players,
        )
    });
    let mut opts = NodeOptions::new(Role::Peer, args.channel);
    opts.name = name;
    opts.learn_name = args.name.is_none();
    opts.bootstrap = args.bootstrap;
    opts.reserve_memory = true;
    opts.outputs = Some(describe);
    if let Some(p) = &args.play_log {
        opts.play_log = Some(
            std::fs::File::create(p)
                .map_err(|e| DaemonError::Io(format!("cannot create {}", p.display()), e))?,
        );
    }
    opts.upload_kbps = args.upload_kbps;
    opts.stats_json = args.stats_json;
    opts.feed = feed;
    opts.report = Some(report_tx);
    let listener = super::bind_peer_listener(args.listen)?;
    let local = listener
        .local_addr()
        .map_err(|e| DaemonError::Io("listener address".into(), e))?;
    // The mapping lives as long as the listener; its deletion starts with the shutdown, while
    // the node leaves its swarm, and is bounded.
    let mut mapping = PortMapping::start(args.nat, local, args.nat_lease);
    opts.nat = Some(mapping.status());
    let stop_mapping = mapping.stopper();
    let r = run_peer_on(opts, listener, async move {
        shutdown.await;
        drop(stop_mapping);
    })
    .await;
    mapping.finish().await;
    for t in tasks {
        t.abort();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_uploads_a_few_copies_of_its_input_unless_told_and_is_warned_when_told_too_little() {
        // Left out: four copies of a 3.3 Mbit/s input, the default for a small one.
        assert_eq!(source_upload(0, Some(3300)), (13_200, None));
        assert_eq!(
            source_upload(0, Some(500)),
            (crate::daemon::DEFAULT_UPLOAD_KBPS, None)
        );
        assert_eq!(
            source_upload(0, None),
            (crate::daemon::DEFAULT_UPLOAD_KBPS, None)
        );
        // Given: kept, and below two copies it is said with the figure to give.
        let (cap, w) = source_upload(3000, Some(3300));
        assert_eq!(cap, 3000);
        assert!(w.unwrap().contains("--upload-kbps 6600"));
        assert_eq!(source_upload(6600, Some(3300)), (6600, None));
    }
}
