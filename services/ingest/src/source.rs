//! Sources of images: an NIH-layout folder, the published 320 px Parquet
//! files, or the synthetic generator. Each yields items in a fixed order (so
//! shard boundaries, bytes and keys are the same on every run) through a
//! bounded channel, so memory stays bounded whatever the source's size.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use chexvision_config::S3Settings;
use chexvision_dataset::{
    read_hf_parquet, read_nih_metadata, split_for_patient, HfItem, LabelSet, NihLayout,
    OfficialSplits, Split,
};
use chexvision_store::ObjectStore;
use chexvision_synth::{Generator, SynthConfig};
use tokio::sync::mpsc;

use crate::IngestError;

/// Items buffered between a source and the shard builder.
const CHANNEL_ITEMS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Nih,
    HfParquet,
    Synthetic,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Nih => "nih",
            SourceFormat::HfParquet => "hf-parquet",
            SourceFormat::Synthetic => "synthetic",
        }
    }
}

/// Where an item's image bytes are.
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// A file of the source, fetched when its shard is built.
    File(String),
    Inline(Bytes),
}

/// One image and what is known of it before it is read.
#[derive(Debug, Clone)]
pub struct SourceItem {
    pub filename: String,
    pub patient_id: String,
    pub follow_up: u32,
    pub labels: LabelSet,
    pub split: Split,
    pub view_position: String,
    pub age: Option<u16>,
    pub sex: String,
    /// From the metadata; 0 when the source does not say (read from the image).
    pub original_width: u32,
    pub original_height: u32,
    pub image: ImageRef,
    /// Bytes of the image, known without reading it (listing size).
    pub size: u64,
}

#[derive(Debug)]
pub enum SourceEvent {
    /// The number of images the source holds, once known.
    Total(u64),
    Item(Box<SourceItem>),
    Rejected {
        image: String,
        reason: String,
    },
}

/// Files of a source: a local folder (read in place, never written) or a
/// prefix in the object store.
#[derive(Debug, Clone)]
pub enum SourceFiles {
    Local(PathBuf),
    Store(Arc<dyn ObjectStore>),
}

impl SourceFiles {
    /// `PATH`, `file:///path` or `s3://bucket/prefix`.
    pub async fn open(uri: &str, s3: &S3Settings) -> Result<Self, IngestError> {
        if uri.starts_with("s3://") {
            let store = chexvision_store::open(uri, s3).await?;
            return Ok(SourceFiles::Store(store));
        }
        let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
        if !path.is_dir() {
            return Err(IngestError::Source(format!(
                "{} is not a folder",
                path.display()
            )));
        }
        Ok(SourceFiles::Local(path))
    }

    /// Every file as (key relative to the root, size), sorted by key.
    pub async fn list(&self) -> Result<Vec<(String, u64)>, IngestError> {
        match self {
            SourceFiles::Store(store) => Ok(store
                .list("")
                .await?
                .into_iter()
                .map(|m| (m.key, m.size))
                .collect()),
            SourceFiles::Local(root) => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || walk(&root))
                    .await
                    .map_err(|e| IngestError::Source(e.to_string()))?
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, IngestError> {
        match self {
            SourceFiles::Store(store) => Ok(store.get(key).await?),
            SourceFiles::Local(root) => {
                let path = root.join(key);
                tokio::fs::read(&path)
                    .await
                    .map(Bytes::from)
                    .map_err(|e| IngestError::Source(format!("read {}: {e}", path.display())))
            }
        }
    }

    /// A local file for `key` (the file itself, or a downloaded copy kept
    /// alive by the returned guard).
    async fn local_file(
        &self,
        key: &str,
    ) -> Result<(PathBuf, Option<tempfile::TempPath>), IngestError> {
        match self {
            SourceFiles::Local(root) => Ok((root.join(key), None)),
            SourceFiles::Store(_) => {
                let bytes = self.get(key).await?;
                let temp = tempfile::NamedTempFile::new()
                    .map_err(|e| IngestError::Source(format!("temporary file: {e}")))?;
                let path = temp.into_temp_path();
                tokio::fs::write(&path, &bytes)
                    .await
                    .map_err(|e| IngestError::Source(format!("temporary file: {e}")))?;
                Ok((path.to_path_buf(), Some(path)))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SourceFiles::Local(root) => format!("file://{}", root.display()),
            SourceFiles::Store(store) => store.uri(""),
        }
    }
}

fn walk(root: &Path) -> Result<Vec<(String, u64)>, IngestError> {
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder)
            .map_err(|e| IngestError::Source(format!("list {}: {e}", folder.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| IngestError::Source(e.to_string()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| IngestError::Source(e.to_string()))?;
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if let Ok(relative) = path.strip_prefix(root) {
                    let key = relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    files.push((key, size));
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What a source is, found from its files.
pub fn detect_format(files: &[(String, u64)]) -> Result<SourceFormat, IngestError> {
    let name = |key: &str| key.rsplit('/').next().unwrap_or(key).to_owned();
    if files
        .iter()
        .any(|(k, _)| name(k).starts_with("Data_Entry_2017") && k.ends_with(".csv"))
    {
        Ok(SourceFormat::Nih)
    } else if files.iter().any(|(k, _)| k.ends_with(".parquet")) {
        Ok(SourceFormat::HfParquet)
    } else {
        Err(IngestError::Source(format!(
            "found neither Data_Entry_2017*.csv (NIH layout) nor *.parquet files \
             (published 320 px layout) among {} files",
            files.len()
        )))
    }
}

/// An opened source, ready to stream.
#[derive(Debug)]
pub struct Source {
    pub format: SourceFormat,
    pub uri: String,
    pub synthetic: bool,
    plan: Plan,
}

#[derive(Debug)]
enum Plan {
    Nih {
        files: SourceFiles,
        items: Vec<SourceItem>,
        rejected: Vec<(String, String)>,
    },
    Hf {
        files: SourceFiles,
        keys: Vec<String>,
    },
    Synthetic {
        config: SynthConfig,
    },
}

impl Source {
    /// Opens a folder or store prefix and reads its metadata.
    pub async fn open(uri: &str, s3: &S3Settings) -> Result<Self, IngestError> {
        let files = SourceFiles::open(uri, s3).await?;
        let listing = files.list().await?;
        match detect_format(&listing)? {
            SourceFormat::Nih => open_nih(files, &listing).await,
            SourceFormat::HfParquet => {
                let keys = listing
                    .iter()
                    .filter(|(k, _)| k.ends_with(".parquet"))
                    .map(|(k, _)| k.clone())
                    .collect();
                Ok(Source {
                    format: SourceFormat::HfParquet,
                    uri: files.describe(),
                    synthetic: false,
                    plan: Plan::Hf { files, keys },
                })
            }
            SourceFormat::Synthetic => Err(IngestError::Source(
                "synthetic sources are generated, not read (use `chexvision synth`)".into(),
            )),
        }
    }

    /// Images rendered on the fly by the generator (no files in between).
    pub fn synthetic(config: SynthConfig) -> Result<Self, IngestError> {
        config
            .validate()
            .map_err(|e| IngestError::Source(e.to_string()))?;
        Ok(Source {
            format: SourceFormat::Synthetic,
            uri: format!(
                "synthetic://rows={},size={},seed={}",
                config.rows, config.size_px, config.seed
            ),
            synthetic: true,
            plan: Plan::Synthetic { config },
        })
    }

    /// Streams the items; the task ends when the receiver is dropped.
    pub fn stream(self) -> (mpsc::Receiver<SourceEvent>, SourceHandle) {
        let (sender, receiver) = mpsc::channel(CHANNEL_ITEMS);
        let task = match self.plan {
            Plan::Nih {
                files,
                items,
                rejected,
            } => {
                let handle = tokio::spawn(async move {
                    let total = (items.len() + rejected.len()) as u64;
                    if sender.send(SourceEvent::Total(total)).await.is_err() {
                        return Ok(());
                    }
                    for (image, reason) in rejected {
                        if sender
                            .send(SourceEvent::Rejected { image, reason })
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    for item in items {
                        if sender
                            .send(SourceEvent::Item(Box::new(item)))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    Ok(())
                });
                drop(files);
                handle
            }
            Plan::Hf { files, keys } => tokio::spawn(stream_hf(files, keys, sender)),
            Plan::Synthetic { config } => tokio::spawn(async move {
                tokio::task::spawn_blocking(move || stream_synthetic(config, sender))
                    .await
                    .map_err(|e| IngestError::Source(e.to_string()))?
            }),
        };
        (receiver, SourceHandle { task })
    }

    /// The files images are fetched from (for `ImageRef::File`).
    pub fn files(&self) -> Option<SourceFiles> {
        match &self.plan {
            Plan::Nih { files, .. } | Plan::Hf { files, .. } => Some(files.clone()),
            Plan::Synthetic { .. } => None,
        }
    }
}

/// The task feeding the channel; its result says whether the source failed.
#[derive(Debug)]
pub struct SourceHandle {
    task: tokio::task::JoinHandle<Result<(), IngestError>>,
}

impl SourceHandle {
    pub async fn finish(self) -> Result<(), IngestError> {
        self.task
            .await
            .map_err(|e| IngestError::Source(format!("source task: {e}")))?
    }
}

async fn open_nih(files: SourceFiles, listing: &[(String, u64)]) -> Result<Source, IngestError> {
    let layout = NihLayout::from_keys(listing.iter().map(|(k, _)| k.as_str()))
        .map_err(|e| IngestError::Source(e.to_string()))?;
    let sizes: std::collections::HashMap<String, u64> =
        listing.iter().map(|(k, s)| (k.clone(), *s)).collect();
    let csv = files.get(&layout.metadata_key).await?;
    let lists = match (&layout.train_val_list_key, &layout.test_list_key) {
        (Some(train_val), Some(test)) => {
            Some((files.get(train_val).await?, files.get(test).await?))
        }
        _ => None,
    };
    let uri = files.describe();
    let synthetic = layout.synthetic_marker_key.is_some();
    // Parsing NIH's 112,120-row CSV and matching it to the files is CPU
    // work: off the async threads.
    let (items, rejected) =
        tokio::task::spawn_blocking(move || nih_plan(&layout, &sizes, &csv, lists))
            .await
            .map_err(|e| IngestError::Source(format!("reading the NIH metadata: {e}")))??;
    Ok(Source {
        format: SourceFormat::Nih,
        uri,
        synthetic,
        plan: Plan::Nih {
            files,
            items,
            rejected,
        },
    })
}

type NihPlan = (Vec<SourceItem>, Vec<(String, String)>);

/// The items of an NIH folder (in metadata order) and what is set aside.
fn nih_plan(
    layout: &NihLayout,
    sizes: &std::collections::HashMap<String, u64>,
    csv: &[u8],
    lists: Option<(Bytes, Bytes)>,
) -> Result<NihPlan, IngestError> {
    let metadata = read_nih_metadata(csv)
        .map_err(|e| IngestError::Source(format!("{}: {e}", layout.metadata_key)))?;
    let official = lists.map(|(train_val, test)| {
        OfficialSplits::parse(
            &String::from_utf8_lossy(&train_val),
            &String::from_utf8_lossy(&test),
        )
    });
    let mut rejected: Vec<(String, String)> = metadata
        .rejected
        .iter()
        .map(|r| {
            (
                r.image.clone(),
                format!("{} line {}: {}", layout.metadata_key, r.line, r.reason),
            )
        })
        .collect();
    for (name, key) in &layout.duplicate_images {
        rejected.push((
            name.clone(),
            format!(
                "duplicate file {key} (using {})",
                layout.images.get(name).map_or("", String::as_str)
            ),
        ));
    }
    let mut items = Vec::with_capacity(metadata.records.len());
    for record in metadata.records {
        let Some(key) = layout.images.get(&record.image) else {
            rejected.push((
                record.image,
                "listed in the metadata but no image file".into(),
            ));
            continue;
        };
        let split = match &official {
            Some(lists) => match lists.split(&record.image, &record.patient_id) {
                Some(split) => split,
                None => {
                    rejected.push((
                        record.image,
                        "in neither train_val_list.txt nor test_list.txt".into(),
                    ));
                    continue;
                }
            },
            None => split_for_patient(&record.patient_id),
        };
        items.push(SourceItem {
            size: sizes.get(key).copied().unwrap_or(0),
            image: ImageRef::File(key.clone()),
            filename: record.image,
            patient_id: record.patient_id,
            follow_up: record.follow_up,
            labels: record.labels,
            split,
            view_position: record.view_position,
            age: record.age,
            sex: record.sex,
            original_width: record.original_width,
            original_height: record.original_height,
        });
    }
    let described: std::collections::HashSet<&str> = items
        .iter()
        .map(|i| i.filename.as_str())
        .chain(rejected.iter().map(|(n, _)| n.as_str()))
        .collect();
    let mut unlisted: Vec<(String, String)> = layout
        .images
        .keys()
        .filter(|name| !described.contains(name.as_str()))
        .map(|name| (name.clone(), "image file not in the metadata".into()))
        .collect();
    rejected.append(&mut unlisted);
    Ok((items, rejected))
}

async fn stream_hf(
    files: SourceFiles,
    keys: Vec<String>,
    sender: mpsc::Sender<SourceEvent>,
) -> Result<(), IngestError> {
    for key in keys {
        let (path, guard) = files.local_file(&key).await?;
        let sender = sender.clone();
        let key_for_errors = key.clone();
        // Reading is blocking (Parquet); it runs on its own thread and hands
        // rows over one by one, so the channel bounds what is in memory.
        tokio::task::spawn_blocking(move || -> Result<(), IngestError> {
            let _guard = guard;
            let file = std::fs::File::open(&path)
                .map_err(|e| IngestError::Source(format!("open {key}: {e}")))?;
            let reader =
                read_hf_parquet(file).map_err(|e| IngestError::Source(format!("{key}: {e}")))?;
            if sender
                .blocking_send(SourceEvent::Total(reader.num_rows()))
                .is_err()
            {
                return Ok(());
            }
            for item in reader {
                let event = match item.map_err(|e| IngestError::Source(format!("{key}: {e}")))? {
                    HfItem::Row(row) => SourceEvent::Item(Box::new(SourceItem {
                        split: split_for_patient(&row.patient_id),
                        size: row.image.len() as u64,
                        image: ImageRef::Inline(row.image),
                        filename: row.filename,
                        patient_id: row.patient_id,
                        follow_up: row.follow_up,
                        labels: row.labels,
                        view_position: String::new(),
                        age: None,
                        sex: String::new(),
                        original_width: 0,
                        original_height: 0,
                    })),
                    HfItem::Rejected { filename, reason } => SourceEvent::Rejected {
                        image: filename,
                        reason,
                    },
                };
                if sender.blocking_send(event).is_err() {
                    break;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| IngestError::Source(format!("{key_for_errors}: {e}")))??;
    }
    Ok(())
}

fn stream_synthetic(
    config: SynthConfig,
    sender: mpsc::Sender<SourceEvent>,
) -> Result<(), IngestError> {
    let generator = Generator::new(config).map_err(|e| IngestError::Source(e.to_string()))?;
    if sender
        .blocking_send(SourceEvent::Total(config.rows as u64))
        .is_err()
    {
        return Ok(());
    }
    for index in 0..config.rows {
        let record = generator.record(index);
        let png = chexvision_synth::encode_png(&generator.render(&record))
            .map_err(|e| IngestError::Source(format!("{}: {e}", record.image_index)))?;
        let item = SourceItem {
            filename: record.image_index.clone(),
            patient_id: record.patient_id.to_string(),
            follow_up: record.follow_up,
            labels: record.labels,
            split: split_for_patient(&record.patient_id.to_string()),
            view_position: record.view.as_str().to_owned(),
            age: Some(record.age),
            sex: record.sex.as_str().to_owned(),
            original_width: record.width,
            original_height: record.height,
            size: png.len() as u64,
            image: ImageRef::Inline(Bytes::from(png)),
        };
        if sender
            .blocking_send(SourceEvent::Item(Box::new(item)))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}
