//! End-to-end tests of the networked daemon: real processes on loopback.
//!
//! The stream test needs ffmpeg (to make a live TS over UDP); without it the test fails with a
//! message saying so (`scripts/test` installs it on Debian when run as root).

use coolstream::proto::wire::{
    decode_body, encode, frame_len, ByeReason, ChannelId, Control, Hello, Message, PeerId, Role,
    SegmentBody, FRAME_PREFIX_LEN, MAGIC, MAX_FRAME_LEN, VERSION,
};
use coolstream::proto::{Segment, Seq};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn a_source_fed_over_udp_reaches_peers_and_their_players_byte_for_byte() {
    require_ffmpeg();
    let dir = tmpdir("stream");
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
            "test",
            "--input",
            &format!("udp://127.0.0.1:{udp}"),
            "--listen",
            &format!("127.0.0.1:{sp}"),
            "--segment-log",
            seglog.to_str().unwrap(),
        ],
        &dir.join("source.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    // A live feed: ffmpeg encodes a test pattern in real time and sends TS over UDP.
    let mut ffmpeg = Command::new("ffmpeg")
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
            "40",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-b:v",
            "300k",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "48k",
            "-f",
            "mpegts",
        ])
        .arg(format!("udp://127.0.0.1:{udp}?pkt_size=1316"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts");
    let mut peers = Vec::new();
    let mut https = Vec::new();
    for i in 0..3 {
        let p = free_port();
        let h = free_port();
        https.push(h);
        peers.push(Proc::start(
            &format!("peer{i}"),
            &[
                "peer",
                "--channel",
                &id,
                "--bootstrap",
                &format!("127.0.0.1:{sp}"),
                "--listen",
                &format!("127.0.0.1:{p}"),
                "--http",
                &format!("127.0.0.1:{h}"),
                "--stats-json",
                dir.join(format!("stats{i}.json")).to_str().unwrap(),
            ],
            &dir.join(format!("peer{i}.log")),
        ));
    }
    // Every peer plays.
    for i in 0..3 {
        wait_for(
            &format!("peer {i} to play"),
            Duration::from_secs(40),
            || {
                let v = read_json(&dir.join(format!("stats{i}.json")))?;
                (v["segments_played"].as_u64()? >= 2).then_some(())
            },
        );
    }
    // A player on the last peer gets whole source segments, back to back.
    let (head, body) = http_get(https[2], "/ch/test.ts", Duration::from_secs(6), 4 << 20);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("video/mp2t"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let log = segment_log(&seglog);
    let n = whole_segments(&body, &log);
    assert!(
        n >= 3,
        "only {n} whole source segments at the start of {} HTTP bytes ({} segments logged)",
        body.len(),
        log.len()
    );
    assert_eq!(body[0], 0x47, "the stream starts on a TS packet");
    // The playlist and the index answer too.
    let (head, body) = http_get(https[0], "/playlist.m3u", Duration::from_secs(2), 1 << 16);
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("audio/x-mpegurl"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).starts_with("#EXTM3U"));
    let (head, _) = http_get(https[0], "/", Duration::from_secs(2), 1 << 16);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = http_get(https[0], "/nothing", Duration::from_secs(2), 1 << 16);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Graceful stops, and the stats written at exit.
    for (i, p) in peers.iter_mut().enumerate() {
        assert_eq!(p.stop(), Some(0), "peer {i} exits 0 on SIGTERM");
        let v = read_json(&dir.join(format!("stats{i}.json"))).unwrap();
        for k in [
            "continuity",
            "startup_s",
            "lag_s",
            "partners",
            "segments_played",
            "segments_missed",
            "payload_bytes",
            "control_bytes",
            "upload_bytes",
            "download_bytes",
        ] {
            assert!(!v[k].is_null(), "stats lack {k}: {v}");
        }
        assert!(v["continuity"].as_f64().unwrap() > 0.5, "{v}");
        assert!(v["download_bytes"].as_u64().unwrap() > 0);
        assert_eq!(v["bad_segments"].as_u64(), Some(0));
        let lag = v["lag_s"].as_f64().unwrap();
        assert!(lag > 0.0 && lag < 20.0, "lag {lag}");
    }
    assert_eq!(source.stop(), Some(0), "source exits 0 on SIGTERM");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    common::remove_tmpdir(&dir);
}

fn read_msg(s: &mut TcpStream) -> Option<Message<coolstream::proto::wire::SharedBody>> {
    let mut prefix = [0u8; FRAME_PREFIX_LEN];
    s.read_exact(&mut prefix).ok()?;
    let len = frame_len(prefix, MAX_FRAME_LEN).ok()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    decode_body(&body).ok()
}

fn send_msg(s: &mut TcpStream, m: &Message<coolstream::proto::wire::SharedBody>) {
    let mut out = Vec::new();
    encode(m, &mut out).unwrap();
    s.write_all(&out).unwrap();
}

fn hello(channel: ChannelId) -> Message<coolstream::proto::wire::SharedBody> {
    Message::Ctl(Control::Hello(Hello {
        magic: MAGIC,
        version: VERSION,
        channel,
        peer_id: PeerId(77),
        listen_port: 9,
        role: Role::Peer,
        upload_kbps: 1000,
    }))
}

/// Connects once the source is on air (it opens its port after its pre-roll).
fn connect(port: u16) -> TcpStream {
    let s = wait_for("the source to accept", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn strangers_are_refused_wrong_channel_and_forged_segments_cost_the_link() {
    let dir = tmpdir("refuse");
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
            "t",
            "--input",
            &format!("file:{asset}?loop"),
            "--listen",
            &format!("127.0.0.1:{sp}"),
        ],
        &dir.join("source.log"),
    );
    // Another channel's hello gets a bye saying why, then the link closes.
    let mut s = connect(sp);
    send_msg(&mut s, &hello(ChannelId([9; 32])));
    match read_msg(&mut s) {
        Some(Message::Ctl(Control::Bye(ByeReason::WrongChannel))) => {}
        other => panic!("expected Bye(WrongChannel), got {other:?}"),
    }
    assert!(read_msg(&mut s).is_none(), "the link closes after the bye");

    // The right channel, then a segment the source never signed: the link is closed.
    let channel = ChannelId::from_hex(&id).unwrap();
    let mut s = connect(sp);
    send_msg(&mut s, &hello(channel));
    let forged = Message::Segment(Segment {
        seq: Seq(1),
        origin_us: 1,
        duration_us: 1_000_000,
        flags: 0,
        payload: Arc::new(SegmentBody {
            hashes: vec![[1; 16]],
            signature: [[3; 32]; 2],
            data: vec![0x47; 188 * 4],
            growing: None,
        }),
    });
    send_msg(&mut s, &forged);
    let until = Instant::now() + Duration::from_secs(5);
    let mut closed = false;
    while Instant::now() < until {
        match read_msg(&mut s) {
            Some(_) => continue, // its hello, haves
            None => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a forged segment closes the link");

    // An oversized length prefix closes the link without the source allocating for it.
    let mut s = connect(sp);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut buf = [0u8; 1];
    let r = s.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "oversized frame closes the link: {r:?}"
    );

    assert_eq!(source.stop(), Some(0));
    common::remove_tmpdir(&dir);
}

#[test]
fn demo_runs_a_swarm_in_one_process_and_summarises_it() {
    let out = Command::new(BIN)
        .args(["demo", "--peers", "3", "--seconds", "14", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "demo --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["peers"].as_u64(), Some(3));
    let ci = v["continuity_min"].as_f64().unwrap();
    assert!(ci > 0.9, "continuity_min {ci}: {v}");
    let peers = v["per_peer"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    for p in peers {
        assert!(p["segments_played"].as_u64().unwrap() >= 3, "{p}");
    }
}

#[test]
fn an_rtp_input_is_unwrapped_and_reaches_a_peer() {
    require_ffmpeg();
    let dir = tmpdir("rtp");
    let (key, id) = keygen(&dir);
    let rtp = free_rtp_port();
    let sp = free_port();
    let mut source = Proc::start(
        "source",
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "rtp",
            "--input",
            &format!("rtp://127.0.0.1:{rtp}"),
            "--listen",
            &format!("127.0.0.1:{sp}"),
            "--stats-json",
            dir.join("source.json").to_str().unwrap(),
        ],
        &dir.join("source.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut ffmpeg = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-b:v",
            "300k",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "rtp_mpegts",
        ])
        .arg(format!("rtp://127.0.0.1:{rtp}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts");
    let mut peer = Proc::start(
        "peer",
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &format!("127.0.0.1:{sp}"),
            "--stats-json",
            dir.join("peer.json").to_str().unwrap(),
        ],
        &dir.join("peer.log"),
    );
    wait_for("the peer to play", Duration::from_secs(40), || {
        let v = read_json(&dir.join("peer.json"))?;
        (v["segments_played"].as_u64()? >= 3).then_some(())
    });
    assert_eq!(peer.stop(), Some(0));
    assert_eq!(source.stop(), Some(0));
    let v = read_json(&dir.join("source.json")).unwrap();
    assert!(v["segments_ingested"].as_u64().unwrap() >= 4, "{v}");
    assert_eq!(v["role"].as_str(), Some("source"));
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    common::remove_tmpdir(&dir);
}
