//! The process's memory, fixed at start where the allocator allows it.
//!
//! A node's big consumer is its segment store: up to `Config::store_bytes` of segment bodies,
//! filled over the first two minutes of a channel and then recycled segment by segment. Left
//! to itself, glibc's allocator grows the heap as the store fills and may hand freed bodies
//! back to the system and take them again, so the resident size drifts with the stream and a
//! box that is short of memory finds out late. [`reserve_heap`] takes the store's budget at
//! start instead: bodies are kept on the heap (not in separate mappings), freed memory is kept
//! for reuse, and the budget is touched once, so that afterwards the resident size only grows
//! if the process uses more than it planned for. That makes the budget visible at start and
//! makes growth under load a real signal. Other allocators (musl) are left as they are.

/// Reserved on top of the store's budget: frames in flight, link buffers, tables.
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
        use crate::proto::wire::MAX_FRAME_LEN;
        // SAFETY: mallopt only changes allocator parameters; it is called before the node
        // allocates its store, and refuses values it cannot take (returns 0).
        let ok = unsafe {
            let trim = glibc::mallopt(glibc::M_TRIM_THRESHOLD, i32::MAX);
            // Segment bodies stay on the heap, where freed ones are reused. glibc caps this
            // threshold (32 MiB on 64-bit, 512 KiB on 32-bit): fall back to the cap.
            let want = (MAX_FRAME_LEN as usize + 64 * 1024).min(i32::MAX as usize) as i32;
            let mmap = glibc::mallopt(glibc::M_MMAP_THRESHOLD, want) != 0
                || glibc::mallopt(glibc::M_MMAP_THRESHOLD, 512 * 1024) != 0;
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
