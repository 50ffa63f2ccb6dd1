//! The production monitor on a filesystem store: predictions and
//! confirmed findings simulated from a known truth; the exported AUC per
//! finding, macro and abnormal, and their bootstrap intervals equal
//! scikit-learn's on the same joined pairs (and the same study draws);
//! duplicate, amended, late and unmatched feedback are each counted as
//! what they are; a restarted monitor rebuilds the same windows from the
//! snapshot and the logs written after it.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use chexvision_dataset::LABELS;
use chexvision_evaluator::monitor::{JoinedRow, Monitor, MonitorMetrics, WindowSpec, WindowStats};
use chexvision_evaluator::MonitorSettings;
use chexvision_events::{Envelope, FeedbackReceived, PredictionMade};
use chexvision_metrics::PatientData;
use chexvision_store::{sha256_hex, FsStore, ObjectStore};

/// The test's "now", taken once: retention is measured from the clock.
fn now_ms() -> i64 {
    static NOW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    })
}
const DAY_MS: i64 = 86_400_000;

/// splitmix64: a seeded stream, the same on every machine.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn at(envelope: &mut Envelope, ms: i64) {
    if let Some(meta) = envelope.meta.as_mut() {
        meta.occurred_at = Some(pbjson_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        });
    }
}

fn timestamp(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: 0,
    }
}

/// One simulated case.
struct Case {
    request_id: String,
    study: Option<String>,
    at_ms: i64,
    probabilities: Vec<f32>,
    truth: Vec<bool>,
}

fn cases() -> Vec<Case> {
    let mut rng = Rng(20_261_207);
    (0..360)
        .map(|i| {
            let truth: Vec<bool> = (0..14)
                .map(|c| rng.unit() < 0.08 + 0.02 * c as f64)
                .collect();
            let mut probabilities: Vec<f32> = truth
                .iter()
                .map(|&t| {
                    let logit = (rng.unit() - 0.5) * 4.0 + if t { 1.5 } else { -1.0 };
                    (1.0 / (1.0 + (-logit).exp())) as f32
                })
                .collect();
            let abnormal = probabilities.iter().cloned().fold(0.0f32, f32::max);
            probabilities.push(abnormal);
            Case {
                request_id: format!("req-{i:04}"),
                // The first 100 come as studies of two images each.
                study: (i < 100).then(|| sha256_hex(format!("ACC{}", i / 2).as_bytes())),
                // The first 40 were made ten days ago (confirmed late).
                at_ms: if i < 40 {
                    now_ms() - 10 * DAY_MS + i as i64
                } else {
                    now_ms() - (360 - i as i64) * 60_000
                },
                probabilities,
                truth,
            }
        })
        .collect()
}

fn prediction(case: &Case) -> Envelope {
    let mut e = Envelope::new(
        PredictionMade {
            request_id: case.request_id.clone(),
            model_version: "run-a.0123456789ab".into(),
            probabilities: case.probabilities.clone(),
            study_ref_sha256: case.study.clone().unwrap_or_default(),
            route: "/v1/predict".into(),
            tta: false,
        },
        "test",
    );
    at(&mut e, case.at_ms);
    e
}

fn feedback(case: &Case, truth: &[bool], confirmed_ms: i64) -> Envelope {
    let (request_id, study) = match &case.study {
        Some(s) => (String::new(), s.clone()),
        None => (case.request_id.clone(), String::new()),
    };
    let mut e = Envelope::new(
        FeedbackReceived {
            request_id,
            study_ref_sha256: study,
            findings: truth.to_vec(),
            confirmed_at: Some(timestamp(confirmed_ms)),
            source: "test".into(),
        },
        "test",
    );
    at(&mut e, confirmed_ms);
    e
}

fn settings() -> MonitorSettings {
    MonitorSettings {
        windows: vec![
            WindowSpec::last("last_1000", 1000),
            WindowSpec::seconds("7d", 7 * 86_400),
        ],
        ..MonitorSettings::default()
    }
}

async fn open(store: &Arc<dyn ObjectStore>) -> (Arc<Monitor>, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = MonitorMetrics::register(&registry).unwrap();
    let monitor = Monitor::open(store.clone(), settings(), metrics)
        .await
        .unwrap();
    (monitor, registry)
}

/// scikit-learn's AUCs and the percentile intervals over `draws` (study
/// indices per resample, as the monitor draws them), or None where
/// scikit-learn is missing and not required.
fn sklearn(
    rows: &[JoinedRow],
    draws: &[Vec<usize>],
    patients: &[usize],
) -> Option<serde_json::Value> {
    let input = serde_json::json!({
        "p": rows.iter().map(|r| r.probabilities.iter().map(|x| f64::from(*x)).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "y": rows.iter().map(|r| r.labels.clone()).collect::<Vec<_>>(),
        "patient": patients,
        "draws": draws,
    });
    let script = r#"
import json, sys
import numpy as np
from sklearn.metrics import roc_auc_score
d = json.load(sys.stdin)
p = np.array(d["p"]); y = np.array(d["y"], dtype=bool); patient = np.array(d["patient"])
# scikit-learn on the full sample; per resample, a vectorised weighted
# Mann-Whitney AUC that is checked against scikit-learn on the first 25
# resamples (sklearn alone would take a minute for 30,000 AUCs).
def sk_aucs(w):
    out = []
    for c in range(15):
        yc = y[:, c]; m = w > 0
        if yc[m].all() or not yc[m].any():
            out.append(None)
        else:
            out.append(float(roc_auc_score(yc, p[:, c], sample_weight=w)))
    return out
ranks = [np.unique(p[:, c], return_inverse=True)[1] for c in range(15)]
def fast_aucs(w):
    out = []
    for c in range(15):
        pos = np.bincount(ranks[c], weights=w * y[:, c])
        neg = np.bincount(ranks[c], weights=w * ~y[:, c])
        P, N = pos.sum(), neg.sum()
        if P == 0 or N == 0:
            out.append(None); continue
        below = np.cumsum(neg) - neg
        out.append(float((pos * (below + 0.5 * neg)).sum() / (P * N)))
    return out
ones = np.ones(len(y))
point = sk_aucs(ones)
defined = [a for a in point[:14] if a is not None]
macro = sum(defined) / len(defined)
per_class = [[] for _ in range(15)]; macros = []
n_patients = patient.max() + 1
for b, draw in enumerate(d["draws"]):
    times = np.bincount(np.array(draw), minlength=n_patients)
    w = times[patient].astype(float)
    a = fast_aucs(w)
    if b < 25:
        s = sk_aucs(w)
        assert all((x is None and z is None) or abs(x - z) < 1e-12 for x, z in zip(a, s)), (a, s)
    for c in range(15):
        if a[c] is not None: per_class[c].append(a[c])
    m = [x for x in a[:14] if x is not None]
    if m: macros.append(sum(m) / len(m))
iv = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None
print(json.dumps({"auc": point, "macro": macro, "interval": [iv(v) for v in per_class], "macro_interval": iv(macros)}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child
        .stdin
        .take()?
        .write_all(input.to_string().as_bytes())
        .ok()?;
    let output = child.wait_with_output().ok()?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "scikit-learn is needed (make deps installs it): {err}"
        );
        eprintln!("skipping the scikit-learn check: {err}");
        return None;
    }
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

fn close(a: f64, b: &serde_json::Value, what: &str) {
    let b = b.as_f64().unwrap_or_else(|| panic!("{what}: {b}"));
    assert!((a - b).abs() < 1e-9, "{what}: ours {a}, scikit-learn {b}");
}

/// Checks one window's numbers against scikit-learn on the rows it holds.
fn check_window(stats: &WindowStats, rows: &[JoinedRow], monitor: &Monitor) {
    assert_eq!(stats.samples, rows.len());
    // The study draws the monitor made, in its own row order.
    let patient_keys: Vec<&str> = rows.iter().map(|r| r.patient.as_str()).collect();
    let scores: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.probabilities[..14].iter().map(|p| f64::from(*p)))
        .collect();
    let labels: Vec<bool> = rows
        .iter()
        .flat_map(|r| r.labels[..14].iter().copied())
        .collect();
    let data = PatientData::new(&scores, &labels, 14, &patient_keys).unwrap();
    let config = monitor.bootstrap();
    let draws: Vec<Vec<usize>> = (0..config.resamples)
        .map(|b| data.draw(config.seed, b))
        .collect();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut order = Vec::new();
    let patients: Vec<usize> = patient_keys
        .iter()
        .map(|k| {
            *index.entry(k).or_insert_with(|| {
                order.push(*k);
                order.len() - 1
            })
        })
        .collect();
    let Some(reference) = sklearn(rows, &draws, &patients) else {
        return;
    };
    for c in 0..14 {
        match stats.auc[c] {
            Some(a) => close(a, &reference["auc"][c], LABELS[c]),
            None => assert!(reference["auc"][c].is_null(), "{}", LABELS[c]),
        }
        if let Some(i) = stats.auc_interval[c] {
            close(
                i.lower,
                &reference["interval"][c][0],
                "finding interval lower",
            );
            close(
                i.upper,
                &reference["interval"][c][1],
                "finding interval upper",
            );
        }
    }
    close(stats.macro_auc.unwrap(), &reference["macro"], "macro AUC");
    close(
        stats.binary_auc.unwrap(),
        &reference["auc"][14],
        "abnormal AUC",
    );
    let m = stats.macro_interval.unwrap();
    close(m.lower, &reference["macro_interval"][0], "macro lower");
    close(m.upper, &reference["macro_interval"][1], "macro upper");
    let b = stats.binary_interval.unwrap();
    close(b.lower, &reference["interval"][14][0], "abnormal lower");
    close(b.upper, &reference["interval"][14][1], "abnormal upper");
}

fn counter(registry: &prometheus::Registry, name: &str, outcome: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .find(|m| m.get_label().iter().any(|l| l.value() == outcome))
        .map(|m| m.get_counter().get_value())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_auc_matches_scikit_learn_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    let (monitor, registry) = open(&store).await;
    let mut cases = cases();
    for (i, case) in cases.iter().enumerate() {
        monitor.record_prediction(&prediction(case)).await.unwrap();
        if i == 199 {
            // Half the events in the snapshot, half only in the logs.
            monitor.snapshot().await.unwrap();
        }
    }
    // A redelivered prediction changes nothing.
    monitor
        .record_prediction(&prediction(&cases[5]))
        .await
        .unwrap();

    // Readings for all but the last 30; a study's reading once for its
    // two images (the truth of its first image is the study's).
    let confirmed = 330;
    for i in 0..100 {
        if i % 2 == 1 {
            cases[i].truth = cases[i - 1].truth.clone();
        }
    }
    let mut first_events = Vec::new();
    for (i, case) in cases.iter().enumerate().take(confirmed) {
        if case.study.is_some() && i % 2 == 1 {
            continue;
        }
        let event = feedback(case, &case.truth, now_ms() - 1000);
        monitor.record_feedback(&event, 3).await.unwrap();
        first_events.push(event);
    }
    // Ten sent twice (duplicates), five corrected by a later reading.
    for event in &first_events[150..160] {
        monitor.record_feedback(event, 3).await.unwrap();
    }
    for case in &mut cases[300..305] {
        case.truth[0] = !case.truth[0];
        let event = feedback(case, &case.truth, now_ms() - 500);
        monitor.record_feedback(&event, 3).await.unwrap();
    }
    // Feedback for a request no prediction has: retried, then refused.
    let mut stranger = feedback(&cases[300], &cases[300].truth, now_ms());
    if let Some(chexvision_events::Body::FeedbackReceived(f)) = stranger.body.as_mut() {
        f.request_id = "req-unknown".into();
    }
    let first = monitor.record_feedback(&stranger, 2).await.unwrap_err();
    assert!(
        matches!(first, chexvision_bus::HandlerError::Failed(_)),
        "{first:?}"
    );
    let last = monitor.record_feedback(&stranger, 2).await.unwrap_err();
    match last {
        chexvision_bus::HandlerError::Malformed(m) => assert!(m.contains("req-unknown"), "{m}"),
        other => panic!("{other:?}"),
    }

    assert_eq!(
        counter(
            &registry,
            "chexvision_monitor_predictions_total",
            "recorded"
        ),
        360.0
    );
    assert_eq!(
        counter(
            &registry,
            "chexvision_monitor_predictions_total",
            "duplicate"
        ),
        1.0
    );
    assert_eq!(
        counter(&registry, "chexvision_monitor_feedback_total", "joined"),
        confirmed as f64
    );
    assert_eq!(
        counter(&registry, "chexvision_monitor_feedback_total", "duplicate"),
        10.0
    );
    assert_eq!(
        counter(&registry, "chexvision_monitor_feedback_total", "amended"),
        5.0
    );
    assert_eq!(
        counter(&registry, "chexvision_monitor_feedback_total", "unmatched"),
        1.0
    );

    let stats = monitor.recompute(now_ms()).await;
    let joined = monitor.joined();
    let rows = &joined["run-a.0123456789ab"];
    // The joined pairs are the simulated truth, each prediction once.
    assert_eq!(rows.len(), confirmed);
    for row in rows {
        let case = cases
            .iter()
            .find(|c| c.request_id == row.request_id)
            .unwrap();
        assert_eq!(&row.labels[..14], &case.truth[..], "{}", row.request_id);
        assert_eq!(row.labels[14], case.truth.iter().any(|t| *t));
        assert_eq!(row.probabilities, case.probabilities);
    }
    let window = |name: &str| stats.iter().find(|s| s.window == name).unwrap().clone();
    let all = window("last_1000");
    let week = window("7d");
    // The late-confirmed predictions of ten days ago count in the count
    // window, not in the last week's.
    assert_eq!(all.samples, confirmed);
    assert_eq!(week.samples, confirmed - 40);
    check_window(&all, rows, &monitor);
    check_window(&week, &rows[40..], &monitor);

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(&format!(
        "chexvision_production_samples{{model_version=\"run-a.0123456789ab\",window=\"7d\"}} {}",
        confirmed - 40
    )),
        "{text}"
    );
    assert!(
        text.contains("chexvision_monitor_pending_predictions 30"),
        "{text}"
    );
    assert!(
        text.contains("chexvision_production_auc_lower{finding=\"Hernia\""),
        "{text}"
    );

    // A restart: the snapshot plus the logs give the same windows; a
    // redelivered reading is a duplicate, not a second sample.
    drop(monitor);
    let (restarted, registry) = open(&store).await;
    assert_eq!(restarted.recompute(now_ms()).await, stats);
    // (the first reading confirmed a study: both of its predictions)
    restarted
        .record_feedback(&first_events[0], 3)
        .await
        .unwrap();
    assert_eq!(
        counter(&registry, "chexvision_monitor_feedback_total", "joined"),
        0.0
    );
    assert_eq!(
        counter(&registry, "chexvision_monitor_feedback_total", "duplicate"),
        2.0
    );
    assert_eq!(restarted.recompute(now_ms()).await, stats);
    // Compacted: one snapshot, no logs left, and the same state again.
    restarted.snapshot().await.unwrap();
    assert!(store.list("monitor/log/").await.unwrap().is_empty());
    drop(restarted);
    let (again, _) = open(&store).await;
    assert_eq!(again.recompute(now_ms()).await, stats);
}
