//! Local-folder store. Atomic writes: data goes to a temporary file in the
//! store's own temporary folder (same filesystem), is fsynced, then renamed
//! over the key; the parent folder is fsynced so the rename survives a crash.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    validate_key, validate_prefix, Digester, ObjectMeta, ObjectStore, PutReceipt, Result,
    StoreError, Upload,
};

/// Reserved folder under the root for uploads in progress; never listed.
pub(crate) const TEMP_DIR: &str = ".chexvision-tmp";

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens (and creates) a store rooted at `root`.
    pub async fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let temp = root.join(TEMP_DIR);
        let store_name = root.display().to_string();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&temp))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|source| StoreError::Io {
                store: format!("file://{store_name}"),
                operation: "create",
                key: String::new(),
                source,
            })?;
        let root = root.canonicalize().unwrap_or(root);
        Ok(FsStore { root })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn store_uri(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn io_error(&self, operation: &'static str, key: &str, source: io::Error) -> StoreError {
        if source.kind() == io::ErrorKind::NotFound
            || (operation != "put" && source.kind() == io::ErrorKind::IsADirectory)
        {
            // A key that names a folder (a prefix of other keys) is not an object.
            StoreError::NotFound {
                store: self.store_uri(),
                key: key.to_owned(),
            }
        } else {
            StoreError::Io {
                store: self.store_uri(),
                operation,
                key: key.to_owned(),
                source,
            }
        }
    }

    async fn blocking<T, F>(&self, operation: &'static str, key: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result.map_err(|e| self.io_error(operation, key, e)),
            Err(join) => Err(self.io_error(operation, key, io::Error::other(join.to_string()))),
        }
    }

    fn new_temp_file(root: &Path) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(root.join(TEMP_DIR))
    }
}

/// Renames a finished temporary file over `target` and makes it durable.
fn commit_temp(temp: tempfile::NamedTempFile, target: &Path) -> io::Result<()> {
    temp.as_file().sync_all()?;
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    temp.persist(target).map_err(|e| e.error)?;
    std::fs::File::open(parent)?.sync_all()
}

fn walk(dir: &Path, root: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let Some(key) = relative.to_str().map(|k| k.replace('\\', "/")) else {
            continue; // not UTF-8: cannot be a key this store wrote
        };
        if key == TEMP_DIR {
            continue;
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            // Descend only where keys below can still match the prefix.
            let dir_prefix = format!("{key}/");
            if dir_prefix.starts_with(prefix) || prefix.starts_with(&dir_prefix) {
                walk(&path, root, prefix, out)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            let meta = entry.metadata()?;
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                last_modified: meta.modified().ok(),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    fn uri(&self, key: &str) -> String {
        if key.is_empty() {
            self.store_uri()
        } else {
            format!("{}/{key}", self.store_uri())
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        validate_key(key)?;
        let (sha256, size) = crate::digest_of(&data).await;
        let root = self.root.clone();
        let target = self.path(key);
        self.blocking("put", key, move || {
            let mut temp = FsStore::new_temp_file(&root)?;
            temp.write_all(&data)?;
            commit_temp(temp, &target)
        })
        .await?;
        Ok(PutReceipt {
            key: key.to_owned(),
            uri: self.uri(key),
            size,
            sha256,
        })
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        validate_key(key)?;
        let (sha256, size) = crate::digest_of(&data).await;
        let root = self.root.clone();
        let target = self.path(key);
        let created = self
            .blocking("put", key, move || {
                let mut temp = FsStore::new_temp_file(&root)?;
                temp.write_all(&data)?;
                temp.as_file().sync_all()?;
                let parent = target.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(parent)?;
                // A hard link fails if the target exists: atomic, also
                // between processes sharing the folder.
                match std::fs::hard_link(temp.path(), &target) {
                    Ok(()) => {
                        std::fs::File::open(parent)?.sync_all()?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if !created {
            return Err(StoreError::Exists {
                store: self.store_uri(),
                key: key.to_owned(),
            });
        }
        Ok(PutReceipt {
            key: key.to_owned(),
            uri: self.uri(key),
            size,
            sha256,
        })
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        validate_key(key)?;
        let path = self.path(key);
        self.blocking("get", key, move || std::fs::read(path).map(Bytes::from))
            .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let path = self.path(key);
        let owned_key = key.to_owned();
        self.blocking("head", key, move || {
            let meta = std::fs::metadata(path)?;
            if !meta.is_file() {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            Ok(ObjectMeta {
                key: owned_key,
                size: meta.len(),
                last_modified: meta.modified().ok(),
            })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let owned_prefix = prefix.to_owned();
        let mut objects = self
            .blocking("list", prefix, move || {
                let mut out = Vec::new();
                walk(&root, &root, &owned_prefix, &mut out)?;
                Ok(out)
            })
            .await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let path = self.path(key);
        match self
            .blocking("delete", key, move || std::fs::remove_file(path))
            .await
        {
            Err(StoreError::NotFound { .. }) | Ok(()) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        validate_key(key)?;
        let root = self.root.clone();
        let temp = self
            .blocking("upload", key, move || FsStore::new_temp_file(&root))
            .await?;
        Ok(Box::new(FsUpload {
            store: self.clone(),
            key: key.to_owned(),
            temp: Some(temp),
            digest: Digester::default(),
        }))
    }
}

/// An upload into a temporary file; dropping it deletes the file.
struct FsUpload {
    store: FsStore,
    key: String,
    temp: Option<tempfile::NamedTempFile>,
    digest: Digester,
}

#[async_trait]
impl Upload for FsUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let Some(mut temp) = self.temp.take() else {
            return Err(self.store.io_error(
                "upload",
                &self.key,
                io::Error::other("upload already failed"),
            ));
        };
        self.digest.update(chunk);
        let data = chunk.to_vec();
        let temp = self
            .store
            .blocking("upload", &self.key, move || {
                temp.write_all(&data)?;
                Ok(temp)
            })
            .await?;
        self.temp = Some(temp);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<PutReceipt> {
        let temp = self.temp.take().ok_or_else(|| {
            self.store.io_error(
                "upload",
                &self.key,
                io::Error::other("upload already failed"),
            )
        })?;
        let target = self.store.path(&self.key);
        self.store
            .blocking("upload", &self.key, move || commit_temp(temp, &target))
            .await?;
        let digest = std::mem::take(&mut self.digest);
        let (sha256, size) = digest.finish();
        Ok(PutReceipt {
            uri: self.store.uri(&self.key),
            key: self.key.clone(),
            size,
            sha256,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        // NamedTempFile removes itself on drop.
        drop(self.temp.take());
        Ok(())
    }
}
