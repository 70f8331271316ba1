//! One TCP connection to another node: a reader task and a writer task.
//!
//! The reader reads the 4-byte length prefix, checks it against the link's cap (its
//! [`FrameGate`]: [`MAX_CONTROL_LEN`] until we have asked the other side for segments, by a
//! request or a subscription, and [`MAX_FRAME_LEN`] from then on: a stranger, even one that
//! said hello, cannot make us reserve room for a segment) and reserves the body's bytes from
//! the node's body budget (sized by the memory plan, [`super::memory::MemoryPlan::frames`])
//! *before* allocating. An accepted connection's first frame must be a hello, within
//! [`HELLO_DEADLINE`]; until then it holds a [`Handshake`] place at the door. The reader reads the body within a deadline that allows
//! [`MIN_FRAME_RATE`] and ends by [`MAX_BODY_TIME`] (a trickling sender cannot hold budget for
//! ever, nor past the time its segment could still be played; a body larger than
//! [`BIG_FRAME`] does not queue for the budget, so it cannot stall other links' frames behind
//! it), decodes it, verifies a
//! segment's signature, and hands the message to the actor over the shared, bounded event
//! queue. Any error ends the link (and only that link); a segment that fails verification or
//! declares a wrong length also gets its sender banned ([`LinkError::is_pollution`]).
//!
//! The writer is fed by a bounded queue ([`WRITER_QUEUE`]) that the actor fills with
//! `try_send`: a full queue closes the link, the actor never waits for a peer. It paces every
//! byte it writes with a token bucket at the node's upload cap, and tells the actor `Sent`
//! when a segment frame has been written whole.
//!
//! A segment frame goes out in pieces ([`BULK_BEGIN`], then [`BULK_PIECE`] records of at most
//! [`WRITE_CHUNK`] bytes), and control frames queued meanwhile go out between the pieces. A
//! segment paced at a slow uplink takes seconds (a 1 s segment at half the stream rate takes
//! 2 s): sent whole, it held back every request, refusal and buffer map behind it on that
//! link for as long, and the partner's scheduler worked from stale news. Control frames now
//! wait for one piece at most.
//!
//! Byte counters are shared atomics, read by the stats writer.

use super::guard::{Handshake, HELLO_DEADLINE};
use super::keys::{Verifier, VerifyError};
use super::LinkEvent;
use crate::proto::growing::{Fill, GrowingBody};
use crate::proto::manifest::{piece_range, MAX_MANIFEST_LEN};
use crate::proto::wire::{
    decode_body, encode, frame_kind, frame_len, segment_head, Control, FrameKind, Manifest,
    SegmentBody, SharedBody, WireError, FRAME_PREFIX_LEN, MAX_CONTROL_LEN, MAX_FRAME_LEN,
};
use crate::proto::{LinkId, Message, PeerAddr, Segment, Seq};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Messages queued for one link's writer. A few segments and a burst of control messages fit;
/// more means the peer (or our uplink to it) cannot keep up, and the link is closed.
pub const WRITER_QUEUE: usize = 256;
/// Frame bodies read but not yet handled by the actor, in KiB, across all links, where no
/// memory plan sizes it (the `source` and `peer` commands, the demo): one largest frame and a
/// few segments.
pub const BODY_BUDGET_KIB: usize = 8 * 1024;
/// The writer writes (and paces) in chunks of this size.
pub const WRITE_CHUNK: usize = 16 * 1024;
/// Length-prefix bits that mark a link record instead of a whole frame. `BULK_BEGIN | len`
/// announces a segment frame of `len` body bytes (checked against the cap, reserved from the
/// budget and allocated at once); `BULK_PIECE | n` is followed by its next `n` bytes
/// (1..=[`WRITE_CHUNK`]). Whole control frames may come between pieces; one bulk frame is in
/// progress at a time. Frame caps are far below 2^30, so the bits never clash with a length.
pub const BULK_BEGIN: u32 = 0x8000_0000;
pub const BULK_PIECE: u32 = 0x4000_0000;
const RECORD_KIND: u32 = BULK_BEGIN | BULK_PIECE;
/// Both bits and no length: the segment frame in progress is abandoned (its sender's own
/// upstream failed while it forwarded the segment piece by piece). The receiver drops what
/// came of it and asks elsewhere; nothing of it was unchecked, and none of it is played.
pub const BULK_ABORT: u32 = RECORD_KIND;
/// Segments the writer takes off its queue while sending a segment, to reach the control
/// frames behind them (they keep their order among themselves).
const HELD_SEGMENTS: usize = 8;
/// Token bucket depth: this much sending time at the cap may go out at once.
pub const BURST: Duration = Duration::from_millis(100);
/// A frame's body must arrive at this rate at least (plus [`FRAME_GRACE`]), or the link is
/// dropped: a partner uploading at half a 768 kbit/s stream sends 48 KB/s.
pub const MIN_FRAME_RATE: usize = 8 * 1024;
/// Time any frame body may take on top of its size at [`MIN_FRAME_RATE`].
pub const FRAME_GRACE: Duration = Duration::from_secs(5);
/// Time any frame body may take at most, whatever its size: a segment is worth something only
/// until it is played, and playback never lags the source by more than the core's `max_lag`
/// (20 s by default): a segment that takes longer is skipped anyway. Without this bound, a
/// 4 MiB segment trickled at [`MIN_FRAME_RATE`] held its budget for 517 s.
pub const MAX_BODY_TIME: Duration = Duration::from_secs(20);
/// Frame bodies larger than this (a one-second segment of a 2 Mbit/s channel, what the memory
/// plan counts per partner) do not queue for the body budget: they take it when it is free
/// and otherwise retry every [`BIG_RETRY`], within their deadline. The budget's queue is
/// first come first served, so one waiting for 4 MiB stalled every frame of every link
/// behind it, and two partners trickling huge segments stopped the others' deliveries. The
/// plan keeps one largest frame's room beside the partners' segments, so smaller frames
/// never wait for a big one, and a big one waits only for another big one.
pub const BIG_FRAME: usize = super::memory::SEGMENT_ALLOWANCE as usize;
/// How often a big frame looks for its room in the body budget.
pub const BIG_RETRY: Duration = Duration::from_millis(20);

/// Bytes moved, shared by every link task of one node and read for stats.
#[derive(Default, Debug)]
pub struct Counters {
    pub upload_bytes: AtomicU64,
    pub download_bytes: AtomicU64,
    /// Media bytes of segments sent and received (the rest is control).
    pub payload_up: AtomicU64,
    pub payload_down: AtomicU64,
    /// Segments that failed verification (each closed its link).
    pub bad_segments: AtomicU64,
    /// Frames that could not be decoded or broke a cap (each closed its link).
    pub bad_frames: AtomicU64,
    /// Links closed because their writer queue was full.
    pub queue_full: AtomicU64,
    /// Accepted connections closed for not saying hello first, or not in time.
    pub no_hello: AtomicU64,
    /// Links closed because a frame body did not arrive in time (a trickled segment).
    pub slow_frames: AtomicU64,
}

impl Counters {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
    pub fn add(v: &AtomicU64, n: u64) {
        v.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why a link ended, as its tasks saw it.
#[derive(Debug)]
pub enum LinkError {
    /// The other side closed.
    Eof,
    Io(std::io::Error),
    /// A frame broke the wire rules.
    Wire(crate::proto::wire::WireError),
    /// A segment's manifest or one of its pieces did not verify.
    Unverified(VerifyError),
    /// A frame body did not arrive in time.
    Slow,
    /// An accepted connection's first frame was not a hello, or not within [`HELLO_DEADLINE`].
    NoHello,
}

impl LinkError {
    /// The other side sent a segment that is not the source's as it signed it (a bad
    /// manifest or signature, another channel's, a piece that does not match its hash, or a
    /// length that disagrees with its head): it is banned.
    pub fn is_pollution(&self) -> bool {
        matches!(
            self,
            LinkError::Unverified(_)
                | LinkError::Wire(WireError::BadSegmentLength { .. })
                | LinkError::Wire(WireError::BadManifest)
        )
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Eof => write!(f, "closed by peer"),
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Wire(e) => write!(f, "{e}"),
            LinkError::Unverified(e) => write!(f, "segment failed verification: {e:?}"),
            LinkError::Slow => write!(f, "frame body too slow"),
            LinkError::NoHello => write!(f, "no hello in time"),
        }
    }
}

pub fn to_peer_addr(a: SocketAddr) -> PeerAddr {
    match a.ip() {
        IpAddr::V4(ip) => PeerAddr::V4(ip.octets(), a.port()),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => PeerAddr::V4(v4.octets(), a.port()),
            None => PeerAddr::V6(ip.octets(), a.port()),
        },
    }
}

pub fn to_socket_addr(a: PeerAddr) -> SocketAddr {
    match a {
        PeerAddr::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
        PeerAddr::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port),
    }
}

/// Upload pacing: `rate` bytes per second with a bucket of [`BURST`] worth (at least one chunk).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    depth: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl TokenBucket {
    pub fn new(bytes_per_s: u64, now: std::time::Instant) -> Self {
        let rate = bytes_per_s.max(1) as f64;
        let depth = (rate * BURST.as_secs_f64()).max(WRITE_CHUNK as f64);
        TokenBucket {
            rate,
            depth,
            tokens: depth,
            at: now,
        }
    }

    /// Takes `n` bytes' worth of tokens and says how long to wait before sending them (the
    /// bucket may go negative: the debt is paid by the wait).
    pub fn take(&mut self, n: usize, now: std::time::Instant) -> Duration {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.depth);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The largest frame one link's reader takes: control-sized until the actor opens it, which
/// it does when it sends that link's peer a request or a subscription (shared by the actor,
/// which opens it, and the link's reader, which reads it before each frame).
#[derive(Debug)]
pub struct FrameGate(AtomicU32);

impl Default for FrameGate {
    fn default() -> Self {
        FrameGate(AtomicU32::new(MAX_CONTROL_LEN))
    }
}

impl FrameGate {
    /// Segments may come from now on. Called before the request leaves, so the answer never
    /// meets a closed gate.
    pub fn open(&self) {
        self.0.store(MAX_FRAME_LEN, Ordering::Release);
    }

    pub fn max(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// Does sending this message to a link's peer invite segments back?
pub fn asks_for_segments<P>(msg: &Message<P>) -> bool {
    matches!(
        msg,
        Message::Ctl(Control::Request { .. } | Control::Subscribe { .. })
    )
}

/// Reads frames until the stream ends or breaks a rule; reports why on the event queue.
/// `handshake` is an accepted connection's place at the door: its first frame must then be a
/// hello within [`HELLO_DEADLINE`], and the place is given back when it comes.
#[allow(clippy::too_many_arguments)]
pub async fn reader<R: AsyncRead + Unpin>(
    link: LinkId,
    mut rd: R,
    verifier: Verifier,
    events: mpsc::Sender<LinkEvent>,
    budget: Arc<Semaphore>,
    counters: Arc<Counters>,
    gate: Arc<FrameGate>,
    mut handshake: Option<Handshake>,
) {
    let mut frames = LinkReader::default();
    let hello_by = tokio::time::Instant::now() + HELLO_DEADLINE;
    let mut hello_seen = false;
    let why = loop {
        // Before the hello, only control frames, whatever the gate says.
        let cap = || {
            if hello_seen {
                gate.max()
            } else {
                MAX_CONTROL_LEN
            }
        };
        let next = frames.next_read(&mut rd, &cap, &verifier, &budget, &counters);
        let got = if handshake.is_some() {
            match tokio::time::timeout_at(hello_by, next).await {
                Ok(r) => r,
                Err(_) => break LinkError::NoHello,
            }
        } else {
            next.await
        };
        let got = match got {
            Ok(LinkRead::Frame(msg, permit)) => Ok((msg, permit)),
            // A segment in progress (only after the hello: segments need an open gate).
            Ok(LinkRead::Begun(segment)) => {
                if events
                    .send(LinkEvent::Begun { link, segment })
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(LinkRead::Pieces { seq, done }) => {
                if events
                    .send(LinkEvent::Pieces { link, seq, done })
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(LinkRead::Aborted { seq }) => {
                if events.send(LinkEvent::Aborted { link, seq }).await.is_err() {
                    return;
                }
                continue;
            }
            Err(e) => Err(e),
        };
        match got {
            Ok((msg, permit)) => {
                if !hello_seen {
                    if matches!(msg, Message::Ctl(Control::Hello(_))) {
                        hello_seen = true;
                        handshake = None;
                    } else if let (Some(_), Message::Ctl(Control::DialBackProof { nonce })) =
                        (&handshake, &msg)
                    {
                        // A dial-back's proof instead of a hello: the connection's only frame.
                        let _ = events
                            .send(LinkEvent::Proof {
                                link,
                                nonce: *nonce,
                            })
                            .await;
                        return;
                    } else if handshake.is_some() {
                        break LinkError::NoHello;
                    }
                }
                if events
                    .send(LinkEvent::Received {
                        link,
                        msg,
                        _permit: permit,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => break e,
        }
    };
    drop(handshake);
    match &why {
        e if e.is_pollution() => Counters::add(&counters.bad_segments, 1),
        LinkError::Wire(_) => Counters::add(&counters.bad_frames, 1),
        LinkError::NoHello => Counters::add(&counters.no_hello, 1),
        LinkError::Slow => {
            Counters::add(&counters.slow_frames, 1);
            log::info!("link {}: a frame did not arrive in time; closing", link.0);
        }
        _ => {}
    }
    let _ = events.send(LinkEvent::Down { link, why }).await;
}

/// One frame of any size up to [`MAX_FRAME_LEN`], sent whole or in pieces.
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    verifier: &Verifier,
    budget: &Arc<Semaphore>,
    counters: &Counters,
) -> Result<(Message<SharedBody>, OwnedSemaphorePermit), LinkError> {
    LinkReader::default()
        .next(rd, MAX_FRAME_LEN, verifier, budget, counters)
        .await
}

/// A segment frame arriving in pieces.
struct Bulk {
    body: Vec<u8>,
    filled: usize,
    /// Its manifest once its head is in and its signature checked, where the media starts in
    /// the body, and how many pieces have been checked against it.
    checked: Option<(Manifest, usize, usize)>,
    /// Bytes of its records so far, counted as downloaded once it is whole (as a whole
    /// frame's are once read: a transfer cut short counts for neither side).
    wire_bytes: u64,
    permit: Option<OwnedSemaphorePermit>,
    /// The whole body must be in by then (the same rate rule as a whole frame's).
    deadline: tokio::time::Instant,
    /// The checked pieces, for uploads of the segment while it arrives (cut-through): made
    /// when the manifest is checked, aborted if the frame ends any other way than whole.
    growing: Option<Arc<GrowingBody>>,
    /// Its pieces may still be forwarded: false once its growing body was let go untracked.
    forwarded: bool,
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // Whole, it was taken out before; otherwise uploads of it end with an abort.
        if let Some(g) = self.growing.take() {
            g.abort();
        }
    }
}

/// What a link's reader has for the actor.
#[derive(Debug)]
pub enum LinkRead {
    /// A whole frame (a segment with its manifest and every piece checked), and its bytes'
    /// place in the body budget.
    Frame(Message<SharedBody>, OwnedSemaphorePermit),
    /// A segment's manifest is checked and its pieces follow: its payload is a body that
    /// fills as they are checked.
    Begun(Segment<SharedBody>),
    /// The first `done` pieces of `seq` are checked and in its growing body.
    Pieces { seq: Seq, done: u32 },
    /// The sender gave up sending `seq` (an abort record): what came of it is dropped.
    Aborted { seq: Seq },
}

/// Reassembles frames from a link's records: whole frames, and one segment frame in pieces
/// with whole frames between them.
#[derive(Default)]
pub struct LinkReader {
    bulk: Option<Bulk>,
    /// Reports from one record waiting to be returned (a manifest and a piece checked).
    pending: std::collections::VecDeque<LinkRead>,
}

impl LinkReader {
    /// The next whole frame: prefix, cap check against `max`, body budget, body (in time),
    /// decode, verify. Reports of a segment in progress are passed over.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        max: u32,
        verifier: &Verifier,
        budget: &Arc<Semaphore>,
        counters: &Counters,
    ) -> Result<(Message<SharedBody>, OwnedSemaphorePermit), LinkError> {
        self.next_capped(rd, &|| max, verifier, budget, counters)
            .await
    }

    /// [`LinkReader::next`] with the cap read when each prefix has arrived (a gate opened
    /// while the reader waited applies to the frame that was awaited).
    pub async fn next_capped<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        max: &(dyn Fn() -> u32 + Sync),
        verifier: &Verifier,
        budget: &Arc<Semaphore>,
        counters: &Counters,
    ) -> Result<(Message<SharedBody>, OwnedSemaphorePermit), LinkError> {
        loop {
            if let LinkRead::Frame(m, p) =
                self.next_read(rd, max, verifier, budget, counters).await?
            {
                return Ok((m, p));
            }
        }
    }

    /// The next thing to tell the actor: a whole frame, or news of the segment in progress.
    pub async fn next_read<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        max: &(dyn Fn() -> u32 + Sync),
        verifier: &Verifier,
        budget: &Arc<Semaphore>,
        counters: &Counters,
    ) -> Result<LinkRead, LinkError> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Ok(r);
            }
            let mut prefix = [0u8; FRAME_PREFIX_LEN];
            let read = rd.read_exact(&mut prefix);
            let got = match &self.bulk {
                // A sender that begins a segment must finish it in time, whatever it sends
                // between the pieces.
                Some(b) => tokio::time::timeout_at(b.deadline, read)
                    .await
                    .map_err(|_| LinkError::Slow)?,
                None => read.await,
            };
            match got {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(LinkError::Eof)
                }
                Err(e) => return Err(LinkError::Io(e)),
            }
            let word = u32::from_be_bytes(prefix);
            let max = max();
            match word & RECORD_KIND {
                0 => {
                    let (m, p) = read_whole(rd, prefix, max, verifier, budget, counters).await?;
                    return Ok(LinkRead::Frame(m, p));
                }
                BULK_BEGIN => {
                    if self.bulk.is_some() {
                        return Err(LinkError::Wire(WireError::Malformed));
                    }
                    let len = frame_len((word & !RECORD_KIND).to_be_bytes(), max)
                        .map_err(LinkError::Wire)?;
                    let deadline = tokio::time::Instant::now() + body_time(len);
                    let permit = reserve(budget, len, deadline).await?;
                    self.bulk = Some(Bulk {
                        body: vec![0u8; len],
                        filled: 0,
                        checked: None,
                        wire_bytes: FRAME_PREFIX_LEN as u64,
                        permit: Some(permit),
                        deadline,
                        growing: None,
                        forwarded: true,
                    });
                }
                BULK_PIECE => {
                    let n = (word & !RECORD_KIND) as usize;
                    let Some(b) = self.bulk.as_mut() else {
                        return Err(LinkError::Wire(WireError::Malformed));
                    };
                    if n == 0 || n > WRITE_CHUNK || n > b.body.len() - b.filled {
                        return Err(LinkError::Wire(WireError::Malformed));
                    }
                    let piece = &mut b.body[b.filled..b.filled + n];
                    match tokio::time::timeout_at(b.deadline, rd.read_exact(piece)).await {
                        Err(_) => return Err(LinkError::Slow),
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            return Err(LinkError::Eof)
                        }
                        Ok(Err(e)) => return Err(LinkError::Io(e)),
                        Ok(Ok(_)) => {}
                    }
                    b.filled += n;
                    b.wire_bytes += (FRAME_PREFIX_LEN + n) as u64;
                    // Each piece is checked as soon as it is in, and the manifest before any:
                    // a bad one ends the link without waiting for the rest, and no whole
                    // segment's hashing lands on the event loop at once when the last byte
                    // comes (see docs/SECURITY.md, "What it costs").
                    let was = b.checked.as_ref().map(|c| c.2);
                    check_arrived(b, verifier)?;
                    let now_done = b.checked.as_ref().map(|c| c.2);
                    // A body that nothing but this reader holds any more (the core did not
                    // track it: it had the segment in progress from another link, or no
                    // room) has no uploads and never will: its copy is not kept.
                    if b.growing
                        .as_ref()
                        .is_some_and(|g| Arc::strong_count(g) == 1)
                    {
                        b.growing = None;
                        b.forwarded = false;
                    }
                    // What was checked goes into the growing body, for uploads of it.
                    if b.growing.is_none() && b.forwarded {
                        if let Some((m, _, _)) = &b.checked {
                            let g = Arc::new(GrowingBody::new(m.len));
                            if b.filled < b.body.len() {
                                let seg = growing_segment(m, g.clone());
                                self.pending.push_back(LinkRead::Begun(seg));
                            }
                            b.growing = Some(g);
                        }
                    }
                    if let (Some(g), Some((m, at, done))) = (&b.growing, &b.checked) {
                        for k in was.unwrap_or(0)..*done {
                            let r = piece_range(m.len, k);
                            g.push_piece(&b.body[at + r.start..at + r.end]);
                        }
                        if b.filled < b.body.len() && now_done > was && *done > 0 {
                            self.pending.push_back(LinkRead::Pieces {
                                seq: m.seq,
                                done: *done as u32,
                            });
                        }
                    }
                    if b.filled == b.body.len() {
                        let mut b = self.bulk.take().expect("checked above");
                        let growing = b.growing.take();
                        let permit = b.permit.take().expect("a bulk holds its permit");
                        let body = std::mem::take(&mut b.body);
                        Counters::add(&counters.download_bytes, b.wire_bytes);
                        let msg = match &b.checked {
                            Some((m, _, done)) if *done == m.piece_count() => {
                                decode_checked(&body, counters)
                            }
                            _ => decode_verified(&body, verifier, counters),
                        };
                        let msg = match msg {
                            Ok(m) => m,
                            Err(e) => {
                                if let Some(g) = growing {
                                    g.abort();
                                }
                                return Err(e);
                            }
                        };
                        // Whole: its uploads go on from the copy the store keeps, and the
                        // growing body's own bytes go (see `proto::growing`).
                        if let (Some(g), Message::Segment(seg)) = (growing, &msg) {
                            g.complete_with(&seg.payload);
                        }
                        return Ok(LinkRead::Frame(msg, permit));
                    }
                }
                // Both bits and no length: the sender aborts the segment in progress.
                RECORD_KIND if word == BULK_ABORT => {
                    let Some(b) = self.bulk.take() else {
                        return Err(LinkError::Wire(WireError::Malformed));
                    };
                    Counters::add(
                        &counters.download_bytes,
                        b.wire_bytes + FRAME_PREFIX_LEN as u64,
                    );
                    self.pending.clear();
                    if let Some((m, _, _)) = &b.checked {
                        return Ok(LinkRead::Aborted { seq: m.seq });
                    }
                }
                // Both bits with a length: no such record (and no length this large).
                _ => {
                    return Err(LinkError::Wire(WireError::TooLong {
                        len: word,
                        max: max.max(BULK_BEGIN | MAX_FRAME_LEN),
                    }))
                }
            }
        }
    }
}

/// Growing bodies of the segments arriving here, remembered (weakly: they live as long as
/// their link's reader, the core's entry or an upload holds them) so that a segment that
/// comes whole on another link completes them: their uploads then go on from the whole copy
/// instead of ending with an abort if the link they were arriving on fails.
#[derive(Default)]
pub struct Arriving {
    bodies: std::collections::VecDeque<(Seq, std::sync::Weak<SegmentBody>)>,
}

/// Growing bodies remembered at once: the core tracks at most `MAX_IN_PROGRESS` (4) and
/// each link has at most one segment arriving; the oldest are forgotten first (a forgotten
/// one is only not completed early).
pub const ARRIVING_REMEMBERED: usize = 32;

impl Arriving {
    /// A segment's manifest was checked on some link (`LinkEvent::Begun`).
    pub fn begun(&mut self, seg: &Segment<SharedBody>) {
        if seg.payload.growing.is_none() {
            return;
        }
        self.bodies.retain(|(_, w)| w.strong_count() > 0);
        if self.bodies.len() >= ARRIVING_REMEMBERED {
            self.bodies.pop_front();
        }
        self.bodies
            .push_back((seg.seq, Arc::downgrade(&seg.payload)));
    }

    /// `seg` is whole here, checked: the bodies of it still arriving elsewhere under the same
    /// piece hashes are handed it. Returns how many were.
    pub fn whole(&mut self, seg: &Segment<SharedBody>) -> usize {
        let mut n = 0;
        self.bodies.retain(|(seq, w)| {
            if *seq != seg.seq {
                return w.strong_count() > 0;
            }
            let Some(b) = w.upgrade() else {
                return false;
            };
            // Another copy under other hashes (a source restarted on its key) is not this one.
            if b.hashes != seg.payload.hashes {
                return true;
            }
            if b.growing
                .as_ref()
                .is_some_and(|g| g.complete_with(&seg.payload))
            {
                n += 1;
            }
            false
        });
        n
    }

    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }
}

/// A segment in progress as the core sees it: its checked manifest's fields, and a payload
/// whose media is the growing body.
fn growing_segment(m: &Manifest, g: Arc<GrowingBody>) -> Segment<SharedBody> {
    Segment {
        seq: m.seq,
        origin_us: m.origin_us,
        duration_us: m.duration_us,
        flags: m.flags,
        payload: Arc::new(SegmentBody {
            hashes: m.hashes.clone(),
            signature: m.signature,
            data: Vec::new(),
            growing: Some(g),
        }),
    }
}

/// Time a frame body of `len` bytes may take, from its prefix (the wait for its room in the
/// body budget included): [`FRAME_GRACE`] plus `len` at [`MIN_FRAME_RATE`], at most
/// [`MAX_BODY_TIME`].
fn body_time(len: usize) -> Duration {
    (FRAME_GRACE + Duration::from_secs((len / MIN_FRAME_RATE) as u64)).min(MAX_BODY_TIME)
}

/// Reserves a body's memory before it is allocated: `len` is capped, so this fits a u32. A
/// body larger than [`BIG_FRAME`] does not queue (see there); none waits past `deadline`.
async fn reserve(
    budget: &Arc<Semaphore>,
    len: usize,
    deadline: tokio::time::Instant,
) -> Result<OwnedSemaphorePermit, LinkError> {
    let kib = len.div_ceil(1024) as u32;
    if len <= BIG_FRAME {
        return match tokio::time::timeout_at(deadline, budget.clone().acquire_many_owned(kib)).await
        {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(LinkError::Eof),
            Err(_) => Err(LinkError::Slow),
        };
    }
    loop {
        match budget.clone().try_acquire_many_owned(kib) {
            Ok(p) => return Ok(p),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(LinkError::Eof),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        if tokio::time::Instant::now() + BIG_RETRY > deadline {
            return Err(LinkError::Slow);
        }
        tokio::time::sleep(BIG_RETRY).await;
    }
}

/// A whole frame whose prefix has been read.
async fn read_whole<R: AsyncRead + Unpin>(
    rd: &mut R,
    prefix: [u8; FRAME_PREFIX_LEN],
    max: u32,
    verifier: &Verifier,
    budget: &Arc<Semaphore>,
    counters: &Counters,
) -> Result<(Message<SharedBody>, OwnedSemaphorePermit), LinkError> {
    let len = frame_len(prefix, max).map_err(LinkError::Wire)?;
    let deadline = tokio::time::Instant::now() + body_time(len);
    let permit = reserve(budget, len, deadline).await?;
    let mut body = vec![0u8; len];
    match tokio::time::timeout_at(deadline, rd.read_exact(&mut body)).await {
        Err(_) => return Err(LinkError::Slow),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(LinkError::Eof),
        Ok(Err(e)) => return Err(LinkError::Io(e)),
        Ok(Ok(_)) => {}
    }
    Counters::add(&counters.download_bytes, (FRAME_PREFIX_LEN + len) as u64);
    let msg = decode_verified(&body, verifier, counters)?;
    Ok((msg, permit))
}

/// Checks what has arrived of a segment frame: its manifest once its head is in, then every
/// piece that is in whole.
fn check_arrived(b: &mut Bulk, verifier: &Verifier) -> Result<(), LinkError> {
    if b.checked.is_none() {
        // Only segments go out in records; and a head is re-read from its start as records
        // come, so one that does not end within a manifest's longest is refused rather than
        // read again and again (a claimed hash list longer than the frame would be).
        if frame_kind(b.body[0]) != Some(FrameKind::Segment) {
            return Err(LinkError::Wire(WireError::Malformed));
        }
        let head = segment_head(&b.body[..b.filled]).map_err(LinkError::Wire)?;
        if head.is_none() && b.filled >= MAX_MANIFEST_LEN.min(b.body.len()) {
            return Err(LinkError::Wire(WireError::BadManifest));
        }
        if let Some((m, at)) = head {
            if at + m.len as usize != b.body.len() {
                return Err(LinkError::Wire(WireError::BadSegmentLength {
                    declared: m.len,
                    actual: b.body.len().saturating_sub(at),
                }));
            }
            verifier.check_manifest(&m).map_err(LinkError::Unverified)?;
            b.checked = Some((m, at, 0));
        }
    }
    if let Some((m, at, done)) = b.checked.as_mut() {
        while *done < m.piece_count() {
            let r = piece_range(m.len, *done);
            if *at + r.end > b.filled {
                break;
            }
            m.check_piece(*done, &b.body[*at + r.start..*at + r.end])
                .map_err(|e| LinkError::Unverified(VerifyError::Piece(e)))?;
            *done += 1;
        }
    }
    Ok(())
}

/// Decodes a segment frame body whose manifest and pieces were checked as they arrived.
fn decode_checked(body: &[u8], counters: &Counters) -> Result<Message<SharedBody>, LinkError> {
    let msg = decode_body(body).map_err(LinkError::Wire)?;
    if let Message::Segment(seg) = &msg {
        Counters::add(&counters.payload_down, seg.payload.data.len() as u64);
    }
    Ok(msg)
}

/// Decodes a frame body and verifies a segment: its manifest's signature, then each piece.
fn decode_verified(
    body: &[u8],
    verifier: &Verifier,
    counters: &Counters,
) -> Result<Message<SharedBody>, LinkError> {
    let msg = decode_body(body).map_err(LinkError::Wire)?;
    if let Message::Segment(seg) = &msg {
        verifier.check(seg).map_err(LinkError::Unverified)?;
        Counters::add(&counters.payload_down, seg.payload.data.len() as u64);
    }
    Ok(msg)
}

/// Writes queued messages, paced, until the queue's sender is dropped (then flushes and shuts
/// the write side) or the stream fails. Holds `_place` (the link's permit, its address's
/// count) until it is done.
pub async fn writer<W: AsyncWrite + Unpin, H: Send>(
    link: LinkId,
    mut wr: W,
    mut rx: mpsc::Receiver<Message<SharedBody>>,
    events: mpsc::Sender<LinkEvent>,
    upload_bytes_per_s: u64,
    counters: Arc<Counters>,
    _place: H,
) {
    let mut out = PacedWriter {
        wr: &mut wr,
        bucket: TokenBucket::new(upload_bytes_per_s, std::time::Instant::now()),
        failed: None,
    };
    let mut buf = Vec::with_capacity(4096);
    let mut ctl = Vec::with_capacity(512);
    let mut record = Vec::with_capacity(FRAME_PREFIX_LEN + WRITE_CHUNK);
    // Segments taken off the queue to reach the control frames behind them.
    let mut held: std::collections::VecDeque<Message<SharedBody>> = Default::default();
    loop {
        let msg = match held.pop_front() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        buf.clear();
        if let Err(e) = encode(&msg, &mut buf) {
            log::warn!("link {}: not sending an unencodable message: {e}", link.0);
            continue;
        }
        let Message::Segment(seg) = &msg else {
            if out.write(&buf).await.is_err() {
                return report_down(&events, link, &mut out).await;
            }
            Counters::add(&counters.upload_bytes, buf.len() as u64);
            continue;
        };
        let seq = seg.seq;
        if let Some(g) = seg.payload.growing.clone() {
            // A segment still arriving here: its pieces go as they are checked.
            let end = write_growing(link, &mut out, &mut rx, &mut held, &buf, &g, &counters).await;
            let aborted = match end {
                Ok(aborted) => aborted,
                Err(()) => return report_down(&events, link, &mut out).await,
            };
            if events
                .send(LinkEvent::Sent { link, seq, aborted })
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let body = &buf[FRAME_PREFIX_LEN..];
        let begin = BULK_BEGIN | body.len() as u32;
        if out.write(&begin.to_be_bytes()).await.is_err() {
            return report_down(&events, link, &mut out).await;
        }
        // Counted once whole, as the reader counts it.
        let mut wire_bytes = FRAME_PREFIX_LEN as u64;
        for piece in body.chunks(WRITE_CHUNK) {
            // Control frames queued meanwhile go first; segments wait their turn.
            while held.len() < HELD_SEGMENTS {
                let Ok(next) = rx.try_recv() else { break };
                if matches!(next, Message::Segment(_)) {
                    held.push_back(next);
                    continue;
                }
                ctl.clear();
                if let Err(e) = encode(&next, &mut ctl) {
                    log::warn!("link {}: not sending an unencodable message: {e}", link.0);
                    continue;
                }
                if out.write(&ctl).await.is_err() {
                    return report_down(&events, link, &mut out).await;
                }
                Counters::add(&counters.upload_bytes, ctl.len() as u64);
            }
            record.clear();
            record.extend_from_slice(&(BULK_PIECE | piece.len() as u32).to_be_bytes());
            record.extend_from_slice(piece);
            if out.write(&record).await.is_err() {
                return report_down(&events, link, &mut out).await;
            }
            wire_bytes += record.len() as u64;
        }
        Counters::add(&counters.upload_bytes, wire_bytes);
        Counters::add(&counters.payload_up, seg.payload.data.len() as u64);
        // The encoded copy of a segment larger than the plan counts is not kept between
        // segments (memory::SEGMENT_ALLOWANCE per uploading link).
        if buf.capacity() > super::memory::SEGMENT_ALLOWANCE as usize {
            buf = Vec::with_capacity(4096);
        }
        let sent = LinkEvent::Sent {
            link,
            seq,
            aborted: false,
        };
        if events.send(sent).await.is_err() {
            return;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

/// Passes one message taken off the writer's queue while a segment goes out: a control frame
/// is written at once, a segment waits its turn in `held`.
async fn pass_between<W: AsyncWrite + Unpin>(
    link: LinkId,
    out: &mut PacedWriter<'_, W>,
    held: &mut std::collections::VecDeque<Message<SharedBody>>,
    next: Message<SharedBody>,
    counters: &Counters,
) -> Result<(), ()> {
    if matches!(next, Message::Segment(_)) {
        held.push_back(next);
        return Ok(());
    }
    let mut ctl = Vec::with_capacity(256);
    if let Err(e) = encode(&next, &mut ctl) {
        log::warn!("link {}: not sending an unencodable message: {e}", link.0);
        return Ok(());
    }
    out.write(&ctl).await?;
    Counters::add(&counters.upload_bytes, ctl.len() as u64);
    Ok(())
}

/// Sends a segment that is still arriving here (cut-through): `frame` is its encoded head
/// (the media is not in it yet), each piece goes as soon as it is checked into `g`, control
/// frames queued meanwhile go between the pieces and while we wait for the next one. If the
/// segment will not complete here, the frame ends with an abort record. Says whether it was
/// aborted; an error is a failed write.
async fn write_growing<W: AsyncWrite + Unpin>(
    link: LinkId,
    out: &mut PacedWriter<'_, W>,
    rx: &mut mpsc::Receiver<Message<SharedBody>>,
    held: &mut std::collections::VecDeque<Message<SharedBody>>,
    frame: &[u8],
    g: &GrowingBody,
    counters: &Counters,
) -> Result<bool, ()> {
    let head = &frame[FRAME_PREFIX_LEN..];
    let body_len = head.len() + g.len() as usize;
    out.write(&(BULK_BEGIN | body_len as u32).to_be_bytes())
        .await?;
    let mut wire_bytes = FRAME_PREFIX_LEN as u64;
    let mut record = Vec::with_capacity(FRAME_PREFIX_LEN + WRITE_CHUNK);
    for chunk in head.chunks(WRITE_CHUNK) {
        record.clear();
        record.extend_from_slice(&(BULK_PIECE | chunk.len() as u32).to_be_bytes());
        record.extend_from_slice(chunk);
        out.write(&record).await?;
        wire_bytes += record.len() as u64;
    }
    let mut piece = Vec::with_capacity(WRITE_CHUNK);
    let mut queue_open = true;
    for k in 0..g.piece_count() {
        let fill = loop {
            // Control frames queued meanwhile go first; segments wait their turn.
            while queue_open && held.len() < HELD_SEGMENTS {
                match rx.try_recv() {
                    Ok(next) => pass_between(link, out, held, next, counters).await?,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => queue_open = false,
                }
            }
            match g.fill() {
                Fill::Pieces(n) if n <= k => {}
                f => break f,
            }
            if !(queue_open && held.len() < HELD_SEGMENTS) {
                break g.wait_beyond(k).await;
            }
            tokio::select! {
                f = g.wait_beyond(k) => break f,
                next = rx.recv() => match next {
                    Some(next) => pass_between(link, out, held, next, counters).await?,
                    None => queue_open = false,
                },
            }
        };
        if fill == Fill::Aborted || !g.copy_piece(k, &mut piece) {
            out.write(&BULK_ABORT.to_be_bytes()).await?;
            wire_bytes += FRAME_PREFIX_LEN as u64;
            Counters::add(&counters.upload_bytes, wire_bytes);
            return Ok(true);
        }
        record.clear();
        record.extend_from_slice(&(BULK_PIECE | piece.len() as u32).to_be_bytes());
        record.extend_from_slice(&piece);
        out.write(&record).await?;
        wire_bytes += record.len() as u64;
    }
    Counters::add(&counters.upload_bytes, wire_bytes);
    Counters::add(&counters.payload_up, g.len() as u64);
    Ok(false)
}

/// The write side of a link, paced at the upload cap.
struct PacedWriter<'a, W> {
    wr: &'a mut W,
    bucket: TokenBucket,
    /// The error that ended the link, once one has.
    failed: Option<std::io::Error>,
}

impl<W: AsyncWrite + Unpin> PacedWriter<'_, W> {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ()> {
        for chunk in bytes.chunks(WRITE_CHUNK) {
            let wait = self.bucket.take(chunk.len(), std::time::Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if let Err(e) = self.wr.write_all(chunk).await {
                self.failed = Some(e);
                return Err(());
            }
        }
        Ok(())
    }
}

async fn report_down<W>(
    events: &mpsc::Sender<LinkEvent>,
    link: LinkId,
    out: &mut PacedWriter<'_, W>,
) {
    let e = out
        .failed
        .take()
        .unwrap_or_else(|| std::io::Error::other("write failed"));
    let _ = events
        .send(LinkEvent::Down {
            link,
            why: LinkError::Io(e),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::keys::ChannelKey;
    use crate::proto::manifest::{PieceError, PIECE_SIZE};
    use crate::proto::wire::{Control, MAX_CONTROL_LEN};
    use crate::proto::{Segment, Seq};

    fn budget() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(BODY_BUDGET_KIB))
    }

    /// A link writer at `rate` bytes/s into one end of an in-memory stream: its queue, the
    /// other end (what a partner reads), its events and its task.
    fn spawn_writer(
        link: LinkId,
        rate: u64,
        counters: Arc<Counters>,
    ) -> (
        mpsc::Sender<Message<SharedBody>>,
        tokio::io::DuplexStream,
        mpsc::Receiver<LinkEvent>,
        tokio::task::JoinHandle<()>,
    ) {
        let (a, far) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let (etx, erx) = mpsc::channel(16);
        let w = tokio::spawn(writer(link, a, rx, etx, rate, counters, ()));
        (tx, far, erx, w)
    }

    #[test]
    fn addresses_convert_both_ways() {
        for s in ["127.0.0.1:7000", "[::1]:7001", "[2001:db8::5]:9"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(to_socket_addr(to_peer_addr(a)), a);
        }
        // A v4-mapped v6 address (a dual-stack listener's view of a v4 peer) is v4.
        let m: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert_eq!(to_peer_addr(m), PeerAddr::V4([10, 0, 0, 1], 5));
    }

    #[test]
    fn bucket_paces_to_the_rate() {
        let t0 = std::time::Instant::now();
        let mut b = TokenBucket::new(100_000, t0);
        // The burst goes at once, then each 10 kB costs 0.1 s.
        assert_eq!(b.take(16_384, t0), Duration::ZERO);
        let w = b.take(10_000, t0);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-6, "{w:?}");
        // Over a simulated 10 s of sending, the total stays within 5 % of the rate.
        let mut now = t0 + w;
        let mut sent = 0usize;
        while now < t0 + Duration::from_secs(10) {
            now += b.take(WRITE_CHUNK, now);
            sent += WRITE_CHUNK;
        }
        let rate = sent as f64 / now.duration_since(t0).as_secs_f64();
        assert!((rate / 100_000.0 - 1.0).abs() < 0.05, "{rate}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_cross_a_stream_and_bad_ones_end_the_link() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let c = Counters::default();
        let seg = key.sign_segment(Seq(3), 10, 1_000_000, 0, vec![0x47; 1880]);
        let msgs = vec![
            Message::Ctl(Control::KeepAlive),
            Message::Segment(seg.clone()),
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            encode(m, &mut bytes).unwrap();
        }
        let mut rd = &bytes[..];
        for m in &msgs {
            let (got, _p) = read_frame(&mut rd, &v, &budget(), &c).await.unwrap();
            assert_eq!(&got, m);
        }
        assert!(matches!(
            read_frame(&mut rd, &v, &budget(), &c).await,
            Err(LinkError::Eof)
        ));
        assert_eq!(Counters::get(&c.download_bytes), bytes.len() as u64);

        // An oversized prefix is refused before anything is read or allocated for it.
        let huge = (MAX_FRAME_LEN + 1).to_be_bytes();
        let mut rd = &huge[..];
        assert!(matches!(
            read_frame(&mut rd, &v, &budget(), &c).await,
            Err(LinkError::Wire(_))
        ));
        // A segment signed by someone else is refused.
        let other = ChannelKey::from_seed([2; 32]).sign_segment(Seq(3), 10, 1, 0, vec![1; 10]);
        let mut b = Vec::new();
        encode(&Message::Segment(other), &mut b).unwrap();
        let mut rd = &b[..];
        assert!(matches!(
            read_frame(&mut rd, &v, &budget(), &c).await,
            Err(LinkError::Unverified(VerifyError::Signature))
        ));
        // A piece changed on the way: refused, naming the piece; a sender of either is banned.
        let seg = key.sign_segment(Seq(4), 10, 1, 0, vec![0x47; 40_000]);
        let mut body = (*seg.payload).clone();
        body.data[20_000] ^= 1;
        let bad = crate::proto::Segment {
            payload: Arc::new(body),
            ..seg
        };
        let mut b = Vec::new();
        encode(&Message::Segment(bad), &mut b).unwrap();
        let mut rd = &b[..];
        let e = read_frame(&mut rd, &v, &budget(), &c).await.unwrap_err();
        assert!(
            matches!(
                e,
                LinkError::Unverified(VerifyError::Piece(
                    crate::proto::manifest::PieceError::BadHash { index: 1 }
                ))
            ),
            "{e:?}"
        );
        assert!(e.is_pollution());
        // A truncated frame is an end, not a panic.
        let mut rd = &bytes[..bytes.len() - 3];
        let _ = read_frame(&mut rd, &v, &budget(), &c).await.unwrap();
        assert!(read_frame(&mut rd, &v, &budget(), &c).await.is_err());
        // Garbage control bodies are wire errors.
        let mut g = vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff];
        g.truncate(4 + 5);
        let mut rd = &g[..];
        assert!(matches!(
            read_frame(&mut rd, &v, &budget(), &c).await,
            Err(LinkError::Wire(_))
        ));
        let _ = MAX_CONTROL_LEN;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn before_hello_only_control_sized_frames_and_a_trickle_times_out() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let c = Counters::default();
        // A segment-sized prefix from a stranger is refused before anything is reserved.
        let big = (MAX_CONTROL_LEN + 1).to_be_bytes();
        let mut rd = &big[..];
        let b = budget();
        assert!(matches!(
            LinkReader::default()
                .next(&mut rd, MAX_CONTROL_LEN, &v, &b, &c)
                .await,
            Err(LinkError::Wire(WireError::TooLong { .. }))
        ));
        assert_eq!(b.available_permits(), BODY_BUDGET_KIB);
        // A body that never comes ends the link once its deadline passes (5 s here).
        let (mut tx, mut rx) = tokio::io::duplex(64);
        tx.write_all(&100u32.to_be_bytes()).await.unwrap();
        let r = LinkReader::default()
            .next(&mut rx, MAX_CONTROL_LEN, &v, &b, &c)
            .await;
        assert!(matches!(r, Err(LinkError::Slow)), "{r:?}");
        drop(tx);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writer_reports_sent_after_a_segment_and_flushes_on_close() {
        let key = ChannelKey::from_seed([1; 32]);
        let counters = Arc::new(Counters::default());
        let (tx, mut b, mut erx, w) = spawn_writer(LinkId(9), 10_000_000, counters.clone());
        let seg = key.sign_segment(Seq(1), 0, 1, 0, vec![0x47; 50_000]);
        tx.try_send(Message::Ctl(Control::KeepAlive)).unwrap();
        tx.try_send(Message::Segment(seg.clone())).unwrap();
        drop(tx);
        match erx.recv().await {
            Some(LinkEvent::Sent { link, aborted, .. }) => {
                assert_eq!(link, LinkId(9));
                assert!(!aborted);
            }
            other => panic!("expected Sent, got {other:?}"),
        }
        w.await.unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        let v = Verifier::new(key.channel());
        let mut rd = &all[..];
        let c = Counters::default();
        let (m1, _) = read_frame(&mut rd, &v, &budget(), &c).await.unwrap();
        let (m2, _) = read_frame(&mut rd, &v, &budget(), &c).await.unwrap();
        assert_eq!(m1, Message::Ctl(Control::KeepAlive));
        assert_eq!(m2, Message::Segment(seg));
        assert_eq!(Counters::get(&counters.upload_bytes), all.len() as u64);
        assert_eq!(Counters::get(&counters.payload_up), 50_000);
    }

    /// A one-second segment of a 768 kbit/s stream.
    const SEGMENT_1S_768K: usize = 96_000;

    /// What a relay's reader reports until it fails or a frame is whole.
    async fn reads_until_end<R: AsyncRead + Unpin>(
        r: &mut LinkReader,
        rd: &mut R,
        v: &Verifier,
    ) -> (Vec<LinkRead>, Option<LinkError>) {
        let (b, c) = (budget(), Counters::default());
        let mut got = Vec::new();
        loop {
            match r.next_read(rd, &|| MAX_FRAME_LEN, v, &b, &c).await {
                Ok(f @ LinkRead::Frame(..)) | Ok(f @ LinkRead::Aborted { .. }) => {
                    got.push(f);
                    return (got, None);
                }
                Ok(x) => got.push(x),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    /// A relay forwards a segment while it arrives: each piece once checked, none before;
    /// when a piece from its upstream fails its hash, the downstream gets an abort record,
    /// holds only the pieces that were checked, and never gets the segment.
    #[tokio::test(flavor = "current_thread")]
    async fn a_relay_forwards_checked_pieces_and_aborts_downstream_on_a_bad_one() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let data: Vec<u8> = (0..6 * PIECE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        for bad in [Some(3usize), None] {
            let seg = key.sign_segment(Seq(5), 0, 1, 0, data.clone());
            let mut frame = Vec::new();
            encode(&Message::Segment(seg.clone()), &mut frame).unwrap();
            let head = frame.len() - FRAME_PREFIX_LEN - data.len();
            if let Some(k) = bad {
                frame[FRAME_PREFIX_LEN + head + k * PIECE_SIZE + 10] ^= 1;
            }
            let body = &frame[FRAME_PREFIX_LEN..];
            let mut up = record(BULK_BEGIN, body.len() as u32).to_vec();
            for chunk in body.chunks(WRITE_CHUNK) {
                up.extend_from_slice(&record(BULK_PIECE, chunk.len() as u32));
                up.extend_from_slice(chunk);
            }
            // The relay reads its upstream up to the manifest, then starts the upload.
            let mut rd = &up[..];
            let mut relay = LinkReader::default();
            let b = budget();
            let c = Counters::default();
            let begun = match relay
                .next_read(&mut rd, &|| MAX_FRAME_LEN, &v, &b, &c)
                .await
            {
                Ok(LinkRead::Begun(s)) => s,
                other => panic!("expected the manifest first, got {other:?}"),
            };
            assert_eq!(begun.seq, Seq(5));
            let g = begun.payload.growing.clone().expect("a growing body");
            assert_eq!(g.fill(), Fill::Pieces(0), "nothing checked yet");
            let (tx, mut down_rd, mut erx, w) =
                spawn_writer(LinkId(2), 100_000_000, Arc::new(Counters::default()));
            tx.try_send(Message::Segment(begun)).unwrap();
            let (relayed, end) = reads_until_end(&mut relay, &mut rd, &v).await;
            let done = relayed
                .iter()
                .filter_map(|r| match r {
                    LinkRead::Pieces { done, .. } => Some(*done),
                    _ => None,
                })
                .max();
            match bad {
                Some(k) => {
                    assert!(matches!(end, Some(LinkError::Unverified(_))), "{end:?}");
                    assert_eq!(done, Some(k as u32), "pieces before the bad one");
                    // The failed link's reader goes, and its growing body is aborted.
                    drop(relay);
                    assert_eq!(g.fill(), Fill::Aborted);
                }
                None => {
                    assert!(matches!(relayed.last(), Some(LinkRead::Frame(..))));
                    assert_eq!(g.fill(), Fill::Pieces(6));
                    // Whole: the upload goes on from the frame's copy, not a second one.
                    assert_eq!(g.own_bytes(), 0);
                }
            }
            // Downstream: the manifest, checked pieces, then the abort (or the segment).
            let mut down = LinkReader::default();
            let (got, end) = reads_until_end(&mut down, &mut down_rd, &v).await;
            assert!(end.is_none(), "{end:?}");
            let Some(LinkRead::Begun(s)) = got.first() else {
                panic!("expected the manifest first, got {got:?}");
            };
            let dg = s.payload.growing.clone().unwrap();
            match bad {
                Some(k) => {
                    assert!(matches!(
                        got.last(),
                        Some(LinkRead::Aborted { seq: Seq(5) })
                    ));
                    assert_eq!(dg.fill(), Fill::Aborted);
                    // What it holds is checked pieces only (the relay aborts as soon as it
                    // knows, without sending on what it had), nothing from the bad one on.
                    let mut p = Vec::new();
                    for i in 0..k as u32 {
                        if dg.copy_piece(i, &mut p) {
                            assert_eq!(p, data[piece_range(data.len() as u32, i as usize)]);
                        }
                    }
                    assert!(!dg.copy_piece(k as u32, &mut p));
                }
                None => match got.last() {
                    Some(LinkRead::Frame(m, _)) => assert_eq!(m, &Message::Segment(seg)),
                    other => panic!("expected the segment, got {other:?}"),
                },
            }
            match erx.recv().await {
                Some(LinkEvent::Sent { seq, aborted, .. }) => {
                    assert_eq!(seq, Seq(5));
                    assert_eq!(aborted, bad.is_some());
                }
                other => panic!("expected Sent, got {other:?}"),
            }
            drop(tx);
            w.await.unwrap();
        }
    }

    /// A relay forwarding a segment as it arrives from A gets it whole from B meanwhile;
    /// then A's link fails: the upload goes on from B's copy to the end, not aborted.
    #[tokio::test(flavor = "current_thread")]
    async fn a_segment_whole_from_another_link_keeps_its_upload_going_when_the_first_fails() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let data: Vec<u8> = (0..6 * PIECE_SIZE).map(|i| (i * 11 % 251) as u8).collect();
        let seg = key.sign_segment(Seq(8), 0, 1, 0, data.clone());
        let mut frame = Vec::new();
        encode(&Message::Segment(seg.clone()), &mut frame).unwrap();
        let body = &frame[FRAME_PREFIX_LEN..];
        let mut up = record(BULK_BEGIN, body.len() as u32).to_vec();
        // A sends the head and three pieces' worth of records, then its link ends.
        for chunk in body.chunks(WRITE_CHUNK).take(3) {
            up.extend_from_slice(&record(BULK_PIECE, chunk.len() as u32));
            up.extend_from_slice(chunk);
        }
        let mut rd = &up[..];
        let mut relay = LinkReader::default();
        let (b, c) = (budget(), Counters::default());
        let begun = match relay
            .next_read(&mut rd, &|| MAX_FRAME_LEN, &v, &b, &c)
            .await
        {
            Ok(LinkRead::Begun(s)) => s,
            other => panic!("expected the manifest first, got {other:?}"),
        };
        let g = begun.payload.growing.clone().unwrap();
        let mut arriving = Arriving::default();
        arriving.begun(&begun);
        let (tx, mut down_rd, mut erx, w) =
            spawn_writer(LinkId(3), 100_000_000, Arc::new(Counters::default()));
        tx.try_send(Message::Segment(begun)).unwrap();
        let next = relay
            .next_read(&mut rd, &|| MAX_FRAME_LEN, &v, &b, &c)
            .await;
        assert!(matches!(next, Ok(LinkRead::Pieces { .. })), "{next:?}");
        // Another copy under other hashes (another source's signature) is not taken.
        let other = ChannelKey::from_seed([2; 32]).sign_segment(Seq(8), 0, 1, 0, vec![1; 99]);
        assert_eq!(arriving.whole(&other), 0);
        // B's copy, whole and checked, reaches the actor.
        assert_eq!(arriving.whole(&seg), 1);
        assert!(arriving.is_empty(), "done with");
        assert_eq!(g.own_bytes(), 0, "the arriving copy is freed");
        let (_, end) = reads_until_end(&mut relay, &mut rd, &v).await;
        assert!(matches!(end, Some(LinkError::Eof)), "{end:?}");
        drop(relay);
        assert_eq!(g.fill(), Fill::Pieces(6), "A's failure does not abort it");
        let mut down = LinkReader::default();
        let (got, end) = reads_until_end(&mut down, &mut down_rd, &v).await;
        assert!(end.is_none(), "{end:?}");
        match got.last() {
            Some(LinkRead::Frame(m, _)) => assert_eq!(m, &Message::Segment(seg)),
            other => panic!("expected the segment, got {other:?}"),
        }
        match erx.recv().await {
            Some(LinkEvent::Sent { seq, aborted, .. }) => {
                assert_eq!(seq, Seq(8));
                assert!(!aborted);
            }
            other => panic!("expected Sent, got {other:?}"),
        }
        drop(tx);
        w.await.unwrap();
    }

    /// A growing body nothing else holds (the core did not track the segment) is let go: its
    /// pieces are not copied into it and no progress is reported.
    #[tokio::test(flavor = "current_thread")]
    async fn an_untracked_growing_body_is_not_kept() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let seg = key.sign_segment(Seq(9), 0, 1, 0, vec![3; 6 * PIECE_SIZE]);
        let mut frame = Vec::new();
        encode(&Message::Segment(seg.clone()), &mut frame).unwrap();
        let body = &frame[FRAME_PREFIX_LEN..];
        let mut up = record(BULK_BEGIN, body.len() as u32).to_vec();
        for chunk in body.chunks(WRITE_CHUNK) {
            up.extend_from_slice(&record(BULK_PIECE, chunk.len() as u32));
            up.extend_from_slice(chunk);
        }
        let mut rd = &up[..];
        let mut relay = LinkReader::default();
        let (b, c) = (budget(), Counters::default());
        let begun = relay
            .next_read(&mut rd, &|| MAX_FRAME_LEN, &v, &b, &c)
            .await
            .unwrap();
        let LinkRead::Begun(s) = begun else {
            panic!("expected the manifest first, got {begun:?}");
        };
        let g = Arc::downgrade(s.payload.growing.as_ref().unwrap());
        drop(s);
        let (got, end) = reads_until_end(&mut relay, &mut rd, &v).await;
        assert!(end.is_none(), "{end:?}");
        assert!(g.upgrade().is_none(), "the body went with its last holder");
        assert!(
            !got.iter().any(|r| matches!(r, LinkRead::Pieces { .. })),
            "{got:?}"
        );
        assert!(matches!(got.last(), Some(LinkRead::Frame(..))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_abort_record_without_a_segment_in_progress_is_a_wire_error() {
        let v = Verifier::new(ChannelKey::from_seed([1; 32]).channel());
        let bytes = BULK_ABORT.to_be_bytes();
        let mut rd = &bytes[..];
        let r = LinkReader::default()
            .next(&mut rd, MAX_FRAME_LEN, &v, &budget(), &Counters::default())
            .await;
        assert!(
            matches!(r, Err(LinkError::Wire(WireError::Malformed))),
            "{r:?}"
        );
    }

    fn record(kind: u32, n: u32) -> [u8; 4] {
        (kind | n).to_be_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_segment_in_pieces_with_control_frames_between_reassembles() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let c = Counters::default();
        let seg = key.sign_segment(Seq(7), 0, 1, 0, vec![0x47; 40_000]);
        let mut whole = Vec::new();
        encode(&Message::Segment(seg.clone()), &mut whole).unwrap();
        let body = &whole[FRAME_PREFIX_LEN..];
        let mut ka = Vec::new();
        encode(&Message::Ctl(Control::KeepAlive), &mut ka).unwrap();
        let mut bytes = record(BULK_BEGIN, body.len() as u32).to_vec();
        for piece in body.chunks(WRITE_CHUNK) {
            bytes.extend_from_slice(&ka);
            bytes.extend_from_slice(&record(BULK_PIECE, piece.len() as u32));
            bytes.extend_from_slice(piece);
        }
        let pieces = body.len().div_ceil(WRITE_CHUNK);
        let mut rd = &bytes[..];
        let mut r = LinkReader::default();
        let b = budget();
        for _ in 0..pieces {
            let (m, _) = r.next(&mut rd, MAX_FRAME_LEN, &v, &b, &c).await.unwrap();
            assert_eq!(m, Message::Ctl(Control::KeepAlive));
        }
        let (m, permit) = r.next(&mut rd, MAX_FRAME_LEN, &v, &b, &c).await.unwrap();
        assert_eq!(m, Message::Segment(seg));
        // The body's memory stays reserved while the message is handled, then comes back.
        assert!(b.available_permits() < BODY_BUDGET_KIB);
        drop(permit);
        assert_eq!(b.available_permits(), BODY_BUDGET_KIB);
        assert_eq!(Counters::get(&c.download_bytes), bytes.len() as u64);
    }

    /// A segment in records: a forged manifest is refused on its first record and a bad piece
    /// on the record that completes it, before the rest of the body has come.
    #[tokio::test(flavor = "current_thread")]
    async fn a_bad_manifest_or_piece_ends_the_link_before_the_body_is_whole() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let seg = key.sign_segment(Seq(7), 0, 1, 0, vec![0x47; 6 * PIECE_SIZE]);
        // Records of the body, the first `cut` of them only (the sender never sends the rest).
        let records = |seg: &Segment<SharedBody>, cut: usize| {
            let mut whole = Vec::new();
            encode(&Message::Segment(seg.clone()), &mut whole).unwrap();
            let body = &whole[FRAME_PREFIX_LEN..];
            let mut bytes = record(BULK_BEGIN, body.len() as u32).to_vec();
            for piece in body.chunks(WRITE_CHUNK).take(cut) {
                bytes.extend_from_slice(&record(BULK_PIECE, piece.len() as u32));
                bytes.extend_from_slice(piece);
            }
            bytes
        };
        let read = |bytes: Vec<u8>| {
            let v = v.clone();
            async move {
                let mut rd = &bytes[..];
                let mut r = LinkReader::default();
                r.next(&mut rd, MAX_FRAME_LEN, &v, &budget(), &Counters::default())
                    .await
                    .map(|(m, _)| m)
            }
        };
        let mut forged = (*seg.payload).clone();
        forged.signature[0][3] ^= 1;
        let forged = Segment {
            payload: Arc::new(forged),
            ..seg.clone()
        };
        let e = read(records(&forged, 1)).await.unwrap_err();
        assert!(
            matches!(e, LinkError::Unverified(VerifyError::Signature)),
            "{e:?}"
        );
        assert!(e.is_pollution());
        let mut bad = (*seg.payload).clone();
        bad.data[PIECE_SIZE + 9] ^= 1;
        let bad = Segment {
            payload: Arc::new(bad),
            ..seg.clone()
        };
        // Piece 1 is whole once the third record is in (the head shifts the media).
        let e = read(records(&bad, 3)).await.unwrap_err();
        assert!(
            matches!(
                e,
                LinkError::Unverified(VerifyError::Piece(PieceError::BadHash { index: 1 }))
            ),
            "{e:?}"
        );
        // The honest segment, all records: whole and equal.
        assert_eq!(read(records(&seg, 7)).await.unwrap(), Message::Segment(seg));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn broken_piece_records_end_the_link_as_wire_errors() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let c = Counters::default();
        let piece = |n: u32| {
            let mut b = record(BULK_PIECE, n).to_vec();
            b.resize(4 + n as usize, 0);
            b
        };
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            ("a piece with no segment begun", piece(10), MAX_FRAME_LEN),
            (
                "a second segment begun before the first ends",
                [record(BULK_BEGIN, 100), record(BULK_BEGIN, 100)].concat(),
                MAX_FRAME_LEN,
            ),
            (
                "a piece past the announced length",
                [record(BULK_BEGIN, 100).to_vec(), piece(101)].concat(),
                MAX_FRAME_LEN,
            ),
            (
                "an empty piece",
                [record(BULK_BEGIN, 100).to_vec(), piece(0)].concat(),
                MAX_FRAME_LEN,
            ),
            (
                "a piece longer than a write chunk",
                [
                    record(BULK_BEGIN, 2 * WRITE_CHUNK as u32).to_vec(),
                    piece(WRITE_CHUNK as u32 + 1),
                ]
                .concat(),
                MAX_FRAME_LEN,
            ),
            (
                "both record bits",
                u32::MAX.to_be_bytes().to_vec(),
                MAX_FRAME_LEN,
            ),
            (
                "a segment announced over the cap",
                record(BULK_BEGIN, MAX_FRAME_LEN + 1).to_vec(),
                MAX_FRAME_LEN,
            ),
            (
                "a segment announced before hello",
                record(BULK_BEGIN, MAX_CONTROL_LEN + 1).to_vec(),
                MAX_CONTROL_LEN,
            ),
        ];
        for (what, bytes, max) in cases {
            let b = budget();
            let mut rd = &bytes[..];
            let r = LinkReader::default().next(&mut rd, max, &v, &b, &c).await;
            assert!(matches!(r, Err(LinkError::Wire(_))), "{what}: {r:?}");
            assert_eq!(b.available_permits(), BODY_BUDGET_KIB, "{what}");
        }
        // Pieces that fill a body that is not a valid segment: a wire error, not a panic.
        let bytes = [record(BULK_BEGIN, 8).to_vec(), piece(8)].concat();
        let mut rd = &bytes[..];
        let r = LinkReader::default()
            .next(&mut rd, MAX_FRAME_LEN, &v, &budget(), &c)
            .await;
        assert!(matches!(r, Err(LinkError::Wire(_))), "{r:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_segment_begun_and_not_finished_in_time_ends_the_link() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Verifier::new(key.channel());
        let c = Counters::default();
        // Begun, then only keep-alives: the body's deadline (5 s for a small one) still ends it.
        let (mut tx, mut rx) = tokio::io::duplex(1 << 16);
        tx.write_all(&record(BULK_BEGIN, 1000)).await.unwrap();
        let mut ka = Vec::new();
        encode(&Message::Ctl(Control::KeepAlive), &mut ka).unwrap();
        let feeder = tokio::spawn(async move {
            for _ in 0..20 {
                if tx.write_all(&ka).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let b = budget();
        let mut r = LinkReader::default();
        let started = std::time::Instant::now();
        let end = loop {
            match r.next(&mut rx, MAX_FRAME_LEN, &v, &b, &c).await {
                Ok((m, _)) => assert_eq!(m, Message::Ctl(Control::KeepAlive)),
                Err(e) => break e,
            }
        };
        assert!(matches!(end, LinkError::Slow), "{end:?}");
        assert!(started.elapsed() < Duration::from_secs(8));
        feeder.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_huge_segment_waiting_for_the_budget_does_not_stall_other_links() {
        let key = ChannelKey::from_seed([1; 32]);
        let v = Arc::new(Verifier::new(key.channel()));
        let c = Arc::new(Counters::default());
        // A plan-shaped budget: one largest frame and a few segments.
        let kib = MAX_FRAME_LEN as usize / 1024 + 1 + 3 * BIG_FRAME / 1024;
        let b = Arc::new(Semaphore::new(kib));
        let huge = MAX_FRAME_LEN - 64 * 1024;
        // Two links announce a huge segment each and send nothing more: the first holds its
        // room, the second waits for it.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (mut tx, mut rx) = tokio::io::duplex(1 << 16);
            tx.write_all(&record(BULK_BEGIN, huge)).await.unwrap();
            let (v, b, c) = (v.clone(), b.clone(), c.clone());
            held.push(tx);
            tokio::spawn(async move {
                let _ = LinkReader::default()
                    .next(&mut rx, MAX_FRAME_LEN, &v, &b, &c)
                    .await;
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.available_permits(), kib - (huge as usize).div_ceil(1024));
        // A third link's segment and control frame come through at once.
        let seg = key.sign_segment(Seq(3), 0, 1, 0, vec![0x47; 200_000]);
        let mut bytes = Vec::new();
        encode(&Message::Segment(seg.clone()), &mut bytes).unwrap();
        encode(&Message::Ctl(Control::KeepAlive), &mut bytes).unwrap();
        let mut rd = &bytes[..];
        let mut r = LinkReader::default();
        for want in [Message::Segment(seg), Message::Ctl(Control::KeepAlive)] {
            let got = tokio::time::timeout(
                Duration::from_millis(500),
                r.next(&mut rd, MAX_FRAME_LEN, &v, &b, &c),
            )
            .await
            .expect("not stalled behind the huge segments")
            .unwrap();
            assert_eq!(got.0, want);
        }
        drop(held);
    }

    #[test]
    fn no_body_takes_longer_than_it_could_be_played() {
        assert_eq!(body_time(1000), FRAME_GRACE);
        assert_eq!(body_time(MAX_FRAME_LEN as usize), MAX_BODY_TIME);
        // A partner at half a 768 kbit/s stream sends a 1 s segment in 2 s.
        assert!(body_time(SEGMENT_1S_768K) >= Duration::from_secs(2) + FRAME_GRACE);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn control_frames_overtake_a_segment_being_paced() {
        let key = ChannelKey::from_seed([1; 32]);
        // 100 kB at 200 kB/s: half a second on the wire.
        let counters = Arc::new(Counters::default());
        let (tx, mut b, mut erx, w) = spawn_writer(LinkId(3), 200_000, counters.clone());
        let seg = key.sign_segment(Seq(1), 0, 1, 0, vec![0x47; 100_000]);
        let later = key.sign_segment(Seq(2), 0, 1, 0, vec![0x47; 1_000]);
        tx.try_send(Message::Segment(seg.clone())).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.try_send(Message::Segment(later.clone())).unwrap();
        tx.try_send(Message::Ctl(Control::KeepAlive)).unwrap();
        drop(tx);
        for _ in 0..2 {
            assert!(matches!(erx.recv().await, Some(LinkEvent::Sent { .. })));
        }
        w.await.unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        let v = Verifier::new(key.channel());
        let c = Counters::default();
        let mut rd = &all[..];
        let mut r = LinkReader::default();
        let mut got = Vec::new();
        while let Ok((m, _)) = r.next(&mut rd, MAX_FRAME_LEN, &v, &budget(), &c).await {
            got.push(m);
        }
        // The keep-alive went out between the first segment's pieces; segments kept their order.
        assert_eq!(
            got,
            vec![
                Message::Ctl(Control::KeepAlive),
                Message::Segment(seg),
                Message::Segment(later)
            ]
        );
        assert_eq!(Counters::get(&counters.upload_bytes), all.len() as u64);
    }

    fn hello_frame(key: &ChannelKey) -> Vec<u8> {
        use crate::proto::wire::{Hello, PeerId, Role, MAGIC, VERSION};
        let mut b = Vec::new();
        let h = Hello {
            magic: MAGIC,
            version: VERSION,
            channel: key.channel(),
            peer_id: PeerId(5),
            listen_port: 9,
            role: Role::Peer,
            upload_kbps: 1000,
        };
        encode(&Message::Ctl(Control::Hello(h)), &mut b).unwrap();
        b
    }

    /// Runs `reader` on one end of a pipe, as the actor would for an accepted connection.
    fn spawn_reader(
        key: &ChannelKey,
        gate: Arc<FrameGate>,
        guard: &crate::daemon::guard::Guard,
    ) -> (
        tokio::io::DuplexStream,
        mpsc::Receiver<LinkEvent>,
        Arc<Semaphore>,
    ) {
        let (tx, rx) = tokio::io::duplex(1 << 16);
        let (etx, erx) = mpsc::channel(16);
        let b = budget();
        let (_place, shake) = guard
            .admit("192.0.2.1".parse().unwrap(), std::time::Instant::now())
            .unwrap();
        tokio::spawn(reader(
            LinkId(1),
            rx,
            Verifier::new(key.channel()),
            etx,
            b.clone(),
            Arc::new(Counters::default()),
            gate,
            Some(shake),
        ));
        (tx, erx, b)
    }

    async fn next_event(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event in time")
            .expect("the reader reports")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_hello_a_segment_frame_needs_an_open_gate() {
        let key = ChannelKey::from_seed([1; 32]);
        let guard = crate::daemon::guard::Guard::default();
        // A hello, then a 1 MiB frame nobody asked for: refused at its prefix.
        let (mut tx, mut rx, b) = spawn_reader(&key, Arc::default(), &guard);
        tx.write_all(&hello_frame(&key)).await.unwrap();
        assert!(matches!(
            next_event(&mut rx).await,
            LinkEvent::Received { .. }
        ));
        assert_eq!(
            guard.handshakes(),
            0,
            "the hello gives the handshake place back"
        );
        tx.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        match next_event(&mut rx).await {
            LinkEvent::Down {
                why: LinkError::Wire(WireError::TooLong { len, max }),
                ..
            } => assert_eq!((len, max), (1 << 20, MAX_CONTROL_LEN)),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.available_permits(), BODY_BUDGET_KIB);
        // The same segment in pieces is refused the same way.
        let (mut tx, mut rx, _) = spawn_reader(&key, Arc::default(), &guard);
        tx.write_all(&hello_frame(&key)).await.unwrap();
        let _ = next_event(&mut rx).await;
        tx.write_all(&record(BULK_BEGIN, 1 << 20)).await.unwrap();
        assert!(matches!(
            next_event(&mut rx).await,
            LinkEvent::Down {
                why: LinkError::Wire(_),
                ..
            }
        ));
        // Once asked (the gate opened while the reader waits), the segment is taken.
        let gate = Arc::new(FrameGate::default());
        let (mut tx, mut rx, _) = spawn_reader(&key, gate.clone(), &guard);
        tx.write_all(&hello_frame(&key)).await.unwrap();
        let _ = next_event(&mut rx).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.open();
        let seg = key.sign_segment(Seq(4), 0, 1, 0, vec![0x47; 100_000]);
        let mut f = Vec::new();
        encode(&Message::Segment(seg.clone()), &mut f).unwrap();
        tx.write_all(&f).await.unwrap();
        match next_event(&mut rx).await {
            LinkEvent::Received { msg, .. } => assert_eq!(msg, Message::Segment(seg)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_accepted_connection_must_say_hello_first_and_in_time() {
        let key = ChannelKey::from_seed([1; 32]);
        let guard = crate::daemon::guard::Guard::default();
        // Something else first: closed at once.
        let (mut tx, mut rx, _) = spawn_reader(&key, Arc::default(), &guard);
        let mut ka = Vec::new();
        encode(&Message::Ctl(Control::KeepAlive), &mut ka).unwrap();
        tx.write_all(&ka).await.unwrap();
        assert!(matches!(
            next_event(&mut rx).await,
            LinkEvent::Down {
                why: LinkError::NoHello,
                ..
            }
        ));
        // Silence: closed at the deadline, and the handshake place comes back.
        let (_tx, mut rx, _) = spawn_reader(&key, Arc::default(), &guard);
        assert_eq!(guard.handshakes(), 1);
        let t0 = std::time::Instant::now();
        assert!(matches!(
            next_event(&mut rx).await,
            LinkEvent::Down {
                why: LinkError::NoHello,
                ..
            }
        ));
        let took = t0.elapsed();
        assert!(took >= HELLO_DEADLINE && took < HELLO_DEADLINE + Duration::from_secs(1));
        assert_eq!(guard.handshakes(), 0);
    }
}
