//! coolstream: a peer-to-peer live TV agent after CoolStreaming's DONet.
//!
//! Layers, imports pointing down only: `daemon` (sockets, tokio, clocks, files, signals) drives
//! `proto` (the sans-IO protocol core) with `media` (MPEG-TS in) and `output` (players out);
//! `sim` (the deterministic simulator) drives the same `proto`. `control` is the box daemon's
//! control socket and `ctl` client; `config` its checked TOML configuration.
//!
//! The `sim` feature (on by default, left out of the box build) brings the simulator and the
//! demo (`daemon::demo`).

pub mod config;
pub mod control;
pub mod daemon;
pub mod harness;
pub mod media;
pub mod nat;
pub mod output;
pub mod proto;
#[cfg(feature = "sim")]
pub mod sim;
