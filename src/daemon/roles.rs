//! The two kinds of node a command starts: a source (input, segmenter, signer, seed) and a
//! peer (the swarm, and the player outputs), each with its outputs wired to the actor.

use super::keys::ChannelKey;
use super::stats::NodeReport;
use super::{bind_listener, run_node, DaemonError, NodeOptions, INGEST_QUEUE};
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
}

/// Binds the HTTP output and serves `channels` on it; the task ends when the handle is
/// aborted.
fn start_http(
    addr: SocketAddr,
    channels: Arc<Channels>,
    status: Option<watch::Receiver<NodeReport>>,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let listener = bind_listener(addr)?;
    for f in channels.list() {
        log::info!(
            "players: http://{}/ch/{}.ts",
            listener.local_addr().map_or(addr, |a| a),
            f.name()
        );
    }
    let status: http::StatusFn = Arc::new(move || match &status {
        Some(rx) => vec![rx.borrow().clone()],
        None => Vec::new(),
    });
    Ok(tokio::spawn(http::serve(listener, channels, status)))
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
    log::info!("channel {}", channel.to_hex());
    let mut opts = NodeOptions::new(Role::Source, channel);
    opts.name = args.name;
    opts.upload_kbps = args.upload_kbps;
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
    if let (Some(a), Some(f)) = (args.http, &feed) {
        // Without --name it also serves its one channel under any name.
        let channels = Channels::single(f.clone(), args.name.is_none());
        tasks.push(start_http(a, channels, Some(report_rx))?);
    }
    // The UDP output's channel can be changed while it runs; this process has one.
    let mut _retarget = None;
    if let (Some(o), Some(f)) = (args.udp_out, &feed) {
        let (tx, rx) = watch::channel(f.clone());
        _retarget = Some(tx);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = udp::run(o, rx).await {
                log::error!("udp output failed: {e}");
            }
        }));
    }
    let mut opts = NodeOptions::new(Role::Peer, args.channel);
    opts.name = name;
    opts.bootstrap = args.bootstrap;
    opts.reserve_memory = true;
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
    let r = run_node(opts, args.listen, None, shutdown).await;
    for t in tasks {
        t.abort();
    }
    r
}
