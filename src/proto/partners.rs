//! What a node knows about each partner: its buffer map, its advertised upload backlog, our
//! requests in flight to it, and the traffic that scores the partnership.
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
    /// Upload rate the partner announced, bytes/s.
    pub upload_bytes_per_s: u64,
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
}
