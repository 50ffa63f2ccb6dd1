//! Deterministic synthetic chest X-rays with NIH ChestX-ray14 labels.
//!
//! What it is for: a *learnable* signal to exercise the CheXVision pipeline
//! end to end (ingest, sharding, training, evaluation, serving) without the
//! real 45 GB dataset. The phantoms are not anatomy and the findings are
//! caricatures: a model that does well on them says nothing about clinical
//! performance. Every folder written here carries `synthetic.json`, and file
//! names and metadata follow the NIH layout only so the real readers work.
//!
//! Everything is a pure function of (seed, index): [`Generator::record`] and
//! [`Generator::render`] can run in any order, on any thread, and resume.
//! [`write_nih_layout`] writes a whole set as an NIH-style folder.
//!
//! ```
//! use chexvision_synth::{encode_png, Generator, SynthConfig};
//!
//! let generator = Generator::new(SynthConfig { rows: 100, size_px: 128, seed: 7 })?;
//! let record = generator.record(3);
//! let png = encode_png(&generator.render(&record))?;
//! assert!(png.starts_with(b"\x89PNG"));
//! println!("{} {} {}", record.image_index, record.labels, png.len());
//! # Ok::<(), chexvision_synth::SynthError>(())
//! ```
//!
//! Labels are drawn with the real label-set frequencies (836 distinct
//! "Finding Labels" strings of `Data_Entry_2017_v2020.csv`, embedded from
//! `data/label_sets.tsv`); sex, view, age and patient follow-up runs follow
//! the real shares (see `record.rs`).
//!
//! Small experiments can ask for more signal with [`SynthOptions`] (and
//! [`Generator::with_options`]): `min_finding_share` reweights the real label
//! sets so that every finding is drawn in at least that share of the images
//! (with 2,000 images and the real frequencies, Hernia has ~4 positives in
//! all and ~0.4 in a 10 % validation split), and `visible_at_px` draws the
//! features thinner than a pixel at that size (nodules, plate atelectasis,
//! the fibrotic net, pleural thickening) large enough to survive the
//! downscale. Both default to off, which gives exactly the
//! images and labels of [`Generator::new`]; the options in force are
//! recorded in `synthetic.json`.
//!
//! Image convention: bright = dense (bone, heart, fluid), dark = air. The
//! image is seen as on a viewing box, patient facing the viewer: the
//! patient's left (heart apex, aortic knob, stomach bubble) is on the image's
//! right, for PA and AP alike. AP images have a larger heart (magnification),
//! higher clavicles, scapulae over the lung edges and lower contrast.
//!
//! Label → visible feature (drawn over the same anatomy, from its own random
//! stream, so a label can be added or removed without changing anything else):
//!
//! | label | feature |
//! |---|---|
//! | Atelectasis | plate-like band opacity in a lower zone; that hemidiaphragm raised (volume loss) |
//! | Cardiomegaly | heart widened to a cardiothoracic ratio 0.57–0.66 (normal ~0.43, AP ~0.47) |
//! | Effusion | fluid filling a costophrenic angle with a meniscus rising laterally (one or both sides) |
//! | Infiltration | several faint, ill-defined patches scattered over both lungs |
//! | Mass | one large (9–14 % of width) lobulated dense opacity |
//! | Nodule | 1–3 small (1.6–2.8 % of width) round, sharp opacities |
//! | Pneumonia | one lobar region of patchy, mixed-density opacity (mostly mid/lower zones) |
//! | Pneumothorax | peripheral band without lung markings, darker, behind a thin visceral pleural line |
//! | Consolidation | one dense confluent region with a sharp fissural edge and air bronchograms |
//! | Edema | bilateral perihilar "bat wing" haze plus Kerley B lines at the bases |
//! | Emphysema | larger, darker lungs with pruned markings, flattened low diaphragm, narrow heart |
//! | Fibrosis | reticular net at the bases and periphery, slight volume loss |
//! | Pleural_Thickening | bright undulating band along the lateral chest wall, sometimes an apical cap |
//! | Hernia | round retrocardiac opacity just above the diaphragm with an air-fluid level |

use std::path::PathBuf;
use std::sync::Arc;

mod anatomy;
mod canvas;
mod labels_table;
mod layout;
mod pathology;
mod record;
mod render;
mod seeds;

#[cfg(test)]
mod feature_tests;

pub use labels_table::MAX_FINDING_SHARE;
pub use layout::{
    write_nih_layout, write_nih_layout_with_threads, WriteSummary, CSV_NAME, IMAGES_DIR,
    MARKER_NAME,
};
pub use record::{Sex, SyntheticRecord, View};
pub use render::{encode_png, GrayImage};

use labels_table::LabelTable;

/// What to generate. All three values fix the output byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthConfig {
    /// Images in the set, 1..=99,999,999 (patient ids are 8-digit, NIH style).
    pub rows: usize,
    /// Width and height of the square images, 64..=4096.
    pub size_px: u32,
    pub seed: u64,
}

impl SynthConfig {
    pub const MIN_SIZE_PX: u32 = 64;
    pub const MAX_SIZE_PX: u32 = 4096;
    pub const MAX_ROWS: usize = 99_999_999;

    pub fn validate(&self) -> Result<(), SynthError> {
        if !(Self::MIN_SIZE_PX..=Self::MAX_SIZE_PX).contains(&self.size_px) {
            return Err(SynthError::InvalidConfig {
                field: "size_px",
                value: u64::from(self.size_px),
                allowed: "64..=4096",
            });
        }
        if !(1..=Self::MAX_ROWS).contains(&self.rows) {
            return Err(SynthError::InvalidConfig {
                field: "rows",
                value: self.rows as u64,
                allowed: "1..=99999999",
            });
        }
        Ok(())
    }
}

/// Departures from the realistic defaults, for small experiments. The
/// default (both off) draws the real NIH label frequencies and feature
/// sizes; together with [`SynthConfig`] the options fix the output byte for
/// byte.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SynthOptions {
    /// Each of the 14 findings is drawn with probability at least this
    /// (0..=[`MAX_FINDING_SHARE`]; 0: the real frequencies). Whole real
    /// label sets are reweighted (a real image of a boosted finding, with
    /// whatever else that image had), none is invented; shares already above
    /// the floor stay about where they were and No Finding shrinks. The
    /// floor is the probability of each draw: a set scatters around it
    /// (one standard deviation is 0.6 % of a share of 8 % in 2,000 images).
    pub min_finding_share: f64,
    /// The image size (pixels) the set will be downscaled to for training;
    /// 0: off. Findings drawn thinner than about a pixel or two at that size
    /// are drawn larger: nodules at least 3 px across (and under 3 cm),
    /// plates of atelectasis 1.5 px thick, fibrotic lines 1 px wide in
    /// meshes of 2.5 px, pleural thickening 2 px. Only those four findings
    /// change, from the same random draws; the rest of the image is
    /// byte-identical.
    pub visible_at_px: u32,
}

impl SynthOptions {
    pub const MIN_VISIBLE_AT_PX: u32 = 16;

    pub fn validate(&self) -> Result<(), SynthError> {
        if !(0.0..=MAX_FINDING_SHARE).contains(&self.min_finding_share) {
            return Err(SynthError::InvalidOption {
                field: "min_finding_share",
                value: self.min_finding_share.to_string(),
                allowed: "0..=0.1",
            });
        }
        if self.visible_at_px != 0 && self.visible_at_px < Self::MIN_VISIBLE_AT_PX {
            return Err(SynthError::InvalidOption {
                field: "visible_at_px",
                value: self.visible_at_px.to_string(),
                allowed: "0 (off) or 16..",
            });
        }
        Ok(())
    }

    /// Whether both options are off (the realistic generator).
    pub fn is_default(&self) -> bool {
        *self == SynthOptions::default()
    }

    /// Smallest feature size asked for, as a fraction of the image width
    /// (one pixel at `visible_at_px`; 0 when off).
    pub(crate) fn min_feature(&self) -> f32 {
        if self.visible_at_px == 0 {
            0.0
        } else {
            1.0 / self.visible_at_px as f32
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("synthetic config: `{field}` = {value} is out of range (allowed: {allowed})")]
    InvalidConfig {
        field: &'static str,
        value: u64,
        allowed: &'static str,
    },
    #[error("synthetic option: `{field}` = {value} is out of range (allowed: {allowed})")]
    InvalidOption {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("synthetic label table: {0}")]
    LabelTable(String),
    #[error("PNG encoding: {0}")]
    Png(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not empty and has no synthetic.json; refusing to write synthetic data into it", path.display())]
    NotSynthetic { path: PathBuf },
    #[error("{}: holds another synthetic set ({found}); this one is {expected}", path.display())]
    OtherSet {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// Makes records and images of one configuration.
#[derive(Debug, Clone)]
pub struct Generator {
    config: SynthConfig,
    options: SynthOptions,
    table: Arc<LabelTable>,
}

impl Generator {
    /// The realistic generator (default [`SynthOptions`]).
    pub fn new(config: SynthConfig) -> Result<Self, SynthError> {
        Self::with_options(config, SynthOptions::default())
    }

    /// A generator with more signal for small experiments (see
    /// [`SynthOptions`]); default options give [`Generator::new`]'s output.
    pub fn with_options(config: SynthConfig, options: SynthOptions) -> Result<Self, SynthError> {
        config.validate()?;
        options.validate()?;
        let embedded = LabelTable::embedded().map_err(SynthError::LabelTable)?;
        let table = if options.min_finding_share > 0.0 {
            Arc::new(
                embedded
                    .enriched(options.min_finding_share)
                    .map_err(SynthError::LabelTable)?,
            )
        } else {
            embedded
        };
        Ok(Generator {
            config,
            options,
            table,
        })
    }

    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    pub fn options(&self) -> &SynthOptions {
        &self.options
    }

    /// Expected share of the images that carry each finding, in
    /// `chexvision_dataset::LABELS` order (the real frequencies unless
    /// `min_finding_share` raised them).
    pub fn finding_shares(&self) -> [f64; 14] {
        self.table.finding_shares()
    }

    /// Metadata of image `index` (cheap: no pixels). Defined for any index;
    /// a set holds `0..rows`. The last patient of a set may have fewer
    /// images than its run, since the set is cut at `rows`.
    pub fn record(&self, index: usize) -> SyntheticRecord {
        record::make_record(self.config.seed, index, self.config.size_px, &self.table)
    }

    /// Records `0..rows`, in order.
    pub fn records(&self) -> impl Iterator<Item = SyntheticRecord> + '_ {
        (0..self.config.rows).map(|i| self.record(i))
    }

    /// The image of a record, `size_px` square. Anatomy, positioning,
    /// exposure and noise depend on (seed, index, patient, sex, age, view);
    /// the findings on `labels`. Change `labels` on a copy of a record to see
    /// the same chest with other findings.
    pub fn render(&self, record: &SyntheticRecord) -> GrayImage {
        render::render_scene(
            self.config.seed,
            self.config.size_px,
            record,
            self.options.min_feature(),
        )
        .0
    }
}
