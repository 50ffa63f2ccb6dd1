//! `report.md` (one page a person reads) and the model card's evaluation
//! section.

use std::fmt::Write;

use crate::report::{OutputReport, Report};

/// Heading of the model card's evaluation section (replaced when the
/// checkpoint is evaluated again).
pub const MODEL_CARD_MARKER: &str = "## Test evaluation";

fn num(v: Option<f64>) -> String {
    v.map_or("undefined".into(), |v| format!("{v:.3}"))
}

fn interval(v: Option<[f64; 2]>) -> String {
    v.map_or("–".into(), |[lo, hi]| format!("{lo:.3}–{hi:.3}"))
}

fn row(out: &mut String, f: &OutputReport) {
    let at = f.at_validation_threshold.as_ref();
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {} |",
        f.name.replace('_', " "),
        f.positives,
        num(f.auc),
        interval(f.auc_interval),
        num(f.average_precision),
        num(f.validation_threshold),
        at.map_or("–".into(), |a| format!("{:.3}", a.f1)),
        at.map_or("–".into(), |a| format!(
            "{:.3}/{:.3}",
            a.recall, a.specificity
        )),
        f.at_half.f1,
        num(f.ece),
    );
}

pub fn report_markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Evaluation of run {} on the {} split\n",
        report.run_id, report.split
    );
    if report.dataset.synthetic {
        let _ = writeln!(
            out,
            "> **Synthetic data.** These images are generated phantoms: the numbers test the \
             pipeline and say nothing about clinical performance.\n"
        );
    }
    let models: Vec<String> = report
        .ensemble
        .iter()
        .map(|m| {
            format!(
                "{} `{}` (run {}, sha256 {}…)",
                m.model_kind,
                m.checkpoint_key,
                m.run_id,
                &m.checkpoint_sha256[..m.checkpoint_sha256.len().min(12)]
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "- Model{}: {}\n- Dataset `{}` at {} px (ready manifest sha256 {}…); {} images of {} \
         patients{}\n- Test-time augmentation: {}\n- Thresholds chosen on the validation split \
         ({} images) by {}\n- Intervals: 95 % patient bootstrap, {} resamples, seed {}\n",
        if models.len() > 1 {
            "s (ensemble, probabilities averaged)"
        } else {
            ""
        },
        models.join("; "),
        report.dataset.dataset_id,
        report.dataset.image_size_px,
        &report.dataset.ready_manifest_sha256[..report.dataset.ready_manifest_sha256.len().min(12)],
        report.images,
        report.patients,
        if report.skipped > 0 {
            format!(" ({} could not be scored)", report.skipped)
        } else {
            String::new()
        },
        if report.tta {
            "original, horizontal flip, ±7° rotation, averaged"
        } else {
            "none"
        },
        report.thresholds.images,
        report.thresholds.rule.name(),
        report.bootstrap.resamples,
        report.bootstrap.seed,
    );
    let _ = writeln!(
        out,
        "**Macro AUC {}** (95 % interval {}); macro average precision {}; binary head AUC {} \
         ({}), ECE {}.\n",
        num(report.macro_auc),
        interval(report.macro_auc_interval),
        num(report.macro_average_precision),
        num(report.binary.auc),
        interval(report.binary.auc_interval),
        num(report.calibration.as_ref().map(|c| c.ece)),
    );
    if !report.undefined_findings.is_empty() {
        let _ = writeln!(
            out,
            "Undefined (one outcome only in this split, left out of the macro means): {}.\n",
            report.undefined_findings.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "| finding | positives | AUC | 95 % interval | AP | threshold | F1 at it | recall/specificity at it | F1 at 0.5 | ECE |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in report
        .findings
        .iter()
        .chain(std::iter::once(&report.binary))
    {
        row(&mut out, f);
    }
    let at = report
        .binary
        .at_validation_threshold
        .as_ref()
        .unwrap_or(&report.binary.at_half);
    let [[tn, fp], [fn_, tp]] = at.confusion_matrix;
    let _ = writeln!(
        out,
        "\nBinary head at {:.3}: {tp} true positives, {fp} false positives, {tn} true negatives, \
         {fn_} false negatives.\n",
        at.threshold
    );
    let _ = writeln!(
        out,
        "Figures: `roc.png`, `pr.png`, `auc_intervals.png` (beside CheXNet's published per-class \
         AUCs, a different split and model), `reliability.png`, `confusion_binary.png`, \
         `history.png`. Every number can be recomputed from `predictions.parquet`.\n\n\
         Scored in {:.1} s ({:.1} images/s); validation {:.1} s; metrics {:.1} s; total {:.1} s.",
        report.timings.scoring_seconds,
        report.timings.images_per_second,
        report.timings.validation_seconds,
        report.timings.metrics_seconds,
        report.timings.total_seconds,
    );
    out
}

pub fn model_card_section(report: &Report, prefix: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{MODEL_CARD_MARKER}\n");
    let _ = writeln!(
        out,
        "Checkpoint `{}` on the {} split of `{}` ({} images, {} patients{}): macro AUC {} \
         (95 % interval {}), binary AUC {}, ECE {}. Report: `{prefix}report.md`.\n",
        report.model.checkpoint_key,
        report.split,
        report.dataset.dataset_id,
        report.images,
        report.patients,
        if report.dataset.synthetic {
            ", synthetic"
        } else {
            ""
        },
        num(report.macro_auc),
        interval(report.macro_auc_interval),
        num(report.binary.auc),
        num(report.calibration.as_ref().map(|c| c.ece)),
    );
    let _ = writeln!(out, "| finding | AUC | 95 % interval |\n|---|---|---|");
    for f in &report.findings {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            f.name.replace('_', " "),
            num(f.auc),
            interval(f.auc_interval)
        );
    }
    out
}
