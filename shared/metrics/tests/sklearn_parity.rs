//! Parity with scikit-learn on committed fixtures (random, heavily tied,
//! highly imbalanced, degenerate). Regenerate them with
//! `python3 scripts/make_metrics_fixtures.py`.

use chexvision_metrics::{roc_auc, ThresholdCounts};

#[derive(serde::Deserialize)]
struct Fixture {
    sklearn: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    labels: Vec<bool>,
    scores: Vec<f64>,
    threshold: f64,
    f1: f64,
    precision: f64,
    recall: f64,
    auc: Option<f64>,
}

const TOLERANCE: f64 = 1e-9;

#[test]
fn matches_scikit_learn() {
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/sklearn_parity.json")).expect("fixture");
    assert!(
        fixture.cases.len() >= 15,
        "fixture from sklearn {}",
        fixture.sklearn
    );
    for case in &fixture.cases {
        let auc = roc_auc(&case.scores, &case.labels);
        match (auc, case.auc) {
            (Some(ours), Some(theirs)) => {
                assert!(
                    (ours - theirs).abs() <= TOLERANCE,
                    "{}: AUC {ours} vs sklearn {theirs}",
                    case.name
                )
            }
            (None, None) => {}
            (ours, theirs) => panic!("{}: AUC {ours:?} vs sklearn {theirs:?}", case.name),
        }
        let counts = ThresholdCounts::new(&case.scores, &case.labels, case.threshold);
        for (metric, ours, theirs) in [
            ("f1", counts.f1(), case.f1),
            ("precision", counts.precision(), case.precision),
            ("recall", counts.recall(), case.recall),
        ] {
            assert!(
                (ours - theirs).abs() <= TOLERANCE,
                "{}: {metric} {ours} vs sklearn {theirs}",
                case.name
            );
        }
    }
}
