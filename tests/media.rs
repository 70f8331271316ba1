//! End-to-end media tests: ffmpeg-made H.264 and HEVC streams (with AAC audio) through a source
//! and eight peers to real players (Debian's ffmpeg) over HTTP, UDP multicast and RTP; a gap
//! forced on purpose; garbage in the input. Each codec's swarm is shared by all its checks.
//!
//! Needs ffmpeg and ffprobe (`scripts/test` installs them on Debian when run as root). UDP
//! multicast goes over loopback with the multicast interface set to 127.0.0.1 on both ends.

mod common;

use coolstream::media::tr101290::{Checker, Report};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coolstream");
/// Seconds each player decodes.
const PLAY_S: u32 = 20;
/// Frames per second of the test streams.
const FPS: u32 = 25;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("coolstream starts"),
    )
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("coolstream-media-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    common::free_port()
}

fn free_udp_port() -> u16 {
    common::free_port()
}

fn require_ffmpeg() {
    for tool in ["ffmpeg", "ffprobe"] {
        let ok = Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{tool} is required by this test (it makes the streams and plays them) and was not \
             found on PATH; install it (Debian: apt-get install ffmpeg, or run scripts/test as root)"
        );
    }
}

/// `secs` of a 640x360 test pattern at 25 frames/s, one keyframe a second, with a 440 Hz tone.
fn make_stream(dir: &Path, codec: &str, secs: u32) -> PathBuf {
    let out = dir.join(format!("{codec}.ts"));
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=640x360:rate={FPS}"))
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
        ])
        .arg(secs.to_string())
        .args([
            "-c:v", codec, "-pix_fmt", "yuv420p", "-preset", "veryfast", "-g",
        ])
        .arg(FPS.to_string())
        .args(["-b:v", "700k", "-x265-params", "log-level=error"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "mpegts"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs");
    assert!(st.success(), "ffmpeg could not make the {codec} stream");
    out
}

fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("ch.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET `path`; the body read for up to `dur` (or until closed).
fn http_body(port: u16, path: &str, dur: Duration) -> Option<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let until = Instant::now() + dur;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let k = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((
        String::from_utf8_lossy(&all[..k]).to_string(),
        all[k + 4..].to_vec(),
    ))
}

fn tr101290(body: &[u8]) -> Report {
    let mut c = Checker::new();
    c.push_bytes(body, 0);
    c.report()
}

/// A player: `ffmpeg -v error -i URL -t PLAY_S -f null -` with its progress written to a file.
struct Player {
    child: Child,
    err: PathBuf,
    progress: PathBuf,
    what: String,
}

impl Player {
    fn start(dir: &Path, what: &str, input: &[&str]) -> Player {
        let err = dir.join(format!("{what}.err"));
        let progress = dir.join(format!("{what}.progress"));
        let child = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-progress"])
            .arg(&progress)
            .args(input)
            .args(["-t", &PLAY_S.to_string(), "-f", "null", "-"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("ffmpeg starts");
        Player {
            child,
            err,
            progress,
            what: what.into(),
        }
    }

    /// Waits for the end (at most `timeout`): exit status, error lines, video frames decoded.
    fn finish(mut self, timeout: Duration) -> (bool, String, u64) {
        let until = Instant::now() + timeout;
        let ok = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st.success();
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        let frames = std::fs::read_to_string(&self.progress)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("frame="))
            .filter_map(|v| v.trim().parse().ok())
            .next_back()
            .unwrap_or(0);
        eprintln!("{}: ok {ok}, {frames} frames, errors {err:?}", self.what);
        (ok, err, frames)
    }
}

/// A socket joined to `group` on loopback.
fn multicast_socket(group: &str, port: u16) -> UdpSocket {
    let g: std::net::Ipv4Addr = group.parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_recv_buffer_size(2 << 20).unwrap();
    let bind: std::net::SocketAddr = (g, port).into();
    s.bind(&bind.into()).unwrap();
    s.join_multicast_v4(&g, &"127.0.0.1".parse().unwrap())
        .expect("joining a multicast group on loopback");
    s.into()
}

/// The first video frame a fresh player decodes: is it a keyframe?
fn first_frame_is_key(url: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_frames"])
        .args([
            "-show_entries",
            "frame=key_frame,pict_type",
            "-of",
            "csv=p=0",
        ])
        .args(["-read_intervals", "%+2", url])
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Source and eight peers on `codec`: two HTTP players (one peer drops every fourth segment on
/// purpose), a UDP multicast output and an RTP output, each read by ffmpeg.
fn through_the_swarm(codec: &str, name: &str, group: &str) {
    require_ffmpeg();
    let dir = tmpdir(name);
    let input = make_stream(&dir, codec, 12);
    let (key, id) = keygen(&dir);
    let sp = free_port();
    let _source = start(
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            name,
            "--input",
            &format!("file:{}?loop", input.display()),
            "--listen",
            &format!("127.0.0.1:{sp}"),
        ],
        &dir.join("source.log"),
    );
    wait_for("the source on air", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", sp)).ok()
    });
    let bootstrap = format!("127.0.0.1:{sp}");
    let stats = |i: usize| dir.join(format!("stats{i}.json"));
    let peer = |i: usize, extra: &[&str]| {
        let listen = format!("127.0.0.1:{}", free_port());
        let st = stats(i);
        let mut args = vec!["peer", "--channel", &id, "--bootstrap", &bootstrap];
        args.extend_from_slice(&["--listen", &listen, "--stats-json", st.to_str().unwrap()]);
        args.extend_from_slice(extra);
        start(&args, &dir.join(format!("peer{i}.log")))
    };
    let (h1, h2) = (free_port(), free_port());
    let mut peers = vec![
        peer(1, &["--http", &format!("127.0.0.1:{h1}")]),
        peer(
            2,
            &["--http", &format!("127.0.0.1:{h2}"), "--drop-every", "4"],
        ),
    ];
    for i in 3..7 {
        peers.push(peer(i, &[]));
    }
    // The UDP and RTP players listen before their peers start sending (a decoder tuned in
    // first, as on a set-top box); their outputs then start at a keyframe.
    let (up, rp) = (free_udp_port(), common::free_rtp_port());
    let udp_url = format!("udp://{group}:{up}?localaddr=127.0.0.1&timeout=40000000");
    let udp_player = Player::start(&dir, "udp", &["-i", &udp_url]);
    // RTP is read as a player that knows the session does, from an SDP (ffmpeg's bare
    // rtp:// reader closes and reopens its socket after the first datagram, losing the
    // stream's first packets, tables and keyframe included).
    let sdp = dir.join("rtp.sdp");
    std::fs::write(
        &sdp,
        format!(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=coolstream\r\nc=IN IP4 127.0.0.1\r\n\
             t=0 0\r\nm=video {rp} RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\n"
        ),
    )
    .unwrap();
    let rtp_player = Player::start(
        &dir,
        "rtp",
        &[
            "-protocol_whitelist",
            "file,udp,rtp",
            "-i",
            sdp.to_str().unwrap(),
        ],
    );
    // An in-process TR 101 290 check on the multicast output too.
    let mc = multicast_socket(group, up);
    std::thread::sleep(Duration::from_millis(500));
    let udp_out = format!("udp://{group}:{up}?ttl=1&iface=127.0.0.1");
    peers.push(peer(7, &["--udp-out", &udp_out]));
    peers.push(peer(8, &["--udp-out", &format!("rtp://127.0.0.1:{rp}")]));

    // HTTP: the playlist names the channel (learnt from the stream), the stream plays.
    wait_for(
        "the playlist to name the channel",
        Duration::from_secs(30),
        || {
            let (_, b) = http_body(h1, "/playlist.m3u", Duration::from_secs(2))?;
            String::from_utf8_lossy(&b)
                .contains(&format!("/ch/{name}.ts"))
                .then_some(())
        },
    );
    let url1 = format!("http://127.0.0.1:{h1}/ch/{name}.ts");
    let url2 = format!("http://127.0.0.1:{h2}/ch/{name}.ts");
    // A player that never reads: its queue fills and it falls behind on its own; the node
    // and the other players never wait for it.
    let mut stalled = TcpStream::connect(("127.0.0.1", h1)).unwrap();
    write!(stalled, "GET /ch/{name}.ts HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Segments a peer missed (the swarm's doing, not the output's) cost its players frames:
    // counted from here on and allowed for.
    let missed = |i: usize| -> u64 {
        std::fs::read(stats(i))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["segments_missed"].as_u64())
            .unwrap_or(0)
    };
    let missed_before: Vec<u64> = [1, 7, 8].iter().map(|&i| missed(i)).collect();
    let http_player = Player::start(&dir, "http", &["-i", &url1]);
    let gap_player = Player::start(&dir, "gap", &["-i", &url2]);
    let first = first_frame_is_key(&url1);
    assert!(first.starts_with("1,I"), "first decoded frame: {first:?}");
    // TR 101 290 on what HTTP players get, clean and with gaps.
    let (head, body) = http_body(h1, &format!("/ch/{name}.ts"), Duration::from_secs(8)).unwrap();
    assert!(head.contains("video/mp2t"), "{head}");
    let r = tr101290(&body);
    assert_eq!(r.errors(), 0, "clean HTTP output: {r:?}");
    assert!(r.stream_us > 5_000_000, "{r:?}");
    let (_, body) = http_body(h2, &format!("/ch/{name}.ts"), Duration::from_secs(8)).unwrap();
    let r = tr101290(&body);
    assert_eq!(r.errors(), 0, "HTTP output with gaps: {r:?}");
    assert!(r.discontinuities >= 2, "the gaps are signalled: {r:?}");
    mc.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut mbuf = vec![0u8; 2048];
    let mut mchk = Checker::new();
    let mut sizes = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        if let Ok(n) = mc.recv(&mut mbuf) {
            sizes.insert(n);
            mchk.push_bytes(&mbuf[..n], 0);
        }
    }
    let r = mchk.report();
    assert_eq!(r.errors(), 0, "multicast output: {r:?}");
    assert!(r.stream_us > 3_000_000, "multicast output: {r:?}");
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![1316]);

    let want = (PLAY_S * FPS) as u64;
    let wait = Duration::from_secs(PLAY_S as u64 + 40);
    for (p, peer_no, min) in [
        (http_player, Some(0), want * 95 / 100),
        (udp_player, Some(1), want * 95 / 100),
        (rtp_player, Some(2), want * 95 / 100),
        // Every fourth segment withheld: about three quarters of the frames.
        (gap_player, None, want * 60 / 100),
    ] {
        let what = p.what.clone();
        let (ok, err, frames) = p.finish(wait);
        let lost = peer_no.map_or(0, |k: usize| {
            missed([1, 7, 8][k]).saturating_sub(missed_before[k]) * FPS as u64
        });
        if lost > 0 {
            eprintln!(
                "{what}: its peer missed {} segments meanwhile",
                lost / FPS as u64
            );
        }
        let min = min.saturating_sub(lost);
        assert!(ok, "{what}: ffmpeg failed: {err}");
        assert!(err.trim().is_empty(), "{what}: decoder errors: {err}");
        assert!(
            frames >= min && frames <= want + 5,
            "{what}: {frames} frames in {PLAY_S} s (want {min}..={})",
            want + 5
        );
    }
    drop(stalled);
    drop(peers);
    common::remove_tmpdir(&dir);
}

#[test]
fn h264_through_eight_peers_plays_cleanly_over_http_multicast_and_rtp() {
    through_the_swarm("libx264", "h264", "239.255.41.1");
}

#[test]
fn hevc_through_eight_peers_plays_cleanly_over_http_multicast_and_rtp() {
    through_the_swarm("libx265", "hevc", "239.255.41.2");
}

/// Random bytes and torn packets in a live UDP input: the source resyncs and goes on, its
/// peers keep playing, the output stays aligned.
#[test]
fn garbage_in_the_input_is_skipped_and_the_channel_goes_on() {
    require_ffmpeg();
    let dir = tmpdir("garbage");
    let input = std::fs::read(make_stream(&dir, "libx264", 10)).unwrap();
    let (key, id) = keygen(&dir);
    let (sp, udp, h) = (free_port(), free_udp_port(), free_port());
    let mut source = start(
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "junk",
            "--input",
            &format!("udp://127.0.0.1:{udp}"),
            "--listen",
            &format!("127.0.0.1:{sp}"),
        ],
        &dir.join("source.log"),
    );
    // The sender: the file at its own rate (10 s), with junk datagrams, random bytes inside
    // datagrams and torn packets.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let per_s = input.len() / 10;
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let t0 = Instant::now();
            let mut sent = 0usize;
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for chunk in input.chunks(1316) {
                    let mut d = chunk.to_vec();
                    k += 1;
                    match k % 17 {
                        3 => {
                            let junk: Vec<u8> = (0..next() % 1400).map(|_| next() as u8).collect();
                            let _ = s.send_to(&junk, ("127.0.0.1", udp));
                        }
                        7 => d.truncate((next() % 1316) as usize), // torn packets
                        11 => {
                            let at = (next() as usize) % d.len().max(1);
                            let junk: Vec<u8> =
                                (0..1 + next() % 50).map(|_| next() as u8).collect();
                            d.splice(at..at, junk);
                        }
                        _ => {}
                    }
                    let _ = s.send_to(&d, ("127.0.0.1", udp));
                    sent += chunk.len();
                    let due = t0 + Duration::from_secs_f64(sent as f64 / per_s as f64);
                    if let Some(w) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(w);
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                }
            }
        })
    };
    wait_for("the source on air", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", sp)).ok()
    });
    let _peer = start(
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &format!("127.0.0.1:{sp}"),
            "--http",
            &format!("127.0.0.1:{h}"),
        ],
        &dir.join("peer.log"),
    );
    let body = wait_for(
        "the peer to serve the stream",
        Duration::from_secs(30),
        || {
            let (_, b) = http_body(h, "/ch/junk.ts", Duration::from_secs(8))?;
            (b.len() > 100_000).then_some(b)
        },
    );
    let r = tr101290(&body);
    assert_eq!((r.sync_loss, r.sync_byte_errors), (0, 0), "{r:?}");
    assert!(r.stream_us > 3_000_000, "{r:?}");
    assert!(
        matches!(source.0.try_wait(), Ok(None)),
        "the source is still running"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let log = std::fs::read_to_string(dir.join("source.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    common::remove_tmpdir(&dir);
}

/// A UDP output pointed at another channel while it runs (the zap mechanism): the new
/// channel starts at an entry point, the break is signalled on every stream, the tables get a
/// new version, and the output stays whole datagrams with no TR 101 290 error.
#[test]
fn a_udp_output_changes_channel_cleanly() {
    use coolstream::media::segmenter::{CutRule, Segmenter};
    use coolstream::media::ts::{self, PACKET};
    use coolstream::output::{udp, Feed, FeedItem};
    use coolstream::proto::wire::{flags, SegmentBody};
    use coolstream::proto::{Segment, Seq};
    use std::sync::Arc;

    // The bundled demo stream cut into segments: channel A plays it, channel B too.
    let mut seg = Segmenter::new(1000, CutRule::RandomAccess);
    let mut cuts = Vec::new();
    let demo: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.ts"));
    for (i, p) in demo.chunks_exact(PACKET).enumerate() {
        if let Some(c) = seg.push(p.try_into().unwrap(), i as u64) {
            cuts.push(c);
        }
    }
    // Each channel's segments follow on within the stream (no wrap): k + 1 < cuts.len() - 1.
    assert!(
        cuts.len() >= 7 && cuts[1..].iter().all(|c| c.entry_point),
        "{}",
        cuts.len()
    );
    let item = |k: usize| {
        let c = &cuts[1 + k];
        FeedItem::Segment {
            seg: Segment {
                seq: Seq(k as u32),
                origin_us: 0,
                duration_us: c.duration_us,
                flags: flags::ENTRY_POINT,
                payload: Arc::new(SegmentBody {
                    hashes: Vec::new(),
                    signature: [[0; 32]; 2],
                    data: c.data.clone(),
                    growing: None,
                }),
            },
            due: Instant::now(),
        }
    };
    let (a, b) = (Feed::new("a"), Feed::new("b"));
    let port = free_udp_port();
    let rx = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let (retarget, feeds) = tokio::sync::watch::channel(a.clone());
        let out = udp::UdpOut::parse(&format!("udp://127.0.0.1:{port}")).unwrap();
        let sender = tokio::spawn(udp::run(out, feeds, Default::default()));
        let reader = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(n) = rx.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        });
        // One segment a second on each channel; the output moves from A to B after 2.5 s.
        for k in 0..5 {
            a.publish(item(k));
            b.publish(item(k + 1));
            if k == 2 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                retarget.send(b.clone()).unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            } else {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let got = reader.await.unwrap();
        sender.abort();
        got
    });
    assert!(got.len() > 50, "{} datagrams", got.len());
    assert!(got.iter().all(|d| d.len() == 1316), "whole datagrams only");
    let all: Vec<u8> = got.concat();
    let r = tr101290(&all);
    assert_eq!(r.errors(), 0, "{r:?}");
    assert!(r.discontinuities >= 2, "the change is signalled: {r:?}");
    // PAT versions: 0 on A, then 1 on B.
    let mut versions = Vec::new();
    let mut secs = coolstream::media::psi::Sections::new();
    for p in all.chunks_exact(PACKET).filter(|p| ts::pid(p) == 0) {
        secs.push(p.try_into().unwrap(), |s| versions.push((s[5] >> 1) & 0x1f));
    }
    versions.dedup();
    assert_eq!(versions, vec![0, 1]);
}

/// Audio tracks in the many-track stream: its PMT (one video, this many audio streams with a
/// language each) takes 461 bytes, three TS packets.
const MANY_TRACKS: usize = 40;

/// The language tag of audio track `i` of the many-track stream ("abc", "bbc", …).
fn track_language(i: usize) -> String {
    let b = [b'a' + (i % 26) as u8, b'b' + (i / 26) as u8, b'c'];
    String::from_utf8(b.to_vec()).unwrap()
}

/// `secs` of 320x180 H.264 (a keyframe a second) and [`MANY_TRACKS`] MP2 audio tracks of one
/// tone, each with its own language. PAT and PMT only where ffmpeg forces them (before each
/// keyframe; `-pat_period` and `-sdt_period` put the periodic ones out of reach), so a
/// segment cut at a keyframe has no table of the input's own.
fn make_many_track_stream(dir: &Path, secs: u32) -> PathBuf {
    let out = dir.join("many.ts");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=320x180:rate={FPS}"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &secs.to_string(), "-map", "0:v"]);
    for i in 0..MANY_TRACKS {
        cmd.args(["-map", "1:a"])
            .arg(format!("-metadata:s:a:{i}"))
            .arg(format!("language={}", track_language(i)));
    }
    let st = cmd
        .args([
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast",
        ])
        .args(["-g", &FPS.to_string(), "-c:a", "mp2", "-b:a", "64k"])
        .args(["-pat_period", "60", "-sdt_period", "60", "-f", "mpegts"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs");
    assert!(st.success(), "ffmpeg could not make the many-track stream");
    out
}

/// Packets the first PMT section of `pkts` (aligned TS) takes, from its first packet to the
/// one it ends in, CRC checked.
fn pmt_span(pkts: &[u8]) -> usize {
    use coolstream::media::{psi, ts};
    let pmt_pid = pkts
        .chunks_exact(ts::PACKET)
        .find_map(ts::pat_first_pmt)
        .expect("a PAT");
    let mut secs = psi::Sections::new();
    let mut n = 0;
    for p in pkts.chunks_exact(ts::PACKET) {
        if ts::pid(p) != pmt_pid || (n == 0 && !ts::payload_unit_start(p)) {
            continue;
        }
        n += 1;
        let mut whole = false;
        secs.push(p.try_into().unwrap(), |s| {
            whole = psi::parse_pmt(s).is_some()
        });
        if whole {
            return n;
        }
    }
    panic!("no whole PMT");
}

/// A PMT spanning three packets is in front of every segment the source cuts: a player
/// starting at any segment finds every track (with its language, which only the PMT carries)
/// and decodes its first frame, a keyframe. No swarm: the segmenter runs on the file, and
/// ffprobe and ffmpeg read single segments from their start.
#[test]
fn a_pmt_spanning_packets_is_in_front_of_every_segment() {
    use coolstream::media::segmenter::{CutRule, Segmenter};
    use coolstream::media::ts::{self, PACKET};
    require_ffmpeg();
    let dir = tmpdir("psi");
    let file = make_many_track_stream(&dir, 5);
    let mut pkts = Vec::new();
    let mut resync = ts::Resync::new();
    resync.push(&std::fs::read(&file).unwrap(), &mut pkts);
    resync.finish(&mut pkts);
    assert_eq!(
        pmt_span(&pkts),
        3,
        "the test stream's PMT spans three packets"
    );
    let mut seg = Segmenter::new(1000, CutRule::RandomAccess);
    let mut cuts = Vec::new();
    for (i, p) in pkts.chunks_exact(PACKET).enumerate() {
        cuts.extend(seg.push(p.try_into().unwrap(), i as u64 * 500));
    }
    cuts.extend(seg.flush());
    assert!(cuts.len() >= 4, "{} segments", cuts.len());
    assert_eq!(seg.stats().psi_errors, 0);
    let mut want = vec!["video".to_string()];
    want.extend((0..MANY_TRACKS).map(|i| format!("audio,{}", track_language(i))));
    for (k, c) in cuts.iter().enumerate() {
        assert!(c.entry_point, "segment {k}");
        assert_eq!(pmt_span(&c.data), 3, "segment {k}");
        let f = dir.join(format!("seg{k}.ts"));
        std::fs::write(&f, &c.data).unwrap();
        let probe = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type:stream_tags=language",
            ])
            .args(["-of", "json"])
            .arg(&f)
            .output()
            .expect("ffprobe runs");
        let json: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap_or_default();
        let streams: Vec<String> = json["streams"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                let kind = s["codec_type"].as_str().unwrap_or("?");
                match s["tags"]["language"].as_str() {
                    Some(l) => format!("{kind},{l}"),
                    None => kind.to_string(),
                }
            })
            .collect();
        assert_eq!(streams, want, "segment {k}: what ffprobe finds");
        let first = first_frame_is_key(f.to_str().unwrap());
        assert!(
            first.starts_with("1,I"),
            "segment {k}: first frame '{first}'"
        );
        let dec = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(&f)
            .args(["-map", "0:v", "-frames:v", "1", "-f", "null", "-"])
            .output()
            .expect("ffmpeg runs");
        let err = String::from_utf8_lossy(&dec.stderr);
        assert!(
            dec.status.success() && err.trim().is_empty(),
            "segment {k}: {err}"
        );
    }
    // Counters: the segments as cut, and what a player joining at the first or the second
    // segment gets through the splicer, have no continuity error and no bad CRC.
    for from in [0, 1] {
        let mut splicer = coolstream::media::splice::Splicer::new();
        let mut out = Vec::new();
        let mut raw = Vec::new();
        for c in &cuts[from..] {
            splicer.segment(&c.data, c.entry_point, c.discontinuity, &mut out);
            raw.extend_from_slice(&c.data);
        }
        for (what, body) in [("as cut", &raw), ("spliced", &out)] {
            let r = tr101290(body);
            assert_eq!(
                (r.cc_errors, r.crc_errors),
                (0, 0),
                "from {from}, {what}: {r:?}"
            );
        }
    }
    common::remove_tmpdir(&dir);
}
