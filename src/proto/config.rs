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
    /// How much more than M a strong uplink looks for (0: everyone looks for M).
    pub strong_partner_scale: f64,
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
    /// Share of partners that must hold the start segment, and segments of margin before it.
    pub start_quantile: f64,
    pub start_margin: u32,
    /// Segments a joining peer holds before it starts playing the first.
    pub start_buffer: u32,
    /// Time a joining peer allows for its first segment to arrive (its deadline).
    pub startup_budget: Duration,
    /// Pauses playback may take for late segments over a session; past it, late segments
    /// are skipped.
    pub stall_limit: u64,
    /// Playback never pauses past this lag behind the source; late segments are skipped.
    pub max_lag: Duration,
    /// Requests in flight to one partner.
    pub max_requests_per_partner: usize,
    /// Requests in flight in total.
    pub max_requests: usize,
    /// Requests from partners queued for upload, in total.
    pub upload_queue_capacity: usize,
    /// Requests from one partner queued for upload.
    pub upload_queue_per_partner: usize,
    /// A supplier takes no more requests while its queue would take this long to drain: a
    /// short queue keeps its advertised backlog true and sends requesters elsewhere at once;
    /// too short a one turns away requests a fast peer would have met (4 s measured best,
    /// docs/DESIGN-NOTES.md).
    pub max_upload_backlog: Duration,
    /// Segments uploaded at the same time. One at a time meets deadlines best, but a
    /// forwarded segment may wait for its bytes to arrive (cut-through): a second keeps the
    /// uplink busy meanwhile.
    pub concurrent_uploads: usize,
    /// A segment is urgent when its deadline is this close: it jumps the rarest-first order.
    pub urgent_within: Duration,
    /// Links of every kind at most.
    pub max_links: usize,
    /// Outstanding dials at most.
    pub max_pending_dials: usize,
    /// Source only: it uploads only its newest this-many segments (older ones the swarm
    /// relays), so its budget never queues behind stale work.
    pub source_fresh_window: u32,
    /// The source's clock minus this node's, in µs: segment ingest times (`origin_us`) are
    /// the source's; the simulator shares one clock (0), the daemon maps wall clocks.
    pub origin_offset_us: i64,
    /// An idle supplier offers partners segments they lack (they take one with a request).
    pub offers: bool,
    /// Substreams K: segment `s` belongs to substream `s mod K`; a peer subscribes to each
    /// from one parent partner, which pushes its segments as they arrive (New Coolstreaming's
    /// push, on DONet's mesh). 1 disables nothing: one substream, one parent.
    pub substreams: u32,
    /// Share of its upload a node offers to subscriptions (the rest answers pulls).
    pub push_share: f64,
    /// A parent this many segments of a substream behind the best partner is replaced.
    pub parent_lag_limit: u32,
    /// A segment a parent will push is pulled anyway when its deadline is this close.
    pub pull_lead: Duration,
    /// Pushes queued for one child at most (older ones are dropped: the child pulls).
    pub push_queue_per_child: usize,
    /// Source only: times one segment is uploaded at most (fresh data first, the swarm
    /// relays the rest).
    pub source_max_copies: u8,
    /// How long a peer that sent a segment failing verification stays banned.
    pub ban_duration: Duration,
    /// Membership records one peer may teach us per gossip interval (a deputy's answer is
    /// [`super::wire::MAX_ENTRIES_PER_MESSAGE`]); more are ignored, so one peer cannot fill
    /// the mCache with members of its choosing.
    pub max_learned_per_peer: u32,
    /// Requests one partner may make of us per refinement period, in stream segments per
    /// second of the period: a viewer plays one a second, a relay fetches a few more; past
    /// this, its requests are answered busy.
    pub max_request_rate: f64,
    /// A partner whose requests time out this often in a refinement period while it
    /// delivers nothing advertises what it does not send: it is dropped and replaced.
    pub liar_timeouts: u32,
    /// The driver carries out `Output::DialBack` and reports `Input::DialBackProof`: the
    /// node asks partners to dial it back when its driver has not said whether it can be
    /// dialled, and dials back for others. Off: neither (a driver that cannot would leave
    /// every asker thinking itself undialable).
    pub dial_back: bool,
    /// The driver carries out `Output::Punch` (TCP simultaneous open): an undialable node
    /// asks partners for introductions and acts on them. Any node introduces others.
    pub hole_punch: bool,
}

/// Longest period a `*_ms` setting takes (a day).
pub const MAX_SETTING_MS: u64 = 24 * 3600 * 1000;

/// Most partners any node accepts, whatever its upload.
pub const PARTNER_CEILING: usize = 32;
/// Partners a node takes above its accept limit for newcomers (peers with almost no
/// partners): established peers fill every free slot, so without it a joiner finds the swarm
/// full. Refinement gives the extra slots back.
pub const NEWCOMER_SLACK: usize = 2;

impl Config {
    /// Partners this node accepts: `max_partners` scaled by how many stream rates it can
    /// upload, so strong uploaders feed more peers (DONet's uniform M leaves a 4x uplink
    /// mostly idle). The source's limit is taken as configured.
    /// Substream subscriptions this node takes: its upload in stream rates times K, times
    /// the push share (the source offers its whole budget).
    pub fn max_children(&self) -> u32 {
        let factor = self.upload_bytes_per_s as f64 / self.stream_bytes_per_s.max(1) as f64;
        let share = if self.role == Role::Source {
            1.0
        } else {
            self.push_share
        };
        (factor * self.substreams as f64 * share).floor().max(0.0) as u32
    }

    /// Partners this node looks for: M, times its upload in stream rates when that is more
    /// than one (scaled by `strong_partner_scale`), so that a strong uplink has enough
    /// partners to feed.
    pub fn partner_target(&self) -> usize {
        if self.role == Role::Source {
            return self.partners;
        }
        let factor = self.upload_bytes_per_s as f64 / self.stream_bytes_per_s.max(1) as f64;
        let extra = ((factor - 1.0).max(0.0) * self.strong_partner_scale * self.partners as f64)
            .round() as usize;
        self.partners.saturating_add(extra).min(self.accept_limit())
    }

    /// Partners this node ever has: its accept limit plus the newcomers' slack.
    pub fn partner_cap(&self) -> usize {
        self.accept_limit() + NEWCOMER_SLACK
    }

    pub fn accept_limit(&self) -> usize {
        if self.role == Role::Source {
            return self.max_partners.min(PARTNER_CEILING);
        }
        let factor = self.upload_bytes_per_s as f64 / self.stream_bytes_per_s.max(1) as f64;
        let scaled = (self.max_partners as f64 * factor.max(1.0)).round() as usize;
        // `max_partners` above the ceiling is refused by `set`; a config built by hand gets
        // the ceiling (clamp panics on min > max).
        scaled.clamp(self.max_partners.min(PARTNER_CEILING), PARTNER_CEILING)
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
            strong_partner_scale: 2.0,
            max_partners: match role {
                Role::Source => 12,
                Role::Peer => 8,
            },
            window,
            // Window's worth of nominal segments, doubled for rate peaks.
            store_bytes: stream_bytes_per_s * window as u64 * 2,
            mcache_capacity: 64,
            gossip_interval: Duration::from_secs(10),
            gossip_fanout: 2,
            gossip_entries: 8,
            member_ttl: Duration::from_secs(60),
            tick: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(6),
            keepalive_interval: Duration::from_millis(2500),
            handshake_timeout: Duration::from_secs(5),
            query_idle_timeout: Duration::from_secs(10),
            refine_interval: Duration::from_secs(20),
            start_behind: 4,
            start_quantile: 1.0,
            start_margin: 2,
            start_buffer: 1,
            startup_budget: Duration::from_millis(3000),
            stall_limit: 100,
            max_lag: Duration::from_secs(20),
            max_requests_per_partner: 3,
            max_requests: 8,
            upload_queue_capacity: 32,
            upload_queue_per_partner: 4,
            max_upload_backlog: Duration::from_millis(4000),
            concurrent_uploads: 1,
            urgent_within: Duration::from_millis(2000),
            max_links: 64,
            max_pending_dials: 8,
            source_max_copies: 2,
            source_fresh_window: 2,
            origin_offset_us: 0,
            offers: false,
            substreams: 1,
            push_share: 0.0,
            parent_lag_limit: 2,
            pull_lead: Duration::from_millis(3000),
            push_queue_per_child: 8,
            ban_duration: Duration::from_secs(600),
            max_learned_per_peer: 48,
            max_request_rate: 4.0,
            liar_timeouts: 3,
            dial_back: false,
            hole_punch: false,
        }
    }
}

/// Why a setting could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingError(pub String);

impl core::fmt::Display for SettingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// The knobs [`Config::set`] knows, for help texts and errors.
    pub const SETTINGS: &'static [&'static str] = &[
        "partners",
        "max_partners",
        "window",
        "start_behind",
        "start_margin",
        "stall_limit",
        "max_requests",
        "max_requests_per_partner",
        "max_upload_backlog_ms",
        "urgent_within_ms",
        "substreams",
        "push_share",
        "parent_lag_limit",
        "pull_lead_ms",
        "source_max_copies",
        "source_fresh_window",
        "refine_interval_ms",
        "heartbeat_timeout_ms",
        "concurrent_uploads",
        "startup_budget_ms",
        "max_lag_ms",
        "start_buffer",
        "offers",
        "strong_partner_scale",
        "ban_duration_ms",
        "max_learned_per_peer",
        "max_request_rate",
        "liar_timeouts",
        "dial_back",
        "hole_punch",
    ];

    /// Sets one knob by name from text (the simulator's `--set`, experiments, sweeps).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        fn num<T: core::str::FromStr>(key: &str, v: &str) -> Result<T, SettingError> {
            v.trim()
                .parse()
                .map_err(|_| SettingError(format!("{key}: cannot read '{v}' as a number")))
        }
        // A day is past any sensible period, and far from the µs count's overflow.
        let ms = |v: &str| match num::<u64>(key, v)? {
            m if m > MAX_SETTING_MS => {
                Err(SettingError(format!("{key}: at most {MAX_SETTING_MS} ms")))
            }
            m => Ok(Duration::from_millis(m)),
        };
        match key {
            "partners" => {
                let m: usize = num(key, value)?;
                if m > PARTNER_CEILING {
                    return Err(SettingError(format!("partners: at most {PARTNER_CEILING}")));
                }
                self.partners = m;
            }
            "max_partners" => {
                let m: usize = num(key, value)?;
                if m > PARTNER_CEILING {
                    return Err(SettingError(format!(
                        "max_partners: at most {PARTNER_CEILING}"
                    )));
                }
                self.max_partners = m;
            }
            "window" => self.window = num(key, value)?,
            "start_behind" => self.start_behind = num(key, value)?,
            "start_margin" => self.start_margin = num(key, value)?,
            "stall_limit" => self.stall_limit = num(key, value)?,
            "max_requests" => self.max_requests = num(key, value)?,
            "max_requests_per_partner" => self.max_requests_per_partner = num(key, value)?,
            "max_upload_backlog_ms" => self.max_upload_backlog = ms(value)?,
            "urgent_within_ms" => self.urgent_within = ms(value)?,
            "substreams" => {
                let k: u32 = num(key, value)?;
                if !(1..=32).contains(&k) {
                    return Err(SettingError("substreams: must be 1..=32".into()));
                }
                self.substreams = k;
            }
            "push_share" => self.push_share = num(key, value)?,
            "parent_lag_limit" => self.parent_lag_limit = num(key, value)?,
            "pull_lead_ms" => self.pull_lead = ms(value)?,
            "source_max_copies" => self.source_max_copies = num(key, value)?,
            "source_fresh_window" => self.source_fresh_window = num(key, value)?,
            "refine_interval_ms" => self.refine_interval = ms(value)?,
            "heartbeat_timeout_ms" => self.heartbeat_timeout = ms(value)?,
            "concurrent_uploads" => self.concurrent_uploads = num(key, value)?,
            "startup_budget_ms" => self.startup_budget = ms(value)?,
            "max_lag_ms" => self.max_lag = ms(value)?,
            "start_buffer" => self.start_buffer = num(key, value)?,
            "offers" => self.offers = num::<u8>(key, value)? != 0,
            "strong_partner_scale" => self.strong_partner_scale = num(key, value)?,
            "ban_duration_ms" => self.ban_duration = ms(value)?,
            "max_learned_per_peer" => self.max_learned_per_peer = num(key, value)?,
            "max_request_rate" => self.max_request_rate = num(key, value)?,
            "liar_timeouts" => self.liar_timeouts = num(key, value)?,
            "dial_back" => self.dial_back = num::<u8>(key, value)? != 0,
            "hole_punch" => self.hole_punch = num::<u8>(key, value)? != 0,
            _ => {
                return Err(SettingError(format!(
                    "unknown setting '{key}' (known: {})",
                    Self::SETTINGS.join(", ")
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_reject() {
        let mut c = Config::new(ChannelId([0; 32]), Role::Peer, 96_000);
        c.set("partners", "7").unwrap();
        c.set("pull_lead_ms", "1500").unwrap();
        assert_eq!(c.partners, 7);
        assert_eq!(c.pull_lead, Duration::from_millis(1500));
        assert!(c.set("partners", "many").is_err());
        assert!(c.set("substreams", "0").is_err());
        assert!(c.set("max_partners", "33").is_err());
        assert!(c.set("partners", "9999999999999996015").is_err());
        let mut e = c.clone();
        e.partners = usize::MAX;
        assert_eq!(e.partner_target(), e.accept_limit());
        assert!(c.set("max_lag_ms", "10255828924854210822").is_err());
        // Built by hand past the ceiling: the ceiling, not a panic.
        let mut d = c.clone();
        d.max_partners = PARTNER_CEILING + 1;
        assert_eq!(d.accept_limit(), PARTNER_CEILING);
        assert!(c.set("nonsense", "1").is_err());
        for k in Config::SETTINGS {
            assert!(
                !matches!(c.clone().set(k, "1"), Err(SettingError(m)) if m.starts_with("unknown"))
            );
        }
    }

    #[test]
    fn strong_uploaders_accept_more_partners_and_children() {
        let mut c = Config::new(ChannelId([0; 32]), Role::Peer, 100_000);
        c.substreams = 4;
        c.push_share = 0.9;
        c.upload_bytes_per_s = 50_000;
        assert_eq!(c.accept_limit(), c.max_partners);
        assert_eq!(c.max_children(), 1);
        c.upload_bytes_per_s = 400_000;
        assert_eq!(c.accept_limit(), c.max_partners * 4);
        assert_eq!(c.max_children(), 14);
    }
}
