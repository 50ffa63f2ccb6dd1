//! Preprocess on the in-process bus and a filesystem store: a synthetic
//! dataset ingested, then preprocessed by the service handler until the
//! dataset is announced ready; redeliveries; a corrupt image inside a shard;
//! a stale announcement.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use chexvision_bus::{drain, publish_event, Bus, Consumer, ConsumerOptions, MemoryBus, TopicSpec};
use chexvision_config::{KafkaSettings, Topics};
use chexvision_dataset::{
    read_shard, write_shard, ImageFormat, LabelSet, Manifest, ShardOptions, ShardRow, Split,
};
use chexvision_events::{Body, Envelope, ObjectRef, ShardStage, ShardWritten};
use chexvision_ingest::{Ingest, IngestSettings, NoProgress, Source};
use chexvision_preprocess::{
    service::PreprocessHandler, Preprocess, PreprocessError, PreprocessSettings, ShardOutcome,
};
use chexvision_store::{FsStore, ObjectStore};
use chexvision_synth::SynthConfig;

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<FsStore>,
    bus: Arc<MemoryBus>,
    topics: Topics,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path()).await.unwrap());
    let bus = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    let specs: Vec<TopicSpec> = topics
        .all()
        .into_iter()
        .map(|(_, name)| TopicSpec::new(name, 2))
        .collect();
    bus.create_topics(&specs).await.unwrap();
    Harness {
        _dir: dir,
        store,
        bus,
        topics,
    }
}

impl Harness {
    fn preprocess(&self, size_px: u32) -> Preprocess {
        Preprocess {
            store: self.store.clone(),
            bus: self.bus.clone(),
            topics: self.topics.clone(),
            settings: PreprocessSettings {
                size_px,
                ..PreprocessSettings::default()
            },
        }
    }

    async fn events(&self, topic: &str, group: &str) -> Vec<Body> {
        let mut subscription = self
            .bus
            .subscribe(group, &[topic.to_owned()])
            .await
            .unwrap();
        drain(
            subscription.as_mut(),
            usize::MAX,
            Duration::from_millis(300),
        )
        .await
        .into_iter()
        .map(|d| Envelope::decode_checked(&d.payload).unwrap().body.unwrap())
        .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_makes_ready_shards_and_announces_the_dataset_once() {
    let h = harness().await;
    let ingest = Ingest {
        store: h.store.clone(),
        bus: h.bus.clone(),
        topics: h.topics.clone(),
        settings: IngestSettings {
            shard_target_rows: 16,
            ..IngestSettings::default()
        },
        metrics: None,
    };
    let source = Source::synthetic(SynthConfig {
        rows: 60,
        size_px: 128,
        seed: 4,
    })
    .unwrap();
    let report = ingest.run(source, "pp", None, &NoProgress).await.unwrap();
    let manifest: Manifest = report.manifest;

    let handler = PreprocessHandler {
        preprocess: h.preprocess(48),
        metrics: None,
    };
    let kafka = KafkaSettings {
        retry_backoff_initial_ms: 10,
        retry_backoff_max_ms: 20,
        ..KafkaSettings::default()
    };
    let consumer = Consumer::new(
        h.bus.clone(),
        ConsumerOptions::new("pp", &[&h.topics.shards_raw], &kafka, &h.topics),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { consumer.run(&handler, shutdown).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while h
        .store
        .head("datasets/pp/ready/48px/dataset-ready.json")
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "dataset never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // One ready shard per raw shard, 48×48 raw pixels, metadata kept.
    let ready = h.events(&h.topics.shards_ready, "check").await;
    assert_eq!(ready.len(), manifest.shards.len());
    for body in &ready {
        let Body::ShardWritten(shard) = body else {
            panic!("{body:?}")
        };
        assert_eq!(shard.stage(), ShardStage::Ready);
        assert_eq!(shard.image_size_px, 48);
        let key = format!(
            "datasets/pp/ready/48px/{}/shard-{:05}.parquet",
            match shard.split() {
                chexvision_events::Split::Train => "train",
                chexvision_events::Split::Validation => "validation",
                _ => "test",
            },
            shard.shard_index
        );
        let bytes = h.store.get(&key).await.unwrap();
        assert_eq!(
            chexvision_store::sha256_hex(&bytes),
            shard.shard.as_ref().unwrap().sha256
        );
        let reader = read_shard(bytes).unwrap();
        assert!(reader
            .metadata()
            .contains(&("chexvision.image_size_px".into(), "48".into())));
        assert!(reader
            .metadata()
            .contains(&("chexvision.synthetic".into(), "true".into())));
        for row in reader {
            let row = row.unwrap();
            assert_eq!(row.image_format, ImageFormat::Gray8);
            assert_eq!(row.image.len(), 48 * 48);
            assert_eq!((row.original_width, row.original_height), (128, 128));
            // CLAHE spreads the histogram: a flat image would not.
            let (min, max) = row
                .image
                .iter()
                .fold((255u8, 0u8), |(lo, hi), &p| (lo.min(p), hi.max(p)));
            assert!(max - min > 100, "{min}..{max}");
        }
    }
    let datasets = h.events(&h.topics.datasets, "check").await;
    assert_eq!(datasets.len(), 1);
    let Body::DatasetReady(done) = &datasets[0] else {
        panic!()
    };
    assert_eq!(done.image_size_px, 48);
    assert!(done.synthetic);
    assert_eq!(done.shard_count as usize, manifest.shards.len());
    assert_eq!(
        done.rows_per_split.values().sum::<u64>(),
        manifest.rows_total
    );

    // Redelivery of everything: no work, nothing announced.
    let preprocess = h.preprocess(48);
    let (outcomes, again) = preprocess.run_dataset("pp", &|_, _| {}).await.unwrap();
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, ShardOutcome::Skipped(_))));
    assert!(again.is_none());
    assert_eq!(
        h.events(&h.topics.shards_ready, "check-2").await.len(),
        ready.len()
    );
    assert_eq!(h.events(&h.topics.datasets, "check-2").await.len(), 1);
}

fn tiny_png(fill: u8) -> Bytes {
    let image = chexvision_synth::GrayImage {
        width: 32,
        height: 32,
        pixels: (0..32 * 32)
            .map(|i| fill.wrapping_add((i % 97) as u8))
            .collect(),
    };
    Bytes::from(chexvision_synth::encode_png(&image).unwrap())
}

fn raw_row(name: &str, image: Bytes) -> ShardRow {
    ShardRow {
        filename: name.into(),
        patient_id: "1".into(),
        follow_up: 0,
        labels: LabelSet::parse("Mass").unwrap(),
        split: Split::Train,
        view_position: "PA".into(),
        age: Some(50),
        sex: "F".into(),
        original_width: 32,
        original_height: 32,
        image_format: ImageFormat::Png,
        image,
    }
}

async fn put_raw_shard(h: &Harness, rows: &[ShardRow]) -> ShardWritten {
    let bytes = write_shard(rows, &ShardOptions::default()).unwrap();
    let receipt = h
        .store
        .put(
            "datasets/hand/raw/train/shard-00000.parquet",
            Bytes::from(bytes),
        )
        .await
        .unwrap();
    ShardWritten {
        dataset_id: "hand".into(),
        stage: ShardStage::Raw as i32,
        split: chexvision_events::Split::Train as i32,
        shard_index: 0,
        shard: Some(ObjectRef {
            uri: receipt.uri,
            sha256: receipt.sha256,
            size_bytes: receipt.size,
        }),
        row_count: rows.len() as u64,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_corrupt_image_is_set_aside_and_the_rest_kept() {
    let h = harness().await;
    let good = tiny_png(10);
    let truncated = Bytes::from(good[..good.len() / 2].to_vec());
    let rows = [
        raw_row("00000001_000.png", good.clone()),
        raw_row("00000001_001.png", truncated),
        raw_row("00000001_002.png", tiny_png(90)),
    ];
    let event = put_raw_shard(&h, &rows).await;
    let outcome = h
        .preprocess(16)
        .process_raw_shard(&event, None)
        .await
        .unwrap();
    let ShardOutcome::Written(done) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(done.rows, 2);
    assert_eq!(done.rejected.len(), 1);
    assert_eq!(done.rejected[0].image, "00000001_001.png");
    assert!(
        done.rejected[0].reason.contains("undecodable"),
        "{:?}",
        done.rejected
    );
    let rows: Vec<ShardRow> = read_shard(h.store.get(&done.key).await.unwrap())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows.iter().map(|r| r.filename.as_str()).collect::<Vec<_>>(),
        ["00000001_000.png", "00000001_002.png"]
    );
}

#[tokio::test]
async fn a_stale_or_bad_announcement_is_refused() {
    let h = harness().await;
    let mut event = put_raw_shard(&h, &[raw_row("00000001_000.png", tiny_png(1))]).await;
    event.shard.as_mut().unwrap().sha256 = "0".repeat(64);
    let err = h
        .preprocess(16)
        .process_raw_shard(&event, None)
        .await
        .unwrap_err();
    assert!(matches!(err, PreprocessError::Stale { .. }), "{err}");

    event.stage = ShardStage::Ready as i32;
    let err = h
        .preprocess(16)
        .process_raw_shard(&event, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected a raw shard"), "{err}");

    // The handler sends both kinds to the dead-letter topic without retrying.
    let handler = PreprocessHandler {
        preprocess: h.preprocess(16),
        metrics: None,
    };
    let envelope = Envelope::new(event, "test");
    publish_event(h.bus.as_ref(), &h.topics.shards_raw, "k", &envelope)
        .await
        .unwrap();
    let mut subscription = h
        .bus
        .subscribe("direct", std::slice::from_ref(&h.topics.shards_raw))
        .await
        .unwrap();
    let delivery = drain(subscription.as_mut(), 1, Duration::from_millis(300)).await;
    let err = chexvision_bus::Handler::handle(&handler, &delivery[0])
        .await
        .unwrap_err();
    assert!(
        matches!(err, chexvision_bus::HandlerError::Malformed(_)),
        "{err}"
    );
}

/// Mistaken or hostile records on `chexvision.shards.raw`: each is refused
/// at once (dead-lettered) with a reason naming the problem, and a valid
/// shard after it is still prepared.
#[tokio::test]
async fn hostile_raw_shard_events_are_refused_and_the_next_valid_one_is_served() {
    use chexvision_bus::{Delivery, Handler, HandlerError};
    use chexvision_events::TrainingRequested;

    let h = harness().await;
    let valid = put_raw_shard(&h, &[raw_row("00000001_000.png", tiny_png(3))]).await;
    let mut settings = PreprocessSettings {
        size_px: 16,
        ..PreprocessSettings::default()
    };
    settings.max_shard_bytes = valid.shard.as_ref().unwrap().size_bytes + 10;
    let handler = PreprocessHandler {
        preprocess: Preprocess {
            store: h.store.clone(),
            bus: h.bus.clone(),
            topics: h.topics.clone(),
            settings,
        },
        metrics: None,
    };
    let delivery = |topic: &str, body: Body| Delivery {
        topic: topic.to_owned(),
        partition: 0,
        offset: 0,
        key: Vec::new(),
        payload: Envelope::new(body, "test").to_bytes(),
        headers: Vec::new(),
    };
    let with = |edit: &dyn Fn(&mut ShardWritten)| {
        let mut event = valid.clone();
        edit(&mut event);
        Body::ShardWritten(event)
    };
    // A raw shard larger than the service takes.
    let big_rows: Vec<ShardRow> = (0..40)
        .map(|i| raw_row(&format!("00000002_{i:03}.png"), tiny_png(i as u8)))
        .collect();
    let big_bytes = write_shard(&big_rows, &ShardOptions::default()).unwrap();
    let big = h
        .store
        .put(
            "datasets/hand/raw/train/shard-00001.parquet",
            Bytes::from(big_bytes),
        )
        .await
        .unwrap();
    let raw = &h.topics.shards_raw;
    let hostile: Vec<(Delivery, &str)> = vec![
        (
            delivery(
                raw,
                with(&|e| e.shard.as_mut().unwrap().sha256 = "abc".into()),
            ),
            "no valid shard sha256",
        ),
        (
            delivery(raw, with(&|e| e.shard_index = u32::MAX)),
            "shard index 4294967295 is above the limit",
        ),
        (
            delivery(raw, with(&|e| e.dataset_id = "../../etc".into())),
            "invalid dataset id",
        ),
        (
            delivery(
                raw,
                with(&|e| {
                    e.shard_index = 1;
                    e.shard.as_mut().unwrap().sha256 = big.sha256.clone();
                }),
            ),
            "above service.max_shard_bytes",
        ),
        (
            delivery(raw, with(&|e| e.stage = ShardStage::Ready as i32)),
            "belongs on chexvision.shards.ready",
        ),
        (
            delivery(
                raw,
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
        // A valid shard of another dataset after each.
        let mut next = valid.clone();
        next.dataset_id = format!("hand{i}");
        let key = format!("datasets/hand{i}/raw/train/shard-00000.parquet");
        h.store
            .put(
                &key,
                h.store
                    .get("datasets/hand/raw/train/shard-00000.parquet")
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        handler
            .handle(&delivery(raw, Body::ShardWritten(next)))
            .await
            .unwrap_or_else(|e| panic!("the valid shard after {want:?} failed: {e}"));
        h.store
            .head(&format!(
                "datasets/hand{i}/ready/16px/train/shard-00000.parquet"
            ))
            .await
            .unwrap();
    }
}
