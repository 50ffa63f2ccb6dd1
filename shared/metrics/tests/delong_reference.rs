//! DeLong's test against a NumPy reference written from the 1988 paper's
//! definition (every positive–negative pair), and the patient bootstrap
//! against NumPy and scikit-learn on the same draws. Fixtures from
//! `python3 scripts/make_metrics_fixtures.py`.

use chexvision_metrics::{delong_test, PatientData};

#[derive(serde::Deserialize)]
struct DeLongFixture {
    cases: Vec<DeLongCase>,
}

#[derive(serde::Deserialize)]
struct DeLongCase {
    name: String,
    labels: Vec<bool>,
    scores_a: Vec<f64>,
    scores_b: Vec<f64>,
    auc_a: f64,
    auc_b: f64,
    delta: f64,
    std_error: f64,
    z: f64,
    p_value: f64,
}

#[test]
fn delong_matches_the_numpy_reference() {
    let fixture: DeLongFixture =
        serde_json::from_str(include_str!("fixtures/delong.json")).expect("fixture");
    assert!(fixture.cases.len() >= 8);
    for case in &fixture.cases {
        let ours = delong_test(&case.scores_a, &case.scores_b, &case.labels).expect("defined");
        for (what, a, b) in [
            ("auc_a", ours.auc_a, case.auc_a),
            ("auc_b", ours.auc_b, case.auc_b),
            ("delta", ours.delta, case.delta),
            ("std_error", ours.std_error, case.std_error),
            ("z", ours.z, case.z),
            ("p_value", ours.p_value, case.p_value),
        ] {
            assert!(
                (a - b).abs() <= 1e-6,
                "{}: {what} {a} vs NumPy {b}",
                case.name
            );
        }
    }
}

#[derive(serde::Deserialize)]
struct BootstrapFixture {
    classes: usize,
    patient: Vec<u32>,
    labels: Vec<bool>,
    scores: Vec<f64>,
    draws: Vec<Vec<usize>>,
    per_class: Vec<Reference>,
    #[serde(rename = "macro")]
    macro_auc: Reference,
}

#[derive(serde::Deserialize)]
struct Reference {
    lower: f64,
    upper: f64,
    resamples: usize,
}

#[test]
fn patient_bootstrap_matches_numpy_on_the_same_draws() {
    let f: BootstrapFixture =
        serde_json::from_str(include_str!("fixtures/bootstrap.json")).expect("fixture");
    let data = PatientData::new(&f.scores, &f.labels, f.classes, &f.patient).expect("data");
    assert_eq!(data.patients(), f.draws[0].len());
    let (per_class, macro_auc) = data.intervals_from(&f.draws, 0.95);
    let check = |what: &str, ours: chexvision_metrics::Interval, theirs: &Reference| {
        assert_eq!(ours.resamples, theirs.resamples, "{what}: resamples");
        assert!(
            (ours.lower - theirs.lower).abs() <= 1e-9,
            "{what}: lower {ours:?}"
        );
        assert!(
            (ours.upper - theirs.upper).abs() <= 1e-9,
            "{what}: upper {ours:?}"
        );
    };
    for (c, reference) in f.per_class.iter().enumerate() {
        check(
            &format!("class {c}"),
            per_class[c].expect("defined"),
            reference,
        );
    }
    check("macro", macro_auc.expect("defined"), &f.macro_auc);
}
