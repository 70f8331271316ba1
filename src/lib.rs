//! coolstream: a peer-to-peer live TV agent after CoolStreaming's DONet.
//!
//! Layers, imports pointing down only: `sim` (the deterministic simulator) drives `proto` (the
//! sans-IO protocol core).

pub mod proto;
pub mod sim;
