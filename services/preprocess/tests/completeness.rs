//! Completeness costs a fixed number of store requests per shard, whatever
//! the dataset's size, and the dataset is announced once, by the handler of
//! its `DatasetIngested` (keyed by dataset id, so by one replica).
//!
//! Before, every shard re-read the manifest and one record per shard
//! already ready: about N²/2 GETs for N shards (some 211,000 for NIH's
//! ~650). The figures this test prints are in docs/benchmarks.md.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use chexvision_bus::{drain, Bus, Delivery, Handler, MemoryBus, TopicSpec};
use chexvision_config::Topics;
use chexvision_dataset::{
    manifest_key, raw_shard_key, write_shard, ImageFormat, LabelSet, Manifest, ManifestShard,
    ManifestSource, ShardOptions, ShardRow, Split,
};
use chexvision_events::{Body, DatasetIngested, Envelope, ObjectRef, ShardStage, ShardWritten};
use chexvision_preprocess::{service::PreprocessHandler, Preprocess, PreprocessSettings};
use chexvision_store::{FsStore, ObjectMeta, ObjectStore, PutReceipt, Upload};

/// A store that counts the requests made through it.
#[derive(Debug)]
struct Counting {
    inner: FsStore,
    gets: AtomicU64,
    lists: AtomicU64,
}

#[async_trait]
impl ObjectStore for Counting {
    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }
    async fn put(&self, key: &str, data: Bytes) -> chexvision_store::Result<PutReceipt> {
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> chexvision_store::Result<PutReceipt> {
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> chexvision_store::Result<Bytes> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> chexvision_store::Result<ObjectMeta> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> chexvision_store::Result<Vec<ObjectMeta>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> chexvision_store::Result<()> {
        self.inner.delete(key).await
    }
    async fn upload(&self, key: &str) -> chexvision_store::Result<Box<dyn Upload>> {
        self.inner.upload(key).await
    }
}

fn png() -> Bytes {
    let image = chexvision_synth::GrayImage {
        width: 16,
        height: 16,
        pixels: (0..256).map(|i| (i * 7 % 251) as u8).collect(),
    };
    Bytes::from(chexvision_synth::encode_png(&image).unwrap())
}

fn delivery(topic: &str, envelope: &Envelope) -> Delivery {
    Delivery {
        topic: topic.to_owned(),
        partition: 0,
        offset: 0,
        key: Vec::new(),
        payload: envelope.to_bytes(),
        headers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completeness_is_linear_in_the_shards_and_the_dataset_is_announced_once() {
    const SHARDS: u32 = 650;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Counting {
        inner: FsStore::open(dir.path()).await.unwrap(),
        gets: AtomicU64::new(0),
        lists: AtomicU64::new(0),
    });
    let mut manifest = Manifest::new(
        "nih-sized",
        true,
        ManifestSource {
            format: "synthetic".into(),
            uri: "test://".into(),
        },
    );
    let mut events = Vec::new();
    let image = png();
    for index in 0..SHARDS {
        let split = if index % 10 == 0 {
            Split::Validation
        } else {
            Split::Train
        };
        let row = ShardRow {
            filename: format!("{index:08}_000.png"),
            patient_id: format!("{index}"),
            follow_up: 0,
            labels: LabelSet::from_bits((index % 4) as u16),
            split,
            view_position: "PA".into(),
            age: None,
            sex: "F".into(),
            original_width: 16,
            original_height: 16,
            image_format: ImageFormat::Png,
            image: image.clone(),
        };
        manifest.count_row(split, row.labels);
        let receipt = store
            .put(
                &raw_shard_key("nih-sized", split, index),
                Bytes::from(write_shard(&[row], &ShardOptions::default()).unwrap()),
            )
            .await
            .unwrap();
        manifest.shards.push(ManifestShard {
            key: receipt.key.clone(),
            uri: receipt.uri.clone(),
            split: split.name().into(),
            index,
            sha256: receipt.sha256.clone(),
            size_bytes: receipt.size,
            rows: 1,
        });
        events.push(ShardWritten {
            dataset_id: "nih-sized".into(),
            stage: ShardStage::Raw as i32,
            split: split.to_proto() as i32,
            shard_index: index,
            shard: Some(ObjectRef {
                uri: receipt.uri,
                sha256: receipt.sha256,
                size_bytes: receipt.size,
            }),
            row_count: 1,
            image_size_px: 0,
            manifest: None,
        });
    }
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    store
        .put(
            &manifest_key("nih-sized"),
            Bytes::from(manifest_bytes.clone()),
        )
        .await
        .unwrap();

    let bus = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    let specs: Vec<TopicSpec> = topics
        .all()
        .into_iter()
        .map(|(_, name)| TopicSpec::new(name, 1))
        .collect();
    bus.create_topics(&specs).await.unwrap();
    let handler = PreprocessHandler {
        preprocess: Preprocess {
            store: store.clone(),
            bus: bus.clone(),
            topics: topics.clone(),
            settings: PreprocessSettings {
                size_px: 16,
                ..PreprocessSettings::default()
            },
        },
        metrics: None,
    };
    let (gets_before, lists_before) = (
        store.gets.load(Ordering::SeqCst),
        store.lists.load(Ordering::SeqCst),
    );
    for event in events {
        let envelope = Envelope::new(event, "test");
        handler
            .handle(&delivery(&topics.shards_raw, &envelope))
            .await
            .unwrap();
    }
    let gets = store.gets.load(Ordering::SeqCst) - gets_before;
    let lists = store.lists.load(Ordering::SeqCst) - lists_before;
    println!("{SHARDS} shards: {gets} GETs and HEADs, {lists} listings");
    assert!(
        gets <= 6 * u64::from(SHARDS),
        "{gets} GETs for {SHARDS} shards: not linear"
    );
    assert!(lists <= u64::from(SHARDS), "{lists} listings");

    // The shard handlers announced nothing themselves: they handed the
    // announcement to the dataset's partition with one DatasetIngested.
    let mut reader = bus
        .subscribe("reader", std::slice::from_ref(&topics.shards_raw))
        .await
        .unwrap();
    let handed: Vec<Envelope> = drain(reader.as_mut(), usize::MAX, Duration::from_millis(300))
        .await
        .into_iter()
        .map(|d| Envelope::decode_checked(&d.payload).unwrap())
        .collect();
    assert_eq!(handed.len(), 1, "one hand-over, after the last shard");
    let Some(Body::DatasetIngested(ingested)) = &handed[0].body else {
        panic!("{:?}", handed[0])
    };
    assert_eq!(ingested.dataset_id, "nih-sized");
    let mut datasets = bus
        .subscribe("datasets", std::slice::from_ref(&topics.datasets))
        .await
        .unwrap();
    assert!(drain(datasets.as_mut(), 1, Duration::from_millis(200))
        .await
        .is_empty());

    // Its handler announces once, however often it is delivered.
    let gets_before = store.gets.load(Ordering::SeqCst);
    for _ in 0..3 {
        handler
            .handle(&delivery(&topics.shards_raw, &handed[0]))
            .await
            .unwrap();
    }
    let announce_gets = store.gets.load(Ordering::SeqCst) - gets_before;
    println!("announcing: {announce_gets} GETs (one read of each shard's record)");
    let announced = drain(datasets.as_mut(), 10, Duration::from_millis(300)).await;
    assert_eq!(announced.len(), 1);
    let Some(Body::DatasetReady(ready)) = Envelope::decode_checked(&announced[0].payload)
        .unwrap()
        .body
    else {
        panic!()
    };
    assert_eq!(ready.shard_count, SHARDS);
    assert_eq!(
        ready.rows_per_split["train"],
        u64::from(SHARDS - SHARDS / 10)
    );
    assert_eq!(
        ready.manifest.as_ref().unwrap().sha256,
        chexvision_store::sha256_hex(&manifest_bytes)
    );

    // The ingest service's own DatasetIngested comes before the shards are
    // ready: it announces nothing and is not an error.
    let early = Envelope::new(
        DatasetIngested {
            dataset_id: "not-yet".into(),
            ..Default::default()
        },
        "test",
    );
    handler
        .handle(&delivery(&topics.shards_raw, &early))
        .await
        .unwrap();
    assert!(drain(datasets.as_mut(), 1, Duration::from_millis(200))
        .await
        .is_empty());
}
