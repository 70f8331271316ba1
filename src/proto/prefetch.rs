//! Cache prefetch hints, for drivers that know which node they will touch next (the
//! simulator looks a few events ahead in its queue). A hint never changes what a program
//! computes; on targets without one it does nothing.

/// Asks for the cache lines of `bytes` bytes from `p` to be loaded.
#[inline(always)]
pub fn lines<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = p as *const i8;
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch never faults and reads nothing a program can observe; the
            // address need not be valid.
            unsafe {
                core::arch::x86_64::_mm_prefetch(
                    p.wrapping_add(off),
                    core::arch::x86_64::_MM_HINT_T0,
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, bytes);
    }
}

/// Asks for the storage of `v` (its first `max` elements at most) to be loaded.
#[inline(always)]
pub fn slice<T>(v: &[T], max: usize) {
    lines(
        v.as_ptr(),
        core::mem::size_of_val(v).min(max * core::mem::size_of::<T>()),
    );
}
