//! The door of a node: which TCP connections it takes at all, before any byte is read.
//!
//! It owns the per-address connection and handshake counts and the address bans. An "address"
//! here is an IPv4 address or an IPv6 /64 ([`DoorKey`]): a host given a /64 picks any of its
//! 2^64 addresses at will, so counting /128s apart would let one machine take every slot.
//! A handshake (a connection that has not said hello yet) holds a [`Handshake`] place: at most
//! [`MAX_HANDSHAKES_PER_IP`] per address and [`MAX_HANDSHAKES`] in all, loopback included in
//! the latter, and the link reader ends it after [`HELLO_DEADLINE`]; a connection over either
//! count is closed at `accept`. The core bans a polluter
//! by peer id and listen address (`proto::bans`); the guard adds a ban of its IP address, so
//! that its next connection is refused at `accept` without a task, a buffer or a handshake.
//! Loopback addresses are neither counted nor banned: one machine running several peers (the
//! demo, the tests, a box with several channels) shares them, and a local process can do
//! worse than connect anyway. Every table is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections one IP address may hold at once (every kind: partners, queries, handshakes).
/// A household behind one NAT runs a few boxes; a peer needs one link to us at a time.
pub const MAX_LINKS_PER_IP: usize = 8;
/// Addresses banned at once; when full, the ban closest to its end makes room.
pub const MAX_IP_BANS: usize = 256;
/// Handshakes (connections that have not said hello) one address may hold at once: a few
/// boxes behind one NAT joining together.
pub const MAX_HANDSHAKES_PER_IP: usize = 4;
/// Handshakes held at once, from everywhere: well under [`super::MAX_LINKS`], so that a flood
/// of silent connections from many addresses leaves most link slots to partners.
pub const MAX_HANDSHAKES: usize = 32;
/// Time a connection has to say hello (its first frame), after which it is closed. A hello is
/// one small frame: a peer on the far side of the world sends it within a round trip.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(2);

/// An address as the door counts it: an IPv4 address (a v4-mapped IPv6 one is IPv4), or the
/// /64 prefix of an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DoorKey {
    V4(Ipv4Addr),
    V6Net([u8; 8]),
}

impl DoorKey {
    pub fn of(ip: IpAddr) -> DoorKey {
        match ip {
            IpAddr::V4(v4) => DoorKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => DoorKey::V4(v4),
                None => {
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    DoorKey::V6Net(net)
                }
            },
        }
    }
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<DoorKey, usize>,
    /// Handshakes per address (loopback's are counted only in `handshakes_all`).
    handshakes: HashMap<DoorKey, usize>,
    handshakes_all: usize,
    bans: HashMap<DoorKey, Instant>,
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
    /// Too many handshakes from this address, or in all.
    TooManyHandshakes,
}

/// Holds one connection's place in its address's count; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    guard: Guard,
    key: Option<DoorKey>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            decrement(&mut self.guard.lock().open, k);
        }
    }
}

/// Holds one handshake's place (its address's and the total); the link reader drops it when
/// the hello arrives, or the link ends.
#[derive(Debug)]
pub struct Handshake {
    guard: Guard,
    key: Option<DoorKey>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut s = self.guard.lock();
        s.handshakes_all -= 1;
        if let Some(k) = self.key {
            decrement(&mut s.handshakes, k);
        }
    }
}

fn decrement(counts: &mut HashMap<DoorKey, usize>, k: DoorKey) {
    if let Some(n) = counts.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&k);
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

    /// Takes a connection from `ip` (its place among the address's links and its place as a
    /// handshake), or says why not.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(Admitted, Handshake), Refused> {
        let key = (!exempt(ip)).then(|| DoorKey::of(ip));
        let mut s = self.lock();
        if s.handshakes_all >= MAX_HANDSHAKES {
            return Err(Refused::TooManyHandshakes);
        }
        if let Some(k) = key {
            if let Some(until) = s.bans.get(&k).copied() {
                if until > now {
                    return Err(Refused::Banned);
                }
                s.bans.remove(&k);
            }
            if s.open.get(&k).copied().unwrap_or(0) >= MAX_LINKS_PER_IP {
                return Err(Refused::TooManyFromAddress);
            }
            if s.handshakes.get(&k).copied().unwrap_or(0) >= MAX_HANDSHAKES_PER_IP {
                return Err(Refused::TooManyHandshakes);
            }
            *s.open.entry(k).or_insert(0) += 1;
            *s.handshakes.entry(k).or_insert(0) += 1;
        }
        s.handshakes_all += 1;
        Ok((
            Admitted {
                guard: self.clone(),
                key,
            },
            Handshake {
                guard: self.clone(),
                key,
            },
        ))
    }

    /// Handshakes held now (all addresses).
    pub fn handshakes(&self) -> usize {
        self.lock().handshakes_all
    }

    /// Bans `ip`'s address (its /64 for IPv6) for `how_long` (loopback excepted, see the
    /// module docs).
    pub fn ban(&self, ip: IpAddr, how_long: Duration, now: Instant) {
        if exempt(ip) {
            return;
        }
        let ip = DoorKey::of(ip);
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
        // Links that said hello (their handshake places given back) up to the cap.
        let held: Vec<_> = (0..MAX_LINKS_PER_IP)
            .map(|_| g.admit(ip, now).unwrap().0)
            .collect();
        assert_eq!(g.admit(ip, now).unwrap_err(), Refused::TooManyFromAddress);
        assert!(g.admit("192.0.2.8".parse().unwrap(), now).is_ok());
        drop(held);
        assert!(g.admit(ip, now).is_ok());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let many: Vec<_> = (0..100).map(|_| g.admit(lo, now).unwrap().0).collect();
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

    #[test]
    fn an_ipv6_slash_64_is_one_address_and_v4_mapped_is_v4() {
        let g = Guard::default();
        let now = Instant::now();
        let in_net = |i: u16| -> IpAddr { format!("2001:db8:1:2::{i:x}").parse().unwrap() };
        // 64 addresses of one /64 hold what one address may.
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 1..=64 {
            match g.admit(in_net(i), now) {
                Ok((a, _hello_said)) => held.push(a),
                Err(e) => {
                    assert_eq!(e, Refused::TooManyFromAddress);
                    refused += 1;
                }
            }
        }
        assert_eq!(
            (held.len(), refused),
            (MAX_LINKS_PER_IP, 64 - MAX_LINKS_PER_IP)
        );
        // The next /64 is another address.
        assert!(g.admit("2001:db8:1:3::1".parse().unwrap(), now).is_ok());
        // A ban of one address of the /64 bans all of it.
        g.ban(in_net(7), Duration::from_secs(60), now);
        drop(held);
        assert_eq!(g.admit(in_net(9000), now).unwrap_err(), Refused::Banned);
        assert_eq!(
            DoorKey::of("::ffff:192.0.2.1".parse().unwrap()),
            DoorKey::of("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn handshakes_are_bounded_per_address_and_in_all() {
        let g = Guard::default();
        let now = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let shakes: Vec<_> = (0..MAX_HANDSHAKES_PER_IP)
            .map(|_| g.admit(ip, now).unwrap())
            .collect();
        assert_eq!(g.admit(ip, now).unwrap_err(), Refused::TooManyHandshakes);
        // A hello said gives the handshake place back, the link's stays.
        let (links, hellos): (Vec<_>, Vec<_>) = shakes.into_iter().unzip();
        drop(hellos);
        assert_eq!(g.handshakes(), 0);
        let more = g.admit(ip, now).unwrap();
        // In all: loopback counts here too (its per-address counts are exempt).
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut all: Vec<_> = (1..MAX_HANDSHAKES)
            .map(|_| g.admit(lo, now).unwrap())
            .collect();
        assert_eq!(g.handshakes(), MAX_HANDSHAKES);
        assert_eq!(g.admit(lo, now).unwrap_err(), Refused::TooManyHandshakes);
        assert_eq!(
            g.admit("203.0.113.5".parse().unwrap(), now).unwrap_err(),
            Refused::TooManyHandshakes
        );
        all.pop();
        assert!(g.admit(lo, now).is_ok());
        drop((links, more, all));
        assert_eq!(g.handshakes(), 0);
    }
}
