//! The process's memory: the plan that bounds it, and the reservation at start.
//!
//! **The plan** ([`MemoryPlan`]). Every byte a peer can make the box daemon hold comes from a
//! budget derived from its configuration: the ring (the tuned channel's segment store), frame
//! bodies read and not yet handled ([`MemoryPlan::frames`], the links' shared body budget),
//! segments being written to partners, the links' own buffers, the players. With a fixed
//! overhead (code, runtime, tables, measured at rest) and a margin for the allocator's
//! fragmentation they add up to a total that must fit `limits.memory_limit`; `run` refuses a
//! configuration that does not, before it starts. What a peer can hold is bounded elsewhere by
//! these figures: a stranger (no request or subscription of ours) only control frames of
//! `MAX_CONTROL_LEN` ([`super::link`]), a handshake a few seconds ([`super::guard`]).
//!
//! **The reservation** ([`reserve_heap`]). A node's big consumer is its segment store: up to
//! `Config::store_bytes` of segment bodies, filled over the first two minutes of a channel and
//! then recycled segment by segment. Left to itself, glibc's allocator grows the heap as the
//! store fills and may hand freed bodies back to the system and take them again, so the
//! resident size drifts with the stream and a box that is short of memory finds out late.
//! [`reserve_heap`] takes the store's budget at start instead: bodies are kept on the heap (not
//! in separate mappings), freed memory is kept for reuse, and the budget is touched once, so
//! that afterwards the resident size only grows if the process uses more than it planned for.
//! It also keeps glibc to one arena ([`M_ARENA_MAX`](glibc::M_ARENA_MAX)): the daemon's
//! runtime has one thread, but blocking helpers (name resolution) get threads of their own,
//! and each would otherwise get a 64 MiB-reserved arena whose touched pages stay resident.
//! Other allocators (musl) are left as they are.

use crate::proto::wire::{MAX_CONTROL_LEN, MAX_FRAME_LEN};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The process at rest without its ring: code, the runtime, the core's tables, the control
/// socket, the standby channels' views (measured: see docs/SECURITY.md, Memory).
pub const FIXED_OVERHEAD: u64 = 6 * MIB;
/// A segment as the plan counts it where segments are in flight: a one-second segment of a
/// 2 Mbit/s channel. Larger segments still fit the frame budget one at a time.
pub const SEGMENT_ALLOWANCE: u64 = 256 * KIB;
/// One link's own memory: its tasks, writer buffers (a record of `WRITE_CHUNK`, the frame
/// being encoded), its queue's slots.
pub const LINK_OVERHEAD: u64 = 48 * KIB;
/// One HTTP player's memory: its task, request head, write buffers.
pub const PLAYER_OVERHEAD: u64 = 64 * KIB;
/// Margin for the allocator's fragmentation, in percent of everything else.
pub const FRAGMENTATION_PERCENT: u64 = 10;
/// The default `limits.memory_limit`: what `run` may use of its own. The shipped unit's
/// `MemoryMax=64M` is this plus [`KERNEL_HEADROOM`].
pub const DEFAULT_MEMORY_LIMIT: u64 = 48 * MIB;
/// What the unit's cgroup needs beyond the process's own memory: socket buffers the kernel
/// holds for it (charged to its cgroup), page cache of the binary and config.
pub const KERNEL_HEADROOM: u64 = 16 * MIB;
/// Smallest and largest `limits.memory_limit`.
pub const MEMORY_LIMIT_RANGE: (u64, u64) = (16 * MIB, 4096 * MIB);

/// What the box daemon may hold, by budget (bytes). See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub fixed: u64,
    /// The tuned channel's segment store (`limits.ring_bytes`).
    pub ring: u64,
    /// Frame bodies read and not yet handled, across all links: one largest frame, plus a
    /// segment from each partner at once, plus a control frame from each link.
    pub frames: u64,
    /// Segments being written to partners (each writer encodes the one it sends).
    pub uploads: u64,
    /// Links' own buffers and tasks, [`super::MAX_LINKS`] of them.
    pub links: u64,
    /// HTTP players.
    pub players: u64,
    /// [`FRAGMENTATION_PERCENT`] of the above.
    pub margin: u64,
}

impl MemoryPlan {
    /// The plan for a box with this ring, partner limit and player limit.
    pub fn new(ring: u64, max_partners: usize, max_players: usize) -> MemoryPlan {
        let partners = max_partners as u64;
        let links = super::MAX_LINKS as u64;
        let frames = u64::from(MAX_FRAME_LEN)
            + partners * SEGMENT_ALLOWANCE
            + links * u64::from(MAX_CONTROL_LEN);
        let mut p = MemoryPlan {
            fixed: FIXED_OVERHEAD,
            ring,
            frames: frames.div_ceil(KIB) * KIB,
            uploads: partners * SEGMENT_ALLOWANCE,
            links: links * LINK_OVERHEAD,
            players: max_players as u64 * PLAYER_OVERHEAD,
            margin: 0,
        };
        p.margin = p.subtotal() * FRAGMENTATION_PERCENT / 100;
        p
    }

    fn subtotal(&self) -> u64 {
        self.fixed + self.ring + self.frames + self.uploads + self.links + self.players
    }

    /// Everything the plan counts.
    pub fn total(&self) -> u64 {
        self.subtotal() + self.margin
    }

    /// The links' shared body budget, in KiB (the unit of its semaphore).
    pub fn frames_kib(&self) -> usize {
        (self.frames / KIB) as usize
    }

    /// Checks the plan against `limit`; the error says what does not fit and by how much.
    pub fn check(&self, limit: u64) -> Result<(), String> {
        if self.total() <= limit {
            return Ok(());
        }
        let mib = |b: u64| b as f64 / MIB as f64;
        Err(format!(
            "the box needs {:.1} MiB (ring {:.1}, frames {:.1}, uploads {:.1}, links {:.1}, \
             players {:.1}, fixed {:.1}, margin {:.1}) and memory_limit is {:.1} MiB: \
             expected a smaller ring_bytes (at most {} here) or a larger memory_limit",
            mib(self.total()),
            mib(self.ring),
            mib(self.frames),
            mib(self.uploads),
            mib(self.links),
            mib(self.players),
            mib(self.fixed),
            mib(self.margin),
            mib(limit),
            self.largest_ring(limit),
        ))
    }

    /// The largest ring that fits `limit` with the rest of this plan (0 if none does).
    pub fn largest_ring(&self, limit: u64) -> u64 {
        let rest = self.subtotal() - self.ring;
        // total = (rest + ring) * (100 + F) / 100, rounded down.
        let room = (limit * 100 / (100 + FRAGMENTATION_PERCENT)).saturating_sub(rest);
        room / MIB * MIB
    }
}

/// Reserved on top of the store's budget: frames in flight, link buffers, tables. For `run`
/// with its ring full and a stream flowing (measured): with 2 MiB the resident size never
/// grew; with 1.5 MiB it grew by 184 KiB, with 512 KiB by 1,160 KiB as the ring filled.
pub const RESERVE_SLACK: usize = 2 * 1024 * 1024;

/// Chunk size of the reservation; freed together, the chunks merge into one free region.
const RESERVE_CHUNK: usize = 256 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::os::raw::c_int;
    extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    /// `<malloc.h>`: never give the heap's top back to the system.
    pub const M_TRIM_THRESHOLD: c_int = -1;
    /// `<malloc.h>`: allocations from this size get their own mapping.
    pub const M_MMAP_THRESHOLD: c_int = -3;
    /// `<malloc.h>`: arenas at most (threads share them past that).
    pub const M_ARENA_MAX: c_int = -8;
}

/// Reserves `bytes` of heap for the life of the process (see the module docs), once per
/// process: where several nodes share one (the demo), the first one's store is reserved.
/// Returns whether this call reserved.
pub fn reserve_heap(bytes: usize) -> bool {
    static RESERVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if RESERVED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called before the node
        // allocates its store, and refuses values it cannot take (returns 0).
        let ok = unsafe {
            let trim = glibc::mallopt(glibc::M_TRIM_THRESHOLD, i32::MAX);
            // Segment bodies stay on the heap, where freed ones are reused. glibc caps this
            // threshold (32 MiB on 64-bit, 512 KiB on 32-bit): fall back to the cap.
            let want = (MAX_FRAME_LEN as usize + 64 * 1024).min(i32::MAX as usize) as i32;
            let mmap = glibc::mallopt(glibc::M_MMAP_THRESHOLD, want) != 0
                || glibc::mallopt(glibc::M_MMAP_THRESHOLD, 512 * 1024) != 0;
            // One arena: see the module docs. Not fatal if refused.
            let _ = glibc::mallopt(glibc::M_ARENA_MAX, 1);
            trim != 0 && mmap
        };
        if !ok {
            log::warn!("the allocator refused the memory settings; not reserving memory");
            return false;
        }
        let mut chunks = Vec::with_capacity(bytes / RESERVE_CHUNK + 1);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(RESERVE_CHUNK);
            // Non-zero: zeroed memory may come untouched from the system.
            chunks.push(vec![0xA5u8; n]);
            left -= n;
        }
        std::hint::black_box(&chunks);
        drop(chunks);
        log::debug!("reserved {} KiB of heap", bytes / 1024);
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (bytes, RESERVE_CHUNK);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_box_fits_the_default_limit_and_the_unit() {
        let p = MemoryPlan::new(16 * MIB, 8, 8);
        // Each budget as derived: one 4 MiB + 1 KiB frame, 8 partners' segments, 80 links'
        // control frames; 8 uploads; 80 links; 8 players; 10 % on top.
        assert_eq!(p.frames, 4097 * KIB + 8 * 256 * KIB + 80 * 8 * KIB);
        assert_eq!(p.uploads, 2 * MIB);
        assert_eq!(p.links, 80 * 48 * KIB);
        assert_eq!(p.players, 512 * KIB);
        let sub = p.fixed + p.ring + p.frames + p.uploads + p.links + p.players;
        assert_eq!(p.margin, sub / 10);
        assert_eq!(p.total(), sub + sub / 10);
        assert!(
            p.check(DEFAULT_MEMORY_LIMIT).is_ok(),
            "{:?}",
            p.check(DEFAULT_MEMORY_LIMIT)
        );
        assert_eq!(p.frames_kib() as u64 * KIB, p.frames);
        const { assert!(DEFAULT_MEMORY_LIMIT + KERNEL_HEADROOM <= 64 * MIB) };
    }

    #[test]
    fn a_ring_that_does_not_fit_is_refused_and_the_largest_that_does_is_named() {
        let p = MemoryPlan::new(1024 * MIB, 8, 8);
        let e = p.check(DEFAULT_MEMORY_LIMIT).unwrap_err();
        assert!(e.contains("memory_limit is 48.0 MiB"), "{e}");
        let best = p.largest_ring(DEFAULT_MEMORY_LIMIT);
        assert!(e.contains(&format!("at most {best}")), "{e}");
        // The named ring fits, a MiB more does not.
        assert!(MemoryPlan::new(best, 8, 8)
            .check(DEFAULT_MEMORY_LIMIT)
            .is_ok());
        assert!(MemoryPlan::new(best + MIB, 8, 8)
            .check(DEFAULT_MEMORY_LIMIT)
            .is_err());
        // Nothing fits a limit below the fixed costs.
        assert_eq!(p.largest_ring(8 * MIB), 0);
    }

    #[test]
    fn budgets_grow_with_partners_and_players() {
        let a = MemoryPlan::new(8 * MIB, 4, 1);
        let b = MemoryPlan::new(8 * MIB, 12, 16);
        assert_eq!(b.frames - a.frames, 8 * SEGMENT_ALLOWANCE);
        assert_eq!(b.uploads - a.uploads, 8 * SEGMENT_ALLOWANCE);
        assert_eq!(b.players - a.players, 15 * PLAYER_OVERHEAD);
        assert!(b.total() > a.total());
    }
}
