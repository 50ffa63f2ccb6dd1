//! The object store every service reads and writes: datasets, shards,
//! checkpoints, reports, the model registry.
//!
//! One trait, two implementations with the same semantics:
//! - [`S3Store`]: any S3-compatible server through aws-sdk-s3 (custom endpoint,
//!   path-style, bounded retries, multipart uploads that are aborted on failure);
//! - [`FsStore`]: a local folder, for the embedded mode and unit tests. Writes are
//!   atomic (temporary file, fsync, rename).
//!
//! Objects are written whole: a reader sees either the old object or the new
//! one, never a part. Every write returns the sha256 of what was written.

mod claim;
mod fs;
mod metered;
mod outage;
mod s3;

use std::{sync::Arc, time::SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use chexvision_config::S3Settings;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use claim::{claim, release, renew, Claim, ClaimOutcome};
pub use fs::FsStore;
pub use metered::{MeteredStore, StoreMetrics};
pub use outage::OutageStore;
pub use s3::S3Store;

/// Size of the chunks [`put_reader`] reads.
const READ_CHUNK: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object `{key}` not found in {store}")]
    NotFound { store: String, key: String },
    /// A conditional write found its condition false (the object exists).
    #[error("object `{key}` exists already in {store}")]
    Exists { store: String, key: String },
    #[error("object `{key}` in {store} is not valid JSON of the expected shape: {detail}")]
    Decode {
        store: String,
        key: String,
        detail: String,
    },
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("invalid store URI `{uri}`: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("store {store} is unreachable ({operation} `{key}`, gave up after {attempts} attempts): {detail}")]
    Unavailable {
        store: String,
        operation: &'static str,
        key: String,
        attempts: u32,
        detail: String,
    },
    #[error("{operation} `{key}` in {store} failed: {detail}")]
    Backend {
        store: String,
        operation: &'static str,
        key: String,
        detail: String,
    },
    #[error("{operation} `{key}` in {store} failed: {source}")]
    Io {
        store: String,
        operation: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The store did not answer, after its own retries: may pass by
    /// itself (a handler waits rather than gives the work up).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub fn is_exists(&self) -> bool {
        matches!(self, StoreError::Exists { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a listing or `head` says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root (without the URI's prefix).
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
}

/// What a completed write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    pub key: String,
    /// Full URI of the object (for events).
    pub uri: String,
    pub size: u64,
    /// Lower-case hex sha256 of the bytes written.
    pub sha256: String,
}

/// The key of `uri` in the store whose empty key has URI `root` (its
/// `uri("")`, which may or may not end in `/`); `None` when `uri` is
/// elsewhere or names no object.
pub fn key_of_uri(uri: &str, root: &str) -> Option<String> {
    uri.strip_prefix(root.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
}

#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Full URI of `key`, e.g. `s3://bucket/prefix/key` or `file:///root/key`.
    fn uri(&self, key: &str) -> String;

    /// Writes a whole object, replacing any object with that key.
    async fn put(&self, key: &str, data: Bytes) -> Result<PutReceipt>;

    /// Writes a whole object only if none has that key, else fails with
    /// [`StoreError::Exists`]. Atomic on a local folder and on AWS S3
    /// (`If-None-Match: *`); an S3-compatible server that ignores the
    /// header makes it a plain write (see [`claim`] for what still holds).
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutReceipt>;

    async fn get(&self, key: &str) -> Result<Bytes>;

    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Removes an object; removing one that does not exist is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Starts a streaming upload of a large object. Nothing is visible under `key`
    /// until [`Upload::finish`] succeeds; an aborted or dropped upload leaves nothing.
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>>;
}

/// A streaming upload in progress.
#[async_trait]
pub trait Upload: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Makes the object visible and returns what was written.
    async fn finish(self: Box<Self>) -> Result<PutReceipt>;
    /// Discards everything written so far.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Streams `reader` into a new object; on any error the upload is aborted.
pub async fn put_reader<R>(store: &dyn ObjectStore, key: &str, mut reader: R) -> Result<PutReceipt>
where
    R: AsyncRead + Unpin + Send,
{
    let mut upload = store.upload(key).await?;
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(n) => n,
            Err(source) => {
                let _ = upload.abort().await;
                return Err(StoreError::Io {
                    store: store.uri(""),
                    operation: "read source for",
                    key: key.to_owned(),
                    source,
                });
            }
        };
        if n == 0 {
            break;
        }
        if let Err(err) = upload.write(&buffer[..n]).await {
            let _ = upload.abort().await;
            return Err(err);
        }
    }
    upload.finish().await
}

/// Opens the store a URI names: `file:///path`, `file://relative/path` or
/// `s3://bucket[/prefix]`.
pub async fn open(uri: &str, s3: &S3Settings) -> Result<Arc<dyn ObjectStore>> {
    if let Some(path) = uri.strip_prefix("file://") {
        if path.is_empty() {
            return Err(StoreError::InvalidUri {
                uri: uri.to_owned(),
                reason: "no folder after file://".into(),
            });
        }
        Ok(Arc::new(FsStore::open(path).await?))
    } else if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(Arc::new(S3Store::connect(bucket, prefix, s3)?))
    } else {
        Err(StoreError::InvalidUri {
            uri: uri.to_owned(),
            reason: "use file:///path or s3://bucket/prefix".into(),
        })
    }
}

/// Reads a JSON object; `Ok(None)` when there is no such object.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<T>> {
    match store.get(key).await {
        // The error names the field that is wrong (`settings.recipe.weight_decay`).
        Ok(bytes) => {
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
                .map(Some)
                .map_err(|e| StoreError::Decode {
                    store: store.uri(""),
                    key: key.to_owned(),
                    detail: e.to_string(),
                })
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` as pretty JSON.
pub async fn put_json<T: Serialize + ?Sized>(
    store: &dyn ObjectStore,
    key: &str,
    value: &T,
) -> Result<PutReceipt> {
    store.put(key, json_bytes(store, key, value)?).await
}

fn json_bytes<T: Serialize + ?Sized>(
    store: &dyn ObjectStore,
    key: &str,
    value: &T,
) -> Result<Bytes> {
    serde_json::to_vec_pretty(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Decode {
            store: store.uri(""),
            key: key.to_owned(),
            detail: format!("cannot be written as JSON: {e}"),
        })
}

/// sha256 of `data`, off the async threads when it is large (hashing 64 MiB
/// takes a few hundred milliseconds that would stall every other task).
pub(crate) async fn digest_of(data: &Bytes) -> (String, u64) {
    const INLINE_LIMIT: usize = 256 * 1024;
    if data.len() <= INLINE_LIMIT {
        let mut digest = Digester::default();
        digest.update(data);
        return digest.finish();
    }
    let shared = data.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        let mut digest = Digester::default();
        digest.update(&shared);
        digest.finish()
    })
    .await;
    match hashed {
        Ok(result) => result,
        // Only a panic inside sha2 gets here; hash inline rather than fail.
        Err(_) => {
            let mut digest = Digester::default();
            digest.update(data);
            digest.finish()
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a key is a plain relative path: no empty, `.` or `..` segments, no
/// leading slash, no backslashes or control characters. The same rule for both
/// implementations keeps a key that works locally valid in S3 and vice versa.
pub fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        Some("empty")
    } else if key.len() > 1024 {
        Some("longer than 1024 bytes")
    } else if key.starts_with('/') {
        Some("starts with '/'")
    } else if key.ends_with('/') {
        Some("ends with '/' (that is a prefix, not an object)")
    } else if key.contains('\\') {
        Some("contains a backslash")
    } else if key.chars().any(char::is_control) {
        Some("contains a control character")
    } else if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        Some("has an empty, '.' or '..' segment")
    } else if key.split('/').next() == Some(fs::TEMP_DIR) {
        Some("uses the store's reserved temporary folder")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A listing prefix may be empty or end with '/', but otherwise follows the key rule.
fn validate_prefix(prefix: &str) -> Result<()> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return if prefix.is_empty() {
            Ok(())
        } else {
            Err(StoreError::InvalidKey {
                key: prefix.to_owned(),
                reason: "starts with '/'",
            })
        };
    }
    // A partial last segment ("shard-0") is fine; "." or ".." segments are not.
    validate_key(trimmed)
}

/// Running sha256 and size of a stream of chunks.
#[derive(Default)]
struct Digester {
    hasher: Sha256,
    size: u64,
}

impl Digester {
    fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        for good in [
            "a",
            "datasets/nih/manifest.json",
            "runs/r1/checkpoints/epoch-001.safetensors",
        ] {
            validate_key(good).unwrap();
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "./a",
            "a/",
            "a\\b",
            "a\nb",
            ".chexvision-tmp/x",
        ] {
            assert!(
                matches!(validate_key(bad), Err(StoreError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
        validate_prefix("").unwrap();
        validate_prefix("datasets/").unwrap();
        validate_prefix("datasets/nih/raw/shard-0").unwrap();
        assert!(validate_prefix("/").is_err());
        assert!(validate_prefix("../").is_err());
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut d = Digester::default();
        d.update(b"a");
        d.update(b"bc");
        assert_eq!(d.finish(), (sha256_hex(b"abc"), 3));
    }
}
