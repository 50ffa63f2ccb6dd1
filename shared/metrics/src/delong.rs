//! DeLong's test for two correlated AUCs: two models scored on the same
//! images (DeLong, DeLong & Clarke-Pearson 1988), with the midrank
//! computation of Sun & Xu (2014).
//!
//! For each model, every positive's structural component is the share of
//! negatives it outranks (ties count half), and every negative's is the
//! share of positives that outrank it. The AUC is their mean; the
//! covariance of the two AUCs is `S10 / m + S01 / n` (the sample
//! covariances of the positives' and negatives' components, m positives,
//! n negatives). The difference is tested with
//! `z = ΔAUC / sqrt(var1 + var2 − 2·cov)` against the normal distribution,
//! two-sided.

use serde::{Deserialize, Serialize};

/// The comparison of model A (the challenger) with model B.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeLong {
    pub auc_a: f64,
    pub auc_b: f64,
    /// `auc_a − auc_b`.
    pub delta: f64,
    /// Standard error of the difference.
    pub std_error: f64,
    pub z: f64,
    /// Two-sided p-value of "the AUCs are equal".
    pub p_value: f64,
}

/// Midranks (1-based, ties averaged) of `values`.
fn midranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// AUC and structural components (positives', negatives') of one model.
fn components(scores: &[f64], labels: &[bool]) -> (f64, Vec<f64>, Vec<f64>) {
    let of = |outcome: bool| -> Vec<f64> {
        scores
            .iter()
            .zip(labels)
            .filter(|pair| *pair.1 == outcome)
            .map(|pair| *pair.0)
            .collect()
    };
    let (positives, negatives) = (of(true), of(false));
    let (m, n) = (positives.len() as f64, negatives.len() as f64);
    let combined: Vec<f64> = positives.iter().chain(&negatives).copied().collect();
    let rank_all = midranks(&combined);
    let rank_pos = midranks(&positives);
    let rank_neg = midranks(&negatives);
    let v10: Vec<f64> = (0..positives.len())
        .map(|i| (rank_all[i] - rank_pos[i]) / n)
        .collect();
    let v01: Vec<f64> = (0..negatives.len())
        .map(|j| 1.0 - (rank_all[positives.len() + j] - rank_neg[j]) / m)
        .collect();
    let auc = v10.iter().sum::<f64>() / m;
    (auc, v10, v01)
}

/// Sample covariance (n − 1 in the denominator) of two equal-length series.
fn covariance(a: &[f64], b: &[f64]) -> f64 {
    let k = a.len() as f64;
    if a.len() < 2 {
        return 0.0;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / k, b.iter().sum::<f64>() / k);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - ma) * (y - mb))
        .sum::<f64>()
        / (k - 1.0)
}

/// DeLong's test of `scores_a` against `scores_b` on the same images and
/// `labels`; None when the lengths differ, a score is NaN, or the labels
/// hold one outcome only.
pub fn delong_test(scores_a: &[f64], scores_b: &[f64], labels: &[bool]) -> Option<DeLong> {
    if scores_a.len() != labels.len()
        || scores_b.len() != labels.len()
        || scores_a.iter().chain(scores_b).any(|s| s.is_nan())
    {
        return None;
    }
    let m = labels.iter().filter(|y| **y).count();
    let n = labels.len() - m;
    if m == 0 || n == 0 {
        return None;
    }
    let (auc_a, v10_a, v01_a) = components(scores_a, labels);
    let (auc_b, v10_b, v01_b) = components(scores_b, labels);
    let (m, n) = (m as f64, n as f64);
    let var = |x10: &[f64], y10: &[f64], x01: &[f64], y01: &[f64]| {
        covariance(x10, y10) / m + covariance(x01, y01) / n
    };
    let var_a = var(&v10_a, &v10_a, &v01_a, &v01_a);
    let var_b = var(&v10_b, &v10_b, &v01_b, &v01_b);
    let cov_ab = var(&v10_a, &v10_b, &v01_a, &v01_b);
    let delta = auc_a - auc_b;
    let std_error = (var_a + var_b - 2.0 * cov_ab).max(0.0).sqrt();
    let (z, p_value) = if std_error > 0.0 {
        let z = delta / std_error;
        (z, two_sided_p(z))
    } else if delta == 0.0 {
        (0.0, 1.0)
    } else {
        // Every image ranks the same way under both models, yet the AUCs
        // differ: no sampling variation could explain it.
        (delta.signum() * f64::INFINITY, 0.0)
    };
    Some(DeLong {
        auc_a,
        auc_b,
        delta,
        std_error,
        z,
        p_value,
    })
}

/// P(|Z| ≥ |z|) for a standard normal Z.
pub fn two_sided_p(z: f64) -> f64 {
    libm::erfc(z.abs() / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roc_auc;

    #[test]
    fn aucs_match_the_plain_auc_and_identical_models_do_not_differ() {
        let scores_a = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5, 0.2];
        let scores_b = [0.3, 0.2, 0.5, 0.6, 0.1, 0.9, 0.4];
        let labels = [false, false, true, true, false, true, false];
        let test = delong_test(&scores_a, &scores_b, &labels).unwrap();
        assert!((test.auc_a - roc_auc(&scores_a, &labels).unwrap()).abs() < 1e-12);
        assert!((test.auc_b - roc_auc(&scores_b, &labels).unwrap()).abs() < 1e-12);
        let same = delong_test(&scores_a, &scores_a, &labels).unwrap();
        assert_eq!((same.delta, same.p_value), (0.0, 1.0));
        assert!(delong_test(&scores_a, &scores_b, &[false; 7]).is_none());
    }

    #[test]
    fn normal_tail() {
        assert!((two_sided_p(1.959_963_984_540_054) - 0.05).abs() < 1e-12);
        assert_eq!(two_sided_p(0.0), 1.0);
    }
}
