//! The allocator of every program that trains. A library cannot choose a
//! program's allocator: each training binary declares it,
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: chexvision_trainer::TrainingAllocator = chexvision_trainer::TrainingAllocator;
//! ```
//!
//! A training step allocates and frees hundreds of large tensors (the
//! activations kept for the backward pass, their gradients). With glibc's
//! malloc each one above its mmap threshold is a fresh mapping: the kernel
//! zeroes its pages on first touch and takes them back on free, which was
//! about a fifth of a CPU DenseNet-121 step. mimalloc keeps freed memory
//! for reuse; [`keep_freed_memory`] makes it hold on for a second before
//! returning it to the OS, longer than the gap between two steps
//! (docs/benchmarks.md: 1.8× on that step), and a minute for the large
//! blocks it keeps in its arenas: their purge runs a fixed time after the
//! first free, not after the last, so at its default (10 × the delay) it
//! returned a whole step's activations every 10 s, and steps longer than a
//! second paid the page faults again (clear_page 19 % of an SE-ResNet
//! step on a 2-core AMD EPYC).

/// The global allocator of training programs.
pub use mimalloc::MiMalloc as TrainingAllocator;

/// mimalloc's `mi_option_purge_delay` (the same position in the v2 and v3
/// option enums; the Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS after this many idle milliseconds
/// (mimalloc's default is 10, shorter than a training step).
const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

/// mimalloc's `mi_option_arena_purge_mult` (also the same in v2 and v3).
const MI_OPTION_ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

/// Arenas purge after this many purge delays: one minute.
const ARENA_PURGE_MULT: std::os::raw::c_long = 60;

/// Sets the purge delays once per process; called when a [`crate::Trainer`]
/// is built (no effect on a program with another global allocator).
pub(crate) fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sets integer options; mimalloc reads options atomically.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_PURGE_MULT, ARENA_PURGE_MULT);
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_is_set() {
        super::keep_freed_memory();
        // SAFETY: reads an integer option.
        let got = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(got, super::PURGE_DELAY_MS);
        // SAFETY: reads an integer option.
        let got = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_PURGE_MULT) };
        assert_eq!(got, super::ARENA_PURGE_MULT);
    }
}
