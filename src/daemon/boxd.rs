//! `coolstream run`: the set-top-box daemon. It carries a list of channels, plays one, keeps
//! the others warm, and answers the control socket.
//!
//! - **Tuned channel**: a full peer node (M partners, the configured ring, upload cap and
//!   partner limit) whose played segments feed the outputs: HTTP for players on the box, and
//!   UDP/RTP to the hardware decoder.
//! - **Standby channels**: no node at all, only a [`keep_warm`](super::warm::keep_warm) task
//!   that asks one member for its sample every 20 s (no join, no partnership, no stream: a
//!   standby box is not a member and nobody is offered it as a partner). What it learns, and
//!   whatever the tuned node hears, fills each channel's [`WarmView`](super::warm::WarmView).
//! - **Zap** (`{"cmd":"zap"}`): the tuned node leaves in the background, the outputs move to
//!   a fresh feed named after the new channel (the HTTP listener and the UDP sender stay;
//!   a player of `/ch/OLD.ts` is closed, the UDP sender splices the new channel in at an
//!   entry point), and a tuned node joins the new channel through its freshest
//!   warm members and the configured bootstrap. The old channel goes to standby. Nothing else
//!   restarts.
//! - **Supervision**: the tuned node, if it ends by itself (its bootstrap names do not resolve, a bind
//!   fails, a panic) is started again after [`RESTART_BACKOFF`]. The main loop sends systemd's
//!   watchdog ping; a runtime wedged by any task stops the pings and systemd restarts us.
//!
//! The main loop owns every piece of state here; the control socket's tasks reach it only
//! through a bounded queue ([`crate::control::REQUEST_QUEUE`]).

use super::notify::Notifier;
use super::stats::NodeReport;
use super::warm::{self, SharedView, WARM_DIALS};
use super::{bind_listener, run_peer_on, DaemonError, NodeOptions};
use crate::config::{BoxConfig, ChannelConfig};
use crate::control::server::{Call, ControlSocket};
use crate::control::{error, Request, REQUEST_QUEUE};
use crate::output::udp::UdpOut;
use crate::output::{http, udp, Channels, Feed};
use crate::proto::PeerId;
use crate::proto::Role;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The main loop's period: housekeeping, status, and the watchdog ping (more often when
/// systemd's watchdog asks for it).
pub const TICK: Duration = Duration::from_secs(1);
/// A channel node that ended by itself is started again after this long.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(5);
/// Nodes still leaving (after zaps) kept at once; past that the oldest is cut short.
pub const MAX_LEAVING: usize = 16;
/// At shutdown, nodes get this long to leave their swarms.
pub const STOP_WAIT: Duration = Duration::from_secs(3);
/// An output idle this long while its feed moves is wedged, and the watchdog is starved. Far
/// above the UDP output's longest sleep (a datagram is due within a second of its PCR).
pub const OUTPUT_WEDGED: Duration = Duration::from_secs(20);
/// Partners the tuned channel looks for (DONet's M; continuity flattens at 4 to 5).
pub const TUNED_PARTNERS: usize = 5;

type NodeTask = JoinHandle<Result<NodeReport, DaemonError>>;

/// A channel node that is running, and how to stop it (sending, or dropping the sender).
struct Running {
    stop: oneshot::Sender<()>,
    task: NodeTask,
}

struct Slot {
    cfg: ChannelConfig,
    view: SharedView,
    report: watch::Receiver<NodeReport>,
    node: Option<Running>,
    /// A standby channel's membership upkeep.
    warm_task: Option<JoinHandle<()>>,
    /// When a node that ended by itself is started again.
    retry_at: Option<tokio::time::Instant>,
}

/// The outputs that outlive zaps: the HTTP listener, and the UDP sender, which follows the
/// tuned feed through a watch (it splices the new channel in at an entry point). The HTTP
/// serving task is replaced at each zap, which closes the old channel's players.
struct Outputs {
    http: Option<std::net::TcpListener>,
    udp: Option<UdpOut>,
    max_http_clients: usize,
    http_task: Option<JoinHandle<()>>,
    udp_feed: Option<watch::Sender<Arc<Feed>>>,
    udp_task: Option<JoinHandle<()>>,
    udp_health: Arc<udp::Health>,
    /// The feed's item count when last seen, and when it last moved (the watchdog's view).
    udp_moved: Option<(u64, Instant)>,
    /// Whether the UDP output is wedged (logged once per episode).
    udp_wedged: bool,
}

impl Outputs {
    /// Points the outputs at a new, empty feed for `ch` and returns it.
    fn retune(
        &mut self,
        ch: &ChannelConfig,
        report: watch::Receiver<NodeReport>,
    ) -> Option<Arc<Feed>> {
        if let Some(t) = self.http_task.take() {
            t.abort();
        }
        if self.http.is_none() && self.udp.is_none() {
            return None;
        }
        let feed = Feed::new(&ch.name);
        if let Some(master) = &self.http {
            // A second descriptor of the same listening socket: the port never closes, and
            // connections made during the switch wait in its backlog.
            match master.try_clone().and_then(TcpListener::from_std) {
                Ok(l) => {
                    let status: http::StatusFn = Arc::new(move || vec![report.borrow().clone()]);
                    self.http_task = Some(tokio::spawn(http::serve_limited(
                        l,
                        Channels::single(feed.clone(), false),
                        status,
                        self.max_http_clients,
                    )));
                }
                Err(e) => log::error!("http output: {e}"),
            }
        }
        match (&self.udp, &self.udp_feed) {
            (Some(_), Some(tx)) => {
                let _ = tx.send(feed.clone());
            }
            (Some(o), None) => {
                let (tx, rx) = watch::channel(feed.clone());
                self.udp_feed = Some(tx);
                self.udp_task = Some(tokio::spawn(udp::run(
                    o.clone(),
                    rx,
                    self.udp_health.clone(),
                )));
            }
            _ => {}
        }
        Some(feed)
    }

    /// Starts the UDP sender again if its task ended (it ends only when its feed goes away, or
    /// by a panic where panics unwind).
    fn heal_udp(&mut self, feed: Option<&Arc<Feed>>) {
        if !self.udp_task.as_ref().is_some_and(|t| t.is_finished()) {
            return;
        }
        log::error!("udp output task ended; starting it again");
        self.udp_task = None;
        self.udp_feed = None;
        if let (Some(o), Some(f)) = (&self.udp, feed) {
            let (tx, rx) = watch::channel(f.clone());
            self.udp_feed = Some(tx);
            self.udp_task = Some(tokio::spawn(udp::run(
                o.clone(),
                rx,
                self.udp_health.clone(),
            )));
        }
    }

    /// Whether the UDP output is wedged: its feed moved within the last [`OUTPUT_WEDGED`] but
    /// the output did nothing (took no item, tried no datagram) for longer than that. A
    /// failing output is not wedged: it tries every datagram, and heals by itself.
    fn udp_wedged(&mut self, feed: Option<&Arc<Feed>>, now: Instant) -> bool {
        let (Some(_), Some(f)) = (&self.udp_task, feed) else {
            self.udp_moved = None;
            return false;
        };
        let items = f.items_published();
        let moved_at = match self.udp_moved {
            Some((n, t)) if n == items => t,
            _ => now,
        };
        self.udp_moved = Some((items, moved_at));
        let idle = self
            .udp_health
            .last_progress()
            .map_or(Duration::MAX, |p| now.saturating_duration_since(p));
        let wedged =
            now.saturating_duration_since(moved_at) < OUTPUT_WEDGED && idle > OUTPUT_WEDGED;
        if wedged && !self.udp_wedged {
            log::error!(
                "udp output made no progress for {:.0} s while its feed moves: wedged; the watchdog is no longer fed",
                idle.min(Duration::from_secs(86_400)).as_secs_f64()
            );
        }
        self.udp_wedged = wedged;
        wedged
    }

    /// Each output's state, for `ctl status` and `ctl stats`.
    fn to_json(&self, players: usize) -> Value {
        crate::output::describe(
            self.http.as_ref().and_then(|l| l.local_addr().ok()),
            self.udp.as_ref().map(|o| (o, &*self.udp_health)),
            players,
        )
    }

    fn stop(&mut self) {
        for t in [self.http_task.take(), self.udp_task.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        self.udp_feed = None;
    }
}

pub struct BoxDaemon {
    cfg: BoxConfig,
    slots: Vec<Slot>,
    tuned: Option<usize>,
    /// The tuned channel's peer port (`listen`), bound once.
    peer_listener: std::net::TcpListener,
    /// The home router's forward of the peer port, kept as long as the port is open.
    mapping: Option<super::reach::PortMapping>,
    outputs: Outputs,
    feed: Option<Arc<Feed>>,
    leaving: Vec<NodeTask>,
    started: std::time::Instant,
    last_status: String,
    /// The id a standby channel's probes carry (a box is one asker for all its channels).
    probe_id: PeerId,
    /// Frame bodies read and not yet handled, for every node of the box (the memory plan's
    /// `frames`, in KiB).
    body_budget: Arc<tokio::sync::Semaphore>,
}

/// Binds what the daemon serves on (control socket, peer port, HTTP port), starts its
/// channels, tells systemd it is ready, and runs until `shutdown` resolves.
/// `run --stats-json FILE` rewrites FILE this often (as `peer` and `source` do theirs).
pub const STATS_JSON_EVERY: Duration = Duration::from_secs(2);

/// The box daemon until `shutdown`; with `stats_json`, every channel's figures (what `ctl
/// stats` answers, without `ok`) go to that file every [`STATS_JSON_EVERY`] and at exit.
pub async fn run_box(
    cfg: BoxConfig,
    notify: Notifier,
    stats_json: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let path = cfg.control_socket.clone();
    let ctl = ControlSocket::bind(&path)
        .map_err(|e| DaemonError::Io(format!("control socket {}", path.display()), e))?;
    // The plan was checked with the config; its reservation is taken before anything else
    // allocates, so a box short of memory finds out at start.
    let plan = crate::config::memory_plan(&cfg);
    if let Err(e) = plan.check(cfg.memory_limit) {
        return Err(DaemonError::Config(e));
    }
    let reserved =
        super::memory::reserve_heap(cfg.ring_bytes as usize + super::memory::RESERVE_SLACK);
    log::info!(
        "memory: plan {} KiB of memory_limit {} KiB (ring {} KiB{}, frames {} KiB)",
        plan.total() / 1024,
        cfg.memory_limit / 1024,
        plan.ring / 1024,
        if reserved { ", reserved" } else { "" },
        plan.frames / 1024
    );
    let to_std = |l: TcpListener, what: String| l.into_std().map_err(|e| DaemonError::Io(what, e));
    let peer_listener = to_std(
        super::bind_peer_listener(cfg.listen)?,
        format!("listen {}", cfg.listen),
    )?;
    let mapping = super::reach::PortMapping::start(
        cfg.nat,
        peer_listener.local_addr().unwrap_or(cfg.listen),
        super::reach::NAT_LEASE,
    );
    let http = match cfg.http {
        Some(a) => Some(to_std(bind_listener(a)?, format!("http {a}"))?),
        None => None,
    };
    if let Some(l) = &http {
        if let Ok(a) = l.local_addr() {
            log::info!("players: http://{a}/ch/NAME.ts");
        }
    }
    let mut d = BoxDaemon {
        slots: cfg
            .channels
            .iter()
            .map(|c| Slot {
                cfg: c.clone(),
                view: SharedView::default(),
                report: watch::channel(NodeReport::default()).1,
                node: None,
                warm_task: None,
                retry_at: None,
            })
            .collect(),
        tuned: None,
        peer_listener,
        mapping: Some(mapping),
        outputs: Outputs {
            http,
            udp: cfg.udp.clone(),
            max_http_clients: cfg.max_http_clients,
            http_task: None,
            udp_feed: None,
            udp_task: None,
            udp_health: Arc::default(),
            udp_moved: None,
            udp_wedged: false,
        },
        feed: None,
        leaving: Vec::new(),
        started: std::time::Instant::now(),
        last_status: String::new(),
        probe_id: PeerId(super::random_u64()),
        body_budget: Arc::new(tokio::sync::Semaphore::new(plan.frames_kib())),
        cfg,
    };
    let first = d.cfg.initial_channel().map(|c| c.name.clone());
    for i in 0..d.slots.len() {
        if Some(&d.slots[i].cfg.name) != first.as_ref() {
            d.start_standby(i);
        }
    }
    if let Some(name) = first {
        d.zap(&name).map_err(DaemonError::Config)?;
    }
    let (calls_tx, mut calls) = mpsc::channel::<Call>(REQUEST_QUEUE);
    let server = ctl.serve(calls_tx);
    tokio::pin!(server);
    tokio::pin!(shutdown);
    d.last_status = d.status_line();
    notify.ready(&d.last_status);
    log::info!(
        "control socket {}; {} channels; {}",
        path.display(),
        d.slots.len(),
        d.last_status
    );
    let period = notify.watchdog_interval().map_or(TICK, |w| w.min(TICK));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_written: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            call = calls.recv() => {
                // The server holds a sender for as long as it runs.
                if let Some((req, reply)) = call {
                    if let Request::Stall { seconds } = req {
                        // The drill: answer, let the answer go out, then wedge the one thread
                        // the runtime has, as a hung task would. The watchdog pings stop.
                        log::warn!("stall drill: blocking the main loop for {seconds} s");
                        let _ = reply.send(json!({"ok": true, "stalling_s": seconds}));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        std::thread::sleep(Duration::from_secs(seconds));
                        continue;
                    }
                    let _ = reply.send(d.answer(req));
                }
            }
            // `serve` loops until dropped; this arm only drives it.
            _ = &mut server => {}
            _ = tick.tick() => {
                d.housekeeping().await;
                // A wedged output starves the watchdog: systemd restarts us, as for a hung loop.
                if !d.outputs.udp_wedged(d.feed.as_ref(), Instant::now()) {
                    notify.watchdog();
                }
                let line = d.status_line();
                if line != d.last_status {
                    notify.status(&line);
                    d.last_status = line;
                }
                if stats_written.is_none_or(|t| t.elapsed() >= STATS_JSON_EVERY) {
                    stats_written = Some(Instant::now());
                    d.write_stats(stats_json.as_deref());
                }
            }
        }
    }
    notify.stopping();
    log::info!("stopping");
    d.write_stats(stats_json.as_deref());
    d.stop_all().await;
    Ok(())
}

impl BoxDaemon {
    /// Every channel's figures to `path` (atomically), as `ctl stats` answers them.
    fn write_stats(&mut self, path: Option<&std::path::Path>) {
        let Some(p) = path else {
            return;
        };
        let mut doc = self.answer(Request::Stats);
        if let Some(o) = doc.as_object_mut() {
            o.remove("ok");
        }
        if let Err(e) = super::stats::write_json(p, &doc) {
            log::warn!("cannot write {}: {e}", p.display());
        }
    }

    /// Starts slot `i`'s node as the tuned one, on fresh outputs.
    fn start_tuned(&mut self, i: usize) {
        let report = watch::channel(NodeReport::default());
        self.feed = self.outputs.retune(&self.slots[i].cfg, report.1.clone());
        self.start_node(i, report);
    }

    /// Starts slot `i`'s tuned node, playing into the current feed and reporting on `report`.
    fn start_node(
        &mut self,
        i: usize,
        (report_tx, report_rx): (watch::Sender<NodeReport>, watch::Receiver<NodeReport>),
    ) {
        let listener = match self
            .peer_listener
            .try_clone()
            .and_then(TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                log::error!(
                    "channel {}: listen {}: {e}",
                    self.slots[i].cfg.name,
                    self.cfg.listen
                );
                self.slots[i].retry_at = Some(tokio::time::Instant::now() + RESTART_BACKOFF);
                return;
            }
        };
        let slot = &mut self.slots[i];
        let mut opts = NodeOptions::new(Role::Peer, slot.cfg.id);
        opts.name = slot.cfg.name.clone();
        opts.warm = Some(slot.view.clone());
        opts.upload_kbps = self.cfg.upload_kbps;
        opts.store_bytes = Some(self.cfg.ring_bytes);
        opts.body_budget = Some(self.body_budget.clone());
        let max = self.cfg.max_partners;
        opts.partners = Some((TUNED_PARTNERS.min(max), max));
        opts.feed = self.feed.clone();
        opts.report = Some(report_tx);
        opts.nat = self.mapping.as_ref().map(|m| m.status());
        slot.report = report_rx;
        let warm_addrs: Vec<SocketAddr> = warm::lock(&slot.view)
            .fresh(std::time::Instant::now(), WARM_DIALS)
            .into_iter()
            .map(super::link::to_socket_addr)
            .collect();
        let bootstrap = slot.cfg.bootstrap.clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            opts.bootstrap = resolve(warm_addrs, &bootstrap).await;
            if opts.bootstrap.is_empty() {
                return Err(DaemonError::Config(format!(
                    "no bootstrap address of {:?} resolves",
                    bootstrap
                )));
            }
            run_peer_on(opts, listener, async {
                let _ = stop_rx.await;
            })
            .await
        });
        slot.node = Some(Running {
            stop: stop_tx,
            task,
        });
        slot.retry_at = None;
    }

    /// Keeps slot `i` warm without a node (see [`warm::keep_warm`]).
    fn start_standby(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if let Some(t) = s.warm_task.take() {
            t.abort();
        }
        s.report = watch::channel(NodeReport::default()).1;
        s.warm_task = Some(tokio::spawn(warm::keep_warm(
            s.view.clone(),
            s.cfg.id,
            self.probe_id,
            s.cfg.bootstrap.clone(),
        )));
    }

    fn stop_standby(&mut self, i: usize) {
        if let Some(t) = self.slots[i].warm_task.take() {
            t.abort();
        }
    }

    /// Stops slot `i`'s node; it leaves its swarm in the background.
    fn stop_node(&mut self, i: usize) {
        if let Some(r) = self.slots[i].node.take() {
            let _ = r.stop.send(());
            self.leaving.push(r.task);
            if self.leaving.len() > MAX_LEAVING {
                self.leaving.remove(0).abort();
            }
        }
    }

    /// Tunes to `name`. Returns the previous channel's name.
    fn zap(&mut self, name: &str) -> Result<Option<String>, String> {
        let Some(i) = self.slots.iter().position(|s| s.cfg.name == name) else {
            let names: Vec<&str> = self.slots.iter().map(|s| s.cfg.name.as_str()).collect();
            return Err(format!(
                "no channel '{name}'; the channels are: {}",
                names.join(", ")
            ));
        };
        let previous = self.tuned.map(|t| self.slots[t].cfg.name.clone());
        if self.tuned == Some(i) {
            return Ok(previous);
        }
        if let Some(old) = self.tuned {
            self.stop_node(old);
        }
        self.stop_standby(i);
        self.tuned = Some(i);
        self.start_tuned(i);
        if let Some(old) = previous
            .as_ref()
            .and_then(|p| self.slots.iter().position(|s| &s.cfg.name == p))
        {
            self.start_standby(old);
        }
        log::info!(
            "tuned to {name}{}",
            previous
                .as_ref()
                .map_or(String::new(), |p| format!(" (was {p})"))
        );
        Ok(previous)
    }

    async fn housekeeping(&mut self) {
        self.leaving.retain(|t| !t.is_finished());
        self.outputs.heal_udp(self.feed.as_ref());
        let now = tokio::time::Instant::now();
        for i in 0..self.slots.len() {
            let ended = self.slots[i]
                .node
                .as_ref()
                .is_some_and(|r| r.task.is_finished());
            if ended {
                let r = self.slots[i].node.take().expect("checked just above");
                let why = match r.task.await {
                    Ok(Ok(_)) => "it stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("it failed: {e}"),
                };
                log::warn!(
                    "channel {}: {why}; starting it again in {} s",
                    self.slots[i].cfg.name,
                    RESTART_BACKOFF.as_secs()
                );
                self.slots[i].retry_at = Some(now + RESTART_BACKOFF);
            }
            if self.tuned == Some(i)
                && self.slots[i].node.is_none()
                && self.slots[i].retry_at.is_some_and(|t| t <= now)
            {
                self.start_tuned(i);
            }
        }
    }

    async fn stop_all(&mut self) {
        // The router's forward is deleted while the nodes leave (both bounded).
        let mapping = self.mapping.take().map(|m| tokio::spawn(m.finish()));
        for i in 0..self.slots.len() {
            self.stop_node(i);
            self.stop_standby(i);
        }
        self.outputs.stop();
        let until = tokio::time::Instant::now() + STOP_WAIT;
        for t in self.leaving.drain(..) {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(until, t).await.is_err() {
                abort.abort();
            }
        }
        if let Some(m) = mapping {
            let _ = m.await;
        }
    }

    fn state(&self, i: usize) -> &'static str {
        let s = &self.slots[i];
        match (&s.node, self.tuned == Some(i)) {
            (Some(_), true) if s.report.borrow().startup_s.is_some() => "playing",
            (Some(_), true) => "joining",
            (None, true) => "waiting",
            (_, false) => "standby",
        }
    }

    /// Players of the tuned channel's outputs.
    fn tuned_players(&self) -> usize {
        self.tuned
            .map_or(0, |i| self.slots[i].report.borrow().players)
    }

    fn status_line(&self) -> String {
        match self.tuned {
            None => "no channel tuned".to_string(),
            Some(i) => {
                let r = self.slots[i].report.borrow();
                let mut line = format!(
                    "tuned {} ({}, {} partners, continuity {:.2}); {} standby",
                    self.slots[i].cfg.name,
                    self.state(i),
                    r.partners,
                    r.continuity,
                    self.slots.len() - 1
                );
                let udp = self.outputs.udp_health.summary(Instant::now());
                if !udp.is_empty() {
                    line = format!("{line}; {udp}");
                }
                line
            }
        }
    }

    /// The answer to one control request.
    pub fn answer(&mut self, req: Request) -> Value {
        match req {
            Request::Status => {
                let mut v = json!({
                    "ok": true,
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_s": self.started.elapsed().as_secs_f64(),
                    "channels": self.slots.len(),
                    "tuned": self.tuned.map(|i| self.slots[i].cfg.name.clone()),
                    "http": self.outputs.http.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
                    "udp": self.cfg.udp.as_ref().map(|u| format!("{}://{}", if u.rtp { "rtp" } else { "udp" }, u.dest)),
                    "rss_kib": rss_kib(),
                });
                if let Some(i) = self.tuned {
                    let r = self.slots[i].report.borrow();
                    v["state"] = self.state(i).into();
                    v["continuity"] = r.continuity.into();
                    v["partners"] = r.partners.into();
                    v["players"] = r.players.into();
                    v["startup_s"] = r.startup_s.into();
                    v["lag_s"] = r.lag_s.into();
                    v["problem"] = r.problem.clone().into();
                }
                // The mapping belongs to the peer port, tuned channel or not.
                let nat = self.mapping.as_ref().map_or_else(Default::default, |m| {
                    super::reach::NatFigures::of(&m.status().borrow(), tokio::time::Instant::now())
                });
                let tuned = self
                    .tuned
                    .and_then(|i| self.slots[i].report.borrow().reachable);
                v["reachable"] = tuned.or(nat.external_addr.is_some().then_some(true)).into();
                v["external_addr"] = nat.external_addr.into();
                v["nat_method"] = nat.nat_method.into();
                v["nat_lease_s"] = nat.nat_lease_s.into();
                v["nat_error"] = nat.nat_error.into();
                v["outputs"] = self.outputs.to_json(self.tuned_players());
                v
            }
            Request::Channels => {
                let list: Vec<Value> = (0..self.slots.len())
                    .map(|i| {
                        let s = &self.slots[i];
                        let r = s.report.borrow();
                        json!({
                            "name": s.cfg.name,
                            "id": s.cfg.id.to_hex(),
                            "number": s.cfg.number,
                            "logo": s.cfg.logo,
                            "tuned": self.tuned == Some(i),
                            "state": self.state(i),
                            "members": if self.tuned == Some(i) { r.members } else { warm::lock(&s.view).len() },
                            "links": r.links,
                            "warm": warm::lock(&s.view).len(),
                        })
                    })
                    .collect();
                json!({"ok": true, "channels": list})
            }
            Request::Stats => {
                let list: Vec<Value> = (0..self.slots.len())
                    .map(|i| {
                        let mut v = serde_json::to_value(&*self.slots[i].report.borrow())
                            .unwrap_or_else(|_| json!({}));
                        v["name"] = self.slots[i].cfg.name.clone().into();
                        v["tuned"] = (self.tuned == Some(i)).into();
                        v["state"] = self.state(i).into();
                        v
                    })
                    .collect();
                json!({"ok": true, "channels": list, "outputs": self.outputs.to_json(self.tuned_players())})
            }
            // Handled by the main loop itself (it blocks the loop).
            Request::Stall { .. } => error("stall is handled by the main loop"),
            Request::Zap { channel } => match self.zap(&channel) {
                Ok(previous) => json!({"ok": true, "tuned": channel, "previous": previous}),
                Err(e) => error(&e),
            },
        }
    }
}

/// Bootstrap addresses: the warm members first, then the configured ones, resolved now
/// (names through the system resolver, off the runtime's thread).
async fn resolve(warm: Vec<SocketAddr>, configured: &[String]) -> Vec<SocketAddr> {
    let mut out = warm;
    for b in configured {
        match b.parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => match tokio::net::lookup_host(b.as_str()).await {
                Ok(mut it) => out.extend(it.next()),
                Err(e) => log::warn!("bootstrap {b}: {e}"),
            },
        }
    }
    out.dedup();
    out
}

/// This process's resident set, from /proc (None where there is no /proc).
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::FeedItem;

    fn outputs() -> Outputs {
        Outputs {
            http: None,
            udp: Some(UdpOut::parse("udp://127.0.0.1:9").unwrap()),
            max_http_clients: 1,
            http_task: None,
            udp_feed: None,
            udp_task: None,
            udp_health: Arc::default(),
            udp_moved: None,
            udp_wedged: false,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_output_idle_while_its_feed_moves_is_wedged_and_one_that_fails_is_not() {
        let feed = Feed::new("news");
        let mut o = outputs();
        // A task that never takes anything: the output is stuck.
        o.udp_task = Some(tokio::spawn(std::future::pending()));
        let t0 = Instant::now();
        o.udp_health.progress(t0);
        let gap = |k| FeedItem::Gap {
            seq: crate::proto::Seq(k),
        };
        let mut now = t0;
        for k in 0..40u32 {
            now = t0 + Duration::from_secs(k as u64);
            feed.publish(gap(k));
            let wedged = o.udp_wedged(Some(&feed), now);
            // Idle for more than OUTPUT_WEDGED while items keep coming: wedged.
            assert_eq!(wedged, now - t0 > OUTPUT_WEDGED, "at {k} s");
        }
        // The feed stops too (the channel is starved): nothing to send is not a wedge.
        let later = now + OUTPUT_WEDGED + Duration::from_secs(1);
        assert!(!o.udp_wedged(Some(&feed), later));
        // An output that keeps trying (failing sends count as progress) is not wedged.
        for k in 40..80u32 {
            let now = later + Duration::from_secs((k - 40) as u64);
            feed.publish(gap(k));
            o.udp_health.progress(now);
            assert!(!o.udp_wedged(Some(&feed), now), "at {k} s");
        }
        if let Some(t) = o.udp_task.take() {
            t.abort();
        }
    }
}
