//! A store that can be switched off: while it is down, every operation on a
//! key under its prefix fails as an unreachable S3 server's would, with
//! [`StoreError::Unavailable`]. For tests of what a service does through an
//! outage, without stopping a server.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{ObjectMeta, ObjectStore, PutReceipt, Result, StoreError, Upload};

#[derive(Debug)]
pub struct OutageStore {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    down: AtomicBool,
    refused: AtomicU64,
}

impl OutageStore {
    /// Wraps `inner`; an outage affects the keys (and listings) that start
    /// with `prefix` (empty: all of them).
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        Self {
            inner,
            prefix: prefix.into(),
            down: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Operations refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self, operation: &'static str, key: &str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) && key.starts_with(&self.prefix) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable {
                store: self.inner.uri(""),
                operation,
                key: key.to_owned(),
                attempts: 1,
                detail: "connection refused (simulated outage)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for OutageStore {
    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        self.check("put", key)?;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        self.check("put", key)?;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.check("get", key)?;
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.check("head", key)?;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.check("list", prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.check("delete", key)?;
        self.inner.delete(key).await
    }
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        self.check("upload", key)?;
        self.inner.upload(key).await
    }
}
