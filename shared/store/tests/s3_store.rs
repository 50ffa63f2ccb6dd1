//! The store suite against a real S3-compatible server (the local stack's
//! Garage, started by `make stack-up`). Skipped when no S3 store is configured,
//! unless CHEXVISION_REQUIRE_STACK=1 (as in `make test` and CI), where a missing
//! stack fails the run.

mod suite;

use std::time::{Duration, Instant};

use chexvision_config::{Loader, PlatformConfig, S3Settings};
use chexvision_store::{ObjectStore, S3Store, StoreError};

/// An S3 store under a fresh prefix of the configured bucket, or None to skip.
fn stack_store(test: &str) -> Option<S3Store> {
    let config: PlatformConfig = Loader::new()
        .load()
        .expect("configuration from CHEXVISION_*");
    let Some(rest) = config.store.strip_prefix("s3://") else {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "CHEXVISION_REQUIRE_STACK=1 but CHEXVISION_STORE is `{}`, not s3://: run `eval \"$(scripts/stack.sh env)\"`",
            config.store
        );
        eprintln!("skipping {test}: CHEXVISION_STORE is not an s3:// URI (run `make stack-up`)");
        return None;
    };
    let bucket = rest.split('/').next().unwrap_or(rest);
    Some(S3Store::connect(bucket, &suite::unique_prefix(test), &config.s3).expect("S3 client"))
}

#[tokio::test]
async fn round_trip_with_prefixes() {
    let Some(store) = stack_store("round-trip") else {
        return;
    };
    suite::round_trip_with_prefixes(&store).await;
}

#[tokio::test]
async fn missing_key_is_not_found() {
    let Some(store) = stack_store("missing") else {
        return;
    };
    suite::missing_key_is_not_found(&store).await;
}

#[tokio::test]
async fn large_multipart_upload() {
    let Some(store) = stack_store("multipart") else {
        return;
    };
    suite::large_multipart_upload(&store, 100 * 1024 * 1024).await;
    assert!(store
        .pending_multipart_uploads("")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn aborted_upload_leaves_no_object() {
    let Some(store) = stack_store("abort") else {
        return;
    };
    suite::aborted_upload_leaves_no_object(&store).await;
    // No orphaned parts either; a dropped upload is aborted in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = store.pending_multipart_uploads("").await.unwrap();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "multipart uploads left behind: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With nothing listening, a request is retried a bounded number of times and
/// then fails with an error that names the endpoint and the attempts.
#[tokio::test]
async fn server_down_gives_bounded_retries_and_a_clear_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let settings = S3Settings {
        endpoint: Some(endpoint.clone()),
        region: "garage".into(),
        access_key_id: Some("GK000000000000000000000000".into()),
        secret_access_key: Some("0".repeat(64)),
        max_attempts: 3,
        connect_timeout_ms: 500,
        ..Default::default()
    };
    let store = S3Store::connect("chexvision", "", &settings).unwrap();
    let err = store.get("datasets/x/manifest.json").await.unwrap_err();
    match &err {
        StoreError::Unavailable { attempts, .. } => assert_eq!(*attempts, 3),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&endpoint), "{message}");
    assert!(message.contains("3 attempts"), "{message}");
    assert!(message.contains("datasets/x/manifest.json"), "{message}");

    let err = store
        .put("a", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
}

/// Whether the local server honours `If-None-Match: *` is reported, not
/// assumed (AWS S3 does; the claims in `chexvision_store::claim` read back
/// after writing for servers that do not).
#[tokio::test]
async fn put_if_absent_keeps_the_first_writer() {
    let Some(store) = stack_store("if-absent") else {
        return;
    };
    suite::put_if_absent_keeps_the_first_writer(&store, false).await;
}
