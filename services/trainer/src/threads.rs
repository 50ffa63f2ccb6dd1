//! The CPU threads of a training program. Our kernels (convolutions,
//! BatchNorm, pooling, the optimizer) run on rayon's pool; candle's own
//! elementwise kernels (the gradient sums of its backward pass, among
//! others) run on a second pool of `CANDLE_NUM_THREADS − 1` workers beside
//! the calling thread. After each candle op those workers spin, up to
//! 25,000 times by candle's default, before they park, on the very cores
//! rayon's threads need for the next convolution. In an SE-ResNet step at
//! batch 8 on 2 cores that spin was 5 % of the samples, and the step ran
//! 7 % faster with the workers parking at once (median of eight
//! alternating pairs; docs/benchmarks.md, "Steady state, and candle's
//! workers parked"). A spin limit of 0 rather than `CANDLE_NUM_THREADS=1`
//! keeps candle's kernels parallel on machines with more cores.

/// candle's barrier pool reads its spin limit from this variable once,
/// when its first parallel op creates the pool.
pub const CANDLE_SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Has candle's idle workers park at once, unless the environment already
/// sets [`CANDLE_SPIN_LIMIT_VAR`]. Call it first in `main`, before any
/// other thread exists (it sets a process environment variable) and before
/// any candle op.
pub fn park_idle_candle_workers() {
    if std::env::var_os(CANDLE_SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(CANDLE_SPIN_LIMIT_VAR, "0");
    }
}
