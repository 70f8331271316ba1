//! Segment sequence numbers: `u32` that wrap, compared by serial-number arithmetic (RFC 1982).
//!
//! A live channel at one segment a second wraps after 136 years, but a source may start anywhere
//! (a restarted source continues from a stored counter), so every comparison is wrap-safe: `a`
//! is before `b` when `b - a` (mod 2^32) is in `1..2^31`.

use core::fmt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Seq(pub u32);

impl Seq {
    /// `self + n`, wrapping.
    pub const fn add(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }
    /// `self - n`, wrapping.
    pub const fn sub(self, n: u32) -> Seq {
        Seq(self.0.wrapping_sub(n))
    }
    pub const fn next(self) -> Seq {
        self.add(1)
    }
    /// Signed distance from `self` to `later` (positive when `later` is after `self`).
    pub const fn dist_to(self, later: Seq) -> i32 {
        later.0.wrapping_sub(self.0) as i32
    }
    pub const fn is_before(self, other: Seq) -> bool {
        self.dist_to(other) > 0
    }
    pub const fn is_after(self, other: Seq) -> bool {
        other.dist_to(self) > 0
    }
    /// Where `self` lies from `reference`, in `-2^31..2^31`: serial order for positions
    /// less than 2^31 from `reference`, and a total order over any set of positions. Sort
    /// and rank by it, never by a pairwise serial comparison: `is_before` is not transitive
    /// over the whole u32 range (a, a + 2^30, a + 2^31 + 2^30 form a cycle), and a sort given
    /// a comparison that is not a total order may panic.
    pub const fn offset_from(self, reference: Seq) -> i32 {
        reference.dist_to(self)
    }
    /// The later of two.
    pub fn max(self, other: Seq) -> Seq {
        if other.is_after(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_survives_the_wrap() {
        let a = Seq(u32::MAX - 1);
        let b = a.add(3);
        assert_eq!(b, Seq(1));
        assert!(a.is_before(b));
        assert!(b.is_after(a));
        assert_eq!(a.dist_to(b), 3);
        assert_eq!(b.dist_to(a), -3);
        assert_eq!(a.max(b), b);
        assert_eq!(b.offset_from(a), 3);
        assert_eq!(a.offset_from(b), -3);
        assert_eq!(a.offset_from(a), 0);
    }

    #[test]
    fn offsets_from_a_reference_order_any_positions_totally() {
        // Serial order is cyclic over the whole range (a third of it apart each: each is
        // before the next); offsets from one reference are not.
        let third = 0x5555_5556;
        let a = Seq(7);
        let (b, c) = (a.add(third), a.add(2 * third));
        assert!(a.is_before(b) && b.is_before(c) && c.is_before(a));
        let mut v = vec![c, a, b];
        v.sort_by_key(|s| s.offset_from(a));
        assert_eq!(v, vec![c, a, b]);
        assert!(c.offset_from(a) < 0 && b.offset_from(a) > 0);
    }
}
