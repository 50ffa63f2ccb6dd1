//! The label-set frequency table of the real NIH metadata (written by
//! `scripts/make_synth_label_table.py`), embedded at build time and parsed on
//! first use. Label strings that differ only in order (`A|B` and `B|A` both
//! occur in the real file) are merged into one `LabelSet`.

use std::sync::OnceLock;

use chexvision_dataset::LabelSet;
use rand::Rng;

const TABLE_TEXT: &str = include_str!("../data/label_sets.tsv");

#[derive(Debug)]
pub(crate) struct LabelTable {
    sets: Vec<LabelSet>,
    /// Running totals of the counts, same order as `sets`.
    cumulative: Vec<u64>,
}

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
    pub(crate) fn embedded() -> Result<&'static LabelTable, String> {
        static TABLE: OnceLock<Result<LabelTable, String>> = OnceLock::new();
        TABLE
            .get_or_init(|| LabelTable::parse(TABLE_TEXT))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
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
