//! The peer wire protocol: messages, their postcard encoding and the length-checked frame format.
//!
//! A frame is a `u32` big-endian body length followed by the body. The body is a postcard-encoded
//! [`FrameHead`]; for a segment, the media bytes follow the head unencoded, so a relay copies
//! them once. The length is checked against [`MAX_FRAME_LEN`] before anything is allocated for
//! the body, and every list inside a message has its own cap, checked after decoding
//! ([`Control::validate`]). Decoding untrusted bytes never panics.
//!
//! The simulator never encodes: it hands [`Message`] values between nodes and charges each link
//! [`wire_len`] bytes, which is computed from the same postcard encoding.

use super::buffer_map::BufferMap;
use super::growing::GrowingBody;
pub use super::manifest::Manifest;
use super::manifest::{hashes_encoded_len, piece_count, PieceHash};
use super::seq::Seq;
use core::fmt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// First field of every hello: "CoolStream" in spirit, catches a stranger on the port.
pub const MAGIC: u32 = 0xC0015EA7;
/// Wire protocol version; a mismatch closes the link with [`ByeReason::Version`].
pub const VERSION: u16 = 4;
/// Largest media payload of one segment. 4 MiB holds a 2 s segment at 16 Mbit/s (HD IPTV).
pub const MAX_SEGMENT_BYTES: u32 = 4 * 1024 * 1024;
/// Largest frame body: a segment plus its head, with room to spare for the head's fields.
pub const MAX_FRAME_LEN: u32 = MAX_SEGMENT_BYTES + 1024;
/// Largest control frame body (anything but a segment). Membership lists are the biggest.
pub const MAX_CONTROL_LEN: u32 = 8 * 1024;
/// Most membership entries in one message (gossip, redirect, members, reject).
pub const MAX_ENTRIES_PER_MESSAGE: usize = 32;
/// Bytes of a frame's length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// A peer's random 64-bit identity, fresh each start.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct PeerId(pub u64);

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{:016x}", self.0)
    }
}

/// A channel is named by its source's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct ChannelId(pub [u8; 32]);

impl ChannelId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
    /// Parses the 64-hex-character form.
    pub fn from_hex(s: &str) -> Option<ChannelId> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = core::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(ChannelId(out))
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ch:{}", &self.to_hex()[..12])
    }
}

/// Where a peer listens. Kept free of `std::net` so the core stays I/O free; the daemon
/// converts to and from socket addresses.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerAddr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl PeerAddr {
    pub fn port(&self) -> u16 {
        match *self {
            PeerAddr::V4(_, p) | PeerAddr::V6(_, p) => p,
        }
    }
    pub fn with_port(self, port: u16) -> PeerAddr {
        match self {
            PeerAddr::V4(ip, _) => PeerAddr::V4(ip, port),
            PeerAddr::V6(ip, _) => PeerAddr::V6(ip, port),
        }
    }
    /// An IPv6 global unicast address (2000::/3) with a nonzero port: what a member may
    /// advertise as its v6 address.
    pub fn is_global_v6(&self) -> bool {
        matches!(*self, PeerAddr::V6(ip, port) if ip[0] & 0xe0 == 0x20 && port != 0)
    }
    /// Same address family and IP (ports may differ).
    pub fn same_ip(&self, other: &PeerAddr) -> bool {
        match (self, other) {
            (PeerAddr::V4(a, _), PeerAddr::V4(b, _)) => a == b,
            (PeerAddr::V6(a, _), PeerAddr::V6(b, _)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::V4(ip, p) => write!(f, "{}.{}.{}.{}:{p}", ip[0], ip[1], ip[2], ip[3]),
            PeerAddr::V6(ip, p) => {
                write!(f, "[")?;
                for (i, pair) in ip.chunks(2).enumerate() {
                    if i > 0 {
                        write!(f, ":")?;
                    }
                    write!(f, "{:x}", u16::from_be_bytes([pair[0], pair[1]]))?;
                }
                write!(f, "]:{p}")
            }
        }
    }
}

/// An ed25519 signature, as two halves because serde derives arrays only up to 32.
pub type Signature = [[u8; 32]; 2];

/// What a node is in the swarm.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Role {
    Source,
    Peer,
}

/// First message each way on every link.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u16,
    pub channel: ChannelId,
    pub peer_id: PeerId,
    /// The port the sender accepts partners on (its address is the link's remote address).
    pub listen_port: u16,
    pub role: Role,
    /// The sender's upload capacity as it claims it: only a prior for the rate a node
    /// measures (see `partners::Partner::upload_bytes_per_s`), clamped, never trusted on its own.
    pub upload_kbps: u32,
}

/// One mCache record: DONet's `<seq, id, addr, num_partner, ttl>`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MemberEntry {
    pub id: PeerId,
    pub addr: PeerAddr,
    /// The member's own counter: a higher one replaces what we knew.
    pub seq: u32,
    pub num_partners: u8,
    /// Partners the member accepts at most (more for members that upload more).
    pub max_partners: u8,
    /// Seconds the record stays valid from when it is received.
    pub ttl_s: u16,
    /// Whether `addr` accepts connections: what the member found out about itself (a port
    /// mapping, a dial-back). Nobody dials a member whose record says it cannot be dialled.
    pub reach: Reach,
    /// The member's global IPv6 address and port, if it has one: dialled instead of `addr`
    /// by a node that has IPv6 too (home IPv6 is routed, not translated). Always a
    /// [`PeerAddr::V6`] ([`MemberEntry::check`]).
    pub v6: Option<PeerAddr>,
}

/// Whether a member's advertised address can be dialled.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Reach {
    /// Not found out yet (a member that has just joined).
    #[default]
    Unknown,
    /// A dial-back reached it, or its router forwards the port, or it is configured public.
    Reachable,
    /// A dial-back did not reach it: it is behind a NAT or firewall that drops what it did
    /// not ask for. It dials out, and meets others like it by hole punching.
    Unreachable,
}

impl MemberEntry {
    /// Checks what postcard cannot: the port is a port, and `v6` is a global IPv6 unicast
    /// address (2000::/3) with a port.
    pub fn check(&self) -> Result<(), WireError> {
        if self.addr.port() == 0 {
            return Err(WireError::Invalid("member address without a port"));
        }
        match self.v6 {
            None => Ok(()),
            Some(a) if a.is_global_v6() => Ok(()),
            Some(_) => Err(WireError::Invalid(
                "member v6 address not global IPv6 unicast",
            )),
        }
    }
}

/// Why a link was closed by the other side.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ByeReason {
    /// Not our magic number or wire version.
    Version,
    /// The peer is on another channel.
    WrongChannel,
    /// A hello was missing, late or malformed, or a message came before it.
    Protocol,
    /// The sender is leaving the swarm.
    Leaving,
    /// The partnership scored worst and was replaced.
    Refined,
    /// The sender has no room for another link.
    Full,
    /// Silence longer than the heartbeat timeout.
    Timeout,
    /// The sender sent data that failed verification.
    Banned,
    /// The link was only for a query that is now answered.
    Done,
}

/// Everything but media.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Control {
    Hello(Hello),
    /// Closing the link, and why.
    Bye(ByeReason),
    /// To the bootstrap node (origin): "admit me".
    Join,
    /// The origin's answer: ask `deputy` for a fuller view; `members` is a first sample.
    Redirect {
        deputy: Option<MemberEntry>,
        members: Vec<MemberEntry>,
    },
    /// "Send me your mCache" (to a deputy).
    MembersRequest,
    /// Membership records: a deputy's answer, or periodic gossip.
    Members(Vec<MemberEntry>),
    /// `id` has left (sent by the leaver, or on its behalf by a partner that saw it crash).
    Depart {
        id: PeerId,
        seq: u32,
    },
    /// "Be my partner": with how many partners the asker has now (a peer with none or one is
    /// joining or was orphaned, and is let in above the usual limit).
    PartnerRequest {
        partners: u8,
    },
    PartnerAccept,
    /// No room; here are others to try.
    PartnerReject(Vec<MemberEntry>),
    /// The sender's whole window, how long its upload queue would take to drain, and the
    /// segment it plays next (none for the source or a peer not yet playing).
    BufferMap {
        map: BufferMap,
        backlog_ms: u16,
        playing: Option<Seq>,
        /// Substream subscriptions the sender can still take.
        spare: u8,
    },
    /// The sender now holds `seq`.
    Have {
        seq: Seq,
        backlog_ms: u16,
        spare: u8,
    },
    /// "Push me every segment of these substreams (bit j: seq mod K = j) from `from` on."
    Subscribe {
        mask: u32,
        from: Seq,
    },
    /// The answer to a subscribe: which substreams the sender now pushes, which it cannot.
    SubscribeReply {
        accepted: u32,
        refused: u32,
    },
    /// "Stop pushing these substreams."
    Unsubscribe {
        mask: u32,
    },
    /// "Send me `seq`; I need it within `deadline_ms`."
    Request {
        seq: Seq,
        deadline_ms: u32,
    },
    /// An idle supplier offers a segment the receiver lacks; the receiver answers with a
    /// `Request` (taking it) or `Decline`.
    Offer {
        seq: Seq,
    },
    /// "I have it, or have asked someone else for it."
    Decline {
        seq: Seq,
    },
    /// Withdraw a request (the segment came from elsewhere or is too late).
    Cancel {
        seq: Seq,
    },
    /// A request the supplier cannot serve in time (or does not hold).
    Busy {
        seq: Seq,
        backlog_ms: u16,
    },
    KeepAlive,
    /// "Dial me back": a node that does not know whether it can be dialled asks a partner
    /// to connect to the address the link comes from, at `port` (its listen port, or the port
    /// its router forwards), and to send [`Control::DialBackProof`] with `nonce` as that
    /// connection's only frame. Answered with [`Control::DialBackAnswer`].
    DialBackRequest {
        nonce: u64,
        port: u16,
    },
    /// The answer to a dial-back request: the address the link comes from as the answerer
    /// sees it (the asker's external address, as STUN tells it), and whether a dial-back is
    /// on its way (false: the answerer's budget is spent; ask someone else).
    DialBackAnswer {
        observed: PeerAddr,
        dialing: bool,
    },
    /// The first and only frame of a dial-back connection, instead of a hello: the nonce of
    /// the request it answers. The listener reports it and closes the connection.
    DialBackProof {
        nonce: u64,
    },
    /// "I cannot be dialled and want partners: introduce me to a partner of yours who cannot
    /// either." Sent to partners by a node whose reachability is [`Reach::Unreachable`].
    IntroRequest,
    /// A common partner introduces two undialable peers to each other: `id` listens at
    /// `addr` (its external address as the introducer sees it, with its listen port). Both
    /// dial each other at the same moment, `delay_ms` after this arrives (TCP simultaneous
    /// open through both NATs).
    Introduce {
        id: PeerId,
        addr: PeerAddr,
        delay_ms: u16,
    },
}

/// Longest wait an introduction may ask for before the punch (an introducer adds the longer
/// of its two links' one-way delays and a margin to the shorter: a second covers 300 ms
/// round trips with room).
pub const MAX_PUNCH_DELAY_MS: u16 = 2000;

/// Segment flags.
pub mod flags {
    /// Begins with PAT, PMT and a keyframe: a player may start here.
    pub const ENTRY_POINT: u8 = 1;
    /// Follows a break in the source (a loop, a restart).
    pub const DISCONTINUITY: u8 = 2;
}

/// The media payload of a segment, as a handle. The daemon's handle owns bytes once and is
/// shared by the store, every send and every player; the simulator's holds only a length.
pub trait Payload: Clone + fmt::Debug {
    /// Media bytes this handle stands for.
    fn len(&self) -> u32;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The source's signature over the segment's manifest.
    fn signature(&self) -> Signature;
    /// The manifest's piece hashes (the simulator's handle has none: it never checks).
    fn piece_hashes(&self) -> &[PieceHash];
}

/// A numbered piece of the live stream.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Segment<P> {
    pub seq: Seq,
    /// When the source finished ingesting it, in the source's microseconds (lag is measured
    /// against it).
    pub origin_us: u64,
    pub duration_us: u32,
    pub flags: u8,
    pub payload: P,
}

impl<P: Payload> Segment<P> {
    /// The segment's manifest: its head on the wire.
    pub fn header(&self) -> Manifest {
        Manifest {
            hashes: self.payload.piece_hashes().to_vec(),
            ..self.bare_header()
        }
    }

    /// The manifest without its hash list (sizes are computed from it without a copy).
    fn bare_header(&self) -> Manifest {
        Manifest {
            seq: self.seq,
            origin_us: self.origin_us,
            duration_us: self.duration_us,
            flags: self.flags,
            len: self.payload.len(),
            hashes: Vec::new(),
            signature: self.payload.signature(),
        }
    }
}

/// A message between two nodes.
#[derive(Clone, PartialEq, Debug)]
pub enum Message<P> {
    Ctl(Control),
    Segment(Segment<P>),
}

/// The postcard-encoded part of a frame (borrowed form, for encoding).
#[derive(Serialize)]
enum FrameHeadRef<'a> {
    Ctl(&'a Control),
    Segment(&'a Manifest),
}

/// The postcard-encoded part of a frame (owned form, decoded).
#[derive(Deserialize, Debug)]
enum FrameHead {
    Ctl(Control),
    Segment(Manifest),
}

/// What a frame carries, told by its first body byte (postcard's variant index of the
/// frame head) before anything is decoded or the rest of the body is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameKind {
    /// A control message: at most [`MAX_CONTROL_LEN`] bytes.
    Control,
    /// A segment: a header and up to [`MAX_SEGMENT_BYTES`] of media.
    Segment,
}

/// The kind of frame whose body starts with `first`; none for a byte no frame starts with.
pub fn frame_kind(first: u8) -> Option<FrameKind> {
    match first {
        0 => Some(FrameKind::Control),
        1 => Some(FrameKind::Segment),
        _ => None,
    }
}

/// The largest body a frame of `kind` may have.
pub fn max_body_len(kind: FrameKind) -> u32 {
    match kind {
        FrameKind::Control => MAX_CONTROL_LEN,
        FrameKind::Segment => MAX_FRAME_LEN,
    }
}

/// Why bytes from a peer could not be turned into a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WireError {
    /// The length prefix announces more than the cap.
    TooLong { len: u32, max: u32 },
    /// An empty frame.
    Empty,
    /// Postcard could not decode the head.
    Malformed,
    /// A segment whose byte count disagrees with its head, or exceeds the cap.
    BadSegmentLength { declared: u32, actual: usize },
    /// A list longer than its cap, or a field out of range.
    Invalid(&'static str),
    /// A segment manifest out of bounds (its hash count disagrees with its length).
    BadManifest,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLong { len, max } => write!(f, "frame of {len} bytes exceeds cap {max}"),
            WireError::Empty => write!(f, "empty frame"),
            WireError::Malformed => write!(f, "malformed frame"),
            WireError::BadSegmentLength { declared, actual } => {
                write!(f, "segment declares {declared} bytes but carries {actual}")
            }
            WireError::Invalid(what) => write!(f, "invalid message: {what}"),
            WireError::BadManifest => write!(f, "segment manifest out of bounds"),
        }
    }
}
impl std::error::Error for WireError {}

impl Control {
    /// Checks the caps that postcard cannot know about.
    pub fn validate(&self) -> Result<(), WireError> {
        let entries: &[MemberEntry] = match self {
            Control::Redirect { members, deputy } => {
                if let Some(d) = deputy {
                    d.check()?;
                }
                members
            }
            Control::Members(v) | Control::PartnerReject(v) => v,
            Control::BufferMap { map, .. } => {
                map.validate().map_err(WireError::Invalid)?;
                &[]
            }
            Control::DialBackRequest { port, .. } => {
                if *port == 0 {
                    return Err(WireError::Invalid("dial-back request without a port"));
                }
                &[]
            }
            Control::Introduce { addr, delay_ms, .. } => {
                if addr.port() == 0 {
                    return Err(WireError::Invalid("introduction without a port"));
                }
                if *delay_ms > MAX_PUNCH_DELAY_MS {
                    return Err(WireError::Invalid("introduction delay over its cap"));
                }
                &[]
            }
            _ => &[],
        };
        if entries.len() > MAX_ENTRIES_PER_MESSAGE {
            return Err(WireError::Invalid("too many membership entries"));
        }
        for e in entries {
            e.check()?;
        }
        Ok(())
    }
}

/// Segment bytes as the daemon holds them: the manifest's hashes and signature and the media,
/// allocated once and shared. A segment still arriving has no `data` yet but a `growing`
/// body that fills as its pieces are checked (see [`super::growing`]): what an upload of it
/// forwards, piece by piece.
#[derive(Clone)]
pub struct SegmentBody {
    pub hashes: Vec<PieceHash>,
    pub signature: Signature,
    pub data: Vec<u8>,
    pub growing: Option<Arc<GrowingBody>>,
}

impl PartialEq for SegmentBody {
    fn eq(&self, other: &Self) -> bool {
        self.hashes == other.hashes
            && self.signature == other.signature
            && self.data == other.data
            && match (&self.growing, &other.growing) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}
impl Eq for SegmentBody {}

impl fmt::Debug for SegmentBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentBody({} bytes)", self.data.len())
    }
}

/// The daemon's payload handle.
pub type SharedBody = Arc<SegmentBody>;

impl Payload for SharedBody {
    fn len(&self) -> u32 {
        match &self.growing {
            Some(g) => g.len(),
            None => self.data.len() as u32,
        }
    }
    fn signature(&self) -> Signature {
        self.signature
    }
    fn piece_hashes(&self) -> &[PieceHash] {
        &self.hashes
    }
}

fn head_len<P: Payload>(msg: &Message<P>) -> usize {
    let r = match msg {
        Message::Ctl(c) => postcard::experimental::serialized_size(&FrameHeadRef::Ctl(c)),
        Message::Segment(s) => {
            postcard::experimental::serialized_size(&FrameHeadRef::Segment(&s.bare_header()))
                .map(|n| n + hashes_encoded_len(piece_count(s.payload.len())))
        }
    };
    // Serializing into a size counter cannot fail for these types (no maps of unknown length).
    r.unwrap_or(0)
}

/// Bytes this message occupies on a link: prefix, head and payload.
pub fn wire_len<P: Payload>(msg: &Message<P>) -> usize {
    let payload = match msg {
        Message::Segment(s) => s.payload.len() as usize,
        Message::Ctl(_) => 0,
    };
    FRAME_PREFIX_LEN + head_len(msg) + payload
}

/// Appends one frame to `out`.
pub fn encode(msg: &Message<SharedBody>, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_PREFIX_LEN]);
    let header;
    let head = match msg {
        Message::Ctl(c) => FrameHeadRef::Ctl(c),
        Message::Segment(s) => {
            header = s.header();
            FrameHeadRef::Segment(&header)
        }
    };
    let mut buf = core::mem::take(out);
    buf = postcard::to_extend(&head, buf).map_err(|_| WireError::Malformed)?;
    if let Message::Segment(s) = msg {
        buf.extend_from_slice(&s.payload.data);
    }
    let body_len = buf.len() - start - FRAME_PREFIX_LEN;
    if body_len > MAX_FRAME_LEN as usize {
        buf.truncate(start);
        *out = buf;
        return Err(WireError::TooLong {
            len: body_len as u32,
            max: MAX_FRAME_LEN,
        });
    }
    buf[start..start + FRAME_PREFIX_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    *out = buf;
    Ok(())
}

/// Reads a length prefix and checks it against `max` before the caller allocates the body.
pub fn frame_len(prefix: [u8; FRAME_PREFIX_LEN], max: u32) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix);
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    Ok(len as usize)
}

/// Decodes one frame body (the bytes after the prefix).
pub fn decode_body(body: &[u8]) -> Result<Message<SharedBody>, WireError> {
    if body.is_empty() {
        return Err(WireError::Empty);
    }
    // The length is checked against the kind's cap before a byte is decoded: a control
    // message's decoder never sees (nor allocates for) more than MAX_CONTROL_LEN bytes.
    let kind = frame_kind(body[0]).ok_or(WireError::Malformed)?;
    let max = max_body_len(kind);
    if body.len() > max as usize {
        return Err(WireError::TooLong {
            len: body.len().min(u32::MAX as usize) as u32,
            max,
        });
    }
    let (head, rest): (FrameHead, &[u8]) =
        postcard::take_from_bytes(body).map_err(|_| WireError::Malformed)?;
    match head {
        FrameHead::Ctl(c) => {
            if !rest.is_empty() {
                return Err(WireError::Invalid("trailing bytes after control message"));
            }
            c.validate()?;
            Ok(Message::Ctl(c))
        }
        FrameHead::Segment(h) => {
            if h.len > MAX_SEGMENT_BYTES || h.len as usize != rest.len() {
                return Err(WireError::BadSegmentLength {
                    declared: h.len,
                    actual: rest.len(),
                });
            }
            // The hash list's length is bounded by the frame (16 bytes each); its count must
            // match the length before anything is checked against it.
            h.validate().map_err(|_| WireError::BadManifest)?;
            Ok(Message::Segment(Segment {
                seq: h.seq,
                origin_us: h.origin_us,
                duration_us: h.duration_us,
                flags: h.flags,
                payload: Arc::new(SegmentBody {
                    hashes: h.hashes,
                    signature: h.signature,
                    data: rest.to_vec(),
                    growing: None,
                }),
            }))
        }
    }
}

/// A segment frame's manifest from the first bytes of its body, and the bytes it takes:
/// `Ok(None)` while they do not hold it whole (or the frame is not a segment). Lets a driver
/// check the manifest, and then each piece, while the rest of the body is still arriving.
pub fn segment_head(prefix: &[u8]) -> Result<Option<(Manifest, usize)>, WireError> {
    match postcard::take_from_bytes::<FrameHead>(prefix) {
        Ok((FrameHead::Segment(h), rest)) => {
            if h.len > MAX_SEGMENT_BYTES {
                return Err(WireError::BadSegmentLength {
                    declared: h.len,
                    actual: rest.len(),
                });
            }
            h.validate().map_err(|_| WireError::BadManifest)?;
            Ok(Some((h, prefix.len() - rest.len())))
        }
        Ok((FrameHead::Ctl(_), _)) => Ok(None),
        Err(postcard::Error::DeserializeUnexpectedEnd) => Ok(None),
        Err(_) => Err(WireError::Malformed),
    }
}

/// Incremental frame reader over a byte stream, for drivers that read in chunks.
/// Holds at most one frame's worth of bytes; a prefix over the cap is an error at once.
pub struct FrameReader {
    buf: Vec<u8>,
    max: u32,
}

impl FrameReader {
    pub fn new(max: u32) -> Self {
        FrameReader {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message<SharedBody>>, WireError> {
        if self.buf.len() < FRAME_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; FRAME_PREFIX_LEN];
        prefix.copy_from_slice(&self.buf[..FRAME_PREFIX_LEN]);
        let len = frame_len(prefix, self.max)?;
        if self.buf.len() < FRAME_PREFIX_LEN + len {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len]);
        self.buf.drain(..FRAME_PREFIX_LEN + len);
        msg.map(Some)
    }

    /// Bytes held but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The simulator's payload: a length, no bytes. Every node's store and every message share
/// nothing but this number, so 10,000 simulated peers cost no media memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SimPayload {
    pub len: u32,
    /// Hops from the source so far (the simulator counts them; no node reads this).
    pub hops: u16,
}

impl Payload for SimPayload {
    fn len(&self) -> u32 {
        self.len
    }
    fn signature(&self) -> Signature {
        [[0; 32]; 2]
    }
    fn piece_hashes(&self) -> &[PieceHash] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> MemberEntry {
        MemberEntry {
            id: PeerId(i),
            addr: PeerAddr::V4([10, 0, 0, i as u8], 7000),
            seq: 3,
            num_partners: 4,
            max_partners: 8,
            ttl_s: 30,
            reach: if i % 2 == 0 {
                Reach::Reachable
            } else {
                Reach::Unreachable
            },
            v6: (i % 3 == 0).then_some(PeerAddr::V6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i as u8],
                7000,
            )),
        }
    }

    pub(crate) fn sample_messages() -> Vec<Message<SharedBody>> {
        let mut bm = BufferMap::empty(Seq(u32::MAX - 3));
        bm.set(Seq(u32::MAX - 1));
        bm.set(Seq(2));
        vec![
            Message::Ctl(Control::Hello(Hello {
                magic: MAGIC,
                version: VERSION,
                channel: ChannelId([7; 32]),
                peer_id: PeerId(42),
                listen_port: 7000,
                role: Role::Peer,
                upload_kbps: 768,
            })),
            Message::Ctl(Control::Join),
            Message::Ctl(Control::Redirect {
                deputy: Some(entry(1)),
                members: (0..5).map(entry).collect(),
            }),
            Message::Ctl(Control::Members((0..32).map(entry).collect())),
            Message::Ctl(Control::BufferMap {
                map: bm,
                backlog_ms: 120,
                playing: Some(Seq(7)),
                spare: 3,
            }),
            Message::Ctl(Control::Subscribe {
                mask: 0b1010,
                from: Seq(77),
            }),
            Message::Ctl(Control::SubscribeReply {
                accepted: 2,
                refused: 8,
            }),
            Message::Ctl(Control::Have {
                seq: Seq(9),
                backlog_ms: 0,
                spare: 0,
            }),
            Message::Ctl(Control::Request {
                seq: Seq(9),
                deadline_ms: 4000,
            }),
            Message::Ctl(Control::Bye(ByeReason::WrongChannel)),
            Message::Ctl(Control::DialBackRequest {
                nonce: 0x0123_4567_89ab_cdef,
                port: 7000,
            }),
            Message::Ctl(Control::DialBackAnswer {
                observed: PeerAddr::V4([198, 51, 100, 7], 40123),
                dialing: true,
            }),
            Message::Ctl(Control::DialBackProof { nonce: u64::MAX }),
            Message::Ctl(Control::IntroRequest),
            Message::Ctl(Control::Introduce {
                id: PeerId(9),
                addr: PeerAddr::V4([203, 0, 113, 5], 7000),
                delay_ms: 850,
            }),
            Message::Segment(Segment {
                seq: Seq(9),
                origin_us: 123_456_789,
                duration_us: 1_000_000,
                flags: flags::ENTRY_POINT,
                payload: Arc::new(SegmentBody {
                    hashes: vec![[3; 16]],
                    signature: [[1; 32], [2; 32]],
                    data: (0..5000u32).map(|i| i as u8).collect(),
                    growing: None,
                }),
            }),
            Message::Segment(Segment {
                seq: Seq(10),
                origin_us: 123_456_789,
                duration_us: 1_000_000,
                flags: 0,
                payload: Arc::new(SegmentBody {
                    hashes: vec![[4; 16]; 3],
                    signature: [[1; 32], [2; 32]],
                    data: (0..40_000u32).map(|i| i as u8).collect(),
                    growing: None,
                }),
            }),
        ]
    }

    #[test]
    fn a_manifest_whose_hash_count_disagrees_with_its_length_is_refused() {
        let seg = Segment {
            seq: Seq(1),
            origin_us: 0,
            duration_us: 1,
            flags: 0,
            payload: Arc::new(SegmentBody {
                hashes: vec![[0; 16]; 2],
                signature: [[0; 32]; 2],
                data: vec![0; 40_000],
                growing: None,
            }),
        };
        let mut out = Vec::new();
        encode(&Message::Segment(seg), &mut out).unwrap();
        assert_eq!(
            decode_body(&out[FRAME_PREFIX_LEN..]),
            Err(WireError::BadManifest)
        );
    }

    #[test]
    fn every_message_round_trips_and_wire_len_is_exact() {
        for msg in sample_messages() {
            let mut out = Vec::new();
            encode(&msg, &mut out).unwrap();
            assert_eq!(out.len(), wire_len(&msg), "{msg:?}");
            let mut r = FrameReader::new(MAX_FRAME_LEN);
            // Feed byte by byte: the reader must cope with any split.
            let mut got = None;
            for b in &out {
                r.push(&[*b]);
                if let Some(m) = r.next_message().unwrap() {
                    got = Some(m);
                }
            }
            assert_eq!(got.as_ref(), Some(&msg));
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        assert_eq!(
            frame_len([0xff, 0xff, 0xff, 0xff], MAX_FRAME_LEN),
            Err(WireError::TooLong {
                len: u32::MAX,
                max: MAX_FRAME_LEN
            })
        );
        let mut r = FrameReader::new(MAX_CONTROL_LEN);
        r.push(&[0, 1, 0, 0, 1, 2, 3]);
        assert!(matches!(r.next_message(), Err(WireError::TooLong { .. })));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut rng = crate::proto::rng::Rng::new(5);
        for _ in 0..20_000 {
            let n = rng.below(64) + 1;
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let _ = decode_body(&bytes);
        }
        // A segment head that lies about its length.
        let msgs = sample_messages();
        let msg = msgs
            .iter()
            .find(|m| matches!(m, Message::Segment(_)))
            .expect("the samples hold a segment");
        let mut out = Vec::new();
        encode(msg, &mut out).unwrap();
        out.pop();
        assert!(matches!(
            decode_body(&out[FRAME_PREFIX_LEN..]),
            Err(WireError::BadSegmentLength { .. })
        ));
    }

    #[test]
    fn a_control_frame_over_its_cap_is_refused_before_it_is_decoded() {
        // Every message's first body byte tells its kind.
        for msg in sample_messages() {
            let mut out = Vec::new();
            encode(&msg, &mut out).unwrap();
            let want = match msg {
                Message::Ctl(_) => FrameKind::Control,
                Message::Segment(_) => FrameKind::Segment,
            };
            assert_eq!(frame_kind(out[FRAME_PREFIX_LEN]), Some(want), "{msg:?}");
        }
        // A control frame one byte over the cap: refused for its length, not decoded (the
        // bytes after the tag are no message at all).
        let mut body = vec![0xffu8; MAX_CONTROL_LEN as usize + 1];
        body[0] = 0;
        assert_eq!(
            decode_body(&body),
            Err(WireError::TooLong {
                len: MAX_CONTROL_LEN + 1,
                max: MAX_CONTROL_LEN
            })
        );
        // At the cap, the same bytes are decoded (and found malformed).
        body.pop();
        assert_eq!(decode_body(&body), Err(WireError::Malformed));
        // A first byte no frame starts with.
        assert_eq!(decode_body(&[7, 0, 0]), Err(WireError::Malformed));
    }

    #[test]
    fn too_many_entries_are_rejected() {
        let msg: Message<SharedBody> = Message::Ctl(Control::Members((0..33).map(entry).collect()));
        let mut out = Vec::new();
        encode(&msg, &mut out).unwrap();
        assert_eq!(
            decode_body(&out[FRAME_PREFIX_LEN..]),
            Err(WireError::Invalid("too many membership entries"))
        );
    }

    #[test]
    fn reachability_fields_are_checked_when_decoded() {
        let refused = |c: Control| {
            let mut out = Vec::new();
            encode(&Message::Ctl(c), &mut out).unwrap();
            decode_body(&out[FRAME_PREFIX_LEN..])
        };
        let mut e = entry(1);
        e.v6 = Some(PeerAddr::V6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            7000,
        ));
        assert_eq!(
            refused(Control::Members(vec![entry(2), e])),
            Err(WireError::Invalid(
                "member v6 address not global IPv6 unicast"
            ))
        );
        e.v6 = Some(PeerAddr::V4([203, 0, 113, 1], 7000));
        assert!(refused(Control::PartnerReject(vec![e])).is_err());
        let mut deputy = entry(3);
        deputy.addr = deputy.addr.with_port(0);
        assert_eq!(
            refused(Control::Redirect {
                deputy: Some(deputy),
                members: vec![]
            }),
            Err(WireError::Invalid("member address without a port"))
        );
        assert!(refused(Control::DialBackRequest { nonce: 1, port: 0 }).is_err());
        let introduce = |delay_ms, port| Control::Introduce {
            id: PeerId(4),
            addr: PeerAddr::V4([203, 0, 113, 4], port),
            delay_ms,
        };
        assert_eq!(
            refused(introduce(MAX_PUNCH_DELAY_MS + 1, 7000)),
            Err(WireError::Invalid("introduction delay over its cap"))
        );
        assert!(refused(introduce(100, 0)).is_err());
        assert!(refused(introduce(MAX_PUNCH_DELAY_MS, 7000)).is_ok());
    }

    #[test]
    fn channel_hex_round_trips() {
        let c = ChannelId([0xab; 32]);
        assert_eq!(ChannelId::from_hex(&c.to_hex()), Some(c));
        assert_eq!(ChannelId::from_hex("zz"), None);
        assert_eq!(ChannelId::from_hex(&"g".repeat(64)), None);
    }
}
