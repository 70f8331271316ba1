//! A source's inputs: where live TS comes from, read into the segmenter.
//!
//! - `udp://@GROUP:PORT` joins a multicast group (IPv4 or IPv6): address reuse, the group
//!   joined on the default interface (or `?iface=ADDR` for IPv4), `IP_MULTICAST_ALL` off so
//!   other groups on the port stay out, a 2 MiB receive buffer.
//! - `udp://HOST:PORT` (or `udp://@HOST:PORT`, `udp://@:PORT`) listens on a unicast address.
//! - `rtp://...` the same, with the RTP header stripped; bare TS on the port is accepted too.
//! - `file:PATH` plays a file at its own pace (by PCR); `file:PATH?loop` starts over at the
//!   end: the segment after the loop point is flagged as a discontinuity, and every pass's
//!   PCR, PTS and DTS are shifted past the previous pass's, so players see a clock that runs
//!   on (as with a live channel) instead of jumping back.
//! - `-` reads stdin (unpaced: whatever feeds it is live).
//!
//! Reading a file uses plain blocking reads of 24 KiB: from the page cache they take
//! microseconds, and pacing sleeps between them.

use super::rtp;
use super::segmenter::{Cut, CutRule, Segmenter};
use super::ts::{self, Resync, PACKET, PCR_HZ};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Receive buffer asked of the kernel for UDP inputs.
pub const UDP_RCVBUF: usize = 2 * 1024 * 1024;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_536;
/// Bytes read from a file or stdin at a time.
const READ_CHUNK: usize = PACKET * 128;
/// A PCR more than this away from the pacing clock restarts pacing (a jump in the file).
const MAX_PACING_SKEW: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputSpec {
    Udp {
        bind: SocketAddr,
        group: Option<IpAddr>,
        iface: Option<Ipv4Addr>,
        rtp: bool,
    },
    File {
        path: PathBuf,
        looped: bool,
    },
    /// Bytes built into the binary (the demo's stream), always looped.
    Memory(&'static [u8]),
    Stdin,
}

impl InputSpec {
    /// The input as a user would write it, for messages.
    pub fn label(&self) -> String {
        match self {
            InputSpec::Udp {
                bind, group, rtp, ..
            } => {
                let scheme = if *rtp { "rtp" } else { "udp" };
                match group {
                    Some(g) => format!("{scheme}://@{}", SocketAddr::new(*g, bind.port())),
                    None => format!("{scheme}://{bind}"),
                }
            }
            InputSpec::File { path, looped } => {
                format!(
                    "file:{}{}",
                    path.display(),
                    if *looped { "?loop" } else { "" }
                )
            }
            InputSpec::Memory(_) => "the bundled test stream".into(),
            InputSpec::Stdin => "stdin".into(),
        }
    }

    pub fn parse(s: &str) -> Result<InputSpec, String> {
        if s == "-" {
            return Ok(InputSpec::Stdin);
        }
        if let Some(rest) = s.strip_prefix("file:") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(format!("'{s}': no file name"));
            }
            let looped = query.split('&').any(|q| q == "loop");
            return Ok(InputSpec::File {
                path: PathBuf::from(path),
                looped,
            });
        }
        let (rtp, rest) = if let Some(r) = s.strip_prefix("udp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("rtp://") {
            (true, r)
        } else {
            return Err(format!(
                "'{s}' is not udp://…, rtp://…, file:PATH or - (stdin)"
            ));
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let addr = addr.strip_prefix('@').unwrap_or(addr);
        let bind: SocketAddr = if let Some(port) = addr.strip_prefix(':') {
            let port: u16 = port.parse().map_err(|_| format!("'{s}': bad port"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
        } else {
            addr.parse()
                .map_err(|_| format!("'{s}': expected ADDR:PORT (IPv6 as [ADDR]:PORT)"))?
        };
        let mut iface = None;
        for q in query.split('&').filter(|q| !q.is_empty()) {
            match q.split_once('=') {
                Some(("iface", v)) => {
                    iface = Some(v.parse().map_err(|_| format!("'{s}': bad iface"))?);
                }
                _ => return Err(format!("'{s}': unknown option '{q}'")),
            }
        }
        let group = bind.ip().is_multicast().then_some(bind.ip());
        Ok(InputSpec::Udp {
            bind,
            group,
            iface,
            rtp,
        })
    }
}

/// An input opened and ready to read (so that a bad address or a missing file is reported
/// before the source starts).
#[derive(Debug)]
pub enum Opened {
    Udp {
        sock: tokio::net::UdpSocket,
        rtp: bool,
    },
    File {
        file: std::fs::File,
        looped: bool,
    },
    Memory(&'static [u8]),
    Stdin,
}

/// Opens an input (binds and joins for UDP; must run inside the runtime).
pub fn open(spec: &InputSpec) -> std::io::Result<Opened> {
    Ok(match spec {
        InputSpec::Udp {
            bind,
            group,
            iface,
            rtp,
        } => {
            let sock = udp_socket(*bind, *group, *iface)?;
            log::info!("reading {} on {bind}", if *rtp { "RTP" } else { "UDP" });
            Opened::Udp { sock, rtp: *rtp }
        }
        InputSpec::File { path, looped } => {
            let file = std::fs::File::open(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Opened::File {
                file,
                looped: *looped,
            }
        }
        InputSpec::Memory(b) => Opened::Memory(b),
        InputSpec::Stdin => Opened::Stdin,
    })
}

/// Bytes read with no packet in sync after which an input is said not to be MPEG-TS.
pub const NOT_TS_AFTER: u64 = 64 * 1024;

/// Watches that an input is MPEG-TS at all: an input mostly out of sync after
/// [`NOT_TS_AFTER`] bytes is warned about once, and an input that ends without a single packet is an error
/// naming it, rather than a channel that silently never starts.
struct TsCheck<'a> {
    label: &'a str,
    read: u64,
    packets: u64,
    warned: bool,
}

impl<'a> TsCheck<'a> {
    fn new(label: &'a str) -> Self {
        TsCheck {
            label,
            read: 0,
            packets: 0,
            warned: false,
        }
    }

    /// `bytes` read, of which `aligned` came out as packets in sync.
    fn saw(&mut self, bytes: usize, aligned: usize) {
        self.read += bytes as u64;
        self.packets += (aligned / PACKET) as u64;
        // Random bytes pass as a packet now and then (two 0x47 bytes 188 apart), so the test
        // is "mostly not in sync", not "no packet at all".
        if self.read >= NOT_TS_AFTER
            && self.packets * (PACKET as u64) * 2 < self.read
            && !self.warned
        {
            self.warned = true;
            log::warn!(
                "{}: not MPEG-TS: only {} of its first {} bytes are 188-byte packets in sync (a 0x47 byte every 188 bytes)",
                self.label,
                self.packets * PACKET as u64,
                self.read
            );
        }
    }

    /// At the end of the input: an error if it held no packet at all.
    fn at_end(&self) -> std::io::Result<()> {
        if self.packets > 0 {
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is not MPEG-TS: no 188-byte packets in sync in its {} bytes",
                self.label, self.read
            ),
        ))
    }
}

/// Reads the input until it ends (or the receiver goes away), sending each cut segment.
/// `name`: the channel name written into every segment's SDT; `label`: the input as the
/// user gave it, for messages.
pub async fn run(
    input: Opened,
    segment_ms: u64,
    name: Option<&str>,
    label: &str,
    tx: mpsc::Sender<Cut>,
) -> std::io::Result<()> {
    let mut seg = Segmenter::new(segment_ms, CutRule::RandomAccess);
    if let Some(n) = name {
        seg = seg.with_service_name(n);
    }
    let mut check = TsCheck::new(label);
    match input {
        Opened::Udp { sock, rtp } => run_udp(sock, rtp, seg, tx, &mut check).await,
        Opened::File { file, looped } => run_paced(file, looped, seg, tx, &mut check).await,
        Opened::Memory(bytes) => {
            run_paced(std::io::Cursor::new(bytes), true, seg, tx, &mut check).await
        }
        Opened::Stdin => run_stdin(seg, tx, &mut check).await,
    }
}

/// A UDP socket for an input: reuse, multicast join, 2 MiB buffer.
pub fn udp_socket(
    bind: SocketAddr,
    group: Option<IpAddr>,
    iface: Option<Ipv4Addr>,
) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if let Err(e) = s.set_recv_buffer_size(UDP_RCVBUF) {
        log::warn!("cannot set a {UDP_RCVBUF}-byte receive buffer: {e}");
    }
    // Bind the group's address (so only its datagrams arrive) on the given port.
    s.bind(&bind.into())?;
    match group {
        Some(IpAddr::V4(g)) => {
            s.join_multicast_v4(&g, &iface.unwrap_or(Ipv4Addr::UNSPECIFIED))?;
            #[cfg(target_os = "linux")]
            s.set_multicast_all_v4(false)?;
        }
        Some(IpAddr::V6(g)) => {
            s.join_multicast_v6(&g, 0)?;
            #[cfg(target_os = "linux")]
            s.set_multicast_all_v6(false)?;
        }
        None => {}
    }
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

async fn run_udp(
    sock: tokio::net::UdpSocket,
    rtp: bool,
    mut seg: Segmenter,
    tx: mpsc::Sender<Cut>,
    check: &mut TsCheck<'_>,
) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut resync = Resync::new();
    let mut pkts = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        let n = sock.recv(&mut buf).await?;
        let d = &buf[..n];
        let data = if rtp { rtp::payload(d) } else { Some(d) };
        let Some(data) = data else { continue };
        pkts.clear();
        resync.push(data, &mut pkts);
        check.saw(data.len(), pkts.len());
        let now = start.elapsed().as_micros() as u64;
        if !feed(&mut seg, &pkts, now, &tx).await {
            return Ok(());
        }
    }
}

/// Feeds aligned packets to the segmenter; false once nobody listens.
async fn feed(seg: &mut Segmenter, pkts: &[u8], now_us: u64, tx: &mpsc::Sender<Cut>) -> bool {
    for p in pkts.chunks_exact(PACKET) {
        let Ok(p) = <&[u8; PACKET]>::try_from(p) else {
            continue;
        };
        if let Some(cut) = seg.push(p, now_us) {
            if tx.send(cut).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// Plays a seekable byte source at the pace its PCR gives, optionally looping.
async fn run_paced<R: Read + Seek>(
    mut r: R,
    looped: bool,
    mut seg: Segmenter,
    tx: mpsc::Sender<Cut>,
    check: &mut TsCheck<'_>,
) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut resync = Resync::new();
    let mut pkts = Vec::with_capacity(READ_CHUNK + 2 * PACKET);
    let mut pacer = Pacer::default();
    let mut empty_loops = 0;
    // Looping: each pass is shifted by the span of the timestamps before it, so the channel's
    // clocks run on as a live one's do (players see no jump back).
    let mut offset: u64 = 0;
    let mut span: Option<(u64, u64)> = None;
    loop {
        let n = r.read(&mut buf)?;
        pkts.clear();
        if n == 0 {
            resync.finish(&mut pkts);
        } else {
            resync.push(&buf[..n], &mut pkts);
        }
        check.saw(n, pkts.len());
        for p in pkts.chunks_exact_mut(PACKET) {
            let Ok(p) = <&mut [u8; PACKET]>::try_from(p) else {
                continue;
            };
            if looped {
                let (pts, dts) = ts::pes_timestamps(p);
                for t in [pts, dts].into_iter().flatten() {
                    span = Some(span.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
                }
                ts::restamp(p, offset);
            }
            let p = &*p;
            if let Some(wait) = pacer.wait_for(p, std::time::Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            if let Some(cut) = seg.push(p, start.elapsed().as_micros() as u64) {
                if tx.send(cut).await.is_err() {
                    return Ok(());
                }
            }
        }
        if n > 0 {
            continue;
        }
        if !looped {
            if let Some(cut) = seg.flush() {
                let _ = tx.send(cut).await;
            }
            return check.at_end();
        }
        check.at_end()?;
        // An input with no whole packet at all would spin: give up after a few passes.
        empty_loops += 1;
        if empty_loops > 3 && pacer.base.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MPEG-TS packets with PCR in the input",
            ));
        }
        r.seek(SeekFrom::Start(0))?;
        seg.mark_discontinuity();
        match span.take() {
            // One frame's worth (40 ms) past the last timestamp of the pass.
            Some((lo, hi)) => offset = (offset + (hi - lo) + 3600) % ts::TS_WRAP,
            None => pacer.base = None,
        }
    }
}

/// Maps a file's PCR to wall time: the first PCR seen is "now", later ones are due that much
/// later.
#[derive(Default, Debug)]
pub struct Pacer {
    pcr_pid: Option<u16>,
    base: Option<(u64, std::time::Instant)>,
}

impl Pacer {
    /// How long to wait before passing this packet on, if at all.
    pub fn wait_for(&mut self, p: &[u8], now: std::time::Instant) -> Option<Duration> {
        let pcr = ts::pcr(p)?;
        let pid = ts::pid(p);
        if *self.pcr_pid.get_or_insert(pid) != pid {
            return None;
        }
        let Some((base_pcr, base_at)) = self.base else {
            self.base = Some((pcr, now));
            return None;
        };
        let ticks = ts::pcr_delta(base_pcr, pcr);
        let due = base_at + Duration::from_micros(ticks * 1_000_000 / PCR_HZ);
        if due > now + MAX_PACING_SKEW || now > due + MAX_PACING_SKEW {
            // A jump in the file, or we fell far behind: start pacing afresh here.
            self.base = Some((pcr, now));
            return None;
        }
        (due > now).then(|| due - now)
    }
}

/// Reads stdin on its own thread (tokio's stdin support is not compiled in) and feeds the
/// segmenter in this task.
async fn run_stdin(
    mut seg: Segmenter,
    tx: mpsc::Sender<Cut>,
    check: &mut TsCheck<'_>,
) -> std::io::Result<()> {
    let (ctx, mut crx) = mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if ctx.blocking_send(buf).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let start = std::time::Instant::now();
    let mut resync = Resync::new();
    let mut pkts = Vec::new();
    while let Some(chunk) = crx.recv().await {
        pkts.clear();
        resync.push(&chunk, &mut pkts);
        check.saw(chunk.len(), pkts.len());
        if !feed(&mut seg, &pkts, start.elapsed().as_micros() as u64, &tx).await {
            return Ok(());
        }
    }
    pkts.clear();
    resync.finish(&mut pkts);
    feed(&mut seg, &pkts, start.elapsed().as_micros() as u64, &tx).await;
    if let Some(cut) = seg.flush() {
        let _ = tx.send(cut).await;
    }
    check.at_end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::packet_with_pcr;

    #[test]
    fn input_urls_parse() {
        assert_eq!(
            InputSpec::parse("udp://@239.1.1.1:1234").unwrap(),
            InputSpec::Udp {
                bind: "239.1.1.1:1234".parse().unwrap(),
                group: Some("239.1.1.1".parse().unwrap()),
                iface: None,
                rtp: false
            }
        );
        assert_eq!(
            InputSpec::parse("rtp://127.0.0.1:5004").unwrap(),
            InputSpec::Udp {
                bind: "127.0.0.1:5004".parse().unwrap(),
                group: None,
                iface: None,
                rtp: true
            }
        );
        assert!(matches!(
            InputSpec::parse("udp://@[ff15::1]:5000?iface=10.0.0.1"),
            Ok(InputSpec::Udp {
                group: Some(IpAddr::V6(_)),
                iface: Some(_),
                ..
            })
        ));
        assert!(matches!(
            InputSpec::parse("udp://@:5000"),
            Ok(InputSpec::Udp { group: None, .. })
        ));
        assert_eq!(
            InputSpec::parse("file:/tmp/a.ts?loop").unwrap(),
            InputSpec::File {
                path: "/tmp/a.ts".into(),
                looped: true
            }
        );
        assert_eq!(InputSpec::parse("-").unwrap(), InputSpec::Stdin);
        for bad in [
            "http://x",
            "udp://nohost",
            "udp://@:x",
            "file:",
            "udp://1.2.3.4:5?x=1",
        ] {
            assert!(InputSpec::parse(bad).is_err(), "{bad}");
        }
    }

    /// The bundled demo stream through the paced, looping reader: segments come at the
    /// stream's pace, one second each, each an entry point with PAT and PMT in front, and the
    /// loop point is flagged.
    #[tokio::test(flavor = "current_thread")]
    async fn the_demo_stream_is_cut_into_paced_entry_point_segments() {
        let (tx, mut rx) = mpsc::channel(INGEST_TEST_QUEUE);
        let input = open(&InputSpec::Memory(include_bytes!("../../assets/demo.ts"))).unwrap();
        let task = tokio::spawn(run(input, 1000, None, "demo", tx));
        let t0 = std::time::Instant::now();
        let mut cuts = Vec::new();
        while cuts.len() < 3 {
            cuts.push(rx.recv().await.unwrap());
        }
        // Three one-second segments take about two seconds after the first (paced by PCR).
        let took = t0.elapsed().as_secs_f64();
        assert!((1.5..4.0).contains(&took), "{took}");
        for c in &cuts {
            assert!(c.entry_point, "every segment starts at a keyframe");
            assert_eq!(c.data.len() % PACKET, 0);
            // PAT at the head (the file's own first segment starts with its SDT).
            let head: Vec<u16> = c.data.chunks(PACKET).take(3).map(ts::pid).collect();
            assert!(head.contains(&0), "{head:?}");
            assert!(
                (900_000..=1_100_000).contains(&c.duration_us),
                "{}",
                c.duration_us
            );
        }
        task.abort();
    }

    const INGEST_TEST_QUEUE: usize = 4;

    #[test]
    fn pacer_follows_pcr_and_restarts_on_jumps() {
        let t0 = std::time::Instant::now();
        let mut p = Pacer::default();
        assert_eq!(
            p.wait_for(&packet_with_pcr(256, 27_000_000, false), t0),
            None
        );
        let w = p.wait_for(&packet_with_pcr(256, 27_000_000 + 13_500_000, false), t0);
        assert_eq!(w, Some(Duration::from_millis(500)));
        // Another PID's PCR is not ours.
        assert_eq!(p.wait_for(&packet_with_pcr(300, 0, false), t0), None);
        // A jump of an hour restarts pacing instead of sleeping for it.
        let far = 27_000_000 + 3600 * 27_000_000;
        assert_eq!(p.wait_for(&packet_with_pcr(256, far, false), t0), None);
        assert_eq!(p.base.unwrap().0, far);
    }
}
