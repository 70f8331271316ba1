//! A real swarm on loopback: one source fed a live TS over UDP and sixteen peer processes whose
//! uploads are capped to the default upload mix (40 % 0.5x, 30 % 1x, 20 % 2x, 10 % 4x the stream
//! rate), and a small swarm over IPv6.
//!
//! Needs ffmpeg for the live input (scripts/test installs it on Debian when run as root).

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::Duration;

/// The stream's rate: ffmpeg pads the TS to this constant mux rate.
const STREAM_KBPS: u64 = 768;
const PEERS: usize = 16;
/// The window over which continuity after startup is measured: over 100 segments, so that
/// each miss is a percent of one peer's figure.
const WINDOW: Duration = Duration::from_secs(105);
/// Settling time before the window: the sixteen joined a channel that had just begun, and the
/// segments cut in its first seconds reach some of them late (skipped by most around the
/// 8th segment), a skip sequence that can run into the moment everyone plays.
const SETTLE: Duration = Duration::from_secs(10);

/// Upload cap of peer `i`, in multiples of the stream rate: the default mix over 16 peers.
fn upload_factor(i: usize) -> f64 {
    match i * 10 / PEERS {
        0..=3 => 0.5,
        4..=6 => 1.0,
        7..=8 => 2.0,
        _ => 4.0,
    }
}

fn live_ffmpeg(udp: u16, seconds: u32) -> std::process::Child {
    Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-b:v",
            "400k",
            "-maxrate",
            "400k",
            "-bufsize",
            "400k",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "mpegts",
            "-muxrate",
            &format!("{STREAM_KBPS}k"),
        ])
        .arg(format!("udp://127.0.0.1:{udp}?pkt_size=1316"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts")
}

struct Peer {
    listen: u16,
    http: u16,
    kbps: u64,
}

fn start_peer(dir: &std::path::Path, id: &str, bootstrap: &str, i: usize, p: &Peer) -> Proc {
    Proc::start(
        &format!("peer{i}"),
        &[
            "peer",
            "--channel",
            id,
            "--bootstrap",
            bootstrap,
            "--listen",
            &format!("127.0.0.1:{}", p.listen),
            "--http",
            &format!("127.0.0.1:{}", p.http),
            "--upload-kbps",
            &p.kbps.to_string(),
            "--stats-json",
            dir.join(format!("stats{i}.json")).to_str().unwrap(),
            "--play-log",
            dir.join(format!("play{i}.log")).to_str().unwrap(),
        ],
        &dir.join(format!("peer{i}.log")),
    )
}

/// A play log (`seq len sha256` per segment handed to the player) or the source's segment
/// log (`seq len duration sha256`): seq -> (len, digest).
fn digests(
    p: &std::path::Path,
    digest_field: usize,
) -> std::collections::BTreeMap<u32, (usize, String)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                (f.get(1)?.parse().ok()?, f.get(digest_field)?.to_string()),
            ))
        })
        .collect()
}

fn played(dir: &std::path::Path, i: usize) -> Option<u64> {
    read_json(&dir.join(format!("stats{i}.json")))?["segments_played"].as_u64()
}

#[test]
fn sixteen_capped_peers_play_every_source_segment_and_a_restarted_peer_rejoins() {
    require_ffmpeg();
    let dir = tmpdir("swarm16");
    let (key, id) = keygen(&dir);
    let udp = free_udp_port();
    let sp = free_port();
    let seglog = dir.join("segments.log");
    let mut source = Proc::start(
        "source",
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "live",
            "--input",
            &format!("udp://127.0.0.1:{udp}"),
            "--listen",
            &format!("127.0.0.1:{sp}"),
            "--upload-kbps",
            &(4 * STREAM_KBPS).to_string(),
            "--segment-log",
            seglog.to_str().unwrap(),
            "--stats-json",
            dir.join("source.json").to_str().unwrap(),
        ],
        &dir.join("source.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    // Longer than the test: startup, a restart, the settling time and the window.
    let mut ffmpeg = live_ffmpeg(udp, 240);
    let bootstrap = format!("127.0.0.1:{sp}");
    let peers: Vec<Peer> = (0..PEERS)
        .map(|i| Peer {
            listen: free_port(),
            http: free_port(),
            kbps: (upload_factor(i) * STREAM_KBPS as f64) as u64,
        })
        .collect();
    let mut procs: Vec<Proc> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| start_peer(&dir, &id, &bootstrap, i, p))
        .collect();
    for i in 0..PEERS {
        wait_for(
            &format!("peer {i} to play"),
            Duration::from_secs(45),
            || (played(&dir, i)? >= 3).then_some(()),
        );
    }

    // A peer killed outright and started again on the same ports rejoins and plays.
    let victim = PEERS - 1;
    let _ = procs[victim].child.kill();
    let _ = procs[victim].child.wait();
    let _ = std::fs::remove_file(dir.join(format!("stats{victim}.json")));
    std::thread::sleep(Duration::from_secs(2));
    procs[victim] = start_peer(&dir, &id, &bootstrap, victim, &peers[victim]);
    wait_for(
        "the restarted peer to play again",
        Duration::from_secs(30),
        || (played(&dir, victim)? >= 5).then_some(()),
    );

    // Continuity after startup: segments played and missed over a window that starts once
    // everyone plays, the restarted peer included (the stats files are rewritten every few
    // seconds). By then the swarm has settled from its flash-crowd start: all sixteen joined
    // a channel that had just begun.
    let snapshot = |dir: &std::path::Path| -> Vec<(u64, u64)> {
        (0..PEERS)
            .map(|i| {
                let v = read_json(&dir.join(format!("stats{i}.json"))).unwrap();
                (
                    v["segments_played"].as_u64().unwrap(),
                    v["segments_missed"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    std::thread::sleep(SETTLE);
    let before = snapshot(&dir);
    let window_start = std::time::Instant::now();

    // Every peer plays exactly the bytes the source cut, whoever relayed them (digests of
    // every segment handed to the player against the source's log), and its HTTP player gets
    // a live TS stream (what the splicer makes of those segments is checked by tests/media.rs).
    let reads: Vec<_> = peers
        .iter()
        .map(|p| {
            let port = p.http;
            std::thread::spawn(move || {
                http_get(port, "/ch/live.ts", Duration::from_secs(8), 16 << 20)
            })
        })
        .collect();
    let bodies: Vec<(String, Vec<u8>)> = reads.into_iter().map(|t| t.join().unwrap()).collect();
    let source_log = digests(&seglog, 3);
    for (i, (head, body)) in bodies.iter().enumerate() {
        assert!(head.starts_with("HTTP/1.1 200"), "peer {i}: {head}");
        assert!(
            body.len() >= 4 * 90_000 && body.chunks(188).all(|p| p[0] == 0x47),
            "peer {i}: {} bytes of HTTP body in 8 s, or not TS-aligned",
            body.len()
        );
        let played = digests(&dir.join(format!("play{i}.log")), 2);
        assert!(
            played.len() >= 10,
            "peer {i} played {} segments",
            played.len()
        );
        for (seq, got) in &played {
            let want = source_log.get(seq).unwrap_or_else(|| {
                panic!("peer {i} played segment {seq}, which the source never cut")
            });
            assert_eq!(
                got, want,
                "peer {i}: segment {seq} differs from the source's"
            );
        }
    }

    std::thread::sleep(WINDOW.saturating_sub(window_start.elapsed()));
    let after = snapshot(&dir);

    // Everyone stops cleanly.
    let mut report = Vec::new();
    let mut window_ci = Vec::new();
    for (i, p) in procs.iter_mut().enumerate() {
        assert_eq!(p.stop(), Some(0), "peer {i} exits 0 on SIGTERM");
        let v = read_json(&dir.join(format!("stats{i}.json"))).unwrap();
        let (played, missed) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        let ci = played as f64 / (played + missed).max(1) as f64;
        window_ci.push(ci);
        report.push(format!(
            "peer {i} ({}x): continuity after startup {ci:.4} ({played} played, {missed} missed), \
             session {:.4}, startup {:.1} s, lag {:.1} s, up {} B, control {} B",
            upload_factor(i),
            v["continuity"].as_f64().unwrap(),
            v["startup_s"].as_f64().unwrap_or(-1.0),
            v["lag_s"].as_f64().unwrap_or(-1.0),
            v["upload_bytes"],
            v["control_bytes"]
        ));
        assert_eq!(v["bad_segments"].as_u64(), Some(0), "peer {i}");
        // Playback never falls further behind the source than the core's lag cap (20 s)
        // and a segment: late segments past it are skipped, not waited for.
        let lag = v["lag_s"].as_f64().unwrap();
        assert!(lag < 21.5, "peer {i}: lag {lag} s");
        // Control traffic stays a small share of the media (a dial or request loop would not).
        let control = v["control_bytes"].as_u64().unwrap() as f64;
        let payload = v["payload_bytes"].as_u64().unwrap() as f64;
        assert!(
            control < 0.05 * payload,
            "peer {i}: {control} control bytes for {payload} payload bytes"
        );
    }
    // A peer that missed in the window: what its log says of each late segment (where it
    // was when the deadline passed), so that a failure here can be read, not only seen.
    for (i, r) in report.iter_mut().enumerate() {
        if after[i].1 > before[i].1 {
            let log = std::fs::read_to_string(dir.join(format!("peer{i}.log"))).unwrap_or_default();
            for l in log
                .lines()
                .filter(|l| l.contains(" late (") || l.contains("missed its"))
            {
                r.push_str("\n    ");
                r.push_str(l);
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    // Measured over runs on a shared two-core machine: most runs every peer plays every
    // deadline after startup; about one run in three a peer capped at half the stream misses
    // 2-3 of the ~100 segments of the window (a swarm-wide hole at the same segments, or a
    // slow first minute): 0.97-0.98 for that peer, 0.993-0.995 for the swarm. The floors sit
    // at that measured spread, not above it.
    let mean = window_ci.iter().sum::<f64>() / window_ci.len() as f64;
    assert!(mean >= 0.993, "mean continuity after startup {mean:.4}");
    for (i, ci) in window_ci.iter().enumerate() {
        assert!(*ci >= 0.97, "continuity below 0.97: {}", report[i]);
    }
    assert_eq!(source.stop(), Some(0), "source exits 0 on SIGTERM");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    remove_tmpdir(&dir);
}

#[test]
fn a_swarm_forms_over_ipv6_and_peers_learn_each_other_by_gossip() {
    let dir = tmpdir("ipv6");
    let (key, id) = keygen(&dir);
    let sp = free_port();
    let asset = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.ts");
    let mut source = Proc::start(
        "source",
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "six",
            "--input",
            &format!("file:{asset}?loop"),
            "--listen",
            &format!("[::1]:{sp}"),
        ],
        &dir.join("source.log"),
    );
    let bootstrap = format!("[::1]:{sp}");
    let mut peers = Vec::new();
    let mut http = Vec::new();
    for i in 0..4 {
        let h = free_port();
        http.push(h);
        peers.push(Proc::start(
            &format!("peer{i}"),
            &[
                "peer",
                "--channel",
                &id,
                "--bootstrap",
                &bootstrap,
                "--listen",
                &format!("[::1]:{}", free_port()),
                "--http",
                &format!("127.0.0.1:{h}"),
                "--stats-json",
                dir.join(format!("stats{i}.json")).to_str().unwrap(),
            ],
            &dir.join(format!("peer{i}.log")),
        ));
    }
    // Partners beyond the source come only from membership records: IPv6 addresses that
    // travelled through joins and gossip.
    for i in 0..4 {
        wait_for(
            &format!("peer {i} to play with partners besides the source"),
            Duration::from_secs(40),
            || {
                let v = read_json(&dir.join(format!("stats{i}.json")))?;
                (v["segments_played"].as_u64()? >= 3 && v["partners"].as_u64()? >= 2).then_some(())
            },
        );
    }
    let (head, body) = http_get(http[3], "/ch/six.ts", Duration::from_secs(3), 1 << 20);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.len() > 188 && body[0] == 0x47);
    for (i, p) in peers.iter_mut().enumerate() {
        assert_eq!(p.stop(), Some(0), "peer {i} exits 0 on SIGTERM");
    }
    assert_eq!(source.stop(), Some(0));
    remove_tmpdir(&dir);
}
