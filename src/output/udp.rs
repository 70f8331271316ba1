//! The UDP output: the played stream as MPEG-TS datagrams of seven packets (1316 bytes), bare
//! (`udp://HOST:PORT`) or in RTP (`rtp://HOST:PORT`, payload type 33, 90 kHz timestamps),
//! unicast or multicast (`?ttl=N&iface=ADDR` for IPv4 multicast). Each segment's datagrams are
//! spread evenly over its duration, so a hardware decoder's small buffer is not flooded.

use super::{Feed, FeedItem};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// TS bytes per datagram: seven packets, the usual IPTV size.
pub const DATAGRAM_TS: usize = 7 * 188;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpOut {
    pub dest: SocketAddr,
    pub rtp: bool,
    pub ttl: Option<u32>,
    pub iface: Option<Ipv4Addr>,
}

impl UdpOut {
    pub fn parse(s: &str) -> Result<UdpOut, String> {
        let (rtp, rest) = if let Some(r) = s.strip_prefix("udp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("rtp://") {
            (true, r)
        } else {
            return Err(format!("'{s}' is not udp://HOST:PORT or rtp://HOST:PORT"));
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let dest: SocketAddr = addr
            .parse()
            .map_err(|_| format!("'{s}': expected ADDR:PORT (IPv6 as [ADDR]:PORT)"))?;
        let mut out = UdpOut {
            dest,
            rtp,
            ttl: None,
            iface: None,
        };
        for q in query.split('&').filter(|q| !q.is_empty()) {
            match q.split_once('=') {
                Some(("ttl", v)) => {
                    out.ttl = Some(v.parse().map_err(|_| format!("'{s}': bad ttl"))?)
                }
                Some(("iface", v)) => {
                    out.iface = Some(v.parse().map_err(|_| format!("'{s}': bad iface"))?)
                }
                _ => return Err(format!("'{s}': unknown option '{q}'")),
            }
        }
        Ok(out)
    }
}

/// Sends the feed to `out` until the feed closes or the socket fails.
pub async fn run(out: UdpOut, feed: Arc<Feed>) -> std::io::Result<()> {
    let bind: SocketAddr = match out.dest.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    if let Some(ttl) = out.ttl {
        if out.dest.ip().is_multicast() {
            sock.set_multicast_ttl_v4(ttl)?;
        } else {
            sock.set_ttl(ttl)?;
        }
    }
    if let Some(iface) = out.iface {
        socket2::SockRef::from(&sock).set_multicast_if_v4(&iface)?;
    }
    let (start, mut rx) = feed.subscribe();
    let mut rtp = Rtp::new();
    let mut next = tokio::time::Instant::now();
    for item in start {
        next = send_segment(&sock, &out, &mut rtp, &item, next).await?;
    }
    loop {
        match rx.recv().await {
            Ok(item) => next = send_segment(&sock, &out, &mut rtp, &item, next).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                log::info!("udp output fell {n} segments behind");
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// RTP header state.
struct Rtp {
    seq: u16,
    ssrc: u32,
}

impl Rtp {
    fn new() -> Self {
        let mut b = [0u8; 6];
        let _ = getrandom::fill(&mut b);
        Rtp {
            seq: u16::from_le_bytes([b[0], b[1]]),
            ssrc: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
        }
    }

    fn header(&mut self, ts90k: u32) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = 0x80;
        h[1] = 33;
        h[2..4].copy_from_slice(&self.seq.to_be_bytes());
        h[4..8].copy_from_slice(&ts90k.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        h
    }
}

/// Sends one segment's datagrams spread over its duration from `start` (or now, if that has
/// passed); returns when the next segment should start.
async fn send_segment(
    sock: &tokio::net::UdpSocket,
    out: &UdpOut,
    rtp: &mut Rtp,
    item: &FeedItem,
    start: tokio::time::Instant,
) -> std::io::Result<tokio::time::Instant> {
    let FeedItem::Segment(s) = item else {
        return Ok(start);
    };
    let now = tokio::time::Instant::now();
    let start = start.max(now);
    let data = &s.payload.data;
    let n = data.len().div_ceil(DATAGRAM_TS).max(1) as u32;
    let dur = Duration::from_micros(s.duration_us as u64);
    let mut buf = Vec::with_capacity(12 + DATAGRAM_TS);
    for (i, chunk) in data.chunks(DATAGRAM_TS).enumerate() {
        let due = start + dur * i as u32 / n;
        tokio::time::sleep_until(due).await;
        buf.clear();
        if out.rtp {
            // 90 kHz media clock from the segment's origin stamp and the datagram's offset.
            let offset_us = dur.as_micros() as u64 * i as u64 / n as u64;
            let ts90k = (s.origin_us.wrapping_add(offset_us).wrapping_mul(9) / 100) as u32;
            buf.extend_from_slice(&rtp.header(ts90k));
        }
        buf.extend_from_slice(chunk);
        // A dropped datagram (full socket buffer, no route yet) is the network's business.
        if let Err(e) = sock.send_to(&buf, out.dest).await {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
    }
    Ok(start + dur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_urls_parse() {
        let o = UdpOut::parse("rtp://239.0.0.1:5004?ttl=4&iface=10.0.0.2").unwrap();
        assert!(o.rtp);
        assert_eq!(o.ttl, Some(4));
        assert_eq!(o.iface, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(
            UdpOut::parse("udp://127.0.0.1:1234").unwrap().dest,
            "127.0.0.1:1234".parse().unwrap()
        );
        assert!(UdpOut::parse("udp://x").is_err());
        assert!(UdpOut::parse("http://1.2.3.4:5").is_err());
        assert!(UdpOut::parse("udp://1.2.3.4:5?what=1").is_err());
    }
}
