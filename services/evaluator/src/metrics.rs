//! The evaluator's Prometheus metrics: model AUC for Grafana, evaluations
//! and promotions.
//!
//! Model gauges carry `model_version` (the registry's version of the
//! checkpoint) and `split`; per-finding ones also `finding` (the 14
//! findings and `abnormal`). They are set when an evaluation finishes and
//! restored at start from the registry and the stored reports, so a restart
//! does not blank a dashboard.

use chexvision_registry::{ModelRecord, ProductionPointer};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::report::Report;

#[derive(Debug, Clone)]
pub struct EvaluatorMetrics {
    /// Evaluations by outcome: completed, failed, interrupted.
    pub evaluations: IntCounterVec,
    /// Checkpoint events by outcome: accepted, duplicate, skipped.
    pub checkpoints: IntCounterVec,
    pub duration: Histogram,
    /// Images of the reported split per second of the last evaluation.
    pub images_per_second: Gauge,
    /// Images scored (all splits; rate() gives the live speed).
    pub images_scored: prometheus::IntCounter,
    pub model_auc: GaugeVec,
    pub model_auc_lower: GaugeVec,
    pub model_auc_upper: GaugeVec,
    pub model_macro_auc: GaugeVec,
    pub model_macro_auc_lower: GaugeVec,
    pub model_macro_auc_upper: GaugeVec,
    pub model_binary_auc: GaugeVec,
    pub model_ece: GaugeVec,
    /// The evaluation's mean probability and positive rate per finding:
    /// what the served model's drift is measured against.
    pub model_probability_mean: GaugeVec,
    pub model_positive_rate: GaugeVec,
    pub production_model_info: IntGaugeVec,
    /// Promotion decisions by outcome: promoted, refused.
    pub promotions: IntCounterVec,
}

impl EvaluatorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let model =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let per_finding = ["model_version", "finding", "split"];
        let per_model = ["model_version", "split"];
        let metrics = EvaluatorMetrics {
            evaluations: IntCounterVec::new(
                Opts::new(
                    "chexvision_evaluations_total",
                    "Evaluations that ended, by outcome",
                ),
                &["outcome"],
            )?,
            checkpoints: IntCounterVec::new(
                Opts::new(
                    "chexvision_evaluator_checkpoints_total",
                    "Checkpoint events, by what became of them",
                ),
                &["outcome"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "chexvision_evaluation_duration_seconds",
                    "Wall time of an evaluation",
                )
                .buckets(vec![1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]),
            )?,
            images_per_second: Gauge::new(
                "chexvision_evaluation_images_per_second",
                "Images per second of the last evaluation's scoring",
            )?,
            images_scored: prometheus::IntCounter::new(
                "chexvision_evaluation_images_scored_total",
                "Images scored by evaluations",
            )?,
            model_auc: model(
                "chexvision_model_auc",
                "Test AUC of a model version per finding",
                &per_finding,
            )?,
            model_auc_lower: model(
                "chexvision_model_auc_lower",
                "Lower bound of the 95 % patient-bootstrap interval of chexvision_model_auc",
                &per_finding,
            )?,
            model_auc_upper: model(
                "chexvision_model_auc_upper",
                "Upper bound of the 95 % patient-bootstrap interval of chexvision_model_auc",
                &per_finding,
            )?,
            model_macro_auc: model(
                "chexvision_model_macro_auc",
                "Macro AUC over the findings of a model version",
                &per_model,
            )?,
            model_macro_auc_lower: model(
                "chexvision_model_macro_auc_lower",
                "Lower bound of the 95 % interval of chexvision_model_macro_auc",
                &per_model,
            )?,
            model_macro_auc_upper: model(
                "chexvision_model_macro_auc_upper",
                "Upper bound of the 95 % interval of chexvision_model_macro_auc",
                &per_model,
            )?,
            model_binary_auc: model(
                "chexvision_model_binary_auc",
                "AUC of the normal/abnormal head of a model version",
                &per_model,
            )?,
            model_ece: model(
                "chexvision_model_ece",
                "Expected calibration error (15 bins) of the abnormal head",
                &per_model,
            )?,
            model_probability_mean: model(
                "chexvision_model_probability_mean",
                "Mean probability per finding over the evaluated split (the drift reference)",
                &per_finding,
            )?,
            model_positive_rate: model(
                "chexvision_model_positive_rate",
                "Share of the evaluated split called positive at the registry's threshold, per finding",
                &per_finding,
            )?,
            production_model_info: IntGaugeVec::new(
                Opts::new(
                    "chexvision_production_model_info",
                    "The model version in production (value 1)",
                ),
                &["model_version", "run_id", "model_kind", "synthetic"],
            )?,
            promotions: IntCounterVec::new(
                Opts::new(
                    "chexvision_promotions_total",
                    "Promotion decisions of the evaluator, by outcome",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(metrics.evaluations.clone()))?;
        registry.register(Box::new(metrics.checkpoints.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.images_per_second.clone()))?;
        registry.register(Box::new(metrics.images_scored.clone()))?;
        for gauge in [
            &metrics.model_auc,
            &metrics.model_auc_lower,
            &metrics.model_auc_upper,
            &metrics.model_macro_auc,
            &metrics.model_macro_auc_lower,
            &metrics.model_macro_auc_upper,
            &metrics.model_binary_auc,
            &metrics.model_ece,
            &metrics.model_probability_mean,
            &metrics.model_positive_rate,
        ] {
            registry.register(Box::new(gauge.clone()))?;
        }
        registry.register(Box::new(metrics.production_model_info.clone()))?;
        registry.register(Box::new(metrics.promotions.clone()))?;
        for outcome in ["completed", "failed", "interrupted"] {
            metrics.evaluations.with_label_values(&[outcome]);
        }
        for outcome in ["promoted", "refused"] {
            metrics.promotions.with_label_values(&[outcome]);
        }
        Ok(metrics)
    }

    /// Sets the model gauges of `version` from `report`.
    pub fn observe_report(&self, version: &str, report: &Report) {
        let split = report.split.as_str();
        for f in report
            .findings
            .iter()
            .chain(std::iter::once(&report.binary))
        {
            let labels = [version, f.name.as_str(), split];
            if let Some(auc) = f.auc {
                self.model_auc.with_label_values(&labels).set(auc);
            }
            if let Some([lo, hi]) = f.auc_interval {
                self.model_auc_lower.with_label_values(&labels).set(lo);
                self.model_auc_upper.with_label_values(&labels).set(hi);
            }
            if let Some(mean) = f.mean_probability {
                self.model_probability_mean
                    .with_label_values(&labels)
                    .set(mean);
            }
            if let Some(rate) = f.positive_rate() {
                self.model_positive_rate
                    .with_label_values(&labels)
                    .set(rate);
            }
        }
        let labels = [version, split];
        if let Some(v) = report.macro_auc {
            self.model_macro_auc.with_label_values(&labels).set(v);
        }
        if let Some([lo, hi]) = report.macro_auc_interval {
            self.model_macro_auc_lower
                .with_label_values(&labels)
                .set(lo);
            self.model_macro_auc_upper
                .with_label_values(&labels)
                .set(hi);
        }
        if let Some(v) = report.binary.auc {
            self.model_binary_auc.with_label_values(&labels).set(v);
        }
        if let Some(c) = &report.calibration {
            self.model_ece.with_label_values(&labels).set(c.ece);
        }
    }

    /// Shows `pointer`'s version as the production model (and only it).
    pub fn observe_production(&self, pointer: &ProductionPointer, record: &ModelRecord) {
        self.production_model_info.reset();
        self.production_model_info
            .with_label_values(&[
                pointer.version.as_str(),
                pointer.run_id.as_str(),
                record.model_kind.as_str(),
                if record.synthetic { "true" } else { "false" },
            ])
            .set(1);
    }
}
