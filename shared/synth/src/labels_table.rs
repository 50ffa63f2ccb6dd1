//! The label-set frequency table of the real NIH metadata (written by
//! `scripts/make_synth_label_table.py`), embedded at build time and parsed on
//! first use. Label strings that differ only in order (`A|B` and `B|A` both
//! occur in the real file) are merged into one `LabelSet`.
//!
//! [`LabelTable::enriched`] reweights the same label sets so that rare
//! findings are drawn more often (for small experiments): no set is invented
//! and co-occurrence stays the real one (see its documentation).

use std::sync::{Arc, OnceLock};

use chexvision_dataset::{LabelSet, LABELS};
use rand::Rng;

const TABLE_TEXT: &str = include_str!("../data/label_sets.tsv");

#[derive(Debug, Clone)]
pub(crate) struct LabelTable {
    sets: Vec<LabelSet>,
    /// Running totals of the counts (or weights), same order as `sets`.
    cumulative: Vec<u64>,
}

/// Largest `min_finding_share` (`LabelTable::enriched`) accepts. The real
/// label sets can give every finding at most ~13 % this way (No Finding
/// then has no weight left); 0.1 still leaves it ~17 % of the images.
pub const MAX_FINDING_SHARE: f64 = 0.1;

/// Most sweeps [`LabelTable::enriched`] makes before giving up (a floor of
/// 0.1, the largest allowed, needs ~230).
const MAX_SWEEPS: usize = 10_000;
/// Sum of the integer weights of an enriched table (~2^40): weights are
/// rounded to 1 part in ~10^12 of the total.
const ENRICHED_TOTAL: f64 = 1_099_511_627_776.0;

impl LabelTable {
    fn parse(text: &str) -> Result<Self, String> {
        let mut merged: Vec<(LabelSet, u64)> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (count, labels) = line
                .split_once('\t')
                .ok_or_else(|| format!("line {}: no tab in `{line}`", number + 1))?;
            let count: u64 = count
                .trim()
                .parse()
                .map_err(|_| format!("line {}: count `{count}` is not a number", number + 1))?;
            let set = LabelSet::parse(labels).map_err(|e| format!("line {}: {e}", number + 1))?;
            match merged.iter_mut().find(|(s, _)| *s == set) {
                Some((_, total)) => *total += count,
                None => merged.push((set, count)),
            }
        }
        if merged.is_empty() {
            return Err("no label sets".into());
        }
        let mut running = 0u64;
        let cumulative = merged
            .iter()
            .map(|(_, c)| {
                running += c;
                running
            })
            .collect();
        Ok(LabelTable {
            sets: merged.into_iter().map(|(s, _)| s).collect(),
            cumulative,
        })
    }

    /// The embedded table, parsed once.
    pub(crate) fn embedded() -> Result<Arc<LabelTable>, String> {
        static TABLE: OnceLock<Result<Arc<LabelTable>, String>> = OnceLock::new();
        TABLE
            .get_or_init(|| LabelTable::parse(TABLE_TEXT).map(Arc::new))
            .clone()
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Weight (count) of each set, same order as `sets`.
    fn weights(&self) -> Vec<u64> {
        let mut previous = 0;
        self.cumulative
            .iter()
            .map(|&c| {
                let w = c - previous;
                previous = c;
                w
            })
            .collect()
    }

    /// Expected share of the draws that carry each finding (in `LABELS`
    /// order).
    pub(crate) fn finding_shares(&self) -> [f64; 14] {
        let total = self.total().max(1) as f64;
        let mut shares = [0.0; 14];
        for (set, weight) in self.sets.iter().zip(self.weights()) {
            for (k, share) in shares.iter_mut().enumerate() {
                if set.contains(k) {
                    *share += weight as f64 / total;
                }
            }
        }
        shares
    }

    /// The same label sets, reweighted so that each of the 14 findings is
    /// drawn with probability at least `floor` (`0.0` gives an identical
    /// table, hence identical draws).
    ///
    /// The weight of a set `s` with real count `c(s)` becomes
    /// `c(s) · (1 + Σ_{k ∈ s} b_k)`, with one boost `b_k ≥ 0` per finding.
    /// That is the mixture "an image of the real distribution, or, with
    /// some probability, a finding `k` and then a real image that has `k`":
    /// given a boosted finding, which other findings come with it is exactly
    /// as in the real data, and No Finding keeps its real weight while the
    /// rest grows. The boosts are found by raising the finding furthest
    /// below the floor to it, one at a time, until none is below (each step
    /// has a closed form). Deterministic: plain f64 arithmetic in a fixed
    /// order, rounded to integer weights.
    pub(crate) fn enriched(&self, floor: f64) -> Result<LabelTable, String> {
        if !(0.0..=MAX_FINDING_SHARE).contains(&floor) {
            return Err(format!(
                "finding floor {floor} is not in 0..={MAX_FINDING_SHARE}"
            ));
        }
        if floor == 0.0 {
            return Ok(self.clone());
        }
        let counts: Vec<f64> = self.weights().into_iter().map(|w| w as f64).collect();
        let n = LABELS.len();
        // Real count of the images that have finding k.
        let mut with = vec![0.0f64; n];
        for (set, &count) in self.sets.iter().zip(&counts) {
            for (k, total) in with.iter_mut().enumerate() {
                if set.contains(k) {
                    *total += count;
                }
            }
        }
        if let Some(k) = with.iter().position(|&c| c <= 0.0) {
            return Err(format!("no label set has {}", LABELS[k]));
        }
        let mut boost = vec![0.0f64; n];
        let weights = |boost: &[f64]| -> Vec<f64> {
            self.sets
                .iter()
                .zip(&counts)
                .map(|(set, &count)| {
                    let extra: f64 = (0..n).filter(|&k| set.contains(k)).map(|k| boost[k]).sum();
                    count * (1.0 + extra)
                })
                .collect()
        };
        // A relative slack, so that the rounding to integer weights below
        // cannot bring a share under the floor.
        let target = floor * (1.0 + 1e-6);
        let mut reached = false;
        for _ in 0..MAX_SWEEPS {
            let w = weights(&boost);
            let total: f64 = w.iter().sum();
            let mut mass = vec![0.0f64; n];
            for (set, &weight) in self.sets.iter().zip(&w) {
                for (k, m) in mass.iter_mut().enumerate() {
                    if set.contains(k) {
                        *m += weight;
                    }
                }
            }
            // The finding furthest below the floor (first one on ties).
            let mut lowest: Option<(usize, f64)> = None;
            for (k, &m) in mass.iter().enumerate() {
                let share = m / total;
                if share < floor && lowest.is_none_or(|(_, s)| share < s) {
                    lowest = Some((k, share));
                }
            }
            let Some((k, _)) = lowest else {
                reached = true;
                break;
            };
            // Raising b_k by d adds d·with[k] to both the mass of k and the
            // total: (m + d·c) / (T + d·c) = target.
            boost[k] += (target * total - mass[k]) / (with[k] * (1.0 - target));
        }
        if !reached {
            return Err(format!(
                "finding floor {floor}: not reached after {MAX_SWEEPS} sweeps"
            ));
        }
        let w = weights(&boost);
        let total: f64 = w.iter().sum();
        let mut running = 0u64;
        let cumulative = w
            .iter()
            .map(|&weight| {
                // Every real set keeps a weight of at least 1.
                running += ((weight / total * ENRICHED_TOTAL).round() as u64).max(1);
                running
            })
            .collect();
        Ok(LabelTable {
            sets: self.sets.clone(),
            cumulative,
        })
    }

    /// A label set drawn with the real frequencies.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> LabelSet {
        let pick = rng.random_range(0..self.total().max(1));
        let at = self.cumulative.partition_point(|&c| c <= pick);
        self.sets.get(at).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_has_the_real_totals() {
        let table = LabelTable::embedded().unwrap();
        assert_eq!(table.total(), 112_120);
        // 836 distinct strings, 801 distinct sets once order is ignored.
        assert_eq!(table.sets.len(), 801);
        assert_eq!(table.sets[0], LabelSet::default());
        assert_eq!(table.cumulative[0], 60_361);
    }

    #[test]
    fn no_floor_is_the_real_table() {
        let table = LabelTable::embedded().unwrap();
        let same = table.enriched(0.0).unwrap();
        assert_eq!(same.sets, table.sets);
        assert_eq!(same.cumulative, table.cumulative);
    }

    #[test]
    fn a_floor_lifts_every_finding_to_it_and_no_further_than_needed() {
        let table = LabelTable::embedded().unwrap();
        let real = table.finding_shares();
        // Hernia: 227 of 112,120.
        assert!((real[13] - 227.0 / 112_120.0).abs() < 1e-12, "{}", real[13]);
        for floor in [0.01, 0.05, 0.08, MAX_FINDING_SHARE] {
            let enriched = table.enriched(floor).unwrap();
            assert_eq!(enriched.sets, table.sets);
            let shares = enriched.finding_shares();
            for (k, share) in shares.iter().enumerate() {
                assert!(*share >= floor, "floor {floor}: {} at {share}", LABELS[k]);
            }
            let lowest = shares.iter().copied().fold(f64::INFINITY, f64::min);
            assert!(lowest < floor * 1.0001, "floor {floor}: lowest {lowest}");
            // Every real set can still be drawn.
            assert!(enriched.weights().iter().all(|&w| w >= 1));
        }
    }

    #[test]
    fn reweighting_keeps_the_real_co_occurrence() {
        // Weight / real count is 1 + Σ boosts of the set's findings, relative
        // to No Finding: sets of unboosted findings keep their real
        // proportions, and a set's factor is the sum of its findings'.
        let table = LabelTable::embedded().unwrap();
        let enriched = table.enriched(0.08).unwrap();
        let factors: Vec<f64> = enriched
            .weights()
            .iter()
            .zip(table.weights())
            .map(|(&w, c)| w as f64 / c as f64)
            .collect();
        let base = factors[0];
        let single = |k: usize| {
            let at = table
                .sets
                .iter()
                .position(|s| s.bits() == 1 << k)
                .expect("every finding occurs alone");
            factors[at] / base - 1.0
        };
        let boosts: Vec<f64> = (0..14).map(single).collect();
        // Common findings need no boost; the rarest needs the most.
        for k in [0, 2, 3] {
            assert!(
                boosts[k].abs() < 1e-6,
                "{} boosted {}",
                LABELS[k],
                boosts[k]
            );
        }
        assert!(boosts[13] > 10.0, "Hernia boost {}", boosts[13]);
        for (set, factor) in table.sets.iter().zip(&factors) {
            let expected: f64 = 1.0
                + (0..14)
                    .filter(|&k| set.contains(k))
                    .map(|k| boosts[k])
                    .sum::<f64>();
            let got = factor / base;
            assert!(
                (got - expected).abs() < 1e-5 * expected,
                "{set}: factor {got}, expected {expected}"
            );
        }
    }

    #[test]
    fn floors_out_of_range_are_refused() {
        let table = LabelTable::embedded().unwrap();
        for bad in [-0.01, MAX_FINDING_SHARE + 0.001, f64::NAN, f64::INFINITY] {
            assert!(table.enriched(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(LabelTable::parse("3\tCovid\n")
            .unwrap_err()
            .contains("Covid"));
        assert!(LabelTable::parse("x\tMass\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(LabelTable::parse("# only a comment\n").is_err());
    }
}
