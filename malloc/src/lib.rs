//! glibc malloc tuning for the resident agent (and the collector's arena cap): a bound on
//! malloc arenas, and handing freed memory back to the operating system after a burst of
//! work.
//!
//! Why: glibc keeps memory that the program freed inside its arenas for reuse, and returns
//! it only when the free space sits at the very top of an arena. A discovery pass allocates
//! a few MiB of short-lived strings between long-lived data (the last inventory, the
//! outbox cache), so after the pass the holes stay resident: the agent's RSS grew by ~4 MiB
//! in five minutes of 60 s refreshes with nothing live to show for it. `malloc_trim(0)`
//! walks every arena and gives whole free pages back (`madvise(MADV_DONTNEED)`); it costs
//! well under a millisecond on the agent's few-MiB heap.
//!
//! Why this crate needs `unsafe`: the two functions are reachable only through FFI, and a
//! foreign function declaration is an `unsafe extern` block. Both functions take plain
//! integers, touch only malloc's own state under its own locks, and are thread-safe, so
//! they are declared `safe` and callers need no `unsafe`. Nothing else here is unsafe, and
//! every other crate of the workspace forbids unsafe code.
//!
//! On anything but Linux with glibc (musl, macOS, Windows) every function is a no-op.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;

    /// `M_ARENA_MAX` from glibc's `<malloc.h>`.
    pub const M_ARENA_MAX: c_int = -8;

    #[allow(unsafe_code)]
    unsafe extern "C" {
        /// Releases free memory from every arena; 1 when some was released.
        pub safe fn malloc_trim(pad: usize) -> c_int;
        /// Sets a malloc parameter; 1 on success.
        pub safe fn mallopt(param: c_int, value: c_int) -> c_int;
    }
}

/// Caps the number of malloc arenas at `max` (glibc's default is 8 per core: every thread
/// that allocates may get its own, each keeping its own free memory). Call it first thing
/// in `main`, before any thread starts. An operator's `MALLOC_ARENA_MAX` in the
/// environment wins. Returns whether the cap was applied.
pub fn bound_arenas(max: u16) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return false;
        }
        glibc::mallopt(glibc::M_ARENA_MAX, std::ffi::c_int::from(max.max(1))) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = max;
        false
    }
}

/// Hands whole free pages of every malloc arena back to the operating system. Call it after
/// a burst of allocations (a discovery pass) has been freed. Returns whether anything was
/// released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        glibc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_goes_back_and_repeated_calls_are_harmless() {
        // Many small blocks, then free all but every 64th: holes inside the heap that
        // glibc keeps unless trimmed.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![(i % 251) as u8; 512]).collect();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(64).collect();
        let _ = release_free_memory();
        let _ = release_free_memory();
        // Live blocks are untouched by the trim.
        assert!(
            kept.iter()
                .enumerate()
                .all(|(n, b)| b.len() == 512 && b.iter().all(|&x| x == ((n * 64) % 251) as u8))
        );
    }

    #[test]
    fn bounding_arenas_twice_is_harmless() {
        let _ = bound_arenas(2);
        let _ = bound_arenas(2);
    }
}
