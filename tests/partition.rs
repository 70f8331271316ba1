//! A network partition on real processes: two network namespaces joined by a bridge, the
//! source and two peers on one side, three peers on the other. One side's bridge port goes
//! down for 20 s: the source's side keeps playing, the other side plays what it holds, and
//! once the link is back every peer plays again within 10 s.
//!
//! Needs root (network namespaces, a bridge); CI runs as root. Without it the test fails,
//! saying so: it never passes without having run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolstream");
const ASSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.ts");

/// The namespaces, bridge and links, torn down when dropped. Names carry the test's pid so
/// concurrent runs do not collide.
struct Net {
    tag: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    fn ns(&self, side: char) -> String {
        format!("cs{side}{}", self.tag)
    }
    fn bridge(&self) -> String {
        format!("csbr{}", self.tag)
    }
    fn port(&self, side: char) -> String {
        format!("cs{side}b{}", self.tag)
    }

    fn setup() -> Result<Net, String> {
        let net = Net {
            tag: format!("{}", std::process::id() % 100_000),
        };
        ip(&["link", "add", &net.bridge(), "type", "bridge"])?;
        ip(&["link", "set", &net.bridge(), "up"])?;
        for (side, addr) in [('a', "10.77.0.1/24"), ('b', "10.77.0.2/24")] {
            let ns = net.ns(side);
            let inner = format!("cs{side}i{}", net.tag);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link",
                "add",
                &inner,
                "type",
                "veth",
                "peer",
                "name",
                &net.port(side),
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &net.port(side), "master", &net.bridge()])?;
            ip(&["link", "set", &net.port(side), "up"])?;
            ip(&["-n", &ns, "addr", "add", addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn link(&self, side: char, up: bool) {
        ip(&[
            "link",
            "set",
            &self.port(side),
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for side in ['a', 'b'] {
            let _ = ip(&["link", "del", &self.port(side)]);
            let _ = ip(&["netns", "del", &self.ns(side)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(ns: &str, args: &[&str], log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns, BIN])
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("start a node in a namespace");
    Proc(child)
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("coolstream-partition-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_partitioned_swarm_keeps_playing_and_reconverges_after_the_heal() {
    let net = Net::setup().unwrap_or_else(|e| {
        panic!("this test needs root to make network namespaces and a bridge: {e}")
    });
    let dir = tmpdir();
    let key = dir.join("ch.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let source_addr = "10.77.0.1:7000";
    let _source = start(
        &net.ns('a'),
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "t",
            "--input",
            &format!("file:{ASSET}?loop"),
            "--listen",
            source_addr,
        ],
        &dir.join("source.log"),
    );
    std::thread::sleep(Duration::from_secs(5));
    let mut peers = Vec::new();
    let mut logs: Vec<(char, PathBuf)> = Vec::new();
    for (k, side) in ['a', 'a', 'b', 'b', 'b'].into_iter().enumerate() {
        let listen = format!("10.77.0.{}:{}", if side == 'a' { 1 } else { 2 }, 7100 + k);
        let played = dir.join(format!("p{k}.played"));
        peers.push(start(
            &net.ns(side),
            &[
                "peer",
                "--channel",
                &id,
                "--bootstrap",
                source_addr,
                "--listen",
                &listen,
                "--play-log",
                played.to_str().unwrap(),
            ],
            &dir.join(format!("p{k}.log")),
        ));
        logs.push((side, played));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(12));
    for (_, p) in &logs {
        assert!(
            lines(p) >= 5,
            "{} is not playing before the cut",
            p.display()
        );
    }
    let at_cut: Vec<usize> = logs.iter().map(|(_, p)| lines(p)).collect();
    net.link('b', false);
    std::thread::sleep(Duration::from_secs(20));
    let at_heal: Vec<usize> = logs.iter().map(|(_, p)| lines(p)).collect();
    net.link('b', true);
    let healed = Instant::now();
    // Every peer plays a new segment again; note when each does.
    let mut back = vec![None; logs.len()];
    while healed.elapsed() < Duration::from_secs(15) && back.iter().any(|b| b.is_none()) {
        for (k, (_, p)) in logs.iter().enumerate() {
            if back[k].is_none() && lines(p) > at_heal[k] {
                back[k] = Some(healed.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let during: Vec<usize> = at_heal.iter().zip(&at_cut).map(|(h, c)| h - c).collect();
    eprintln!(
        "partition: segments played during the 20 s cut per peer (sides {:?}): {during:?}; \
         seconds from heal to the next segment played: {back:?}",
        logs.iter().map(|(s, _)| *s).collect::<String>()
    );
    for (k, (side, _)) in logs.iter().enumerate() {
        if *side == 'a' {
            assert!(
                during[k] >= 17,
                "peer {k} with the source played {}",
                during[k]
            );
        }
        let t = back[k].unwrap_or_else(|| panic!("peer {k} did not play again after the heal"));
        assert!(t <= 10.0, "peer {k} played again {t:.1} s after the heal");
    }
    drop(peers);
    let _ = std::fs::remove_dir_all(&dir);
}
