//! The daemon's clocks: a monotonic one mapped to the core's [`Instant`] (microseconds since the
//! daemon started), and the wall clock, read only for segment origin stamps and lag.
//!
//! The core never sees the wall clock: a box that boots at 1970 and jumps at NTP sync would
//! otherwise move deadlines. Lag is the one figure that must be compared across machines (the
//! source's ingest time against a peer's playout time), so it alone uses UNIX-epoch
//! microseconds, and only in the driver.

use crate::proto::Instant;
use std::time::{SystemTime, UNIX_EPOCH};

/// Monotonic time since the daemon started, as the core counts it.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: std::time::Instant::now(),
        }
    }

    /// Now, in core time.
    pub fn now(&self) -> Instant {
        self.at(std::time::Instant::now())
    }

    /// A monotonic instant in core time (instants before the start map to zero).
    pub fn at(&self, t: std::time::Instant) -> Instant {
        let us = t.saturating_duration_since(self.start).as_micros();
        Instant::from_micros(us.min(u64::MAX as u128 / 4) as u64)
    }

    /// A core instant as a tokio instant, for `sleep_until`.
    pub fn to_tokio(&self, t: Instant) -> tokio::time::Instant {
        // Far-future instants are capped at a day: a timer that far out is re-read long before.
        let us = t.as_micros().min(86_400_000_000);
        tokio::time::Instant::from_std(self.start + std::time::Duration::from_micros(us))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Wall-clock microseconds since the UNIX epoch (0 if the clock is before 1970).
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_time_starts_near_zero_and_round_trips() {
        let c = Clock::new();
        let t = c.now();
        assert!(t.as_micros() < 1_000_000);
        let later = Instant::from_micros(5_000_000);
        let tk = c.to_tokio(later);
        assert_eq!(c.at(tk.into_std()), later);
        assert!(wall_us() > 1_600_000_000_000_000);
    }
}
