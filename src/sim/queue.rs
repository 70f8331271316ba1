//! The simulator's event queue: earliest time first, insertion order among equal times.
//!
//! The heap holds only small keys (time, insertion number, slot); the events themselves sit
//! in a slab whose slots are reused. Sifting 24-byte keys instead of whole events (a message
//! can be a hundred bytes) is what keeps a 10,000-peer run fast.

use crate::proto::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    slab: Vec<Option<E>>,
    free: Vec<u32>,
    next_seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
        }
    }
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
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((at, seq, slot)));
    }

    /// When the earliest event is due.
    pub fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    pub fn pop(&mut self) -> Option<(Instant, E)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let ev = self.slab[slot as usize]
            .take()
            .expect("a queued slot holds its event until popped");
        self.free.push(slot);
        Some((at, ev))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        // Slots are reused.
        q.push(t(9), "e");
        assert_eq!(q.slab.len(), 4);
        assert_eq!(q.len(), 1);
    }
}
