//! The UDP output heals: a box whose decoder listens on a multicast group loses the group's
//! route for 4 s (as when a home network's interface goes down and comes back). Meanwhile
//! `ctl status` says the output is failing, and why; once the route is back, datagrams resume
//! within a second, and an ffmpeg that kept reading the group decodes again without being
//! restarted.
//!
//! Runs in a network namespace of its own (the route is the namespace's); needs root. CI runs
//! as root; scripts/test runs it inside `unshare -rnm` for anyone else. Without either it
//! fails, saying so: it never passes without having run.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ASSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.ts");
const GROUP: &str = "239.255.42.1";
const GROUP_PORT: u16 = 5004;

/// A network namespace with its loopback up and the multicast route on it; deleted on drop.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let ns = Ns(format!("csheal{}", std::process::id() % 100_000));
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.0])
            .stderr(Stdio::null())
            .status();
        ns.ip(&["netns", "add", &ns.0]);
        ns.ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns.route(true);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("cannot run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    fn route(&self, up: bool) {
        let verb = if up { "add" } else { "del" };
        self.ip(&["-n", &self.0, "route", verb, "224.0.0.0/4", "dev", "lo"]);
    }

    /// A process inside the namespace, its output in `log`.
    fn spawn(&self, prog: &str, args: &[&str], log: &Path) -> Child {
        let f = std::fs::File::create(log).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.0, prog])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {prog} in {}: {e}", self.0))
    }

    fn status(&self, sock: &Path) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, BIN, "ctl", "--socket"])
            .arg(sock)
            .args(["status", "--json"])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Kills a child (and waits for it) when dropped.
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn udp_output(status: &serde_json::Value) -> serde_json::Value {
    status["outputs"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["kind"] == "udp"))
        .cloned()
        .unwrap_or_default()
}

/// The arrival times (seconds since the epoch) the receiver wrote, one a line.
fn arrivals(p: &Path) -> Vec<f64> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The last `frame=` of an ffmpeg `-progress` report.
fn frames(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("frame="))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

fn epoch_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn udp_output_heals_after_its_route_comes_back() {
    let euid = effective_uid();
    assert_eq!(
        euid, 0,
        "this test needs root (a network namespace and its routes); CI runs it as root, and \
         scripts/test runs it inside `unshare -rnm` for anyone else"
    );
    require_ffmpeg();
    let dir = tmpdir("output-heal");
    let ns = Ns::new();
    let (key, id) = keygen(&dir);
    let sock = dir.join("ctl.sock");
    let cfg = dir.join("box.toml");
    std::fs::write(
        &cfg,
        format!(
            "control_socket = \"{}\"\nlisten = \"127.0.0.1:17100\"\n[outputs]\nhttp = \"\"\n\
             udp = \"udp://{GROUP}:{GROUP_PORT}?ttl=1\"\n[[channel]]\nname = \"news\"\n\
             id = \"{id}\"\nbootstrap = [\"127.0.0.1:17000\"]\n",
            sock.display()
        ),
    )
    .unwrap();
    let input = format!("file:{ASSET}?loop");
    let _source = Kill(ns.spawn(
        BIN,
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "news",
            "--input",
            &input,
            "--listen",
            "127.0.0.1:17000",
        ],
        &dir.join("source.log"),
    ));
    let _box = Kill(ns.spawn(
        BIN,
        &["run", "--config", cfg.to_str().unwrap()],
        &dir.join("box.log"),
    ));
    // A receiver that logs each datagram's arrival, and a player that keeps reading.
    let rx_log = dir.join("rx.txt");
    let recv = format!(
        "import socket, struct, time, sys\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{GROUP}', {GROUP_PORT}))\n\
         s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack('4s4s', \
         socket.inet_aton('{GROUP}'), socket.inet_aton('127.0.0.1')))\n\
         s.settimeout(0.05)\n\
         out = open(sys.argv[1], 'w', buffering=1)\n\
         t0 = time.time()\n\
         while time.time() - t0 < 90:\n\
         \x20   try:\n\
         \x20       s.recv(2000); out.write(f'{{time.time():.3f}}\\n')\n\
         \x20   except socket.timeout:\n\
         \x20       pass\n"
    );
    let _rx = Kill(ns.spawn(
        "python3",
        &["-c", &recv, rx_log.to_str().unwrap()],
        &dir.join("rx.log"),
    ));
    let progress = dir.join("ffmpeg.progress");
    let url = format!("udp://{GROUP}:{GROUP_PORT}?reuse=1");
    let _player = Kill(ns.spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            &url,
            "-map",
            "0:v:0",
            "-stats_period",
            "0.25",
            "-progress",
            progress.to_str().unwrap(),
            "-f",
            "null",
            "-",
        ],
        &dir.join("ffmpeg.log"),
    ));

    // Playing: the player decodes frames.
    wait_for(
        "the player to decode 50 frames",
        Duration::from_secs(60),
        || (frames(&progress) >= 50).then_some(()),
    );
    let before = arrivals(&rx_log).len();
    assert!(before >= 100, "only {before} datagrams before the cut");

    // The route goes for 4 s.
    ns.route(false);
    let cut = epoch_s();
    std::thread::sleep(Duration::from_secs(2));
    let st = ns.status(&sock).expect("ctl status answers during the cut");
    let udp = udp_output(&st);
    assert_eq!(udp["state"], "failing", "status during the cut: {st}");
    let why = udp["error"].as_str().unwrap_or("").to_lowercase();
    assert!(why.contains("unreachable"), "the reason given: {udp}");
    std::thread::sleep(Duration::from_secs(2));
    let frames_cut = frames(&progress);
    ns.route(true);
    let back = epoch_s();
    let back_at = Instant::now();

    // Datagrams resume within a second; the same player decodes again.
    wait_for(
        "datagrams after the route's return",
        Duration::from_secs(5),
        || arrivals(&rx_log).into_iter().find(|&t| t > back),
    );
    let rx = arrivals(&rx_log);
    let during = rx.iter().filter(|&&t| t > cut + 0.2 && t < back).count();
    let resumed = rx.iter().find(|&&t| t > back).unwrap() - back;
    eprintln!(
        "datagrams before {before}, during the cut {during}, resumed {resumed:.3} s after the route"
    );
    assert_eq!(during, 0, "datagrams arrived while there was no route");
    assert!(
        resumed <= 1.0,
        "datagrams resumed {resumed:.2} s after the route came back"
    );
    wait_for(
        "the same ffmpeg to decode 100 more frames",
        Duration::from_secs(30),
        || (frames(&progress) >= frames_cut + 100).then_some(()),
    );
    eprintln!(
        "ffmpeg decoded {} frames 8 s after the route came back ({} at the cut)",
        frames(&progress),
        frames_cut
    );
    while back_at.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = ns.status(&sock).expect("ctl status answers after the cut");
    let udp = udp_output(&st);
    assert_eq!(udp["state"], "sending", "status after the cut: {st}");
    assert!(udp["errors"].as_u64().unwrap_or(0) > 0, "{udp}");
    assert_eq!(udp["failing_episodes"], 1, "{udp}");
    let log = std::fs::read_to_string(dir.join("box.log")).unwrap();
    assert_eq!(
        log.matches("datagrams are dropped until it works again")
            .count(),
        1,
        "the episode is logged once:\n{log}"
    );
    assert!(log.contains("sending again after"), "{log}");
    remove_tmpdir(&dir);
}

/// The effective uid, from /proc (no libc call needed).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}
