//! Per-image metadata: patient grouping, follow-up numbers, labels, age, sex
//! and view, each a deterministic function of (seed, index).
//!
//! Patients: indices are cut into blocks of [`BLOCK`]; inside a block a
//! block-keyed stream lays out consecutive runs of images, one run per
//! patient. `record(i)` only replays its own block, so it is cheap and needs
//! no pre-pass over the whole set. A run never crosses a block boundary
//! (which costs ~1 extra patient per 512 images).
//!
//! Run lengths: 57 % of patients have one image (real: 17,503 of 30,805);
//! the rest have 2 + a geometric number with mean 5.1, capped at 184 (the
//! real maximum), which gives ~3.6 images per patient like the real
//! 112,120 / 30,805.

use std::fmt;

use chexvision_dataset::LabelSet;
use rand::Rng;

use crate::labels_table::LabelTable;
use crate::seeds::{self, Domain, RngExt};

/// Images per patient-layout block.
pub(crate) const BLOCK: usize = 512;
const SINGLE_IMAGE_SHARE: f32 = 0.57;
const EXTRA_RUN_MEAN: f32 = 5.1;
const MAX_RUN: usize = 184;

/// Real shares (per image) of the NIH metadata.
const MALE_SHARE: f32 = 63_340.0 / 112_120.0;
const PA_SHARE: f32 = 67_310.0 / 112_120.0;

/// Images per age decade (0-9, 10-19 … 90-95) in the real metadata; a
/// patient's first age is drawn from it, uniform inside the decade.
const AGE_DECADES: [u32; 10] = [
    1_538, 5_508, 12_855, 16_538, 21_902, 27_341, 18_965, 6_454, 955, 64,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sex {
    Male,
    Female,
}

impl Sex {
    /// `M` or `F`, as in the NIH metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Sex::Male => "M",
            Sex::Female => "F",
        }
    }
}

impl fmt::Display for Sex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Projection: posterior-anterior (standing) or anterior-posterior (often bedside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Pa,
    Ap,
}

impl View {
    /// `PA` or `AP`, as in the NIH metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Pa => "PA",
            View::Ap => "AP",
        }
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metadata of one synthetic image; [`crate::Generator::render`] draws it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticRecord {
    /// Position in the set (0-based); with the seed it fixes everything.
    pub index: usize,
    /// NIH-style file name `{patient_id:08}_{follow_up:03}.png`, unique in a set.
    pub image_index: String,
    /// 1-based index of the patient's first image: unique, stable, an integer like NIH's.
    pub patient_id: u32,
    /// 0, 1, 2 … over the consecutive images of one patient.
    pub follow_up: u32,
    pub labels: LabelSet,
    /// Years, 0..=95.
    pub age: u16,
    pub sex: Sex,
    pub view: View,
    pub width: u32,
    pub height: u32,
}

/// (first index of the patient's run, position in the run) for `index`.
pub(crate) fn patient_run(seed: u64, index: usize) -> (usize, usize) {
    let block = index / BLOCK;
    let offset = index % BLOCK;
    let mut rng = seeds::rng(seed, Domain::Block, block as u64, 0);
    let mut start = 0;
    loop {
        let len = run_length(&mut rng);
        if offset < start + len {
            return (block * BLOCK + start, offset - start);
        }
        start += len;
    }
}

fn run_length(rng: &mut impl Rng) -> usize {
    if rng.chance(SINGLE_IMAGE_SHARE) {
        return 1;
    }
    // Geometric with mean EXTRA_RUN_MEAN by inversion.
    let p = 1.0 / (EXTRA_RUN_MEAN + 1.0);
    let u: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let extra = (u.ln() / (1.0 - p).ln()).floor() as usize;
    (2 + extra).min(MAX_RUN)
}

fn first_age(rng: &mut impl Rng) -> u16 {
    let total: u32 = AGE_DECADES.iter().sum();
    let mut pick = rng.random_range(0..total);
    for (decade, &count) in AGE_DECADES.iter().enumerate() {
        if pick < count {
            let span = if decade == 9 { 6 } else { 10 };
            return (decade as u16) * 10 + rng.random_range(0..span);
        }
        pick -= count;
    }
    50
}

pub(crate) fn make_record(
    seed: u64,
    index: usize,
    size_px: u32,
    table: &LabelTable,
) -> SyntheticRecord {
    let (start, follow_up) = patient_run(seed, index);
    let patient_id = u32::try_from(start + 1).unwrap_or(u32::MAX);
    let mut patient = seeds::rng(seed, Domain::Patient, start as u64, seeds::PATIENT_META);
    let sex = if patient.chance(MALE_SHARE) {
        Sex::Male
    } else {
        Sex::Female
    };
    // About four studies a year for patients with many follow-ups.
    let age = (first_age(&mut patient) + (follow_up / 4) as u16).min(95);
    let mut image = seeds::rng(seed, Domain::Image, index as u64, seeds::IMAGE_META);
    let labels = table.sample(&mut image);
    let view = if image.chance(PA_SHARE) {
        View::Pa
    } else {
        View::Ap
    };
    let follow_up = follow_up as u32;
    SyntheticRecord {
        index,
        image_index: format!("{patient_id:08}_{follow_up:03}.png"),
        patient_id,
        follow_up,
        labels,
        age,
        sex,
        view,
        width: size_px,
        height: size_px,
    }
}
