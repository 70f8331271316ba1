//! Checks a live transport stream as a player would get it, and prints one JSON object:
//! TR 101 290 first-priority counts, and for datagram inputs the pacing (largest number of
//! datagrams within any 1 ms, and the PCR arrival jitter: how far each PCR arrives from where
//! the PCR clock says it should, relative to the median, within each unbroken run).
//!
//! ```text
//! cargo run --release --example tscheck -- URL [--seconds S] [--iface ADDR]
//!   URL: udp://[@]ADDR:PORT (multicast joined on --iface), rtp://..., http://HOST:PORT/PATH,
//!        file:PATH
//! ```

use coolstream::media::tr101290::Checker;
use coolstream::media::{rtp, ts};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

struct Pacing {
    arrivals: Vec<Instant>,
    /// (arrival, PCR) of each PCR on the first PCR PID, and whether a discontinuity preceded.
    pcrs: Vec<(Instant, u64, bool)>,
    pcr_pid: Option<u16>,
    rtp_seq_errors: u64,
    last_rtp_seq: Option<u16>,
    datagram_sizes: std::collections::BTreeMap<usize, u64>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first().cloned() else {
        eprintln!("usage: tscheck URL [--seconds S] [--iface ADDR]");
        std::process::exit(2);
    };
    let flag = |n: &str| {
        args.iter()
            .position(|a| a == n)
            .and_then(|k| args.get(k + 1))
            .cloned()
    };
    let seconds: f64 = flag("--seconds").map_or(10.0, |s| s.parse().expect("--seconds"));
    let iface: Ipv4Addr =
        flag("--iface").map_or(Ipv4Addr::UNSPECIFIED, |s| s.parse().expect("--iface"));
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(seconds);
    let mut checker = Checker::new();
    let mut bytes = 0u64;
    let mut first_byte: Option<f64> = None;
    let mut pacing = Pacing {
        arrivals: Vec::new(),
        pcrs: Vec::new(),
        pcr_pid: None,
        rtp_seq_errors: 0,
        last_rtp_seq: None,
        datagram_sizes: Default::default(),
    };
    let mut note = |data: &[u8], at: Instant, checker: &mut Checker| {
        bytes += data.len() as u64;
        first_byte.get_or_insert((at - t0).as_secs_f64());
        checker.push_bytes(data, (at - t0).as_micros() as u64);
    };
    if let Some(rest) = url.strip_prefix("http://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = TcpStream::connect(host).expect("connect");
        write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("request");
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut head = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut in_body = false;
        while Instant::now() < until {
            let n = match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => continue,
            };
            let at = Instant::now();
            if in_body {
                note(&buf[..n], at, &mut checker);
            } else {
                head.extend_from_slice(&buf[..n]);
                if let Some(k) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    in_body = true;
                    let body = head[k + 4..].to_vec();
                    note(&body, at, &mut checker);
                }
            }
        }
    } else if let Some(path) = url.strip_prefix("file:") {
        let data = std::fs::read(path).expect("read the file");
        note(&data, Instant::now(), &mut checker);
    } else {
        let (is_rtp, rest) = match url.strip_prefix("udp://") {
            Some(r) => (false, r),
            None => (
                true,
                url.strip_prefix("rtp://")
                    .expect("udp://, rtp://, http:// or file:"),
            ),
        };
        let addr: SocketAddr = rest.trim_start_matches('@').parse().expect("ADDR:PORT");
        let sock = match addr {
            SocketAddr::V4(a) if a.ip().is_multicast() => {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                    .expect("socket");
                s.set_reuse_address(true).ok();
                s.set_recv_buffer_size(4 << 20).ok();
                s.bind(&SocketAddr::V4(a).into()).expect("bind");
                s.join_multicast_v4(a.ip(), &iface).expect("join");
                UdpSocket::from(s)
            }
            a => UdpSocket::bind(a).expect("bind"),
        };
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < until {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let at = Instant::now();
            let d = &buf[..n];
            if is_rtp && d.len() >= 12 && d[0] >> 6 == 2 {
                let seq = u16::from_be_bytes([d[2], d[3]]);
                if let Some(l) = pacing.last_rtp_seq {
                    if seq != l.wrapping_add(1) {
                        pacing.rtp_seq_errors += 1;
                    }
                }
                pacing.last_rtp_seq = Some(seq);
            }
            let Some(payload) = rtp::payload(d) else {
                continue;
            };
            pacing.arrivals.push(at);
            *pacing.datagram_sizes.entry(payload.len()).or_default() += 1;
            for p in payload.chunks_exact(ts::PACKET) {
                if let Some(v) = ts::pcr(p) {
                    let pid = ts::pid(p);
                    if *pacing.pcr_pid.get_or_insert(pid) == pid {
                        pacing.pcrs.push((at, v, ts::discontinuity(p)));
                    }
                }
            }
            note(payload, at, &mut checker);
        }
    }
    let r = checker.report();
    let (burst, jitter_max, jitter_p99) = pacing_figures(&pacing);
    let sizes: Vec<String> = pacing
        .datagram_sizes
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    println!(
        "{{\"bytes\":{bytes},\"first_byte_s\":{},\"packets\":{},\"stream_s\":{:.3},\
         \"errors\":{},\"sync_loss\":{},\"sync_byte_errors\":{},\"pat_errors\":{},\
         \"cc_errors\":{},\"pmt_errors\":{},\"pid_errors\":{},\"crc_errors\":{},\
         \"discontinuities\":{},\"datagrams\":{},\"datagram_sizes\":{{{}}},\
         \"max_datagrams_per_ms\":{burst},\"pcr_jitter_max_ms\":{jitter_max:.3},\
         \"pcr_jitter_p99_ms\":{jitter_p99:.3},\"rtp_seq_errors\":{}}}",
        first_byte.map_or("null".into(), |v| format!("{v:.3}")),
        r.packets,
        r.stream_us as f64 / 1e6,
        r.errors(),
        r.sync_loss,
        r.sync_byte_errors,
        r.pat_errors,
        r.cc_errors,
        r.pmt_errors,
        r.pid_errors,
        r.crc_errors,
        r.discontinuities,
        pacing.arrivals.len(),
        sizes.join(","),
        pacing.rtp_seq_errors,
    );
}

/// Largest number of datagrams within 1 ms; PCR arrival jitter (max and 99th percentile of
/// the distance from the run's median offset between arrival time and PCR time), in ms.
fn pacing_figures(p: &Pacing) -> (usize, f64, f64) {
    let mut burst = 0;
    let mut j = 0;
    for i in 0..p.arrivals.len() {
        while p.arrivals[i] - p.arrivals[j] >= Duration::from_millis(1) {
            j += 1;
        }
        burst = burst.max(i - j + 1);
    }
    // Runs of PCRs without a break (a discontinuity, or a step over 1 s or backwards).
    let mut devs: Vec<f64> = Vec::new();
    let mut run: Vec<f64> = Vec::new();
    let flush = |run: &mut Vec<f64>, devs: &mut Vec<f64>| {
        if run.len() >= 10 {
            let mut s = run.clone();
            s.sort_by(f64::total_cmp);
            let med = s[s.len() / 2];
            devs.extend(run.iter().map(|o| (o - med).abs()));
        }
        run.clear();
    };
    let t0 = p.pcrs.first().map(|x| x.0);
    let mut last: Option<u64> = None;
    let mut base: Option<u64> = None;
    let mut acc = 0u64;
    for &(at, v, disc) in &p.pcrs {
        let broken = disc || last.is_some_and(|l| ts::pcr_delta(l, v) > ts::PCR_HZ);
        if broken {
            flush(&mut run, &mut devs);
            base = None;
        }
        if let Some(l) = last.filter(|_| base.is_some()) {
            acc += ts::pcr_delta(l, v);
        } else {
            base = Some(v);
            acc = 0;
        }
        last = Some(v);
        let arrival = (at - t0.unwrap_or(at)).as_secs_f64() * 1000.0;
        run.push(arrival - acc as f64 / 27_000.0);
    }
    flush(&mut run, &mut devs);
    devs.sort_by(f64::total_cmp);
    let max = devs.last().copied().unwrap_or(0.0);
    let p99 = devs
        .get(((devs.len() as f64) * 0.99) as usize)
        .or(devs.last())
        .copied()
        .unwrap_or(0.0);
    (burst, max, p99)
}
