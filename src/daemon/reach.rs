//! What a node knows of its own reachability, on the daemon's side: the port mapping the home
//! router keeps for the peer listener ([`PortMapping`]: [`nat::keep`] as a task beside the
//! listener, for as long as the listener lives) and what the stats show of it
//! ([`NatFigures`]).
//!
//! The mapping's task runs on the daemon's runtime; its status reaches the node's actor
//! through a `watch` channel, read for the stats and turned into the core's view of this
//! node. A stopping daemon deletes the mapping, waiting at most [`NAT_REMOVE_DEADLINE`] for
//! the router, so that the process still ends within a second of SIGTERM.

use crate::nat;
use crate::proto::wire::{encode, Control, Message};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The lease asked of the router, as games and BitTorrent clients ask; renewed at half (the
/// router may grant less, and the renewal follows what it granted).
pub const NAT_LEASE: Duration = Duration::from_secs(3600);
/// How long a stopping daemon waits for the router to delete its mapping. A router on the
/// LAN answers in milliseconds; one that does not is left to end the lease by itself.
pub const NAT_REMOVE_DEADLINE: Duration = Duration::from_millis(600);

/// The port mapping of one peer listener.
pub struct PortMapping {
    status: watch::Receiver<nat::Status>,
    /// Dropped (or sent) to make the task delete the mapping and end.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PortMapping {
    /// Starts keeping a mapping for a listener bound to `listen` (its local address), asking
    /// for `lease`. With [`nat::Method::Off`], or a listener no router maps (a specific IPv6
    /// address), nothing is asked and the status says why.
    pub fn start(method: nat::Method, listen: SocketAddr, lease: Duration) -> PortMapping {
        let (tx, status) = watch::channel(nat::Status::default());
        let internal = mapped_address(listen);
        let why_not = match (method, internal) {
            (nat::Method::Off, _) => Some(nat::NatError::Off.to_string()),
            (_, None) => Some(format!(
                "not mapped: {listen} is IPv6 only (routed, not translated)"
            )),
            _ => None,
        };
        if let (None, Some(internal)) = (&why_not, internal) {
            let (stop, stopped) = oneshot::channel::<()>();
            let opts = nat::Options {
                remove_deadline: NAT_REMOVE_DEADLINE,
                ..nat::Options::default()
            };
            log::info!(
                "port mapping: asking the router to forward TCP port {} ({})",
                internal.port(),
                method_name(method)
            );
            let task = tokio::spawn(nat::keep(method, internal, lease, opts, tx, async {
                let _ = stopped.await;
            }));
            return PortMapping {
                status,
                stop: Some(stop),
                task: Some(task),
            };
        }
        tx.send_modify(|s| s.error = why_not);
        // The sender goes: the receiver keeps the last value.
        PortMapping {
            status,
            stop: None,
            task: None,
        }
    }

    /// The mapping's status, updated at each change.
    pub fn status(&self) -> watch::Receiver<nat::Status> {
        self.status.clone()
    }

    /// What, once dropped, makes the task delete the mapping and end (for a shutdown that
    /// must start the deletion while the node leaves its swarm).
    pub fn stopper(&mut self) -> Option<oneshot::Sender<()>> {
        self.stop.take()
    }

    /// Deletes the mapping (bounded by [`NAT_REMOVE_DEADLINE`]) and ends the task.
    pub async fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.task.take() {
            let abort = t.abort_handle();
            // The task bounds the router's answer itself; a little more for its own end.
            if tokio::time::timeout(NAT_REMOVE_DEADLINE + Duration::from_millis(100), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for PortMapping {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn method_name(m: nat::Method) -> &'static str {
    match m {
        nat::Method::Auto => "auto: UPnP, then PCP or NAT-PMP",
        nat::Method::Upnp => "UPnP",
        nat::Method::Pcp => "PCP, or NAT-PMP",
        nat::Method::NatPmp => "NAT-PMP",
        nat::Method::Off => "off",
    }
}

/// The IPv4 address whose port a router maps for a listener bound to `listen`: the listener's
/// own for an IPv4 one, any (the box's LAN address towards the router) for a dual-stack
/// `[::]` one, none for a specific IPv6 address (routed, never translated).
pub fn mapped_address(listen: SocketAddr) -> Option<SocketAddr> {
    match listen.ip() {
        IpAddr::V4(_) => Some(listen),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            listen.port(),
        )),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| SocketAddr::new(IpAddr::V4(v4), listen.port())),
    }
}

/// A dial-back a node carries out for a peer that asked: connect to the address it gave (the
/// IP its link comes from), write one proof frame carrying its nonce, close. Whether the
/// connection was made and the frame written within [`super::DIAL_TIMEOUT`].
pub async fn prove(remote: SocketAddr, nonce: u64) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut frame = Vec::with_capacity(32);
    let proof = Message::Ctl(Control::DialBackProof { nonce });
    if encode(&proof, &mut frame).is_err() {
        return false;
    }
    let go = async {
        let mut s = TcpStream::connect(remote).await?;
        s.write_all(&frame).await?;
        s.shutdown().await
    };
    matches!(
        tokio::time::timeout(super::DIAL_TIMEOUT, go).await,
        Ok(Ok(()))
    )
}

/// How long a hole punch keeps trying after its agreed moment. Each side's first SYN may be
/// dropped by the other's router (no state yet for it); the retransmission a second later
/// passes, so two seconds leave room for one, as measured between masquerading routers.
pub const PUNCH_WINDOW: Duration = Duration::from_millis(2500);
/// Pause between punch attempts that failed at once (a reset): a little jitter breaks the
/// lock-step of two sides that reset each other.
const PUNCH_RETRY_MS: (u64, u64) = (20, 100);

/// A TCP simultaneous open toward `remote` at `at`: a socket bound to our own listen port
/// (SO_REUSEADDR and SO_REUSEPORT, as the listener has them), so that the router's
/// translation of it is the address our introducer handed out, connecting until
/// [`PUNCH_WINDOW`] after `at`. The stream is then a link like any dialled one.
pub async fn punch(
    remote: SocketAddr,
    listen_port: u16,
    at: tokio::time::Instant,
) -> std::io::Result<TcpStream> {
    tokio::time::sleep_until(at).await;
    let deadline = at + PUNCH_WINDOW;
    let mut last = std::io::Error::new(std::io::ErrorKind::TimedOut, "punch timed out");
    while tokio::time::Instant::now() < deadline {
        let socket = tokio::net::TcpSocket::from_std_stream(punch_socket(remote, listen_port)?);
        match tokio::time::timeout_at(deadline, socket.connect(remote)).await {
            Ok(Ok(stream)) => {
                // The link closes as any other (its last frames flushed).
                socket2::SockRef::from(&stream).set_linger(None)?;
                return Ok(stream);
            }
            // The 4-tuple is taken (a link between the same two ports still open or in
            // TIME_WAIT): no retry in this window can free it.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{e}: a connection between these two ports is still open or closing"),
                ))
            }
            Ok(Err(e)) => last = e,
            Err(_) => break,
        }
        let (lo, hi) = PUNCH_RETRY_MS;
        let pause = lo + super::random_u64() % (hi - lo);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Err(last)
}

fn punch_socket(remote: SocketAddr, port: u16) -> std::io::Result<std::net::TcpStream> {
    let local: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(remote),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if remote.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // An attempt given up may have completed in the kernel just then (the other side's SYN
    // arriving at the window's end): closed with a FIN, it would leave this 4-tuple in
    // TIME_WAIT for a minute, and every punch between the two in that minute would fail at
    // once. Closed with a reset (a zero linger, which does not block), it leaves nothing.
    s.set_linger(Some(Duration::ZERO))?;
    s.set_nonblocking(true)?;
    s.bind(&local.into())?;
    Ok(s.into())
}

/// The box's global IPv6 address (2000::/3, not tentative, deprecated or failed), a stable one
/// before a temporary one, from the kernel's list of this network namespace's addresses.
/// IPv6 at home is routed: peers that have it too dial this address, with no mapping.
pub fn global_ipv6() -> Option<std::net::Ipv6Addr> {
    use std::io::Read;
    for path in ["/proc/thread-self/net/if_inet6", "/proc/net/if_inet6"] {
        let Ok(f) = std::fs::File::open(path) else {
            continue;
        };
        let mut text = String::new();
        // A line per address; a box has a handful.
        if f.take(IF_INET6_MAX).read_to_string(&mut text).is_ok() {
            return parse_if_inet6(&text);
        }
    }
    None
}

/// The most of `/proc/net/if_inet6` read (a line is 55 bytes or so: hundreds of addresses).
const IF_INET6_MAX: u64 = 32 * 1024;

/// The best global address in `/proc/net/if_inet6`'s text (address, ifindex, prefix length,
/// scope, flags, name: hexadecimal).
pub fn parse_if_inet6(text: &str) -> Option<std::net::Ipv6Addr> {
    const TEMPORARY: u32 = 0x01;
    const DADFAILED: u32 = 0x08;
    const DEPRECATED: u32 = 0x20;
    const TENTATIVE: u32 = 0x40;
    let mut best: Option<(bool, std::net::Ipv6Addr)> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().take(6).collect();
        let (Some(hex), Some(scope), Some(flags)) = (f.first(), f.get(3), f.get(4)) else {
            continue;
        };
        let (Ok(bits), Ok(scope), Ok(flags)) = (
            u128::from_str_radix(hex, 16),
            u32::from_str_radix(scope, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        let ip = std::net::Ipv6Addr::from(bits);
        let global = scope == 0 && (ip.segments()[0] & 0xe000) == 0x2000;
        if hex.len() != 32 || !global || flags & (DADFAILED | DEPRECATED | TENTATIVE) != 0 {
            continue;
        }
        let stable = flags & TEMPORARY == 0;
        if best.is_none_or(|(s, _)| stable && !s) {
            best = Some((stable, ip));
        }
    }
    best.map(|(_, ip)| ip)
}

/// The port-mapping figures of a node's stats (docs/INTERFACE.md).
#[derive(Debug, Clone, PartialEq)]
pub struct NatFigures {
    pub external_addr: Option<String>,
    /// `upnp`, `pcp`, `natpmp`, or `none` without a mapping.
    pub nat_method: String,
    pub nat_lease_s: Option<u64>,
    pub nat_error: Option<String>,
}

impl Default for NatFigures {
    fn default() -> NatFigures {
        NatFigures::of(&nat::Status::default(), tokio::time::Instant::now())
    }
}

impl NatFigures {
    pub fn of(s: &nat::Status, now: tokio::time::Instant) -> NatFigures {
        NatFigures {
            external_addr: s.external.map(|a| a.to_string()),
            nat_method: s.method.map_or("none", |m| m.as_str()).to_string(),
            nat_lease_s: s.external.and(s.lease_left_s(now)),
            nat_error: s.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ports already joined by a connection (a punched link still open, or one in
    /// TIME_WAIT): a punch between them cannot succeed, and says so at once instead of
    /// holding a dial permit for the whole window.
    #[test]
    fn a_punch_between_ports_already_connected_fails_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        s.connect(&to.into()).unwrap();
        let _accepted = listener.accept().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t0 = std::time::Instant::now();
        let err = rt
            .block_on(punch(to, port, tokio::time::Instant::now()))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable, "{err}");
        assert!(t0.elapsed() < PUNCH_WINDOW / 2, "{:?}", t0.elapsed());
    }

    #[test]
    fn the_global_ipv6_address_is_a_stable_usable_one() {
        let t = "fe800000000000000000000000000001 02 40 20 80     eth0\n\
                 00000000000000000000000000000001 01 80 10 80       lo\n\
                 fd000000000000000000000000000005 02 40 00 80     eth0\n\
                 20010db8000100000000000000000077 02 40 00 01     eth0\n\
                 20010db8000100000000000000000010 02 40 00 80     eth0\n\
                 20010db8000100000000000000000099 02 40 00 40     eth0\n";
        assert_eq!(parse_if_inet6(t), Some("2001:db8:1::10".parse().unwrap()));
        // Only a temporary one: taken. Link-local, loopback, ULA, tentative: never.
        assert_eq!(
            parse_if_inet6(&t.lines().take(4).collect::<Vec<_>>().join("\n")),
            Some("2001:db8:1::77".parse().unwrap())
        );
        assert_eq!(
            parse_if_inet6(&t.lines().take(3).collect::<Vec<_>>().join("\n")),
            None
        );
        assert_eq!(parse_if_inet6("garbage\n\n zz 1 2 3"), None);
    }

    #[test]
    fn the_router_maps_the_ipv4_side_of_a_listener() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(mapped_address(a("0.0.0.0:7000")), Some(a("0.0.0.0:7000")));
        assert_eq!(
            mapped_address(a("10.99.1.10:7000")),
            Some(a("10.99.1.10:7000"))
        );
        assert_eq!(mapped_address(a("[::]:7000")), Some(a("0.0.0.0:7000")));
        assert_eq!(
            mapped_address(a("[::ffff:10.0.0.2]:7000")),
            Some(a("10.0.0.2:7000"))
        );
        assert_eq!(mapped_address(a("[2001:db8::10]:7000")), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dial_back_writes_one_proof_frame_that_the_reader_decodes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let (proved, accepted) = tokio::join!(prove(at, 0x1234_5678_9abc), l.accept());
        assert!(proved);
        let (mut s, _) = accepted.unwrap();
        let verifier = crate::daemon::keys::Verifier::new(crate::proto::ChannelId([7; 32]));
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
        let counters = crate::daemon::link::Counters::default();
        let (msg, _) = crate::daemon::link::read_frame(&mut s, &verifier, &budget, &counters)
            .await
            .unwrap();
        assert!(matches!(
            msg,
            Message::Ctl(Control::DialBackProof {
                nonce: 0x1234_5678_9abc
            })
        ));
        // Nothing listens: no proof, within the dial timeout.
        drop(l);
        assert!(!prove(at, 1).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn off_and_ipv6_only_listeners_ask_nothing_and_say_why() {
        let m = PortMapping::start(nat::Method::Off, "[::]:7000".parse().unwrap(), NAT_LEASE);
        let s = m.status().borrow().clone();
        assert_eq!(s.external, None);
        assert_eq!(s.error.as_deref(), Some("port mapping is off"));
        m.finish().await;
        let m = PortMapping::start(
            nat::Method::Auto,
            "[2001:db8::10]:7000".parse().unwrap(),
            NAT_LEASE,
        );
        assert!(m
            .status()
            .borrow()
            .error
            .as_deref()
            .unwrap()
            .contains("IPv6 only"));
        m.finish().await;
    }
}
