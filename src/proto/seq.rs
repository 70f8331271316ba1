//! Segment sequence numbers: `u32` that wrap, compared by serial-number arithmetic (RFC 1982).
//!
//! A live channel at one segment a second wraps after 136 years, but a source may start anywhere
//! (a restarted source continues from a stored counter), so every comparison is wrap-safe: `a`
//! is before `b` when `b - a` (mod 2^32) is in `1..2^31`.

use core::cmp::Ordering;
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
    /// Serial-number order; only meaningful for sequence numbers less than 2^31 apart.
    pub fn serial_cmp(self, other: Seq) -> Ordering {
        0.cmp(&self.dist_to(other))
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
        assert_eq!(a.serial_cmp(b), Ordering::Less);
        assert_eq!(b.serial_cmp(a), Ordering::Greater);
        assert_eq!(a.serial_cmp(a), Ordering::Equal);
    }
}
