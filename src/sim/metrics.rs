//! What a run measured, and the JSON summary docs/INTERFACE.md defines.

use serde::Serialize;

/// A histogram of durations in 10 ms buckets up to 120 s (later values land in the last
/// bucket): fixed memory however many samples a 100,000-peer run makes.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

const BUCKET_S: f64 = 0.01;
const BUCKETS: usize = 12_000;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS],
            count: 0,
        }
    }
}

impl Histogram {
    pub fn add(&mut self, secs: f64) {
        let b = ((secs.max(0.0) / BUCKET_S) as usize).min(BUCKETS - 1);
        self.buckets[b] += 1;
        self.count += 1;
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    /// The `q` quantile (0..=1), as the upper edge of its bucket; 0 with no samples.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (i + 1) as f64 * BUCKET_S;
            }
        }
        BUCKETS as f64 * BUCKET_S
    }
}

/// The `q` quantile of a sample (nearest rank); 0 for an empty one.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The quantiles `CDF_POINTS` (0, 0.05, .., 1) of a sorted sample, for CDF plots.
pub const CDF_POINTS: usize = 21;

pub fn cdf_points(sorted: &[f64]) -> Vec<f64> {
    (0..CDF_POINTS)
        .map(|i| quantile(sorted, i as f64 / (CDF_POINTS - 1) as f64))
        .collect()
}

impl Histogram {
    /// The quantiles 0, 0.05, .., 1 (upper bucket edges), for CDF plots.
    pub fn cdf_points(&self) -> Vec<f64> {
        (0..CDF_POINTS)
            .map(|i| self.quantile(i as f64 / (CDF_POINTS - 1) as f64))
            .collect()
    }
}

/// What the viewer of one session sees stand still: every stretch, after the first segment
/// played, in which no segment is playing: a pause waiting for a late segment, a skipped
/// segment, a restart after a hole. Fed with each played segment's deadline and duration (µs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Freezes {
    /// When the last played segment ends; `None` before the first.
    playhead_us: Option<u64>,
    total_us: u64,
    longest_us: u64,
}

impl Freezes {
    pub fn play(&mut self, start_us: u64, duration_us: u64) {
        if let Some(end) = self.playhead_us {
            self.add(start_us.saturating_sub(end));
        }
        let end = start_us + duration_us;
        self.playhead_us = Some(self.playhead_us.map_or(end, |p| p.max(end)));
    }
    fn add(&mut self, gap: u64) {
        self.total_us += gap;
        self.longest_us = self.longest_us.max(gap);
    }
    /// Total and longest freeze (µs) of a session that ended (or is measured) at `end_us`: a
    /// session that ends standing still counts the stretch up to its end.
    pub fn until(&self, end_us: u64) -> (u64, u64) {
        let tail = self.playhead_us.map_or(0, |p| end_us.saturating_sub(p));
        (self.total_us + tail, self.longest_us.max(tail))
    }
}

/// `coolstream sim --json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub peers: usize,
    pub seed: u64,
    pub duration_s: f64,
    pub scenario: String,
    pub partners: usize,
    pub rate_kbps: u64,
    pub upload_scale: f64,
    /// Mean upload of peers as a multiple of the stream rate (after scaling).
    pub mean_upload_ratio: f64,
    pub loss: f64,
    /// Per-peer continuity index over peers that played at least `MIN_DEADLINES` deadlines.
    pub continuity_mean: f64,
    pub continuity_p5: f64,
    pub continuity_min: f64,
    /// Segments played on time over segments due, over all peers together (how DONet and
    /// most papers count continuity): long sessions weigh more than in `continuity_mean`.
    pub continuity_global: f64,
    /// Time standing still after the first segment played (pauses, skipped segments,
    /// restarts) over time watched, all sessions that started.
    pub stall_ratio: f64,
    /// The 95th percentile, over sessions that started, of each session's longest freeze.
    pub stall_p95_s: f64,
    /// Peers counted in the continuity figures, and peers that joined at all.
    pub peers_measured: usize,
    pub sessions: usize,
    /// Sessions that never started playing (and stayed at least 10 s).
    pub never_started: usize,
    pub startup_p50_s: f64,
    pub startup_p95_s: f64,
    pub lag_p50_s: f64,
    pub lag_p95_s: f64,
    /// Startup, lag and per-peer continuity at the quantiles 0, 0.05, .., 1 (CDF points).
    pub startup_cdf_s: Vec<f64>,
    pub lag_cdf_s: Vec<f64>,
    pub continuity_cdf: Vec<f64>,
    pub overhead: f64,
    pub source_upload_ratio: f64,
    pub rmax_fraction: f64,
    pub segments_played: u64,
    pub segments_missed: u64,
    pub payload_bytes: u64,
    pub control_bytes: u64,
    pub events: u64,
    pub wall_s: f64,
    pub trace_hash: String,
    /// Share of peers behind a NAT that drops unsolicited connections (`--nat-fraction`),
    /// and whether they punch holes (`--punch`).
    pub nat_fraction: f64,
    pub punch: bool,
    /// Share of the peers alive at the end whose node found out it can be dialled, and of
    /// those that found out at all (a dial-back answered or timed out).
    pub reachable_fraction: f64,
    pub reach_known_fraction: f64,
    /// Punch attempts (one per side) and the share that became a link.
    pub punches: u64,
    pub punch_success: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for i in 0..100 {
            h.add(i as f64 * 0.1);
        }
        assert!((h.quantile(0.5) - 4.9).abs() < 0.02, "{}", h.quantile(0.5));
        assert!(
            (h.quantile(0.95) - 9.4).abs() < 0.02,
            "{}",
            h.quantile(0.95)
        );
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
        h.add(1e9);
        assert_eq!(h.quantile(1.0), 120.0);
    }

    #[test]
    fn freezes_are_the_stretches_with_nothing_playing() {
        let mut f = Freezes::default();
        assert_eq!(f.until(5_000_000), (0, 0), "nothing played: no freeze yet");
        f.play(1_000_000, 1_000_000);
        f.play(2_000_000, 1_000_000); // back to back
        f.play(5_500_000, 1_000_000); // a 2.5 s pause
        f.play(7_500_000, 1_000_000); // one skipped segment: 1 s
        assert_eq!(f.until(8_500_000), (3_500_000, 2_500_000));
        // Ending while standing still counts up to the end.
        assert_eq!(f.until(12_000_000), (7_000_000, 3_500_000));
        // A segment handed over early (ahead of the playhead) is no freeze.
        f.play(8_000_000, 1_000_000);
        assert_eq!(f.until(9_000_000), (3_500_000, 2_500_000));
    }

    #[test]
    fn nearest_rank_quantile() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 0.05), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
