//! The process's allocator: mimalloc for every allocation, Rust's and librdkafka's (C) alike.
//!
//! - **Rust's** allocations go to mimalloc through `#[global_allocator]`: under glibc, malloc and
//!   free were 26 % of the processor's instructions per record (bench/PROFILE.md).
//! - **librdkafka's** go to mimalloc too (the crate's `override` feature): the binary defines
//!   `malloc`, `free` and the rest, so every C library in the process, librdkafka included, binds
//!   to them. Under glibc, librdkafka's allocations were the hottest code of the processor in a
//!   sampling profile (13 % of its CPU: a message allocated on the committer thread is freed on a
//!   broker thread, which glibc's per-thread caches do not serve). This is how a preloaded
//!   allocator works; the `#[used]` reference in `libmimalloc-sys` makes the static link keep it.
//! - **Memory goes back to the OS within 100 ms** of being freed (`PURGE_DELAY_MS`, mimalloc's
//!   default is 1 s), and no transparent huge pages are asked for (the crate's `no_thp` feature).
//!   With both at their defaults, the processor's peak RSS over 1 M records was 177–190 MB against
//!   142–155 MB under glibc; with both set, 123 MB (bench/PROCESSOR.md, issue 6/6 item 2's bound
//!   is 150 MB).
//!
//! Invariant: `tune` runs first in `main`, before any thread starts.
//!
//! The only module with unsafe code (C calls to mimalloc's option setter and getter; `make lint`
//! checks that no other file allows it).
#![allow(unsafe_code)]

use std::os::raw::c_long;

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (`libmimalloc-sys` 0.1.49 does not name
/// it). The test below pins the index by the option's default value.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory is kept before it is returned to the OS.
const PURGE_DELAY_MS: c_long = 100;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets the allocator's options that cannot be chosen at build time; one an operator set in
/// mimalloc's own environment variable (`MIMALLOC_PURGE_DELAY`) is left as they set it.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores a value; the purge code reads it on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // mimalloc v3's default purge delay is 1000 ms, and no option next to it has that default:
        // a mimalloc whose enum moved fails here instead of silently setting another option.
        // SAFETY: reads an option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            before, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not purge_delay"
        );
        tune();
        // SAFETY: reads an option.
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, PURGE_DELAY_MS);
    }

    #[test]
    fn librdkafka_allocates_from_mimalloc() {
        // A block from C's malloc is one mimalloc knows: the override is linked in.
        // SAFETY: malloc/free of a block we own; mi_is_in_heap_region only reads.
        unsafe {
            let p = libc_malloc(64);
            assert!(!p.is_null());
            assert!(libmimalloc_sys::mi_is_in_heap_region(p));
            libc_free(p);
        }
    }

    unsafe extern "C" {
        #[link_name = "malloc"]
        fn libc_malloc(size: usize) -> *mut std::ffi::c_void;
        #[link_name = "free"]
        fn libc_free(p: *mut std::ffi::c_void);
    }
}
