//! The dataset layer: the fixed label schema every component uses, the NIH
//! ChestX-ray14 metadata reader, and patient-wise splits.

mod labels;
mod nih;
mod split;

pub use labels::{LabelError, LabelSet, LABELS, NO_FINDING};
pub use nih::{read_nih_metadata, NihError, NihMetadata, NihRecord, RejectedRow};
pub use split::{split_for_patient, OfficialSplits, Split};
