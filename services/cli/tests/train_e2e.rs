//! `chexvision train` end to end against the local S3 server: synthetic
//! images ingested and preprocessed through the stack, a run killed with
//! SIGKILL in the middle of an epoch and started again must finish with
//! each epoch once in its history and the same final model as a run that
//! was never killed.
//!
//! Skipped without the stack, unless CHEXVISION_REQUIRE_STACK=1 (make test, CI).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

mod common;
use chexvision_models::Checkpoint;
use chexvision_store::{ObjectStore, S3Store};
use common::{chexvision, stack};

fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_training_resumes_to_the_same_model() {
    let Some(common::Stack { config, bucket }) = stack() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("e2e-train-{}", &unique[..12]);
    let store_uri = format!("s3://{bucket}/{prefix}");
    let store = S3Store::connect(&bucket, &prefix, &config.s3).unwrap();
    let topics = [
        (
            "CHEXVISION_TOPICS__SHARDS_RAW",
            format!("test.e2e.train.raw.{}", &unique[..12]),
        ),
        (
            "CHEXVISION_TOPICS__SHARDS_READY",
            format!("test.e2e.train.ready.{}", &unique[..12]),
        ),
        (
            "CHEXVISION_TOPICS__DATASETS",
            format!("test.e2e.train.datasets.{}", &unique[..12]),
        ),
    ];
    let run = |args: &[&str]| {
        let output = chexvision()
            .envs(topics.iter().map(|(k, v)| (k, v)))
            .args(["--store", &store_uri])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let source = tempfile::tempdir().unwrap();
    let source_path = source.path().display().to_string();
    run(&[
        "synth",
        "--rows",
        "400",
        "--size",
        "64",
        "--seed",
        "5",
        "--out",
        &source_path,
    ]);
    run(&[
        "ingest",
        "--source",
        &source_path,
        "--dataset-id",
        "e2e",
        "--shard-rows",
        "100",
        "--quiet",
    ]);
    run(&[
        "preprocess",
        "--dataset-id",
        "e2e",
        "--size",
        "32",
        "--quiet",
    ]);

    // configs/tiny.yaml made smaller still.
    let train = |run_id: &str| {
        let mut command = chexvision();
        command
            .env("CHEXVISION_SERVICE__IMAGE_SIZE", "32")
            .env("CHEXVISION_SERVICE__RECIPE__EPOCHS", "3")
            .env("CHEXVISION_SERVICE__RECIPE__BATCH_SIZE", "16")
            .env("CHEXVISION_LOG__LEVEL", "error")
            .args([
                "--config",
                &repo_file("configs/tiny.yaml"),
                "--store",
                &store_uri,
            ])
            .args([
                "train",
                "--dataset-id",
                "e2e",
                "--run-id",
                run_id,
                "--quiet",
            ]);
        command
    };
    let whole = train("whole").output().unwrap();
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let stdout = String::from_utf8_lossy(&whole.stdout);
    assert!(
        stdout.contains("run whole: Completed after 3 epochs"),
        "{stdout}"
    );

    // Killed while epoch 1 runs: epoch 0 is committed, epoch 1 is not.
    let mut child = train("killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(bytes) = store.get("runs/killed/state.json").await {
            let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            if state["epochs_done"] == 1 {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no epoch finished in 300 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&store.get("runs/killed/state.json").await.unwrap()).unwrap();
    assert_eq!(
        state["epochs_done"], 1,
        "killed after epoch 1 had already finished; make the epochs longer"
    );

    let resumed = train("killed").output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let history: serde_json::Value =
        serde_json::from_slice(&store.get("runs/killed/history.json").await.unwrap()).unwrap();
    let epochs: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![0, 1, 2], "each epoch once");

    let digest = |bytes: bytes::Bytes| {
        Checkpoint::from_bytes(&bytes, &chexvision_models::candle_core::Device::Cpu)
            .unwrap()
            .meta
            .tensors_sha256
    };
    let a = digest(
        store
            .get("runs/whole/checkpoints/epoch-002.safetensors")
            .await
            .unwrap(),
    );
    let b = digest(
        store
            .get("runs/killed/checkpoints/epoch-002.safetensors")
            .await
            .unwrap(),
    );
    assert_eq!(
        a, b,
        "the resumed run must end with the uninterrupted run's model"
    );
    for artefact in [
        "config.yaml",
        "MODEL_CARD.md",
        "checkpoints/best.safetensors",
    ] {
        store
            .head(&format!("runs/killed/{artefact}"))
            .await
            .unwrap_or_else(|e| panic!("{artefact}: {e}"));
    }
}
