//! The `coolstream` command: parse the command line, run one subcommand.

use coolstream::sim::{Scenario, Sim, SimConfig};
use std::process::ExitCode;

const USAGE: &str = "\
coolstream: peer-to-peer live TV (DONet-style mesh) for set-top boxes and Raspberry Pi

usage:
  coolstream sim [--peers N] [--seed S] [--duration SECS] [--scenario static|churn|flash]
                 [--partners M] [--rate-kbps R] [--upload-scale F] [--loss P]
                 [--upload-mix F:SHARE,..] [--set KEY=VALUE,..]
                 [--session-mean SECS] [--crash-fraction F] [--start-seq N] [--json]
  coolstream help
";

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
                let v = args
                    .get(i + 1)
                    .ok_or_else(|| UsageError(format!("--{name} needs a value")))?;
                pairs.push((name.to_string(), Some(v.clone())));
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "sim" => cmd_sim(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(UsageError(format!("unknown command '{other}'"))),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            eprintln!("coolstream: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
