//! The door of a node: which TCP connections it takes at all, before any byte is read.
//!
//! It owns the per-address connection counts and the address bans. The core bans a polluter
//! by peer id and listen address (`proto::bans`); the guard adds a ban of its IP address, so
//! that its next connection is refused at `accept` without a task, a buffer or a handshake.
//! Loopback addresses are neither counted nor banned: one machine running several peers (the
//! demo, the tests, a box with several channels) shares them, and a local process can do
//! worse than connect anyway. Every table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections one IP address may hold at once (every kind: partners, queries, handshakes).
/// A household behind one NAT runs a few boxes; a peer needs one link to us at a time.
pub const MAX_LINKS_PER_IP: usize = 8;
/// Addresses banned at once; when full, the ban closest to its end makes room.
pub const MAX_IP_BANS: usize = 256;

#[derive(Debug, Default)]
struct State {
    open: HashMap<IpAddr, usize>,
    bans: HashMap<IpAddr, Instant>,
}

/// Shared by the accept task (which asks) and the actor (which bans).
#[derive(Clone, Debug, Default)]
pub struct Guard {
    state: Arc<Mutex<State>>,
}

/// Why a connection was refused at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Banned,
    TooManyFromAddress,
}

/// Holds one connection's place in its address's count; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    guard: Guard,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut s = self.guard.lock();
            if let Some(n) = s.open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    s.open.remove(&ip);
                }
            }
        }
    }
}

fn exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

impl Guard {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would leave counts, not broken invariants.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<Admitted, Refused> {
        if exempt(ip) {
            return Ok(Admitted {
                guard: self.clone(),
                ip: None,
            });
        }
        let mut s = self.lock();
        if let Some(until) = s.bans.get(&ip).copied() {
            if until > now {
                return Err(Refused::Banned);
            }
            s.bans.remove(&ip);
        }
        let n = s.open.entry(ip).or_insert(0);
        if *n >= MAX_LINKS_PER_IP {
            return Err(Refused::TooManyFromAddress);
        }
        *n += 1;
        Ok(Admitted {
            guard: self.clone(),
            ip: Some(ip),
        })
    }

    /// Bans `ip` for `how_long` (loopback excepted, see the module docs).
    pub fn ban(&self, ip: IpAddr, how_long: Duration, now: Instant) {
        if exempt(ip) {
            return;
        }
        let mut s = self.lock();
        s.bans.retain(|_, until| *until > now);
        if s.bans.len() >= MAX_IP_BANS && !s.bans.contains_key(&ip) {
            if let Some(k) = s.bans.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) {
                s.bans.remove(&k);
            }
        }
        let until = now + how_long;
        let e = s.bans.entry(ip).or_insert(until);
        *e = (*e).max(until);
    }

    /// Addresses banned now.
    pub fn banned(&self, now: Instant) -> usize {
        self.lock().bans.values().filter(|u| **u > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_cap_frees_on_drop_and_loopback_is_exempt() {
        let g = Guard::default();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let held: Vec<_> = (0..MAX_LINKS_PER_IP)
            .map(|_| g.admit(ip, now).unwrap())
            .collect();
        assert_eq!(g.admit(ip, now).unwrap_err(), Refused::TooManyFromAddress);
        assert!(g.admit("192.0.2.8".parse().unwrap(), now).is_ok());
        drop(held);
        assert!(g.admit(ip, now).is_ok());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let many: Vec<_> = (0..100).map(|_| g.admit(lo, now).unwrap()).collect();
        assert_eq!(many.len(), 100);
        g.ban(lo, Duration::from_secs(60), now);
        assert!(g.admit(lo, now).is_ok());
    }

    #[test]
    fn bans_refuse_until_they_end_and_stay_bounded() {
        let g = Guard::default();
        let now = Instant::now();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        g.ban(ip, Duration::from_secs(60), now);
        assert_eq!(g.admit(ip, now).unwrap_err(), Refused::Banned);
        assert!(g.admit(ip, now + Duration::from_secs(61)).is_ok());
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.ban(ip, Duration::from_secs(60 + i as u64), now);
        }
        assert!(g.banned(now) <= MAX_IP_BANS);
        assert_eq!(g.banned(now), MAX_IP_BANS);
    }
}
