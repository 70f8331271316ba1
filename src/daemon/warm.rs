//! A channel's warm view: members of its swarm recently heard of, kept by the box daemon for
//! every channel it carries, so that zapping to a channel dials live members at once.
//!
//! Two things fill it. The tuned channel's actor shows it every membership record its node
//! receives (an origin's redirect, a deputy's or a gossip's members, a partner rejection's
//! sample). A standby channel runs [`keep_warm`]: every [`PROBE_EVERY`] it asks one member (a
//! warm one, else a configured bootstrap address) for its sample, the way a joining node asks a
//! deputy (`Hello`, `MembersRequest`, the `Members` answer, `Bye`), and never sends `Join` or
//! asks for a partnership: a standby box is not a member, and nobody is offered it as a
//! partner. A member that does not answer leaves the view. The view keeps the freshest
//! [`WARM_VIEW`] records, our own nodes excepted; it never changes the core's traffic.

use super::link::{to_peer_addr, to_socket_addr};
use crate::proto::wire::{
    decode_body, encode, frame_len, ByeReason, ChannelId, Control, Hello, MemberEntry, Message,
    Role, FRAME_PREFIX_LEN, MAGIC, VERSION,
};
use crate::proto::{PeerAddr, PeerId};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Members a view holds (a zap dials one; the rest are fallbacks and the core's first sample).
pub const WARM_VIEW: usize = 16;
/// Records older than this are not offered to a zap (a member's record lives 60 s in the core).
pub const WARM_FRESH: Duration = Duration::from_secs(45);
/// Warm members a zap dials at most before the configured bootstrap addresses.
pub const WARM_DIALS: usize = 3;
/// A standby channel asks a member for its sample this often (a member record lives 60 s).
pub const PROBE_EVERY: Duration = Duration::from_secs(20);
/// After a failed probe the next comes sooner (a source opens its port late; members go).
pub const PROBE_RETRY: Duration = Duration::from_secs(5);
/// A probe (connect, ask, answer) that takes longer has failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest frame a probe reads (a members answer is a few hundred bytes).
pub const PROBE_MAX_FRAME: u32 = 64 * 1024;
/// Frames a probe reads at most while waiting for the members answer.
pub const PROBE_MAX_FRAMES: usize = 8;
/// Our own nodes remembered per channel (a tuned node per zap to it).
const OWN_IDS: usize = 16;

#[derive(Debug, Default)]
pub struct WarmView {
    entries: Vec<(PeerId, PeerAddr, Instant)>,
    /// Our own nodes on this channel (a standby, then a tuned node): never offered.
    own: Vec<PeerId>,
}

pub type SharedView = Arc<Mutex<WarmView>>;

/// Locks a view; a poisoned lock still holds a usable list of addresses.
pub fn lock(v: &SharedView) -> std::sync::MutexGuard<'_, WarmView> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

impl WarmView {
    /// Marks `id` as one of ours (the last few are remembered: a channel's nodes come and go).
    pub fn add_own(&mut self, id: PeerId) {
        if self.own.len() == OWN_IDS {
            self.own.remove(0);
        }
        self.own.push(id);
        self.entries.retain(|(e, _, _)| *e != id);
    }

    /// Takes the membership records out of a control message, if it has any.
    pub fn observe(&mut self, msg: &Control, now: Instant) {
        match msg {
            Control::Redirect { deputy, members } => {
                for e in deputy.iter().chain(members) {
                    self.learn(e, now);
                }
            }
            Control::Members(list) | Control::PartnerReject(list) => {
                for e in list {
                    self.learn(e, now);
                }
            }
            _ => {}
        }
    }

    fn learn(&mut self, e: &MemberEntry, now: Instant) {
        if self.own.contains(&e.id) || e.addr.port() == 0 {
            return;
        }
        if let Some(k) = self.entries.iter().position(|(id, _, _)| *id == e.id) {
            self.entries[k] = (e.id, e.addr, now);
            return;
        }
        if self.entries.len() == WARM_VIEW {
            // Full: the stalest record goes.
            if let Some(k) = (0..self.entries.len()).min_by_key(|&k| self.entries[k].2) {
                self.entries.swap_remove(k);
            }
        }
        self.entries.push((e.id, e.addr, now));
    }

    /// Forgets a member that did not answer.
    pub fn forget_addr(&mut self, addr: PeerAddr) {
        self.entries.retain(|(_, a, _)| *a != addr);
    }

    /// Members heard of within [`WARM_FRESH`], freshest first, at most `n`.
    pub fn fresh(&self, now: Instant, n: usize) -> Vec<PeerAddr> {
        let mut live: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, _, at)| now.saturating_duration_since(*at) <= WARM_FRESH)
            .collect();
        live.sort_by_key(|(_, _, at)| std::cmp::Reverse(*at));
        live.into_iter().take(n).map(|(_, a, _)| *a).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Asks the member at `addr` for its sample of `channel`'s members, once. The member's own
/// record (from its hello) comes first: it answered, so it is alive.
pub async fn probe(
    addr: SocketAddr,
    channel: ChannelId,
    me: PeerId,
) -> std::io::Result<Vec<MemberEntry>> {
    use std::io::{Error, ErrorKind};
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut out = Vec::new();
    let hello = Hello {
        magic: MAGIC,
        version: VERSION,
        channel,
        peer_id: me,
        // Not accepting partners: nobody should dial a standby channel.
        listen_port: 0,
        role: Role::Peer,
        upload_kbps: 0,
    };
    for c in [Control::Hello(hello), Control::MembersRequest] {
        encode(&Message::Ctl(c), &mut out).map_err(|_| bad("encode"))?;
    }
    s.write_all(&out).await?;
    let mut members = Vec::new();
    for _ in 0..PROBE_MAX_FRAMES {
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        s.read_exact(&mut prefix).await?;
        let len = frame_len(prefix, PROBE_MAX_FRAME).map_err(|_| bad("frame too long"))?;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        match decode_body(&body).map_err(|_| bad("undecodable frame"))? {
            Message::Ctl(Control::Hello(h)) => {
                if h.channel != channel || h.magic != MAGIC {
                    return Err(bad("another channel"));
                }
                if h.listen_port != 0 {
                    members.push(MemberEntry {
                        id: h.peer_id,
                        addr: to_peer_addr(SocketAddr::new(addr.ip(), h.listen_port)),
                        seq: 0,
                        num_partners: 0,
                        max_partners: 0,
                        ttl_s: 60,
                        reach: crate::proto::Reach::Unknown,
                        v6: None,
                    });
                }
            }
            Message::Ctl(Control::Members(list)) => {
                members.extend(list);
                out.clear();
                let bye = Message::Ctl(Control::Bye(ByeReason::Done));
                if encode(&bye, &mut out).is_ok() {
                    let _ = s.write_all(&out).await;
                }
                return Ok(members);
            }
            Message::Ctl(Control::Bye(_)) => return Err(bad("refused")),
            _ => {}
        }
    }
    Err(bad("no members answer"))
}

/// A standby channel's upkeep: probes a member every [`PROBE_EVERY`] until aborted. `me` is
/// the id its probes carry; `bootstrap` the configured addresses (`HOST:PORT`).
pub async fn keep_warm(view: SharedView, channel: ChannelId, me: PeerId, bootstrap: Vec<String>) {
    let mut round = 0usize;
    loop {
        let warm = lock(&view).fresh(Instant::now(), WARM_VIEW);
        // Warm members first (spreading the load over the swarm); a configured address when
        // the view is empty, and every fourth round so a view of stale members recovers.
        let target = if !warm.is_empty() && round % 4 != 3 {
            Some((to_socket_addr(warm[round % warm.len()]), true))
        } else {
            match bootstrap.get(round % bootstrap.len().max(1)) {
                Some(b) => match tokio::net::lookup_host(b.as_str()).await {
                    Ok(mut it) => it.next().map(|a| (a, false)),
                    Err(e) => {
                        log::debug!("standby {b}: {e}");
                        None
                    }
                },
                None => None,
            }
        };
        let mut answered = false;
        if let Some((addr, from_view)) = target {
            match tokio::time::timeout(PROBE_TIMEOUT, probe(addr, channel, me)).await {
                Ok(Ok(list)) => {
                    lock(&view).observe(&Control::Members(list), Instant::now());
                    answered = true;
                }
                res => {
                    log::debug!("standby probe {addr}: {res:?}");
                    if from_view {
                        lock(&view).forget_addr(to_peer_addr(addr));
                    }
                }
            }
        }
        round = round.wrapping_add(1);
        tokio::time::sleep(if answered { PROBE_EVERY } else { PROBE_RETRY }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, port: u16) -> MemberEntry {
        MemberEntry {
            id: PeerId(id),
            addr: PeerAddr::V4([10, 0, 0, 1], port),
            seq: 0,
            num_partners: 0,
            max_partners: 8,
            ttl_s: 60,
            reach: crate::proto::Reach::Unknown,
            v6: None,
        }
    }

    #[test]
    fn keeps_the_freshest_bounded_and_skips_our_own() {
        let t0 = Instant::now();
        let mut v = WarmView::default();
        v.add_own(PeerId(7));
        let list: Vec<_> = (0..40).map(|i| entry(i, 1000 + i as u16)).collect();
        v.observe(&Control::Members(list[..20].to_vec()), t0);
        v.observe(
            &Control::Redirect {
                deputy: Some(entry(100, 5000)),
                members: list[20..].to_vec(),
            },
            t0 + Duration::from_secs(10),
        );
        assert_eq!(v.len(), WARM_VIEW);
        let fresh = v.fresh(t0 + Duration::from_secs(11), WARM_DIALS);
        assert_eq!(fresh.len(), WARM_DIALS);
        assert!(fresh.iter().all(|a| a.port() >= 1020));
        assert!(!v.entries.iter().any(|(id, _, _)| *id == PeerId(7)));
        // Too old: nothing offered.
        assert!(v
            .fresh(t0 + WARM_FRESH + Duration::from_secs(11), 4)
            .is_empty());
        // Other messages carry no members.
        v.observe(&Control::Join, t0);
        assert_eq!(v.len(), WARM_VIEW);
    }
}
