//! Properties of every parser that reads untrusted bytes, one function per parser.
//!
//! Each function takes arbitrary bytes, runs one parser over them and panics only if a
//! property the rest of the program relies on is broken: a decoded message re-encodes to the
//! same message, a segment the segmenter cuts is whole packets within the size cap, a node
//! fed garbage by a peer keeps its tables within their capacities, and no parser panics or
//! allocates past its cap. The fuzz targets in `fuzz/` call these functions, and
//! `tests/fuzz_corpus.rs` replays the committed corpus through the same functions on stable
//! Rust, so a crash once found stays fixed.

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
    ("node_input", node_input),
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

/// A link's byte stream as the daemon's reader takes it: whole frames, and segment frames in
/// pieces with frames between them ([`crate::daemon::link::LinkReader`]). The reader never
/// panics, never yields more messages than the bytes could hold, and gives back every byte of
/// the body budget it reserved. The first byte picks the cap (before or after hello).
pub fn link_records(data: &[u8]) {
    use crate::daemon::link::{Counters, LinkReader, BODY_BUDGET_KIB};
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
        while let Ok((msg, _permit)) = reader.next(&mut rd, max, &v, &budget, &counters).await {
            if let Message::Ctl(c) = &msg {
                assert!(c.validate().is_ok());
            }
            n += 1;
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
    fn harness_channel_is_the_key_of_seed_one() {
        assert_eq!(
            ChannelKey::from_seed([1; 32]).channel(),
            ChannelId(HARNESS_CHANNEL)
        );
    }
}
