//! The segment store: a fixed ring of the newest segments a node holds, within a byte budget.
//!
//! Slots are indexed by `seq % slots`, so insert and lookup are O(1) and the table never grows.
//! The window of held segments trails the newest one by at most `slots`; a segment older than
//! that, or one that would break the byte budget, evicts the oldest first. The store holds
//! payload *handles*: on the box an `Arc` of bytes shared with senders and players (each byte
//! held once), in the simulator a bare length.
//!
//! Segments still arriving (see [`super::inflight`]) take their bytes from the same budget
//! ([`Store::reserve`]): the oldest held segments make room for them, as for a new one.

use super::buffer_map::{BufferMap, MAX_WINDOW};
use super::seq::Seq;
use super::wire::{Payload, Segment};

#[derive(Debug)]
pub struct Store<P> {
    slots: Vec<Option<Segment<P>>>,
    byte_budget: u64,
    bytes_held: u64,
    /// Bytes set aside for segments in progress.
    reserved: u64,
    map: BufferMap,
    newest: Option<Seq>,
}

/// What an insert did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Inserted {
    New,
    Duplicate,
    /// Older than the window (or bigger than the whole budget): not kept.
    TooOld,
}

impl<P: Payload> Store<P> {
    /// `window` segments (at most [`MAX_WINDOW`]) within `byte_budget` bytes of payload.
    pub fn new(window: u32, byte_budget: u64) -> Self {
        let window = window.clamp(1, MAX_WINDOW) as usize;
        Store {
            slots: (0..window).map(|_| None).collect(),
            byte_budget,
            bytes_held: 0,
            reserved: 0,
            map: BufferMap::empty(Seq(0)),
            newest: None,
        }
    }

    pub fn window(&self) -> u32 {
        self.slots.len() as u32
    }

    fn slot(&self, seq: Seq) -> usize {
        seq.0 as usize % self.slots.len()
    }

    pub fn has(&self, seq: Seq) -> bool {
        self.map.has(seq)
    }

    pub fn get(&self, seq: Seq) -> Option<&Segment<P>> {
        if !self.map.has(seq) {
            return None;
        }
        self.slots[self.slot(seq)].as_ref().filter(|s| s.seq == seq)
    }

    pub fn newest(&self) -> Option<Seq> {
        self.newest
    }

    pub fn oldest(&self) -> Option<Seq> {
        self.map.oldest()
    }

    /// The oldest segment held at or after `from`.
    /// Nothing before the map's base is held, so the search starts there at the earliest:
    /// it looks at most a map's window of positions, however far back `from` lies (a start
    /// chosen from a partner's map may lie anywhere).
    pub fn oldest_from(&self, from: Seq) -> Option<Seq> {
        let newest = self.newest?;
        let base = self.map.base();
        let from = if from.is_before(base) { base } else { from };
        let span = from.dist_to(newest);
        if span < 0 {
            return None;
        }
        (0..=span as u32)
            .map(|k| from.add(k))
            .find(|&s| self.map.has(s))
    }

    pub fn bytes_held(&self) -> u64 {
        self.bytes_held
    }

    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Sets `len` bytes of the budget aside for a segment in progress, evicting the oldest
    /// held segments to make room; false (nothing changed) if it cannot fit beside what is
    /// already reserved.
    pub fn reserve(&mut self, len: u64) -> bool {
        if self.reserved + len > self.byte_budget {
            return false;
        }
        while self.bytes_held + self.reserved + len > self.byte_budget {
            match self.map.oldest() {
                Some(old) => self.remove(old),
                None => break,
            }
        }
        self.reserved += len;
        true
    }

    /// Gives back what [`Store::reserve`] set aside.
    pub fn release(&mut self, len: u64) {
        self.reserved = self.reserved.saturating_sub(len);
    }

    pub fn len(&self) -> u32 {
        self.map.count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What we hold, as partners see it.
    pub fn map(&self) -> &BufferMap {
        &self.map
    }

    fn remove(&mut self, seq: Seq) {
        let i = self.slot(seq);
        if let Some(s) = self.slots[i].take_if(|s| s.seq == seq) {
            self.bytes_held -= s.payload.len() as u64;
            self.map.clear(seq);
        }
    }

    pub fn insert(&mut self, seg: Segment<P>) -> Inserted {
        let seq = seg.seq;
        let len = seg.payload.len() as u64;
        if len + self.reserved > self.byte_budget {
            return Inserted::TooOld;
        }
        let window = self.window();
        if let Some(newest) = self.newest {
            if self.map.has(seq) {
                return Inserted::Duplicate;
            }
            if newest.dist_to(seq) <= -(window as i32) {
                return Inserted::TooOld;
            }
            if seq.is_after(newest) {
                // Slide: everything older than seq - window + 1 falls out.
                let keep_from = seq.sub(window - 1);
                while let Some(old) = self.map.oldest() {
                    if old.is_before(keep_from) {
                        self.remove(old);
                    } else {
                        break;
                    }
                }
                self.newest = Some(seq);
                // Keep the map's base at or before the oldest slot we may hold.
                if self.map.base().is_before(keep_from) {
                    self.map.slide_to(keep_from);
                }
            }
        } else {
            self.newest = Some(seq);
            self.map = BufferMap::empty(seq.sub(window - 1));
        }
        // The slot may still hold an older segment (it is then out of the window already,
        // but a segment before the map's base is not in the map): free it.
        let i = self.slot(seq);
        if let Some(old) = self.slots[i].take() {
            if self.map.has(old.seq) {
                self.map.clear(old.seq);
            }
            self.bytes_held -= old.payload.len() as u64;
        }
        // Byte budget: evict the oldest until the new one fits.
        while self.bytes_held + self.reserved + len > self.byte_budget {
            match self.map.oldest() {
                Some(old) if old != seq => self.remove(old),
                _ => break,
            }
        }
        self.bytes_held += len;
        self.map.set(seq);
        self.slots[i] = Some(seg);
        Inserted::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::SimPayload;

    fn seg(seq: u32, len: u32) -> Segment<SimPayload> {
        Segment {
            seq: Seq(seq),
            origin_us: 0,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload { len, hops: 0 },
        }
    }

    #[test]
    fn window_slides_and_bytes_are_accounted() {
        let mut s = Store::new(4, 1 << 30);
        for i in 0..10 {
            assert_eq!(s.insert(seg(i, 100)), Inserted::New);
        }
        assert_eq!(s.len(), 4);
        assert_eq!(s.bytes_held(), 400);
        assert!(s.has(Seq(9)) && s.has(Seq(6)) && !s.has(Seq(5)));
        assert_eq!(s.insert(seg(5, 100)), Inserted::TooOld);
        assert_eq!(s.insert(seg(9, 100)), Inserted::Duplicate);
        assert_eq!(s.get(Seq(7)).unwrap().seq, Seq(7));
        assert!(s.get(Seq(3)).is_none());
    }

    #[test]
    fn out_of_order_inside_the_window_is_kept() {
        let mut s = Store::new(8, 1 << 30);
        s.insert(seg(10, 1));
        assert_eq!(s.insert(seg(7, 1)), Inserted::New);
        assert_eq!(s.insert(seg(3, 1)), Inserted::New);
        assert_eq!(s.insert(seg(2, 1)), Inserted::TooOld);
        assert_eq!(s.oldest(), Some(Seq(3)));
        assert_eq!(s.newest(), Some(Seq(10)));
        assert_eq!(s.oldest_from(Seq(4)), Some(Seq(7)));
        // From half the sequence range back: found by looking at the window only (it used
        // to step through every position between).
        let t = std::time::Instant::now();
        assert_eq!(s.oldest_from(Seq(10).sub((1 << 31) - 1)), Some(Seq(3)));
        assert_eq!(s.oldest_from(Seq(10).add(1 << 31)), Some(Seq(3)));
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(s.oldest_from(Seq(7)), Some(Seq(7)));
        assert_eq!(s.oldest_from(Seq(0)), Some(Seq(3)));
        assert_eq!(s.oldest_from(Seq(11)), None);
    }

    #[test]
    fn byte_budget_evicts_oldest_first() {
        let mut s = Store::new(100, 1000);
        for i in 0..5 {
            s.insert(seg(i, 300));
        }
        assert!(s.bytes_held() <= 1000);
        assert_eq!(s.len(), 3);
        assert!(s.has(Seq(4)) && s.has(Seq(2)) && !s.has(Seq(1)));
        assert_eq!(s.insert(seg(9, 2000)), Inserted::TooOld);
    }

    #[test]
    fn segments_in_progress_take_their_bytes_from_the_same_budget() {
        let mut s = Store::new(100, 1000);
        for i in 0..3 {
            s.insert(seg(i, 300));
        }
        assert!(s.reserve(300), "the oldest makes room");
        assert!(!s.has(Seq(0)) && s.has(Seq(1)));
        assert_eq!(s.bytes_held() + s.reserved(), 900);
        assert!(!s.reserve(800), "beyond the budget beside what is reserved");
        assert_eq!(s.reserved(), 300);
        s.insert(seg(3, 300));
        assert!(s.bytes_held() + s.reserved() <= 1000);
        assert!(!s.has(Seq(1)));
        s.release(300);
        assert_eq!(s.reserved(), 0);
    }

    #[test]
    fn wraps_around_u32() {
        let mut s = Store::new(16, 1 << 30);
        for i in 0..40u32 {
            s.insert(seg((u32::MAX - 20).wrapping_add(i), 10));
        }
        assert_eq!(s.len(), 16);
        assert_eq!(s.newest(), Some(Seq((u32::MAX - 20).wrapping_add(39))));
        assert!(s.has(Seq(18)) && s.has(Seq(3)) && !s.has(Seq(2)));
    }
}
