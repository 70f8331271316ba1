//! The simulated network: who is where (latency), how fast each peer uploads and downloads,
//! and how a peer's uplink is shared by the transfers on it.
//!
//! Latency comes from random coordinates in a unit square: one-way delay is 5 ms plus up to
//! 145 ms by distance, so round trips span 10-300 ms. Segment transfers are serialized at the
//! uploader: concurrent transfers share its capacity equally (processor sharing, as TCP flows
//! on one bottleneck uplink roughly do), each also capped by the receiver's download rate.
//! Control messages are small and go out at once (the daemon sends them ahead of queued media).
//! Optional packet loss costs each lost packet a retransmission round trip.

use crate::proto::rng::Rng;
use crate::proto::time::{Duration, Instant};
use crate::proto::LinkId;

/// Bytes of payload per TCP packet, for loss accounting.
const PACKET_PAYLOAD: u64 = 1448;
/// Base one-way delay, and the most distance adds.
const BASE_ONE_WAY_US: f64 = 5_000.0;
const SPAN_ONE_WAY_US: f64 = 145_000.0;

#[derive(Clone, Copy, Debug)]
pub struct Place {
    x: f64,
    y: f64,
}

impl Place {
    pub fn random(rng: &mut Rng) -> Place {
        Place {
            x: rng.unit(),
            y: rng.unit(),
        }
    }
    pub fn one_way(&self, other: &Place) -> Duration {
        let d = ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt();
        Duration::from_micros((BASE_ONE_WAY_US + SPAN_ONE_WAY_US * d / 2f64.sqrt()) as u64)
    }
}

/// Extra delay from packet loss on a message of `bytes` over a path with round trip `rtt`.
pub fn loss_delay(rng: &mut Rng, loss: f64, bytes: u64, rtt: Duration) -> Duration {
    if loss <= 0.0 {
        return Duration::ZERO;
    }
    let packets = bytes.div_ceil(PACKET_PAYLOAD).max(1);
    let mut lost = 0u64;
    for _ in 0..packets {
        if rng.chance(loss) {
            lost += 1;
        }
    }
    rtt.mul(lost)
}

/// One transfer on an uplink.
#[derive(Debug)]
pub struct Flow<M> {
    pub link: LinkId,
    pub to: u32,
    remaining: f64,
    cap: f64,
    /// Higher goes first (the sender sends chunks of its freshest segment first).
    prio: u64,
    pub msg: M,
}

/// A node's uplink with the transfers in progress on it.
#[derive(Debug)]
pub struct Uplink<M> {
    bytes_per_s: f64,
    flows: Vec<Flow<M>>,
    last: Instant,
    /// Each flow's rate (see [`Uplink::rates`]), valid while `rates_valid`.
    rate_buf: Vec<f64>,
    rates_valid: bool,
    order_buf: Vec<usize>,
    /// Bumped whenever the set of flows changes, so stale completion events are ignored.
    pub version: u64,
}

impl<M> Uplink<M> {
    pub fn new(bytes_per_s: u64) -> Self {
        Uplink {
            bytes_per_s: bytes_per_s as f64,
            flows: Vec::new(),
            last: Instant::ZERO,
            rate_buf: Vec::new(),
            rates_valid: false,
            order_buf: Vec::new(),
            version: 0,
        }
    }

    /// Each flow's rate: strict priority, highest first, each taking what its receiver can
    /// take of what is left (work-conserving; equal priorities share equally). Kept in
    /// `rate_buf` until the set of flows changes (rates do not depend on what is left).
    fn rates(&mut self) -> &[f64] {
        if self.rates_valid {
            return &self.rate_buf;
        }
        self.rates_valid = true;
        let n = self.flows.len();
        self.rate_buf.clear();
        self.rate_buf.resize(n, 0.0);
        let flows = &self.flows;
        let rates = &mut self.rate_buf;
        if n == 1 {
            // The general case below with one flow, without the sorting.
            let left = self.bytes_per_s;
            if left > 1e-9 {
                rates[0] = (left / 1.0).min(flows[0].cap);
            }
            return &self.rate_buf;
        }
        let order = &mut self.order_buf;
        order.clear();
        order.extend(0..n);
        order.sort_by(|&a, &b| flows[b].prio.cmp(&flows[a].prio).then(a.cmp(&b)));
        let mut left = self.bytes_per_s;
        let mut k = 0;
        while k < n && left > 1e-9 {
            // The group of flows with the same priority shares what is left.
            let p = flows[order[k]].prio;
            let g = order[k..]
                .iter()
                .take_while(|&&i| flows[i].prio == p)
                .count();
            let each = left / g as f64;
            let mut used = 0.0;
            for &i in &order[k..k + g] {
                rates[i] = each.min(flows[i].cap);
                used += rates[i];
            }
            left -= used;
            k += g;
        }
        &self.rate_buf
    }

    /// Moves every flow forward to `now`.
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_since(self.last).as_secs_f64();
        self.last = now;
        if dt == 0.0 || self.flows.is_empty() {
            return;
        }
        self.rates();
        for (f, r) in self.flows.iter_mut().zip(&self.rate_buf) {
            f.remaining -= r * dt;
        }
    }

    /// Adds a transfer of `bytes` to node `to` (whose download is `cap` bytes/s).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        now: Instant,
        link: LinkId,
        to: u32,
        bytes: u64,
        cap: u64,
        prio: u64,
        msg: M,
    ) {
        self.advance(now);
        self.rates_valid = false;
        self.flows.push(Flow {
            link,
            to,
            remaining: bytes as f64,
            cap: cap as f64,
            prio,
            msg,
        });
        self.version += 1;
    }

    /// Drops the transfers on `link` (it closed).
    pub fn cancel(&mut self, now: Instant, link: LinkId) {
        self.advance(now);
        let before = self.flows.len();
        self.flows.retain(|f| f.link != link);
        if self.flows.len() != before {
            self.rates_valid = false;
            self.version += 1;
        }
    }

    /// Drops every transfer (the node is gone).
    pub fn clear(&mut self) {
        self.rates_valid = false;
        self.flows.clear();
        self.version += 1;
    }

    /// When the next transfer completes, if any.
    pub fn next_completion(&mut self) -> Option<Instant> {
        self.rates();
        self.flows
            .iter()
            .zip(self.rate_buf.iter().copied())
            .filter(|(_, r)| *r > 0.0)
            .map(|(f, r)| {
                let secs = f.remaining.max(0.0) / r;
                self.last + Duration::from_micros((secs * 1e6).ceil() as u64)
            })
            .min()
    }

    /// Takes out the transfers complete at `now`.
    pub fn take_completed(&mut self, now: Instant, out: &mut Vec<Flow<M>>) {
        self.advance(now);
        // Half a byte of slack absorbs float rounding.
        let mut k = 0;
        while k < self.flows.len() {
            if self.flows[k].remaining <= 0.5 {
                self.rates_valid = false;
                out.push(self.flows.remove(k));
            } else {
                k += 1;
            }
        }
        if !out.is_empty() {
            self.version += 1;
        }
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub fn busy(&self) -> bool {
        !self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_spans_the_intended_range() {
        let mut rng = Rng::new(1);
        let places: Vec<Place> = (0..200).map(|_| Place::random(&mut rng)).collect();
        let mut lo = Duration::from_secs(1);
        let mut hi = Duration::ZERO;
        for a in &places {
            for b in &places {
                let d = a.one_way(b);
                lo = lo.min(d);
                hi = hi.max(d);
            }
        }
        assert!(lo >= Duration::from_millis(5) && hi <= Duration::from_millis(150));
        assert!(hi >= Duration::from_millis(120), "{hi:?}");
    }

    #[test]
    fn concurrent_transfers_share_the_uplink() {
        let mut up: Uplink<u8> = Uplink::new(100_000);
        let t0 = Instant::ZERO;
        up.start(t0, LinkId(1), 1, 100_000, u64::MAX, 0, 1);
        assert_eq!(up.next_completion(), Some(t0 + Duration::from_secs(1)));
        // A second transfer of equal priority halves the first one's rate from here on.
        let t1 = t0 + Duration::from_millis(500);
        up.start(t1, LinkId(2), 2, 50_000, u64::MAX, 0, 2);
        let done = up.next_completion().unwrap();
        assert_eq!(done, t1 + Duration::from_secs(1));
        let mut out = Vec::new();
        up.take_completed(done, &mut out);
        assert_eq!(out.len(), 2, "both finish together");
    }

    #[test]
    fn fresher_transfers_go_first() {
        let mut up: Uplink<u8> = Uplink::new(100_000);
        let t0 = Instant::ZERO;
        up.start(t0, LinkId(1), 1, 100_000, u64::MAX, 5, 1);
        let t1 = t0 + Duration::from_millis(500);
        up.start(t1, LinkId(2), 2, 50_000, u64::MAX, 9, 2);
        // The fresher one takes the whole uplink until done, then the older one resumes.
        assert_eq!(up.next_completion(), Some(t1 + Duration::from_millis(500)));
        let mut out = Vec::new();
        up.take_completed(t1 + Duration::from_millis(500), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg, 2);
        assert_eq!(up.next_completion(), Some(t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn receiver_cap_limits_a_flow() {
        let mut up: Uplink<u8> = Uplink::new(1_000_000);
        up.start(Instant::ZERO, LinkId(1), 1, 100_000, 100_000, 0, 0);
        assert_eq!(
            up.next_completion(),
            Some(Instant::ZERO + Duration::from_secs(1))
        );
    }
}
