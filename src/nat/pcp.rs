//! NAT-PMP (RFC 6886) and PCP (RFC 6887) on the default gateway's UDP port 5351: the
//! packets, checked field by field before anything in them is used, and the exchange with
//! its bounded retransmission.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::NatError;

/// The port both protocols listen on.
pub const PORT: u16 = 5351;
/// The largest PCP message (RFC 6887 §7: 1100 bytes); NAT-PMP answers are 16 at most.
pub const MAX_PACKET: usize = 1100;
/// NAT-PMP's transport protocol code for TCP, and PCP's (IANA protocol number).
const PMP_OP_TCP: u8 = 2;
const PCP_PROTO_TCP: u8 = 6;
const PCP_OP_MAP: u8 = 1;

/// NAT-PMP's first wait (RFC 6886 §3.1: 250 ms, doubling on each retransmission).
pub const PMP_FIRST_WAIT: Duration = Duration::from_millis(250);
/// PCP's first wait (RFC 6887 §8.1.1: IRT = 3 s, doubling).
pub const PCP_FIRST_WAIT: Duration = Duration::from_secs(3);

fn result_text(pcp: bool, code: u16) -> &'static str {
    match (pcp, code) {
        (_, 1) => "unsupported version",
        (false, 2) => "not authorized or refused",
        (false, 3) => "network failure (the router has no usable external address)",
        (false, 4) => "out of resources",
        (false, 5) => "unsupported opcode",
        (true, 2) => "not authorized",
        (true, 3) => "malformed request",
        (true, 4) => "unsupported opcode",
        (true, 5) => "unsupported option",
        (true, 6) => "malformed option",
        (true, 7) => "network failure (the router has no usable external address)",
        (true, 8) => "no resources",
        (true, 9) => "unsupported protocol",
        (true, 10) => "user exceeded quota",
        (true, 11) => "cannot provide the external address or port",
        (true, 12) => "address mismatch",
        (true, 13) => "excessive remote peers",
        _ => "unknown result",
    }
}

/// A NAT-PMP answer, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmpAnswer {
    Address {
        epoch: u32,
        ip: Ipv4Addr,
    },
    Map {
        epoch: u32,
        internal: u16,
        external: u16,
        lifetime: u32,
    },
}

/// The external-address request.
pub fn pmp_address_request() -> [u8; 2] {
    [0, 0]
}

/// A TCP mapping request (lifetime 0 deletes).
pub fn pmp_map_request(internal: u16, external: u16, lifetime: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[1] = PMP_OP_TCP;
    b[4..6].copy_from_slice(&internal.to_be_bytes());
    b[6..8].copy_from_slice(&external.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// Decodes a NAT-PMP answer; a non-zero result code is an error that says what it means.
pub fn decode_pmp(b: &[u8]) -> Result<PmpAnswer, String> {
    if b.len() < 8 {
        return Err(format!("a NAT-PMP answer of {} bytes", b.len()));
    }
    if b[0] != 0 {
        return Err(format!("NAT-PMP version {}", b[0]));
    }
    let op = b[1];
    if op & 0x80 == 0 {
        return Err("a NAT-PMP request, not an answer".into());
    }
    let code = u16::from_be_bytes([b[2], b[3]]);
    if code != 0 {
        return Err(format!(
            "NAT-PMP result {code}: {}",
            result_text(false, code)
        ));
    }
    let epoch = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    match op & 0x7f {
        0 if b.len() >= 12 => Ok(PmpAnswer::Address {
            epoch,
            ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
        }),
        1 | PMP_OP_TCP if b.len() >= 16 => Ok(PmpAnswer::Map {
            epoch,
            internal: u16::from_be_bytes([b[8], b[9]]),
            external: u16::from_be_bytes([b[10], b[11]]),
            lifetime: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        }),
        o => Err(format!(
            "a NAT-PMP answer to opcode {o} of {} bytes",
            b.len()
        )),
    }
}

/// The 12-byte nonce that names a PCP mapping (RFC 6887 §11.1): it refreshes and deletes it.
pub type Nonce = [u8; 12];

/// A PCP MAP request for TCP.
pub fn pcp_map_request(
    client: Ipv4Addr,
    nonce: &Nonce,
    internal: u16,
    suggested: SocketAddrV4,
    lifetime: u32,
) -> [u8; 60] {
    let mut b = [0u8; 60];
    b[0] = 2;
    b[1] = PCP_OP_MAP;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    b[24..36].copy_from_slice(nonce);
    b[36] = PCP_PROTO_TCP;
    b[40..42].copy_from_slice(&internal.to_be_bytes());
    b[42..44].copy_from_slice(&suggested.port().to_be_bytes());
    b[44..60].copy_from_slice(&suggested.ip().to_ipv6_mapped().octets());
    b
}

/// A PCP MAP answer, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcpMap {
    pub lifetime: u32,
    pub epoch: u32,
    pub nonce: Nonce,
    pub internal: u16,
    pub external: SocketAddr,
}

/// What came back to a PCP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcpAnswer {
    Map(PcpMap),
    /// A NAT-PMP-only server's answer to version 2 (RFC 6887 §9): ask again with NAT-PMP.
    NatPmpOnly,
}

/// Decodes a PCP MAP answer; a non-zero result code is an error that says what it means.
pub fn decode_pcp(b: &[u8]) -> Result<PcpAnswer, String> {
    if b.len() >= 4 && b[0] == 0 && u16::from_be_bytes([b[2], b[3]]) == 1 {
        return Ok(PcpAnswer::NatPmpOnly);
    }
    if b.len() < 24 || b.len() > MAX_PACKET || b.len() % 4 != 0 {
        return Err(format!("a PCP answer of {} bytes", b.len()));
    }
    if b[0] != 2 {
        return Err(format!("PCP version {}", b[0]));
    }
    if b[1] != 0x80 | PCP_OP_MAP {
        return Err(format!("PCP opcode {:#04x}, not a MAP answer", b[1]));
    }
    let code = b[3] as u16;
    if code != 0 {
        return Err(format!("PCP result {code}: {}", result_text(true, code)));
    }
    if b.len() < 60 {
        return Err(format!("a PCP MAP answer of {} bytes", b.len()));
    }
    let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&b[24..36]);
    if b[36] != PCP_PROTO_TCP {
        return Err(format!("a PCP mapping for protocol {}", b[36]));
    }
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[44..60]);
    let ip = Ipv6Addr::from(ip);
    let port = u16::from_be_bytes([b[42], b[43]]);
    let external = match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(v4.into(), port),
        None => SocketAddr::new(ip.into(), port),
    };
    Ok(PcpAnswer::Map(PcpMap {
        lifetime: be32(4),
        epoch: be32(8),
        nonce,
        internal: u16::from_be_bytes([b[40], b[41]]),
        external,
    }))
}

/// A UDP socket connected to the gateway's port 5351 (an ICMP "port unreachable" then ends
/// the wait at once), and this host's address towards it.
pub async fn socket(gateway: Ipv4Addr) -> Result<(UdpSocket, Ipv4Addr), NatError> {
    let io = |e: std::io::Error| NatError::Io(format!("UDP to {gateway}:{PORT}: {e}"));
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(io)?;
    s.connect((gateway, PORT)).await.map_err(io)?;
    let local = match s.local_addr().map_err(io)? {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    Ok((s, local))
}

/// Sends `req` and waits `first`, then twice as long, ... `tries` times in all, for an answer
/// that `accept` takes (`Some`); other datagrams are ignored. What `accept` rejects with an
/// error ends the exchange with it.
pub async fn exchange<T>(
    sock: &UdpSocket,
    req: &[u8],
    first: Duration,
    tries: u32,
    what: &str,
    mut accept: impl FnMut(&[u8]) -> Option<Result<T, String>>,
) -> Result<T, NatError> {
    let mut wait = first;
    let mut buf = [0u8; MAX_PACKET];
    for _ in 0..tries.max(1) {
        sock.send(req).await.map_err(|e| refused(what, e))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(refused(what, e)),
                Ok(Ok(n)) => match accept(&buf[..n]) {
                    Some(Ok(t)) => return Ok(t),
                    Some(Err(e)) => return Err(NatError::Refused(format!("{what}: {e}"))),
                    None => {}
                },
            }
        }
        wait = wait.saturating_mul(2);
    }
    Err(NatError::Timeout(format!(
        "{what}: no answer after {} tries",
        tries.max(1)
    )))
}

fn refused(what: &str, e: std::io::Error) -> NatError {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        NatError::NoRouter(format!(
            "{what}: nothing listens on the gateway's port {PORT}"
        ))
    } else {
        NatError::Io(format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_pmp_round_trip_by_hand() {
        assert_eq!(
            pmp_map_request(7000, 7001, 60),
            [0, 2, 0, 0, 0x1b, 0x58, 0x1b, 0x59, 0, 0, 0, 60]
        );
        let addr = [0, 128, 0, 0, 0, 0, 0, 9, 198, 18, 0, 11];
        assert_eq!(
            decode_pmp(&addr),
            Ok(PmpAnswer::Address {
                epoch: 9,
                ip: Ipv4Addr::new(198, 18, 0, 11)
            })
        );
        let map = [
            0, 130, 0, 0, 0, 0, 0, 9, 0x1b, 0x58, 0x1b, 0x59, 0, 0, 0, 60,
        ];
        assert_eq!(
            decode_pmp(&map),
            Ok(PmpAnswer::Map {
                epoch: 9,
                internal: 7000,
                external: 7001,
                lifetime: 60
            })
        );
        let failed = [0, 130, 0, 3, 0, 0, 0, 9, 0x1b, 0x58, 0x1b, 0x59, 0, 0, 0, 0];
        assert!(decode_pmp(&failed).unwrap_err().contains("network failure"));
        assert!(decode_pmp(&map[..12]).is_err());
        assert!(decode_pmp(&[0, 2, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_pmp(&[1; 16]).is_err());
    }

    #[test]
    fn pcp_map_round_trip() {
        let nonce = [7u8; 12];
        let req = pcp_map_request(
            Ipv4Addr::new(10, 99, 1, 10),
            &nonce,
            7000,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000),
            120,
        );
        // The server's answer repeats the MAP opcode's fields with R set and a result.
        let mut ans = req;
        ans[1] |= 0x80;
        ans[8..24].fill(0);
        ans[8..12].copy_from_slice(&5u32.to_be_bytes());
        ans[44..60].copy_from_slice(&Ipv4Addr::new(198, 18, 0, 11).to_ipv6_mapped().octets());
        let PcpAnswer::Map(m) = decode_pcp(&ans).unwrap() else {
            panic!("not a map")
        };
        assert_eq!(m.nonce, nonce);
        assert_eq!(m.lifetime, 120);
        assert_eq!(m.epoch, 5);
        assert_eq!(m.internal, 7000);
        assert_eq!(m.external, "198.18.0.11:7000".parse().unwrap());
        let mut bad = ans;
        bad[3] = 8;
        assert!(decode_pcp(&bad).unwrap_err().contains("no resources"));
        assert!(decode_pcp(&req).is_err(), "a request is not an answer");
        assert!(decode_pcp(&ans[..59]).is_err());
        assert!(decode_pcp(&ans[..24]).is_err());
        assert_eq!(
            decode_pcp(&[0, 0x81, 0, 1, 0, 0, 0, 0]),
            Ok(PcpAnswer::NatPmpOnly)
        );
    }
}
