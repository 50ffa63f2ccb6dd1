//! The join of predictions and confirmed findings: pure, in memory,
//! serialisable. Applying the same event twice changes nothing, and the
//! order of two feedbacks for one prediction does not matter (the later
//! confirmation wins), so a snapshot plus the events logged after it, in
//! any order, rebuild the same state after a restart.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The 14 findings then abnormal.
pub const OUTPUTS: usize = 15;
/// The findings a reading confirms.
pub const FINDINGS: usize = 14;

/// One answer of the inference service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRow {
    pub request_id: String,
    pub model_version: String,
    /// When it was made (the event's time), Unix ms.
    pub at_ms: i64,
    /// 14 findings then abnormal.
    pub probabilities: Vec<f32>,
    /// sha256 of the study reference; empty when none was given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub study: String,
}

/// What a radiologist confirmed for one prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    pub findings: Vec<bool>,
    /// When the reading was confirmed, Unix ms.
    pub confirmed_at_ms: i64,
    /// The feedback event's id: orders two confirmations of one time.
    pub event_id: String,
}

impl Confirmation {
    /// Whether `self` supersedes `other` (a later reading).
    fn newer_than(&self, other: &Confirmation) -> bool {
        (self.confirmed_at_ms, &self.event_id) > (other.confirmed_at_ms, &other.event_id)
    }
}

/// What became of a prediction event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionOutcome {
    Recorded,
    Duplicate,
}

/// What became of a feedback event.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackOutcome {
    /// Joined to these predictions (request id → delay in ms); some may
    /// have been confirmed before (`amended` / `duplicate` among them).
    Applied {
        joined: Vec<(String, i64)>,
        amended: usize,
        duplicate: usize,
    },
    /// No prediction has that request id or study reference.
    Unmatched,
}

/// Which prediction(s) a feedback names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Request(String),
    Study(String),
}

/// The join state (persisted as a [`Snapshot`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinState {
    pub predictions: HashMap<String, PredictionRow>,
    pub confirmations: HashMap<String, Confirmation>,
    /// Study hash → its predictions' request ids (rebuilt from them).
    by_study: HashMap<String, Vec<String>>,
}

/// `monitor/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema_version: u32,
    pub written_at_ms: i64,
    pub predictions: Vec<PredictionRow>,
    pub confirmations: BTreeMap<String, Confirmation>,
}

pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;

/// One joined prediction, as the AUC sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinedRow {
    pub request_id: String,
    pub at_ms: i64,
    /// The bootstrap's unit: the study when known, else the prediction.
    pub patient: String,
    pub probabilities: Vec<f32>,
    /// 14 findings then abnormal (any finding).
    pub labels: Vec<bool>,
}

impl JoinState {
    pub fn from_snapshot(snapshot: Snapshot) -> JoinState {
        let mut state = JoinState::default();
        for row in snapshot.predictions {
            state.add_prediction(row);
        }
        state.confirmations = snapshot.confirmations.into_iter().collect();
        state
    }

    pub fn snapshot(&self, now_ms: i64) -> Snapshot {
        let mut predictions: Vec<PredictionRow> = self.predictions.values().cloned().collect();
        predictions.sort_by(|a, b| (a.at_ms, &a.request_id).cmp(&(b.at_ms, &b.request_id)));
        Snapshot {
            schema_version: SNAPSHOT_SCHEMA_VERSION,
            written_at_ms: now_ms,
            predictions,
            confirmations: self
                .confirmations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn add_prediction(&mut self, row: PredictionRow) -> PredictionOutcome {
        if self.predictions.contains_key(&row.request_id) {
            return PredictionOutcome::Duplicate;
        }
        if !row.study.is_empty() {
            self.by_study
                .entry(row.study.clone())
                .or_default()
                .push(row.request_id.clone());
        }
        self.predictions.insert(row.request_id.clone(), row);
        PredictionOutcome::Recorded
    }

    /// The predictions a feedback names (none: unmatched).
    pub fn targets(&self, target: &Target) -> Vec<String> {
        match target {
            Target::Request(id) if self.predictions.contains_key(id) => vec![id.clone()],
            Target::Request(_) => Vec::new(),
            Target::Study(study) => self.by_study.get(study).cloned().unwrap_or_default(),
        }
    }

    pub fn add_feedback(&mut self, target: &Target, confirmation: Confirmation) -> FeedbackOutcome {
        let ids = self.targets(target);
        if ids.is_empty() {
            return FeedbackOutcome::Unmatched;
        }
        let (mut joined, mut amended, mut duplicate) = (Vec::new(), 0, 0);
        for id in ids {
            let delay =
                confirmation.confirmed_at_ms - self.predictions.get(&id).map_or(0, |p| p.at_ms);
            match self.confirmations.get(&id) {
                None => {
                    joined.push((id.clone(), delay.max(0)));
                    self.confirmations.insert(id, confirmation.clone());
                }
                Some(known) if known.findings == confirmation.findings => {
                    duplicate += 1;
                    if confirmation.newer_than(known) {
                        self.confirmations.insert(id, confirmation.clone());
                    }
                }
                Some(known) => {
                    // A corrected reading replaces an earlier one; an
                    // older correction arriving late does not.
                    if confirmation.newer_than(known) {
                        self.confirmations.insert(id, confirmation.clone());
                    }
                    amended += 1;
                }
            }
        }
        FeedbackOutcome::Applied {
            joined,
            amended,
            duplicate,
        }
    }

    /// Forgets predictions made before `oldest_ms`, then the oldest beyond
    /// `max` (with their confirmations). Returns how many went.
    pub fn evict(&mut self, oldest_ms: i64, max: usize) -> usize {
        let mut rows: Vec<(i64, String)> = self
            .predictions
            .values()
            .map(|p| (p.at_ms, p.request_id.clone()))
            .collect();
        rows.sort();
        let over = rows.len().saturating_sub(max);
        let gone: Vec<String> = rows
            .into_iter()
            .enumerate()
            .filter(|(i, (at, _))| *i < over || *at < oldest_ms)
            .map(|(_, (_, id))| id)
            .collect();
        for id in &gone {
            if let Some(row) = self.predictions.remove(id) {
                if let Some(list) = self.by_study.get_mut(&row.study) {
                    list.retain(|r| r != id);
                    if list.is_empty() {
                        self.by_study.remove(&row.study);
                    }
                }
            }
            self.confirmations.remove(id);
        }
        gone.len()
    }

    /// Predictions waiting for a confirmation.
    pub fn pending(&self) -> usize {
        self.predictions.len() - self.confirmations.len().min(self.predictions.len())
    }

    /// Every confirmed prediction, by model version, oldest first.
    pub fn joined(&self) -> BTreeMap<String, Vec<JoinedRow>> {
        let mut by_version: BTreeMap<String, Vec<JoinedRow>> = BTreeMap::new();
        for (id, confirmation) in &self.confirmations {
            let Some(p) = self.predictions.get(id) else {
                continue;
            };
            let mut labels = confirmation.findings.clone();
            labels.push(labels.iter().any(|l| *l));
            by_version
                .entry(p.model_version.clone())
                .or_default()
                .push(JoinedRow {
                    request_id: id.clone(),
                    at_ms: p.at_ms,
                    patient: if p.study.is_empty() {
                        id.clone()
                    } else {
                        p.study.clone()
                    },
                    probabilities: p.probabilities.clone(),
                    labels,
                });
        }
        for rows in by_version.values_mut() {
            rows.sort_by(|a, b| (a.at_ms, &a.request_id).cmp(&(b.at_ms, &b.request_id)));
        }
        by_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, at: i64, study: &str) -> PredictionRow {
        PredictionRow {
            request_id: id.into(),
            model_version: "v1".into(),
            at_ms: at,
            probabilities: vec![0.5; OUTPUTS],
            study: study.into(),
        }
    }

    fn reading(positive: usize, at: i64, event: &str) -> Confirmation {
        let mut findings = vec![false; FINDINGS];
        findings[positive] = true;
        Confirmation {
            findings,
            confirmed_at_ms: at,
            event_id: event.into(),
        }
    }

    #[test]
    fn duplicates_and_corrections_count_once_and_the_latest_reading_wins() {
        let mut s = JoinState::default();
        assert_eq!(
            s.add_prediction(row("a", 10, "")),
            PredictionOutcome::Recorded
        );
        assert_eq!(
            s.add_prediction(row("a", 10, "")),
            PredictionOutcome::Duplicate
        );
        let t = Target::Request("a".into());
        let first = s.add_feedback(&t, reading(1, 100, "e1"));
        assert_eq!(
            first,
            FeedbackOutcome::Applied {
                joined: vec![("a".into(), 90)],
                amended: 0,
                duplicate: 0
            }
        );
        let again = s.add_feedback(&t, reading(1, 100, "e1"));
        assert!(matches!(
            again,
            FeedbackOutcome::Applied { duplicate: 1, .. }
        ));
        // A correction, then an older reading arriving late: the correction stays.
        s.add_feedback(&t, reading(2, 200, "e2"));
        s.add_feedback(&t, reading(3, 150, "e3"));
        assert!(s.confirmations["a"].findings[2]);
        assert_eq!(s.joined()["v1"].len(), 1);
        assert_eq!(
            s.add_feedback(&Target::Request("b".into()), reading(1, 1, "e4")),
            FeedbackOutcome::Unmatched
        );
    }

    #[test]
    fn a_study_confirms_each_of_its_predictions_and_state_survives_a_snapshot() {
        let mut s = JoinState::default();
        s.add_prediction(row("a", 1, "s1"));
        s.add_prediction(row("b", 2, "s1"));
        s.add_prediction(row("c", 3, "s2"));
        let out = s.add_feedback(&Target::Study("s1".into()), reading(0, 10, "e"));
        assert!(matches!(out, FeedbackOutcome::Applied { ref joined, .. } if joined.len() == 2));
        let joined = &s.joined()["v1"];
        assert_eq!(joined.len(), 2);
        assert_eq!(joined[0].patient, "s1");
        assert!(joined[0].labels[14], "abnormal = any finding");
        let restored = JoinState::from_snapshot(s.snapshot(0));
        assert_eq!(restored.joined(), s.joined());
        assert_eq!(restored.targets(&Target::Study("s2".into())), vec!["c"]);
        assert_eq!(restored.pending(), 1);
    }

    #[test]
    fn eviction_forgets_old_predictions_and_keeps_the_newest_within_the_bound() {
        let mut s = JoinState::default();
        for i in 0..10 {
            s.add_prediction(row(&format!("r{i}"), i, "st"));
        }
        s.add_feedback(&Target::Request("r0".into()), reading(0, 50, "e"));
        assert_eq!(s.evict(2, 6), 4);
        assert!(!s.predictions.contains_key("r3") && s.predictions.contains_key("r4"));
        assert!(s.confirmations.is_empty());
        assert_eq!(s.targets(&Target::Study("st".into())).len(), 6);
    }
}
