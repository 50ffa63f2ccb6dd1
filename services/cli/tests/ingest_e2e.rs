//! Ingest end to end against the local stack (Kafka-protocol broker + S3
//! server): 2,000 synthetic images, the ingest killed with SIGKILL midway and
//! run again, then run a third time. The manifest must list exactly the
//! shards in the store, each with its true sha256, and the topic must hold an
//! announcement for every shard, with at most the shards in flight at the
//! kill (2) announced twice, and nothing from the third run.
//!
//! Skipped without the stack, unless CHEXVISION_REQUIRE_STACK=1 (make test, CI).

mod common;
use common::{chexvision, stack};

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    time::{Duration, Instant},
};

use chexvision_dataset::{probe_image, read_shard, Manifest};
use chexvision_store::{sha256_hex, ObjectStore, S3Store};

const IMAGES: usize = 2000;
const SHARD_ROWS: &str = "20";

/// The sha256 of every shard announced on `topic`, in order, and the number
/// of completion (`DatasetIngested`) events.
fn announcements(topic: &str) -> (Vec<String>, usize) {
    let output = chexvision()
        .args(["events", "decode", "--topic", topic, "--idle-secs", "4"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "decode: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut shards = Vec::new();
    let mut completions = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(done) = value["event"].get("datasetIngested") {
            assert_eq!(value["key"], done["datasetId"], "keyed by dataset id");
            completions += 1;
            continue;
        }
        let shard = &value["event"]["shardWritten"]["shard"];
        assert_eq!(value["key"], shard["sha256"], "keyed by content hash");
        shards.push(shard["sha256"].as_str().unwrap().to_owned());
    }
    (shards, completions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ingest_resumes_without_duplicates() {
    let Some(stack) = stack() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("e2e-ingest-{}", &unique[..12]);
    let store_uri = format!("s3://{}/{prefix}", stack.bucket);
    let topic = format!("test.e2e.shards.{}", &unique[..12]);
    let store = S3Store::connect(&stack.bucket, &prefix, &stack.config.s3).unwrap();

    let source = tempfile::tempdir().unwrap();
    let status = chexvision()
        .args([
            "synth",
            "--rows",
            &IMAGES.to_string(),
            "--size",
            "96",
            "--seed",
            "11",
        ])
        .args(["--out", &source.path().display().to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let ingest = || {
        let mut command = chexvision();
        command
            .env("CHEXVISION_TOPICS__SHARDS_RAW", &topic)
            .args(["--store", &store_uri, "ingest", "--quiet"])
            .args(["--source", &source.path().display().to_string()])
            .args(["--dataset-id", "e2e", "--shard-rows", SHARD_ROWS]);
        command
    };

    // First run: killed as soon as a few shards are durable.
    let mut child = ingest().stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let shards = store.list("datasets/e2e/raw/").await.unwrap().len();
        if shards >= 3 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ingest ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no shard written in 120 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = store.list("datasets/e2e/raw/").await.unwrap().len();
    assert!(
        store.head("datasets/e2e/manifest.json").await.is_err(),
        "the killed run must not have finished ({after_kill} shards)"
    );
    let (before_resume, completions) = announcements(&topic);
    assert_eq!(completions, 0, "the killed run announced completion");

    // Second run completes the dataset.
    let output = ingest().output().unwrap();
    assert!(
        output.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("already done"), "{summary}");

    let manifest: Manifest =
        serde_json::from_slice(&store.get("datasets/e2e/manifest.json").await.unwrap()).unwrap();
    assert!(manifest.synthetic);
    assert_eq!(manifest.rejected_total, 0, "{:?}", manifest.rejected);
    assert_eq!(manifest.rows_total as usize, IMAGES);
    assert_eq!(
        manifest.rows_per_split.values().sum::<u64>() as usize,
        IMAGES
    );
    assert_eq!(
        manifest.shards.iter().map(|s| s.rows).sum::<u64>() as usize,
        IMAGES
    );

    // Exactly the manifest's shards are in the store, with their hashes.
    let stored: BTreeSet<String> = store
        .list("datasets/e2e/raw/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    let listed: BTreeSet<String> = manifest.shards.iter().map(|s| s.key.clone()).collect();
    assert_eq!(stored, listed, "no duplicate or orphan shards");
    assert!(
        after_kill < listed.len(),
        "the kill came after the last shard"
    );
    for shard in &manifest.shards {
        let bytes = store.get(&shard.key).await.unwrap();
        assert_eq!(sha256_hex(&bytes), shard.sha256, "{}", shard.key);
    }

    // Every shard announced; only the shards in flight at the kill (at most
    // shard_concurrency, 2 by default) may repeat.
    let (announced, completions) = announcements(&topic);
    assert_eq!(completions, 1);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for sha in &announced {
        *counts.entry(sha.as_str()).or_default() += 1;
    }
    let hashes: BTreeSet<&str> = manifest.shards.iter().map(|s| s.sha256.as_str()).collect();
    assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), hashes);
    let repeated = counts.values().filter(|n| **n > 1).count();
    assert!(repeated <= 2, "{repeated} shards announced more than once");
    assert!(
        counts.values().all(|n| *n <= 2),
        "a shard announced 3 times"
    );
    // Shards are stored before they are announced: the killed run may have
    // announced fewer than it stored, never more.
    assert!(before_resume.len() <= after_kill);

    // A third run changes and announces nothing.
    let output = ingest().output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("0 written"));
    // (Compared sorted: partitions interleave differently on each read.)
    let (mut after_third, completions_after_third) = announcements(&topic);
    after_third.sort();
    let mut announced_sorted = announced.clone();
    announced_sorted.sort();
    assert_eq!(after_third, announced_sorted);
    assert_eq!(completions_after_third, 1);

    // A shard reads back: rows, labels and images intact.
    let first = &manifest.shards[0];
    let bytes = store.get(&first.key).await.unwrap();
    let rows: Vec<_> = read_shard(bytes).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.len() as u64, first.rows);
    for row in &rows {
        assert_eq!(row.split.name(), first.split);
        let info = probe_image(&row.image).unwrap();
        assert_eq!((info.width, info.height), (96, 96));
    }
}
