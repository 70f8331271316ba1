//! The core's configuration: every capacity, period and policy knob of a node, with the
//! defaults the design chose and why.

use super::time::Duration;
use super::wire::{ChannelId, Role};

#[derive(Clone, Debug)]
pub struct Config {
    pub channel: ChannelId,
    pub role: Role,
    /// Port this node accepts partners on (sent in hellos).
    pub listen_port: u16,
    /// Upload budget in bytes per second; suppliers never exceed it on average.
    pub upload_bytes_per_s: u64,
    /// Nominal stream rate in bytes per second (for size estimates before a segment is seen).
    pub stream_bytes_per_s: u64,
    /// Nominal segment duration.
    pub segment_duration: Duration,
    /// Partners a peer aims for (DONet's M; continuity flattens at 4-5).
    pub partners: usize,
    /// Partners a node accepts at most when it uploads at the stream rate (room for
    /// newcomers above M; refinement trims back). A node that uploads more accepts
    /// proportionally more, up to [`PARTNER_CEILING`]: see [`Config::accept_limit`].
    pub max_partners: usize,
    /// Segments held and advertised (DONet: 120).
    pub window: u32,
    /// Payload bytes the store may hold.
    pub store_bytes: u64,
    /// mCache capacity.
    pub mcache_capacity: usize,
    pub gossip_interval: Duration,
    /// Partners each gossip round goes to.
    pub gossip_fanout: usize,
    /// Records per gossip message (the sender's own first).
    pub gossip_entries: usize,
    /// TTL of the node's own membership record.
    pub member_ttl: Duration,
    /// Housekeeping period.
    pub tick: Duration,
    /// A link silent this long is dead.
    pub heartbeat_timeout: Duration,
    /// Send a keep-alive after this much silence of our own.
    pub keepalive_interval: Duration,
    /// A link that has not said hello by then is closed.
    pub handshake_timeout: Duration,
    /// A non-partner link (a query) idle this long is closed.
    pub query_idle_timeout: Duration,
    /// Period of partner refinement (drop the worst, try a new one).
    pub refine_interval: Duration,
    /// A joining peer starts playing this many segments behind its partners' newest.
    pub start_behind: u32,
    /// Time a joining peer allows for its first segment to arrive (its deadline).
    pub startup_budget: Duration,
    /// Pauses playback may take for late segments over a session (each adds one segment
    /// duration of lag); past it, late segments are skipped.
    pub stall_limit: u64,
    /// Requests in flight to one partner.
    pub max_requests_per_partner: usize,
    /// Requests in flight in total.
    pub max_requests: usize,
    /// Requests from partners queued for upload, in total.
    pub upload_queue_capacity: usize,
    /// Requests from one partner queued for upload.
    pub upload_queue_per_partner: usize,
    /// A supplier takes no more requests while its queue would take this long to drain: a
    /// short queue keeps its advertised backlog true and sends requesters elsewhere at once.
    pub max_upload_backlog: Duration,
    /// Segments uploaded at the same time (one at a time meets deadlines best).
    pub concurrent_uploads: usize,
    /// A segment is urgent when its deadline is this close: it jumps the rarest-first order.
    pub urgent_within: Duration,
    /// Links of every kind at most.
    pub max_links: usize,
    /// Outstanding dials at most.
    pub max_pending_dials: usize,
    /// Source only: times one segment is uploaded at most (fresh data first, the swarm
    /// relays the rest).
    pub source_max_copies: u8,
}

/// Most partners any node accepts, whatever its upload.
pub const PARTNER_CEILING: usize = 32;

fn tune<T: std::str::FromStr>(name: &str, d: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

impl Config {
    /// Partners this node accepts: `max_partners` scaled by how many stream rates it can
    /// upload, so strong uploaders feed more peers (DONet's uniform M leaves a 4x uplink
    /// mostly idle). The source's limit is taken as configured.
    pub fn accept_limit(&self) -> usize {
        if self.role == Role::Source {
            return self.max_partners.min(PARTNER_CEILING);
        }
        let factor = self.upload_bytes_per_s as f64 / self.stream_bytes_per_s.max(1) as f64;
        let scaled = (self.max_partners as f64 * factor.max(1.0)).round() as usize;
        scaled.clamp(self.max_partners, PARTNER_CEILING)
    }

    /// Defaults for a stream of `stream_bytes_per_s` cut into segments of `segment_duration`.
    pub fn new(channel: ChannelId, role: Role, stream_bytes_per_s: u64) -> Self {
        let segment_duration = Duration::from_secs(1);
        let window = 120;
        Config {
            channel,
            role,
            listen_port: 0,
            upload_bytes_per_s: stream_bytes_per_s * 2,
            stream_bytes_per_s,
            segment_duration,
            partners: 5,
            max_partners: match role {
                Role::Source => tune("T_SRC_PARTNERS", 12),
                Role::Peer => tune("T_MAX_PARTNERS", 8),
            },
            window,
            // Window's worth of nominal segments, doubled for rate peaks.
            store_bytes: stream_bytes_per_s * window as u64 * 2,
            mcache_capacity: 64,
            gossip_interval: Duration::from_secs(5),
            gossip_fanout: 2,
            gossip_entries: 8,
            member_ttl: Duration::from_secs(60),
            tick: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(4),
            keepalive_interval: Duration::from_millis(1500),
            handshake_timeout: Duration::from_secs(5),
            query_idle_timeout: Duration::from_secs(10),
            refine_interval: Duration::from_secs(20),
            start_behind: tune("T_START_BEHIND", 4),
            startup_budget: Duration::from_millis(1500),
            stall_limit: tune("T_STALLS", 10),
            max_requests_per_partner: tune("T_PER_PARTNER", 3),
            max_requests: tune("T_MAX_REQ", 8),
            upload_queue_capacity: 32,
            upload_queue_per_partner: 4,
            max_upload_backlog: Duration::from_millis(tune("T_BACKLOG_MS", 2000)),
            concurrent_uploads: 1,
            urgent_within: Duration::from_millis(tune("T_URGENT_MS", 2000)),
            max_links: 64,
            max_pending_dials: 8,
            source_max_copies: tune("T_COPIES", 2),
        }
    }
}
