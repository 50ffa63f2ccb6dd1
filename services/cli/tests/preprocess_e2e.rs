//! Preprocess end to end against the local stack (Kafka-protocol broker + S3
//! server), with the service binary `chexvision-preprocess` as a child
//! process: 300 synthetic images, two of them corrupt past a valid header,
//! ingested into S3 in a few shards; the service consumes the raw shard
//! announcements from Kafka until `DatasetReady` comes out on the datasets
//! topic. Then every raw shard must have exactly one ready shard in S3
//! (320×320 raw pixels, the right rows, the corrupt images listed with their
//! reason in the shard's record), the ready announcements must match the
//! objects, and redeliveries (one raw announcement sent again with `chexvision
//! events send`, then the whole raw topic replayed to a restarted service
//! under a new consumer group) must write and announce nothing, so
//! `DatasetReady` stays single.
//!
//! The service binary belongs to another package, so Cargo does not build it
//! for these tests: the test builds it (a no-op when it is up to date) unless
//! `CHEXVISION_PREPROCESS_BIN` names one.
//!
//! Skipped without the stack, unless CHEXVISION_REQUIRE_STACK=1 (make test, CI).

mod common;
use common::{
    chexvision, counter, metrics_text, service_binary, stack, Deadline, Service, TopicReader,
};

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use chexvision_bus::TopicSpec;
use chexvision_dataset::{
    manifest_key, read_shard, ready_shard_key, ImageFormat, Manifest, ShardRow, Split,
};
use chexvision_events::{Body, DatasetReady, Envelope, ShardStage, ShardWritten};
use chexvision_preprocess::{shard_state_key, ReadyShard};
use chexvision_store::{sha256_hex, ObjectStore, S3Store};

const IMAGES: usize = 300;
/// Edge of the synthetic images: small, so the synth is quick; preprocess
/// scales them up to `READY_PX`.
const SYNTH_PX: u32 = 128;
const SHARD_ROWS: &str = "64";
const READY_PX: u32 = 320;
/// How long to keep listening before concluding that nothing more arrives,
/// once the service has counted the records it was sent as handled (its
/// announcements are durable before that).
const QUIET: Duration = Duration::from_secs(3);

/// The `chexvision-preprocess` binary of this build, built if needed.
fn preprocess_binary() -> PathBuf {
    service_binary("chexvision-preprocess", "CHEXVISION_PREPROCESS_BIN")
}

fn start_preprocess(binary: &Path, env: &[(String, String)], group: &str, name: &str) -> Service {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/preprocess.yaml");
    let mut env = env.to_vec();
    env.push(("CHEXVISION_SERVICE__GROUP".into(), group.into()));
    Service::start(binary, &config, &env, name)
}

/// Waits until the service has handled `raw_records` records of the raw
/// topic in total, with `skipped` and `written` shard outcomes so far.
async fn wait_until_handled(
    service: &mut Service,
    address: SocketAddr,
    raw_topic: &str,
    raw_records: u64,
    skipped: u64,
    written: u64,
) {
    let deadline = Deadline::new(&format!(
        "{raw_records} raw records handled ({skipped} shards skipped, {written} written)"
    ));
    loop {
        let text = metrics_text(address);
        let handled = |outcome| {
            counter(
                &text,
                "chexvision_bus_records_total",
                &[("topic", raw_topic), ("outcome", outcome)],
            )
        };
        let shards = |outcome| {
            counter(
                &text,
                "chexvision_preprocess_shards_total",
                &[("outcome", outcome)],
            )
        };
        assert_eq!(handled("dead_lettered"), 0, "a raw record dead-lettered");
        if handled("handled") >= raw_records {
            assert_eq!(handled("handled"), raw_records, "more records than sent");
            assert_eq!(shards("skipped"), skipped, "skipped shards");
            assert_eq!(shards("written"), written, "written shards");
            return;
        }
        deadline.tick(service).await;
    }
}

/// Cuts a PNG in the middle of its first IDAT chunk: signature and IHDR stay
/// valid (what ingest checks), the pixel data stops short.
fn truncated_in_idat(png: &[u8]) -> Vec<u8> {
    let (start, len) = first_idat(png);
    png[..start + len / 2].to_vec()
}

/// Same length and chunk structure (every CRC right), but the compressed
/// pixel data after the zlib header is garbage.
fn garbled_idat(png: &[u8]) -> Vec<u8> {
    let (start, len) = first_idat(png);
    let mut out = png.to_vec();
    for (i, byte) in out[start + 2..start + len].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(151).wrapping_add(0x5d);
    }
    let crc = crc32(&out[start - 4..start + len]); // type + data
    out[start + len..start + len + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// (offset of the data, length) of the first IDAT chunk.
fn first_idat(png: &[u8]) -> (usize, usize) {
    let mut at = 8; // after the signature
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if &png[at + 4..at + 8] == b"IDAT" {
            assert!(len > 16, "IDAT too small to corrupt");
            return (at + 8, len);
        }
        at += 12 + len;
    }
    panic!("no IDAT chunk");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Key, size and time of every object under `prefix`.
async fn listing(store: &S3Store, prefix: &str) -> Vec<(String, u64, Option<SystemTime>)> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.key, m.size, m.last_modified))
        .collect()
}

fn shard_written(event: &Envelope) -> &ShardWritten {
    match &event.body {
        Some(Body::ShardWritten(shard)) => shard,
        other => panic!("expected a shard announcement, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_prepares_an_ingested_dataset_once() {
    let Some(stack) = stack() else {
        return;
    };
    let binary = preprocess_binary();
    let started = Instant::now();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let unique = &unique[..12];
    let prefix = format!("e2e-preprocess-{unique}");
    let store_uri = format!("s3://{}/{prefix}", stack.bucket);
    let store = S3Store::connect(&stack.bucket, &prefix, &stack.config.s3).unwrap();
    let dataset = format!("pp-{unique}");
    let topic = |name: &str| format!("test.e2e.pp.{unique}.{name}");
    let (raw_topic, ready_topic, datasets_topic, dlq_topic) = (
        topic("shards.raw"),
        topic("shards.ready"),
        topic("datasets"),
        topic("dlq"),
    );
    // For every child: this run's store prefix and topics.
    let env: Vec<(String, String)> = [
        ("CHEXVISION_STORE", store_uri.as_str()),
        ("CHEXVISION_TOPICS__SHARDS_RAW", &raw_topic),
        ("CHEXVISION_TOPICS__SHARDS_READY", &ready_topic),
        ("CHEXVISION_TOPICS__DATASETS", &datasets_topic),
        ("CHEXVISION_TOPICS__DEAD_LETTER", &dlq_topic),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    // Synthetic images, two of them corrupt past a valid header.
    let source = tempfile::tempdir().unwrap();
    let status = chexvision()
        .args(["synth", "--rows", &IMAGES.to_string()])
        .args(["--size", &SYNTH_PX.to_string(), "--seed", "5"])
        .args(["--out", &source.path().display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut pngs: Vec<PathBuf> = walk(source.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), IMAGES);
    let mut corrupt: BTreeMap<String, &str> = BTreeMap::new();
    for (index, how) in [(7, "truncated"), (IMAGES / 2 + 3, "garbled")] {
        let path = &pngs[index];
        let good = std::fs::read(path).unwrap();
        let bad = match how {
            "truncated" => truncated_in_idat(&good),
            _ => garbled_idat(&good),
        };
        // The header still says what it did.
        let info = chexvision_dataset::probe_image(&bad).unwrap();
        assert_eq!((info.width, info.height), (SYNTH_PX, SYNTH_PX));
        std::fs::write(path, bad).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        corrupt.insert(name, how);
    }

    // Ingest into S3; the raw shards are announced on this run's raw topic.
    let output = chexvision()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["ingest", "--quiet", "--source"])
        .arg(source.path())
        .args(["--dataset-id", &dataset, "--shard-rows", SHARD_ROWS])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ingest: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest_bytes = store.get(&manifest_key(&dataset)).await.unwrap();
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).unwrap();
    // Ingest checks headers only: the corrupt images are accepted.
    assert_eq!(manifest.rejected_total, 0, "{:?}", manifest.rejected);
    assert_eq!(manifest.rows_total as usize, IMAGES);
    assert!(
        manifest.shards.len() >= 4,
        "only {} shards",
        manifest.shards.len()
    );
    // Where each corrupt image went, and every raw shard's rows by name.
    let mut raw_rows: BTreeMap<String, Vec<ShardRow>> = BTreeMap::new();
    for shard in &manifest.shards {
        let rows: Vec<ShardRow> = read_shard(store.get(&shard.key).await.unwrap())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len() as u64, shard.rows);
        raw_rows.insert(shard.key.clone(), rows);
    }
    let corrupt_in = |key: &str| -> BTreeSet<String> {
        raw_rows[key]
            .iter()
            .filter(|r| corrupt.contains_key(&r.filename))
            .map(|r| r.filename.clone())
            .collect()
    };
    assert_eq!(
        manifest
            .shards
            .iter()
            .map(|s| corrupt_in(&s.key).len())
            .sum::<usize>(),
        corrupt.len(),
        "every corrupt image is in a raw shard"
    );
    let ingest_done = started.elapsed();

    // Readers of every topic the service writes to, and of the raw topic.
    let bus = chexvision_bus::connect(&stack.config.bus, &stack.config.kafka).unwrap();
    let partitions = stack.config.kafka.partitions;
    bus.create_topics(&[
        TopicSpec::new(&raw_topic, partitions),
        TopicSpec::new(&ready_topic, partitions),
        TopicSpec::new(&datasets_topic, partitions),
        TopicSpec::new(&dlq_topic, 1),
    ])
    .await
    .unwrap();
    let raw = TopicReader::start(&bus, &raw_topic).await;
    let ready = TopicReader::start(&bus, &ready_topic).await;
    let datasets = TopicReader::start(&bus, &datasets_topic).await;
    let dead = TopicReader::start(&bus, &dlq_topic).await;

    // The service, until the dataset is announced ready.
    let group = format!("e2e-preprocess-{unique}");
    let mut service = start_preprocess(&binary, &env, &group, "chexvision-preprocess");
    let address = service.http_address().await;
    let deadline = Deadline::new("DatasetReady");
    while datasets.is_empty() {
        deadline.tick(&mut service).await;
    }
    let ready_after = started.elapsed();
    // Everything on the raw topic handled: the shards, ingest's completion
    // and the hand-over of the announcement after the last shard.
    let raw_records = (manifest.shards.len() + 2) as u64;
    let shards = manifest.shards.len() as u64;
    wait_until_handled(&mut service, address, &raw_topic, raw_records, 0, shards).await;
    let deadline = Deadline::new("the raw topic read back");
    while raw.len() < raw_records as usize {
        deadline.tick(&mut service).await;
    }
    let raw_events = raw.events();
    assert_eq!(raw_events.len() as u64, raw_records);

    // Exactly one ready shard per raw shard in S3, and nothing else but the
    // records (state/) and the dataset marker.
    let ready_prefix = format!("datasets/{dataset}/ready/{READY_PX}px/");
    let state_key = |split: &str, index: u32| {
        let raw = manifest
            .shards
            .iter()
            .find(|s| s.split == split && s.index == index)
            .unwrap();
        shard_state_key(&dataset, READY_PX, split, index, &raw.sha256)
    };
    let (stored, records): (BTreeSet<String>, BTreeSet<String>) = store
        .list(&ready_prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .partition(|k| k.ends_with(".parquet"));
    let expected: BTreeSet<String> = manifest
        .shards
        .iter()
        .map(|s| {
            let split = Split::from_name(&s.split).unwrap();
            ready_shard_key(&dataset, READY_PX, split, s.index)
        })
        .collect();
    assert_eq!(stored, expected, "one ready shard per raw shard");
    let mut expected_records: BTreeSet<String> = manifest
        .shards
        .iter()
        .map(|s| state_key(&s.split, s.index))
        .collect();
    expected_records.insert(format!("{ready_prefix}dataset-ready.json"));
    expected_records.insert(format!("{ready_prefix}manifest.json"));
    assert_eq!(
        records, expected_records,
        "a record per shard, the ready manifest, one marker"
    );

    let mut ready_sha: BTreeMap<String, (String, u64)> = BTreeMap::new(); // key -> (sha, rows)
    let mut rows_per_split: BTreeMap<String, u64> = BTreeMap::new();
    for shard in &manifest.shards {
        let split = Split::from_name(&shard.split).unwrap();
        let key = ready_shard_key(&dataset, READY_PX, split, shard.index);
        let bytes = store.get(&key).await.unwrap();
        let sha = sha256_hex(&bytes);
        let reader = read_shard(bytes).unwrap();
        for (name, value) in [
            ("chexvision.stage", "ready"),
            ("chexvision.image_size_px", "320"),
            ("chexvision.ready_format", "raw"),
            ("chexvision.synthetic", "true"),
        ] {
            assert!(
                reader
                    .metadata()
                    .contains(&(name.to_owned(), value.to_owned())),
                "{key}: footer {name} = {value}: {:?}",
                reader.metadata()
            );
        }
        let rows: Vec<ShardRow> = reader.map(Result::unwrap).collect();
        let bad = corrupt_in(&shard.key);
        let kept: Vec<&ShardRow> = raw_rows[&shard.key]
            .iter()
            .filter(|r| !bad.contains(&r.filename))
            .collect();
        assert_eq!(
            rows.len() as u64,
            shard.rows - bad.len() as u64,
            "{key}: rows"
        );
        for (row, raw_row) in rows.iter().zip(&kept) {
            assert_eq!(row.filename, raw_row.filename, "{key}: order kept");
            assert_eq!(row.image_format, ImageFormat::Gray8);
            assert_eq!(row.image.len(), (READY_PX * READY_PX) as usize);
            assert_eq!(row.split, split);
            assert_eq!(row.labels, raw_row.labels);
            assert_eq!(row.patient_id, raw_row.patient_id);
            assert_eq!(
                (row.original_width, row.original_height),
                (SYNTH_PX, SYNTH_PX)
            );
        }
        // The shard's record: from this raw shard, the corrupt images with
        // their reason.
        let state_key = state_key(&shard.split, shard.index);
        let record: ReadyShard =
            serde_json::from_slice(&store.get(&state_key).await.unwrap()).unwrap();
        assert_eq!(record.raw_sha256, shard.sha256);
        assert_eq!(record.key, key);
        assert_eq!(record.sha256, sha);
        assert_eq!(record.rows, rows.len() as u64);
        let rejected: BTreeSet<String> = record.rejected.iter().map(|r| r.image.clone()).collect();
        assert_eq!(rejected, bad, "{state_key}: rejected images");
        for r in &record.rejected {
            assert!(
                r.reason.starts_with("undecodable: ") && r.reason.len() > "undecodable: ".len(),
                "{}: reason {:?}",
                r.image,
                r.reason
            );
            eprintln!(
                "set aside ({} PNG): {}: {}",
                corrupt[&r.image], r.image, r.reason
            );
        }
        *rows_per_split.entry(shard.split.clone()).or_default() += record.rows;
        ready_sha.insert(key, (sha, record.rows));
    }

    // Ready announcements: one per ready shard, keyed by its sha256, caused by
    // the raw shard's announcement.
    let deadline = Deadline::new("every ready announcement");
    while ready.len() < manifest.shards.len() {
        deadline.tick(&mut service).await;
    }
    let raw_by_id: BTreeMap<String, &Envelope> = raw_events
        .iter()
        .map(|(_, e)| (e.event_id().to_owned(), e))
        .collect();
    let mut announced: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (key, event) in ready.events() {
        let shard = shard_written(&event);
        assert_eq!(shard.stage(), ShardStage::Ready);
        assert_eq!(shard.dataset_id, dataset);
        assert_eq!(shard.image_size_px, READY_PX);
        let object = shard.shard.as_ref().unwrap();
        assert_eq!(key, object.sha256, "keyed by content hash");
        let split = Split::from_proto(shard.split).unwrap();
        let store_key = ready_shard_key(&dataset, READY_PX, split, shard.shard_index);
        assert_eq!(object.uri, store.uri(&store_key));
        let meta = event.meta.as_ref().unwrap();
        assert_eq!(meta.producer, "chexvision-preprocess");
        let cause = raw_by_id
            .get(&meta.causation_id)
            .unwrap_or_else(|| panic!("{store_key}: caused by no raw event"));
        let raw_shard = shard_written(cause);
        assert_eq!(
            (raw_shard.split, raw_shard.shard_index),
            (shard.split, shard.shard_index)
        );
        assert_eq!(meta.correlation_id, cause.correlation_id());
        let previous =
            announced.insert(store_key.clone(), (object.sha256.clone(), shard.row_count));
        assert!(previous.is_none(), "{store_key} announced twice");
    }
    assert_eq!(announced, ready_sha, "announcements match the objects");

    // DatasetReady: once, keyed {id}@320px, rows without the corrupt images.
    let check_dataset_ready = |datasets: &TopicReader| -> DatasetReady {
        let events = datasets.events();
        assert_eq!(
            events.len(),
            1,
            "DatasetReady announced {} times",
            events.len()
        );
        let (key, event) = &events[0];
        assert_eq!(key, &format!("{dataset}@{READY_PX}px"));
        let Some(Body::DatasetReady(done)) = &event.body else {
            panic!("{event:?}")
        };
        done.clone()
    };
    let done = check_dataset_ready(&datasets);
    assert_eq!(done.dataset_id, dataset);
    assert_eq!(done.image_size_px, READY_PX);
    assert!(done.synthetic);
    assert_eq!(done.shard_count as usize, manifest.shards.len());
    let manifest_ref = done.manifest.as_ref().unwrap();
    assert_eq!(manifest_ref.sha256, sha256_hex(&manifest_bytes));
    assert_eq!(manifest_ref.size_bytes, manifest_bytes.len() as u64);
    assert_eq!(manifest_ref.uri, store.uri(&manifest_key(&dataset)));
    // The ready manifest it names is what the trainer plans from.
    let ready_ref = done.ready_manifest.as_ref().expect("a ready manifest");
    let ready_key = chexvision_dataset::ready_manifest_key(&dataset, READY_PX);
    let ready_bytes = store.get(&ready_key).await.unwrap();
    assert_eq!(ready_ref.sha256, sha256_hex(&ready_bytes));
    assert_eq!(ready_ref.uri, store.uri(&ready_key));
    let ready_manifest: chexvision_dataset::ReadyManifest =
        serde_json::from_slice(&ready_bytes).unwrap();
    assert_eq!(ready_manifest.manifest.shards.len(), manifest.shards.len());
    assert_eq!(
        ready_manifest.manifest.rejected_total,
        corrupt.len() as u64,
        "the images preprocess set aside"
    );
    assert_eq!(
        done.rows_per_split
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        rows_per_split
    );
    assert_eq!(
        rows_per_split.values().sum::<u64>(),
        (IMAGES - corrupt.len()) as u64
    );

    let before_redelivery = listing(&store, &format!("datasets/{dataset}/")).await;

    // Redelivery 1: the announcement of a raw shard with a corrupt image,
    // sent again by hand.
    let with_corrupt = manifest
        .shards
        .iter()
        .find(|s| !corrupt_in(&s.key).is_empty())
        .unwrap();
    let (resend_key, resend) = raw_events
        .iter()
        .find(|(_, e)| {
            matches!(&e.body, Some(Body::ShardWritten(s))
                if s.shard.as_ref().is_some_and(|o| o.sha256 == with_corrupt.sha256))
        })
        .expect("the raw shard's announcement");
    let mut send = chexvision()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["events", "send", "--topic", &raw_topic, "--key", resend_key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    send.stdin
        .take()
        .unwrap()
        .write_all(resend.to_json().as_bytes())
        .unwrap();
    let output = send.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "events send: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until_handled(
        &mut service,
        address,
        &raw_topic,
        raw_records + 1,
        1,
        shards,
    )
    .await;

    // Redelivery 2: the service stopped (gracefully) and started again under
    // a new consumer group, so the whole raw topic comes again.
    let status = service.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    drop(service);
    let mut service = start_preprocess(
        &binary,
        &env,
        &format!("{group}-replay"),
        "chexvision-preprocess (restarted)",
    );
    let address = service.http_address().await;
    wait_until_handled(
        &mut service,
        address,
        &raw_topic,
        raw_records + 1,
        shards + 1,
        0,
    )
    .await;
    tokio::time::sleep(QUIET).await;
    service.assert_running();

    // Nothing written, nothing announced, no dead letters.
    assert_eq!(
        listing(&store, &format!("datasets/{dataset}/")).await,
        before_redelivery,
        "objects changed on redelivery"
    );
    assert_eq!(raw.len() as u64, raw_records + 1);
    assert_eq!(
        ready.len(),
        manifest.shards.len(),
        "ready shards announced again"
    );
    check_dataset_ready(&datasets);
    assert!(
        dead.is_empty(),
        "dead letters: {:?}",
        dead.events()
            .iter()
            .map(|(_, e)| e.to_json())
            .collect::<Vec<_>>()
    );

    let status = service.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    eprintln!(
        "preprocess e2e: {} images in {} shards; synth + ingest {:.1} s, dataset ready at {:.1} s, done at {:.1} s",
        IMAGES,
        manifest.shards.len(),
        ingest_done.as_secs_f64(),
        ready_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
