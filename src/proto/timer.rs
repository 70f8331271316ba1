//! The node's timers: one deadline per kind, in a fixed table.
//!
//! Setting a timer overwrites its slot, so there is nothing to cancel and nothing grows; the
//! driver asks for the earliest deadline and calls back at or after it. A call when nothing is
//! due does nothing.

use super::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Timer {
    /// Housekeeping: heartbeats, request timeouts, gossip, refinement, scheduling.
    Tick = 0,
    /// The next segment's playback deadline.
    Playout = 1,
    /// The upload budget has refilled enough to start the next queued upload.
    UploadResume = 2,
}

impl Timer {
    pub const ALL: [Timer; 3] = [Timer::Tick, Timer::Playout, Timer::UploadResume];
}

#[derive(Clone, Debug, Default)]
pub struct TimerTable {
    at: [Option<Instant>; 3],
}

impl TimerTable {
    pub fn set(&mut self, t: Timer, at: Instant) {
        self.at[t as usize] = Some(at);
    }
    pub fn stop(&mut self, t: Timer) {
        self.at[t as usize] = None;
    }
    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t as usize]
    }
    /// The earliest deadline of all.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
    /// Clears and returns `t` if it is due at `now`.
    pub fn take_expired(&mut self, t: Timer, now: Instant) -> bool {
        match self.at[t as usize] {
            Some(at) if at <= now => {
                self.at[t as usize] = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::time::Duration;

    #[test]
    fn earliest_wins_and_expiry_clears() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        let a = Instant::ZERO + Duration::from_secs(2);
        let b = Instant::ZERO + Duration::from_secs(1);
        t.set(Timer::Tick, a);
        t.set(Timer::Playout, b);
        assert_eq!(t.next(), Some(b));
        assert!(!t.take_expired(Timer::Tick, b));
        assert!(t.take_expired(Timer::Playout, b));
        assert!(
            !t.take_expired(Timer::Playout, b),
            "a second call does nothing"
        );
        assert_eq!(t.next(), Some(a));
        t.stop(Timer::Tick);
        assert_eq!(t.next(), None);
    }
}
