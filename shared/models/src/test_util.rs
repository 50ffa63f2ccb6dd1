//! Helpers shared by the unit tests of the fused ops.

use candle_core::{Device, Tensor};

/// A tensor of `shape` with values uniform in [lo, hi), from a seeded
/// ChaCha stream.
pub(crate) fn random(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let len = shape.iter().product::<usize>();
    let data: Vec<f32> = (0..len).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
}

/// max |a − b| / max(|b|, 1e-3): relative to the reference's scale.
pub(crate) fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// ⟨a, b⟩ in f64.
pub(crate) fn dot(a: &Tensor, b: &Tensor) -> f64 {
    flat(a)
        .iter()
        .zip(&flat(b))
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum()
}

pub(crate) fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The gradients of ⟨y, upstream⟩: `upstream` is the gradient reaching `y`.
pub(crate) fn grads_of(y: &Tensor, upstream: &Tensor) -> candle_core::backprop::GradStore {
    (y * upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// `f` run on a rayon pool of `threads` threads: the fused ops' results
/// must not depend on it.
pub(crate) fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}
