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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
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
