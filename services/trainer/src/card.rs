//! `MODEL_CARD.md` of a run.

use chexvision_dataset::LABELS;

use crate::state::{EpochRecord, RunState};

/// `MODEL_CARD.md`: what the model is, what it was trained on, how it did.
pub fn model_card(state: &RunState, history: &[EpochRecord]) -> String {
    let best = history.iter().rev().find(|h| h.best);
    let mut card = format!(
        "# Model card: run {}\n\n\
         - Architecture: {} ({})\n\
         - Outputs: 14 findings ({}) and abnormal, sigmoid probabilities\n\
         - Input: {} px chest X-ray, gray, CLAHE, ImageNet normalisation (3 channels)\n\
         - Dataset: {}{}\n\
         - Status: {:?} after {} epochs, {} optimiser steps\n\n",
        state.run_id,
        state.settings.model.architecture(),
        serde_json::to_string(&state.settings.model).unwrap_or_default(),
        LABELS.join(", "),
        state.settings.image_size,
        state.dataset_id,
        if state.synthetic {
            " — SYNTHETIC images from the CheXVision generator"
        } else {
            ""
        },
        state.status,
        state.epochs_done,
        state.step,
    );
    card.push_str("## Validation\n\n");
    match best {
        Some(b) => {
            card.push_str(&format!(
                "Best epoch {}: macro AUC {:.4}, abnormal AUC {}.\n\n| finding | AUC |\n|---|---|\n",
                b.epoch,
                b.val_macro_auc.unwrap_or(f64::NAN),
                b.val_binary_auc.map_or("undefined".into(), |a| format!("{a:.4}"))
            ));
            for (label, auc) in &b.val_per_class_auc {
                card.push_str(&format!(
                    "| {label} | {} |\n",
                    auc.map_or("undefined (one outcome only)".into(), |a| format!("{a:.4}"))
                ));
            }
        }
        None => card.push_str("No epoch has a defined validation AUC yet.\n"),
    }
    card.push_str("\n## Intended use and limitations\n\n");
    if state.synthetic {
        card.push_str(
            "Trained on synthetic phantoms: its figures show that the pipeline learns visible signals and say \
             nothing about clinical performance. Not for use on patients.\n",
        );
    } else {
        card.push_str(
            "A research model for triage support on frontal chest X-rays (NIH ChestX-ray14 labels, which are \
             text-mined and noisy). Not a diagnostic device; validate on local data before any clinical use; \
             performance on other populations, scanners and lateral views is unknown.\n",
        );
    }
    card
}
