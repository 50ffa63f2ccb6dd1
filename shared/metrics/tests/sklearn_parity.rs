//! Parity with scikit-learn on committed fixtures (random, heavily tied,
//! highly imbalanced, degenerate, on calibration bin edges). Regenerate them
//! with `python3 scripts/make_metrics_fixtures.py`.

use chexvision_metrics::{
    average_precision, brier_score, calibration, choose_threshold, roc_auc, ThresholdCounts,
    ThresholdRule, ECE_BINS,
};

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
    average_precision: Option<f64>,
    confusion_matrix: [[u64; 2]; 2],
    brier: f64,
    calibration: CalibrationCurve,
    max_f1_threshold: Option<f64>,
    youden_threshold: Option<f64>,
}

#[derive(serde::Deserialize)]
struct CalibrationCurve {
    prob_true: Vec<f64>,
    prob_pred: Vec<f64>,
    counts: Vec<u64>,
    ece: f64,
}

const TOLERANCE: f64 = 1e-9;

fn close(name: &str, metric: &str, ours: Option<f64>, theirs: Option<f64>) {
    match (ours, theirs) {
        (Some(a), Some(b)) => assert!(
            (a - b).abs() <= TOLERANCE,
            "{name}: {metric} {a} vs sklearn {b}"
        ),
        (None, None) => {}
        (a, b) => panic!("{name}: {metric} {a:?} vs sklearn {b:?}"),
    }
}

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
        assert_eq!(counts.matrix(), case.confusion_matrix, "{}", case.name);
        let name = &case.name;
        close(
            name,
            "average precision",
            average_precision(&case.scores, &case.labels),
            case.average_precision,
        );
        close(
            name,
            "brier",
            brier_score(&case.scores, &case.labels),
            Some(case.brier),
        );
        for (rule, theirs) in [
            (ThresholdRule::MaxF1, case.max_f1_threshold),
            (ThresholdRule::YoudenJ, case.youden_threshold),
        ] {
            let ours = choose_threshold(&case.scores, &case.labels, rule).map(|(t, _)| t);
            assert_eq!(ours, theirs, "{name}: {rule:?} threshold");
        }
        let cal = calibration(&case.scores, &case.labels, ECE_BINS).expect("calibration");
        let counts: Vec<u64> = cal.bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, case.calibration.counts, "{name}: bin counts");
        for (i, bin) in cal.bins.iter().enumerate() {
            close(
                name,
                "prob_true",
                Some(bin.observed_frequency),
                Some(case.calibration.prob_true[i]),
            );
            close(
                name,
                "prob_pred",
                Some(bin.mean_probability),
                Some(case.calibration.prob_pred[i]),
            );
        }
        close(name, "ECE", Some(cal.ece), Some(case.calibration.ece));
    }
}
