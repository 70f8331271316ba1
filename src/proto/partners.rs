//! What a node knows about each partner: its buffer map, its advertised upload backlog, our
//! requests in flight to it, and the traffic that scores the partnership.
//!
//! Its upload rate is measured, not taken on its word: the rate a partner claims in its hello
//! (clamped by the node) only seeds [`Partner::upload_bytes_per_s`], and every period in which
//! we had requests waiting at it for long enough yields a sample, bytes it delivered over the
//! time it had work from us, folded in with weight [`SAMPLE_WEIGHT`] (in time per byte, so
//! that one slow period pulls an estimate down at once while a fast one raises it gradually).
//! A partner that claims a huge upload and delivers little is a slow partner after one period.
//!
//! DONet scores a partnership by `max(s̄ij, s̄ji)`, the average segments per unit time sent or
//! received, so that a partner useful in either direction is kept; refinement drops the lowest.

use super::buffer_map::BufferMap;
use super::seq::Seq;
use super::time::{Duration, Instant};

/// Laid out in order (`repr(C)`), what a scheduling pass reads first: a pass reads these
/// fields of every partner, and this way they share two cache lines.
#[derive(Clone, Debug)]
#[repr(C)]
pub struct Partner {
    /// What the partner holds, from its buffer map and haves.
    pub map: BufferMap,
    /// The partner said busy: leave it alone until then.
    pub avoid_until: Instant,
    /// Our requests at this partner not yet answered.
    pub inflight: usize,
    /// Upload rate we reckon it has for us, bytes/s: seeded by the rate it claimed, then
    /// measured (see the module docs). Supplier choice, serving order and the source's
    /// eviction read this.
    pub upload_bytes_per_s: u64,
    /// Time our requests have waited at it (with at least one in flight) since the last
    /// sample, the bytes it delivered for them, and since when the current wait runs.
    pub busy: Duration,
    pub delivered_bytes: u64,
    pub busy_since: Option<Instant>,
    /// Samples folded into the estimate so far.
    pub measured: u32,
    /// The partner's upload backlog as it last advertised it, and when.
    pub backlog: Duration,
    pub backlog_at: Instant,
    /// Substreams (bit j) this partner pushes to us, we asked it to push (no answer yet),
    /// and it asked us to push.
    pub parent_of: u32,
    pub subscribing: u32,
    pub child_of: u32,
    /// Substream subscriptions it said it can still take.
    pub spare: u8,
    /// The segment the partner played next when it last told us, and when that was.
    pub playing: Option<(Seq, Instant)>,
    pub since: Instant,
    /// Do not ask it to be a parent again before then (it refused or fell behind).
    pub no_parent_until: Instant,
    /// The last segments we sent it (so a push and a request do not send one twice).
    pub recent_sent: [Seq; 4],
    /// Segments sent to / received from it since the last refinement.
    pub sent: u32,
    pub received: u32,
    /// Smoothed `max(sent, received)` per second.
    pub score: f64,
    /// Requests it made of us, and our requests to it that timed out, since the last
    /// refinement (an over-requester is throttled, a partner that does not deliver what it
    /// advertises is replaced).
    pub requested: u32,
    pub failed: u32,
}

impl Partner {
    pub fn new(now: Instant, upload_bytes_per_s: u64) -> Self {
        Partner {
            since: now,
            map: BufferMap::empty(Seq(0)),
            backlog: Duration::ZERO,
            backlog_at: now,
            playing: None,
            parent_of: 0,
            subscribing: 0,
            child_of: 0,
            spare: 0,
            no_parent_until: now,
            recent_sent: [Seq(u32::MAX); 4],
            inflight: 0,
            avoid_until: now,
            upload_bytes_per_s: upload_bytes_per_s.max(1),
            busy: Duration::ZERO,
            delivered_bytes: 0,
            busy_since: None,
            measured: 0,
            sent: 0,
            received: 0,
            score: 0.0,
            requested: 0,
            failed: 0,
        }
    }

    /// When the partner could start one more segment for us: its advertised backlog (drained
    /// since it was advertised) plus our own requests already queued there.
    pub fn free_at(&self, now: Instant, segment_bytes: u64) -> Instant {
        let drained = now.saturating_since(self.backlog_at);
        let backlog = self.backlog.saturating_sub(drained);
        let ours = Duration::for_bytes(
            segment_bytes * self.inflight as u64,
            self.upload_bytes_per_s,
        );
        now + backlog + ours
    }

    /// We asked it for a segment; the first byte cannot come before `lead` (a round trip)
    /// and the backlog it advertised has drained, so an idle partner's wait is counted from
    /// then: the rate measured is its rate once it serves us, as the scheduler reckons
    /// (`free_at` adds the backlog). A partner that advertises a long backlog to look fast
    /// makes itself a late supplier by the same number.
    pub fn asked(&mut self, now: Instant, lead: Duration) {
        if self.inflight == 0 {
            let backlog = self
                .backlog
                .saturating_sub(now.saturating_since(self.backlog_at));
            self.busy_since = Some(now + lead + backlog);
        }
        self.inflight += 1;
    }

    /// A request of ours at it is over (delivered, refused, cancelled or timed out).
    pub fn answered(&mut self, now: Instant) {
        self.inflight = self.inflight.saturating_sub(1);
        if self.inflight == 0 {
            if let Some(s) = self.busy_since.take() {
                self.busy += now.saturating_since(s);
            }
        }
    }

    /// It delivered `bytes` of a segment we asked it for.
    pub fn delivered(&mut self, bytes: u64) {
        self.delivered_bytes = self.delivered_bytes.saturating_add(bytes);
    }

    /// Folds what it delivered since the last sample into the rate estimate, once our
    /// requests have waited there at least [`MIN_BUSY`] (else the wait goes on adding up).
    /// A sample is kept within `floor..=ceiling` bytes/s (a partner that delivered nothing
    /// in all that time counts as `floor`).
    pub fn fold_rate(&mut self, now: Instant, floor: u64, ceiling: u64) {
        let mut busy = self.busy;
        if let Some(s) = self.busy_since {
            busy += now.saturating_since(s);
            self.busy_since = Some(s.max(now));
        }
        if busy < MIN_BUSY {
            self.busy = busy;
            return;
        }
        let sample = (self.delivered_bytes as f64 / busy.as_secs_f64())
            .clamp(floor.max(1) as f64, ceiling.max(floor).max(1) as f64);
        let per_byte =
            (1.0 - SAMPLE_WEIGHT) / self.upload_bytes_per_s.max(1) as f64 + SAMPLE_WEIGHT / sample;
        self.upload_bytes_per_s =
            ((1.0 / per_byte).round() as u64).clamp(floor.max(1), ceiling.max(floor).max(1));
        self.busy = Duration::ZERO;
        self.delivered_bytes = 0;
        self.measured = self.measured.saturating_add(1);
    }

    /// Folds the counters of the period just ended into the score.
    pub fn close_period(&mut self, period: Duration) {
        let secs = period.as_secs_f64().max(1e-3);
        let rate = self.sent.max(self.received) as f64 / secs;
        self.score = 0.5 * self.score + 0.5 * rate;
        self.sent = 0;
        self.received = 0;
        self.requested = 0;
        self.failed = 0;
    }

    /// It advertised segments, failed to deliver at least `limit` of our requests for them
    /// this period, and delivered none. (A partner that delivers some and misses some is
    /// slow, not lying: its score already says so.)
    pub fn lies(&self, limit: u32) -> bool {
        self.failed >= limit.max(1) && self.received == 0
    }

    pub fn note_sent(&mut self, seq: Seq) {
        self.recent_sent.rotate_right(1);
        self.recent_sent[0] = seq;
    }

    pub fn sent_recently(&self, seq: Seq) -> bool {
        self.recent_sent.contains(&seq)
    }

    pub fn note_backlog(&mut self, now: Instant, backlog_ms: u16) {
        self.backlog = Duration::from_millis(backlog_ms as u64);
        self.backlog_at = now;
    }
}

/// Waiting time at a partner that makes a rate sample: shorter waits are too few
/// segments to tell a rate (a round trip more or less would swing it).
pub const MIN_BUSY: Duration = Duration::from_secs(1);
/// Weight of a new sample in the rate estimate, in time per byte.
pub const SAMPLE_WEIGHT: f64 = 0.5;

/// The newest segment of substream `j` (of `k`) that `map` holds.
pub fn newest_in(map: &BufferMap, j: u32, k: u32) -> Option<Seq> {
    let newest = map.newest()?;
    let k = k.max(1);
    // Step back to the newest sequence number of substream j, then by k.
    let back = (newest.0 % k + k - j % k) % k;
    let mut s = newest.sub(back);
    let oldest = map.oldest()?;
    while !s.is_before(oldest) {
        if map.has(s) {
            return Some(s);
        }
        s = s.sub(k);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_max_of_directions_smoothed() {
        let mut p = Partner::new(Instant::ZERO, 1000);
        p.sent = 10;
        p.received = 2;
        p.close_period(Duration::from_secs(10));
        assert!((p.score - 0.5).abs() < 1e-9);
        p.received = 20;
        p.close_period(Duration::from_secs(10));
        assert!((p.score - 1.25).abs() < 1e-9);
    }

    #[test]
    fn newest_in_substream() {
        let mut m = BufferMap::empty(Seq(0));
        for s in [3u32, 4, 5, 9, 10] {
            m.set(Seq(s));
        }
        assert_eq!(newest_in(&m, 1, 4), Some(Seq(9)));
        assert_eq!(newest_in(&m, 2, 4), Some(Seq(10)));
        assert_eq!(newest_in(&m, 3, 4), Some(Seq(3)));
        assert_eq!(newest_in(&m, 0, 4), Some(Seq(4)));
        assert_eq!(newest_in(&BufferMap::empty(Seq(0)), 0, 4), None);
    }

    #[test]
    fn free_at_counts_backlog_drain_and_our_requests() {
        let mut p = Partner::new(Instant::ZERO, 100_000);
        p.note_backlog(Instant::ZERO, 2000);
        let now = Instant::ZERO + Duration::from_millis(500);
        assert_eq!(p.free_at(now, 100_000), now + Duration::from_millis(1500));
        p.inflight = 2;
        assert_eq!(p.free_at(now, 100_000), now + Duration::from_millis(3500));
    }

    #[test]
    fn a_claimed_rate_gives_way_to_the_measured_one() {
        let secs = Duration::from_secs;
        let t0 = Instant::ZERO;
        // Claims 400 kB/s; asked for a segment it takes 10 s to deliver 100 kB of.
        let mut p = Partner::new(t0, 400_000);
        p.asked(t0, Duration::ZERO);
        p.delivered(100_000);
        p.answered(t0 + secs(10));
        p.fold_rate(t0 + secs(20), 1_000, 1_000_000);
        // 10 kB/s measured: the estimate is at most twice that after one sample.
        assert!(p.upload_bytes_per_s <= 20_000, "{}", p.upload_bytes_per_s);
        assert_eq!(p.measured, 1);
        // A partner that delivers nothing while asked counts as the floor.
        let mut q = Partner::new(t0, 400_000);
        q.asked(t0, Duration::ZERO);
        q.fold_rate(t0 + secs(5), 1_000, 1_000_000);
        assert!(q.upload_bytes_per_s <= 2_000, "{}", q.upload_bytes_per_s);
        // An honest fast partner stays fast; too short a wait is no sample yet.
        let mut f = Partner::new(t0, 400_000);
        f.asked(t0, Duration::ZERO);
        f.delivered(100_000);
        f.answered(t0 + Duration::from_millis(250));
        f.fold_rate(t0 + secs(20), 1_000, 1_000_000);
        assert_eq!((f.upload_bytes_per_s, f.measured), (400_000, 0));
        f.asked(t0 + secs(20), Duration::ZERO);
        f.delivered(300_000);
        f.answered(t0 + secs(20) + Duration::from_millis(750));
        f.fold_rate(t0 + secs(40), 1_000, 1_000_000);
        assert_eq!((f.upload_bytes_per_s, f.measured), (400_000, 1));
    }
}
