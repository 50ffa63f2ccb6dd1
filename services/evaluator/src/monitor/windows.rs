//! Production AUC over rolling windows of confirmed predictions: the
//! last N by prediction time, or those made in the last D seconds (late
//! feedback counts in the window of its prediction). Per window: AUC per
//! finding, macro AUC (mean over the findings with both outcomes), the
//! abnormal head's AUC, their patient-bootstrap intervals (a study is a
//! patient: its images are correlated), the sample count and the observed
//! prevalence.

use chexvision_metrics::{roc_auc, BootstrapConfig, Interval, PatientData};
use serde::{Deserialize, Serialize};

use super::state::{JoinedRow, FINDINGS, OUTPUTS};

/// One window: `last` predictions, or those of the last `seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// The `window` label.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
}

impl WindowSpec {
    pub fn last(name: &str, n: usize) -> Self {
        WindowSpec {
            name: name.into(),
            last: Some(n),
            seconds: None,
        }
    }

    pub fn seconds(name: &str, s: u64) -> Self {
        WindowSpec {
            name: name.into(),
            last: None,
            seconds: Some(s),
        }
    }

    /// Why the spec is not usable, if it is not.
    pub fn problem(&self) -> Option<String> {
        let label_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !label_ok {
            return Some(format!(
                "`{}`: a name of 1-32 letters, digits and _",
                self.name
            ));
        }
        match (self.last, self.seconds) {
            (Some(n), None) if (10..=1_000_000).contains(&n) => None,
            (None, Some(s)) if (60..=400 * 86_400).contains(&s) => None,
            _ => Some(format!(
                "`{}`: give either last (10..=1000000 predictions) or seconds (60..=34560000)",
                self.name
            )),
        }
    }

    /// The rows of `rows` (oldest first) this window holds at `now_ms`.
    pub fn select<'r>(&self, rows: &'r [JoinedRow], now_ms: i64) -> &'r [JoinedRow] {
        match (self.last, self.seconds) {
            (Some(n), _) => &rows[rows.len().saturating_sub(n)..],
            (_, Some(s)) => {
                let since = now_ms - (s as i64) * 1000;
                let start = rows.partition_point(|r| r.at_ms < since);
                &rows[start..]
            }
            _ => &rows[..0],
        }
    }
}

/// The numbers of one model version over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    pub model_version: String,
    pub window: String,
    pub samples: usize,
    pub auc: Vec<Option<f64>>,
    pub auc_interval: Vec<Option<Interval>>,
    pub macro_auc: Option<f64>,
    pub macro_interval: Option<Interval>,
    pub binary_auc: Option<f64>,
    pub binary_interval: Option<Interval>,
    /// Observed share of positives, 14 findings then abnormal.
    pub prevalence: Vec<f64>,
}

/// The window's numbers; None when it holds no confirmed prediction.
pub fn window_stats(
    model_version: &str,
    window: &str,
    rows: &[JoinedRow],
    bootstrap: &BootstrapConfig,
) -> Option<WindowStats> {
    if rows.is_empty() {
        return None;
    }
    let n = rows.len();
    let column = |c: usize| -> (Vec<f64>, Vec<bool>) {
        rows.iter()
            .map(|r| (f64::from(r.probabilities[c]), r.labels[c]))
            .unzip()
    };
    let auc: Vec<Option<f64>> = (0..FINDINGS)
        .map(|c| {
            let (scores, labels) = column(c);
            roc_auc(&scores, &labels)
        })
        .collect();
    let defined: Vec<f64> = auc.iter().flatten().copied().collect();
    let macro_auc =
        (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    let (binary_scores, binary_labels) = column(OUTPUTS - 1);
    let binary_auc = roc_auc(&binary_scores, &binary_labels);
    let prevalence = (0..OUTPUTS)
        .map(|c| rows.iter().filter(|r| r.labels[c]).count() as f64 / n as f64)
        .collect();

    let patients: Vec<&str> = rows.iter().map(|r| r.patient.as_str()).collect();
    let scores: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.probabilities[..FINDINGS].iter().map(|p| f64::from(*p)))
        .collect();
    let labels: Vec<bool> = rows
        .iter()
        .flat_map(|r| r.labels[..FINDINGS].iter().copied())
        .collect();
    let (auc_interval, macro_interval) =
        match PatientData::new(&scores, &labels, FINDINGS, &patients) {
            Some(data) => {
                let intervals = data.auc_intervals(bootstrap);
                (intervals.per_class, intervals.macro_auc)
            }
            None => (vec![None; FINDINGS], None),
        };
    let binary_interval =
        PatientData::new(&binary_scores, &binary_labels, 1, &patients).and_then(|data| {
            data.auc_intervals(bootstrap)
                .per_class
                .into_iter()
                .next()
                .flatten()
        });
    Some(WindowStats {
        model_version: model_version.to_owned(),
        window: window.to_owned(),
        samples: n,
        auc,
        auc_interval,
        macro_auc,
        macro_interval,
        binary_auc,
        binary_interval,
        prevalence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<JoinedRow> {
        (0..n)
            .map(|i| {
                let positive = i % 3 == 0;
                let mut labels = vec![false; OUTPUTS];
                labels[0] = positive;
                labels[OUTPUTS - 1] = positive;
                let p = if positive { 0.6 } else { 0.4 } + (i % 7) as f32 * 0.01;
                JoinedRow {
                    request_id: format!("r{i}"),
                    at_ms: i as i64 * 1000,
                    patient: format!("p{}", i / 2),
                    probabilities: vec![p; OUTPUTS],
                    labels,
                }
            })
            .collect()
    }

    #[test]
    fn windows_select_by_count_and_by_time() {
        let all = rows(100);
        assert_eq!(WindowSpec::last("l", 30).select(&all, 0).len(), 30);
        assert_eq!(WindowSpec::last("l", 300).select(&all, 0).len(), 100);
        // Made in the last 60 s before t = 99 s: rows 39..=99.
        let recent = WindowSpec::seconds("t", 60).select(&all, 99_000);
        assert_eq!(recent.len(), 61);
        assert_eq!(recent[0].request_id, "r39");
        assert!(WindowSpec::last("bad name", 10).problem().is_some());
        assert!(WindowSpec::last("ok", 5).problem().is_some());
        assert!(WindowSpec::seconds("7d", 604_800).problem().is_none());
    }

    #[test]
    fn a_separable_finding_has_auc_one_and_one_outcome_findings_are_undefined() {
        let all = rows(60);
        let stats = window_stats("v", "w", &all, &BootstrapConfig::default()).unwrap();
        assert_eq!(stats.samples, 60);
        assert_eq!(stats.auc[0], Some(1.0));
        assert_eq!(stats.auc[1], None);
        assert_eq!(stats.macro_auc, Some(1.0));
        assert_eq!(stats.binary_auc, Some(1.0));
        assert!((stats.prevalence[0] - 20.0 / 60.0).abs() < 1e-12);
        let interval = stats.macro_interval.unwrap();
        assert!(interval.lower <= 1.0 && interval.upper == 1.0);
        assert!(window_stats("v", "w", &[], &BootstrapConfig::default()).is_none());
    }
}
