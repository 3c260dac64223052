//! The allocator setting of training processes.
//!
//! A training step allocates and frees the same large activation and gradient buffers every
//! step. glibc's malloc returns freed large blocks to the kernel (blocks above its mmap
//! threshold are unmapped; free memory at the top of a heap is trimmed), so the next step
//! touches fresh pages and pays a page fault per 4 KiB — measured on the benchmark model as
//! ~10 % of an fp32 step and ~15 % of a bf16 step. [`retain_freed_memory`] keeps freed memory
//! in the process for reuse: peak memory is unchanged (the same buffers are reused), memory
//! is only returned at exit. It also keeps one malloc arena for every thread: the work runs on
//! rayon's threads ([`crate::pool`]), and with glibc's default of one arena per thread each
//! would keep its own freed buffers, doubling peak memory (measured: 759 → 1,654 MB).

/// Keep freed blocks for reuse instead of returning them to the kernel (glibc only; elsewhere
/// nothing happens). Returns whether the setting took.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The largest threshold glibc accepts on 64-bit systems (larger blocks are still mapped).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        // SAFETY: mallopt only changes malloc's tuning parameters; it takes no pointers and is
        // safe to call at any time (glibc serialises it against other malloc calls).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Asks the kernel to back the whole 2 MiB pages of the `len` bytes at `addr` with huge pages (Linux `madvise`
/// `MADV_HUGEPAGE`; where transparent huge pages are `madvise`-only, as is common, memory is
/// otherwise mapped in 4 KiB pages). Call it before the pages are first written. Decoding streams
/// every weight once per token: with 4 KiB pages that is a TLB miss, and a restart of the
/// hardware prefetcher, every 4 KiB. Returns whether the advice was taken; elsewhere nothing
/// happens.
pub fn advise_huge_pages(addr: *const u8, len: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = addr as usize;
        let lo = start.next_multiple_of(HUGE);
        let hi = (start + len) / HUGE * HUGE;
        if hi <= lo {
            return false;
        }
        // SAFETY: MADV_HUGEPAGE only changes how pages are backed, never their contents or
        // mappings, so any range is harmless (an unmapped one is refused with an error); callers
        // pass their own allocation, rounded inwards here to whole huge pages.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (addr, len);
        false
    }
}

#[cfg(test)]
mod tests {
    /// Advice covers whole 2 MiB pages only (none inside a small buffer) and never changes what
    /// a buffer holds; on a Linux kernel built with transparent huge pages it is taken.
    #[test]
    fn huge_page_advice_is_whole_pages_and_keeps_contents() {
        let small = vec![7u8; 4096];
        assert!(!super::advise_huge_pages(small.as_ptr(), small.len()));
        let big: Vec<u32> = (0..(3 << 20)).collect();
        let took = super::advise_huge_pages(big.as_ptr() as *const u8, 4 * big.len());
        if cfg!(target_os = "linux") && std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            assert!(took, "MADV_HUGEPAGE refused on a 12 MiB buffer");
        }
        assert!(big.iter().enumerate().all(|(i, &v)| v == i as u32));
    }

    #[test]
    fn the_setting_takes_on_glibc() {
        let took = super::retain_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Memory still works: a large block is allocated, freed, and allocated again.
        let v = vec![1u8; 40 << 20];
        drop(v);
        assert_eq!(vec![2u8; 40 << 20][123], 2);
    }
}
