//! Players' side of a node: the feed of played segments, the set of channels a process
//! serves, and the outputs that serve them (an HTTP server on localhost, a UDP/RTP sender).
//!
//! The actor publishes every segment the core hands to the player (and every gap) to its
//! channel's [`Feed`], with the segment's playout deadline. Outputs subscribe; the feed never
//! waits for them: each subscriber has a bounded queue ([`FEED_QUEUE`] segments), and one that
//! falls behind is told how much it lost and skips ahead to the next entry point (or is closed
//! by its output). What each player finally receives is assembled by a
//! [`Splicer`](crate::media::splice::Splicer): entry-point start, whole PES across gaps,
//! discontinuities signalled.
//!
//! **Where a new player starts** ([`Feed::subscribe`]): at the newest entry point whose
//! playout deadline has come, so everything after it is already in hand or due no earlier
//! than the node itself needs it: the player never waits where the node would not. On HTTP,
//! everything from there to the newest played segment goes out at once (which fills a
//! player's probe buffer), then the stream is paced by its own clock ([`pace`]); on UDP it is
//! paced from the start point on.
//!
//! A process may serve several channels ([`Channels`]): HTTP finds a channel by name, and a
//! UDP output can be pointed at another channel's feed ([`udp::Retarget`]).

pub mod http;
pub mod metrics;
pub mod pace;
pub mod udp;

use crate::media::psi;
use crate::media::ts::{self, PACKET};
use crate::proto::wire::{flags, SharedBody};
use crate::proto::{Segment, Seq};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::broadcast;

/// Segments one subscriber may be behind before it loses some.
pub const FEED_QUEUE: usize = 16;
/// Played segments kept for new subscribers (the start point is chosen among them).
pub const FEED_RECENT: usize = 24;
/// Channels one process serves at most.
pub const MAX_CHANNELS: usize = 64;
/// Packets at a segment's head searched for the SDT that names the channel (the source's
/// segmenter writes it after the PAT and PMT copies).
const NAME_SEARCH_PACKETS: usize = crate::media::segmenter::HEAD_PACKETS;

/// One thing the player gets.
#[derive(Clone, Debug)]
pub enum FeedItem {
    /// A segment, due to be played at `due` (the node's playout deadline).
    Segment {
        seg: Segment<SharedBody>,
        due: Instant,
    },
    /// Segment `seq` was skipped (missed its deadline): the stream jumps here.
    Gap { seq: Seq },
}

impl FeedItem {
    pub fn is_entry_point(&self) -> bool {
        matches!(self, FeedItem::Segment { seg, .. } if seg.flags & flags::ENTRY_POINT != 0)
    }
}

/// The played stream of one channel, fanned out to its outputs.
pub struct Feed {
    /// The name players ask for (`/ch/NAME.ts`); learnt from the stream's SDT unless fixed.
    name: RwLock<String>,
    name_fixed: bool,
    /// Other names this channel answers to (its id in hex).
    aliases: Vec<String>,
    recent: Mutex<VecDeque<FeedItem>>,
    tx: broadcast::Sender<FeedItem>,
    /// Fault injection (tests): every Nth segment published becomes a gap (0: off).
    drop_every: AtomicU32,
    published: AtomicU32,
    /// Items published, for the watchdog's view of whether outputs have work to do.
    items: AtomicU64,
    /// The HTTP output's address, once it listens.
    http: Mutex<Option<std::net::SocketAddr>>,
}

impl Feed {
    /// A feed named `name` for good.
    pub fn new(name: &str) -> Arc<Feed> {
        Self::build(name, true, Vec::new())
    }

    /// A feed called `provisional` until the stream's SDT names it; `aliases` always match.
    pub fn learning(provisional: &str, aliases: Vec<String>) -> Arc<Feed> {
        Self::build(provisional, false, aliases)
    }

    /// A feed with a fixed name and aliases.
    pub fn with_aliases(name: &str, aliases: Vec<String>) -> Arc<Feed> {
        Self::build(name, true, aliases)
    }

    fn build(name: &str, fixed: bool, aliases: Vec<String>) -> Arc<Feed> {
        let (tx, _) = broadcast::channel(FEED_QUEUE);
        Arc::new(Feed {
            name: RwLock::new(name.to_string()),
            name_fixed: fixed,
            aliases,
            recent: Mutex::new(VecDeque::with_capacity(FEED_RECENT)),
            tx,
            drop_every: AtomicU32::new(0),
            published: AtomicU32::new(0),
            items: AtomicU64::new(0),
            http: Mutex::new(None),
        })
    }

    /// The channel's name as players ask for it (`/ch/NAME.ts`).
    pub fn name(&self) -> String {
        self.name.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether players may ask for this channel as `name`.
    pub fn answers_to(&self, name: &str) -> bool {
        *self.name.read().unwrap_or_else(|e| e.into_inner()) == name
            || self.aliases.iter().any(|a| a == name)
    }

    /// Fault injection for tests: withhold every `n`th segment from the players, as if it had
    /// missed its deadline (0: off).
    pub fn drop_every(&self, n: u32) {
        self.drop_every.store(n, Ordering::Relaxed);
    }

    /// How many items (segments and gaps) have been published so far.
    pub fn items_published(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    pub fn publish(&self, mut item: FeedItem) {
        self.items.fetch_add(1, Ordering::Relaxed);
        let every = self.drop_every.load(Ordering::Relaxed);
        if let (FeedItem::Segment { seg, .. }, true) = (&item, every > 0) {
            let k = self.published.fetch_add(1, Ordering::Relaxed) + 1;
            if k % every == 0 {
                log::info!(
                    "dropping segment {:?} on purpose (fault injection)",
                    seg.seq
                );
                item = FeedItem::Gap { seq: seg.seq };
            }
        }
        if !self.name_fixed {
            if let FeedItem::Segment { seg, .. } = &item {
                self.learn_name(&seg.payload.data);
            }
        }
        // A poisoned lock means a subscriber panicked while copying; the data is still whole.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == FEED_RECENT {
            recent.pop_front();
        }
        recent.push_back(item.clone());
        // No subscribers is fine; a full subscriber loses its oldest (it is told so).
        let _ = self.tx.send(item);
    }

    /// Takes the service name from an SDT at the segment's head (the source writes one).
    fn learn_name(&self, data: &[u8]) {
        let Some(n) = stream_name(data) else {
            return;
        };
        let mut name = self.name.write().unwrap_or_else(|e| e.into_inner());
        if *name != n {
            // The players' line again, with the name they now ask for.
            match *self.http.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(a) => {
                    log::info!("channel name from the stream: {n}; players: http://{a}/ch/{n}.ts")
                }
                None => log::info!("channel name from the stream: {n}"),
            }
            *name = n;
        }
    }

    /// Where this feed's HTTP output listens, for the log line that names the players' URL.
    pub fn served_at(&self, addr: std::net::SocketAddr) {
        *self.http.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    /// A new subscriber: the played segments from its start point on (to send at once), and
    /// the live queue from right after them. The start point is the newest entry point due by
    /// `now` with no gap after it; failing that, the oldest entry point after the last gap;
    /// failing that, nothing (the output waits for the next entry point).
    pub fn subscribe(&self, now: Instant) -> (Vec<FeedItem>, broadcast::Receiver<FeedItem>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let after_gap = recent
            .iter()
            .rposition(|i| matches!(i, FeedItem::Gap { .. }))
            .map_or(0, |k| k + 1);
        let entries = || {
            recent
                .iter()
                .enumerate()
                .skip(after_gap)
                .filter(|(_, i)| i.is_entry_point())
        };
        let due = entries()
            .filter(|(_, i)| matches!(i, FeedItem::Segment { due, .. } if *due <= now))
            .map(|(k, _)| k)
            .next_back();
        let start = due
            .or_else(|| entries().map(|(k, _)| k).next())
            .unwrap_or(recent.len());
        (recent.iter().skip(start).cloned().collect(), rx)
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// A channel name as players may type it: letters, digits, '-', '_' and '.'.
/// The channel's service name, from an SDT among the first packets of a segment (the source's
/// segmenter writes one after the PAT and PMT copies), if it is a valid channel name.
pub fn stream_name(data: &[u8]) -> Option<String> {
    for p in data.chunks_exact(PACKET).take(NAME_SEARCH_PACKETS) {
        if ts::pid(p) != psi::SDT_PID {
            continue;
        }
        let p = <&[u8; PACKET]>::try_from(p).ok()?;
        let mut found = None;
        psi::Sections::new().push(p, |sec| found = psi::parse_sdt_name(sec));
        return found.filter(|n| valid_name(n));
    }
    None
}

pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= psi::MAX_NAME
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The channels one process serves (bounded by [`MAX_CHANNELS`]).
#[derive(Default)]
pub struct Channels {
    feeds: RwLock<Vec<Arc<Feed>>>,
    /// With a single channel, serve it under any name (a peer that was not told its name).
    any_name: bool,
}

impl Channels {
    pub fn new() -> Arc<Channels> {
        Arc::new(Channels::default())
    }

    /// One channel, served under any name as well as its own.
    pub fn single(feed: Arc<Feed>, any_name: bool) -> Arc<Channels> {
        Arc::new(Channels {
            feeds: RwLock::new(vec![feed]),
            any_name,
        })
    }

    /// Adds a channel; false if the set is full or the name is taken.
    pub fn add(&self, feed: Arc<Feed>) -> bool {
        let mut f = self.feeds.write().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_CHANNELS || f.iter().any(|x| x.answers_to(&feed.name())) {
            return false;
        }
        f.push(feed);
        true
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Feed>> {
        let mut f = self.feeds.write().unwrap_or_else(|e| e.into_inner());
        let k = f.iter().position(|x| x.answers_to(name))?;
        Some(f.remove(k))
    }

    pub fn find(&self, name: &str) -> Option<Arc<Feed>> {
        let f = self.feeds.read().unwrap_or_else(|e| e.into_inner());
        f.iter()
            .find(|x| x.answers_to(name))
            .or_else(|| f.first().filter(|_| self.any_name && f.len() == 1))
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Feed>> {
        self.feeds.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The outputs of a node as its stats and `ctl status` list them: `{kind, target, state,
/// since_s, error, players}`, `state` `sending` or `failing`. `http` is the listening address;
/// `players` counts the feed's subscribers, the datagram output's own subscription among them
/// (it does not know who listens).
pub fn describe(
    http: Option<std::net::SocketAddr>,
    udp: Option<(&udp::UdpOut, &udp::Health)>,
    players: usize,
) -> serde_json::Value {
    let mut list = Vec::new();
    if let Some(a) = http {
        list.push(serde_json::json!({
            "kind": "http",
            "target": format!("http://{a}/"),
            "state": "sending",
            "since_s": null,
            "error": null,
            "players": players.saturating_sub(usize::from(udp.is_some())),
        }));
    }
    if let Some((o, h)) = udp {
        let scheme = if o.rtp { "rtp" } else { "udp" };
        let mut v = h.to_json(Instant::now());
        v["kind"] = scheme.into();
        v["target"] = format!("{scheme}://{}", o.dest).into();
        v["players"] = serde_json::Value::Null;
        list.push(v);
    }
    serde_json::Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::SegmentBody;
    use std::time::Duration;

    fn seg(seq: u32, entry: bool, due: Instant) -> FeedItem {
        FeedItem::Segment {
            seg: Segment {
                seq: Seq(seq),
                origin_us: 0,
                duration_us: 1,
                flags: if entry { flags::ENTRY_POINT } else { 0 },
                payload: Arc::new(SegmentBody {
                    hashes: Vec::new(),
                    signature: [[0; 32]; 2],
                    data: vec![seq as u8],
                    growing: None,
                }),
            },
            due,
        }
    }

    fn seqs(items: &[FeedItem]) -> Vec<u32> {
        items
            .iter()
            .map(|i| match i {
                FeedItem::Segment { seg, .. } => seg.seq.0,
                FeedItem::Gap { seq } => seq.0,
            })
            .collect()
    }

    #[test]
    fn subscribers_start_at_the_newest_entry_point_already_due() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let f = Feed::new("t");
        f.publish(seg(1, true, now - 3 * s));
        f.publish(seg(2, false, now - 2 * s));
        f.publish(seg(3, true, now - s));
        f.publish(seg(4, false, now));
        // In hand but not due yet: starting there could stall where the node would not.
        f.publish(seg(5, true, now + s));
        f.publish(seg(6, false, now + 2 * s));
        let (start, mut rx) = f.subscribe(now);
        assert_eq!(seqs(&start), vec![3, 4, 5, 6]);
        // Nothing due yet (a node that just started): the oldest entry point.
        let (start, _) = f.subscribe(now - 10 * s);
        assert_eq!(seqs(&start), vec![1, 2, 3, 4, 5, 6]);
        // After a gap, only entry points past it.
        f.publish(FeedItem::Gap { seq: Seq(7) });
        f.publish(seg(8, false, now + 4 * s));
        let (start, _) = f.subscribe(now + 10 * s);
        assert!(start.is_empty());
        f.publish(seg(9, true, now + 5 * s));
        let (start, _) = f.subscribe(now);
        assert_eq!(seqs(&start), vec![9]);
        // The live queue is bounded: a slow subscriber is told what it lost.
        for k in 0..(FEED_QUEUE as u32 + 5) {
            f.publish(seg(10 + k, false, now));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        assert_eq!(f.recent.lock().unwrap().len(), FEED_RECENT);
    }

    #[test]
    fn the_name_comes_from_the_stream_and_channels_are_found_by_it() {
        let f = Feed::learning("abc123", vec!["ffff".into()]);
        let mut data = psi::sdt_packet(1, 1, "news", 0).to_vec();
        data.extend_from_slice(&[0x47; PACKET]);
        let mut item = seg(1, true, Instant::now());
        if let FeedItem::Segment { seg, .. } = &mut item {
            seg.payload = Arc::new(SegmentBody {
                hashes: Vec::new(),
                signature: [[0; 32]; 2],
                data,
                growing: None,
            });
        }
        f.publish(item);
        assert_eq!(f.name(), "news");
        let chans = Channels::new();
        assert!(chans.add(f.clone()));
        assert!(chans.add(Feed::new("sport")));
        assert!(!chans.add(Feed::new("sport")), "names are unique");
        assert_eq!(chans.find("news").map(|f| f.name()), Some("news".into()));
        assert!(chans.find("ffff").is_some());
        assert!(chans.find("other").is_none());
        assert_eq!(chans.list().len(), 2);
        assert!(chans.remove("sport").is_some());
        // One channel served under any name (a peer not told its name).
        let one = Channels::single(Feed::new("x"), true);
        assert!(one.find("whatever").is_some());
        assert!(!valid_name("a b") && valid_name("news-1.hd"));
    }
}
