//! The monitor's Prometheus metrics: production AUC per model version,
//! finding and window (`chexvision_production_*`), the training
//! prevalence to compare the observed one with, the feedback delay, and
//! what became of each event.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use super::windows::WindowStats;
use chexvision_dataset::LABELS;

#[derive(Debug, Clone)]
pub struct MonitorMetrics {
    auc: GaugeVec,
    auc_lower: GaugeVec,
    auc_upper: GaugeVec,
    macro_auc: GaugeVec,
    macro_lower: GaugeVec,
    macro_upper: GaugeVec,
    binary_auc: GaugeVec,
    binary_lower: GaugeVec,
    binary_upper: GaugeVec,
    samples: GaugeVec,
    prevalence: GaugeVec,
    pub training_prevalence: GaugeVec,
    pub feedback_delay: Histogram,
    /// joined, amended, duplicate, unmatched.
    pub feedback: IntCounterVec,
    /// recorded, duplicate.
    pub predictions: IntCounterVec,
    pub pending: IntGauge,
}

/// The finding label of output `i` (14 findings then abnormal).
pub fn output_name(i: usize) -> &'static str {
    LABELS.get(i).copied().unwrap_or("abnormal")
}

impl MonitorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let per_finding = ["model_version", "finding", "window"];
        let per_window = ["model_version", "window"];
        let feedback = IntCounterVec::new(
            Opts::new(
                "chexvision_monitor_feedback_total",
                "Feedback events by what became of them: joined (a first reading), amended (a different reading of a confirmed prediction), duplicate, unmatched (no such prediction: dead-lettered)",
            ),
            &["outcome"],
        )?;
        let predictions = IntCounterVec::new(
            Opts::new(
                "chexvision_monitor_predictions_total",
                "Prediction events by what became of them: recorded, duplicate",
            ),
            &["outcome"],
        )?;
        for outcome in ["joined", "amended", "duplicate", "unmatched"] {
            feedback.with_label_values(&[outcome]);
        }
        for outcome in ["recorded", "duplicate"] {
            predictions.with_label_values(&[outcome]);
        }
        let feedback_delay = Histogram::with_opts(
            HistogramOpts::new(
                "chexvision_feedback_delay_seconds",
                "Time from a prediction to the confirmation of its findings",
            )
            .buckets(vec![
                60.0,
                600.0,
                3600.0,
                21_600.0,
                86_400.0,
                259_200.0,
                604_800.0,
                2_592_000.0,
            ]),
        )?;
        let pending = IntGauge::new(
            "chexvision_monitor_pending_predictions",
            "Predictions held for a join that no confirmation has reached yet",
        )?;
        registry.register(Box::new(feedback.clone()))?;
        registry.register(Box::new(predictions.clone()))?;
        registry.register(Box::new(feedback_delay.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        Ok(MonitorMetrics {
            auc: gauge("chexvision_production_auc", "AUC on confirmed production predictions, per finding", &per_finding)?,
            auc_lower: gauge("chexvision_production_auc_lower", "Lower bound of the 95 % study-bootstrap interval of chexvision_production_auc", &per_finding)?,
            auc_upper: gauge("chexvision_production_auc_upper", "Upper bound of the 95 % study-bootstrap interval of chexvision_production_auc", &per_finding)?,
            macro_auc: gauge("chexvision_production_macro_auc", "Macro AUC (mean over findings with both outcomes) on confirmed production predictions", &per_window)?,
            macro_lower: gauge("chexvision_production_macro_auc_lower", "Lower bound of the 95 % interval of chexvision_production_macro_auc", &per_window)?,
            macro_upper: gauge("chexvision_production_macro_auc_upper", "Upper bound of the 95 % interval of chexvision_production_macro_auc", &per_window)?,
            binary_auc: gauge("chexvision_production_binary_auc", "AUC of the abnormal score on confirmed production predictions", &per_window)?,
            binary_lower: gauge("chexvision_production_binary_auc_lower", "Lower bound of the 95 % interval of chexvision_production_binary_auc", &per_window)?,
            binary_upper: gauge("chexvision_production_binary_auc_upper", "Upper bound of the 95 % interval of chexvision_production_binary_auc", &per_window)?,
            samples: gauge("chexvision_production_samples", "Confirmed predictions in the window", &per_window)?,
            prevalence: gauge("chexvision_production_prevalence", "Observed share of confirmed positives in the window (14 findings and abnormal)", &per_finding)?,
            training_prevalence: gauge("chexvision_training_prevalence", "Share of positives in the model's training split (14 findings and abnormal)", &["model_version", "finding"])?,
            feedback_delay,
            feedback,
            predictions,
            pending,
        })
    }

    /// Replaces every window gauge with `stats` (windows that emptied, or
    /// findings that lost an outcome, disappear rather than go stale).
    pub fn publish(&self, stats: &[WindowStats]) {
        for g in [
            &self.auc,
            &self.auc_lower,
            &self.auc_upper,
            &self.macro_auc,
            &self.macro_lower,
            &self.macro_upper,
            &self.binary_auc,
            &self.binary_lower,
            &self.binary_upper,
            &self.samples,
            &self.prevalence,
        ] {
            g.reset();
        }
        for s in stats {
            let (v, w) = (s.model_version.as_str(), s.window.as_str());
            self.samples
                .with_label_values(&[v, w])
                .set(s.samples as f64);
            for (i, auc) in s.auc.iter().enumerate() {
                let labels = [v, output_name(i), w];
                if let Some(auc) = auc {
                    self.auc.with_label_values(&labels).set(*auc);
                }
                if let Some(interval) = s.auc_interval.get(i).copied().flatten() {
                    self.auc_lower
                        .with_label_values(&labels)
                        .set(interval.lower);
                    self.auc_upper
                        .with_label_values(&labels)
                        .set(interval.upper);
                }
            }
            for (i, p) in s.prevalence.iter().enumerate() {
                self.prevalence
                    .with_label_values(&[v, output_name(i), w])
                    .set(*p);
            }
            if let Some(m) = s.macro_auc {
                self.macro_auc.with_label_values(&[v, w]).set(m);
            }
            if let Some(i) = s.macro_interval {
                self.macro_lower.with_label_values(&[v, w]).set(i.lower);
                self.macro_upper.with_label_values(&[v, w]).set(i.upper);
            }
            if let Some(b) = s.binary_auc {
                self.binary_auc.with_label_values(&[v, w]).set(b);
            }
            if let Some(i) = s.binary_interval {
                self.binary_lower.with_label_values(&[v, w]).set(i.lower);
                self.binary_upper.with_label_values(&[v, w]).set(i.upper);
            }
        }
    }
}
