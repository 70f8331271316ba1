//! The sans-IO DONet core: membership, partnerships, buffer maps, scheduling and the segment
//! store, as plain state machines. `now` and events go in; messages, timers and playout come
//! out. Nothing in here opens a socket, reads a clock or spawns a task. Everything a peer
//! says is bounded when decoded (`wire`) and checked before policy reads it (`node`): see
//! docs/SECURITY.md, "What a partner says, checked".

pub mod bans;
pub mod buffer_map;
pub mod config;
pub mod growing;
pub mod inflight;
pub mod manifest;
pub mod membership;
pub mod node;
pub mod partners;
pub mod prefetch;
pub mod reach;
pub mod rng;
pub mod scheduler;
pub mod seq;
pub mod store;
pub mod time;
pub mod timer;
pub mod wire;

pub use config::Config;
pub use node::{Command, CommandError, Input, LateCause, LinkId, Node, NodeStats, Output};
pub use reach::{ReachStats, ReachStatus, ReachVia};
pub use seq::Seq;
pub use time::{Duration, Instant};
pub use wire::{ChannelId, Message, Payload, PeerAddr, PeerId, Reach, Role, Segment};
