//! What an evaluation does, and the evaluator service's own settings
//! (`service:` in `configs/evaluator.yaml`).

use chexvision_config::Validate;
use chexvision_metrics::{ThresholdRule, MIN_RESAMPLES};
use chexvision_registry::PromotionPolicy;
use serde::{Deserialize, Serialize};

/// How one evaluation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationSettings {
    /// Split the report is about (`test`; `validation` for a quick look).
    pub split: String,
    /// Average the probabilities of four views: original, horizontal
    /// flip, ±7° rotation.
    pub tta: bool,
    /// Images per forward pass (each TTA view counts).
    pub batch_size: usize,
    /// Decoding threads; 0: rayon's default (one per core).
    pub threads: usize,
    /// How per-finding thresholds are chosen on the validation split.
    pub threshold_rule: ThresholdRule,
    /// Patient-bootstrap resamples of the AUC intervals (at least 1,000).
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    /// `cpu` (the fused CPU path) or `cuda` / `cuda:N` (candle; needs a
    /// build with `--features cuda`).
    pub device: String,
    /// Draw the PNG plots.
    pub plots: bool,
}

impl Default for EvaluationSettings {
    fn default() -> Self {
        EvaluationSettings {
            split: "test".into(),
            tta: false,
            batch_size: 16,
            threads: 0,
            threshold_rule: ThresholdRule::MaxF1,
            bootstrap_resamples: MIN_RESAMPLES,
            bootstrap_seed: 20_261_206,
            device: "cpu".into(),
            plots: true,
        }
    }
}

impl EvaluationSettings {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !matches!(self.split.as_str(), "test" | "validation") {
            problems.push((
                "split".into(),
                format!("`{}`: must be test or validation", self.split),
            ));
        }
        if !(1..=512).contains(&self.batch_size) {
            problems.push((
                "batch_size".into(),
                format!("{}: must be 1..=512", self.batch_size),
            ));
        }
        if self.threads > 256 {
            problems.push(("threads".into(), format!("{}: at most 256", self.threads)));
        }
        if !(MIN_RESAMPLES..=100_000).contains(&self.bootstrap_resamples) {
            problems.push((
                "bootstrap_resamples".into(),
                format!(
                    "{}: must be {MIN_RESAMPLES}..=100000",
                    self.bootstrap_resamples
                ),
            ));
        }
        if chexvision_trainer::parse_device(&self.device).is_err() {
            problems.push((
                "device".into(),
                format!("`{}`: cpu, cuda or cuda:N", self.device),
            ));
        }
        problems
    }
}

/// Which `CheckpointCreated` events the service evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointSelection {
    /// The run's best checkpoint, once the run has ended (the event of its
    /// last epoch).
    #[default]
    BestWhenFinal,
    /// Every checkpoint announced as the best so far.
    EveryBest,
    /// Every checkpoint.
    All,
}

/// The production monitor (`service.monitor`): production AUC from
/// radiologists' confirmations (see `crate::monitor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSettings {
    pub enabled: bool,
    /// Consumer groups `{group}-predictions` and `{group}-feedback`.
    pub group: String,
    /// Rolling windows (the `window` label): `last` confirmed predictions,
    /// or those made in the last `seconds`.
    pub windows: Vec<crate::monitor::WindowSpec>,
    /// Predictions older than this are forgotten (feedback for them is
    /// unmatched).
    pub retention_days: u32,
    /// Most predictions held for a join (the oldest go first); bounds
    /// memory and the snapshot (~250 bytes each).
    pub max_predictions: usize,
    /// Seconds between recomputations of the gauges while events arrive.
    pub recompute_secs: u64,
    /// Snapshot after this many events, or `snapshot_secs`.
    pub snapshot_every: usize,
    pub snapshot_secs: u64,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        use crate::monitor::WindowSpec;
        MonitorSettings {
            enabled: true,
            group: "chexvision-monitor".into(),
            windows: vec![
                WindowSpec::last("last_1000", 1000),
                WindowSpec::seconds("7d", 7 * 86_400),
                WindowSpec::seconds("30d", 30 * 86_400),
            ],
            retention_days: 90,
            max_predictions: 500_000,
            recompute_secs: 30,
            snapshot_every: 1000,
            snapshot_secs: 300,
            bootstrap_resamples: MIN_RESAMPLES,
            bootstrap_seed: 20_261_206,
        }
    }
}

impl MonitorSettings {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.group.is_empty() {
            problems.push(("group".into(), "must not be empty".into()));
        }
        if self.windows.is_empty() || self.windows.len() > 8 {
            problems.push(("windows".into(), "give 1 to 8 windows".into()));
        }
        for (i, w) in self.windows.iter().enumerate() {
            if let Some(p) = w.problem() {
                problems.push((format!("windows[{i}]"), p));
            }
            if self.windows[..i].iter().any(|o| o.name == w.name) {
                problems.push((format!("windows[{i}]"), format!("`{}` twice", w.name)));
            }
        }
        if !(1..=3650).contains(&self.retention_days) {
            problems.push(("retention_days".into(), "must be 1..=3650".into()));
        }
        if !(100..=10_000_000).contains(&self.max_predictions) {
            problems.push(("max_predictions".into(), "must be 100..=10000000".into()));
        }
        if !(1..=3600).contains(&self.recompute_secs) {
            problems.push(("recompute_secs".into(), "must be 1..=3600".into()));
        }
        if !(1..=1_000_000).contains(&self.snapshot_every) {
            problems.push(("snapshot_every".into(), "must be 1..=1000000".into()));
        }
        if !(1..=86_400).contains(&self.snapshot_secs) {
            problems.push(("snapshot_secs".into(), "must be 1..=86400".into()));
        }
        if !(MIN_RESAMPLES..=100_000).contains(&self.bootstrap_resamples) {
            problems.push((
                "bootstrap_resamples".into(),
                format!("must be {MIN_RESAMPLES}..=100000"),
            ));
        }
        problems
    }
}

/// `service:` of the evaluator's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorServiceSettings {
    /// Consumer group of the checkpoint consumer.
    pub group: String,
    pub evaluate: CheckpointSelection,
    pub evaluation: EvaluationSettings,
    /// Promotion policy of the model registry.
    pub promotion: PromotionPolicy,
    /// Register and decide on promotion after each evaluation.
    pub promote: bool,
    /// Seconds between scans for unfinished evaluations while idle.
    pub rescan_secs: u64,
    /// Lease of an evaluation (one replica evaluates it), renewed while it runs.
    pub lease_ttl_secs: u64,
    pub lease_settle_ms: u64,
    /// Attempts of an evaluation whose failure may pass (the store).
    pub max_attempts: u32,
    /// Evaluations restored into the AUC gauges at start (newest first).
    pub restore_evaluations: usize,
    /// Names this replica in leases; empty: the host name and a random suffix.
    pub instance_id: String,
    /// Production AUC from confirmed findings.
    pub monitor: MonitorSettings,
}

impl Default for EvaluatorServiceSettings {
    fn default() -> Self {
        EvaluatorServiceSettings {
            group: "chexvision-evaluator".into(),
            evaluate: CheckpointSelection::default(),
            evaluation: EvaluationSettings::default(),
            promotion: PromotionPolicy::default(),
            promote: true,
            rescan_secs: 30,
            lease_ttl_secs: 120,
            lease_settle_ms: 300,
            max_attempts: 3,
            restore_evaluations: 20,
            instance_id: String::new(),
            monitor: MonitorSettings::default(),
        }
    }
}

impl EvaluatorServiceSettings {
    /// This replica's name in leases.
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "evaluator".into());
        format!("{host}-{}", std::process::id())
    }
}

impl Validate for EvaluatorServiceSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems: Vec<(String, String)> = self
            .evaluation
            .problems()
            .into_iter()
            .map(|(k, v)| (format!("evaluation.{k}"), v))
            .collect();
        problems.extend(
            self.monitor
                .problems()
                .into_iter()
                .map(|(k, v)| (format!("monitor.{k}"), v)),
        );
        if let Err(e) = self.promotion.validate() {
            problems.push(("promotion".into(), e));
        }
        if self.group.is_empty() {
            problems.push(("group".into(), "must not be empty".into()));
        }
        if !(1..=86_400).contains(&self.rescan_secs) {
            problems.push(("rescan_secs".into(), "must be 1..=86400".into()));
        }
        if !(5..=3_600).contains(&self.lease_ttl_secs) {
            problems.push(("lease_ttl_secs".into(), "must be 5..=3600".into()));
        }
        if self.lease_settle_ms > 10_000 {
            problems.push(("lease_settle_ms".into(), "at most 10000".into()));
        }
        if !(1..=20).contains(&self.max_attempts) {
            problems.push(("max_attempts".into(), "must be 1..=20".into()));
        }
        if self.restore_evaluations > 1_000 {
            problems.push(("restore_evaluations".into(), "at most 1000".into()));
        }
        problems
    }
}
