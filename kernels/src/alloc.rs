//! Allocator settings for tensor workloads.
//!
//! Every candle op allocates its output, and a training step or a generator forward pass frees
//! and reallocates the same few activation sizes (megabytes each) hundreds of times. glibc's
//! defaults serve such blocks with `mmap` and give them back with `munmap` (or trim the heap top),
//! so each op page-faults its output in again, zero-filling it in the kernel and shooting down
//! TLBs on both cores: measured on the client's training step, that was half of the step's time.
//! [`tune_allocator`] keeps freed blocks in the heap for reuse instead. The price is that the
//! process keeps its peak heap size, as PyTorch's CPU caching allocator does.

/// Serves blocks up to 32 MiB (glibc's limit for this setting) from the heap and never trims
/// the heap. Call once at the start of `main`, before threads start. Returns whether the settings
/// were applied (only on glibc targets; elsewhere it does nothing).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only changes allocator parameters; it is called with valid values.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_TOP_PAD, 64 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
