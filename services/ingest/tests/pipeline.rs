//! The ingest pipeline on the in-process bus and a filesystem store: the NIH
//! layout with its quirks and broken files, the published Parquet layout,
//! idempotent re-runs, conflicting settings, the rejected-share limit, and
//! the service handler with a malformed request.

use std::{path::Path, sync::Arc, time::Duration};

use chexvision_bus::{drain, Bus, MemoryBus, TopicSpec};
use chexvision_config::{S3Settings, Topics};
use chexvision_dataset::{read_shard, Manifest, Split};
use chexvision_events::{Body, Envelope};
use chexvision_ingest::{Ingest, IngestError, IngestSettings, NoProgress, Source};
use chexvision_store::{FsStore, ObjectStore};

/// A PNG signature and IHDR: enough for ingest, which checks headers only.
fn png(width: u32, height: u32, fill: u8) -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(b"IHDR");
    bytes.extend_from_slice(&width.to_be_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend(std::iter::repeat_n(fill, 64));
    bytes
}

/// The 2017 CSV (trailing comma, bracketed headers over two columns) with
/// images nested as in the official archives, official split lists, and:
/// one row without an image file, one corrupt image, one image file the CSV
/// does not list, and one row with an unknown label.
fn nih_folder(root: &Path, patients: u32) {
    let mut csv = String::from(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,\
         View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n",
    );
    let mut train_val = String::new();
    let mut test = String::new();
    for patient in 1..=patients {
        for follow_up in 0..2 {
            let name = format!("{patient:08}_{follow_up:03}.png");
            let labels = match patient % 4 {
                0 => "No Finding",
                1 => "Cardiomegaly|Effusion",
                2 => "Mass",
                _ => "Hernia",
            };
            csv.push_str(&format!(
                "{name},{labels},{follow_up},{patient},{:03}Y,M,PA,2500,2048,0.143,0.143,\n",
                30 + patient % 50
            ));
            let list = if patient % 5 == 0 {
                &mut test
            } else {
                &mut train_val
            };
            list.push_str(&format!("{name}\n"));
            let folder = root.join(format!("images_{:03}/images", 1 + patient % 2));
            std::fs::create_dir_all(&folder).unwrap();
            let bytes = if patient == 3 && follow_up == 1 {
                png(64, 64, 1)[..20].to_vec()
            } else {
                png(64, 64, patient as u8)
            };
            if !(patient == 2 && follow_up == 1) {
                std::fs::write(folder.join(&name), bytes).unwrap();
            }
        }
    }
    csv.push_str("99999999_000.png,Fracture,0,99999999,40,F,AP,2500,2048,0.143,0.143,\n");
    std::fs::write(
        root.join("images_001/images/99999999_000.png"),
        png(8, 8, 1),
    )
    .unwrap();
    std::fs::write(root.join("images_001/images/stray.png"), png(8, 8, 1)).unwrap();
    std::fs::write(root.join("Data_Entry_2017.csv"), csv).unwrap();
    std::fs::write(root.join("train_val_list.txt"), train_val).unwrap();
    std::fs::write(root.join("test_list.txt"), test).unwrap();
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<FsStore>,
    bus: Arc<MemoryBus>,
    topics: Topics,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path().join("store")).await.unwrap());
    let bus = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    bus.create_topics(&[
        TopicSpec::new(&topics.shards_raw, 2),
        TopicSpec::new(&topics.dead_letter, 1),
        TopicSpec::new(&topics.ingest_requests, 1),
    ])
    .await
    .unwrap();
    Harness {
        _dir: dir,
        store,
        bus,
        topics,
    }
}

impl Harness {
    fn ingest(&self, settings: IngestSettings) -> Ingest {
        Ingest {
            store: self.store.clone(),
            bus: self.bus.clone(),
            topics: self.topics.clone(),
            settings,
            metrics: None,
        }
    }

    /// Every event on the raw topic so far, with its record key.
    async fn raw_events(&self, group: &str) -> Vec<(String, Body)> {
        let mut subscription = self
            .bus
            .subscribe(group, std::slice::from_ref(&self.topics.shards_raw))
            .await
            .unwrap();
        drain(
            subscription.as_mut(),
            usize::MAX,
            Duration::from_millis(300),
        )
        .await
        .into_iter()
        .map(|d| {
            let event = Envelope::decode_checked(&d.payload).unwrap();
            (String::from_utf8(d.key).unwrap(), event.body.unwrap())
        })
        .collect()
    }

    /// Every ShardWritten on the raw topic so far.
    async fn announced(&self, group: &str) -> Vec<(String, chexvision_events::ShardWritten)> {
        self.raw_events(group)
            .await
            .into_iter()
            .filter_map(|(key, body)| match body {
                Body::ShardWritten(shard) => Some((key, shard)),
                _ => None,
            })
            .collect()
    }

    /// Every DatasetIngested on the raw topic so far.
    async fn completions(&self, group: &str) -> Vec<chexvision_events::DatasetIngested> {
        self.raw_events(group)
            .await
            .into_iter()
            .filter_map(|(key, body)| match body {
                Body::DatasetIngested(done) => {
                    assert_eq!(key, done.dataset_id, "keyed by dataset id");
                    Some(done)
                }
                _ => None,
            })
            .collect()
    }

    async fn manifest(&self, id: &str) -> Manifest {
        let bytes = self
            .store
            .get(&format!("datasets/{id}/manifest.json"))
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn small_shards() -> IngestSettings {
    IngestSettings {
        shard_target_rows: 7,
        max_rejected_share: 0.2,
        ..IngestSettings::default()
    }
}

#[tokio::test]
async fn nih_layout_with_broken_files() {
    let h = harness().await;
    let source_dir = tempfile::tempdir().unwrap();
    nih_folder(source_dir.path(), 20);
    let source = Source::open(
        &source_dir.path().display().to_string(),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    assert!(!source.synthetic);
    let report = h
        .ingest(small_shards())
        .run(source, "nih-small", None, &NoProgress)
        .await
        .unwrap();

    let manifest = h.manifest("nih-small").await;
    assert_eq!(manifest, report.manifest);
    // 40 listed rows + 1 unknown label row + 1 stray file = 42 images seen.
    assert_eq!(manifest.rows_total, 38);
    let reasons: Vec<(&str, &str)> = manifest
        .rejected
        .iter()
        .map(|r| (r.image.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    let reason_of = |image: &str| {
        reasons
            .iter()
            .find(|(i, _)| *i == image)
            .map(|(_, r)| *r)
            .unwrap_or_else(|| panic!("{image} not rejected: {reasons:?}"))
    };
    assert!(reason_of("00000002_001.png").contains("no image file"));
    assert!(reason_of("00000003_001.png").contains("truncated"));
    assert!(reason_of("stray.png").contains("not in the metadata"));
    assert!(reason_of("99999999_000.png").contains("Fracture"));

    // Official lists decide: patients 5, 10, 15, 20 are the test split.
    assert_eq!(manifest.rows_per_split["test"], 8);
    for shard in &manifest.shards {
        let bytes = h.store.get(&shard.key).await.unwrap();
        assert_eq!(chexvision_store::sha256_hex(&bytes), shard.sha256);
        let rows: Vec<_> = read_shard(bytes).unwrap().map(Result::unwrap).collect();
        assert_eq!(rows.len() as u64, shard.rows);
        assert!(rows.len() <= 7);
        for row in rows {
            assert_eq!(row.split.name(), shard.split);
            let patient: u32 = row.patient_id.parse().unwrap();
            assert_eq!(row.split == Split::Test, patient.is_multiple_of(5));
            assert_eq!((row.original_width, row.original_height), (2500, 2048));
            assert_eq!(row.age, Some(30 + (patient % 50) as u16));
        }
    }
    let cardiomegaly: u64 = manifest
        .label_counts
        .values()
        .map(|c| c.get("Cardiomegaly").copied().unwrap_or(0))
        .sum();
    assert_eq!(cardiomegaly, 10);

    // Each shard announced once, keyed by its content hash.
    let announced = h.announced("check-1").await;
    assert_eq!(announced.len(), manifest.shards.len());
    for (key, event) in &announced {
        let shard = event.shard.as_ref().unwrap();
        assert_eq!(key, &shard.sha256);
        assert!(manifest.shards.iter().any(|s| s.sha256 == shard.sha256));
    }

    // Then the completion, once, naming the manifest.
    let completions = h.completions("check-1c").await;
    assert_eq!(completions.len(), 1);
    let done = &completions[0];
    let manifest_ref = done.manifest.as_ref().unwrap();
    assert_eq!(manifest_ref.sha256, report.manifest_sha256);
    assert_eq!(done.shard_count as usize, manifest.shards.len());
    assert_eq!(done.rows_per_split["test"], 8);
    assert_eq!(done.rejected_count, 4);
    assert!(report.completion_announced);

    // The same ingest again: same manifest, nothing announced.
    let source = Source::open(
        &source_dir.path().display().to_string(),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let again = h
        .ingest(small_shards())
        .run(source, "nih-small", None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(again.manifest_sha256, report.manifest_sha256);
    assert_eq!(
        (again.shards_written, again.shards_skipped),
        (0, report.shards_written)
    );
    assert_eq!(h.announced("check-2").await.len(), announced.len());
    assert!(!again.completion_announced);
    assert_eq!(h.completions("check-2c").await.len(), 1);

    // Other settings under the same id are refused, not mixed in.
    let source = Source::open(
        &source_dir.path().display().to_string(),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let err = h
        .ingest(IngestSettings {
            shard_target_rows: 3,
            ..small_shards()
        })
        .run(source, "nih-small", None, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn too_many_rejected_images_fail_the_run() {
    let h = harness().await;
    let source_dir = tempfile::tempdir().unwrap();
    nih_folder(source_dir.path(), 4);
    let source = Source::open(
        &source_dir.path().display().to_string(),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let err = h
        .ingest(IngestSettings {
            max_rejected_share: 0.05,
            ..small_shards()
        })
        .run(source, "too-many", None, &NoProgress)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, IngestError::TooManyRejected { .. }));
    assert!(message.contains("4 of 10 images rejected"), "{message}");
    assert!(message.contains("limit of 5.0 %"), "{message}");
    assert!(h
        .store
        .head("datasets/too-many/manifest.json")
        .await
        .is_err());
}

#[tokio::test]
async fn published_parquet_layout() {
    let h = harness().await;
    let source_dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/dataset/tests/fixtures/hf_320_sample.parquet");
    std::fs::copy(
        fixture,
        source_dir.path().join("train-00000-of-00001.parquet"),
    )
    .unwrap();
    let source = Source::open(
        &source_dir.path().display().to_string(),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let report = h
        .ingest(IngestSettings {
            max_rejected_share: 0.3,
            ..small_shards()
        })
        .run(source, "hf", None, &NoProgress)
        .await
        .unwrap();
    let manifest = report.manifest;
    assert_eq!(manifest.source.format, "hf-parquet");
    assert_eq!((manifest.rows_total, manifest.rejected_total), (9, 3));
    // Patient 1's two images share a split.
    let mut patient_one = Vec::new();
    for shard in &manifest.shards {
        let bytes = h.store.get(&shard.key).await.unwrap();
        for row in read_shard(bytes).unwrap() {
            let row = row.unwrap();
            assert_eq!((row.original_width, row.original_height), (32, 32));
            if row.patient_id == "1" {
                patient_one.push(row.split);
            }
        }
    }
    assert_eq!(patient_one.len(), 2);
    assert_eq!(patient_one[0], patient_one[1]);
}

#[tokio::test]
async fn service_ingests_requests_and_dead_letters_bad_ones() {
    use chexvision_bus::{publish_event, Consumer, ConsumerOptions};
    use chexvision_ingest::service::IngestHandler;

    let h = harness().await;
    let handler = IngestHandler {
        ingest: h.ingest(IngestSettings::default()),
        s3: S3Settings::default(),
        metrics: None,
    };
    let request = |id: &str, rows: u32, size: u32| {
        Envelope::new(
            chexvision_events::IngestRequested {
                request_id: id.into(),
                dataset_id: format!("svc-{id}"),
                source_format: chexvision_events::SourceFormat::Synthetic as i32,
                synthetic_rows: rows,
                synthetic_size_px: size,
                synthetic_seed: 3,
                shard_target_rows: 10,
                ..Default::default()
            },
            "test",
        )
    };
    let good = request("good", 25, 64);
    let bad = request("bad", 25, 10); // 10 px is below the generator's minimum
    for event in [&bad, &good] {
        publish_event(h.bus.as_ref(), &h.topics.ingest_requests, "k", event)
            .await
            .unwrap();
    }
    let kafka = chexvision_config::KafkaSettings {
        retry_backoff_initial_ms: 10,
        retry_backoff_max_ms: 20,
        ..Default::default()
    };
    let consumer = Consumer::new(
        h.bus.clone(),
        ConsumerOptions::new(
            "ingest-test",
            &[&h.topics.ingest_requests],
            &kafka,
            &h.topics,
        ),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { consumer.run(&handler, shutdown).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while h
        .store
        .head("datasets/svc-good/manifest.json")
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "no manifest");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let manifest = h.manifest("svc-good").await;
    assert!(manifest.synthetic);
    assert_eq!(manifest.rows_total, 25);
    let announced = h.announced("check").await;
    assert_eq!(announced.len(), manifest.shards.len());
    let mut dead = h
        .bus
        .subscribe("dlq-check", std::slice::from_ref(&h.topics.dead_letter))
        .await
        .unwrap();
    let dead = drain(dead.as_mut(), 10, Duration::from_millis(300)).await;
    assert_eq!(dead.len(), 1);
    let letter = Envelope::decode_checked(&dead[0].payload).unwrap();
    let Some(Body::DeadLetter(letter)) = letter.body else {
        panic!("not a dead letter")
    };
    assert!(letter.error.contains("size"), "{}", letter.error);
    // The correlation id of the request follows into the announcements.
    let subscription_event = {
        let mut s = h
            .bus
            .subscribe("corr", std::slice::from_ref(&h.topics.shards_raw))
            .await
            .unwrap();
        drain(s.as_mut(), 1, Duration::from_millis(300)).await
    };
    let first = Envelope::decode_checked(&subscription_event[0].payload).unwrap();
    assert_eq!(first.correlation_id(), good.correlation_id());
}

/// A data team's mistakes on `chexvision.ingest.requests`: each is refused
/// (dead-lettered at once) with a reason naming the field and the bound, and
/// the valid request after it is still ingested. Before, shard sizes from a
/// request bypassed the service's bounds, and a synthetic request could ask
/// for 99,999,999 images of 4096 px.
#[tokio::test]
async fn hostile_ingest_requests_are_refused_and_the_next_valid_one_is_served() {
    use chexvision_bus::{Delivery, Handler, HandlerError};
    use chexvision_events::{IngestRequested, SourceFormat, TrainingRequested};
    use chexvision_ingest::service::IngestHandler;

    let h = harness().await;
    let handler = IngestHandler {
        ingest: h.ingest(IngestSettings::default()),
        s3: S3Settings::default(),
        metrics: None,
    };
    let synthetic = |id: &str| IngestRequested {
        request_id: id.into(),
        dataset_id: id.into(),
        source_format: SourceFormat::Synthetic as i32,
        synthetic_rows: 12,
        synthetic_size_px: 64,
        synthetic_seed: 1,
        ..Default::default()
    };
    let delivery = |topic: &str, body: Body| Delivery {
        topic: topic.to_owned(),
        partition: 0,
        offset: 0,
        key: Vec::new(),
        payload: Envelope::new(body, "test").to_bytes(),
        headers: Vec::new(),
    };
    let requests = &h.topics.ingest_requests;
    let hostile: Vec<(Delivery, &str)> = vec![
        (
            delivery(
                requests,
                IngestRequested {
                    shard_target_rows: u32::MAX,
                    ..synthetic("rows")
                }
                .into(),
            ),
            "shard_target_rows 4294967295 is above this service's limit of 65536",
        ),
        (
            delivery(
                requests,
                IngestRequested {
                    shard_target_bytes: 10,
                    ..synthetic("tiny-bytes")
                }
                .into(),
            ),
            "shard_target_bytes 10 is outside 1024..=",
        ),
        (
            delivery(
                requests,
                IngestRequested {
                    shard_target_bytes: u64::MAX,
                    ..synthetic("huge-bytes")
                }
                .into(),
            ),
            "service.max_shard_bytes",
        ),
        (
            delivery(
                requests,
                IngestRequested {
                    synthetic_rows: 99_999_999,
                    ..synthetic("many")
                }
                .into(),
            ),
            "synthetic_rows 99999999 is above this service's limit of 120000",
        ),
        (
            delivery(
                requests,
                IngestRequested {
                    synthetic_size_px: 4096,
                    ..synthetic("large")
                }
                .into(),
            ),
            "synthetic_size_px 4096 is above this service's limit of 1024",
        ),
        (
            delivery(
                requests,
                IngestRequested {
                    dataset_id: "../escape".into(),
                    ..synthetic("escape")
                }
                .into(),
            ),
            "invalid dataset id",
        ),
        (
            delivery(&h.topics.shards_raw, synthetic("wrong-topic").into()),
            "belongs on chexvision.ingest.requests, not on chexvision.shards.raw",
        ),
        (
            delivery(
                requests,
                TrainingRequested {
                    request_id: "r".into(),
                    ..Default::default()
                }
                .into(),
            ),
            "belongs on chexvision.training.requests",
        ),
    ];
    for (i, (hostile, want)) in hostile.iter().enumerate() {
        let err = handler.handle(hostile).await.unwrap_err();
        assert!(matches!(err, HandlerError::Malformed(_)), "{want}: {err}");
        assert!(
            err.to_string().contains(want),
            "{err} should contain {want:?}"
        );
        let valid = format!("valid-{i}");
        handler
            .handle(&delivery(requests, synthetic(&valid).into()))
            .await
            .unwrap_or_else(|e| panic!("the valid request after {want:?} failed: {e}"));
        assert_eq!(h.manifest(&valid).await.rows_total, 12);
    }
    for refused in [
        "rows",
        "tiny-bytes",
        "huge-bytes",
        "many",
        "large",
        "wrong-topic",
    ] {
        assert!(
            h.store
                .list(&format!("datasets/{refused}/"))
                .await
                .unwrap()
                .is_empty(),
            "{refused} wrote something"
        );
    }
}
