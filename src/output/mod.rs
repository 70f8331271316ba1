//! Players' side of a node: the feed of played segments, and the outputs that serve it
//! (an HTTP server on localhost, a UDP sender).
//!
//! The actor publishes every segment the core hands to the player (and every gap) to a
//! [`Feed`]. Outputs subscribe; the feed never waits for them: each subscriber has a bounded
//! queue ([`FEED_QUEUE`] segments), and one that falls behind is told how much it lost and
//! skips ahead to the next entry point (or is closed by its output).

pub mod http;
pub mod udp;

use crate::proto::wire::{flags, SharedBody};
use crate::proto::Segment;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Segments one subscriber may be behind before it loses some.
pub const FEED_QUEUE: usize = 16;
/// Played segments kept for new subscribers (from the newest entry point on).
pub const FEED_RECENT: usize = 8;

/// One thing the player gets.
#[derive(Clone, Debug)]
pub enum FeedItem {
    Segment(Segment<SharedBody>),
    /// A segment was skipped (missed its deadline): the stream jumps here.
    Gap,
}

impl FeedItem {
    pub fn is_entry_point(&self) -> bool {
        matches!(self, FeedItem::Segment(s) if s.flags & flags::ENTRY_POINT != 0)
    }
}

/// The played stream of one channel, fanned out to its outputs.
pub struct Feed {
    name: String,
    recent: Mutex<VecDeque<FeedItem>>,
    tx: broadcast::Sender<FeedItem>,
}

impl Feed {
    pub fn new(name: &str) -> Arc<Feed> {
        let (tx, _) = broadcast::channel(FEED_QUEUE);
        Arc::new(Feed {
            name: name.to_string(),
            recent: Mutex::new(VecDeque::with_capacity(FEED_RECENT)),
            tx,
        })
    }

    /// The channel's name as players ask for it (`/ch/NAME.ts`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn publish(&self, item: FeedItem) {
        // A poisoned lock means a subscriber panicked while copying; the data is still whole.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == FEED_RECENT {
            recent.pop_front();
        }
        recent.push_back(item.clone());
        // No subscribers is fine; a full subscriber loses its oldest (it is told so).
        let _ = self.tx.send(item);
    }

    /// A new subscriber: the played segments from the newest entry point on (to send at once),
    /// and the live queue from right after them.
    pub fn subscribe(&self) -> (Vec<FeedItem>, broadcast::Receiver<FeedItem>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let start = recent
            .iter()
            .rposition(|i| i.is_entry_point())
            .unwrap_or(recent.len());
        (recent.iter().skip(start).cloned().collect(), rx)
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::SegmentBody;
    use crate::proto::Seq;

    fn seg(seq: u32, entry: bool) -> FeedItem {
        FeedItem::Segment(Segment {
            seq: Seq(seq),
            origin_us: 0,
            duration_us: 1,
            flags: if entry { flags::ENTRY_POINT } else { 0 },
            payload: Arc::new(SegmentBody {
                signature: [[0; 32]; 2],
                data: vec![seq as u8],
            }),
        })
    }

    #[test]
    fn subscribers_start_at_the_newest_entry_point_and_lag_is_bounded() {
        let f = Feed::new("t");
        f.publish(seg(1, true));
        f.publish(seg(2, false));
        f.publish(seg(3, true));
        f.publish(seg(4, false));
        let (start, mut rx) = f.subscribe();
        let seqs: Vec<u32> = start
            .iter()
            .map(|i| match i {
                FeedItem::Segment(s) => s.seq.0,
                FeedItem::Gap => 0,
            })
            .collect();
        assert_eq!(seqs, vec![3, 4]);
        for k in 0..(FEED_QUEUE as u32 + 5) {
            f.publish(seg(10 + k, false));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(5))
        ));
        assert_eq!(f.recent.lock().unwrap().len(), FEED_RECENT);
    }
}
