//! A segment body that fills as its pieces are checked: what a relay forwards while the
//! segment still arrives (cut-through).
//!
//! The link that receives the segment appends each piece once it has checked it against the
//! manifest ([`GrowingBody::push_piece`]); uploads of it wait for the next piece
//! ([`GrowingBody::wait_beyond`], a plain `std` future: no runtime, no clock) and copy it out.
//! If the segment will not complete (its link failed, a piece was bad, its sender aborted
//! it), the body is aborted ([`GrowingBody::abort`]) and every upload waiting on it ends with
//! an abort record. Only checked bytes ever enter it, so nothing unchecked is forwarded.
//!
//! Its bytes are bounded by the manifest's length, checked against `MAX_SEGMENT_BYTES`
//! before the body is made, and allocated as pieces come. While the segment arrives they are
//! the copy the node reserved in its store's budget for a segment in progress. Once the
//! segment is whole here (on this link or another), the body is handed the whole segment
//! the store keeps ([`GrowingBody::complete_with`]): it frees its own bytes, and the uploads
//! still under way copy their pieces from the store's copy, so no second copy outlives the
//! reservation. A body that is whole cannot be aborted: a failure of the link it came on
//! after the segment came whole from another no longer ends its uploads.

use super::manifest::{piece_count, piece_range};
use super::wire::SegmentBody;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::sync::{Arc, Mutex};

/// How far a growing body has come.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fill {
    /// This many pieces are in, checked (all of them: the body is whole).
    Pieces(u32),
    /// It will not complete: uploads of it end with an abort.
    Aborted,
}

#[derive(Default)]
struct State {
    data: Vec<u8>,
    /// The whole segment, once it is in: pieces are copied from it and `data` is freed.
    whole: Option<Arc<SegmentBody>>,
    pieces: u32,
    aborted: bool,
    wakers: Vec<Waker>,
}

/// A segment's media as its checked pieces arrive.
pub struct GrowingBody {
    len: u32,
    pieces: u32,
    state: Mutex<State>,
}

impl fmt::Debug for GrowingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GrowingBody({:?} of {} pieces)",
            self.fill(),
            self.pieces
        )
    }
}

impl GrowingBody {
    /// An empty body for `len` media bytes (a checked manifest's length).
    pub fn new(len: u32) -> Self {
        GrowingBody {
            len,
            pieces: piece_count(len) as u32,
            state: Mutex::new(State::default()),
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn piece_count(&self) -> u32 {
        self.pieces
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as before it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fill(&self) -> Fill {
        let s = self.lock();
        if s.aborted {
            Fill::Aborted
        } else {
            Fill::Pieces(s.pieces)
        }
    }

    /// Appends the next piece, already checked against the manifest. A piece of the wrong
    /// length or past the last one, or one after an abort, is not taken (false).
    pub fn push_piece(&self, bytes: &[u8]) -> bool {
        let mut s = self.lock();
        let r = piece_range(self.len, s.pieces as usize);
        if s.aborted || s.pieces >= self.pieces || bytes.len() != r.len() {
            return false;
        }
        if s.data.capacity() == 0 {
            s.data.reserve_exact(self.len as usize);
        }
        s.data.extend_from_slice(bytes);
        s.pieces += 1;
        for w in s.wakers.drain(..) {
            w.wake();
        }
        true
    }

    /// It will not complete. Idempotent; a whole body stays whole.
    pub fn abort(&self) {
        let mut s = self.lock();
        if s.pieces >= self.pieces && self.pieces > 0 {
            return;
        }
        s.aborted = true;
        for w in s.wakers.drain(..) {
            w.wake();
        }
    }

    /// The segment is whole here: `whole` is the copy the store keeps, its media checked
    /// against a manifest with the same piece hashes as this body's (the caller compares
    /// them). Every piece is in from now on, read from `whole`; the body's own bytes are
    /// freed. Not taken (false) if the body was aborted already or `whole` is not a whole
    /// body of this length; taking it again is harmless.
    pub fn complete_with(&self, whole: &Arc<SegmentBody>) -> bool {
        if whole.growing.is_some() || whole.data.len() != self.len as usize {
            return false;
        }
        let mut s = self.lock();
        if s.aborted {
            return false;
        }
        s.whole = Some(whole.clone());
        s.data = Vec::new();
        s.pieces = self.pieces;
        for w in s.wakers.drain(..) {
            w.wake();
        }
        true
    }

    /// Bytes the body holds of its own (none once it is handed the whole segment).
    pub fn own_bytes(&self) -> usize {
        self.lock().data.capacity()
    }

    /// Piece `k` into `out` (replacing what it held), if it is in.
    pub fn copy_piece(&self, k: u32, out: &mut Vec<u8>) -> bool {
        let s = self.lock();
        if k >= s.pieces {
            return false;
        }
        let r = piece_range(self.len, k as usize);
        out.clear();
        match &s.whole {
            Some(w) => out.extend_from_slice(&w.data[r]),
            None => out.extend_from_slice(&s.data[r]),
        }
        true
    }

    /// Resolves once more than `n` pieces are in, or the body is aborted.
    pub fn wait_beyond(&self, n: u32) -> WaitBeyond<'_> {
        WaitBeyond { body: self, n }
    }
}

/// See [`GrowingBody::wait_beyond`].
pub struct WaitBeyond<'a> {
    body: &'a GrowingBody,
    n: u32,
}

impl Future for WaitBeyond<'_> {
    type Output = Fill;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fill> {
        let mut s = self.body.lock();
        if s.aborted {
            return Poll::Ready(Fill::Aborted);
        }
        if s.pieces > self.n {
            return Poll::Ready(Fill::Pieces(s.pieces));
        }
        // One waker per waiting upload: replace ours if it is there already.
        if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            s.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::PIECE_SIZE;

    #[test]
    fn pieces_go_in_in_order_at_their_length_and_an_abort_ends_it() {
        let len = 2 * PIECE_SIZE as u32 + 10;
        let b = GrowingBody::new(len);
        assert_eq!(b.piece_count(), 3);
        assert!(!b.push_piece(&[1; 10]), "the first piece is a whole one");
        assert!(b.push_piece(&vec![1; PIECE_SIZE]));
        assert_eq!(b.fill(), Fill::Pieces(1));
        let mut out = Vec::new();
        assert!(b.copy_piece(0, &mut out) && out.len() == PIECE_SIZE);
        assert!(!b.copy_piece(1, &mut out), "not in yet");
        b.abort();
        assert_eq!(b.fill(), Fill::Aborted);
        assert!(
            !b.push_piece(&vec![1; PIECE_SIZE]),
            "nothing after an abort"
        );
        // A whole body stays whole.
        let w = GrowingBody::new(10);
        assert!(w.push_piece(&[2; 10]));
        assert!(!w.push_piece(&[2; 10]), "past the last piece");
        w.abort();
        assert_eq!(w.fill(), Fill::Pieces(1));
    }

    #[test]
    fn handed_the_whole_segment_it_frees_its_copy_serves_every_piece_and_cannot_abort() {
        let len = 3 * PIECE_SIZE as u32 + 5;
        let media: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let whole = Arc::new(SegmentBody {
            hashes: Vec::new(),
            signature: [[0; 32]; 2],
            data: media.clone(),
            growing: None,
        });
        let b = GrowingBody::new(len);
        assert!(b.push_piece(&media[..PIECE_SIZE]));
        assert!(b.own_bytes() >= len as usize);
        let short = Arc::new(SegmentBody {
            data: media[..PIECE_SIZE].to_vec(),
            ..(*whole).clone()
        });
        assert!(!b.complete_with(&short), "not a whole body of this length");
        assert!(b.complete_with(&whole));
        assert_eq!(b.own_bytes(), 0, "its own copy is freed");
        assert_eq!(b.fill(), Fill::Pieces(4));
        let mut out = Vec::new();
        assert!(b.copy_piece(3, &mut out));
        assert_eq!(out, media[3 * PIECE_SIZE..]);
        b.abort();
        assert_eq!(
            b.fill(),
            Fill::Pieces(4),
            "whole: its upstream failing changes nothing"
        );
        assert!(!b.push_piece(&media[PIECE_SIZE..2 * PIECE_SIZE]));
        // An aborted body stays aborted: its uploads have ended already.
        let a = GrowingBody::new(len);
        a.abort();
        assert!(!a.complete_with(&whole));
        assert_eq!(a.fill(), Fill::Aborted);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_upload_wakes_at_the_next_piece_or_the_abort() {
        let b = std::sync::Arc::new(GrowingBody::new(3 * PIECE_SIZE as u32));
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.wait_beyond(0).await });
        tokio::task::yield_now().await;
        assert!(b.push_piece(&vec![0; PIECE_SIZE]));
        assert_eq!(waiter.await.unwrap(), Fill::Pieces(1));
        let b3 = b.clone();
        let waiter = tokio::spawn(async move { b3.wait_beyond(1).await });
        tokio::task::yield_now().await;
        b.abort();
        assert_eq!(waiter.await.unwrap(), Fill::Aborted);
    }
}
