//! The 14 NIH ChestX-ray14 findings, in the order used everywhere (label
//! vectors, model heads, reports), and the binary target: abnormal = any.

use std::fmt;

/// Label vector order. Never reorder: checkpoints record it and refuse another.
pub const LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

/// What the metadata writes for an image with none of the 14.
pub const NO_FINDING: &str = "No Finding";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("unknown label `{label}` (known: {}, or `{NO_FINDING}`)", LABELS.join(", "))]
    Unknown { label: String },
    #[error("`{NO_FINDING}` together with findings in `{text}`")]
    NoFindingWithFindings { text: String },
}

/// A set of the 14 findings, as a 14-bit vector (bit i = `LABELS[i]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(u16);

impl LabelSet {
    pub fn from_bits(bits: u16) -> Self {
        LabelSet(bits & ((1 << LABELS.len()) - 1))
    }

    pub fn bits(self) -> u16 {
        self.0
    }

    /// Parses the metadata's pipe-separated form: `Effusion|Mass` or `No Finding`.
    pub fn parse(text: &str) -> Result<Self, LabelError> {
        let mut bits = 0u16;
        let mut no_finding = false;
        for part in text.split('|').map(str::trim).filter(|p| !p.is_empty()) {
            if part == NO_FINDING {
                no_finding = true;
                continue;
            }
            let index =
                LABELS
                    .iter()
                    .position(|l| *l == part)
                    .ok_or_else(|| LabelError::Unknown {
                        label: part.to_owned(),
                    })?;
            bits |= 1 << index;
        }
        if no_finding && bits != 0 {
            return Err(LabelError::NoFindingWithFindings {
                text: text.to_owned(),
            });
        }
        Ok(LabelSet(bits))
    }

    pub fn contains(self, index: usize) -> bool {
        index < LABELS.len() && self.0 & (1 << index) != 0
    }

    /// The binary target: any of the 14 findings.
    pub fn is_abnormal(self) -> bool {
        self.0 != 0
    }

    /// 0/1 per label, in `LABELS` order.
    pub fn to_vector(self) -> [f32; 14] {
        std::array::from_fn(|i| if self.contains(i) { 1.0 } else { 0.0 })
    }

    pub fn names(self) -> Vec<&'static str> {
        (0..LABELS.len())
            .filter(|&i| self.contains(i))
            .map(|i| LABELS[i])
            .collect()
    }
}

impl fmt::Display for LabelSet {
    /// The metadata's form, so parse(display(x)) == x.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str(NO_FINDING)
        } else {
            f.write_str(&self.names().join("|"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let set = LabelSet::parse("Effusion|Mass|Hernia").unwrap();
        assert_eq!(set.bits(), (1 << 2) | (1 << 4) | (1 << 13));
        assert!(set.is_abnormal());
        assert_eq!(set.to_string(), "Effusion|Mass|Hernia");
        assert_eq!(LabelSet::parse(&set.to_string()).unwrap(), set);
        let none = LabelSet::parse("No Finding").unwrap();
        assert!(!none.is_abnormal());
        assert_eq!(none.to_string(), "No Finding");
        assert_eq!(none.to_vector(), [0.0; 14]);
        assert_eq!(set.to_vector()[2], 1.0);
    }

    #[test]
    fn bad_labels_are_named() {
        let err = LabelSet::parse("Effusion|Covid").unwrap_err();
        assert_eq!(
            err,
            LabelError::Unknown {
                label: "Covid".into()
            }
        );
        assert!(err.to_string().contains("Covid"));
        assert!(matches!(
            LabelSet::parse("No Finding|Mass"),
            Err(LabelError::NoFindingWithFindings { .. })
        ));
    }
}
