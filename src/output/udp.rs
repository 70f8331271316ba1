//! The UDP output: the played stream as MPEG-TS datagrams of seven packets (1316 bytes), bare
//! (`udp://HOST:PORT`) or in RTP (`rtp://HOST:PORT`: payload type 33, a sequence number, a
//! 90 kHz timestamp from the sending clock, RFC 2250), unicast or multicast
//! (`?ttl=N&iface=ADDR` for IPv4 multicast).
//!
//! **Paced by PCR**: each packet's send time is read from the stream's own clock, the PCR,
//! interpolated between PCRs by packet position (as a hardware multiplexer sends it), so a
//! decoder's small buffer sees the rate the encoder intended, never a segment in one burst.
//! A break in the clock (a signalled discontinuity, a jump of more than a second) starts the
//! mapping afresh where the previous packet left off; an output that falls more than
//! [`MAX_LATE`] behind its schedule starts afresh at now rather than catch up in a burst.
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

use super::{Feed, FeedItem};
use crate::media::splice::Splicer;
use crate::media::ts::{self, PACKET, PCR_HZ};
use crate::proto::wire::flags;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// TS packets per datagram: seven, the usual IPTV size (1316 bytes).
pub const PER_DATAGRAM: usize = 7;
/// TS bytes per datagram.
pub const DATAGRAM_TS: usize = PER_DATAGRAM * PACKET;
/// Behind schedule by more than this, the output restarts its clock at now.
pub const MAX_LATE: Duration = Duration::from_millis(200);
/// A PCR step larger than this (or backwards) is a break in the clock.
const MAX_PCR_STEP: u64 = PCR_HZ;
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
    let mut clock = PcrClock::default();
    let mut splicer = Splicer::new();
    let mut spliced = Vec::new();
    let mut plan = Vec::new();
    let mut carry: Vec<u8> = Vec::with_capacity(2 * DATAGRAM_TS);
    let mut carry_plan: Vec<Instant> = Vec::new();
    let mut sent = 0;
    loop {
        let feed = feeds.borrow_and_update().clone();
        let (start, mut rx) = feed.subscribe(Instant::now());
        let mut backlog: std::collections::VecDeque<FeedItem> = start.into();
        let switched = loop {
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
            clock.plan(&spliced, dur, Instant::now(), &mut plan);
            // Packets left over from the last chunk go first: every datagram is whole (seven
            // packets), and leaves when its last packet is due, as a multiplexer sends it.
            carry.extend_from_slice(&spliced);
            carry_plan.extend_from_slice(&plan);
            let whole = carry.len() / DATAGRAM_TS;
            let mut changed = false;
            for i in 0..whole {
                let due = carry_plan[i * PER_DATAGRAM + PER_DATAGRAM - 1];
                tokio::select! {
                    biased;
                    c = feeds.changed() => { changed = c.is_ok(); if !changed { return; } break; }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
                }
                let chunk = &carry[i * DATAGRAM_TS..(i + 1) * DATAGRAM_TS];
                sender.send(clock.rtp_time(due), chunk).await;
                sent = i + 1;
            }
            if changed {
                break true;
            }
            carry.drain(..sent * DATAGRAM_TS);
            carry_plan.drain(..sent * PER_DATAGRAM);
            sent = 0;
        };
        if !switched {
            return;
        }
        log::info!("udp output: channel changed");
        // What is left of the old channel is not sent: the new one starts now (a decoder
        // drops the unfinished PES at the signalled discontinuity).
        carry.drain(..sent * DATAGRAM_TS);
        splicer.change_channel(&mut carry);
        splicer.unsent(&carry);
        clock.restart();
        carry.clear();
        carry_plan.clear();
        sent = 0;
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

    async fn send(&mut self, ts90k: u32, chunk: &[u8]) {
        let now = Instant::now();
        // No socket yet, or failing long enough that a new one may help: make one, at most
        // once every RENEW_AFTER.
        let renew = self
            .health
            .failing_since()
            .is_some_and(|since| now.saturating_duration_since(since) >= RENEW_AFTER);
        let due = self
            .made
            .is_none_or(|t| now.saturating_duration_since(t) >= RENEW_AFTER);
        if (self.sock.is_none() || renew) && due {
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
            buf[..12].copy_from_slice(&self.rtp.header(ts90k));
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
}

impl Rtp {
    fn new() -> Self {
        let mut b = [0u8; 6];
        let _ = getrandom::fill(&mut b);
        Rtp {
            seq: u16::from_le_bytes([b[0], b[1]]),
            ssrc: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
        }
    }

    fn header(&mut self, ts90k: u32) -> [u8; 12] {
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

/// Maps packets to send times by the stream's PCR.
#[derive(Debug, Default)]
pub struct PcrClock {
    pcr_pid: Option<u16>,
    /// A PCR and the instant it is due: the mapping from stream clock to wall clock.
    base: Option<(u64, Instant)>,
    /// The last PCR placed, its due time, and the packets planned since it.
    last: Option<(u64, Instant, u64)>,
    /// PCR ticks per packet over the last PCR interval.
    ticks_per_packet: Option<u64>,
    /// Due time of the last packet planned.
    last_due: Option<Instant>,
    /// Origin of the RTP timestamps.
    epoch: Option<Instant>,
}

impl PcrClock {
    /// The channel changed: its clock has nothing to do with the last one (sending goes on
    /// from the last packet's time).
    pub fn restart(&mut self) {
        self.pcr_pid = None;
        self.base = None;
        self.last = None;
        self.ticks_per_packet = None;
    }

    /// The 90 kHz RTP timestamp of a send time.
    pub fn rtp_time(&mut self, due: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(due);
        (due.saturating_duration_since(epoch).as_micros() * 9 / 100) as u32
    }

    /// Due times of every packet of `data` (whole packets, as sent) into `plan`. `dur` is the
    /// chunk's nominal duration, for packets no PCR can place.
    pub fn plan(&mut self, data: &[u8], dur: Duration, now: Instant, plan: &mut Vec<Instant>) {
        plan.clear();
        let n = data.len() / PACKET;
        // PCRs in this chunk: packet index, value, discontinuity signalled.
        let mut pcrs: Vec<(usize, u64, bool)> = Vec::new();
        for (i, p) in data.chunks_exact(PACKET).enumerate() {
            if let Some(v) = ts::pcr(p) {
                let pid = ts::pid(p);
                if *self.pcr_pid.get_or_insert(pid) == pid {
                    pcrs.push((i, v, ts::discontinuity(p)));
                }
            }
        }
        let fallback = (dur.as_micros() as u64 * 27 / n.max(1) as u64).max(1);
        let mut j = 0;
        for i in 0..n {
            let due = if j < pcrs.len() && pcrs[j].0 == i {
                let (_, v, disc) = pcrs[j];
                j += 1;
                if disc {
                    self.base = None;
                }
                self.at_pcr(v, now)
            } else {
                self.between(pcrs.get(j).map(|&(k, v, d)| (k - i, v, d)), fallback, now)
            };
            self.last_due = Some(due);
            plan.push(due);
        }
    }

    /// The due time of a packet carrying PCR `v`.
    fn at_pcr(&mut self, v: u64, now: Instant) -> Instant {
        if let Some((last, _, k)) = self.last {
            let d = ts::pcr_delta(last, v);
            if d > MAX_PCR_STEP || d == 0 {
                self.base = None; // a jump (or the clock stood still): start afresh
            } else if k > 0 {
                self.ticks_per_packet = Some((d / (k + 1)).max(1));
            }
        }
        let mut due = match self.base {
            Some((b, t)) => t + ticks(ts::pcr_delta(b, v)),
            None => {
                // A fresh mapping goes on from the last packet sent (or now).
                let t = self.last_due.map_or(now, |d| d.max(earliest(now)));
                self.base = Some((v, t));
                t
            }
        };
        if due + MAX_LATE < now {
            // Far behind: restart the schedule at now rather than catch up in a burst.
            self.base = Some((v, now));
            due = now;
        }
        // Re-anchored at every PCR: the mapping never spans a wrap of the 33-bit clock.
        self.base = Some((v, due));
        self.last = Some((v, due, 0));
        due
    }

    /// The due time of a packet without PCR: by its position between the last PCR and the
    /// next one in this chunk (`next`: packets ahead, value, discontinuity), or at the last
    /// interval's rate.
    fn between(
        &mut self,
        next: Option<(usize, u64, bool)>,
        fallback: u64,
        now: Instant,
    ) -> Instant {
        let Some((v, at, k)) = self.last.as_mut() else {
            // No PCR yet: evenly at the nominal rate after the last packet.
            let step = ticks(fallback);
            return self
                .last_due
                .map_or(now, |d| (d + step).max(earliest(now)).min(now + MAX_LATE));
        };
        *k += 1;
        let tpp = match next {
            Some((ahead, nv, false)) => {
                let d = ts::pcr_delta(*v, nv);
                if d > 0 && d <= MAX_PCR_STEP {
                    d / (*k + ahead as u64)
                } else {
                    self.ticks_per_packet.unwrap_or(fallback)
                }
            }
            _ => self.ticks_per_packet.unwrap_or(fallback),
        };
        *at + ticks(tpp * *k)
    }
}

/// The earliest due time still on schedule at `now`.
fn earliest(now: Instant) -> Instant {
    now.checked_sub(MAX_LATE).unwrap_or(now)
}

/// A duration of `t` PCR ticks (27 MHz).
fn ticks(t: u64) -> Duration {
    Duration::from_nanos(t.saturating_mul(1000) / 27)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::packet_with_pcr;

    /// `n` packets, a PCR every 10 packets stepping 10 ms from `pcr0`, the rest PID 257.
    fn chunk(n: usize, pcr0: u64) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            if i % 10 == 0 {
                v.extend_from_slice(&packet_with_pcr(
                    256,
                    pcr0 + (i as u64 / 10) * 270_000,
                    false,
                ));
            } else {
                let mut p = [0u8; PACKET];
                p[..4].copy_from_slice(&[0x47, 0x01, 0x01, 0x10]);
                v.extend_from_slice(&p);
            }
        }
        v
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    #[test]
    fn packets_are_due_by_their_pcr_interpolated_between_pcrs() {
        let t0 = Instant::now();
        let mut c = PcrClock::default();
        let mut plan = Vec::new();
        c.plan(
            &chunk(100, 27_000_000),
            Duration::from_millis(100),
            t0,
            &mut plan,
        );
        assert_eq!(plan.len(), 100);
        for (i, due) in plan.iter().enumerate() {
            // 1 ms per packet from the first PCR (10 ms per 10 packets).
            assert!(
                (ms(*due - t0) - i as f64).abs() < 0.01,
                "{i}: {:?}",
                *due - t0
            );
        }
        // The next chunk continues the clock (its packets after its last PCR at the last
        // interval's rate).
        let mut plan2 = Vec::new();
        c.plan(
            &chunk(95, 27_000_000 + 2_700_000),
            Duration::from_millis(95),
            t0,
            &mut plan2,
        );
        assert!((ms(plan2[0] - t0) - 100.0).abs() < 0.01);
        assert!((ms(plan2[94] - t0) - 194.0).abs() < 0.01);
        // A jump in the PCR (another pass of a loop, a gap) goes on from the last packet.
        let mut plan3 = Vec::new();
        c.plan(
            &chunk(10, 999 * 27_000_000),
            Duration::from_millis(10),
            t0,
            &mut plan3,
        );
        assert!(
            (ms(plan3[0] - t0) - 194.0).abs() < 0.01,
            "{:?}",
            plan3[0] - t0
        );
        assert!((ms(plan3[9] - t0) - 203.0).abs() < 0.01);
    }

    #[test]
    fn a_late_output_restarts_its_schedule_instead_of_bursting() {
        let t0 = Instant::now();
        let mut c = PcrClock::default();
        let mut plan = Vec::new();
        c.plan(&chunk(20, 0), Duration::from_millis(20), t0, &mut plan);
        // Two seconds later (the feed stalled), the stream goes on from now.
        let later = t0 + Duration::from_secs(2);
        c.plan(
            &chunk(20, 540_000),
            Duration::from_millis(20),
            later,
            &mut plan,
        );
        assert_eq!(plan[0], later);
        assert!((ms(plan[19] - later) - 19.0).abs() < 0.01);
        // RTP time runs at 90 kHz from the first datagram.
        assert_eq!(c.rtp_time(t0), 0);
        assert_eq!(c.rtp_time(t0 + Duration::from_secs(1)), 90_000);
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
