//! Helpers shared by the end-to-end tests: child processes that are stopped when dropped,
//! free ports, keys, ffmpeg, polling, HTTP reads and segment digests; `netns`: home routers in
//! network namespaces.
#![allow(dead_code)]

pub mod netns;

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_coolstream");

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn start(name: &str, args: &[&str], log: &Path) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.into(),
        }
    }

    /// SIGTERM, and the exit code once it has gone (None if it had to be killed).
    pub fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("coolstream-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A loopback port for a daemon the test starts, free for TCP and UDP.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768-60999 by default):
/// a port the kernel hands out for `bind(:0)` can be handed out again, to one of the peers'
/// own outgoing connections, between our check and the daemon's bind, and a 16-peer swarm
/// opens hundreds of those. Ports below the range are never given to outgoing connections.
/// A per-process counter from a pid-derived base keeps this process's picks apart and
/// apart from another test process's.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = fixed_port_range();
    let span = hi - lo;
    let base = (std::process::id() * 97) % span;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (lo + (base + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}

pub fn free_udp_port() -> u16 {
    free_port()
}

/// An even port whose successor is free too, both taken from the counter: RTP on P, and a
/// player such as ffmpeg binds P + 1 for RTCP.
pub fn free_rtp_port() -> u16 {
    loop {
        let p = free_port();
        if p % 2 == 0 && free_port() == p + 1 {
            return p;
        }
    }
}

/// The ports outside the ephemeral range that tests may use: below it when there is room
/// (the usual case), otherwise above it.
fn fixed_port_range() -> (u32, u32) {
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut f = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((f.next()??, f.next()??))
        })
        .unwrap_or((32768, 60999));
    if eph_lo >= 12_000 {
        (10_000, eph_lo)
    } else {
        (eph_hi + 1, 65_535)
    }
}

pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("ch.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 64, "keygen printed {id:?}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    (key, id)
}

pub fn require_ffmpeg() {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "ffmpeg is required by this test (it makes the live input) and was not found on PATH; \
         install it (Debian: apt-get install ffmpeg, or run scripts/test as root)"
    );
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn read_json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// GETs `path` and reads the response for up to `dur` or `max` bytes: (head, body).
pub fn http_get(port: u16, path: &str, dur: Duration, max: usize) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let until = Instant::now() + dur;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < until && all.len() < max {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("http read: {e}"),
        }
    }
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    (head, all[split + 4..].to_vec())
}

/// The source's segment log: (len, sha256 hex) per line.
pub fn segment_log(p: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(1)?.parse().ok()?, f.get(3)?.to_string()))
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How many whole source segments `body` is made of, back to back from its first byte.
pub fn whole_segments(body: &[u8], log: &[(usize, String)]) -> usize {
    whole_segments_covered(body, log).0
}

/// Whole source segments back to back from `body`'s first byte, and the bytes they cover.
pub fn whole_segments_covered(body: &[u8], log: &[(usize, String)]) -> (usize, usize) {
    let mut off = 0;
    let mut n = 0;
    'next: while off < body.len() {
        for (len, digest) in log {
            if off + len <= body.len() && hex(&Sha256::digest(&body[off..off + len])) == *digest {
                off += len;
                n += 1;
                continue 'next;
            }
        }
        break;
    }
    (n, off)
}

/// Removes a test's directory after it passed, unless `COOLSTREAM_TEST_KEEP` is set: then
/// its logs stay for reading (a failed test leaves its directory anyway).
pub fn remove_tmpdir(dir: &std::path::Path) {
    if std::env::var_os("COOLSTREAM_TEST_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A minimal RFC 5389 Binding responder (MAPPED-ADDRESS and XOR-MAPPED-ADDRESS), enough for
/// miniupnpd's check of its external address; served on `bind`:3478 until `stop`.
pub fn stun_responder(
    bind: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::Ordering;
    let s = match UdpSocket::bind((bind, 3478)) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("STUN bind: {e}")));
            return;
        }
    };
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    ready.send(Ok(())).unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, SocketAddr::V4(from))) = s.recv_from(&mut buf) else {
            continue;
        };
        if n < 20 || buf[0..2] != [0, 1] {
            continue;
        }
        let ip = from.ip().octets();
        let port = from.port();
        let mut out = vec![0x01, 0x01, 0, 24];
        out.extend_from_slice(&buf[4..20]);
        out.extend_from_slice(&[0, 1, 0, 8, 0, 1]);
        out.extend_from_slice(&port.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&[0, 0x20, 0, 8, 0, 1]);
        out.extend_from_slice(&(port ^ 0x2112).to_be_bytes());
        let cookie = [0x21, 0x12, 0xa4, 0x42];
        out.extend(ip.iter().zip(cookie).map(|(a, c)| a ^ c));
        let _ = s.send_to(&out, from);
    }
}
