//! A prediction as FHIR R4: a `DiagnosticReport` (status `preliminary`:
//! machine output for a radiologist to read; code LOINC 36554-4 "XR Chest
//! Single view") that contains the model as a `Device` and one
//! `Observation` per finding, each with the probability as its value, the
//! threshold as its reference range's `high`, and an interpretation (`POS`
//! / `NEG`) at that threshold. The abnormal score is the report's
//! conclusion code and in its conclusion. The resources are `contained`,
//! so the answer stands alone.
//!
//! The model is linked from every Observation's `device`, the element R4
//! has for it: R4's `DiagnosticReport.performer` may only reference a
//! Practitioner, PractitionerRole, Organization or CareTeam, and a FHIR
//! server that checks reference targets would refuse a Device there.
//!
//! The types below are only the R4 elements used; a test validates the
//! output against the official R4 JSON schema (`fhir.schema.json`).

use chexvision_dataset::LABELS;
use serde::Serialize;

use crate::core::model::OUTPUTS;
use crate::core::Prediction;
use crate::router::v1::output_name;

/// LOINC code of the report: a chest radiograph, one view.
pub const REPORT_LOINC: (&str, &str) = ("36554-4", "XR Chest Single view");
const LOINC: &str = "http://loinc.org";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const DIAGNOSTIC_SERVICE: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const UCUM: &str = "http://unitsofmeasure.org";
/// Our code system for the NIH ChestX-ray14 findings (the label names).
pub const FINDING_SYSTEM: &str = "urn:chexvision:nih-chestxray14:finding";

#[derive(Debug, Serialize)]
pub struct Coding {
    pub system: &'static str,
    pub code: String,
    pub display: String,
}

#[derive(Debug, Serialize)]
pub struct CodeableConcept {
    pub coding: Vec<Coding>,
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct Reference {
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Quantity {
    pub value: f64,
    pub unit: &'static str,
    pub system: &'static str,
    pub code: &'static str,
}

/// The probability at and above which the finding is called positive.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceRange {
    pub high: Quantity,
    pub text: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub resource_type: &'static str,
    pub id: String,
    pub status: &'static str,
    pub category: Vec<CodeableConcept>,
    pub code: CodeableConcept,
    pub value_quantity: Quantity,
    pub interpretation: Vec<CodeableConcept>,
    pub reference_range: Vec<ReferenceRange>,
    pub device: Reference,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceName {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct DeviceVersion {
    pub value: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub resource_type: &'static str,
    pub id: &'static str,
    pub status: &'static str,
    pub manufacturer: &'static str,
    pub device_name: Vec<DeviceName>,
    pub version: Vec<DeviceVersion>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub note: Vec<Annotation>,
}

#[derive(Debug, Serialize)]
pub struct Annotation {
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct Identifier {
    pub system: &'static str,
    pub value: String,
}

/// A contained resource.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Contained {
    Device(Device),
    Observation(Box<Observation>),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticReport {
    pub resource_type: &'static str,
    pub id: String,
    pub contained: Vec<Contained>,
    pub identifier: Vec<Identifier>,
    pub status: &'static str,
    pub category: Vec<CodeableConcept>,
    pub code: CodeableConcept,
    pub issued: String,
    pub result: Vec<Reference>,
    pub conclusion: String,
    /// `abnormal` or `normal`: the binary head at its threshold.
    pub conclusion_code: Vec<CodeableConcept>,
}

fn concept(system: &'static str, code: &str, display: &str) -> CodeableConcept {
    CodeableConcept {
        coding: vec![Coding {
            system,
            code: code.to_string(),
            display: display.to_string(),
        }],
        text: display.to_string(),
    }
}

/// Now as FHIR's `instant` (RFC 3339, UTC): the events' clock and its
/// JSON form.
fn now_instant() -> String {
    serde_json::to_value(chexvision_events::now())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// The FHIR answer for one prediction; `request_id` becomes the report's id.
pub fn diagnostic_report(request_id: &str, p: &Prediction) -> DiagnosticReport {
    let info = &p.model.info;
    let device_display = format!("CheXVision {} model {}", info.architecture, info.version);
    let mut contained = vec![Contained::Device(Device {
        resource_type: "Device",
        id: "model",
        status: "active",
        manufacturer: "CheXVision",
        note: if info.synthetic {
            vec![Annotation {
                text: "Trained on synthetic images: its output says nothing about patients.".into(),
            }]
        } else {
            Vec::new()
        },
        device_name: vec![DeviceName {
            name: format!("CheXVision {}", info.architecture),
            kind: "model-name",
        }],
        version: vec![DeviceVersion {
            value: info.version.clone(),
        }],
    })];
    let mut result = Vec::new();
    let mut positives = Vec::new();
    for i in 0..LABELS.len() {
        let name = output_name(i);
        let probability = f64::from(p.probabilities[i]);
        let threshold = info.thresholds[i];
        let positive = probability >= threshold;
        if positive {
            positives.push(format!("{} ({probability:.2})", name.replace('_', " ")));
        }
        let id = format!("finding-{i}");
        let (code_display, code) = (name.replace('_', " "), name.to_string());
        let (interpretation_code, interpretation_display) = if positive {
            ("POS", "Positive")
        } else {
            ("NEG", "Negative")
        };
        contained.push(Contained::Observation(Box::new(Observation {
            resource_type: "Observation",
            id: id.clone(),
            status: "preliminary",
            category: vec![concept(OBSERVATION_CATEGORY, "imaging", "Imaging")],
            code: concept(FINDING_SYSTEM, &code, &code_display),
            value_quantity: Quantity {
                value: (probability * 1e6).round() / 1e6,
                unit: "probability",
                system: UCUM,
                code: "1",
            },
            interpretation: vec![concept(
                INTERPRETATION,
                interpretation_code,
                interpretation_display,
            )],
            reference_range: vec![ReferenceRange {
                high: Quantity {
                    value: threshold,
                    unit: "probability",
                    system: UCUM,
                    code: "1",
                },
                text: format!(
                    "positive at probability >= {threshold:.4} ({})",
                    if info.thresholds_from_registry {
                        "threshold chosen on validation"
                    } else {
                        "default threshold"
                    }
                ),
            }],
            device: Reference {
                reference: "#model".into(),
                display: Some(device_display.clone()),
            },
        })));
        result.push(Reference {
            reference: format!("#{id}"),
            display: Some(code_display),
        });
    }
    let abnormal = f64::from(p.probabilities[OUTPUTS - 1]);
    let mut conclusion = format!(
        "Machine-generated, preliminary: {} (abnormal probability {abnormal:.2}, threshold {:.2}). {}",
        if abnormal >= info.thresholds[OUTPUTS - 1] {
            "abnormal"
        } else {
            "no abnormality above threshold"
        },
        info.thresholds[OUTPUTS - 1],
        if positives.is_empty() {
            "No finding above its threshold.".to_string()
        } else {
            format!("Findings above their thresholds: {}.", positives.join(", "))
        }
    );
    if info.synthetic {
        conclusion.push_str(
            " The model was trained on synthetic images: this output says nothing about the patient.",
        );
    }
    let id: String = request_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(64)
        .collect();
    let is_abnormal = abnormal >= info.thresholds[OUTPUTS - 1];
    DiagnosticReport {
        resource_type: "DiagnosticReport",
        identifier: vec![if uuid::Uuid::parse_str(&id).is_ok() {
            Identifier {
                system: "urn:ietf:rfc:3986",
                value: format!("urn:uuid:{id}"),
            }
        } else {
            Identifier {
                system: "urn:chexvision:request-id",
                value: id.clone(),
            }
        }],
        id,
        contained,
        status: "preliminary",
        category: vec![concept(DIAGNOSTIC_SERVICE, "RAD", "Radiology")],
        code: CodeableConcept {
            coding: vec![Coding {
                system: LOINC,
                code: REPORT_LOINC.0.to_string(),
                display: REPORT_LOINC.1.to_string(),
            }],
            text: "Chest X-ray AI findings".into(),
        },
        issued: now_instant(),
        result,
        conclusion,
        conclusion_code: vec![if is_abnormal {
            concept(FINDING_SYSTEM, "abnormal", "Abnormal")
        } else {
            concept(FINDING_SYSTEM, "normal", "No abnormality above threshold")
        }],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn instants_are_rfc3339_utc() {
        let s = super::now_instant();
        // FHIR instant: a date, `T`, a time, and a zone (`Z` or an offset).
        assert!(s.len() >= 20 && s.as_bytes()[10] == b'T', "{s}");
        assert!(s.ends_with('Z') || s.ends_with("+00:00"), "{s}");
        let year: i32 = s[..4].parse().unwrap();
        assert!(year >= 2024, "{s}");
    }
}
