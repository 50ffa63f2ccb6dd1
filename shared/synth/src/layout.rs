//! Writes a synthetic set in the NIH folder layout, so the real ingest path
//! reads it unchanged:
//!
//! ```text
//! dir/synthetic.json               marks the folder synthetic (written first)
//! dir/images/00000001_000.png …    one PNG per record
//! dir/Data_Entry_2017_v2020.csv    the metadata (written last: its presence means complete)
//! ```
//!
//! Every file is written under a temporary name and renamed, so a killed run
//! never leaves a partial file under a final name. Rerunning into the same
//! folder with the same configuration resumes: PNGs already there are kept
//! (they are byte-identical to what would be written). A folder that is not
//! empty and not synthetic, or holds another configuration, is refused.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::render::encode_png;
use crate::{Generator, SynthError};

pub const CSV_NAME: &str = "Data_Entry_2017_v2020.csv";
pub const MARKER_NAME: &str = "synthetic.json";
pub const IMAGES_DIR: &str = "images";

/// The real file's header, byte for byte.
const CSV_HEADER: &str = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";

/// Bump when the rendering or metadata changes: a resumed run keeps PNGs
/// already in a folder only if its synthetic.json matches exactly.
const FORMAT_VERSION: u32 = 1;

/// Field of view of a synthetic film, so the pixel spacing is physical
/// (real NIH films: ~2,500-3,000 px at 0.139-0.171 mm, i.e. ~400 mm).
const FIELD_OF_VIEW_MM: f64 = 400.0;

/// What a call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSummary {
    pub written: usize,
    /// PNGs already present from an earlier, interrupted run.
    pub kept: usize,
}

/// Writes the set with one worker per available core. See
/// [`write_nih_layout_with_threads`].
pub fn write_nih_layout(
    dir: &Path,
    generator: &Generator,
    progress: impl Fn(usize) + Sync,
) -> Result<WriteSummary, SynthError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    write_nih_layout_with_threads(dir, generator, threads, progress)
}

/// Writes the set with `threads` workers (at least one). The output is
/// byte-identical whatever the thread count. `progress` is called after
/// each image with the number of images finished so far, from any worker.
/// Each worker holds one image being drawn: about 13 bytes per pixel
/// (~14 MB at 1024 px, ~220 MB at 4096 px).
pub fn write_nih_layout_with_threads(
    dir: &Path,
    generator: &Generator,
    threads: usize,
    progress: impl Fn(usize) + Sync,
) -> Result<WriteSummary, SynthError> {
    let config = generator.config();
    let marker = marker_json(generator);
    prepare(dir, &marker)?;
    let images = dir.join(IMAGES_DIR);
    fs::create_dir_all(&images).map_err(io_at(&images))?;
    write_atomic(&dir.join(MARKER_NAME), marker.as_bytes())?;

    let rows = config.rows;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<SynthError>> = Mutex::new(None);
    let workers = threads.clamp(1, rows);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= rows {
                    break;
                }
                match write_image(&images, generator, index) {
                    Ok(was_there) => {
                        if was_there {
                            kept.fetch_add(1, Ordering::Relaxed);
                        }
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(err);
                        }
                        break;
                    }
                }
            });
        }
    });
    let error = match first_error.into_inner() {
        Ok(error) => error,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(error) = error {
        return Err(error);
    }
    write_atomic(&dir.join(CSV_NAME), metadata_csv(generator).as_bytes())?;
    let kept = kept.into_inner();
    Ok(WriteSummary {
        written: rows - kept,
        kept,
    })
}

/// The metadata CSV of a generator's set, as written to the folder.
fn metadata_csv(generator: &Generator) -> String {
    let size = generator.config().size_px;
    let spacing = FIELD_OF_VIEW_MM / f64::from(size);
    let mut csv = String::with_capacity(generator.config().rows * 80 + 200);
    csv.push_str(CSV_HEADER);
    csv.push('\n');
    for r in generator.records() {
        // Labels hold no commas or quotes, so no CSV quoting is needed.
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{spacing:.6},{spacing:.6}",
            r.image_index,
            r.labels,
            r.follow_up,
            r.patient_id,
            r.age,
            r.sex,
            r.view,
            r.width,
            r.height
        );
    }
    csv
}

/// The marker: generator, format, configuration, and the options when they
/// are not the defaults (so a default set's marker is unchanged and sets
/// made with other options are told apart on resume).
fn marker_json(generator: &Generator) -> String {
    let c = generator.config();
    let o = generator.options();
    let mut options = String::new();
    if o.min_finding_share > 0.0 {
        let _ = write!(options, ",\"min_finding_share\":{}", o.min_finding_share);
    }
    if o.visible_at_px > 0 {
        let _ = write!(options, ",\"visible_at_px\":{}", o.visible_at_px);
    }
    format!(
        "{{\"generator\":\"chexvision-synth\",\"format_version\":{FORMAT_VERSION},\"seed\":{},\"rows\":{},\"size_px\":{}{options}}}\n",
        c.seed, c.rows, c.size_px
    )
}

/// Refuses folders that hold something else; creates the folder if needed.
fn prepare(dir: &Path, marker: &str) -> Result<(), SynthError> {
    match fs::read_to_string(dir.join(MARKER_NAME)) {
        Ok(found) if found == marker => return Ok(()),
        Ok(found) => {
            return Err(SynthError::OtherSet {
                path: dir.to_owned(),
                found: found.trim().to_owned(),
                expected: marker.trim().to_owned(),
            })
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_at(&dir.join(MARKER_NAME))(err)),
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SynthError::NotSynthetic {
                    path: dir.to_owned(),
                });
            }
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_at(dir))
        }
        Err(err) => Err(io_at(dir)(err)),
    }
}

/// Renders, encodes and writes one image unless it is already there.
/// Returns whether it was already there.
fn write_image(images: &Path, generator: &Generator, index: usize) -> Result<bool, SynthError> {
    let record = generator.record(index);
    let path = images.join(&record.image_index);
    if path.is_file() {
        return Ok(true);
    }
    let png = encode_png(&generator.render(&record))?;
    write_atomic(&path, &png)?;
    Ok(false)
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    fs::write(&tmp, bytes).map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SynthError {
    let path: PathBuf = path.to_owned();
    move |source| SynthError::Io { path, source }
}
