//! The DONet scheduler: which missing segment to request from which partner.
//!
//! A pure function of what the node knows. Each missing segment in the play window that some
//! partner holds is a candidate. Urgent candidates (deadline within `urgent_within`) come first,
//! earliest deadline first; the rest go rarest first (fewest partners holding it), ties by
//! deadline. An urgent candidate goes to the supplier that would deliver it soonest, judged by
//! the supplier's backlog, its rate and our requests already queued there; a non-urgent one to
//! the slowest supplier that would still deliver it within half the time left (so slow uplinks
//! carry their share and fast ones stay free for what is fresh or urgent), else the soonest.
//! A non-urgent segment no supplier can deliver in time waits for a better moment.

use super::seq::Seq;
use super::time::{Duration, Instant};

/// A partner as the scheduler sees it.
#[derive(Clone, Copy, Debug)]
pub struct Supplier {
    /// When it could start one more segment for us.
    pub free_at: Instant,
    pub bytes_per_s: u64,
    /// More requests it may take from us now.
    pub slots: usize,
    /// One-way delay estimate.
    pub one_way: Duration,
}

/// A missing segment and who holds it.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub seq: Seq,
    pub deadline: Instant,
    /// Bit `i` set: supplier `i` holds it (at most 64 suppliers).
    pub holders: u64,
}

/// One decision: ask supplier `supplier` for `seq`, expected at `eta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub seq: Seq,
    pub supplier: usize,
    pub eta: Instant,
}

/// Why wanted segments were left for later in one planning pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Skipped {
    pub no_slot: u64,
    pub too_late: u64,
}

/// Plans up to `budget` requests. `wants` is reordered in place.
pub fn plan(
    now: Instant,
    wants: &mut [Want],
    suppliers: &mut [Supplier],
    segment_bytes: u64,
    urgent_within: Duration,
    mut budget: usize,
    out: &mut Vec<Pick>,
) -> Skipped {
    let mut skipped = Skipped::default();
    let urgent_before = now + urgent_within;
    // Holders beyond the supplier list are ignored (a caller's stale bit must not index out).
    let mask = match suppliers.len() {
        n if n >= 64 => u64::MAX,
        n => (1u64 << n) - 1,
    };
    // Sequence numbers are ranked by their offset from one of them (a total order; the
    // caller's wants lie within one window, where it is serial order).
    let reference = wants.first().map_or(Seq(0), |w| w.seq);
    wants.sort_unstable_by(|a, b| {
        let ua = a.deadline <= urgent_before;
        let ub = b.deadline <= urgent_before;
        ub.cmp(&ua)
            .then_with(|| {
                if ua {
                    a.deadline.cmp(&b.deadline)
                } else {
                    a.holders
                        .count_ones()
                        .cmp(&b.holders.count_ones())
                        .then(a.deadline.cmp(&b.deadline))
                }
            })
            .then(
                a.seq
                    .offset_from(reference)
                    .cmp(&b.seq.offset_from(reference)),
            )
    });
    for w in wants.iter() {
        if budget == 0 {
            break;
        }
        let urgent = w.deadline <= urgent_before;
        let mut best: Option<(usize, Instant)> = None;
        // Not urgent: the slowest supplier that would still deliver within half the time
        // left, so that fast uplinks stay free for what is urgent or fresh and slow ones
        // carry their share.
        let comfortable =
            now + Duration::from_micros(w.deadline.saturating_since(now).as_micros() / 2);
        let mut easy: Option<(usize, Instant, u64)> = None;
        let mut bits = w.holders & mask;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let s = &suppliers[i];
            if s.slots == 0 {
                continue;
            }
            let eta =
                s.free_at.max(now) + Duration::for_bytes(segment_bytes, s.bytes_per_s) + s.one_way;
            if best.is_none_or(|(_, e)| eta < e) {
                best = Some((i, eta));
            }
            if !urgent
                && eta <= comfortable
                && easy.is_none_or(|(_, e, r)| s.bytes_per_s < r || (s.bytes_per_s == r && eta < e))
            {
                easy = Some((i, eta, s.bytes_per_s));
            }
        }
        if let Some((i, eta, _)) = easy {
            best = Some((i, eta));
        }
        let Some((i, eta)) = best else {
            skipped.no_slot += 1;
            continue;
        };
        if eta > w.deadline && !urgent {
            skipped.too_late += 1;
            continue;
        }
        let s = &mut suppliers[i];
        s.free_at = eta.saturating_sub(s.one_way);
        s.slots -= 1;
        budget -= 1;
        out.push(Pick {
            seq: w.seq,
            supplier: i,
            eta,
        });
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup(free_ms: u64, bps: u64, slots: usize) -> Supplier {
        Supplier {
            free_at: Instant::ZERO + Duration::from_millis(free_ms),
            bytes_per_s: bps,
            slots,
            one_way: Duration::from_millis(50),
        }
    }
    fn want(seq: u32, deadline_s: u64, holders: u64) -> Want {
        Want {
            seq: Seq(seq),
            deadline: Instant::ZERO + Duration::from_secs(deadline_s),
            holders,
        }
    }

    /// `plan` at time zero with a 2 s urgency window.
    fn plan_at_zero(
        wants: &mut [Want],
        suppliers: &mut [Supplier],
        segment_bytes: u64,
        budget: usize,
        out: &mut Vec<Pick>,
    ) {
        plan(
            Instant::ZERO,
            wants,
            suppliers,
            segment_bytes,
            Duration::from_secs(2),
            budget,
            out,
        );
    }

    #[test]
    fn rarest_first_then_fastest_supplier() {
        let mut s = vec![sup(0, 100_000, 3), sup(0, 400_000, 3)];
        let mut w = vec![want(1, 3, 0b11), want(2, 3, 0b10)];
        let mut out = Vec::new();
        plan_at_zero(&mut w, &mut s, 100_000, 8, &mut out);
        // #2 is rarer (one holder) so it goes first, to the fast supplier.
        assert_eq!(out[0].seq, Seq(2));
        assert_eq!(out[0].supplier, 1);
        // #1 follows. With 3 s left, both suppliers deliver within half of it (the fast one
        // after #2 at 0.55 s, the slow one at 1.05 s): the slow one takes it (next test).
        assert_eq!(out[1].seq, Seq(1));
        assert_eq!(out[1].supplier, 0);
    }

    #[test]
    fn slow_suppliers_take_what_they_can_deliver_comfortably() {
        // 10 s left: the slow supplier (1.05 s) is well inside half of it, so it carries the
        // segment and the fast one stays free.
        let mut s = vec![sup(0, 100_000, 3), sup(0, 400_000, 3)];
        let mut w = vec![want(1, 10, 0b11)];
        let mut out = Vec::new();
        plan_at_zero(&mut w, &mut s, 100_000, 8, &mut out);
        assert_eq!(out[0].supplier, 0);
        // 2 s left: the slow one (1.05 s) is past half of it, the fast one (0.3 s) is not.
        let mut s = vec![sup(0, 100_000, 3), sup(0, 400_000, 3)];
        let mut w = vec![Want {
            seq: Seq(1),
            deadline: Instant::ZERO + Duration::from_millis(2_000),
            holders: 0b11,
        }];
        let mut out = Vec::new();
        plan(
            Instant::ZERO,
            &mut w,
            &mut s,
            100_000,
            Duration::from_secs(1),
            8,
            &mut out,
        );
        assert_eq!(out[0].supplier, 1);
        // Urgent: the soonest, whatever the rates.
        let mut s = vec![sup(0, 100_000, 3), sup(0, 400_000, 3)];
        let mut w = vec![want(1, 1, 0b11)];
        let mut out = Vec::new();
        plan_at_zero(&mut w, &mut s, 100_000, 8, &mut out);
        assert_eq!(out[0].supplier, 1);
    }

    #[test]
    fn urgent_jumps_the_queue_and_late_non_urgent_waits() {
        let mut s = vec![sup(0, 100_000, 1)];
        let mut w = vec![want(5, 30, 0b1), want(3, 1, 0b1)];
        let mut out = Vec::new();
        plan_at_zero(&mut w, &mut s, 100_000, 8, &mut out);
        assert_eq!(out.len(), 1, "one slot only");
        assert_eq!(out[0].seq, Seq(3));

        // A supplier too slow for a non-urgent deadline is not asked.
        let mut s = vec![sup(9_000, 100_000, 1)];
        let mut w = vec![want(7, 5, 0b1)];
        out.clear();
        plan_at_zero(&mut w, &mut s, 100_000, 8, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn budget_and_slots_are_respected() {
        let mut s = vec![sup(0, 1_000_000, 2), sup(0, 1_000_000, 1)];
        let mut w: Vec<Want> = (0..10).map(|i| want(i, 60, 0b11)).collect();
        let mut out = Vec::new();
        plan_at_zero(&mut w, &mut s, 1000, 8, &mut out);
        assert_eq!(out.len(), 3);
        let mut out2 = Vec::new();
        let mut s2 = vec![sup(0, 1_000_000, 5)];
        plan_at_zero(&mut w, &mut s2, 1000, 2, &mut out2);
        assert_eq!(out2.len(), 2);
    }
}
