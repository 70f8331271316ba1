//! Pacing by the stream's own clock, shared by the outputs (HTTP players, the UDP sender).
//!
//! Owns, per output, the spliced bytes not sent yet and the send time of each of their TS
//! packets. A packet's send time is read from the stream's clock, the PCR, interpolated
//! between PCRs by packet position (as a hardware multiplexer sends it), so a player sees the
//! rate the encoder intended, frame after frame, never a whole segment in one burst. Packets
//! no PCR can place (a stream without PCR, or before its first) are spread evenly over their
//! segment's duration.
//!
//! - **Breaks in the clock**: a signalled discontinuity, a PCR step of more than a second
//!   ([`MAX_PCR_STEP`]) or a clock that stands still starts the mapping afresh where the
//!   previous packet left off (the source's looped file, a splice after a gap).
//! - **Late** (the feed had nothing to send for a while): a PCR due more than [`MAX_LATE`] ago
//!   restarts the schedule at now, so the player gets the stream at its rate again rather
//!   than the missed time in a burst.
//! - **Never far behind the feed** ([`MAX_DELAY`]): pacing only ever delays bytes the node
//!   already played. When the start of a newly pushed chunk would wait more than
//!   [`MAX_DELAY`], the whole schedule moves earlier by the excess, and what that makes due
//!   goes out at once: the output catches up in a burst instead of drifting further behind
//!   live with every late segment the feed recovers from.
//! - **Bounded**: at most [`MAX_PACED_BYTES`] wait beyond what is due; more are ready at once
//!   ([`Pacer::ready`], [`Pacer::next_ready`]). The UDP output holds one segment at a time
//!   and sends by each datagram's send time alone.

use crate::media::ts::{self, PACKET, PCR_HZ};
use crate::proto::wire::MAX_SEGMENT_BYTES;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Behind schedule by more than this, the schedule restarts at now (no catch-up burst for
/// time the feed stood still: a decoder's buffer is small).
pub const MAX_LATE: Duration = Duration::from_millis(200);
/// A PCR step larger than this (or backwards) is a break in the clock.
pub const MAX_PCR_STEP: u64 = PCR_HZ;
/// The longest the start of a pushed chunk may wait for its send time. Pacing absorbs the
/// jitter of segment arrivals (a segment that comes early waits its turn, so one that comes
/// late finds the player still fed), but every wait is delay added to live. Measured at a peer
/// of 8 on loopback, arrivals spread about 0.25 s around the stream's clock (more where the
/// source loops its file); when the node delivered its first segments in a rush, the schedule
/// settled 1.7-2.0 s behind them. Two seconds leaves room for several times the spread and
/// keeps the delay added within two segments of 1 s.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Bytes waiting beyond what is due, at most: one largest segment. Above it the oldest are due
/// at once (a stream whose clock barely moves cannot pile up memory in a slow schedule).
pub const MAX_PACED_BYTES: usize = MAX_SEGMENT_BYTES as usize;

/// Spliced TS packets waiting for their send times.
#[derive(Debug)]
pub struct Pacer {
    clock: PcrClock,
    /// Queued bytes: whole packets from `sent` on are unsent.
    data: Vec<u8>,
    sent: usize,
    /// The send time of each unsent packet, in order.
    due: VecDeque<Instant>,
    plan: Vec<Instant>,
    /// Times the schedule was moved earlier to keep within [`MAX_DELAY`].
    pub catch_ups: u64,
    /// The longest a pushed chunk's start waited for its send time (at most [`MAX_DELAY`]).
    pub longest_wait: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    pub fn new() -> Self {
        Pacer {
            clock: PcrClock::default(),
            data: Vec::new(),
            sent: 0,
            due: VecDeque::new(),
            plan: Vec::new(),
            catch_ups: 0,
            longest_wait: Duration::ZERO,
        }
    }

    /// Queues `data` (whole packets; a trailing partial packet is ignored) of nominal
    /// duration `dur` (for packets no PCR places) behind what is queued.
    pub fn push(&mut self, data: &[u8], dur: Duration, now: Instant) {
        let n = data.len() / PACKET;
        if n == 0 {
            return;
        }
        self.clock
            .plan(&data[..n * PACKET], dur, now, &mut self.plan);
        if self.sent > 0 {
            self.data.drain(..self.sent);
            self.sent = 0;
        }
        self.data.extend_from_slice(&data[..n * PACKET]);
        self.due.extend(self.plan.iter().copied());
        let wait = self.plan[0].saturating_duration_since(now);
        if wait > MAX_DELAY {
            self.earlier(wait - MAX_DELAY);
        }
        self.longest_wait = self.longest_wait.max(wait.min(MAX_DELAY));
    }

    /// Moves the whole schedule (queued packets and the clock's mapping) earlier by `by`.
    fn earlier(&mut self, by: Duration) {
        self.catch_ups += 1;
        for d in self.due.iter_mut() {
            *d = d.checked_sub(by).unwrap_or(*d);
        }
        self.clock.earlier(by);
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// The send time of the `k`th queued packet (0: the next).
    pub fn due(&self, k: usize) -> Option<Instant> {
        self.due.get(k).copied()
    }

    /// How many packets at the head may go by `now`: those due, and any beyond
    /// [`MAX_PACED_BYTES`] waiting.
    pub fn ready(&self, now: Instant) -> usize {
        let due = self.due.iter().take_while(|d| **d <= now).count();
        let over = self.due.len().saturating_sub(MAX_PACED_BYTES / PACKET);
        due.max(over)
    }

    /// When the next packets may go: the head's send time, or `now` while more than
    /// [`MAX_PACED_BYTES`] wait. None when nothing is queued.
    pub fn next_ready(&self, now: Instant) -> Option<Instant> {
        if self.due.len() > MAX_PACED_BYTES / PACKET {
            return Some(now);
        }
        self.due.front().copied()
    }

    /// How long the last queued packet waits from `now` (zero when nothing waits).
    pub fn behind(&self, now: Instant) -> Duration {
        self.due
            .back()
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(now))
    }

    /// Takes the next `n` packets (at most all queued) off the queue.
    pub fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.due.len());
        self.due.drain(..n);
        let from = self.sent;
        self.sent += n * PACKET;
        &self.data[from..self.sent]
    }

    /// Everything queued and not sent.
    pub fn pending(&self) -> &[u8] {
        &self.data[self.sent..]
    }

    /// Drops what is queued; the stream's clock goes on.
    pub fn clear(&mut self) {
        self.data.clear();
        self.sent = 0;
        self.due.clear();
    }

    /// The stream changed (another channel): its clock has nothing to do with the last one.
    /// Sending goes on from the last packet's time.
    pub fn restart_clock(&mut self) {
        self.clock.restart();
    }
}

/// Maps packets to send times by the stream's PCR.
#[derive(Debug, Default)]
struct PcrClock {
    pcr_pid: Option<u16>,
    /// A PCR and the instant it is due: the mapping from stream clock to wall clock.
    base: Option<(u64, Instant)>,
    /// The last PCR placed, its due time, and the packets planned since it.
    last: Option<(u64, Instant, u64)>,
    /// PCR ticks per packet over the last PCR interval.
    ticks_per_packet: Option<u64>,
    /// Due time of the last packet planned.
    last_due: Option<Instant>,
}

impl PcrClock {
    fn restart(&mut self) {
        self.pcr_pid = None;
        self.base = None;
        self.last = None;
        self.ticks_per_packet = None;
    }

    fn earlier(&mut self, by: Duration) {
        let sub = |t: Instant| t.checked_sub(by).unwrap_or(t);
        if let Some((_, t)) = self.base.as_mut() {
            *t = sub(*t);
        }
        if let Some((_, t, _)) = self.last.as_mut() {
            *t = sub(*t);
        }
        self.last_due = self.last_due.map(sub);
    }

    /// Due times of every packet of `data` (whole packets, as sent) into `plan`. `dur` is the
    /// chunk's nominal duration, for packets no PCR can place.
    fn plan(&mut self, data: &[u8], dur: Duration, now: Instant, plan: &mut Vec<Instant>) {
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
            due = now;
        }
        // Re-anchored at every PCR: the mapping never spans a wrap of the 33-bit clock.
        self.base = Some((v, due));
        self.last = Some((v, due, 0));
        due
    }

    /// The due time of a packet without PCR: by its position between the last PCR and the
    /// next one in this chunk (`next`: packets ahead, value, discontinuity), or at the last
    /// interval's rate; before any PCR, evenly over the chunk's nominal duration.
    fn between(
        &mut self,
        next: Option<(usize, u64, bool)>,
        fallback: u64,
        now: Instant,
    ) -> Instant {
        let Some((v, at, k)) = self.last.as_mut() else {
            let step = ticks(fallback);
            return self.last_due.map_or(now, |d| (d + step).max(earliest(now)));
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
                v.extend_from_slice(&plain());
            }
        }
        v
    }

    fn plain() -> [u8; PACKET] {
        let mut p = [0u8; PACKET];
        p[..4].copy_from_slice(&[0x47, 0x01, 0x01, 0x10]);
        p
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    fn dues(p: &Pacer) -> Vec<Instant> {
        p.due.iter().copied().collect()
    }

    #[test]
    fn packets_are_due_by_their_pcr_interpolated_between_pcrs() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        p.push(&chunk(100, 27_000_000), Duration::from_millis(100), t0);
        assert_eq!(p.len(), 100);
        for (i, due) in dues(&p).iter().enumerate() {
            // 1 ms per packet from the first PCR (10 ms per 10 packets).
            assert!(
                (ms(*due - t0) - i as f64).abs() < 0.01,
                "{i}: {:?}",
                *due - t0
            );
        }
        assert_eq!(p.ready(t0), 1);
        assert_eq!(p.ready(t0 + Duration::from_micros(49_500)), 50);
        assert_eq!(p.take(50).len(), 50 * PACKET);
        // The next chunk continues the clock (its packets after its last PCR at the last
        // interval's rate).
        p.push(
            &chunk(95, 27_000_000 + 2_700_000),
            Duration::from_millis(95),
            t0,
        );
        assert_eq!(p.len(), 50 + 95);
        assert!((ms(p.due(50).unwrap() - t0) - 100.0).abs() < 0.01);
        assert!((ms(p.due(144).unwrap() - t0) - 194.0).abs() < 0.01);
        // A jump in the PCR (another pass of a loop, a gap) goes on from the last packet.
        p.push(&chunk(10, 999 * 27_000_000), Duration::from_millis(10), t0);
        let d = |p: &Pacer, k| ms(p.due(k).unwrap() - t0);
        assert!((d(&p, 145) - 194.0).abs() < 0.01, "{}", d(&p, 145));
        assert!((d(&p, 154) - 203.0).abs() < 0.01);
        // So does a discontinuity the stream signals, even with a small step.
        let mut c = chunk(10, 999 * 27_000_000 + 2_700_000);
        c[5] |= 0x80;
        p.push(&c, Duration::from_millis(10), t0);
        assert!((d(&p, 155) - 203.0).abs() < 0.01, "{}", d(&p, 155));
        assert_eq!(p.catch_ups, 0);
        assert_eq!(p.pending().len(), p.len() * PACKET);
    }

    #[test]
    fn a_late_schedule_restarts_at_now_instead_of_bursting() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        p.push(&chunk(20, 0), Duration::from_millis(20), t0);
        p.take(20);
        // Two seconds later (the feed stalled), the stream goes on from now.
        let later = t0 + Duration::from_secs(2);
        p.push(&chunk(20, 540_000), Duration::from_millis(20), later);
        assert_eq!(p.due(0), Some(later));
        assert!((ms(p.due(19).unwrap() - later) - 19.0).abs() < 0.01);
        assert_eq!(p.ready(later), 1);
    }

    #[test]
    fn packets_without_pcr_are_spread_over_their_segment() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        let seg: Vec<u8> = (0..1000).flat_map(|_| plain()).collect();
        p.push(&seg, Duration::from_secs(1), t0);
        // 1 ms a packet, the whole second (not the first part of it then the rest at once).
        assert!((ms(p.due(999).unwrap() - t0) - 999.0).abs() < 0.01);
        assert_eq!(p.ready(t0 + Duration::from_millis(500)), 501);
        // The next segment follows on.
        p.push(&seg, Duration::from_secs(1), t0 + Duration::from_secs(1));
        assert!((ms(p.due(1000).unwrap() - t0) - 1000.0).abs() < 0.01);
    }

    #[test]
    fn a_schedule_more_than_max_delay_behind_catches_up_in_a_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        // A second of stream a second for 3 s: steady, nothing waits long.
        let second = |k: u64| chunk(1000, k * PCR_HZ);
        for k in 0..3 {
            let now = t0 + Duration::from_secs(k);
            p.push(&second(k), Duration::from_secs(1), now);
            let n = p.ready(now + Duration::from_millis(999));
            p.take(n);
        }
        assert_eq!(p.catch_ups, 0);
        assert!(
            p.longest_wait < Duration::from_millis(2),
            "{:?}",
            p.longest_wait
        );
        // Then four seconds of stream at once (the node caught up after a late segment):
        // the newest may not wait more than MAX_DELAY, so the oldest are due now.
        let now = t0 + Duration::from_secs(3);
        for k in 3..7 {
            p.push(&second(k), Duration::from_secs(1), now);
        }
        assert_eq!(p.catch_ups, 1);
        assert_eq!(p.longest_wait, MAX_DELAY);
        let newest = p.due(3000).unwrap();
        assert!((ms(newest - now) - ms(MAX_DELAY)).abs() < 0.01);
        // What waited longest goes at once: a second of stream.
        assert_eq!(p.ready(now), 1001);
        assert!(p.behind(now) < MAX_DELAY + Duration::from_secs(1));
        // The stream goes on from the moved schedule.
        let next = now + Duration::from_secs(1);
        p.push(&second(7), Duration::from_secs(1), next);
        assert_eq!(p.catch_ups, 1);
        assert!((ms(p.due(4000).unwrap() - next) - ms(MAX_DELAY)).abs() < 0.01);
    }

    #[test]
    fn bytes_waiting_are_bounded() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        // A clock that barely moves: far more bytes than MAX_PACED_BYTES within MAX_DELAY.
        let mut seg = Vec::new();
        let per = MAX_PACED_BYTES / PACKET / 2;
        for i in 0..per {
            if i % 1000 == 0 {
                seg.extend_from_slice(&packet_with_pcr(256, i as u64 * 27, false));
            } else {
                seg.extend_from_slice(&plain());
            }
        }
        for _ in 0..3 {
            p.push(&seg, Duration::from_secs(1), t0);
        }
        // The excess may go at once, though its clock says later.
        assert_eq!(p.next_ready(t0), Some(t0));
        let due_now = (0..p.len())
            .take_while(|&k| p.due(k).unwrap() <= t0)
            .count();
        let n = p.ready(t0);
        assert!(n > due_now, "{n} ready, {due_now} due");
        assert!(n >= p.len() - MAX_PACED_BYTES / PACKET);
        p.take(n);
        assert!(p.pending().len() <= MAX_PACED_BYTES);
        assert_eq!(p.next_ready(t0), p.due(0));
        // Partial packets are not queued.
        let before = p.len();
        p.push(&[0x47; 100], Duration::from_secs(1), t0);
        assert_eq!(p.len(), before);
        p.clear();
        assert!(p.is_empty() && p.pending().is_empty());
    }
}
