//! The `coolstream` command: parse the command line, run one subcommand.

use coolstream::config::{BoxConfig, DEFAULT_CONTROL_SOCKET};
use coolstream::control::Request;
#[cfg(feature = "sim")]
use coolstream::daemon::demo::{run_demo, DemoOptions};
use coolstream::daemon::keys::ChannelKey;
use coolstream::daemon::roles::{run_peer, run_source, PeerArgs, SourceArgs};
use coolstream::daemon::{shutdown_signal, DaemonError, DEFAULT_UPLOAD_KBPS};
use coolstream::media::input::InputSpec;
use coolstream::output::udp::UdpOut;
use coolstream::proto::wire::ChannelId;
#[cfg(feature = "sim")]
use coolstream::sim::{Scenario, Sim, SimConfig};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
coolstream: peer-to-peer live TV (DONet-style mesh) for set-top boxes and Raspberry Pi

usage: coolstream COMMAND [OPTIONS]

commands:
  keygen   make a channel key (the source signs with it; its public half is the channel id)
  source   put a channel on air from an MPEG-TS input
  peer     join a channel and play it to local players (HTTP, UDP/RTP)
  run      the box daemon: channels from a config file, zapping, control socket
  ctl      talk to a running `coolstream run` (status, channels, zap, stats)
  demo     a source and a few peers on loopback, with a URL to open in a player
  sim      the deterministic swarm simulator
           (demo and sim: not in the boxes' build, which leaves out the `sim` feature)
  help     `coolstream help COMMAND` (or `COMMAND --help`) prints that command's options
  version  `coolstream --version`

Logs go to stderr (RUST_LOG=debug for more; under systemd, in journald's format).
docs/INTERFACE.md describes every command, URL and JSON field.
";

const USAGE_KEYGEN: &str = "\
usage: coolstream keygen --out FILE

Writes a new channel key to FILE (mode 0600; keep it secret) and prints the channel id
(64 hex characters) on stdout: peers and boxes tune to the channel by that id.
";

const USAGE_SOURCE: &str = "\
usage: coolstream source --key FILE --name NAME --input INPUT --listen ADDR [OPTIONS]

Puts a channel on air: reads MPEG-TS from INPUT, cuts it into signed segments and serves
them to the peers that join at ADDR.

  --key FILE           the channel key (from `coolstream keygen`)
  --name NAME          the channel name: letters, digits, '-', '_', '.'
  --input INPUT        udp://@GROUP:PORT (multicast), udp://HOST:PORT, rtp://@GROUP:PORT,
                       rtp://HOST:PORT, file:PATH (paced by PCR), file:PATH?loop, - (stdin)
  --listen ADDR        where peers connect (IP:PORT)
  --upload-kbps N      upload cap, kbit/s (default: 4 times the input's measured rate,
                       at least 3000); below 2 times it is warned about
  --segment-ms MS      segment duration (200-10000, default 1000)
  --http ADDR          also serve the channel to players here (/ch/NAME.ts, /metrics)
  --stats-json FILE    write the node's figures here every 2 s
  --segment-log FILE   one line per segment cut (seq len duration_us sha256)
";

const USAGE_PEER: &str = "\
usage: coolstream peer --channel ID --bootstrap ADDR[,ADDR..] [OPTIONS]

Joins a channel through its bootstrap nodes (the source, or any peer) and plays it.

  --channel ID         the channel id (64 hex characters, from `coolstream keygen`)
  --bootstrap ADDRS    where to join, HOST:PORT, comma-separated
  --listen ADDR        where other peers connect (default [::]:0: any port, IPv6
                       and IPv4)
  --name NAME          the name players ask for (default: learnt from the stream)
  --http ADDR          serve players here: /ch/NAME.ts, /playlist.m3u, /, /metrics
  --udp-out URL        send the stream to udp://HOST:PORT or rtp://HOST:PORT
                       [?ttl=N&iface=ADDR] (a hardware decoder, multicast or unicast)
  --upload-kbps N      upload cap, kbit/s (default 3000)
  --nat METHOD         ask the home router to forward the listen port: auto, upnp,
                       pcp, natpmp or off (default auto)
  --stats-json FILE    write the node's figures here every 2 s
";

const USAGE_RUN: &str = "\
usage: coolstream run [--config FILE] [OPTIONS]

The box daemon. The TOML file (see board/*/coolstream.toml) lists channels, outputs and
limits; flags override it. Without a file: no channels, HTTP on 127.0.0.1:8080.

  --config FILE          the configuration file
  --control-socket PATH  where `coolstream ctl` talks to it
                         (default /run/coolstream/control.sock)
  --log-level LEVEL      error, warn, info, debug or trace
  --listen ADDR          where peers reach the tuned channel
  --nat METHOD           ask the home router to forward the listen port: auto, upnp,
                         pcp, natpmp or off
  --http ADDR            players' HTTP output (\"\" for none)
  --udp-out URL          udp://HOST:PORT or rtp://HOST:PORT[?ttl=N&iface=ADDR] (\"\" for none)
  --upload-kbps N        upload cap, kbit/s
  --ring-bytes N         the tuned channel's segment store, bytes
  --tune NAME            the channel played at start (default: the first)
  --stats-json FILE      write every channel's figures here every 2 s (as `ctl stats`)
";

const USAGE_CTL: &str = "\
usage: coolstream ctl [--socket PATH] [--json] status|channels|zap NAME|stats

Asks a running `coolstream run` over its control socket.

  status       the tuned channel, its state, continuity, partners, players
  channels     every configured channel
  zap NAME     tune to channel NAME
  stats        every channel's figures
  --socket PATH  the control socket (default /run/coolstream/control.sock)
  --json         print the daemon's JSON answer as it is
  (also `ctl stall [SECONDS]`: a watchdog drill that wedges the daemon)
";

const USAGE_DEMO: &str = "\
usage: coolstream demo [--peers N] [--seconds S] [--json]

Runs a source looping a bundled 8 s test stream and N peers on loopback, and prints the URL
to open in a player (ffplay, mpv or VLC: install one). Runs until Ctrl-C, or S seconds.

  --peers N      peers to run (1-32, default 4)
  --seconds S    stop after S seconds and print a summary
  --json         the summary as one JSON object on stdout
";

const USAGE_SIM: &str = "\
usage: coolstream sim [OPTIONS]

The deterministic simulator: a whole swarm on one virtual clock.

  --peers N              peers (default 100)
  --seed S               random seed (default 1; same seed, same run)
  --duration SECS        simulated seconds (default 120)
  --scenario NAME        static (default), churn or flash
  --partners M           partners each peer seeks (default 5)
  --rate-kbps R          stream rate (default 768)
  --upload-scale F       multiply every peer's upload
  --upload-mix F:SHARE,..  upload multiples of the stream rate and their shares
  --loss P               packet loss on every path, [0, 0.5)
  --session-mean SECS    mean session length (churn)
  --crash-fraction F     share of departures that are crashes
  --start-seq N          first segment number
  --nat-fraction F       share of peers behind a NAT nobody can dial (default 0.6)
  --punch on|off         undialable peers meet by hole punching (default on)
  --punchable F          share of NATs a hole punch gets through (default 0.8)
  --set KEY=VALUE,..     core settings (see docs/SIMULATION.md)
  --json                 the summary as one JSON object on stdout
";

/// The usage of one command, for `help CMD`, `CMD --help` and usage errors.
fn usage_of(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "keygen" => USAGE_KEYGEN,
        "source" => USAGE_SOURCE,
        "peer" => USAGE_PEER,
        "run" => USAGE_RUN,
        "ctl" => USAGE_CTL,
        "demo" => USAGE_DEMO,
        "sim" => USAGE_SIM,
        _ => return None,
    })
}

/// A command-line error: what was wrong, shown with the usage.
#[derive(Debug)]
struct UsageError(String);

/// Flags of one subcommand, `--name value` or `--name=value`, and bare switches.
struct Flags {
    pairs: Vec<(String, Option<String>)>,
}

impl Flags {
    fn parse(args: &[String], switches: &[&str]) -> Result<Flags, UsageError> {
        let mut pairs = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            let Some(name) = a.strip_prefix("--") else {
                return Err(UsageError(format!("unexpected argument '{a}'")));
            };
            if let Some((n, v)) = name.split_once('=') {
                pairs.push((n.to_string(), Some(v.to_string())));
            } else if switches.contains(&name) {
                pairs.push((name.to_string(), None));
            } else {
                // A missing value is reported when the flag is read, after unknown flags.
                pairs.push((name.to_string(), args.get(i + 1).cloned()));
                i += 1;
            }
            i += 1;
        }
        Ok(Flags { pairs })
    }

    fn check_known(&self, known: &[&str]) -> Result<(), UsageError> {
        for (n, _) in &self.pairs {
            if !known.contains(&n.as_str()) {
                return Err(UsageError(format!("unknown option --{n}")));
            }
        }
        Ok(())
    }

    // Only `sim` and `demo` have switches.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    fn switch(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, UsageError> {
        match self.pairs.iter().rev().find(|(n, _)| n == name) {
            None => Ok(default),
            Some((_, None)) => Err(UsageError(format!("--{name} needs a value"))),
            Some((_, Some(v))) => v
                .parse()
                .map_err(|_| UsageError(format!("--{name}: cannot read '{v}'"))),
        }
    }
}

#[cfg(feature = "sim")]
/// `0.5:0.4,1:0.3,...`: upload multiples of the stream rate and their shares of peers.
fn parse_mix(s: &str) -> Result<Vec<(f64, f64)>, UsageError> {
    let bad = || UsageError(format!("--upload-mix: '{s}' is not a list of FACTOR:SHARE"));
    let mut mix = Vec::new();
    for part in s.split(',') {
        let (f, p) = part.split_once(':').ok_or_else(bad)?;
        let f: f64 = f.trim().parse().map_err(|_| bad())?;
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(f > 0.0 && f <= 100.0 && p > 0.0) {
            return Err(bad());
        }
        mix.push((f, p));
    }
    Ok(mix)
}

#[cfg(feature = "sim")]
fn cmd_sim(args: &[String]) -> Result<ExitCode, UsageError> {
    let f = Flags::parse(args, &["json"])?;
    f.check_known(&[
        "peers",
        "seed",
        "duration",
        "scenario",
        "partners",
        "rate-kbps",
        "upload-scale",
        "upload-mix",
        "loss",
        "session-mean",
        "crash-fraction",
        "start-seq",
        "nat-fraction",
        "punch",
        "punchable",
        "set",
        "json",
    ])?;
    let d = SimConfig::default();
    let scenario_name: String = f.get("scenario", "static".to_string())?;
    let scenario = Scenario::parse(&scenario_name).ok_or_else(|| {
        UsageError(format!(
            "--scenario: '{scenario_name}' is not one of static, churn, flash"
        ))
    })?;
    let upload_mix = match f.get::<String>("upload-mix", String::new())? {
        m if m.is_empty() => d.upload_mix.clone(),
        m => parse_mix(&m)?,
    };
    let cfg = SimConfig {
        upload_mix,
        peers: f.get("peers", d.peers)?,
        seed: f.get("seed", d.seed)?,
        duration_s: f.get("duration", d.duration_s)?,
        scenario,
        partners: f.get("partners", d.partners)?,
        rate_kbps: f.get("rate-kbps", d.rate_kbps)?,
        upload_scale: f.get("upload-scale", d.upload_scale)?,
        loss: f.get("loss", d.loss)?,
        mean_session_s: f.get("session-mean", d.mean_session_s)?,
        crash_fraction: f.get("crash-fraction", d.crash_fraction)?,
        start_seq: f.get("start-seq", d.start_seq)?,
        nat_fraction: f.get("nat-fraction", d.nat_fraction)?,
        punch: match f.get("punch", String::from("on"))?.as_str() {
            "on" => true,
            "off" => false,
            other => return Err(UsageError(format!("--punch: '{other}' is not on or off"))),
        },
        punchable: f.get("punchable", d.punchable)?,
        progress: true,
        ..d
    };
    let mut settings = Vec::new();
    for (n, v) in &f.pairs {
        if n == "set" {
            let v = v.as_deref().unwrap_or("");
            for kv in v.split(',').filter(|x| !x.is_empty()) {
                let (k, val) = kv
                    .split_once('=')
                    .ok_or_else(|| UsageError(format!("--set: '{kv}' is not KEY=VALUE")))?;
                settings.push((k.trim().to_string(), val.trim().to_string()));
            }
        }
    }
    let cfg = SimConfig { settings, ..cfg };
    cfg.check_settings()
        .map_err(|e| UsageError(format!("--set: {e}")))?;
    let json = f.switch("json");
    if cfg.peers == 0 || cfg.peers >= coolstream::sim::MAX_NODES / 4 {
        return Err(UsageError("--peers must be between 1 and 4,000,000".into()));
    }
    if !(cfg.duration_s > 0.0 && cfg.duration_s <= 86_400.0) {
        return Err(UsageError(
            "--duration must be in (0, 86400] seconds".into(),
        ));
    }
    if cfg.partners == 0 || cfg.partners > 32 {
        return Err(UsageError("--partners must be between 1 and 32".into()));
    }
    if cfg.rate_kbps < 8 || cfg.rate_kbps > 100_000 {
        return Err(UsageError(
            "--rate-kbps must be between 8 and 100000".into(),
        ));
    }
    if !(cfg.upload_scale > 0.0 && cfg.upload_scale <= 100.0) {
        return Err(UsageError("--upload-scale must be in (0, 100]".into()));
    }
    if !(0.0..0.5).contains(&cfg.loss) {
        return Err(UsageError("--loss must be in [0, 0.5)".into()));
    }
    if !(0.0..=1.0).contains(&cfg.nat_fraction) || !(0.0..=1.0).contains(&cfg.punchable) {
        return Err(UsageError(
            "--nat-fraction and --punchable must be in [0, 1]".into(),
        ));
    }
    if !(0.0..=1.0).contains(&cfg.crash_fraction) || cfg.mean_session_s <= 0.0 {
        return Err(UsageError(
            "--crash-fraction must be in [0, 1] and --session-mean positive".into(),
        ));
    }
    let progress = cfg.peers as f64 * cfg.duration_s > 20_000.0;
    let summary = Sim::new(SimConfig { progress, ..cfg }).run();
    if json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("a summary of numbers and strings serializes")
        );
    } else {
        println!(
            "{} peers, {} scenario, {:.0} s, seed {}: continuity mean {:.4} p5 {:.4}, startup p50/p95 {:.2}/{:.2} s, lag p50/p95 {:.2}/{:.2} s, overhead {:.4}, source upload {:.2}x, {:.1} s wall",
            summary.peers,
            summary.scenario,
            summary.duration_s,
            summary.seed,
            summary.continuity_mean,
            summary.continuity_p5,
            summary.startup_p50_s,
            summary.startup_p95_s,
            summary.lag_p50_s,
            summary.lag_p95_s,
            summary.overhead,
            summary.source_upload_ratio,
            summary.wall_s
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A runtime for one node or the demo: one thread suits a one- to four-core box.
fn runtime() -> Result<tokio::runtime::Runtime, UsageError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))
}

fn daemon_result<T>(r: Result<T, DaemonError>) -> Result<ExitCode, UsageError> {
    match r {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("coolstream: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn required(f: &Flags, name: &str) -> Result<String, UsageError> {
    let v: String = f.get(name, String::new())?;
    if v.is_empty() {
        return Err(UsageError(format!("--{name} is required")));
    }
    Ok(v)
}

/// An address, by number or by name (names need the system resolver).
fn parse_addr(flag: &str, s: &str) -> Result<SocketAddr, UsageError> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| UsageError(format!("--{flag}: cannot resolve '{s}' (want HOST:PORT)")))
}

fn optional_path(f: &Flags, name: &str) -> Result<Option<PathBuf>, UsageError> {
    let v: String = f.get(name, String::new())?;
    Ok((!v.is_empty()).then(|| PathBuf::from(v)))
}

fn upload_kbps(f: &Flags, default: u64) -> Result<u64, UsageError> {
    if default == 0 && !f.pairs.iter().any(|(n, _)| n == "upload-kbps") {
        return Ok(0);
    }
    let v: u64 = f.get("upload-kbps", default)?;
    if !(64..=10_000_000).contains(&v) {
        return Err(UsageError(
            "--upload-kbps must be between 64 and 10000000".into(),
        ));
    }
    Ok(v)
}

fn cmd_keygen(args: &[String]) -> Result<ExitCode, UsageError> {
    let f = Flags::parse(args, &[])?;
    f.check_known(&["out"])?;
    let out = PathBuf::from(required(&f, "out")?);
    let key = match ChannelKey::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("coolstream: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(e) = key.save(&out) {
        eprintln!(
            "coolstream keygen: cannot write the channel key {}: {e}",
            out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "wrote {} (keep it secret); the channel id is:",
        out.display()
    );
    println!("{}", key.channel().to_hex());
    Ok(ExitCode::SUCCESS)
}

fn cmd_source(args: &[String]) -> Result<ExitCode, UsageError> {
    let f = Flags::parse(args, &[])?;
    f.check_known(&[
        "key",
        "name",
        "input",
        "listen",
        "upload-kbps",
        "segment-ms",
        "http",
        "stats-json",
        "segment-log",
    ])?;
    let key_path = PathBuf::from(required(&f, "key")?);
    let name = required(&f, "name")?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(UsageError(
            "--name: letters, digits, '-', '_' and '.' only".into(),
        ));
    }
    let input = InputSpec::parse(&required(&f, "input")?)
        .map_err(|e| UsageError(format!("--input: {e}")))?;
    let listen = parse_addr("listen", &required(&f, "listen")?)?;
    let segment_ms: u64 = f.get("segment-ms", 1000)?;
    if !(200..=10_000).contains(&segment_ms) {
        return Err(UsageError(
            "--segment-ms must be between 200 and 10000".into(),
        ));
    }
    let http = match f.get::<String>("http", String::new())? {
        s if s.is_empty() => None,
        s => Some(parse_addr("http", &s)?),
    };
    let key = match ChannelKey::load(&key_path) {
        Ok(k) => k,
        Err(e) => {
            let hint = match &e {
                coolstream::daemon::keys::KeyError::Io(io)
                    if io.kind() == std::io::ErrorKind::NotFound =>
                {
                    " (make one with `coolstream keygen --out FILE`)"
                }
                _ => "",
            };
            eprintln!(
                "coolstream source: cannot use the channel key {}: {e}{hint}",
                key_path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let args = SourceArgs {
        key,
        name,
        input,
        listen,
        // 0: follow the input's measured rate.
        upload_kbps: upload_kbps(&f, 0)?,
        segment_ms,
        segment_log: optional_path(&f, "segment-log")?,
        stats_json: optional_path(&f, "stats-json")?,
        http,
        report: None,
    };
    let rt = runtime()?;
    daemon_result(rt.block_on(run_source(args, shutdown_signal())))
}

fn cmd_peer(args: &[String]) -> Result<ExitCode, UsageError> {
    let f = Flags::parse(args, &[])?;
    f.check_known(&[
        "channel",
        "bootstrap",
        "listen",
        "name",
        "http",
        "udp-out",
        "upload-kbps",
        "stats-json",
        "drop-every",
        "play-log",
        "nat",
        "nat-lease-s",
    ])?;
    let channel = ChannelId::from_hex(&required(&f, "channel")?)
        .ok_or_else(|| UsageError("--channel: expected 64 hex characters".into()))?;
    let mut bootstrap = Vec::new();
    for a in required(&f, "bootstrap")?
        .split(',')
        .filter(|a| !a.is_empty())
    {
        bootstrap.push(parse_addr("bootstrap", a.trim())?);
    }
    let listen = match f.get::<String>("listen", String::new())? {
        // Any port, IPv6 and IPv4 both.
        s if s.is_empty() => "[::]:0".parse().expect("a literal address"),
        s => parse_addr("listen", &s)?,
    };
    let http = match f.get::<String>("http", String::new())? {
        s if s.is_empty() => None,
        s => Some(parse_addr("http", &s)?),
    };
    let udp_out = match f.get::<String>("udp-out", String::new())? {
        s if s.is_empty() => None,
        s => Some(UdpOut::parse(&s).map_err(|e| UsageError(format!("--udp-out: {e}")))?),
    };
    let name = match f.get::<String>("name", String::new())? {
        s if s.is_empty() => None,
        s => Some(s),
    };
    let args = PeerArgs {
        channel,
        name,
        bootstrap,
        listen,
        http,
        udp_out,
        // Fault injection for tests (not in the usage text): every Nth segment withheld.
        drop_every: match f.get::<u32>("drop-every", 0)? {
            0 => None,
            n => Some(n),
        },
        upload_kbps: upload_kbps(&f, DEFAULT_UPLOAD_KBPS)?,
        stats_json: optional_path(&f, "stats-json")?,
        report: None,
        play_log: optional_path(&f, "play-log")?,
        nat: f
            .get::<String>("nat", "auto".into())?
            .parse()
            .map_err(|e| UsageError(format!("--nat: {e}")))?,
        // For tests (not in the usage text): a lease shorter than the run, to see it renewed.
        nat_lease: match f.get::<u64>("nat-lease-s", 0)? {
            0 => coolstream::daemon::reach::NAT_LEASE,
            s if s <= 86_400 => std::time::Duration::from_secs(s),
            _ => return Err(UsageError("--nat-lease-s must be at most 86400".into())),
        },
    };
    let rt = runtime()?;
    daemon_result(rt.block_on(run_peer(args, shutdown_signal())))
}

#[cfg(feature = "sim")]
fn cmd_demo(args: &[String]) -> Result<ExitCode, UsageError> {
    let f = Flags::parse(args, &["json"])?;
    f.check_known(&["peers", "seconds", "json"])?;
    let peers: usize = f.get("peers", 4)?;
    if peers == 0 || peers > coolstream::daemon::demo::MAX_DEMO_PEERS {
        return Err(UsageError(format!(
            "--peers must be between 1 and {}",
            coolstream::daemon::demo::MAX_DEMO_PEERS
        )));
    }
    let seconds: f64 = f.get("seconds", 0.0)?;
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(UsageError("--seconds must be in [0, 86400]".into()));
    }
    let json = f.switch("json");
    let opts = DemoOptions {
        peers,
        seconds: (seconds > 0.0).then_some(seconds),
        live: true,
    };
    let rt = runtime()?;
    match rt.block_on(run_demo(opts, shutdown_signal())) {
        Ok(s) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&s).expect("a summary of numbers and strings serializes")
                );
            } else {
                println!(
                    "{} peers, {:.0} s: continuity min {:.3} mean {:.3}, startup max {:.2} s, lag mean {:.2} s",
                    s.peers,
                    s.seconds,
                    s.continuity_min,
                    s.continuity_mean,
                    s.startup_max_s.unwrap_or(f64::NAN),
                    s.lag_mean_s.unwrap_or(f64::NAN)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("coolstream: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn cmd_run(args: &[String]) -> Result<ExitCode, UsageError> {
    let f = Flags::parse(args, &[])?;
    let mut known = vec!["config", "stats-json"];
    known.extend_from_slice(BoxConfig::FLAGS);
    f.check_known(&known)?;
    let loaded = match optional_path(&f, "config")? {
        Some(p) => BoxConfig::load_all(&p),
        None => Ok(BoxConfig::default()),
    };
    let mut cfg = match loaded {
        Ok(c) => c,
        Err(errors) => {
            // Every fault of the file, in file order, so that one edit fixes them all.
            for e in &errors {
                eprintln!("coolstream run: {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let stats_json = optional_path(&f, "stats-json")?;
    for (name, value) in &f.pairs {
        if name == "config" || name == "stats-json" {
            continue;
        }
        let Some(value) = value else {
            return Err(UsageError(format!("--{name} needs a value")));
        };
        if let Err(e) = cfg.set_flag(name, value) {
            eprintln!("coolstream: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    coolstream::daemon::logging::init(cfg.log_level.filter());
    let notify = coolstream::daemon::notify::Notifier::from_env();
    let rt = runtime()?;
    daemon_result(rt.block_on(coolstream::daemon::boxd::run_box(
        cfg,
        notify,
        stats_json,
        shutdown_signal(),
    )))
}

fn cmd_ctl(args: &[String]) -> Result<ExitCode, UsageError> {
    let mut socket = PathBuf::from(DEFAULT_CONTROL_SOCKET);
    let mut json = false;
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--socket" => {
                socket = PathBuf::from(
                    it.next()
                        .ok_or_else(|| UsageError("--socket needs a value".into()))?,
                )
            }
            s if s.starts_with("--socket=") => socket = PathBuf::from(&s["--socket=".len()..]),
            s if s.starts_with("--") => return Err(UsageError(format!("unknown option {s}"))),
            w => words.push(w.to_string()),
        }
    }
    let req = match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["status"] => Request::Status,
        ["channels"] => Request::Channels,
        ["stats"] => Request::Stats,
        ["zap", name] => Request::Zap {
            channel: name.to_string(),
        },
        ["zap"] => return Err(UsageError("ctl zap needs a channel name".into())),
        ["stall"] => Request::Stall {
            seconds: coolstream::control::STALL_DEFAULT_S,
        },
        ["stall", s] => Request::Stall {
            seconds: s
                .parse()
                .map_err(|_| UsageError(format!("ctl stall: '{s}' is not a number of seconds")))?,
        },
        _ => {
            return Err(UsageError(
                "ctl wants one of: status, channels, zap NAME, stats".into(),
            ))
        }
    };
    let answer = match coolstream::control::client::call(&socket, &req) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("coolstream ctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let ok = answer["ok"] == true;
    if json {
        println!("{answer}");
    } else if ok {
        print!("{}", coolstream::control::client::render(&req, &answer));
    }
    if !ok {
        let e = answer["error"].as_str().unwrap_or("the daemon refused");
        eprintln!("coolstream ctl: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The simulator reads hundreds of megabytes of node state at random, one event here, the
/// next on another node: with 4 KiB pages most of those reads also miss the TLB. glibc's
/// malloc backs its heap with transparent huge pages when asked to at process start
/// (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc 2.35 on; ignored elsewhere), so `sim` runs
/// itself again once with that set (10-20 per cent less CPU at 10,000 peers). Only the memory
/// layout changes, never what is simulated. Setting `COOLSTREAM_SIM_SMALL_PAGES` turns it off.
/// Only on x86_64, where simulations of that size run: an ARM binary run by qemu-user (as the
/// cross tests do) would be run again without qemu's sysroot, and fail to start.
#[cfg(feature = "sim")]
fn sim_on_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        use std::os::unix::process::CommandExt;
        const TUNABLE: &str = "glibc.malloc.hugetlb";
        const MARK: &str = "COOLSTREAM_SIM_SMALL_PAGES";
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os(MARK).is_some() || tunables.contains(TUNABLE) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let tunables = if tunables.is_empty() {
            format!("{TUNABLE}=1")
        } else {
            format!("{tunables}:{TUNABLE}=1")
        };
        // Only returns if the exec failed: then run as we are.
        let _ = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", tunables)
            .exec();
    }
}

/// `sim` and `demo` in a build without the `sim` feature (the boxes' build): said plainly.
#[cfg(not(feature = "sim"))]
fn left_out(cmd: &str) -> Result<ExitCode, UsageError> {
    eprintln!(
        "coolstream {cmd}: this build leaves out the simulator and the demo (a box build, made \
         without the `sim` feature); run `coolstream {cmd}` from a desktop build \
         (`cargo build --release`)"
    );
    Ok(ExitCode::from(2))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    // `CMD --help`, `CMD -h`, `help CMD`: that command's usage, on stdout, exit 0.
    if let Some(u) = usage_of(cmd) {
        if rest.iter().any(|a| a == "--help" || a == "-h") {
            print!("{u}");
            return ExitCode::SUCCESS;
        }
    }
    // `run` starts logging once its config has said at which level.
    if cmd != "run" {
        coolstream::daemon::logging::init(log::LevelFilter::Info);
    }
    let result = match cmd.as_str() {
        #[cfg(feature = "sim")]
        "sim" => {
            sim_on_huge_pages();
            cmd_sim(rest)
        }
        #[cfg(feature = "sim")]
        "demo" => cmd_demo(rest),
        #[cfg(not(feature = "sim"))]
        "sim" | "demo" => left_out(cmd),
        "keygen" => cmd_keygen(rest),
        "source" => cmd_source(rest),
        "peer" => cmd_peer(rest),
        "run" => cmd_run(rest),
        "ctl" => cmd_ctl(rest),
        "--version" | "-V" | "version" => {
            println!("coolstream {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "help" | "--help" | "-h" => match rest.first() {
            None => {
                print!("{USAGE}");
                Ok(ExitCode::SUCCESS)
            }
            Some(c) => match usage_of(c) {
                Some(u) => {
                    print!("{u}");
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(UsageError(format!("no command '{c}'"))),
            },
        },
        other => Err(UsageError(format!("unknown command '{other}'"))),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            // The one error, and where the usage is: not the whole usage after it.
            match usage_of(cmd) {
                Some(_) => eprintln!(
                    "coolstream {cmd}: {msg}\nRun 'coolstream {cmd} --help' for its options."
                ),
                None => eprintln!("coolstream: {msg}\nRun 'coolstream help' for the commands."),
            }
            ExitCode::from(2)
        }
    }
}
