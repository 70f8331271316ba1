//! Time as the core sees it: microseconds since an origin chosen by the driver.
//!
//! The core never reads a clock. The simulator starts at [`Instant::ZERO`]; the daemon maps its
//! monotonic clock to microseconds since it started. Subtraction saturates so that a driver that
//! hands in an older `now` cannot make a duration negative (the core also ignores time going
//! backwards, see `Node::handle_input`).

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

/// A point in time, in microseconds since the driver's origin.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

/// A span of time in microseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    /// Later than any instant a run reaches; used as "never" in comparisons.
    pub const FAR_FUTURE: Instant = Instant(u64::MAX / 2);

    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
    /// `self - d`, clamped at zero.
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(d.0))
    }
}

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const fn from_micros(us: u64) -> Self {
        Duration(us)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms * 1_000)
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(s * 1_000_000)
    }
    pub fn from_secs_f64(s: f64) -> Self {
        Duration((s.max(0.0) * 1e6) as u64)
    }
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    pub const fn saturating_sub(self, o: Duration) -> Duration {
        Duration(self.0.saturating_sub(o.0))
    }
    pub const fn mul(self, k: u64) -> Duration {
        Duration(self.0.saturating_mul(k))
    }
    /// Time to move `bytes` at `bytes_per_sec` (rounded up; "forever" at zero rate).
    pub fn for_bytes(bytes: u64, bytes_per_sec: u64) -> Duration {
        if bytes_per_sec == 0 {
            return Duration(u64::MAX / 4);
        }
        Duration((bytes.saturating_mul(1_000_000)).div_ceil(bytes_per_sec))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}
impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        self.0 = self.0.saturating_add(d.0);
    }
}
impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}
impl AddAssign for Duration {
    fn add_assign(&mut self, d: Duration) {
        self.0 = self.0.saturating_add(d.0);
    }
}
impl Sub for Duration {
    type Output = Duration;
    fn sub(self, d: Duration) -> Duration {
        Duration(self.0.saturating_sub(d.0))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.as_secs_f64())
    }
}
impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}ms", self.0 as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let a = Instant::from_micros(5);
        let b = Instant::from_micros(9);
        assert_eq!(a.saturating_since(b), Duration::ZERO);
        assert_eq!(b.saturating_since(a), Duration::from_micros(4));
        assert_eq!(a.saturating_sub(Duration::from_secs(1)), Instant::ZERO);
        assert_eq!(
            Duration::from_micros(3) - Duration::from_micros(7),
            Duration::ZERO
        );
    }

    #[test]
    fn transfer_time_rounds_up() {
        assert_eq!(Duration::for_bytes(96_000, 96_000), Duration::from_secs(1));
        assert_eq!(Duration::for_bytes(1, 3), Duration::from_micros(333_334));
        assert!(Duration::for_bytes(1, 0) > Duration::from_secs(1_000_000));
    }
}
