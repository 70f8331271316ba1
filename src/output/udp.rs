//! The UDP output: the played stream as MPEG-TS datagrams of seven packets (1316 bytes), bare
//! (`udp://HOST:PORT`) or in RTP (`rtp://HOST:PORT`: payload type 33, a sequence number, a
//! 90 kHz timestamp from the sending clock, RFC 2250), unicast or multicast
//! (`?ttl=N&iface=ADDR` for IPv4 multicast).
//!
//! **Paced by PCR** ([`super::pace`], shared with the HTTP players): each packet's send time
//! is read from the stream's own clock, so a decoder's small buffer sees the rate the encoder
//! intended, never a segment in one burst; a datagram leaves when its last packet is due. A
//! break in the clock starts the mapping afresh where the previous packet left off; an output
//! that falls more than [`MAX_LATE`](super::pace::MAX_LATE) behind its schedule starts afresh
//! at now rather than catch up in a burst. Its start is paced too (a decoder on UDP has no
//! probe buffer to fill): it takes the next segment from its feed only when what it holds is
//! sent, so its queue is one segment and its delay is bounded by the feed's queue.
//!
//! The output starts at its feed's start point and is spliced like any player
//! ([`crate::media::splice`]). It can be pointed at another channel while it runs
//! ([`Retarget`]): the new channel starts at its own start point, the break signalled.
//!
//! **It heals**: a decoder listening on UDP has no other way to get the stream back, so no
//! send error ends the output. A failed send (the multicast route gone, a firewall's EPERM,
//! ENOBUFS) drops that datagram, is counted, and starts a *failing episode*, logged once when
//! it starts and once when sending works again; the stream's schedule goes on meanwhile, so
//! the decoder gets the live edge back, not a backlog. An episode longer than [`RENEW_AFTER`]
//! also makes a new socket every [`RENEW_AFTER`] (an interface address that changed under a
//! bound `iface`). [`Health`] shows all of it to `ctl status`, the `STATUS=` line and the
//! main loop's watchdog (an output that stops making progress while its feed moves is wedged).

use super::pace::Pacer;
use super::{Feed, FeedItem};
use crate::media::splice::Splicer;
use crate::media::ts::PACKET;
use crate::proto::wire::flags;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// TS packets per datagram: seven, the usual IPTV size (1316 bytes).
pub const PER_DATAGRAM: usize = 7;
/// TS bytes per datagram.
pub const DATAGRAM_TS: usize = PER_DATAGRAM * PACKET;
/// A failing episode this long makes a new socket, and again as often while it lasts.
pub const RENEW_AFTER: Duration = Duration::from_secs(5);

/// What a UDP output is doing, shared with whoever reports on it.
#[derive(Debug, Default)]
pub struct Health {
    state: std::sync::Mutex<HealthState>,
}

#[derive(Clone, Debug, Default)]
struct HealthState {
    /// Datagrams handed to the kernel.
    datagrams: u64,
    /// Sends that failed, in all.
    errors: u64,
    /// The running failing episode: since when, its last error, its failed sends.
    failing: Option<(Instant, String, u64)>,
    /// Failing episodes so far.
    episodes: u64,
    /// The last time the output did anything (an item taken, a datagram sent or refused).
    progress: Option<Instant>,
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut HealthState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn progress(&self, now: Instant) {
        self.with(|h| h.progress = Some(now));
    }

    /// A datagram left. Returns how long the episode it ends lasted and its failed sends.
    fn sent(&self, now: Instant) -> Option<(Duration, u64)> {
        self.with(|h| {
            h.datagrams += 1;
            h.progress = Some(now);
            h.failing
                .take()
                .map(|(since, _, n)| (now.saturating_duration_since(since), n))
        })
    }

    /// A send failed. True when this starts an episode (the caller logs it).
    fn failed(&self, now: Instant, e: &std::io::Error) -> bool {
        self.with(|h| {
            h.errors += 1;
            h.progress = Some(now);
            match &mut h.failing {
                Some((_, what, n)) => {
                    *n += 1;
                    if h.errors % 64 == 0 {
                        *what = e.to_string();
                    }
                    false
                }
                None => {
                    h.failing = Some((now, e.to_string(), 1));
                    h.episodes += 1;
                    true
                }
            }
        })
    }

    /// When the running episode began, if one runs.
    pub fn failing_since(&self) -> Option<Instant> {
        self.with(|h| h.failing.as_ref().map(|f| f.0))
    }

    /// The last time the output did anything.
    pub fn last_progress(&self) -> Option<Instant> {
        self.with(|h| h.progress)
    }

    /// The output's state as `ctl status` and the stats show it: `state` is `sending` or
    /// `failing` (with `since_s`, how long it has been failing, and `error`, why), with counts.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        let h = self.with(|h| h.clone());
        let mut v = serde_json::json!({
            "state": if h.failing.is_some() { "failing" } else { "sending" },
            "since_s": null,
            "error": null,
            "datagrams": h.datagrams,
            "errors": h.errors,
            "failing_episodes": h.episodes,
        });
        if let Some((since, what, n)) = h.failing {
            v["since_s"] = now.saturating_duration_since(since).as_secs_f64().into();
            v["error"] = what.into();
            v["episode_errors"] = n.into();
        }
        v
    }

    /// One line for logs and `STATUS=`: empty while all is well.
    pub fn summary(&self, now: Instant) -> String {
        self.with(|h| match &h.failing {
            Some((since, what, _)) => format!(
                "udp output failing for {:.0} s: {what}",
                now.saturating_duration_since(*since).as_secs_f64()
            ),
            None => String::new(),
        })
    }
}

/// Points a running UDP output at another channel's feed.
pub type Retarget = watch::Sender<Arc<Feed>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpOut {
    pub dest: SocketAddr,
    pub rtp: bool,
    pub ttl: Option<u32>,
    pub iface: Option<Ipv4Addr>,
}

impl UdpOut {
    pub fn parse(s: &str) -> Result<UdpOut, String> {
        let (rtp, rest) = if let Some(r) = s.strip_prefix("udp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("rtp://") {
            (true, r)
        } else {
            return Err(format!("'{s}' is not udp://HOST:PORT or rtp://HOST:PORT"));
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let dest: SocketAddr = addr
            .parse()
            .map_err(|_| format!("'{s}': expected ADDR:PORT (IPv6 as [ADDR]:PORT)"))?;
        let mut out = UdpOut {
            dest,
            rtp,
            ttl: None,
            iface: None,
        };
        for q in query.split('&').filter(|q| !q.is_empty()) {
            match q.split_once('=') {
                Some(("ttl", v)) => {
                    out.ttl = Some(v.parse().map_err(|_| format!("'{s}': bad ttl"))?)
                }
                Some(("iface", v)) => {
                    out.iface = Some(v.parse().map_err(|_| format!("'{s}': bad iface"))?)
                }
                _ => return Err(format!("'{s}': unknown option '{q}'")),
            }
        }
        Ok(out)
    }
}

/// Sends the feed `feeds` holds to `out`; a new feed in `feeds` (a channel change) is switched
/// to at once. Ends when the sender of `feeds` is dropped; no send error ends it (see the
/// module doc): `health` tells how it goes.
pub async fn run(out: UdpOut, mut feeds: watch::Receiver<Arc<Feed>>, health: Arc<Health>) {
    let mut sender = Sender::new(out, health);
    let mut pacer = Pacer::new();
    let mut splicer = Splicer::new();
    let mut spliced = Vec::new();
    loop {
        let feed = feeds.borrow_and_update().clone();
        let (start, mut rx) = feed.subscribe(Instant::now());
        let mut backlog: std::collections::VecDeque<FeedItem> = start.into();
        let switched = loop {
            // Every datagram is whole (seven packets) and leaves when its last packet is due,
            // as a multiplexer sends it; packets short of a datagram wait for the next item.
            if let Some(due) = pacer.due(PER_DATAGRAM - 1) {
                tokio::select! {
                    biased;
                    c = feeds.changed() => break c.is_ok(),
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
                }
                sender.send(due, pacer.take(PER_DATAGRAM)).await;
                continue;
            }
            let item = match backlog.pop_front() {
                Some(i) => i,
                None => tokio::select! {
                    r = rx.recv() => match r {
                        Ok(i) => i,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            log::info!("udp output fell {n} segments behind");
                            FeedItem::Gap { seq: crate::proto::Seq(0) }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    c = feeds.changed() => break c.is_ok(),
                },
            };
            sender.health.progress(Instant::now());
            spliced.clear();
            let dur = match &item {
                FeedItem::Segment { seg, .. } => {
                    splicer.segment(
                        &seg.payload.data,
                        seg.flags & flags::ENTRY_POINT != 0,
                        seg.flags & flags::DISCONTINUITY != 0,
                        &mut spliced,
                    );
                    Duration::from_micros(seg.duration_us as u64)
                }
                FeedItem::Gap { .. } => {
                    splicer.gap(&mut spliced);
                    Duration::ZERO
                }
            };
            pacer.push(&spliced, dur, Instant::now());
        };
        if !switched {
            return;
        }
        log::info!("udp output: channel changed");
        // What is left of the old channel is not sent: the new one starts now (a decoder
        // drops the unfinished PES at the signalled discontinuity).
        spliced.clear();
        spliced.extend_from_slice(pacer.pending());
        splicer.change_channel(&mut spliced);
        splicer.unsent(&spliced);
        pacer.clear();
        pacer.restart_clock();
    }
}

async fn socket(out: &UdpOut) -> std::io::Result<tokio::net::UdpSocket> {
    let bind: SocketAddr = match out.dest.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    if let Some(ttl) = out.ttl {
        if out.dest.ip().is_multicast() {
            sock.set_multicast_ttl_v4(ttl)?;
        } else {
            sock.set_ttl(ttl)?;
        }
    }
    if let Some(iface) = out.iface {
        socket2::SockRef::from(&sock).set_multicast_if_v4(&iface)?;
    }
    Ok(sock)
}

/// The socket, the RTP state and the health of one output: every datagram goes through
/// [`Sender::send`], which never fails.
struct Sender {
    out: UdpOut,
    sock: Option<tokio::net::UdpSocket>,
    /// When the socket was last made (or tried).
    made: Option<Instant>,
    rtp: Rtp,
    health: Arc<Health>,
}

impl Sender {
    fn new(out: UdpOut, health: Arc<Health>) -> Self {
        Sender {
            out,
            sock: None,
            made: None,
            rtp: Rtp::new(),
            health,
        }
    }

    /// Sends one datagram of `chunk`, due at `due` (its RTP timestamp).
    async fn send(&mut self, due: Instant, chunk: &[u8]) {
        let now = Instant::now();
        // No socket yet, or failing long enough that a new one may help: make one, at most
        // once every RENEW_AFTER.
        let renew = self
            .health
            .failing_since()
            .is_some_and(|since| now.saturating_duration_since(since) >= RENEW_AFTER);
        let may_make = self
            .made
            .is_none_or(|t| now.saturating_duration_since(t) >= RENEW_AFTER);
        if (self.sock.is_none() || renew) && may_make {
            self.made = Some(now);
            match socket(&self.out).await {
                Ok(s) => self.sock = Some(s),
                Err(e) if self.sock.is_none() => return self.failed(now, &e),
                Err(_) => {} // keep the old socket; its sends tell how things stand
            }
        }
        let Some(sock) = &self.sock else {
            let e = std::io::Error::other("no socket yet");
            return self.failed(now, &e);
        };
        let mut buf = [0u8; 12 + DATAGRAM_TS];
        let mut n = 0;
        if self.out.rtp {
            buf[..12].copy_from_slice(&self.rtp.header(due));
            n = 12;
        }
        buf[n..n + chunk.len()].copy_from_slice(chunk);
        n += chunk.len();
        match sock.send_to(&buf[..n], self.out.dest).await {
            Ok(_) => {
                if let Some((lasted, errors)) = self.health.sent(now) {
                    log::info!(
                        "udp output to {}: sending again after {:.1} s failing ({errors} datagrams lost)",
                        self.out.dest,
                        lasted.as_secs_f64()
                    );
                }
            }
            // A full socket buffer drops the datagram, as the network would.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.health.progress(now),
            Err(e) => self.failed(now, &e),
        }
    }

    fn failed(&self, now: Instant, e: &std::io::Error) {
        if self.health.failed(now, e) {
            log::warn!(
                "udp output to {}: {e}; datagrams are dropped until it works again",
                self.out.dest
            );
        }
    }
}

/// RTP header state.
struct Rtp {
    seq: u16,
    ssrc: u32,
    /// Origin of the timestamps: the first datagram's send time.
    epoch: Option<Instant>,
}

impl Rtp {
    fn new() -> Self {
        let mut b = [0u8; 6];
        let _ = getrandom::fill(&mut b);
        Rtp {
            seq: u16::from_le_bytes([b[0], b[1]]),
            ssrc: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
            epoch: None,
        }
    }

    /// The header of the next datagram, sent at `due` (a 90 kHz timestamp from the first).
    fn header(&mut self, due: Instant) -> [u8; 12] {
        let epoch = *self.epoch.get_or_insert(due);
        let ts90k = (due.saturating_duration_since(epoch).as_micros() * 9 / 100) as u32;
        let mut h = [0u8; 12];
        h[0] = 0x80;
        h[1] = 33;
        h[2..4].copy_from_slice(&self.seq.to_be_bytes());
        h[4..8].copy_from_slice(&ts90k.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rtp_headers_count_datagrams_and_time_them_at_90_khz() {
        let t0 = Instant::now();
        let mut r = Rtp::new();
        let h0 = r.header(t0);
        let h1 = r.header(t0 + Duration::from_secs(1));
        assert_eq!((h0[0], h0[1]), (0x80, 33));
        let seq = |h: &[u8; 12]| u16::from_be_bytes([h[2], h[3]]);
        assert_eq!(seq(&h1), seq(&h0).wrapping_add(1));
        let ts = |h: &[u8; 12]| u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        assert_eq!((ts(&h0), ts(&h1)), (0, 90_000));
        assert_eq!(h0[8..12], h1[8..12]);
    }

    #[test]
    fn a_failing_episode_is_counted_once_and_ends_with_the_first_datagram_sent() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.to_json(t0)["state"], "sending");
        assert_eq!(h.to_json(t0)["error"], serde_json::Value::Null);
        assert!(h.sent(t0).is_none(), "nothing was failing");
        let e = std::io::Error::from_raw_os_error(101); // ENETUNREACH
        assert!(h.failed(t0, &e), "the first failure starts an episode");
        for k in 1..10 {
            assert!(!h.failed(t0 + Duration::from_millis(k * 100), &e));
        }
        let later = t0 + Duration::from_secs(2);
        let v = h.to_json(later);
        assert_eq!(v["state"], "failing");
        assert_eq!(v["episode_errors"], 10);
        assert_eq!(v["since_s"], 2.0);
        assert!(
            h.summary(later).starts_with("udp output failing for 2 s: "),
            "{}",
            h.summary(later)
        );
        assert_eq!(h.failing_since(), Some(t0));
        let (lasted, lost) = h
            .sent(t0 + Duration::from_secs(4))
            .expect("the episode ends");
        assert_eq!((lasted, lost), (Duration::from_secs(4), 10));
        let v = h.to_json(later);
        assert_eq!(v["state"], "sending");
        assert_eq!(
            (v["errors"].as_u64(), v["failing_episodes"].as_u64()),
            (Some(10), Some(1))
        );
        assert!(h.summary(later).is_empty());
        assert!(
            h.failed(later, &e),
            "a new failure after a datagram went out is a new episode"
        );
    }

    #[test]
    fn output_urls_parse() {
        let o = UdpOut::parse("rtp://239.0.0.1:5004?ttl=4&iface=10.0.0.2").unwrap();
        assert!(o.rtp);
        assert_eq!(o.ttl, Some(4));
        assert_eq!(o.iface, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(
            UdpOut::parse("udp://127.0.0.1:1234").unwrap().dest,
            "127.0.0.1:1234".parse().unwrap()
        );
        assert!(UdpOut::parse("udp://x").is_err());
        assert!(UdpOut::parse("http://1.2.3.4:5").is_err());
        assert!(UdpOut::parse("udp://1.2.3.4:5?what=1").is_err());
    }
}
