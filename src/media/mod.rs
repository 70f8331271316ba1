//! MPEG-TS in: packet alignment, PCR, RTP unwrapping, the segmenter, and the inputs a source
//! reads (UDP multicast or unicast, RTP, a file paced by its PCR, stdin).
//!
//! Everything here but [`input`] is plain functions and state machines over byte slices, tested
//! without sockets.

pub mod input;
pub mod nal;
pub mod psi;
pub mod rtp;
pub mod segmenter;
pub mod splice;
pub mod tr101290;
pub mod ts;
