//! The widest vector instructions of the CPU a program runs on, for the
//! elementwise loops of the training ops.
//!
//! Our crates are compiled for the x86-64 baseline (SSE2), so that one
//! binary runs on every x86-64 machine; a loop written plainly is then
//! vectorised four floats wide. [`simd`] runs a closure compiled again
//! for AVX-512 or AVX2 + FMA, whichever this CPU has (detected once at
//! run time), so the same loop runs 16 or 8 floats wide. The closure and
//! everything it calls must be inlined into that copy, so the closure is
//! written `#[inline(always)] move || ...` and the functions it calls are
//! `#[inline(always)]` too: a call that is not inlined runs the baseline
//! code. `move` matters where the loop uses captured scalars: captured by
//! reference, they are reloaded every element and the loop does not
//! vectorise (BatchNorm's input gradient ran 5× slower so). Results are
//! the same on every path: the loops only add, multiply and compare, and
//! nothing is contracted into fused multiply-adds.

/// Runs `f` compiled for the widest vector instructions this CPU has.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}
