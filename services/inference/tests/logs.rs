//! DICOM patient attributes (name, id, birth date, accession number) never
//! reach the logs or the metrics: every log line of the service, at debug
//! level, is captured while DICOM files that carry them are predicted on,
//! refused as corrupt or unsupported, batched, and answered as FHIR.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_identifiers_never_reach_logs_or_metrics() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let server = TestServer::start(settings(), true).await;
    let good = dicom(80, "PA", EXPLICIT_LE);
    let lateral = dicom(80, "LATERAL", EXPLICIT_LE);
    let unsupported = dicom(80, "PA", HTJ2K);
    let mut cut = good.clone();
    cut.truncate(good.len() - 1000);
    let dcm = [("content-type", "application/dicom")];
    let mut request_ids = Vec::new();
    for (body, status) in [
        (&good, 200),
        (&lateral, 200),
        (&unsupported, 422),
        (&cut, 422),
    ] {
        let answer = send(
            "POST",
            &server.url("/v1/predict?heatmap=top"),
            &dcm,
            body.clone(),
        )
        .await;
        assert_eq!(
            answer.status,
            status,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        request_ids.push(answer.header("x-request-id").unwrap().to_string());
    }
    let fhir = send(
        "POST",
        &server.url("/v1/predict"),
        &[
            ("content-type", "application/dicom"),
            ("accept", "application/fhir+json"),
        ],
        good.clone(),
    )
    .await;
    assert_eq!(fhir.status, 200);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let batch = serde_json::json!({"images": [{"data": b64(&good)}, {"data": b64(&unsupported)}]});
    let answer = send(
        "POST",
        &server.url("/v1/predict/batch"),
        &[("content-type", "application/json")],
        batch.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let metrics = String::from_utf8_lossy(&get(&server.url("/metrics")).await.body).to_string();
    server.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).to_string();
    // The capture works: refusals are logged with their request ids.
    assert!(
        logs.contains(&request_ids[2]) && logs.contains("unsupported_image"),
        "{logs}"
    );
    for secret in [PATIENT_NAME, "DOE", PATIENT_ID, BIRTH_DATE, ACCESSION] {
        assert!(!logs.contains(secret), "`{secret}` is in the logs:\n{logs}");
        assert!(!metrics.contains(secret), "`{secret}` is in the metrics");
    }
    // Nor in the answers: the FHIR report names no patient.
    let report = String::from_utf8_lossy(&fhir.body);
    for secret in [PATIENT_NAME, PATIENT_ID, BIRTH_DATE, ACCESSION] {
        assert!(!report.contains(secret), "`{secret}` is in the FHIR answer");
    }
}
