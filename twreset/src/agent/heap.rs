//! Giving freed heap back to the kernel after the agent's big passes (the seed, a reconcile, the
//! metrics figures): what they free stays mapped otherwise, and the process's RSS would keep the
//! high-water mark of every pass.
//!
//! glibc's allocator keeps freed memory in its arenas (one per thread that allocates) unless it
//! lies at the top of the heap, and after a large block is freed it raises its mmap threshold, so
//! the next large blocks come from those arenas too. `malloc_trim(0)` returns every free whole
//! page of every arena (`madvise(MADV_DONTNEED)`); it costs a walk of the free lists, a
//! millisecond or so, next to passes that take from tens of ms to seconds on a big table.

/// Return the free pages of every arena to the kernel. A no-op where the C library has no
/// `malloc_trim` (not glibc).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
