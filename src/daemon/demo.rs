//! `coolstream demo`: a source looping the bundled test stream and a few peers, each a full
//! node with its own loopback sockets, in one process. The first peer serves players over
//! HTTP. It prints the URL to open and a live figures line; with a time limit it stops by
//! itself and summarises (`demo --json`, docs/INTERFACE.md).

use super::keys::ChannelKey;
use super::roles::{run_peer, run_source, PeerArgs, SourceArgs};
use super::stats::NodeReport;
use super::{DaemonError, DEFAULT_UPLOAD_KBPS};

/// Segments the demo's source cuts before its peers join.
const DEMO_HISTORY: u64 = 4;
use crate::media::input::InputSpec;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// The bundled stream: 8 s of test pattern and tone, H.264 + AAC (see assets/README.md).
pub static DEMO_TS: &[u8] = include_bytes!("../../assets/demo.ts");
/// Peers a demo runs at most.
pub const MAX_DEMO_PEERS: usize = 32;
/// Where the demo's player URL is, if the port is free (else any free port).
const DEMO_HTTP: &str = "127.0.0.1:8090";
const DEMO_NAME: &str = "demo";

pub struct DemoOptions {
    pub peers: usize,
    pub seconds: Option<f64>,
    /// Print the live line (off when the summary goes to stdout as JSON).
    pub live: bool,
}

#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub peers: usize,
    pub seconds: f64,
    pub channel: String,
    pub url: String,
    pub continuity_min: f64,
    pub continuity_mean: f64,
    pub startup_max_s: Option<f64>,
    pub lag_mean_s: Option<f64>,
    pub source: NodeReport,
    pub per_peer: Vec<NodeReport>,
}

/// The players' address: [`DEMO_HTTP`] if that port is free, else `spare` (a free port held
/// until now), so that the URL printed is the one served.
fn http_addr(spare: SocketAddr) -> SocketAddr {
    let preferred: SocketAddr = DEMO_HTTP.parse().expect("a literal socket address");
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred,
        Err(_) => spare,
    }
}

/// `n` distinct free loopback addresses, all chosen before any node runs: a port picked
/// while earlier nodes already dial could be taken by one of their outgoing connections
/// between the pick and the bind.
fn free_ports(n: usize) -> Result<Vec<SocketAddr>, DaemonError> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DaemonError::Io("no free loopback port".into(), e))?;
    held.iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DaemonError::Io("no free loopback port".into(), e))
}

pub async fn run_demo(
    opts: DemoOptions,
    interrupted: impl std::future::Future<Output = ()>,
) -> Result<DemoSummary, DaemonError> {
    let peers = opts.peers.clamp(1, MAX_DEMO_PEERS);
    let key = ChannelKey::generate().map_err(|e| DaemonError::Key("demo key".into(), e))?;
    let channel = key.channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let ports = free_ports(peers + 2)?;
    let source_addr = ports[0];
    let (src_report, src_watch) = watch::channel(NodeReport::default());
    let source = tokio::spawn(run_source(
        SourceArgs {
            key,
            name: DEMO_NAME.into(),
            input: InputSpec::Memory(DEMO_TS),
            listen: source_addr,
            upload_kbps: DEFAULT_UPLOAD_KBPS,
            segment_ms: 1000,
            segment_log: None,
            stats_json: None,
            http: None,
            report: Some(src_report),
        },
        stop(stop_rx.clone()),
    ));
    // Peers join once the channel has a few seconds of history, as viewers of a live channel
    // do, so their startup figures measure joining, not waiting for the channel to begin.
    let mut on_air = src_watch.clone();
    let ready = on_air.wait_for(|r| r.segments_ingested > DEMO_HISTORY);
    if tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .is_err()
    {
        return Err(DaemonError::Config(
            "the demo source cut no segments in 20 s".into(),
        ));
    }
    let http = http_addr(ports[peers + 1]);
    let mut nodes = Vec::new();
    let mut watches = Vec::new();
    for i in 0..peers {
        let (tx, rx) = watch::channel(NodeReport::default());
        watches.push(rx);
        let listen = ports[i + 1];
        nodes.push(tokio::spawn(run_peer(
            PeerArgs {
                channel,
                name: Some(DEMO_NAME.into()),
                bootstrap: vec![source_addr],
                listen,
                http: (i == 0).then_some(http),
                udp_out: None,
                drop_every: None,
                upload_kbps: DEFAULT_UPLOAD_KBPS,
                stats_json: None,
                report: Some(tx),
                play_log: None,
                // Loopback: no router to ask.
                nat: crate::nat::Method::Off,
                nat_lease: crate::daemon::reach::NAT_LEASE,
            },
            stop(stop_rx.clone()),
        )));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = format!("http://{http}/ch/{DEMO_NAME}.ts");
    eprintln!("demo: channel {}", channel.to_hex());
    match opts.seconds {
        Some(secs) => {
            eprintln!("demo: open {url} in a player (e.g. ffplay, mpv, VLC); stops after {secs} s")
        }
        None => eprintln!("demo: open {url} in a player (e.g. ffplay, mpv, VLC); Ctrl-C stops"),
    }
    let started = std::time::Instant::now();
    let limit = opts.seconds.map(Duration::from_secs_f64);
    tokio::pin!(interrupted);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let remaining = limit.map(|l| l.saturating_sub(started.elapsed()));
        tokio::select! {
            _ = &mut interrupted => break,
            _ = async {
                match remaining {
                    Some(r) => tokio::time::sleep(r).await,
                    None => std::future::pending().await,
                }
            } => break,
            _ = tick.tick() => {
                if opts.live {
                    let reports: Vec<NodeReport> = watches.iter().map(|w| w.borrow().clone()).collect();
                    eprintln!("{}", live_line(started.elapsed().as_secs_f64(), &src_watch.borrow(), &reports));
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let mut per_peer = Vec::new();
    for n in nodes {
        match n.await {
            Ok(Ok(r)) => per_peer.push(r),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(DaemonError::Config(format!("a demo peer failed: {e}"))),
        }
    }
    let source = match source.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(DaemonError::Config(format!("the demo source failed: {e}"))),
    };
    let cis: Vec<f64> = per_peer.iter().map(|r| r.continuity).collect();
    let lags: Vec<f64> = per_peer.iter().filter_map(|r| r.lag_s).collect();
    Ok(DemoSummary {
        peers,
        seconds: started.elapsed().as_secs_f64(),
        channel: channel.to_hex(),
        url,
        continuity_min: cis.iter().copied().fold(f64::INFINITY, f64::min).min(1.0),
        continuity_mean: cis.iter().sum::<f64>() / cis.len().max(1) as f64,
        startup_max_s: per_peer
            .iter()
            .filter_map(|r| r.startup_s)
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s)))),
        lag_mean_s: (!lags.is_empty()).then(|| lags.iter().sum::<f64>() / lags.len() as f64),
        source,
        per_peer,
    })
}

fn live_line(t: f64, source: &NodeReport, peers: &[NodeReport]) -> String {
    let ci_min = peers.iter().map(|r| r.continuity).fold(1.0, f64::min);
    let played: u64 = peers.iter().map(|r| r.segments_played).sum();
    let missed: u64 = peers.iter().map(|r| r.segments_missed).sum();
    let partners: Vec<String> = peers.iter().map(|r| r.partners.to_string()).collect();
    let lag = peers.iter().filter_map(|r| r.lag_s).fold(0.0f64, f64::max);
    format!(
        "t={t:5.1}s source: {} segments, up {} kB | {}: continuity min {ci_min:.3}, played {played}, missed {missed}, partners [{}], lag max {lag:.1}s, {}",
        source.segments_ingested,
        source.upload_bytes / 1000,
        plural(peers.len(), "peer"),
        partners.join(" "),
        plural(peers.first().map_or(0, |r| r.players), "player"),
    )
}

/// `1 player`, `2 players`.
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
