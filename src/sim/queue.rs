//! The simulator's event queue: earliest time first, insertion order among equal times.
//!
//! A timing wheel: events due within the next `WHEEL_SPAN` go into 1 ms buckets (found through
//! a bitmap of non-empty buckets), later ones wait in a heap until the wheel comes near them.
//! A bucket is sorted once, when it becomes current. Push and pop are O(1) amortised instead of
//! a heap's O(log n) over hundreds of thousands of pending events at 10,000 peers. Events
//! sit in their bucket with their key (time, insertion number), so a bucket is drained in
//! memory order.

use crate::proto::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Bucket width in µs.
const RES_US: u64 = 1_000;
/// Buckets on the wheel (a power of two): 2.048 s ahead, which holds nearly every event
/// (deliveries, timers, transfers); a smaller wheel keeps the buckets being filled in cache.
const BUCKETS: usize = 2_048;
const WORDS: usize = BUCKETS / 64;

type Key = (Instant, u64);

/// An event with its key (time, insertion number), ordered by the key alone.
struct Entry<E> {
    key: Key,
    ev: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

pub struct EventQueue<E> {
    /// Bucket number (time / RES_US) of `current`.
    cur: u64,
    /// The current bucket's events, sorted latest first (pop from the end).
    current: Vec<Entry<E>>,
    /// Events live in their bucket (not in a side table): draining a bucket reads them in
    /// sequence instead of chasing a slot per event across memory.
    wheel: Vec<Vec<Entry<E>>>,
    /// Bit b set: `wheel[b]` is not empty.
    occupied: [u64; WORDS],
    /// Events beyond the wheel's span.
    far: BinaryHeap<Reverse<Entry<E>>>,
    next_seq: u64,
    len: usize,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            cur: 0,
            current: Vec::new(),
            wheel: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            far: BinaryHeap::new(),
            next_seq: 0,
            len: 0,
        }
    }
}

fn bucket_of(at: Instant) -> u64 {
    at.as_micros() / RES_US
}

impl<E> EventQueue<E> {
    pub fn push(&mut self, at: Instant, ev: E) {
        let key = (at, self.next_seq);
        self.next_seq += 1;
        self.len += 1;
        self.place(Entry { key, ev });
    }

    fn place(&mut self, e: Entry<E>) {
        let b = bucket_of(e.key.0);
        if b <= self.cur {
            // Due in the bucket being drained (or, for a caller running late, before it):
            // keep `current` sorted latest first. The new key has the highest insertion
            // number, so among equal times it goes before (popped after) the others.
            let pos = self.current.partition_point(|k| k.key > e.key);
            self.current.insert(pos, e);
        } else if b < self.cur + BUCKETS as u64 {
            let i = (b as usize) % BUCKETS;
            self.wheel[i].push(e);
            self.occupied[i / 64] |= 1 << (i % 64);
        } else {
            self.far.push(Reverse(e));
        }
    }

    /// Makes `current` hold the earliest pending bucket, if anything is pending.
    fn settle(&mut self) {
        while self.current.is_empty() && self.len > 0 {
            // The next occupied bucket after `cur` on the wheel, if any.
            let next = self.next_occupied();
            let far_b = self.far.peek().map(|Reverse(e)| bucket_of(e.key.0));
            let target = match (next, far_b) {
                (Some(n), Some(f)) => n.min(f),
                (Some(n), None) => n,
                (None, Some(f)) => f,
                (None, None) => return,
            };
            self.cur = target;
            // Far events now within the span move onto the wheel (or into `current`).
            while let Some(Reverse(e)) = self.far.peek() {
                if bucket_of(e.key.0) < self.cur + BUCKETS as u64 {
                    let Some(Reverse(e)) = self.far.pop() else {
                        break;
                    };
                    self.place(e);
                } else {
                    break;
                }
            }
            let i = (self.cur as usize) % BUCKETS;
            if self.occupied[i / 64] & (1 << (i % 64)) != 0 {
                self.occupied[i / 64] &= !(1 << (i % 64));
                if self.current.is_empty() {
                    // Swap the bucket in whole (its storage comes back as the next
                    // `current` is drained empty).
                    std::mem::swap(&mut self.current, &mut self.wheel[i]);
                } else {
                    let mut batch = std::mem::take(&mut self.wheel[i]);
                    self.current.append(&mut batch);
                    self.wheel[i] = batch;
                }
            }
            self.current.sort_unstable_by_key(|e| Reverse(e.key));
        }
    }

    /// The bucket number of the first occupied wheel bucket after `cur`.
    fn next_occupied(&self) -> Option<u64> {
        let start = (self.cur as usize + 1) % BUCKETS;
        // Scan the bitmap from `start`, wrapping once.
        for step in 0..=WORDS {
            let w = (start / 64 + step) % WORDS;
            let mut bits = self.occupied[w];
            if step == 0 {
                bits &= !0u64 << (start % 64);
            }
            if step == WORDS {
                bits &= (1u64 << (start % 64)).wrapping_sub(1);
            }
            if bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                let off = (i + BUCKETS - (self.cur as usize % BUCKETS)) % BUCKETS;
                return Some(self.cur + off as u64);
            }
        }
        None
    }

    /// When the earliest event is due.
    pub fn peek_time(&mut self) -> Option<Instant> {
        self.settle();
        self.current.last().map(|e| e.key.0)
    }

    pub fn pop(&mut self) -> Option<(Instant, E)> {
        self.settle();
        let e = self.current.pop()?;
        self.len -= 1;
        Some((e.key.0, e.ev))
    }

    /// The event `k` places after the next one, if it is already in the bucket being drained
    /// (a hint for what will be touched soon; events pushed meanwhile may come first).
    pub fn peek_ahead(&self, k: usize) -> Option<&E> {
        let i = self.current.len().checked_sub(k + 1)?;
        Some(&self.current[i].ev)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rng::Rng;
    use crate::proto::Duration;

    #[test]
    fn earliest_first_then_insertion_order() {
        let mut q = EventQueue::default();
        let t = |ms| Instant::ZERO + Duration::from_millis(ms);
        q.push(t(5), "c");
        q.push(t(1), "a");
        q.push(t(5), "d");
        q.push(t(1), "b");
        assert_eq!(q.peek_time(), Some(t(1)));
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
        assert!(q.is_empty());
    }

    /// The wheel pops in exactly the order a (time, insertion) heap would, including events
    /// pushed while draining, events at the current instant, and events far beyond the span.
    #[test]
    fn same_order_as_a_heap() {
        let mut rng = Rng::new(9);
        let mut q = EventQueue::default();
        let mut reference: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut now = Instant::ZERO;
        let mut push = |q: &mut EventQueue<u64>, r: &mut BinaryHeap<_>, at: Instant| {
            q.push(at, seq);
            r.push(Reverse((at, seq)));
            seq += 1;
        };
        for _ in 0..200 {
            let d = Duration::from_micros(rng.below(30_000_000) as u64);
            push(&mut q, &mut reference, now + d);
        }
        for _ in 0..50_000 {
            let (at, id) = q.pop().unwrap();
            let Reverse((rat, rid)) = reference.pop().unwrap();
            assert_eq!((at, id), (rat, rid));
            assert!(at >= now);
            now = at;
            for _ in 0..rng.below(3) {
                let d = match rng.below(4) {
                    0 => Duration::ZERO,
                    1 => Duration::from_micros(rng.below(1_000) as u64),
                    2 => Duration::from_micros(rng.below(2_000_000) as u64),
                    _ => Duration::from_micros(rng.below(20_000_000) as u64),
                };
                push(&mut q, &mut reference, now + d);
            }
            if q.is_empty() {
                break;
            }
        }
        assert_eq!(q.len(), reference.len());
    }
}
