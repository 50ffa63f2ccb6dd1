//! An [`ObjectStore`] that counts and times every operation for Prometheus
//! (`chexvision_store_operations_total{operation,outcome}` and
//! `chexvision_store_operation_duration_seconds{operation}`), so S3 trouble
//! shows on a dashboard before it shows as a failed run.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::{ObjectMeta, ObjectStore, PutReceipt, Result, StoreError, Upload};

/// Operation names (the `operation` label).
pub const OPERATIONS: [&str; 6] = ["get", "put", "head", "list", "delete", "upload"];
/// Outcomes (the `outcome` label): a missing object is an answer, not an error.
pub const OUTCOMES: [&str; 3] = ["ok", "not_found", "error"];

#[derive(Debug, Clone)]
pub struct StoreMetrics {
    operations: IntCounterVec,
    seconds: HistogramVec,
}

impl StoreMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let operations = IntCounterVec::new(
            Opts::new(
                "chexvision_store_operations_total",
                "Object store operations, by operation and outcome (ok, not_found, error)",
            ),
            &["operation", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "chexvision_store_operation_duration_seconds",
                "Time an object store operation took (an upload: from start to finish)",
            )
            .buckets(vec![0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0, 300.0]),
            &["operation"],
        )?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        // Every series exists from the start, so an error rate is 0, not absent.
        for operation in OPERATIONS {
            for outcome in OUTCOMES {
                operations.with_label_values(&[operation, outcome]);
            }
            seconds.with_label_values(&[operation]);
        }
        Ok(StoreMetrics {
            operations,
            seconds,
        })
    }

    fn observe<T>(&self, operation: &str, started: Instant, result: &Result<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => outcome_of(e),
        };
        self.record(operation, outcome, started);
    }

    fn record(&self, operation: &str, outcome: &str, started: Instant) {
        self.operations
            .with_label_values(&[operation, outcome])
            .inc();
        self.seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Operations so far with `outcome` (for tests).
    pub fn count(&self, operation: &str, outcome: &str) -> u64 {
        self.operations
            .with_label_values(&[operation, outcome])
            .get()
    }
}

fn outcome_of(error: &StoreError) -> &'static str {
    if error.is_not_found() {
        "not_found"
    } else {
        "error"
    }
}

/// Wraps a store; behaviour is unchanged.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn ObjectStore>, metrics: StoreMetrics) -> Arc<dyn ObjectStore> {
        Arc::new(MeteredStore { inner, metrics })
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        let started = Instant::now();
        let result = self.inner.put(key, data).await;
        self.metrics.observe("put", started, &result);
        result
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        let started = Instant::now();
        let result = self.inner.put_if_absent(key, data).await;
        // Losing a race for the key is an answer, not a store error.
        let outcome = match &result {
            Err(e) if !e.is_exists() => "error",
            _ => "ok",
        };
        self.metrics.record("put", outcome, started);
        result
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.metrics.observe("get", started, &result);
        result
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let started = Instant::now();
        let result = self.inner.head(key).await;
        self.metrics.observe("head", started, &result);
        result
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let started = Instant::now();
        let result = self.inner.list(prefix).await;
        self.metrics.observe("list", started, &result);
        result
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.delete(key).await;
        self.metrics.observe("delete", started, &result);
        result
    }

    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let started = Instant::now();
        match self.inner.upload(key).await {
            Ok(inner) => Ok(Box::new(MeteredUpload {
                inner,
                metrics: self.metrics.clone(),
                started,
            })),
            Err(e) => {
                self.metrics.record("upload", outcome_of(&e), started);
                Err(e)
            }
        }
    }
}

struct MeteredUpload {
    inner: Box<dyn Upload>,
    metrics: StoreMetrics,
    started: Instant,
}

#[async_trait]
impl Upload for MeteredUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let result = self.inner.write(chunk).await;
        if result.is_err() {
            self.metrics.observe("upload", self.started, &result);
        }
        result
    }

    async fn finish(self: Box<Self>) -> Result<PutReceipt> {
        let result = self.inner.finish().await;
        self.metrics.observe("upload", self.started, &result);
        result
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_each_operation_by_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        let inner = crate::open(&uri, &Default::default()).await.unwrap();
        let registry = Registry::new();
        let metrics = StoreMetrics::register(&registry).unwrap();
        let store = MeteredStore::wrap(inner, metrics.clone());
        store
            .put("a/b.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        store.get("a/b.json").await.unwrap();
        assert!(store
            .get("a/missing.json")
            .await
            .unwrap_err()
            .is_not_found());
        assert!(store.get("../escape").await.is_err());
        let mut upload = store.upload("a/big.bin").await.unwrap();
        upload.write(b"0123").await.unwrap();
        upload.finish().await.unwrap();
        assert_eq!(metrics.count("put", "ok"), 1);
        assert_eq!(metrics.count("get", "ok"), 1);
        assert_eq!(metrics.count("get", "not_found"), 1);
        assert_eq!(metrics.count("get", "error"), 1);
        assert_eq!(metrics.count("upload", "ok"), 1);
        assert_eq!(metrics.count("delete", "error"), 0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(
                r#"chexvision_store_operations_total{operation="list",outcome="error"} 0"#
            ),
            "series exist at zero: {text}"
        );
    }
}
