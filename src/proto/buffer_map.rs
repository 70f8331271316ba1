//! Buffer maps: which segments of a sliding window a node holds.
//!
//! DONet's partners swap these to learn who can supply what. The window is at most
//! [`MAX_WINDOW`] segments (the configured window, 120 by default, fits); bit `i` says the node
//! holds `base + i`. On the wire the bitmap goes as bytes with the trailing zeros trimmed, so a
//! map costs a few bytes more than its base. Fixed storage, no heap: the simulator keeps one per
//! partner of every node.

use super::seq::Seq;
use core::fmt;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// Largest window a map can describe, in segments.
pub const MAX_WINDOW: u32 = 256;
const WORDS: usize = (MAX_WINDOW / 64) as usize;
const BYTES: usize = (MAX_WINDOW / 8) as usize;

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BufferMap {
    base: Seq,
    bits: [u64; WORDS],
}

impl BufferMap {
    pub fn empty(base: Seq) -> Self {
        BufferMap {
            base,
            bits: [0; WORDS],
        }
    }

    pub fn base(&self) -> Seq {
        self.base
    }

    fn index(&self, seq: Seq) -> Option<usize> {
        let d = self.base.dist_to(seq);
        (0..MAX_WINDOW as i32).contains(&d).then_some(d as usize)
    }

    pub fn has(&self, seq: Seq) -> bool {
        match self.index(seq) {
            Some(i) => self.bits[i / 64] & (1 << (i % 64)) != 0,
            None => false,
        }
    }

    /// Marks `seq` held, sliding the window forward if `seq` is beyond it.
    /// A `seq` before the window is ignored (too old to matter).
    pub fn set(&mut self, seq: Seq) {
        // An empty map whose window does not cover `seq` moves to it (with room for older
        // ones): a default base of 0 would ignore every sequence number just below the wrap.
        let d = self.base.dist_to(seq);
        if !(0..MAX_WINDOW as i32).contains(&d) && self.bits.iter().all(|&w| w == 0) {
            self.base = seq.sub(MAX_WINDOW / 2);
        }
        let d = self.base.dist_to(seq);
        if d < 0 {
            return;
        }
        if d >= MAX_WINDOW as i32 {
            self.slide_to(seq.sub(MAX_WINDOW - 1));
        }
        if let Some(i) = self.index(seq) {
            self.bits[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn clear(&mut self, seq: Seq) {
        if let Some(i) = self.index(seq) {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Moves the window's start to `new_base` (forward only), forgetting what falls out.
    pub fn slide_to(&mut self, new_base: Seq) {
        if self.base.dist_to(new_base) <= 0 {
            return;
        }
        self.bits = self.bits_from(new_base);
        self.base = new_base;
    }

    /// Bit `k` of the result says whether `from + k` is held, for `k` below [`MAX_WINDOW`]
    /// (so `has(from + k)` for many `k` at once).
    pub fn bits_from(&self, from: Seq) -> [u64; WORDS] {
        let d = self.base.dist_to(from);
        let mut out = [0u64; WORDS];
        if d >= MAX_WINDOW as i32 || d <= -(MAX_WINDOW as i32) {
            return out;
        }
        if d >= 0 {
            // out bit k = bits bit (k + d).
            let (words, shift) = ((d / 64) as usize, d % 64);
            for (i, slot) in out.iter_mut().enumerate() {
                let src = i + words;
                if src < WORDS {
                    let mut v = self.bits[src] >> shift;
                    if shift > 0 && src + 1 < WORDS {
                        v |= self.bits[src + 1] << (64 - shift);
                    }
                    *slot = v;
                }
            }
        } else {
            // out bit k = bits bit (k - e), e = -d: segments before the base are not held.
            let e = -d;
            let (words, shift) = ((e / 64) as usize, e % 64);
            for (i, slot) in out.iter_mut().enumerate() {
                if i < words {
                    continue;
                }
                let src = i - words;
                let mut v = self.bits[src] << shift;
                if shift > 0 && src > 0 {
                    v |= self.bits[src - 1] >> (64 - shift);
                }
                *slot = v;
            }
        }
        out
    }

    /// The newest segment held, if any.
    pub fn newest(&self) -> Option<Seq> {
        for w in (0..WORDS).rev() {
            if self.bits[w] != 0 {
                let bit = 63 - self.bits[w].leading_zeros();
                return Some(self.base.add(w as u32 * 64 + bit));
            }
        }
        None
    }

    /// The oldest segment held, if any.
    pub fn oldest(&self) -> Option<Seq> {
        for w in 0..WORDS {
            if self.bits[w] != 0 {
                return Some(self.base.add(w as u32 * 64 + self.bits[w].trailing_zeros()));
            }
        }
        None
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|w| w.count_ones()).sum()
    }

    /// Checks invariants of a decoded map (nothing to check today: any bit pattern is valid
    /// and the byte count was checked while decoding).
    pub fn validate(&self) -> Result<(), &'static str> {
        Ok(())
    }

    fn to_bytes(self) -> ([u8; BYTES], usize) {
        let mut out = [0u8; BYTES];
        for (i, w) in self.bits.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let used = out.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        (out, used)
    }
}

impl fmt::Debug for BufferMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BufferMap(base {:?}, {} held, newest {:?})",
            self.base,
            self.count(),
            self.newest()
        )
    }
}

struct Bytes<'a>(&'a [u8]);
impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for BufferMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (bytes, used) = self.to_bytes();
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.base)?;
        t.serialize_element(&Bytes(&bytes[..used]))?;
        t.end()
    }
}

/// The bitmap bytes, copied into fixed storage; more than the window holds is an error.
struct BitBytes([u8; BYTES]);

impl<'de> Deserialize<'de> for BitBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BitBytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "at most {BYTES} bitmap bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<BitBytes, E> {
                if v.len() > BYTES {
                    return Err(E::invalid_length(v.len(), &self));
                }
                let mut out = [0u8; BYTES];
                out[..v.len()].copy_from_slice(v);
                Ok(BitBytes(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<BitBytes, A::Error> {
                let mut out = [0u8; BYTES];
                let mut n = 0;
                while let Some(b) = a.next_element::<u8>()? {
                    if n == BYTES {
                        return Err(de::Error::invalid_length(n + 1, &self));
                    }
                    out[n] = b;
                    n += 1;
                }
                Ok(BitBytes(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl<'de> Deserialize<'de> for BufferMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (base, BitBytes(bytes)): (Seq, BitBytes) = Deserialize::deserialize(d)?;
        let mut bits = [0u64; WORDS];
        for (i, w) in bits.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *w = u64::from_le_bytes(b);
        }
        Ok(BufferMap { base, bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_has_slide_newest_across_the_wrap() {
        let mut m = BufferMap::empty(Seq(u32::MAX - 10));
        m.set(Seq(u32::MAX - 10));
        m.set(Seq(u32::MAX));
        m.set(Seq(5));
        assert!(m.has(Seq(u32::MAX)) && m.has(Seq(5)) && !m.has(Seq(4)));
        assert_eq!(m.newest(), Some(Seq(5)));
        assert_eq!(m.oldest(), Some(Seq(u32::MAX - 10)));
        assert_eq!(m.count(), 3);
        // Setting far beyond the window slides it; old bits fall out.
        m.set(Seq(5 + MAX_WINDOW));
        assert_eq!(m.base(), Seq(6));
        assert!(!m.has(Seq(5)));
        assert!(m.has(Seq(5 + MAX_WINDOW)));
        assert_eq!(m.count(), 1);
        // Older than the window is ignored.
        m.set(Seq(1));
        assert!(!m.has(Seq(1)));
    }

    #[test]
    fn an_empty_map_anchors_at_its_first_segment_even_near_the_wrap() {
        let mut m = BufferMap::empty(Seq(0));
        m.set(Seq(u32::MAX - 40));
        assert!(m.has(Seq(u32::MAX - 40)));
        m.set(Seq(3));
        assert!(m.has(Seq(3)) && m.has(Seq(u32::MAX - 40)));
        assert_eq!(m.newest(), Some(Seq(3)));
    }

    #[test]
    fn slide_by_every_amount_keeps_the_right_bits() {
        for shift in 0..=MAX_WINDOW + 1 {
            let mut m = BufferMap::empty(Seq(100));
            for i in (0..MAX_WINDOW).step_by(3) {
                m.set(Seq(100 + i));
            }
            m.slide_to(Seq(100 + shift));
            for i in 0..MAX_WINDOW {
                let s = Seq(100 + shift + i);
                let expect = shift + i < MAX_WINDOW && (shift + i) % 3 == 0;
                assert_eq!(m.has(s), expect, "shift {shift} i {i}");
            }
        }
    }

    #[test]
    fn bits_from_agrees_with_has() {
        let mut m = BufferMap::empty(Seq(u32::MAX - 100));
        for i in (0..MAX_WINDOW).filter(|i| i % 3 == 0 || i % 7 == 1) {
            m.set(Seq(u32::MAX - 100).add(i));
        }
        for off in -600i32..600 {
            let from = Seq((u32::MAX - 100).wrapping_add(off as u32));
            let b = m.bits_from(from);
            for k in 0..MAX_WINDOW {
                let bit = b[(k / 64) as usize] >> (k % 64) & 1 == 1;
                assert_eq!(bit, m.has(from.add(k)), "off {off} k {k}");
            }
        }
    }

    #[test]
    fn wire_form_is_trimmed_and_round_trips() {
        let mut m = BufferMap::empty(Seq(1000));
        let empty = postcard::to_allocvec(&m).unwrap();
        assert_eq!(empty.len(), 2 + 1); // varint base + zero-length bytes
        for i in 0..10 {
            m.set(Seq(1000 + i));
        }
        let v = postcard::to_allocvec(&m).unwrap();
        assert_eq!(v.len(), 2 + 1 + 2);
        let back: BufferMap = postcard::from_bytes(&v).unwrap();
        assert_eq!(back, m);
        // 33 bitmap bytes do not fit.
        let mut bad = postcard::to_allocvec(&Seq(1)).unwrap();
        bad.push(33);
        bad.extend_from_slice(&[0xff; 33]);
        assert!(postcard::from_bytes::<BufferMap>(&bad).is_err());
    }
}
