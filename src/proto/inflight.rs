//! Segments in progress: the ones whose manifest the driver has checked and whose pieces are
//! still arriving, so that a node can serve a piece the moment it has been checked
//! (cut-through) instead of waiting for the whole segment.
//!
//! Each entry holds the segment's head and the driver's payload handle (on the box a body
//! that grows as pieces are checked; in the simulator a bare length), the link it comes from
//! (its upstream), how many pieces of it have been checked, and whether partners have been
//! told of it. The table is bounded ([`MAX_IN_PROGRESS`]); a segment that finds it full still
//! arrives whole, it is only not forwarded before then. Its bytes come out of the store's
//! byte budget while it is in progress ([`super::store::Store::reserve`]), so the ring and the
//! segments in progress together never exceed one budget.
//!
//! An entry ends in one of three ways: the segment arrives whole (it moves to the store), its
//! upstream aborts it or the link fails (the partial copy is dropped and every upload of it
//! from here is aborted: the node does that with what [`InFlight::drop_link`] and
//! [`InFlight::drop_seq`] return), or it outlives [`MAX_IN_PROGRESS_AGE`] (a driver bounds a
//! transfer's time; this bounds the table whatever a driver does).

use super::manifest::piece_count;
use super::node::LinkId;
use super::seq::Seq;
use super::time::{Duration, Instant};
use super::wire::{Payload, Segment};

/// Segments in progress at once. Four: a peer receives its next one or two segments from
/// its suppliers at a time (`max_requests_per_partner`), a substream parent pushes one
/// more, and at the live edge one segment is ingested per segment duration; a fifth would
/// be a segment behind those, which is served whole soon enough.
pub const MAX_IN_PROGRESS: usize = 4;
/// An entry older than this is dropped (and its uploads aborted): the daemon's reader gives
/// a segment frame at most this long (`MAX_BODY_TIME`), and a segment is worth nothing once
/// playback is past it (`max_lag`).
pub const MAX_IN_PROGRESS_AGE: Duration = Duration::from_secs(20);

/// One segment in progress.
#[derive(Debug, Clone)]
pub struct InProgress<P> {
    /// The head (from its checked manifest) and the driver's payload handle.
    pub seg: Segment<P>,
    /// The link it is arriving on.
    pub link: LinkId,
    /// Pieces checked so far, and in all.
    pub done: u32,
    pub pieces: u32,
    pub since: Instant,
    /// Partners have been told we hold it (a have at its first piece), and its substream's
    /// children have been queued a push: neither is done again when it is whole.
    pub announced: bool,
}

/// What [`InFlight::begin`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Begun {
    New,
    /// Already in progress (from another link): this copy is not tracked.
    Already,
    /// The table is full: this one arrives whole before anything is forwarded.
    Full,
}

/// The table of segments in progress.
#[derive(Debug)]
pub struct InFlight<P> {
    entries: Vec<InProgress<P>>,
}

impl<P> Default for InFlight<P> {
    fn default() -> Self {
        InFlight {
            entries: Vec::with_capacity(MAX_IN_PROGRESS),
        }
    }
}

impl<P: Payload> InFlight<P> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= MAX_IN_PROGRESS
    }

    pub fn get(&self, seq: Seq) -> Option<&InProgress<P>> {
        self.entries.iter().find(|e| e.seg.seq == seq)
    }

    /// Whether `seq` is in progress with at least one piece checked (something to serve).
    pub fn serves(&self, seq: Seq) -> bool {
        self.get(seq).is_some_and(|e| e.done > 0)
    }

    pub fn has(&self, seq: Seq) -> bool {
        self.get(seq).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = &InProgress<P>> {
        self.entries.iter()
    }

    /// Media bytes of the segments in progress (reserved in the store's budget).
    pub fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.seg.payload.len() as u64)
            .sum()
    }

    /// The manifest of `seg` was checked on `link`; its pieces follow.
    pub fn begin(&mut self, now: Instant, link: LinkId, seg: Segment<P>) -> Begun {
        if self.has(seg.seq) {
            return Begun::Already;
        }
        if self.is_full() {
            return Begun::Full;
        }
        let pieces = piece_count(seg.payload.len()) as u32;
        self.entries.push(InProgress {
            seg,
            link,
            done: 0,
            pieces,
            since: now,
            announced: false,
        });
        Begun::New
    }

    /// `done` pieces of `seq` from `link` are checked. Returns the entry when this is news (the
    /// count moved on); a count from another link than the tracked one, a count going back,
    /// or one past the segment's pieces is ignored.
    pub fn piece(&mut self, link: LinkId, seq: Seq, done: u32) -> Option<&mut InProgress<P>> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.seg.seq == seq && e.link == link)?;
        if done <= e.done || done > e.pieces {
            return None;
        }
        e.done = done;
        Some(e)
    }

    /// `seq` arrived whole (from any link): its entry ends.
    pub fn complete(&mut self, seq: Seq) -> Option<InProgress<P>> {
        let k = self.entries.iter().position(|e| e.seg.seq == seq)?;
        Some(self.entries.swap_remove(k))
    }

    /// The upstream of `seq` on `link` aborted it: its entry, if it was tracked from there.
    pub fn drop_seq(&mut self, link: LinkId, seq: Seq) -> Option<InProgress<P>> {
        let k = self
            .entries
            .iter()
            .position(|e| e.seg.seq == seq && e.link == link)?;
        Some(self.entries.swap_remove(k))
    }

    /// `link` failed: every entry arriving on it, into `out`.
    pub fn drop_link(&mut self, link: LinkId, out: &mut Vec<InProgress<P>>) {
        let mut k = 0;
        while k < self.entries.len() {
            if self.entries[k].link == link {
                out.push(self.entries.swap_remove(k));
            } else {
                k += 1;
            }
        }
    }

    /// Entries older than [`MAX_IN_PROGRESS_AGE`], into `out`.
    pub fn drop_stale(&mut self, now: Instant, out: &mut Vec<InProgress<P>>) {
        let mut k = 0;
        while k < self.entries.len() {
            if now.saturating_since(self.entries[k].since) > MAX_IN_PROGRESS_AGE {
                out.push(self.entries.swap_remove(k));
            } else {
                k += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::PIECE_SIZE;
    use crate::proto::wire::SimPayload;

    fn seg(seq: u32, len: u32) -> Segment<SimPayload> {
        Segment {
            seq: Seq(seq),
            origin_us: 0,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload { len, hops: 0 },
        }
    }

    #[test]
    fn pieces_move_on_only_from_the_tracked_link_and_within_the_segment() {
        let mut t = InFlight::default();
        let now = Instant::ZERO;
        let len = 6 * PIECE_SIZE as u32 - 100;
        assert_eq!(t.begin(now, LinkId(1), seg(7, len)), Begun::New);
        assert_eq!(t.begin(now, LinkId(2), seg(7, len)), Begun::Already);
        assert_eq!(t.get(Seq(7)).unwrap().pieces, 6);
        assert!(!t.serves(Seq(7)), "nothing checked yet");
        assert!(
            t.piece(LinkId(2), Seq(7), 1).is_none(),
            "another link's copy"
        );
        assert_eq!(t.piece(LinkId(1), Seq(7), 2).unwrap().done, 2);
        assert!(t.serves(Seq(7)));
        assert!(t.piece(LinkId(1), Seq(7), 2).is_none(), "no news");
        assert!(t.piece(LinkId(1), Seq(7), 1).is_none(), "going back");
        assert!(
            t.piece(LinkId(1), Seq(7), 7).is_none(),
            "past the last piece"
        );
        assert_eq!(t.bytes(), len as u64);
        assert_eq!(t.complete(Seq(7)).unwrap().done, 2);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_a_failed_link_drops_what_came_on_it() {
        let mut t = InFlight::default();
        let now = Instant::ZERO;
        for s in 0..MAX_IN_PROGRESS as u32 {
            assert_eq!(t.begin(now, LinkId(s as u64 % 2), seg(s, 1000)), Begun::New);
        }
        assert_eq!(t.begin(now, LinkId(9), seg(99, 1000)), Begun::Full);
        let mut out = Vec::new();
        t.drop_link(LinkId(0), &mut out);
        assert_eq!(out.len(), MAX_IN_PROGRESS / 2);
        assert!(out.iter().all(|e| e.link == LinkId(0)));
        assert_eq!(t.len(), MAX_IN_PROGRESS - out.len());
        assert!(
            t.drop_seq(LinkId(0), Seq(1)).is_none(),
            "seq 1 came on link 1"
        );
        assert!(t.drop_seq(LinkId(1), Seq(1)).is_some());
    }

    #[test]
    fn stale_entries_are_dropped() {
        let mut t = InFlight::default();
        t.begin(Instant::ZERO, LinkId(1), seg(1, 1000));
        let later = Instant::ZERO + Duration::from_secs(5);
        t.begin(later, LinkId(1), seg(2, 1000));
        let mut out = Vec::new();
        t.drop_stale(later + MAX_IN_PROGRESS_AGE, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seg.seq, Seq(1));
        assert!(t.has(Seq(2)));
    }
}
