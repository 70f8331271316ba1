//! Properties of every parser that reads untrusted bytes, one function per parser.
//!
//! Each function takes arbitrary bytes, runs one parser over them and panics only if a
//! property the rest of the program relies on is broken: a decoded message re-encodes to the
//! same message, a segment the segmenter cuts is whole packets within the size cap, a node
//! fed garbage by a peer keeps its tables within their capacities, and no parser panics or
//! allocates past its cap; and one adversarial driver of the core ([`node_partners`]) that
//! checks a node's invariants after every input from 32 partners saying anything. The fuzz
//! targets in `fuzz/` call these functions (`examples/fuzzdrive.rs` runs them on stable), and
//! `tests/fuzz_corpus.rs` replays the committed corpus through the same functions on stable
//! Rust, so a crash once found stays fixed.

pub mod lan;

use crate::daemon::keys::Verifier;
use crate::media::psi;
use crate::media::segmenter::{CutRule, Segmenter};
use crate::media::ts::{self, PACKET};
use crate::proto::wire::{
    decode_body, encode, frame_len, ChannelId, Control, FrameReader, Hello, Role, SharedBody,
    FRAME_PREFIX_LEN, MAGIC, MAX_CONTROL_LEN, MAX_FRAME_LEN, MAX_SEGMENT_BYTES, VERSION,
};
use crate::proto::{Config, Duration, Input, Instant, LinkId, Message, Node, PeerAddr, PeerId};

/// A property check over untrusted bytes.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (a directory under `fuzz/corpus/` each).
pub const TARGETS: &[(&str, Check)] = &[
    ("wire_frame", wire_frame),
    ("segment_manifest", segment_manifest),
    ("node_input", node_input),
    ("node_partners", node_partners),
    ("ts_segmenter", ts_segmenter),
    ("http_request", http_request),
    ("config_settings", config_settings),
    ("input_url", input_url),
    ("link_records", link_records),
    ("control_request", control_request),
    ("box_config", box_config),
    ("nat_ssdp", nat_ssdp),
    ("nat_description", nat_description),
    ("nat_soap", nat_soap),
    ("nat_pcp", nat_pcp),
];

/// A segment manifest (postcard) followed by bytes taken as its pieces: decoding never panics
/// and allocates no more than the input holds; a manifest that decodes is checked for bounds
/// before its hashes are read and its signature checked; each piece is checked against its hash whatever the index or length a peer claims, and a
/// piece passes only if its bytes hash to the manifest's entry.
pub fn segment_manifest(data: &[u8]) {
    use crate::proto::manifest::{piece_hash, piece_range, Manifest, MAX_PIECES, PIECE_SIZE};
    let Ok((m, rest)) = postcard::take_from_bytes::<Manifest>(data) else {
        return;
    };
    // Each hash took 16 bytes of input: the list is bounded by what was sent.
    assert!(m.hashes.len() * 16 <= data.len());
    let v = Verifier::new(ChannelId(HARNESS_CHANNEL));
    if m.validate().is_err() {
        assert!(m.hashes.len() != m.piece_count() || m.len > MAX_SEGMENT_BYTES);
        assert!(v.check_manifest(&m).is_err());
        return;
    }
    assert!(m.piece_count() <= MAX_PIECES);
    // Only a manifest signed with the harness key (committed seeds) verifies.
    let _ = v.check_manifest(&m);
    // The rest as pieces: each at the index its first byte names, of the length it has.
    let mut at = rest;
    while let Some((&first, tail)) = at.split_first() {
        let index = first as usize % (m.piece_count() + 2);
        let take = tail.len().min(PIECE_SIZE);
        let (piece, next) = tail.split_at(take);
        let ok = m.check_piece(index, piece).is_ok();
        let fits = index < m.piece_count() && piece_range(m.len, index).len() == piece.len();
        assert_eq!(
            ok,
            fits && piece_hash(piece) == m.hashes[index],
            "piece {index} of {m:?}"
        );
        at = next;
    }
    let whole_ok = m.check_all(rest).is_ok();
    if whole_ok {
        assert_eq!(rest.len(), m.len as usize);
    }
}

/// One frame body: decodes without panicking; what decodes re-encodes to a frame that decodes
/// to the same message; the incremental reader agrees with the one-shot decoder.
pub fn wire_frame(data: &[u8]) {
    if data.len() >= FRAME_PREFIX_LEN {
        let mut p = [0u8; FRAME_PREFIX_LEN];
        p.copy_from_slice(&data[..FRAME_PREFIX_LEN]);
        if let Ok(len) = frame_len(p, MAX_FRAME_LEN) {
            assert!(len > 0 && len <= MAX_FRAME_LEN as usize);
        }
    }
    if let Ok(msg) = decode_body(data) {
        match &msg {
            Message::Ctl(c) => {
                assert!(data.len() <= MAX_CONTROL_LEN as usize);
                assert!(c.validate().is_ok());
            }
            Message::Segment(s) => {
                assert!(s.payload.data.len() <= MAX_SEGMENT_BYTES as usize);
                // A forged segment never verifies against a real channel key.
                let v = Verifier::new(ChannelId(HARNESS_CHANNEL));
                let _ = v.verify(s);
            }
        }
        let mut framed = Vec::new();
        encode(&msg, &mut framed).expect("a decoded message encodes");
        let again = decode_body(&framed[FRAME_PREFIX_LEN..]).expect("its encoding decodes");
        assert_eq!(again, msg);
    }
    // The same bytes as a stream, in two pieces: never more buffered than was pushed.
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut r = FrameReader::new(MAX_FRAME_LEN);
    r.push(&data[..split]);
    let mut n = 0;
    while let Ok(Some(_)) = r.next_message() {
        n += 1;
    }
    r.push(&data[split..]);
    while let Ok(Some(_)) = r.next_message() {
        n += 1;
    }
    assert!(r.buffered() <= data.len());
    assert!(n <= data.len() / (FRAME_PREFIX_LEN + 1));
}

/// A channel id that is a valid ed25519 point (the public key of seed [1; 32]).
const HARNESS_CHANNEL: [u8; 32] = [
    0x8a, 0x88, 0xe3, 0xdd, 0x74, 0x09, 0xf1, 0x95, 0xfd, 0x52, 0xdb, 0x2d, 0x3c, 0xba, 0x5d, 0x72,
    0xca, 0x67, 0x09, 0xbf, 0x1d, 0x94, 0x12, 0x1b, 0xf3, 0x74, 0x88, 0x01, 0xb4, 0x0f, 0x6f, 0x5c,
];

/// A peer's byte stream into a node: frames are decoded as the daemon's reader decodes them
/// and handed to a peer node on one link (after a valid hello, so the messages reach every
/// handler), with time moving on between them. The node must neither panic nor let its
/// tables grow past their capacities, whatever the peer says.
pub fn node_input(data: &[u8]) {
    let channel = ChannelId(HARNESS_CHANNEL);
    let mut cfg = Config::new(channel, Role::Peer, 96_000);
    cfg.listen_port = 7000;
    // The reachability handlers run too (dial-back requests, introductions).
    cfg.dial_back = true;
    cfg.hole_punch = true;
    let mut now = Instant::ZERO;
    let mut node: Node<SharedBody> = Node::new(cfg.clone(), PeerId(1), 7, now);
    let link = LinkId(1);
    node.handle_input(
        now,
        Input::LinkUp {
            link,
            remote: PeerAddr::V4([10, 0, 0, 2], 40000),
            outbound: false,
        },
    );
    let hello = Control::Hello(Hello {
        magic: MAGIC,
        version: VERSION,
        channel,
        peer_id: PeerId(2),
        listen_port: 7001,
        role: Role::Peer,
        upload_kbps: 2000,
    });
    node.handle_input(
        now,
        Input::Received {
            link,
            msg: Message::Ctl(hello),
        },
    );
    let mut r = FrameReader::new(MAX_FRAME_LEN);
    r.push(data);
    let mut outputs = 0usize;
    while let Ok(Some(msg)) = r.next_message() {
        now += Duration::from_millis(137);
        node.handle_input(now, Input::Received { link, msg });
        node.handle_timeout(now);
        while node.poll_output().is_some() {
            outputs += 1;
        }
    }
    for _ in 0..4 {
        now += Duration::from_secs(3);
        node.handle_timeout(now);
        while node.poll_output().is_some() {
            outputs += 1;
        }
    }
    let s = node.stats();
    assert!(s.members <= cfg.mcache_capacity);
    assert!(s.partners <= cfg.accept_limit());
    let (a, b, c) = node.queue_lengths();
    assert!(a <= cfg.max_requests && b <= cfg.upload_queue_capacity && c <= cfg.max_links);
    assert!(node.store().len() <= node.store().window());
    let _ = outputs;
}

/// Partners the adversarial node target drives at most.
pub const HOSTILE_PARTNERS: u64 = 32;

/// Reads the fuzzer's bytes as the target's choices; zeros once they run out.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// One node and up to [`HOSTILE_PARTNERS`] partners that say whatever the bytes say:
/// buffer maps, haves, requests, offers, busy answers, declines, subscriptions, segments
/// (whole, and in progress: a manifest, pieces checked, an abort; a segment is what a
/// verifying driver passes on, so any sequence
/// number a source ever signed), positions near a stream position or anywhere in the u32
/// range, partners leaving and coming back, uploads reported sent, and time passing. After
/// every input the node's invariants hold ([`Node::check_invariants`]), and every request it
/// sends goes to a partner that said it holds that segment (in a map, a have or an offer, or
/// by sending it) and is for a segment the node does not hold.
pub fn node_partners(data: &[u8]) {
    node_partners_run(data);
}

/// [`node_partners`], returning how many requests the node sent (each one checked).
pub fn node_partners_run(data: &[u8]) -> usize {
    use crate::proto::buffer_map::{BufferMap, MAX_WINDOW};
    use crate::proto::wire::{SimPayload, MAX_ENTRIES_PER_MESSAGE};
    use crate::proto::{Command, Output, Seq};
    let mut c = Choices(data);
    let channel = ChannelId(HARNESS_CHANNEL);
    let mut cfg = Config::new(channel, Role::Peer, 96_000);
    // A strong uplink: room for the most partners a node ever has.
    cfg.upload_bytes_per_s = 4 * 96_000;
    let flags = c.u8();
    cfg.offers = flags & 1 != 0;
    cfg.substreams = if flags & 2 != 0 { 4 } else { cfg.substreams };
    let n = (c.u8() as u64 % HOSTILE_PARTNERS) + 1;
    let stream = Seq(c.u32());
    let mut now = Instant::ZERO;
    let mut node: Node<SimPayload> = Node::new(cfg.clone(), PeerId(1), c.u32() as u64, now);
    node.command(
        now,
        Command::Join {
            bootstrap: vec![PeerAddr::V4([10, 9, 9, 9], 7000)],
        },
    )
    .expect("a fresh peer joins");
    // What each partner said it holds, as a map a window wide around each statement (a
    // request must be for one of these).
    let mut said: Vec<Vec<Seq>> = vec![Vec::new(); n as usize + 1];
    let mut next_link = 1u64;
    let mut link_of: Vec<Option<LinkId>> = vec![None; n as usize + 1];
    let hello = |k: u64, claim: u32| {
        Control::Hello(Hello {
            magic: MAGIC,
            version: VERSION,
            channel,
            peer_id: PeerId(100 + k),
            listen_port: 7000,
            role: Role::Peer,
            upload_kbps: claim,
        })
    };
    let connect = |node: &mut Node<SimPayload>, now, k: u64, link: LinkId, claim| {
        node.handle_input(
            now,
            Input::LinkUp {
                link,
                remote: PeerAddr::V4([10, 0, 0, k as u8], 7000),
                outbound: false,
            },
        );
        for msg in [hello(k, claim), Control::PartnerRequest { partners: 4 }] {
            node.handle_input(
                now,
                Input::Received {
                    link,
                    msg: Message::Ctl(msg),
                },
            );
        }
    };
    let requests = std::cell::Cell::new(0usize);
    let check = |node: &mut Node<SimPayload>,
                 said: &mut Vec<Vec<Seq>>,
                 link_of: &[Option<LinkId>],
                 what: &str| {
        let partner_of = |l: LinkId| link_of.iter().position(|x| *x == Some(l));
        while let Some(o) = node.poll_output() {
            match o {
                Output::Send {
                    link,
                    msg: Message::Ctl(Control::Request { seq, .. }),
                } => {
                    let k = partner_of(link).expect("a request to a partner link");
                    assert!(
                        said[k].contains(&seq),
                        "{what}: asked partner {k} for {seq:?}, which it never said it holds"
                    );
                    assert!(!node.store().has(seq), "{what}: asked for {seq:?}, held");
                    requests.set(requests.get() + 1);
                }
                Output::Send {
                    link,
                    msg: Message::Segment(sg),
                } => {
                    if let Some(k) = partner_of(link) {
                        said[k].push(sg.seq);
                    }
                }
                _ => {}
            }
        }
        if let Err(e) = node.check_invariants() {
            panic!("{what}: {e}");
        }
        // What partners said is kept to a bounded list (the oldest statements go first,
        // long after the node's map of that partner has slid past them).
        for v in said.iter_mut() {
            if v.len() > 32 * MAX_WINDOW as usize {
                v.drain(..v.len() - 16 * MAX_WINDOW as usize);
            }
        }
    };
    for k in 1..=n {
        let link = LinkId(next_link);
        next_link += 1;
        link_of[k as usize] = Some(link);
        let claim = c.u32();
        connect(&mut node, now, k, link, claim);
        check(&mut node, &mut said, &link_of, "connect");
    }
    let mut steps = 0;
    while !c.done() && steps < 4096 {
        steps += 1;
        let op = c.u8();
        let k = (c.u8() as u64 % n) + 1;
        let pos = |c: &mut Choices| -> Seq {
            match c.u8() % 4 {
                // Near the stream, either way.
                0 | 1 => stream.add(c.u16() as i16 as i32 as u32),
                // Near the stream ahead, a window at most.
                2 => stream.add(c.u8() as u32),
                _ => Seq(c.u32()),
            }
        };
        let Some(link) = link_of[k as usize] else {
            // A partner that left comes back on a new link, claiming anything.
            let link = LinkId(next_link);
            next_link += 1;
            link_of[k as usize] = Some(link);
            said[k as usize].clear();
            let claim = c.u32();
            connect(&mut node, now, k, link, claim);
            check(&mut node, &mut said, &link_of, "reconnect");
            continue;
        };
        let ctl = |msg: Control| Input::Received {
            link,
            msg: Message::Ctl(msg),
        };
        let segment = |seq: Seq, len: u16| crate::proto::wire::Segment {
            seq,
            origin_us: 0,
            duration_us: 1_000_000,
            flags: 0,
            payload: SimPayload {
                len: len as u32 + 1,
                hops: 1,
            },
        };
        let input = match op % 16 {
            0 | 1 => {
                let base = pos(&mut c);
                let mut map = BufferMap::empty(base);
                let mut bits = c.u32() as u64 | (c.u32() as u64) << 32;
                let stride = c.u8() as u32 % 4 + 1;
                let mut at = base;
                while bits != 0 {
                    if bits & 1 != 0 {
                        map.set(at);
                    }
                    bits >>= 1;
                    at = at.add(stride);
                }
                let playing = (c.u8() & 1 != 0).then(|| pos(&mut c));
                let v = &mut said[k as usize];
                v.clear();
                let mut s = map.oldest();
                while let Some(x) = s {
                    if map.has(x) {
                        v.push(x);
                    }
                    s = (Some(x) != map.newest()).then(|| x.next());
                }
                ctl(Control::BufferMap {
                    map,
                    backlog_ms: c.u16(),
                    playing,
                    spare: c.u8() % 8,
                })
            }
            2 | 3 => {
                let seq = pos(&mut c);
                said[k as usize].push(seq);
                ctl(Control::Have {
                    seq,
                    backlog_ms: c.u16(),
                    spare: c.u8() % 8,
                })
            }
            4 => ctl(Control::Request {
                seq: pos(&mut c),
                deadline_ms: c.u32(),
            }),
            5 => {
                let seq = pos(&mut c);
                said[k as usize].push(seq);
                ctl(Control::Offer { seq })
            }
            6 => ctl(Control::Busy {
                seq: pos(&mut c),
                backlog_ms: c.u16(),
            }),
            7 => ctl(Control::Decline { seq: pos(&mut c) }),
            8 => ctl(Control::Subscribe {
                mask: c.u32(),
                from: pos(&mut c),
            }),
            9 => ctl(Control::Unsubscribe { mask: c.u32() }),
            10 => ctl(Control::Cancel { seq: pos(&mut c) }),
            11 => {
                // A segment: whole, or in progress (its manifest, pieces checked so far, or
                // its sender's abort), as the driver reports it.
                let seq = pos(&mut c);
                let len = c.u16();
                match c.u8() % 4 {
                    0 => {
                        said[k as usize].push(seq);
                        Input::Received {
                            link,
                            msg: Message::Segment(segment(seq, len)),
                        }
                    }
                    1 => Input::SegmentBegun {
                        link,
                        segment: segment(seq, len),
                    },
                    2 => Input::PieceArrived {
                        link,
                        seq,
                        pieces_done: c.u8() as u32 % 8,
                    },
                    _ => Input::SegmentAborted { link, seq },
                }
            }
            12 => {
                // The driver found a bad manifest or piece from this partner.
                link_of[k as usize] = None;
                Input::Polluted { link }
            }
            13 => Input::Sent { link },
            14 => {
                if c.u8() & 1 == 0 {
                    link_of[k as usize] = None;
                    Input::LinkDown { link }
                } else {
                    let entries = (0..c.u8() as usize % (MAX_ENTRIES_PER_MESSAGE + 1))
                        .map(|e| crate::proto::wire::MemberEntry {
                            id: PeerId(1000 + e as u64),
                            addr: PeerAddr::V4([10, 1, 0, e as u8], 7000),
                            seq: 1,
                            num_partners: 1,
                            max_partners: 8,
                            ttl_s: 60,
                            reach: crate::proto::Reach::Unknown,
                            v6: None,
                        })
                        .collect();
                    ctl(Control::Members(entries))
                }
            }
            _ => {
                now += Duration::from_millis(c.u16() as u64 % 4000);
                node.handle_timeout(now);
                check(&mut node, &mut said, &link_of, "timeout");
                continue;
            }
        };
        let what = format!("op {} from partner {k}", op % 16);
        node.handle_input(now, input);
        check(&mut node, &mut said, &link_of, &what);
    }
    // Time runs on: timeouts, refinement and rate samples with whatever is in flight.
    for _ in 0..30 {
        now += Duration::from_secs(1);
        node.handle_timeout(now);
        check(&mut node, &mut said, &link_of, "drain");
    }
    requests.get()
}

/// Raw bytes as a live input: resynchronised to packets, cut by the segmenter (both rules),
/// and every packet run through the TS field readers. Cuts are whole packets, within the
/// segment cap, with a duration no longer than twice the target plus one packet's step; they
/// hold every input packet once and in order, with no more added than the PAT and PMT copies
/// in front of each.
pub fn ts_segmenter(data: &[u8]) {
    let mut resync = ts::Resync::new();
    let mut pkts = Vec::new();
    let split = data.len() / 2;
    resync.push(&data[..split], &mut pkts);
    resync.push(&data[split..], &mut pkts);
    resync.finish(&mut pkts);
    assert_eq!(pkts.len() % PACKET, 0);
    for rule in [CutRule::RandomAccess, CutRule::Time] {
        let mut seg = Segmenter::new(200, rule);
        let mut cuts = Vec::new();
        for (i, p) in pkts.chunks_exact(PACKET).enumerate() {
            let p: &[u8; PACKET] = p.try_into().expect("chunks_exact yields whole packets");
            if i == 5 {
                seg.mark_discontinuity();
            }
            if let Some(c) = seg.push(p, i as u64 * 1000) {
                cuts.push(c);
            }
            let _ = (ts::pid(p), ts::payload_unit_start(p), ts::random_access(p));
            let _ = (ts::pcr(p), ts::pat_first_pmt(p), ts::pes_timestamps(p));
            let mut q = *p;
            ts::restamp(&mut q, 90_000);
        }
        cuts.extend(seg.flush());
        for c in &cuts {
            assert_eq!(c.data.len() % PACKET, 0);
            assert!(c.data.len() <= MAX_SEGMENT_BYTES as usize);
        }
        // Every input packet once, in order; added only the PAT and PMT copies at the heads.
        let out: Vec<u8> = cuts.iter().flat_map(|c| c.data.iter().copied()).collect();
        let added = copies_added(&pkts, &out);
        assert!(
            added.is_some_and(|n| n <= cuts.len() * 2 * psi::MAX_SECTION_PACKETS),
            "{added:?} packets added over {} cuts",
            cuts.len()
        );
    }
}

/// Whether `out` holds the packets of `input` in order and whole, their continuity counters
/// aside, with nothing added but table copies (payload-only packets, as the segmenter writes
/// its PAT and PMT copies): how many were added.
pub fn copies_added(input: &[u8], out: &[u8]) -> Option<usize> {
    let same = |a: &[u8], b: &[u8]| a[..3] == b[..3] && a[3] >> 4 == b[3] >> 4 && a[4..] == b[4..];
    let mut rest = input.chunks_exact(PACKET).peekable();
    let mut added = 0;
    for p in out.chunks_exact(PACKET) {
        if rest.peek().is_some_and(|q| same(p, q)) {
            rest.next();
            continue;
        }
        if p[3] & 0x30 != 0x10 || p[1] & 0x80 != 0 || ts::pid(p) == ts::NULL_PID {
            return None;
        }
        added += 1;
    }
    rest.next().is_none().then_some(added)
}

/// An HTTP request head from a player: parsed without panicking, routes well formed.
pub fn http_request(data: &[u8]) {
    use crate::output::http::{parse_request, Route, MAX_REQUEST_HEAD};
    let data = &data[..data.len().min(MAX_REQUEST_HEAD)];
    if let Ok(Some(req)) = parse_request(data) {
        if let Route::Stream(name) = req.route {
            assert!(!name.contains('?') && !name.contains('#'));
        }
    }
}

/// `KEY=VALUE` lines as `sim --set` takes them, applied to a configuration that then drives a
/// source and a peer for a while: a bad value is an error, never a panic later.
pub fn config_settings(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut cfg = Config::new(ChannelId([3; 32]), Role::Peer, 96_000);
    for line in text.lines().take(16) {
        if let Some((k, v)) = line.split_once('=') {
            let _ = cfg.set(k.trim(), v);
        }
    }
    let _ = (cfg.accept_limit(), cfg.partner_target(), cfg.max_children());
    // Absurd sizes are the caller's to refuse; the fuzzer looks for panics in the logic.
    if cfg.window > 4096 || cfg.partners > 64 || cfg.max_partners > 64 {
        return;
    }
    let mut now = Instant::ZERO;
    let mut node: Node<crate::proto::wire::SimPayload> = Node::new(cfg, PeerId(1), 1, now);
    let _ = node.command(
        now,
        crate::proto::Command::Join {
            bootstrap: vec![PeerAddr::V4([10, 0, 0, 1], 1)],
        },
    );
    for _ in 0..8 {
        now += Duration::from_millis(700);
        node.handle_timeout(now);
        while node.poll_output().is_some() {}
    }
}

/// Input and output addresses from the command line: parsed or refused, never a panic.
pub fn input_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = crate::media::rtp::payload(data);
        return;
    };
    let _ = crate::media::input::InputSpec::parse(text);
    let _ = crate::output::udp::UdpOut::parse(text);
    if let Some(id) = ChannelId::from_hex(text) {
        assert_eq!(ChannelId::from_hex(&id.to_hex()), Some(id));
    }
    if let Some(p) = crate::media::rtp::payload(data) {
        assert!(p.len() <= data.len());
    }
}

/// A link's byte stream as the daemon's reader takes it: whole frames, segment frames in
/// pieces with frames between them, and abort records ([`crate::daemon::link::LinkReader`]).
/// The reader never panics, never yields more messages than the bytes could hold, and gives
/// back every byte of the body budget it reserved; a segment in progress is reported only
/// with a checked manifest, its growing body holds only pieces that match the manifest's
/// hashes, in order, and it ends whole (a frame) or aborted, never both. The first byte picks
/// the cap (before or after hello).
pub fn link_records(data: &[u8]) {
    use crate::daemon::link::{Counters, LinkRead, LinkReader, BODY_BUDGET_KIB};
    use crate::proto::growing::Fill;
    use crate::proto::manifest::{piece_hash, piece_range};
    use std::sync::Arc;
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let max = if mode & 1 == 0 {
        MAX_FRAME_LEN
    } else {
        MAX_CONTROL_LEN
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let budget = Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET_KIB));
    let v = Verifier::new(ChannelId(HARNESS_CHANNEL));
    let counters = Counters::default();
    let n = rt.block_on(async {
        let mut rd = stream;
        let mut reader = LinkReader::default();
        let mut n = 0;
        let mut begun = Vec::new();
        let cap = || max;
        while let Ok(r) = reader
            .next_read(&mut rd, &cap, &v, &budget, &counters)
            .await
        {
            match r {
                LinkRead::Frame(msg, _permit) => {
                    if let Message::Ctl(c) = &msg {
                        assert!(c.validate().is_ok());
                    }
                    n += 1;
                }
                LinkRead::Begun(seg) => {
                    assert!(v.check_manifest(&seg.header()).is_ok());
                    begun.push(seg);
                }
                LinkRead::Pieces { seq, .. } | LinkRead::Aborted { seq } => {
                    assert!(begun.iter().any(|s| s.seq == seq));
                }
            }
        }
        drop(reader);
        // Whatever became of them, their bodies hold checked pieces only, and are whole or
        // aborted once the reader is gone.
        for seg in &begun {
            let g = seg.payload.growing.as_ref().expect("a growing body");
            let m = seg.header();
            let mut p = Vec::new();
            let mut k = 0;
            while g.copy_piece(k, &mut p) {
                assert_eq!(p.len(), piece_range(m.len, k as usize).len());
                assert_eq!(piece_hash(&p), m.hashes[k as usize]);
                k += 1;
            }
            match g.fill() {
                Fill::Aborted => {}
                Fill::Pieces(done) => assert_eq!(done, g.piece_count()),
            }
        }
        n
    });
    assert!(n <= stream.len() / (FRAME_PREFIX_LEN + 1));
    assert!(Counters::get(&counters.download_bytes) <= stream.len() as u64);
    assert_eq!(budget.available_permits(), BODY_BUDGET_KIB);
}

/// One control-socket request line: parsing never panics, and what parses is sent back by
/// `to_line` as a line that parses to the same request.
pub fn control_request(data: &[u8]) {
    use crate::control::Request;
    let line = &data[..data.len().min(crate::control::MAX_LINE)];
    match Request::parse(line) {
        Ok(r) => {
            let again = r.to_line();
            assert_eq!(Request::parse(again.trim_end().as_bytes()), Ok(r));
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

/// A box config file: parsing never panics; an error names a place inside the text.
pub fn box_config(data: &[u8]) {
    use crate::config::BoxConfig;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = BoxConfig::parse(text, "fuzz.toml") {
        assert!(!e.message.is_empty());
        if let Some((line, col)) = e.at {
            assert!(line >= 1 && col >= 1);
            assert!(line <= text.lines().count().max(1) + 1, "{e}");
        }
    }
}

/// An SSDP answer from anything on the LAN: a URL comes out only from a datagram within the
/// cap, and it is an http URL on an IPv4 address with a bounded path.
pub fn nat_ssdp(data: &[u8]) {
    use crate::nat::{http, upnp};
    if let Ok(u) = upnp::parse_ssdp(data) {
        assert!(data.len() <= upnp::MAX_SSDP);
        assert!(u.path.starts_with('/') && u.path.len() <= http::MAX_URL + 1);
        assert_eq!(http::parse_url(&u.to_string()).as_ref(), Ok(&u));
    }
}

/// A device description: the control URL it yields is on the host that served it, and the
/// scanner's values stay within their caps.
pub fn nat_description(data: &[u8]) {
    use crate::nat::{http, upnp, xml};
    let from = http::parse_url("http://10.99.1.1:5000/rootDesc.xml").expect("a URL");
    if let Ok((control, service)) = upnp::parse_description(data, &from) {
        assert_eq!(control.addr.ip(), from.addr.ip());
        assert!(service.contains("Connection:"));
    }
    let text = String::from_utf8_lossy(data);
    let services = xml::services(&text);
    assert!(services.len() <= xml::MAX_SERVICES);
    for s in services {
        assert!(s.service_type.len() <= xml::MAX_VALUE && s.control_url.len() <= xml::MAX_VALUE);
    }
    if let Some(v) = xml::first_text(&text, "URLBase") {
        assert!(v.len() <= xml::MAX_VALUE);
    }
}

/// An HTTP answer to a SOAP action, whole or cut anywhere: the body held is within the cap,
/// and what it says is an address, an error with its code, or a clear error.
pub fn nat_soap(data: &[u8]) {
    use crate::nat::{http, upnp};
    for eof in [false, true] {
        if let Ok(Some(a)) = http::parse_answer(data, eof, upnp::MAX_SOAP) {
            assert!(a.body.len() <= upnp::MAX_SOAP && a.body.len() <= data.len());
            if let Ok(body) = upnp::soap_answer("AddPortMapping", a.status, &a.body) {
                let _ = upnp::parse_external_ip(&body);
            }
        }
    }
}

/// A datagram on the PCP/NAT-PMP port: what decodes has the fields its format says, and a
/// PCP MAP answer's nonce is the bytes it carried.
pub fn nat_pcp(data: &[u8]) {
    use crate::nat::pcp;
    if let Ok(pcp::PcpAnswer::Map(m)) = pcp::decode_pcp(data) {
        assert!(data.len() >= 60 && data.len() <= pcp::MAX_PACKET);
        assert_eq!(&m.nonce[..], &data[24..36]);
        assert_eq!(data[3], 0);
    }
    if let Ok(a) = pcp::decode_pmp(data) {
        assert_eq!((data[0], data[2], data[3]), (0, 0, 0));
        if let pcp::PmpAnswer::Map { .. } = a {
            assert!(data.len() >= 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::keys::ChannelKey;

    #[test]
    fn the_partners_harness_reaches_requests_and_checks_them() {
        // Two partners; partner 1 (op 0: a map) holds 64 segments from the stream position
        // on, then time passes (op 15): the node starts there and asks partner 1.
        let mut data = vec![0u8, 1];
        data.extend(1000u32.to_le_bytes()); // stream position
        data.extend(7u32.to_le_bytes()); // node seed
        data.extend([768u32.to_le_bytes(), 768u32.to_le_bytes()].concat()); // claims
        data.extend([0, 0, 2, 0]); // a map from partner 1, based at the stream position
        data.extend([0xff; 8]); // 64 bits held
        data.extend([0, 0, 0, 0, 0]); // stride 1, no play position, backlog 0, spare 0
        for _ in 0..8 {
            data.extend([15, 0, 0xe8, 0x03]); // 1 s passes
        }
        assert!(node_partners_run(&data) > 0);
        // Every committed seed runs; together they reach requests.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/node_partners");
        let total: usize = std::fs::read_dir(dir)
            .expect("the corpus")
            .map(|e| node_partners_run(&std::fs::read(e.expect("entry").path()).expect("a seed")))
            .sum();
        assert!(total > 0);
    }

    #[test]
    fn harness_channel_is_the_key_of_seed_one() {
        assert_eq!(
            ChannelKey::from_seed([1; 32]).channel(),
            ChannelId(HARNESS_CHANNEL)
        );
    }
}

#[cfg(test)]
mod manifest_seeds {
    use crate::daemon::keys::ChannelKey;
    use crate::proto::manifest::PIECE_SIZE;
    use crate::proto::Seq;

    /// Writes the committed seeds of `segment_manifest` (run by hand with `--ignored`): a
    /// manifest signed with the harness key and its pieces, the same with a piece altered,
    /// one hash short, and a length over the cap.
    #[test]
    #[ignore]
    fn write_segment_manifest_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/segment_manifest");
        std::fs::create_dir_all(&dir).unwrap();
        let key = ChannelKey::from_seed([1; 32]);
        assert_eq!(key.channel().0, super::HARNESS_CHANNEL);
        let data: Vec<u8> = (0..2 * PIECE_SIZE + 300).map(|i| (i % 251) as u8).collect();
        let seg = key.sign_segment(Seq(7), 1_000, 1_000_000, 1, data.clone());
        let m = seg.header();
        let framed = |m: &crate::proto::wire::Manifest, pieces: &[(u8, &[u8])]| {
            let mut out = postcard::to_allocvec(m).unwrap();
            for (i, p) in pieces {
                out.push(*i);
                out.extend_from_slice(p);
            }
            out
        };
        let pieces: Vec<(u8, &[u8])> = (0..3)
            .map(|i| {
                let r = crate::proto::manifest::piece_range(m.len, i);
                (i as u8, &data[r])
            })
            .collect();
        std::fs::write(dir.join("signed_pieces"), framed(&m, &pieces)).unwrap();
        let mut bad = data[PIECE_SIZE..2 * PIECE_SIZE].to_vec();
        bad[9] ^= 1;
        std::fs::write(dir.join("bad_piece"), framed(&m, &[(1, &bad)])).unwrap();
        let mut short = m.clone();
        short.hashes.pop();
        std::fs::write(dir.join("hash_short"), framed(&short, &[])).unwrap();
        let mut huge = m.clone();
        huge.len = u32::MAX;
        std::fs::write(dir.join("len_over_cap"), framed(&huge, &[])).unwrap();
        // The wire corpus's segment frames, in this format.
        let wire = dir.parent().unwrap().join("wire_frame");
        let mut f = Vec::new();
        crate::proto::wire::encode(&crate::proto::Message::Segment(seg.clone()), &mut f).unwrap();
        std::fs::write(wire.join("segment"), &f[4..]).unwrap();
        let last = f.len() - 1;
        f[last] ^= 1;
        std::fs::write(wire.join("segment_altered"), &f[4..]).unwrap();
        std::fs::write(
            dir.join("empty"),
            framed(
                &crate::proto::wire::Manifest::for_data(Seq(0), 0, 0, 0, &[]),
                &[(0, b"x")],
            ),
        )
        .unwrap();
    }
}
