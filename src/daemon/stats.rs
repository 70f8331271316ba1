//! Per-node figures for `--stats-json`, the demo's summary, the control socket and the
//! metrics endpoint (docs/INTERFACE.md defines each field).
//!
//! Byte counts are over all links, both directions: `upload_bytes` and `download_bytes` are
//! whole frames written and read; `payload_bytes` is the media inside segment frames (sent and
//! received) and `control_bytes` everything else, so the two add up to upload + download.

use serde::Serialize;
use std::path::Path;

/// A node's outputs as its stats list them (`{kind, target, state, since_s, error, players}`),
/// given the players of its feed.
pub type OutputsFn = std::sync::Arc<dyn Fn(usize) -> serde_json::Value + Send + Sync>;

#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeReport {
    pub role: String,
    pub channel: String,
    pub name: String,
    /// Segments played before their deadline / segments whose deadline passed since playback
    /// began (DONet's continuity index); 0 before playback begins, 1 for the source.
    pub continuity: f64,
    /// Join to first segment handed to the player.
    pub startup_s: Option<f64>,
    /// Source ingest (wall clock) to playout deadline (wall clock) of the latest segment.
    pub lag_s: Option<f64>,
    pub partners: usize,
    pub members: usize,
    pub links: usize,
    pub segments_played: u64,
    pub segments_missed: u64,
    /// Source only: segments cut and signed.
    pub segments_ingested: u64,
    pub payload_bytes: u64,
    pub control_bytes: u64,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    /// Segments that failed verification (each closed its link).
    pub bad_segments: u64,
    pub bad_frames: u64,
    pub uptime_s: f64,
    /// Players connected to this node's outputs.
    pub players: usize,
    /// Each output and its state (an empty list for a node without outputs).
    pub outputs: Vec<serde_json::Value>,
    /// Diagnostics from the core: requests answered busy (by us / to us), and requests that
    /// timed out.
    pub busy_sent: u64,
    pub busy_received: u64,
    pub request_timeouts: u64,
    /// Times playback paused for a late segment.
    pub stalls: u64,
    /// This node's peer id (16 hex digits).
    pub id: String,
    /// Peers banned now for sending segments that failed verification, by id, and bans made
    /// since start.
    pub banned: Vec<String>,
    pub bans_total: u64,
    /// Payload bytes in the segment store.
    pub store_bytes: u64,
    /// What keeps this node from playing, when known: e.g. its bootstrap does not answer.
    pub problem: Option<String>,
    /// The stream's rate as measured from the segments played, kbit/s.
    pub stream_kbps: Option<f64>,
    /// Set when this node's upload cap is below one copy of the stream.
    pub upload_warning: Option<String>,
    /// Whether other peers can dial this node: true once a peer dialled it back through its
    /// advertised address, or while the home router keeps a port mapping for it; false once
    /// a dial-back failed; null while unknown.
    pub reachable: Option<bool>,
    /// The router's external address and port that reach this node's listener, while a port
    /// mapping holds.
    pub external_addr: Option<String>,
    /// How the mapping was made: `upnp`, `pcp` or `natpmp`; `none` without one.
    pub nat_method: String,
    /// Whole seconds left of the mapping's lease (renewed at half).
    pub nat_lease_s: Option<u64>,
    /// Why there is no mapping (`port mapping is off`, the router's answer ...).
    pub nat_error: Option<String>,
    /// The box's global IPv6 address and its listen port (it dials members' IPv6
    /// addresses from it).
    pub ipv6_addr: Option<String>,
    /// Whether peers can dial that address (a partner dialled it back); only then does the
    /// node's record carry it. `null` while unknown.
    pub ipv6_reachable: Option<bool>,
    /// Dial-backs and hole punches, as the core counts them.
    pub reach: ReachFigures,
    /// Scheduler and supplier diagnostics from the core, the simulator's names (see
    /// `proto::node::NodeStats`): what this node asked for and how it went, and why it said
    /// busy.
    pub diag: Diagnostics,
}

/// Reachability work (`proto::reach::ReachStats`): dial-backs asked for, that proved this
/// node reachable, that timed out; done for others, refused; introductions made and acted
/// on; hole punches the core asked for, and those that became a link; punches this driver
/// tried (the core's, less those toward a peer behind our own router), and those that
/// connected.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReachFigures {
    pub dial_backs_asked: u64,
    pub dial_backs_proved: u64,
    pub dial_backs_timed_out: u64,
    pub dial_backs_done: u64,
    pub dial_backs_refused: u64,
    pub introductions_made: u64,
    pub introductions_taken: u64,
    pub punches: u64,
    pub punches_linked: u64,
    pub punches_tried: u64,
    pub punches_connected: u64,
}

/// The core's counters behind continuity: for comparing a real swarm with the simulator.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Diagnostics {
    pub requests_sent: u64,
    pub segments_received: u64,
    pub duplicates: u64,
    pub uploads: u64,
    /// Misses whose segment was requested and had not arrived, and misses some partner held
    /// that we had not requested (the rest: no partner held it).
    pub missed_in_flight: u64,
    pub missed_unrequested: u64,
    /// Seconds playback stood still in stalls.
    pub stall_s: f64,
    /// Busy answers we gave, by reason: not a partner, not held, copies (source), per-partner
    /// queue, partnership ending (refinement), queue full, deadline.
    pub busy_reasons: [u64; 7],
    /// Wanted segments left for later: no supplier slot free, no supplier in time; and
    /// planning passes with the request budget spent.
    pub sched_no_slot: u64,
    pub sched_too_late: u64,
    /// Positions partners stated beyond the core's horizon of ours, refused.
    pub positions_refused: u64,
    pub sched_budget_spent: u64,
    /// Accepted connections closed for not saying hello first, or not within the deadline.
    pub no_hello: u64,
    /// Links closed because a frame body took longer than it could be of use (a partner
    /// trickling a segment we asked for).
    pub slow_frames: u64,
    /// Cut-through: uploads started of a segment still arriving, uploads of one aborted
    /// because its upstream failed, and transfers to us aborted by their sender.
    pub uploads_partial: u64,
    pub aborts_sent: u64,
    pub aborts_received: u64,
}

/// Writes `value` as JSON to `path` atomically (a temporary file renamed over it), so a
/// reader never sees half a file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
