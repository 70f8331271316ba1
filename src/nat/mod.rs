//! Port mapping on the home router: a box behind NAT asks its router to forward a TCP port
//! from the router's external address to the box's listener, so that peers can dial it.
//!
//! Three ways to ask, all clients written here on the crates the binary already has (tokio,
//! httparse, getrandom), which keeps the box build's size where it was:
//! - **UPnP-IGD** ([`upnp`]): SSDP search on the LAN, the router's device description, SOAP
//!   `GetExternalIPAddress`, `AddPortMapping` with a lease, `DeletePortMapping`.
//! - **PCP** (RFC 6887, [`pcp`]): a MAP request to the default gateway's UDP port 5351; the
//!   random nonce that made a mapping is kept, as only it can refresh or delete it.
//! - **NAT-PMP** (RFC 6886): the same port, for routers that answer PCP with "unsupported
//!   version".
//!
//! [`map`] makes one mapping ([`Method::Auto`] tries UPnP, then PCP/NAT-PMP) and returns a
//! [`Mapping`]: the external address, the method used, the lease the router granted. The
//! owner calls [`Mapping::renew`] at [`Mapping::renew_at`] (half the lease) and
//! [`Mapping::remove`] on a clean exit; a mapping not renewed ends with its lease on the
//! router, so a crashed box leaves nothing behind for long.
//!
//! Everything a router (or anything else on the LAN) sends is bounded before it is held and
//! checked before it is used: SSDP answers are one datagram of at most [`upnp::MAX_SSDP`]
//! bytes and only the device that answered is asked for its description; a description is
//! at most [`upnp::MAX_DESCRIPTION`] bytes, read by a small tolerant scanner ([`xml`]) and its
//! control URL must be on the same host; SOAP answers at most [`upnp::MAX_SOAP`]; PCP and
//! NAT-PMP answers come only from the gateway's port (a connected socket), must carry our
//! nonce and opcode and are decoded field by field. Every exchange has a deadline and a
//! bounded number of retransmissions, so a silent or hostile router costs a few seconds and
//! a clear [`NatError`], never a hang.
//!
//! Async on tokio, like the daemon that will own the mapping: a mapping is a few datagrams
//! and one or two short HTTP exchanges every half-lease, which a task on the daemon's
//! current-thread runtime does without a thread of its own.
//!
//! IPv4 only: IPv6 at home is routed, not translated, and needs no mapping.

pub mod http;
pub mod pcp;
pub mod upnp;
pub mod xml;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::time::Instant;

/// How to ask the router (the `nat` config key: `auto`, `upnp`, `pcp`, `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// UPnP-IGD, then PCP (falling back to NAT-PMP).
    Auto,
    Upnp,
    /// PCP, falling back to NAT-PMP when the router only speaks that.
    Pcp,
    /// NAT-PMP only (for routers that mishandle PCP, and tests).
    NatPmp,
    /// Never touch the router.
    Off,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "auto" => Ok(Method::Auto),
            "upnp" => Ok(Method::Upnp),
            "pcp" => Ok(Method::Pcp),
            "natpmp" => Ok(Method::NatPmp),
            "off" => Ok(Method::Off),
            _ => Err(format!(
                "nat must be auto, upnp, pcp, natpmp or off, not {s:?}"
            )),
        }
    }
}

/// The protocol a mapping was made with (`nat_method` in the stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    Upnp,
    Pcp,
    NatPmp,
}

impl Used {
    pub fn as_str(self) -> &'static str {
        match self {
            Used::Upnp => "upnp",
            Used::Pcp => "pcp",
            Used::NatPmp => "natpmp",
        }
    }
}

/// Why no mapping was made, renewed or removed. The text says what the router did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatError {
    /// `nat = "off"`.
    Off,
    /// Something this module does not map (an IPv6 listener).
    Unsupported(String),
    /// No default IPv4 gateway in the routing table.
    NoGateway,
    /// Nothing on the LAN answered (no IGD, nothing on port 5351).
    NoRouter(String),
    /// A router that started answering went silent.
    Timeout(String),
    /// The router refused (NAT-PMP/PCP result code, or a refusal it gave in words).
    Refused(String),
    /// A UPnP error answer (718 ConflictInMappingEntry, 725 OnlyPermanentLeasesSupported ...).
    Upnp {
        action: String,
        code: u16,
        text: String,
    },
    /// An answer that is not what the protocol says.
    Protocol(String),
    Io(String),
    /// `auto`: every method failed; each one's reason.
    Failed(String),
}

impl std::fmt::Display for NatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatError::Off => write!(f, "port mapping is off"),
            NatError::Unsupported(s) => write!(f, "not mapped: {s}"),
            NatError::NoGateway => write!(f, "no default IPv4 gateway in the routing table"),
            NatError::NoRouter(s) => write!(f, "no port-mapping router: {s}"),
            NatError::Timeout(s) => write!(f, "router timed out: {s}"),
            NatError::Refused(s) => write!(f, "router refused: {s}"),
            NatError::Upnp { action, code, text } => {
                write!(f, "UPnP {action} failed with error {code} {text}")
            }
            NatError::Protocol(s) => write!(f, "bad answer from the router: {s}"),
            NatError::Io(s) => write!(f, "{s}"),
            NatError::Failed(s) => write!(f, "no port mapping: {s}"),
        }
    }
}

impl std::error::Error for NatError {}

/// The knobs of a mapping; the defaults suit a home LAN.
#[derive(Debug, Clone)]
pub struct Options {
    /// Shown in the router's mapping list.
    pub description: String,
    /// The gateway for PCP/NAT-PMP (and a unicast SSDP search); `None`: the routing table's.
    pub gateway: Option<Ipv4Addr>,
    /// How long SSDP answers are awaited.
    pub ssdp_wait: Duration,
    /// The deadline of one HTTP exchange with an IGD.
    pub http_timeout: Duration,
    /// NAT-PMP sends (waits 250 ms, 500 ms, ...: 4 sends wait 3.75 s in all).
    pub pmp_tries: u32,
    /// PCP sends (waits 3 s, 6 s, ...: 2 sends wait 9 s in all).
    pub pcp_tries: u32,
    /// How many other external ports are tried when the router says ours is taken.
    pub port_retries: u32,
    /// How long [`keep`] waits for the router to delete the mapping on the way out (a
    /// daemon that must stop within a second gives it less than the default).
    pub remove_deadline: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            description: "coolstream".into(),
            gateway: None,
            ssdp_wait: Duration::from_secs(2),
            http_timeout: Duration::from_secs(3),
            pmp_tries: 4,
            pcp_tries: 2,
            port_retries: 3,
            remove_deadline: REMOVE_DEADLINE,
        }
    }
}

#[derive(Debug, Clone)]
enum How {
    Upnp(upnp::Igd),
    Pcp {
        gateway: Ipv4Addr,
        nonce: pcp::Nonce,
    },
    NatPmp {
        gateway: Ipv4Addr,
    },
}

/// A port mapping on the router. Dropping it leaves the mapping to expire with its lease;
/// [`Mapping::remove`] deletes it at once.
#[derive(Debug, Clone)]
pub struct Mapping {
    external: SocketAddr,
    internal: SocketAddrV4,
    lease: Duration,
    granted: Instant,
    asked: u32,
    how: How,
    opts: Options,
}

impl Mapping {
    /// The router's external address and port that reach the listener.
    pub fn external(&self) -> SocketAddr {
        self.external
    }
    /// The box's LAN address and port the router forwards to.
    pub fn internal(&self) -> SocketAddrV4 {
        self.internal
    }
    pub fn method(&self) -> Used {
        match self.how {
            How::Upnp(_) => Used::Upnp,
            How::Pcp { .. } => Used::Pcp,
            How::NatPmp { .. } => Used::NatPmp,
        }
    }
    /// The lease the router granted; zero is a permanent mapping (a UPnP router that only
    /// takes those), which only [`Mapping::remove`] ends.
    pub fn lease(&self) -> Duration {
        self.lease
    }
    /// What is left of the lease at `now` (`None`: permanent).
    pub fn lease_left(&self, now: Instant) -> Option<Duration> {
        (!self.lease.is_zero()).then(|| (self.granted + self.lease).saturating_duration_since(now))
    }
    /// When to renew: half-way through the lease (RFC 6886 §3.3), `None` for a permanent one.
    pub fn renew_at(&self) -> Option<Instant> {
        (!self.lease.is_zero()).then(|| self.granted + self.lease / 2)
    }
    /// Whether the external address looks publicly routable. A private, shared (100.64/10)
    /// or benchmarking one means another NAT further out (or a test network): the mapping
    /// may still not be reachable from the internet.
    pub fn external_is_public(&self) -> bool {
        match self.external {
            SocketAddr::V4(a) => is_public(*a.ip()),
            SocketAddr::V6(_) => true,
        }
    }

    /// Asks the router again for the same mapping with a fresh lease. The router may move
    /// it (a new external address after its WAN changed): read [`Mapping::external`] again.
    pub async fn renew(&mut self) -> Result<(), NatError> {
        let fresh = match &self.how {
            How::Upnp(igd) => {
                upnp_add(
                    igd.clone(),
                    self.internal,
                    self.asked,
                    self.external.port(),
                    &self.opts,
                )
                .await?
            }
            How::Pcp { gateway, nonce } => {
                pcp_map(
                    *gateway,
                    *nonce,
                    self.internal,
                    self.asked,
                    Some(self.external),
                    &self.opts,
                )
                .await?
            }
            How::NatPmp { gateway } => {
                natpmp_map(
                    *gateway,
                    self.internal,
                    self.asked,
                    self.external.port(),
                    &self.opts,
                )
                .await?
            }
        };
        *self = fresh;
        Ok(())
    }

    /// Deletes the mapping from the router.
    pub async fn remove(self) -> Result<(), NatError> {
        match &self.how {
            How::Upnp(igd) => {
                match upnp::delete(igd, self.external.port(), self.opts.http_timeout).await {
                    // NoSuchEntryInArray: already gone (its lease ran out), which is what was asked.
                    Err(NatError::Upnp { code: 714, .. }) => Ok(()),
                    r => r,
                }
            }
            How::Pcp { gateway, nonce } => pcp_map(
                *gateway,
                *nonce,
                self.internal,
                0,
                Some(self.external),
                &self.opts,
            )
            .await
            .map(|_| ()),
            How::NatPmp { gateway } => natpmp_map(*gateway, self.internal, 0, 0, &self.opts)
                .await
                .map(|_| ()),
        }
    }
}

fn is_public(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || o[0] >= 240)
}

/// Maps `internal`'s port with the default [`Options`]. An unspecified IP (`0.0.0.0:7000`)
/// maps to this host's LAN address towards the router.
pub async fn map(
    method: Method,
    internal: SocketAddr,
    lease: Duration,
) -> Result<Mapping, NatError> {
    map_with(method, internal, lease, &Options::default()).await
}

/// Maps `internal`'s TCP port for `lease` (rounded up to whole seconds, at least one).
pub async fn map_with(
    method: Method,
    internal: SocketAddr,
    lease: Duration,
    opts: &Options,
) -> Result<Mapping, NatError> {
    let SocketAddr::V4(internal) = internal else {
        return Err(NatError::Unsupported(format!(
            "{internal} is IPv6, which is routed, not translated"
        )));
    };
    let asked = lease_secs(lease);
    match method {
        Method::Off => Err(NatError::Off),
        Method::Upnp => upnp_map(internal, asked, opts).await,
        Method::Pcp => pcp_or_natpmp(internal, asked, opts).await,
        Method::NatPmp => natpmp_map(gateway(opts)?, internal, asked, internal.port(), opts).await,
        Method::Auto => match upnp_map(internal, asked, opts).await {
            Ok(m) => Ok(m),
            Err(u) => match pcp_or_natpmp(internal, asked, opts).await {
                Ok(m) => Ok(m),
                Err(p) => Err(NatError::Failed(format!("UPnP: {u}; PCP: {p}"))),
            },
        },
    }
}

fn lease_secs(lease: Duration) -> u32 {
    let s = lease.as_secs() + u64::from(lease.subsec_nanos() > 0);
    s.clamp(1, u64::from(u32::MAX)) as u32
}

fn gateway(opts: &Options) -> Result<Ipv4Addr, NatError> {
    opts.gateway
        .or_else(default_gateway)
        .ok_or(NatError::NoGateway)
}

/// The default IPv4 gateway from the kernel's routing table (this thread's network
/// namespace first, so that a thread moved into another namespace sees its own).
pub fn default_gateway() -> Option<Ipv4Addr> {
    use std::io::Read;
    for path in ["/proc/thread-self/net/route", "/proc/net/route"] {
        let Ok(f) = std::fs::File::open(path) else {
            continue;
        };
        let mut text = String::new();
        // The routing table of a box is a few lines; a huge one is read in part.
        if f.take(64 * 1024).read_to_string(&mut text).is_ok() {
            return parse_route(&text);
        }
    }
    None
}

/// The gateway of the first up default route in `/proc/net/route`'s text (fields are
/// hexadecimal in host byte order).
pub fn parse_route(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().take(8).collect();
        let hex = |i: usize| f.get(i).and_then(|s| u32::from_str_radix(s, 16).ok());
        let (dest, gw, flags, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(7)?);
        let want = RTF_UP | RTF_GATEWAY;
        (dest == 0 && mask == 0 && flags & want == want && gw != 0)
            .then(|| Ipv4Addr::from(gw.to_ne_bytes()))
    })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: a nonce only has to differ from other clients' on the LAN.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}

async fn upnp_map(internal: SocketAddrV4, asked: u32, opts: &Options) -> Result<Mapping, NatError> {
    let igd = upnp::discover(
        opts.gateway.or_else(default_gateway),
        opts.ssdp_wait,
        opts.http_timeout,
    )
    .await?;
    let mut port = internal.port();
    let mut tries = 0;
    loop {
        match upnp_add(igd.clone(), internal, asked, port, opts).await {
            Err(NatError::Upnp { code: 718, .. }) if tries < opts.port_retries => {
                // Taken by another host: a random unprivileged port.
                let r = u16::from_le_bytes(random_bytes::<2>());
                port = 1024 + r % (u16::MAX - 1024);
                tries += 1;
            }
            other => return other,
        }
    }
}

async fn upnp_add(
    igd: upnp::Igd,
    internal: SocketAddrV4,
    asked: u32,
    port: u16,
    opts: &Options,
) -> Result<Mapping, NatError> {
    let t = opts.http_timeout;
    let internal = if internal.ip().is_unspecified() {
        SocketAddrV4::new(igd.local, internal.port())
    } else {
        internal
    };
    let ext_ip = upnp::external_ip(&igd, t).await?;
    let mut lease = asked;
    match upnp::add(&igd, port, internal, lease, &opts.description, t).await {
        Err(NatError::Upnp { code: 725, .. }) => {
            // OnlyPermanentLeasesSupported: permanent, removed on exit.
            lease = 0;
            upnp::add(&igd, port, internal, 0, &opts.description, t).await?;
        }
        r => r?,
    }
    Ok(Mapping {
        external: SocketAddr::new(ext_ip.into(), port),
        internal,
        lease: Duration::from_secs(lease.into()),
        granted: Instant::now(),
        asked,
        how: How::Upnp(igd),
        opts: opts.clone(),
    })
}

async fn pcp_or_natpmp(
    internal: SocketAddrV4,
    asked: u32,
    opts: &Options,
) -> Result<Mapping, NatError> {
    let gw = gateway(opts)?;
    match pcp_map(gw, random_bytes(), internal, asked, None, opts).await {
        Err(NatError::Refused(e)) if e.contains(NATPMP_ONLY) => {
            natpmp_map(gw, internal, asked, internal.port(), opts).await
        }
        r => r,
    }
}

const NATPMP_ONLY: &str = "speaks NAT-PMP only";

async fn pcp_map(
    gateway: Ipv4Addr,
    nonce: pcp::Nonce,
    internal: SocketAddrV4,
    asked: u32,
    suggested: Option<SocketAddr>,
    opts: &Options,
) -> Result<Mapping, NatError> {
    let (sock, internal) = gateway_socket(gateway, internal).await?;
    let suggested = match suggested {
        Some(SocketAddr::V4(a)) => a,
        _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, internal.port()),
    };
    let req = pcp::pcp_map_request(*internal.ip(), &nonce, internal.port(), suggested, asked);
    let what = format!("PCP MAP to {gateway}");
    let m = pcp::exchange(
        &sock,
        &req,
        pcp::PCP_FIRST_WAIT,
        opts.pcp_tries,
        &what,
        |b| {
            // Answers to someone else's request (another nonce) are not ours to read.
            if b.len() >= 36 && b[0] == 2 && b[24..36] != nonce {
                return None;
            }
            Some(match pcp::decode_pcp(b) {
                Ok(pcp::PcpAnswer::Map(m)) if m.internal == internal.port() => Ok(m),
                Ok(pcp::PcpAnswer::Map(m)) => Err(format!(
                    "a mapping for port {} (asked {})",
                    m.internal,
                    internal.port()
                )),
                Ok(pcp::PcpAnswer::NatPmpOnly) => Err(NATPMP_ONLY.to_string()),
                Err(e) => Err(e),
            })
        },
    )
    .await?;
    if asked > 0 && (m.lifetime == 0 || m.external.port() == 0) {
        return Err(NatError::Protocol(format!(
            "{what}: a mapping of lifetime {} to {}",
            m.lifetime, m.external
        )));
    }
    Ok(Mapping {
        external: m.external,
        internal,
        lease: Duration::from_secs(m.lifetime.into()),
        granted: Instant::now(),
        asked,
        how: How::Pcp { gateway, nonce },
        opts: opts.clone(),
    })
}

/// A socket to the gateway's port-mapping port, and `internal` with an unspecified address
/// replaced by the local address that socket leaves from (what the router must map to).
async fn gateway_socket(
    gateway: Ipv4Addr,
    internal: SocketAddrV4,
) -> Result<(tokio::net::UdpSocket, SocketAddrV4), NatError> {
    let (sock, local) = pcp::socket(gateway).await?;
    let internal = if internal.ip().is_unspecified() {
        SocketAddrV4::new(local, internal.port())
    } else {
        internal
    };
    Ok((sock, internal))
}

async fn natpmp_map(
    gateway: Ipv4Addr,
    internal: SocketAddrV4,
    asked: u32,
    port: u16,
    opts: &Options,
) -> Result<Mapping, NatError> {
    let (sock, internal) = gateway_socket(gateway, internal).await?;
    let what = format!("NAT-PMP to {gateway}");
    let answer = |op: u8| {
        move |b: &[u8]| {
            if b.len() < 2 || b[0] != 0 || b[1] != 0x80 | op {
                return None;
            }
            Some(pcp::decode_pmp(b))
        }
    };
    let ip = if asked > 0 {
        match pcp::exchange(
            &sock,
            &pcp::pmp_address_request(),
            pcp::PMP_FIRST_WAIT,
            opts.pmp_tries,
            &what,
            answer(0),
        )
        .await?
        {
            pcp::PmpAnswer::Address { ip, .. } => ip,
            other => return Err(NatError::Protocol(format!("{what}: {other:?}"))),
        }
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let req = pcp::pmp_map_request(internal.port(), port, asked);
    let (ext, lifetime) = match pcp::exchange(
        &sock,
        &req,
        pcp::PMP_FIRST_WAIT,
        opts.pmp_tries,
        &what,
        answer(2),
    )
    .await?
    {
        pcp::PmpAnswer::Map {
            internal: i,
            external,
            lifetime,
            ..
        } if i == internal.port() => (external, lifetime),
        other => return Err(NatError::Protocol(format!("{what}: {other:?}"))),
    };
    if asked > 0 && (lifetime == 0 || ext == 0) {
        return Err(NatError::Protocol(format!(
            "{what}: a mapping of lifetime {lifetime} to port {ext}"
        )));
    }
    Ok(Mapping {
        external: SocketAddr::new(ip.into(), ext),
        internal,
        lease: Duration::from_secs(lifetime.into()),
        granted: Instant::now(),
        asked,
        how: How::NatPmp { gateway },
        opts: opts.clone(),
    })
}

/// What the daemon shows of its port mapping (`external_addr`, `nat_method`, `nat_lease_s`
/// in the stats; whether peers can really dial in is for a dial-back to say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The router's address and port that reach the listener, while a mapping holds.
    pub external: Option<SocketAddr>,
    pub method: Option<Used>,
    /// When the lease ends (`None` with a mapping: permanent).
    pub lease_ends: Option<Instant>,
    /// Why the last attempt failed (cleared by the next success).
    pub error: Option<String>,
}

impl Status {
    /// Whole seconds of lease left at `now`.
    pub fn lease_left_s(&self, now: Instant) -> Option<u64> {
        self.lease_ends
            .map(|e| e.saturating_duration_since(now).as_secs())
    }
}

/// The first wait before trying again after a failure; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
pub const RETRY_MAX: Duration = Duration::from_secs(600);
/// How long a clean exit waits for the router to delete the mapping, by default
/// ([`Options::remove_deadline`]).
pub const REMOVE_DEADLINE: Duration = Duration::from_secs(3);

/// Keeps a mapping of `internal` for as long as `shutdown` has not resolved: maps, renews at
/// half the lease, tries again after a failure (30 s, doubling to 10 min; a lost mapping is
/// made anew), publishes every change on `status`, and deletes the mapping on the way out.
/// With [`Method::Off`] it only waits.
pub async fn keep(
    method: Method,
    internal: SocketAddr,
    lease: Duration,
    opts: Options,
    status: tokio::sync::watch::Sender<Status>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    if method == Method::Off {
        return shutdown.await;
    }
    let mut mapping: Option<Mapping> = None;
    let mut retry = RETRY_FIRST;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let result = tokio::select! {
            _ = &mut shutdown => break,
            r = attempt(&mut mapping, method, internal, lease, &opts) => r,
        };
        let now = Instant::now();
        match (result, &mapping) {
            (Ok(()), Some(m)) => {
                retry = RETRY_FIRST;
                next = m.renew_at().unwrap_or(now + RETRY_MAX);
                status.send_replace(Status {
                    external: Some(m.external()),
                    method: Some(m.method()),
                    lease_ends: m.lease_left(now).map(|l| now + l),
                    error: None,
                });
            }
            (r, _) => {
                let e = r
                    .err()
                    .map_or_else(|| "no mapping".to_string(), |e| e.to_string());
                log::info!("port mapping: {e}");
                // A mapping whose renewal failed is renewed again while it lasts.
                let left = mapping.as_ref().and_then(|m| m.lease_left(now));
                if left == Some(Duration::ZERO) {
                    mapping = None;
                }
                next = now + left.map_or(retry, |l| retry.min(l / 2).max(Duration::from_secs(1)));
                retry = (retry * 2).min(RETRY_MAX);
                status.send_modify(|s| {
                    s.error = Some(e);
                    if mapping.is_none() {
                        s.external = None;
                        s.method = None;
                        s.lease_ends = None;
                    }
                });
            }
        }
    }
    if let Some(m) = mapping {
        let deadline = opts.remove_deadline;
        match tokio::time::timeout(deadline, m.remove()).await {
            Ok(Ok(())) => log::info!("port mapping removed"),
            Ok(Err(e)) => log::info!("port mapping not removed: {e}"),
            Err(_) => log::info!("port mapping not removed: no answer within {deadline:?}"),
        }
    }
    status.send_replace(Status::default());
}

async fn attempt(
    mapping: &mut Option<Mapping>,
    method: Method,
    internal: SocketAddr,
    lease: Duration,
    opts: &Options,
) -> Result<(), NatError> {
    match mapping {
        Some(m) => m.renew().await,
        None => {
            *mapping = Some(map_with(method, internal, lease, opts).await?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t0001630A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t0101630A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        // The kernel prints the address as a host-order word: this text is from a
        // little-endian machine.
        if cfg!(target_endian = "little") {
            assert_eq!(parse_route(t), Some(Ipv4Addr::new(10, 99, 1, 1)));
        }
        assert_eq!(parse_route("Iface\n"), None);
        assert_eq!(parse_route("h\neth0 00000000 zz 0003 0 0 0 00000000"), None);
        assert_eq!(
            parse_route("h\neth0 00000000 0101630A 0001 0 0 0 00000000"),
            None
        );
    }

    #[test]
    fn methods_and_leases() {
        assert_eq!("auto".parse(), Ok(Method::Auto));
        assert_eq!("pcp".parse(), Ok(Method::Pcp));
        assert!("on".parse::<Method>().is_err());
        assert_eq!(lease_secs(Duration::ZERO), 1);
        assert_eq!(lease_secs(Duration::from_millis(1500)), 2);
        assert_eq!(lease_secs(Duration::from_secs(u64::MAX)), u32::MAX);
        assert!(is_public(Ipv4Addr::new(8, 8, 8, 8)));
        for ip in [
            [10, 0, 0, 1],
            [100, 64, 0, 1],
            [198, 18, 0, 11],
            [192, 168, 1, 1],
            [172, 16, 0, 1],
        ] {
            assert!(!is_public(Ipv4Addr::from(ip)), "{ip:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn off_and_ipv6_are_refused_without_touching_the_network() {
        let l = Duration::from_secs(60);
        assert_eq!(
            map(Method::Off, "0.0.0.0:7000".parse().unwrap(), l)
                .await
                .unwrap_err(),
            NatError::Off
        );
        assert!(matches!(
            map(Method::Auto, "[::]:7000".parse().unwrap(), l).await,
            Err(NatError::Unsupported(_))
        ));
    }

    /// Fuzz-style: every parser of router input over thousands of mutations (bytes flipped,
    /// cut, spliced, repeated) of real answers, through the same property checks the fuzz
    /// targets run.
    #[test]
    fn parsers_survive_mutated_router_answers() {
        use crate::harness;
        let seeds: [(&[u8], harness::Check); 6] = [
            (
                include_bytes!("../../fuzz/corpus/nat_ssdp/miniupnpd"),
                harness::nat_ssdp,
            ),
            (
                include_bytes!("../../fuzz/corpus/nat_description/miniupnpd"),
                harness::nat_description,
            ),
            (
                include_bytes!("../../fuzz/corpus/nat_soap/external_ip"),
                harness::nat_soap,
            ),
            (
                include_bytes!("../../fuzz/corpus/nat_soap/chunked_error"),
                harness::nat_soap,
            ),
            (
                include_bytes!("../../fuzz/corpus/nat_pcp/pcp_map"),
                harness::nat_pcp,
            ),
            (
                include_bytes!("../../fuzz/corpus/nat_pcp/natpmp_map"),
                harness::nat_pcp,
            ),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        // The seeds are what they say they are.
        let a = http::parse_answer(seeds[3].0, true, upnp::MAX_SOAP)
            .unwrap()
            .unwrap();
        assert!(matches!(
            upnp::soap_answer("AddPortMapping", a.status, &a.body),
            Err(NatError::Upnp { code: 718, .. })
        ));
        assert!(upnp::parse_ssdp(seeds[0].0).is_ok());
        let from = http::parse_url("http://10.99.1.1:5000/rootDesc.xml").unwrap();
        let (control, _) = upnp::parse_description(seeds[1].0, &from).unwrap();
        assert_eq!(control.path, "/ctl/IPConn");
        assert!(matches!(
            pcp::decode_pcp(seeds[4].0),
            Ok(pcp::PcpAnswer::Map(_))
        ));
        for (seed, check) in seeds {
            check(seed);
            for _ in 0..4000 {
                let mut b = seed.to_vec();
                for _ in 0..1 + next(4) {
                    match next(5) {
                        0 => {
                            let i = next(b.len());
                            if let Some(v) = b.get_mut(i) {
                                *v = next(256) as u8;
                            }
                        }
                        1 => b.truncate(next(b.len() + 1)),
                        2 => {
                            let i = next(b.len() + 1);
                            let tail = b.split_off(i);
                            b.extend(std::iter::repeat_n(b"<>&;:/0\r\n"[next(9)], next(64)));
                            b.extend(tail);
                        }
                        3 => {
                            let (i, j) = (next(b.len() + 1), next(b.len() + 1));
                            let part = b[i.min(j)..i.max(j)].to_vec();
                            b.extend(part);
                        }
                        _ => {
                            let i = next(b.len() + 1);
                            b.drain(i..(i + next(16)).min(b.len()));
                        }
                    }
                }
                check(&b);
            }
        }
    }
}
