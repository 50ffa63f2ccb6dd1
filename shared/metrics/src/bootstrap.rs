//! Bootstrap confidence intervals for per-class and macro AUC that resample
//! **patients**, not images: the images of one patient are correlated (the
//! same chest, often the same finding), so resampling images would make the
//! intervals too narrow.
//!
//! A resample draws as many patients as the split has, with replacement,
//! and takes every image of each drawn patient (a patient drawn twice counts
//! twice). Each resample is seeded from (seed, resample index) alone, so the
//! result does not depend on the number of threads. Per resample, each
//! class's AUC is computed in one pass over the images pre-sorted by score,
//! with the draw counts as weights; a class with a single outcome in a
//! resample is left out of that resample (and of its macro mean), and the
//! number of resamples that defined each class is reported. The interval is
//! the percentile interval with numpy's default ("linear") interpolation.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The least number of resamples a report may use.
pub const MIN_RESAMPLES: usize = 1000;

/// How to bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    pub resamples: usize,
    pub seed: u64,
    /// Two-sided coverage, 0.95 for a 95 % interval.
    pub confidence: f64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            resamples: MIN_RESAMPLES,
            seed: 20_261_206,
            confidence: 0.95,
        }
    }
}

/// A percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
    /// Resamples in which the quantity was defined.
    pub resamples: usize,
}

/// Intervals of every class's AUC (None where no resample defined it) and
/// of the macro AUC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AucIntervals {
    pub per_class: Vec<Option<Interval>>,
    pub macro_auc: Option<Interval>,
    pub config: BootstrapConfig,
    pub patients: usize,
}

/// Rows of `scores` / `labels` (row-major, `rows × classes`) grouped by
/// patient: `patient_of_row[r]` is any key; rows with equal keys form one
/// patient.
pub struct PatientData<'a> {
    scores: &'a [f64],
    labels: &'a [bool],
    classes: usize,
    rows: usize,
    /// Patient index (0..patients) of each row.
    patient: Vec<usize>,
    patients: usize,
    /// Per class, the rows sorted by score (ascending).
    order: Vec<Vec<usize>>,
}

impl<'a> PatientData<'a> {
    /// None when the lengths disagree, a score is NaN, or there are no rows.
    pub fn new<K: std::hash::Hash + Eq>(
        scores: &'a [f64],
        labels: &'a [bool],
        classes: usize,
        patient_of_row: &[K],
    ) -> Option<Self> {
        let rows = patient_of_row.len();
        if classes == 0
            || rows == 0
            || scores.len() != rows * classes
            || labels.len() != rows * classes
            || scores.iter().any(|s| s.is_nan())
        {
            return None;
        }
        let mut index = std::collections::HashMap::new();
        let patient: Vec<usize> = patient_of_row
            .iter()
            .map(|key| {
                let next = index.len();
                *index.entry(key).or_insert(next)
            })
            .collect();
        let patients = index.len();
        let order = (0..classes)
            .map(|c| {
                let mut order: Vec<usize> = (0..rows).collect();
                order.sort_by(|&a, &b| scores[a * classes + c].total_cmp(&scores[b * classes + c]));
                order
            })
            .collect();
        Some(PatientData {
            scores,
            labels,
            classes,
            rows,
            patient,
            patients,
            order,
        })
    }

    pub fn patients(&self) -> usize {
        self.patients
    }

    /// Patient draws of resample `b`: `patients` indices with replacement.
    pub fn draw(&self, seed: u64, b: usize) -> Vec<usize> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (0..self.patients)
            .map(|_| rng.random_range(0..self.patients))
            .collect()
    }

    /// AUC of `class` with each row weighted by `weight[row]`; None when
    /// the weighted rows hold one outcome only.
    fn weighted_auc(&self, class: usize, weight: &[u32]) -> Option<f64> {
        let c = self.classes;
        let order = &self.order[class];
        let (mut negatives_below, mut area) = (0f64, 0f64);
        let (mut total_pos, mut total_neg) = (0f64, 0f64);
        let mut start = 0;
        while start < order.len() {
            let score = self.scores[order[start] * c + class];
            let (mut group_pos, mut group_neg) = (0f64, 0f64);
            let mut end = start;
            while end < order.len() && self.scores[order[end] * c + class] == score {
                let row = order[end];
                let w = f64::from(weight[row]);
                if self.labels[row * c + class] {
                    group_pos += w;
                } else {
                    group_neg += w;
                }
                end += 1;
            }
            // Positives beat every lower negative, and tie half the group's.
            area += group_pos * (negatives_below + 0.5 * group_neg);
            negatives_below += group_neg;
            total_pos += group_pos;
            total_neg += group_neg;
            start = end;
        }
        (total_pos > 0.0 && total_neg > 0.0).then(|| area / (total_pos * total_neg))
    }

    /// Per-class AUC and macro AUC of one resample given by its patient draws.
    pub fn resample_auc(&self, draws: &[usize]) -> ResampleAuc {
        let mut times_drawn = vec![0u32; self.patients];
        for &p in draws {
            if let Some(times) = times_drawn.get_mut(p) {
                *times += 1;
            }
        }
        let weight: Vec<u32> = (0..self.rows)
            .map(|r| times_drawn[self.patient[r]])
            .collect();
        let per_class: Vec<Option<f64>> = (0..self.classes)
            .map(|c| self.weighted_auc(c, &weight))
            .collect();
        let defined: Vec<f64> = per_class.iter().flatten().copied().collect();
        let macro_auc =
            (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
        (per_class, macro_auc)
    }

    /// Intervals from the given resamples (each a list of patient draws),
    /// for checking against another implementation on the same draws.
    pub fn intervals_from(
        &self,
        resamples: &[Vec<usize>],
        confidence: f64,
    ) -> (Vec<Option<Interval>>, Option<Interval>) {
        let results: Vec<ResampleAuc> =
            resamples.par_iter().map(|d| self.resample_auc(d)).collect();
        self.summarise(&results, confidence)
    }

    /// The seeded patient bootstrap of `config`. Draws are made inside each
    /// resample's task, so memory holds one draw per thread, not all of them.
    pub fn auc_intervals(&self, config: &BootstrapConfig) -> AucIntervals {
        let results: Vec<ResampleAuc> = (0..config.resamples)
            .into_par_iter()
            .map(|b| self.resample_auc(&self.draw(config.seed, b)))
            .collect();
        let (per_class, macro_auc) = self.summarise(&results, config.confidence);
        AucIntervals {
            per_class,
            macro_auc,
            config: *config,
            patients: self.patients,
        }
    }

    fn summarise(
        &self,
        results: &[ResampleAuc],
        confidence: f64,
    ) -> (Vec<Option<Interval>>, Option<Interval>) {
        let alpha = (1.0 - confidence) / 2.0;
        let interval = |mut values: Vec<f64>| -> Option<Interval> {
            if values.is_empty() {
                return None;
            }
            values.sort_by(f64::total_cmp);
            Some(Interval {
                lower: percentile_linear(&values, alpha),
                upper: percentile_linear(&values, 1.0 - alpha),
                resamples: values.len(),
            })
        };
        let per_class = (0..self.classes)
            .map(|c| interval(results.iter().filter_map(|(pc, _)| pc[c]).collect()))
            .collect();
        let macro_auc = interval(results.iter().filter_map(|(_, m)| *m).collect());
        (per_class, macro_auc)
    }
}

/// Per-class AUC and macro AUC of one resample.
type ResampleAuc = (Vec<Option<f64>>, Option<f64>);

/// The paired bootstrap of a macro-AUC difference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedMacro {
    /// Percentile interval of `macro(a) − macro(b)` over the resamples.
    pub lower: f64,
    pub upper: f64,
    /// One-sided p-value of "a is no better than b":
    /// `(#{Δ* ≤ 0} + 1) / (B + 1)`.
    pub p_value: f64,
    /// Resamples in which both macro AUCs were defined.
    pub resamples: usize,
}

/// Both models scored on the same patient draws, resample by resample;
/// None when the two hold different rows or patients, or no resample
/// defined both macro AUCs.
pub fn paired_macro_bootstrap(
    a: &PatientData<'_>,
    b: &PatientData<'_>,
    config: &BootstrapConfig,
) -> Option<PairedMacro> {
    if a.rows != b.rows || a.classes != b.classes || a.patient != b.patient {
        return None;
    }
    let mut deltas: Vec<f64> = (0..config.resamples)
        .into_par_iter()
        .filter_map(|i| {
            let draws = a.draw(config.seed, i);
            let (_, macro_a) = a.resample_auc(&draws);
            let (_, macro_b) = b.resample_auc(&draws);
            Some(macro_a? - macro_b?)
        })
        .collect();
    if deltas.is_empty() {
        return None;
    }
    deltas.sort_by(f64::total_cmp);
    let alpha = (1.0 - config.confidence) / 2.0;
    let not_better = deltas.iter().filter(|d| **d <= 0.0).count();
    Some(PairedMacro {
        lower: percentile_linear(&deltas, alpha),
        upper: percentile_linear(&deltas, 1.0 - alpha),
        p_value: (not_better + 1) as f64 / (deltas.len() + 1) as f64,
        resamples: deltas.len(),
    })
}

/// The `q`-quantile (0..=1) of ascending `sorted`, interpolated linearly
/// between the two nearest ranks (numpy's default `percentile` method).
pub fn percentile_linear(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let below = h.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + (h - below as f64) * (sorted[above] - sorted[below])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roc_auc;

    fn data() -> (Vec<f64>, Vec<bool>, Vec<u32>) {
        // 40 rows, 2 classes, 4 images per patient.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        let mut patients = Vec::new();
        for r in 0..40u32 {
            for _ in 0..2 {
                let y = rng.random_bool(0.4);
                labels.push(y);
                scores
                    .push(f64::from(rng.random_range(0..10u32)) / 10.0 + if y { 0.3 } else { 0.0 });
            }
            patients.push(r / 4);
        }
        (scores, labels, patients)
    }

    #[test]
    fn unit_weights_give_the_plain_auc() {
        let (scores, labels, patients) = data();
        let d = PatientData::new(&scores, &labels, 2, &patients).unwrap();
        let everyone: Vec<usize> = (0..d.patients()).collect();
        let (per_class, _) = d.resample_auc(&everyone);
        for c in 0..2 {
            let s: Vec<f64> = (0..40).map(|r| scores[r * 2 + c]).collect();
            let l: Vec<bool> = (0..40).map(|r| labels[r * 2 + c]).collect();
            let plain = roc_auc(&s, &l).unwrap();
            assert!((per_class[c].unwrap() - plain).abs() < 1e-12);
        }
    }

    #[test]
    fn same_seed_same_interval_whatever_the_threads() {
        let (scores, labels, patients) = data();
        let d = PatientData::new(&scores, &labels, 2, &patients).unwrap();
        let config = BootstrapConfig {
            resamples: 200,
            ..BootstrapConfig::default()
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let a = one.install(|| d.auc_intervals(&config));
        let b = three.install(|| d.auc_intervals(&config));
        assert_eq!(a, b);
        let m = a.macro_auc.unwrap();
        assert!(m.lower < m.upper, "{m:?}");
        let other = d.auc_intervals(&BootstrapConfig { seed: 1, ..config });
        assert_ne!(a, other);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile_linear(&v, 0.0), 1.0);
        assert_eq!(percentile_linear(&v, 1.0), 4.0);
        // numpy.percentile([1,2,3,4], 25) == 1.75
        assert!((percentile_linear(&v, 0.25) - 1.75).abs() < 1e-15);
    }
}
