//! Streams ready shards from the store into training batches.
//!
//! ```text
//! fetch thread ──(≤ prefetch_shards shard bytes)──► assemble thread ──(≤ prefetch_batches)──► next()
//!   shard keys in a seeded          shuffle buffer of rows, random draws,
//!   order per epoch                 decode + augment + tensor on `workers` threads
//! ```
//!
//! Memory is bounded by `prefetch_shards` shards in flight, the shuffle
//! buffer and `prefetch_batches` batches, whatever the dataset size. The
//! time `next()` spends blocked is the training step's wait for data: it is
//! added to [`EpochBatches::wait`] and observed on the
//! `chexvision_trainer_loader_wait_seconds` histogram when one is given.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chexvision_dataset::{read_shard, ImageFormat, ShardRow};
use chexvision_models::candle_core::{Device, Tensor};
use chexvision_store::ObjectStore;
use chexvision_vision::{
    augment, decode_gray8, to_tensor_imagenet, AugmentConfig, DecodeLimits, GrayImage8,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::Batch;

/// What the loader needs to know.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Side of the (square) ready images.
    pub image_size: u32,
    /// Shards fetched ahead of the one being read.
    pub prefetch_shards: usize,
    /// Finished batches kept ready.
    pub prefetch_batches: usize,
    /// Rows a batch is drawn from at random (shuffling within and across
    /// shards).
    pub shuffle_buffer: usize,
    /// Threads that decode and augment.
    pub workers: usize,
    /// Training augmentation; `None` for validation (and no shuffling).
    pub augment: Option<AugmentConfig>,
    pub seed: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 24,
            image_size: 320,
            prefetch_shards: 2,
            prefetch_batches: 4,
            shuffle_buffer: 2048,
            workers: 2,
            augment: Some(AugmentConfig::default()),
            seed: 42,
        }
    }
}

/// Why a batch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("fetching shard {key}: {source}")]
    Fetch {
        key: String,
        #[source]
        source: chexvision_store::StoreError,
    },
    #[error("reading shard {key}: {detail}")]
    Shard { key: String, detail: String },
    #[error("building the batch tensor: {0}")]
    Tensor(String),
}

/// Ready shards of one split, read through a store.
pub struct ShardLoader {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
    keys: Vec<String>,
    config: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
    wait_histogram: Option<prometheus::Histogram>,
}

impl ShardLoader {
    /// `runtime` runs the store's async calls (the training loop itself is
    /// synchronous).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        runtime: tokio::runtime::Handle,
        keys: Vec<String>,
        config: LoaderConfig,
    ) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.workers.max(1))
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            store,
            runtime,
            keys,
            config,
            pool: Arc::new(pool),
            wait_histogram: None,
        })
    }

    /// Observe each wait on this histogram (the service registers it as
    /// `chexvision_trainer_loader_wait_seconds`).
    pub fn with_wait_histogram(mut self, histogram: prometheus::Histogram) -> Self {
        self.wait_histogram = Some(histogram);
        self
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The batches of epoch `epoch`: shard order and row draws are seeded
    /// by (seed, epoch), augmentation by (seed, epoch, file name).
    pub fn epoch(&self, epoch: u32) -> EpochBatches {
        let training = self.config.augment.is_some();
        let mut keys = self.keys.clone();
        let mut order_rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ (u64::from(epoch) << 32));
        if training {
            keys.shuffle(&mut order_rng);
        }
        let (shard_tx, shard_rx) = sync_channel::<Result<(String, Bytes), LoaderError>>(
            self.config.prefetch_shards.max(1),
        );
        let (batch_tx, batch_rx) =
            sync_channel::<Result<Batch, LoaderError>>(self.config.prefetch_batches.max(1));

        let store = self.store.clone();
        let runtime = self.runtime.clone();
        let fetch = std::thread::Builder::new()
            .name("loader-fetch".into())
            .spawn(move || {
                for key in keys {
                    let got = runtime
                        .block_on(store.get(&key))
                        .map(|bytes| (key.clone(), bytes))
                        .map_err(|source| LoaderError::Fetch { key, source });
                    let failed = got.is_err();
                    if shard_tx.send(got).is_err() || failed {
                        return; // consumer gone, or the error was passed on
                    }
                }
            })
            .ok();

        let assembler = Assembler {
            config: self.config.clone(),
            pool: self.pool.clone(),
            rng: ChaCha8Rng::seed_from_u64(order_rng.random()),
            epoch,
        };
        let assemble = std::thread::Builder::new()
            .name("loader-assemble".into())
            .spawn(move || assembler.run(shard_rx, batch_tx))
            .ok();
        EpochBatches {
            rx: batch_rx,
            wait: Duration::ZERO,
            skipped: 0,
            histogram: self.wait_histogram.clone(),
            threads: [fetch, assemble],
        }
    }
}

struct Assembler {
    config: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
    rng: ChaCha8Rng,
    epoch: u32,
}

/// One image ready for the batch, or why it was skipped.
type Prepared = Result<(Vec<f32>, [f32; 14]), String>;

impl Assembler {
    fn run(
        mut self,
        shards: Receiver<Result<(String, Bytes), LoaderError>>,
        out: SyncSender<Result<Batch, LoaderError>>,
    ) {
        let training = self.config.augment.is_some();
        let capacity = if training {
            self.config.shuffle_buffer.max(self.config.batch_size)
        } else {
            self.config.batch_size
        };
        let mut buffer: Vec<ShardRow> = Vec::with_capacity(capacity + self.config.batch_size);
        for shard in shards {
            let (key, bytes) = match shard {
                Ok(s) => s,
                Err(e) => {
                    let _ = out.send(Err(e));
                    return;
                }
            };
            let reader = match read_shard(bytes) {
                Ok(r) => r,
                Err(e) => {
                    let _ = out.send(Err(LoaderError::Shard {
                        key,
                        detail: e.to_string(),
                    }));
                    return;
                }
            };
            for row in reader {
                match row {
                    Ok(row) => buffer.push(row),
                    Err(e) => {
                        let _ = out.send(Err(LoaderError::Shard {
                            key: key.clone(),
                            detail: e.to_string(),
                        }));
                        return;
                    }
                }
                if buffer.len() >= capacity && !self.emit(&mut buffer, &out) {
                    return;
                }
            }
        }
        while !buffer.is_empty() {
            if !self.emit(&mut buffer, &out) {
                return;
            }
        }
    }

    /// Draws one batch from the buffer and sends it; false when the
    /// consumer is gone.
    fn emit(
        &mut self,
        buffer: &mut Vec<ShardRow>,
        out: &SyncSender<Result<Batch, LoaderError>>,
    ) -> bool {
        let n = self.config.batch_size.min(buffer.len());
        let rows: Vec<ShardRow> = if self.config.augment.is_some() {
            (0..n)
                .map(|_| {
                    let i = self.rng.random_range(0..buffer.len());
                    buffer.swap_remove(i)
                })
                .collect()
        } else {
            buffer.drain(..n).collect()
        };
        let batch = self.prepare(&rows);
        out.send(batch).is_ok()
    }

    fn prepare(&self, rows: &[ShardRow]) -> Result<Batch, LoaderError> {
        let size = self.config.image_size;
        let (seed, epoch) = (self.config.seed, self.epoch);
        let augment_config = self.config.augment.clone();
        let prepared: Vec<Prepared> = self.pool.install(|| {
            rows.par_iter()
                .map(|row| {
                    let image = ready_image(row, size)
                        .map_err(|reason| format!("{}: {reason}", row.filename))?;
                    let image = match &augment_config {
                        Some(cfg) => augment(&image, cfg, image_seed(seed, epoch, &row.filename))
                            .map_err(|e| e.to_string())?,
                        None => image,
                    };
                    Ok((to_tensor_imagenet(&image), row.labels.to_vector()))
                })
                .collect()
        });
        let mut pixels = Vec::with_capacity(rows.len() * 3 * (size as usize).pow(2));
        let mut findings = Vec::with_capacity(rows.len() * 14);
        let mut abnormal = Vec::with_capacity(rows.len());
        let mut count = 0;
        for item in prepared {
            match item {
                Ok((tensor, labels)) => {
                    pixels.extend_from_slice(&tensor);
                    abnormal.push(if labels.iter().any(|&v| v > 0.5) {
                        1.0
                    } else {
                        0.0
                    });
                    findings.extend_from_slice(&labels);
                    count += 1;
                }
                Err(reason) => tracing::warn!(%reason, "training image skipped"),
            }
        }
        let s = size as usize;
        let tensor = |data: Vec<f32>, shape: &[usize]| {
            Tensor::from_vec(data, shape, &Device::Cpu)
                .map_err(|e| LoaderError::Tensor(e.to_string()))
        };
        Ok(Batch {
            images: tensor(pixels, &[count, 3, s, s])?,
            findings: tensor(findings, &[count, 14])?,
            abnormal: tensor(abnormal, &[count, 1])?,
        })
    }
}

/// The image of a ready shard's row (raw 8-bit pixels or an encoded
/// image), which must be `size` × `size`; why not, otherwise.
pub fn ready_image(row: &ShardRow, size: u32) -> Result<GrayImage8, String> {
    let image = match row.image_format {
        ImageFormat::Gray8 => {
            GrayImage8::new(size, size, row.image.to_vec()).map_err(|e| e.to_string())?
        }
        _ => decode_gray8(&row.image, &DecodeLimits::default()).map_err(|e| e.to_string())?,
    };
    if image.width != size || image.height != size {
        return Err(format!(
            "{}×{}, expected {size}×{size}",
            image.width, image.height
        ));
    }
    Ok(image)
}

/// Augmentation seed of one image in one epoch: independent of which
/// thread or batch it lands in.
fn image_seed(seed: u64, epoch: u32, filename: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed ^ (u64::from(epoch) << 40);
    for b in filename.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The batches of one epoch, in order; see [`ShardLoader::epoch`].
pub struct EpochBatches {
    rx: Receiver<Result<Batch, LoaderError>>,
    wait: Duration,
    skipped: usize,
    histogram: Option<prometheus::Histogram>,
    threads: [Option<JoinHandle<()>>; 2],
}

impl EpochBatches {
    /// Total time `next()` was blocked waiting for a batch.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Batches that came out empty (every image skipped).
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let start = Instant::now();
            let item = self.rx.recv().ok();
            let waited = start.elapsed();
            self.wait += waited;
            if let Some(h) = &self.histogram {
                h.observe(waited.as_secs_f64());
            }
            match item {
                Some(Ok(batch)) if batch.images.dims().first() == Some(&0) => self.skipped += 1,
                other => return other,
            }
        }
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the receiver makes the threads' next send fail; they
        // return and are joined here, so no thread outlives the epoch.
        let (tx, rx) = sync_channel(0);
        drop(tx);
        self.rx = rx;
        for handle in self.threads.iter_mut().filter_map(Option::take) {
            let _ = handle.join();
        }
    }
}
