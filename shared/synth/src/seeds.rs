//! Seed derivation. Every random choice comes from a ChaCha8 stream keyed by
//! (seed, domain, index): the same inputs give the same numbers on every
//! platform and thread count, and any record can be made on its own.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a key is for; keys of different domains never coincide.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Domain {
    /// Patient grouping of one block of indices.
    Block = 1,
    /// Everything fixed for one patient (sex, base age, body build, lung markings).
    Patient = 2,
    /// Everything of one image (labels, view, positioning, exposure, findings, noise).
    Image = 3,
}

/// Streams of a patient key.
pub(crate) const PATIENT_META: u64 = 0;
pub(crate) const PATIENT_BODY: u64 = 1;
pub(crate) const PATIENT_MARKINGS: u64 = 2;

/// Streams of an image key. Each finding has its own stream
/// (`IMAGE_FINDING` plus the label index) so adding or removing one label
/// leaves the anatomy and the other findings exactly as they were.
pub(crate) const IMAGE_META: u64 = 0;
pub(crate) const IMAGE_ACQUISITION: u64 = 1;
pub(crate) const IMAGE_NOISE: u64 = 2;
pub(crate) const IMAGE_FINDING: u64 = 16;

/// splitmix64's finaliser: a cheap bijective mixer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The ChaCha8 stream `stream` of key (seed, domain, index).
pub(crate) fn rng(seed: u64, domain: Domain, index: u64, stream: u64) -> ChaCha8Rng {
    let k0 = mix(seed);
    let k1 = mix(k0 ^ domain as u64);
    let k2 = mix(k1 ^ index);
    let k3 = mix(k2 ^ 0x5851_F42D_4C95_7F2D);
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([k0, k1, k2, k3]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// Small helpers on top of `rand::Rng` used by all modules.
pub(crate) trait RngExt {
    /// Uniform in [lo, hi).
    fn uni(&mut self, lo: f32, hi: f32) -> f32;
    /// True with probability p.
    fn chance(&mut self, p: f32) -> bool;
    /// Uniform index in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize;
}

impl<R: rand::Rng> RngExt for R {
    fn uni(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.random::<f32>()
    }

    fn chance(&mut self, p: f32) -> bool {
        self.random::<f32>() < p
    }

    fn below(&mut self, n: usize) -> usize {
        self.random_range(0..n.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn keys_and_streams_are_distinct_and_stable() {
        let a = rng(7, Domain::Image, 3, 0).next_u64();
        assert_eq!(a, rng(7, Domain::Image, 3, 0).next_u64());
        assert_ne!(a, rng(7, Domain::Image, 3, 1).next_u64());
        assert_ne!(a, rng(7, Domain::Image, 4, 0).next_u64());
        assert_ne!(a, rng(7, Domain::Patient, 3, 0).next_u64());
        assert_ne!(a, rng(8, Domain::Image, 3, 0).next_u64());
    }
}
