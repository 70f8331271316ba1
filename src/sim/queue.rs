//! The simulator's event queue: earliest time first, insertion order among equal times.
//!
//! A timing wheel: events due within the next `WHEEL_SPAN` go into 1 ms buckets (found through
//! a bitmap of non-empty buckets), later ones wait in a heap until the wheel comes near them.
//! A bucket is sorted once, when it becomes current. Push and pop are O(1) amortised instead of
//! a heap's O(log n) over hundreds of thousands of pending events at 10,000 peers. The heap
//! and buckets hold only small keys (time, insertion number, slot); events sit in a slab
//! whose slots are reused.

use crate::proto::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Bucket width in µs.
const RES_US: u64 = 1_000;
/// Buckets on the wheel (a power of two): 8.192 s ahead.
const BUCKETS: usize = 8_192;
const WORDS: usize = BUCKETS / 64;

type Key = (Instant, u64, u32);

pub struct EventQueue<E> {
    /// Bucket number (time / RES_US) of `current`.
    cur: u64,
    /// The current bucket's keys, sorted latest first (pop from the end).
    current: Vec<Key>,
    wheel: Vec<Vec<Key>>,
    /// Bit b set: `wheel[b]` is not empty.
    occupied: [u64; WORDS],
    /// Events beyond the wheel's span.
    far: BinaryHeap<Reverse<Key>>,
    slab: Vec<Option<E>>,
    free: Vec<u32>,
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
            slab: Vec::new(),
            free: Vec::new(),
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
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        let key = (at, self.next_seq, slot);
        self.next_seq += 1;
        self.len += 1;
        self.place(key);
    }

    fn place(&mut self, key: Key) {
        let b = bucket_of(key.0);
        if b <= self.cur {
            // Due in the bucket being drained (or, for a caller running late, before it):
            // keep `current` sorted latest first. The new key has the highest insertion
            // number, so among equal times it goes before (popped after) the others.
            let pos = self
                .current
                .partition_point(|k| (k.0, k.1) > (key.0, key.1));
            self.current.insert(pos, key);
        } else if b < self.cur + BUCKETS as u64 {
            let i = (b as usize) % BUCKETS;
            self.wheel[i].push(key);
            self.occupied[i / 64] |= 1 << (i % 64);
        } else {
            self.far.push(Reverse(key));
        }
    }

    /// Makes `current` hold the earliest pending bucket, if anything is pending.
    fn settle(&mut self) {
        while self.current.is_empty() && self.len > 0 {
            // The next occupied bucket after `cur` on the wheel, if any.
            let next = self.next_occupied();
            let far_b = self.far.peek().map(|Reverse(k)| bucket_of(k.0));
            let target = match (next, far_b) {
                (Some(n), Some(f)) => n.min(f),
                (Some(n), None) => n,
                (None, Some(f)) => f,
                (None, None) => return,
            };
            self.cur = target;
            // Far events now within the span move onto the wheel (or into `current`).
            while let Some(Reverse(k)) = self.far.peek().copied() {
                if bucket_of(k.0) < self.cur + BUCKETS as u64 {
                    self.far.pop();
                    self.place(k);
                } else {
                    break;
                }
            }
            let i = (self.cur as usize) % BUCKETS;
            if self.occupied[i / 64] & (1 << (i % 64)) != 0 {
                self.occupied[i / 64] &= !(1 << (i % 64));
                let mut batch = std::mem::take(&mut self.wheel[i]);
                self.current.append(&mut batch);
                self.wheel[i] = batch;
            }
            self.current.sort_unstable_by_key(|k| Reverse((k.0, k.1)));
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
        self.current.last().map(|k| k.0)
    }

    pub fn pop(&mut self) -> Option<(Instant, E)> {
        self.settle();
        let (at, _, slot) = self.current.pop()?;
        self.len -= 1;
        let ev = self.slab[slot as usize]
            .take()
            .expect("a queued slot holds its event until popped");
        self.free.push(slot);
        Some((at, ev))
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
