//! Gives back the memory start-up used and no longer needs.
//!
//! Start-up parses the configuration, the eBPF object and its maps, and opens the firewall:
//! allocations of several MiB that are freed again before the first knock. glibc's allocator keeps
//! freed memory inside its heaps for later use and returns only what sits at the top, so without
//! help the daemon's resident size stays near its start-up peak. `malloc_trim(0)` returns every
//! free page of every heap to the kernel; called once, when start-up is done.

#![allow(unsafe_code)]

/// Returns the allocator's free pages to the kernel (glibc on Linux; nothing elsewhere).
pub fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a padding size and only reorganises the allocator's own
        // free lists; it has no pointer arguments and is thread-safe in glibc.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            "start-up memory returned to the kernel"
        );
    }
}
