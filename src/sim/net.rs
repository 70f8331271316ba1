//! The simulated network: who is where (latency), how fast each peer uploads and downloads,
//! and how a peer's uplink is shared by the transfers on it.
//!
//! Latency comes from random coordinates in a unit square: one-way delay is 5 ms plus up to
//! 145 ms by distance, so round trips span 10-300 ms. Segment transfers are serialized at the
//! uploader: concurrent transfers share its capacity equally (processor sharing, as TCP flows
//! on one bottleneck uplink roughly do), each also capped by its share of the receiver's
//! downlink: a receiver's download capacity is shared by every transfer coming to it
//! ([`share_downlink`]: max-min fair, each sender's uplink its most).
//! Control messages share the uplink with segments as the daemon's writer sends them: they go
//! ahead of media but only between [`RECORD`]-byte records of a segment in progress on their
//! own link, one after another, and the time they take on the uplink is taken from the
//! segments in progress (see [`Uplink::send_control`]).
//! A segment's transfer is cut in pieces ([`PIECE_SIZE`], after its manifest head): each
//! piece whose last byte has left is reported ([`Uplink::take_events`]), so the receiver
//! learns it piece by piece as the daemon's reader does; and a transfer of a segment its
//! sender still receives goes no further than the pieces the sender holds checked
//! ([`Uplink::raise_held`]): it waits, using no uplink, until the next piece comes in.
//! Optional packet loss costs each lost packet a retransmission round trip.

use crate::proto::manifest::PIECE_SIZE;
use crate::proto::rng::Rng;
use crate::proto::time::{Duration, Instant};
use crate::proto::LinkId;

/// Bytes of payload per TCP packet, for loss accounting.
const PACKET_PAYLOAD: u64 = 1448;
/// Base one-way delay, and the most distance adds.
const BASE_ONE_WAY_US: f64 = 5_000.0;
const SPAN_ONE_WAY_US: f64 = 145_000.0;
/// The record a segment goes out in: the daemon's writer sends a segment in records of this
/// many bytes and lets control frames queued meanwhile out only between them (its
/// `WRITE_CHUNK`).
pub const RECORD: u64 = 16 * 1024;

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

/// Splits a receiver's downlink of `down` bytes/s among the transfers coming to it, which
/// their senders' uplinks limit to `demands` bytes/s each: max-min fair (a transfer its sender
/// holds below an equal share leaves the rest to the others), as TCP flows converging on one
/// bottleneck downlink roughly share it. `caps[i]` is transfer i's most, never above its
/// demand (a higher cap would not bind, and keeping it there leaves it unchanged while the
/// downlink has room, so the sender's uplink needs no new completion event).
pub fn share_downlink(down: u64, demands: &[u64], order: &mut Vec<usize>, caps: &mut Vec<u64>) {
    caps.clear();
    caps.resize(demands.len(), 0);
    order.clear();
    order.extend(0..demands.len());
    order.sort_by_key(|&i| (demands[i], i));
    let mut left = down;
    for (k, &i) in order.iter().enumerate() {
        let share = left / (demands.len() - k) as u64;
        if demands[i] <= share {
            // Held below its share by its sender: the rest goes to the others.
            caps[i] = demands[i];
            left -= demands[i];
        } else {
            caps[i] = share;
            left -= share;
        }
    }
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
    /// Bytes in all, and of the head before the first piece.
    total: f64,
    head: f64,
    /// Pieces in all, pieces the sender holds checked (it may send up to the end of the
    /// last of them), and pieces whose last byte has left.
    pieces: u32,
    held: u32,
    sent_pieces: u32,
    /// What the transfer carries (the segment's sequence number in the simulator), for
    /// [`Uplink::raise_held`] and [`Uplink::cancel_key`].
    pub key: u32,
    pub msg: M,
}

/// What a transfer is made of: its head's bytes, then `media` bytes in pieces, of which the
/// sender holds the first `held` checked.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub head: u64,
    pub media: u64,
    pub held: u32,
    pub key: u32,
}

/// Pieces of `media` bytes.
pub fn pieces_of(media: u64) -> u32 {
    media.div_ceil(PIECE_SIZE as u64).max(1) as u32
}

impl<M> Flow<M> {
    fn sent(&self) -> f64 {
        self.total - self.remaining
    }

    /// Bytes sent once piece `k` (counted from 1) has left; the head alone for 0.
    fn boundary(&self, k: u32) -> f64 {
        if k >= self.pieces {
            self.total
        } else {
            (self.head + k as f64 * PIECE_SIZE as f64).min(self.total)
        }
    }

    /// The most it may have sent: up to the end of the pieces its sender holds.
    fn limit(&self) -> f64 {
        self.boundary(self.held)
    }

    /// Sent all its sender holds of a segment still arriving: it waits for the next piece.
    fn stalled(&self) -> bool {
        self.held < self.pieces && self.sent() >= self.limit() - 0.5
    }
}

/// A piece of a transfer that has left: `pieces` of its pieces are out (`first`: the first
/// report of this transfer, so the receiver has just read its head).
#[derive(Debug)]
pub struct PieceOut<M> {
    pub link: LinkId,
    pub to: u32,
    pub pieces: u32,
    pub first: bool,
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
    /// When the control messages handed to the uplink so far are all out.
    ctl_until: Instant,
    /// Uplink time (seconds) control messages took while segments were in progress, not yet
    /// taken from those segments: it is taken from the next `advance` before they move.
    ctl_debt: f64,
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
            ctl_until: Instant::ZERO,
            ctl_debt: 0.0,
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
            if left > 1e-9 && !flows[0].stalled() {
                rates[0] = (left / 1.0).min(flows[0].cap);
            }
            return &self.rate_buf;
        }
        let order = &mut self.order_buf;
        order.clear();
        // A transfer waiting for its sender's next piece takes no uplink.
        order.extend((0..n).filter(|&i| !flows[i].stalled()));
        let n = order.len();
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
        let mut dt = now.saturating_since(self.last).as_secs_f64();
        self.last = now;
        if dt == 0.0 || self.flows.is_empty() {
            return;
        }
        // Control messages had the uplink first.
        let paused = dt.min(self.ctl_debt);
        self.ctl_debt -= paused;
        dt -= paused;
        if dt == 0.0 {
            return;
        }
        self.rates();
        for (f, r) in self.flows.iter_mut().zip(&self.rate_buf) {
            // Never past the pieces its sender holds.
            f.remaining = (f.remaining - r * dt).max(f.total - f.limit());
        }
    }

    /// Adds a transfer of `bytes` to node `to` (whose download is `cap` bytes/s), held
    /// whole by its sender.
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
        let shape = Shape {
            head: 0,
            media: bytes,
            held: u32::MAX,
            key: 0,
        };
        self.start_shaped(now, link, to, shape, cap, prio, msg)
    }

    /// Adds a transfer of a segment shaped `shape` to node `to` (whose download is `cap`
    /// bytes/s): it goes out no further than the pieces its sender holds (see
    /// [`Uplink::raise_held`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start_shaped(
        &mut self,
        now: Instant,
        link: LinkId,
        to: u32,
        shape: Shape,
        cap: u64,
        prio: u64,
        msg: M,
    ) {
        let bytes = shape.head + shape.media;
        let pieces = pieces_of(shape.media);
        self.advance(now);
        if self.flows.is_empty() {
            // Control messages still going out hold the idle uplink they started on.
            self.ctl_debt = self.ctl_until.saturating_since(now).as_secs_f64();
        }
        self.rates_valid = false;
        self.flows.push(Flow {
            link,
            to,
            remaining: bytes as f64,
            cap: cap as f64,
            prio,
            total: bytes as f64,
            head: shape.head as f64,
            pieces,
            held: shape.held.min(pieces),
            sent_pieces: 0,
            key: shape.key,
            msg,
        });
        self.version += 1;
    }

    /// The sender now holds `held` pieces of what the transfers keyed `key` carry (all of
    /// them once it holds the segment whole): those waiting for a piece move on. Says
    /// whether any did.
    pub fn raise_held(&mut self, now: Instant, key: u32, held: u32) -> bool {
        if !self
            .flows
            .iter()
            .any(|f| f.key == key && f.held < held.min(f.pieces))
        {
            return false;
        }
        self.advance(now);
        for f in self.flows.iter_mut().filter(|f| f.key == key) {
            f.held = f.held.max(held.min(f.pieces));
        }
        self.rates_valid = false;
        self.version += 1;
        true
    }

    /// Drops the transfer keyed `key` on `link` (its sender aborted it); says whether there
    /// was one.
    pub fn cancel_key(&mut self, now: Instant, link: LinkId, key: u32) -> bool {
        let Some(k) = self
            .flows
            .iter()
            .position(|f| f.link == link && f.key == key)
        else {
            return false;
        };
        self.advance(now);
        self.flows.remove(k);
        self.rates_valid = false;
        self.version += 1;
        true
    }

    /// Sends a control message of `bytes` on `link` and says when its last byte leaves.
    ///
    /// As the daemon's writer does: a control message waits for the record of a segment in
    /// progress on its own link to end (not for the whole segment), then goes ahead of media;
    /// control messages leave in the order they were sent; and the uplink time they take is
    /// taken from the segments in progress, which finish that much later. (The completion
    /// event already queued then fires early, finds nothing done and is queued again.)
    pub fn send_control(&mut self, now: Instant, link: LinkId, bytes: u64) -> Instant {
        self.advance(now);
        let ser = bytes as f64 / self.bytes_per_s.max(1.0);
        let mut start = self.ctl_until.max(now);
        if !self.flows.is_empty() {
            self.rates();
            // The record in progress on this link ends first (records are counted from a
            // segment's end here; the daemon counts from its start: the same wait on average).
            let record_left = self
                .flows
                .iter()
                .zip(&self.rate_buf)
                .filter(|(f, r)| f.link == link && **r > 0.0)
                .map(|(f, r)| (f.remaining.max(0.0) % RECORD as f64) / r)
                .fold(0.0, f64::max);
            let record_end = now + Duration::from_micros((record_left * 1e6).ceil() as u64);
            start = start.max(record_end);
            self.ctl_debt += ser;
        }
        let done = start + Duration::from_micros((ser * 1e6).ceil() as u64);
        self.ctl_until = done;
        done
    }

    /// Sets the receiver's cap of the transfer on `link` (its share of the receiver's
    /// downlink); says whether it changed.
    pub fn set_cap(&mut self, now: Instant, link: LinkId, cap: u64) -> bool {
        let cap = cap as f64;
        let Some(k) = self.flows.iter().position(|f| f.link == link) else {
            return false;
        };
        if self.flows[k].cap == cap {
            return false;
        }
        self.advance(now);
        self.flows[k].cap = cap;
        self.rates_valid = false;
        self.version += 1;
        true
    }

    /// Whether a transfer is in progress on `link`.
    pub fn has_flow(&self, link: LinkId) -> bool {
        self.flows.iter().any(|f| f.link == link)
    }

    /// The uplink's capacity, bytes/s.
    pub fn capacity(&self) -> u64 {
        self.bytes_per_s as u64
    }

    /// The receivers of the transfers in progress.
    pub fn receivers(&self) -> impl Iterator<Item = u32> + '_ {
        self.flows.iter().map(|f| f.to)
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
        self.ctl_debt = 0.0;
        self.flows.clear();
        self.version += 1;
    }

    /// When the next transfer completes at the rates of now (for tests: pieces and waits
    /// for a sender's pieces aside).
    #[cfg(test)]
    pub fn next_completion(&mut self) -> Option<Instant> {
        self.rates();
        let debt = self.ctl_debt;
        self.flows
            .iter()
            .zip(self.rate_buf.iter().copied())
            .filter(|(_, r)| *r > 0.0)
            .map(|(f, r)| {
                let secs = debt + f.remaining.max(0.0) / r;
                self.last + Duration::from_micros((secs * 1e6).ceil() as u64)
            })
            .min()
    }

    /// When the next transfer completes, the next piece of one leaves, or one reaches the
    /// last piece its sender holds, if any.
    pub fn next_event(&mut self) -> Option<Instant> {
        self.rates();
        let debt = self.ctl_debt;
        self.flows
            .iter()
            .zip(self.rate_buf.iter().copied())
            .filter(|(_, r)| *r > 0.0)
            .map(|(f, r)| {
                // Its next piece, or where it must wait for its sender's next one.
                let to_go = f.boundary(f.sent_pieces + 1).min(f.limit()) - f.sent();
                let secs = debt + to_go.max(0.0) / r;
                self.last + Duration::from_micros((secs * 1e6).ceil() as u64)
            })
            .min()
    }

    /// Takes out the transfers complete at `now` (into `out`), and reports the pieces of the
    /// others that have left since the last call (into `pieces`).
    pub fn take_events(
        &mut self,
        now: Instant,
        out: &mut Vec<Flow<M>>,
        pieces: &mut Vec<PieceOut<M>>,
    ) where
        M: Clone,
    {
        self.advance(now);
        // A transfer that has reached what its sender holds gives its share to the others.
        let mut changed = self.rates_valid
            && self
                .flows
                .iter()
                .zip(&self.rate_buf)
                .any(|(f, r)| *r > 0.0 && f.stalled());
        // Half a byte of slack absorbs float rounding.
        let mut k = 0;
        while k < self.flows.len() {
            let f = &mut self.flows[k];
            if f.remaining <= 0.5 {
                changed = true;
                out.push(self.flows.remove(k));
                continue;
            }
            let before = f.sent_pieces;
            while f.sent_pieces + 1 < f.pieces && f.sent() >= f.boundary(f.sent_pieces + 1) - 0.5 {
                f.sent_pieces += 1;
            }
            if f.sent_pieces != before {
                pieces.push(PieceOut {
                    link: f.link,
                    to: f.to,
                    pieces: f.sent_pieces,
                    first: before == 0,
                    msg: f.msg.clone(),
                });
            }
            k += 1;
        }
        if changed {
            self.rates_valid = false;
            self.version += 1;
        }
    }

    /// [`Uplink::take_events`] without the pieces.
    pub fn take_completed(&mut self, now: Instant, out: &mut Vec<Flow<M>>)
    where
        M: Clone,
    {
        let mut pieces = Vec::new();
        self.take_events(now, out, &mut pieces);
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
    fn a_downlink_is_shared_max_min() {
        let (mut order, mut caps) = (Vec::new(), Vec::new());
        // Two fast senders share 1,000 equally.
        share_downlink(1_000, &[800, 800], &mut order, &mut caps);
        assert_eq!(caps, [500, 500]);
        // A slow sender takes what it can; the fast one gets the rest.
        share_downlink(1_000, &[950, 100], &mut order, &mut caps);
        assert_eq!(caps, [900, 100]);
        // Nothing binds when the sum fits.
        share_downlink(1_000, &[300, 400], &mut order, &mut caps);
        assert_eq!(caps, [300, 400]);
        // Three fast senders into one downlink.
        share_downlink(900, &[400, 400, 400], &mut order, &mut caps);
        assert_eq!(caps, [300, 300, 300]);
    }

    #[test]
    fn control_waits_for_the_record_on_its_link_and_delays_the_segment() {
        // 16,384 B/s: one record a second.
        let mut up: Uplink<u8> = Uplink::new(RECORD);
        let t0 = Instant::ZERO;
        up.start(t0, LinkId(1), 1, 4 * RECORD, u64::MAX, 0, 1);
        assert_eq!(up.next_completion(), Some(t0 + Duration::from_secs(4)));
        // Half a record in, a control message on another link goes at once...
        let t1 = t0 + Duration::from_millis(500);
        let out = up.send_control(t1, LinkId(2), RECORD / 4);
        assert_eq!(out, t1 + Duration::from_millis(250));
        // ...one on the segment's own link waits for the record to end, and for the first.
        let out = up.send_control(t1, LinkId(1), RECORD / 4);
        assert_eq!(out, t0 + Duration::from_millis(1250));
        // The segment finishes later by the control messages' uplink time.
        assert_eq!(up.next_completion(), Some(t0 + Duration::from_millis(4500)));
        // On an idle uplink, control goes out at once, one message after another.
        let mut idle: Uplink<u8> = Uplink::new(RECORD);
        assert_eq!(
            idle.send_control(t0, LinkId(1), RECORD),
            t0 + Duration::from_secs(1)
        );
        assert_eq!(
            idle.send_control(t0, LinkId(2), RECORD),
            t0 + Duration::from_secs(2)
        );
    }

    /// Runs `up` event by event until `until`: the pieces reported, with when.
    fn pieces_until(up: &mut Uplink<u8>, until: Instant) -> Vec<(Instant, u32, u32)> {
        let mut got = Vec::new();
        let (mut done, mut pieces) = (Vec::new(), Vec::new());
        while let Some(t) = up.next_event().filter(|&t| t <= until) {
            up.take_events(t, &mut done, &mut pieces);
            for p in pieces.drain(..) {
                got.push((t, p.msg as u32, p.pieces));
            }
            for f in done.drain(..) {
                got.push((t, f.msg as u32, u32::MAX));
            }
        }
        got
    }

    #[test]
    fn a_transfer_of_a_segment_still_arriving_waits_for_its_senders_pieces() {
        let p = PIECE_SIZE as u64;
        // Four pieces at one piece a second; the sender holds one.
        let mut up: Uplink<u8> = Uplink::new(p);
        let t0 = Instant::ZERO;
        let shape = Shape {
            head: 0,
            media: 4 * p,
            held: 1,
            key: 7,
        };
        up.start_shaped(t0, LinkId(1), 2, shape, u64::MAX, 0, 1);
        let s = Duration::from_secs(1);
        // The first piece leaves after a second, then it waits: nothing more happens.
        assert_eq!(pieces_until(&mut up, t0 + s.mul(10)), [(t0 + s, 1, 1)]);
        // Another transfer gets the whole uplink meanwhile.
        let t10 = t0 + s.mul(10);
        up.start(t10, LinkId(2), 3, p, u64::MAX, 0, 2);
        assert_eq!(up.next_completion(), Some(t10 + s));
        // Its sender gets two more pieces at 10 s: they go at half the uplink (shared).
        assert!(up.raise_held(t10, 7, 3));
        assert!(!up.raise_held(t10, 7, 3), "no news");
        let got = pieces_until(&mut up, t0 + s.mul(20));
        assert_eq!(got[0], (t10 + s.mul(2), 1, 2));
        assert_eq!(got[1], (t10 + s.mul(2), 2, u32::MAX), "both done together");
        assert_eq!(got[2], (t10 + s.mul(3), 1, 3));
        assert_eq!(got.len(), 3, "then it waits for the last piece");
        // Whole: the last piece goes, and the transfer completes.
        assert!(up.raise_held(t0 + s.mul(20), 7, 4));
        let got = pieces_until(&mut up, t0 + s.mul(30));
        assert_eq!(got, [(t0 + s.mul(21), 1, u32::MAX)]);
        // An aborted one is gone.
        up.start_shaped(t0 + s.mul(30), LinkId(1), 2, shape, u64::MAX, 0, 1);
        assert!(up.cancel_key(t0 + s.mul(30), LinkId(1), 7));
        assert!(!up.busy());
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
