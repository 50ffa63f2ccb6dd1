//! Visible-feature tests: each renders one chest with and without a label
//! (same seed and index, so the same anatomy, exposure and noise) and
//! measures the difference where the finding should be. Regions are laid
//! out in the anatomy frame and mapped through the positioning warp.

use chexvision_dataset::{LabelSet, LABELS};

use crate::anatomy::{sign, Anatomy, SIDES};
use crate::pathology::{self, Mark};
use crate::render::{render_scene, Scene};
use crate::{Generator, GrayImage, SynthConfig};

const N: usize = 256;
const SEED: u64 = 0x5eed;
/// Records to try each feature on (the rendered labels are overridden).
const INDICES: [usize; 6] = [0, 7, 19, 42, 77, 123];

struct Pair {
    without: GrayImage,
    with: GrayImage,
    base: Scene,
    scene: Scene,
}

fn generator() -> Generator {
    Generator::new(SynthConfig {
        rows: 1000,
        size_px: N as u32,
        seed: SEED,
    })
    .unwrap()
}

fn pair(index: usize, label: usize) -> Pair {
    pair_at(index, label, N)
}

fn pair_at(index: usize, label: usize, n: usize) -> Pair {
    let mut record = generator().record(index);
    record.labels = LabelSet::default();
    let (without, base) = render_scene(SEED, n as u32, &record, 0.0);
    record.labels = LabelSet::from_bits(1 << label);
    let (with, scene) = render_scene(SEED, n as u32, &record, 0.0);
    Pair {
        without,
        with,
        base,
        scene,
    }
}

/// Image pixel under anatomy point (u, v).
fn at(image: &GrayImage, scene: &Scene, u: f32, v: f32) -> Option<f32> {
    let n = image.width as usize;
    let (x, y) = scene.acquisition.to_image(u, v, n);
    let (x, y) = (x.floor(), y.floor());
    if x < 0.0 || y < 0.0 || x >= n as f32 || y >= n as f32 {
        return None;
    }
    Some(f32::from(image.pixels[y as usize * n + x as usize]))
}

/// Calls `f(pixel index)` for each image pixel under a region given in the
/// anatomy frame (sampled on an n x n grid of anatomy points).
fn for_region(
    n: usize,
    scene: &Scene,
    (u0, v0, u1, v1): (f32, f32, f32, f32),
    keep: impl Fn(f32, f32) -> bool,
    mut f: impl FnMut(usize),
) {
    let step = 1.0 / n as f32;
    let mut v = v0;
    while v <= v1 {
        let mut u = u0;
        while u <= u1 {
            if keep(u, v) {
                let (x, y) = scene.acquisition.to_image(u, v, n);
                let (x, y) = (x.floor(), y.floor());
                if x >= 0.0 && y >= 0.0 && x < n as f32 && y < n as f32 {
                    f(y as usize * n + x as usize);
                }
            }
            u += step;
        }
        v += step;
    }
}

/// Grey levels of a region given in the anatomy frame.
fn region(
    image: &GrayImage,
    scene: &Scene,
    bbox: (f32, f32, f32, f32),
    keep: impl Fn(f32, f32) -> bool,
) -> Vec<f32> {
    let mut out = Vec::new();
    for_region(image.width as usize, scene, bbox, keep, |i| {
        out.push(f32::from(image.pixels[i]))
    });
    out
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len().max(1) as f32
}

/// Central lung fields of both sides (away from edges and the hila).
fn lung_fields(a: &Anatomy) -> impl Fn(f32, f32) -> bool + '_ {
    move |u, v| {
        SIDES.iter().any(|&side| {
            let r = (u - a.cx) * sign(side);
            let tv = (v - a.apex_y[side]) / (a.dome_y[side] - a.apex_y[side]);
            match a.lung_span(side, v) {
                Some((med, lat)) if (0.15..0.9).contains(&tv) => {
                    let tl = (r - med) / (lat - med);
                    (0.15..0.85).contains(&tl) && v < a.dome(side, r) - 0.02
                }
                _ => false,
            }
        })
    }
}

fn whole() -> (f32, f32, f32, f32) {
    (0.0, 0.0, 1.0, 1.0)
}

/// Pixels whose grey level changed by at least `by`.
fn changed(p: &Pair, by: u8) -> usize {
    p.with
        .pixels
        .iter()
        .zip(&p.without.pixels)
        .filter(|(a, b)| a.abs_diff(**b) >= by)
        .count()
}

/// Connected groups (4-neighbour) of pixels brighter by at least `by`: their bounding-box extents.
fn bright_spots(p: &Pair, by: i32) -> Vec<usize> {
    let mask: Vec<bool> = p
        .with
        .pixels
        .iter()
        .zip(&p.without.pixels)
        .map(|(a, b)| i32::from(*a) - i32::from(*b) >= by)
        .collect();
    let mut seen = vec![false; N * N];
    let mut spots = Vec::new();
    for start in 0..N * N {
        if !mask[start] || seen[start] {
            continue;
        }
        let (mut x0, mut x1, mut y0, mut y1, mut area) = (N, 0, N, 0, 0);
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % N, i / N);
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            area += 1;
            let mut push = |j: usize| {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < N {
                push(i + 1);
            }
            if y > 0 {
                push(i - N);
            }
            if y + 1 < N {
                push(i + N);
            }
        }
        if area >= 3 {
            spots.push((x1 - x0 + 1).max(y1 - y0 + 1));
        }
    }
    spots
}

fn marks(scene: &Scene, label: usize) -> Vec<Mark> {
    scene
        .marks
        .iter()
        .filter(|m| m.label == label)
        .copied()
        .collect()
}

#[test]
fn every_label_visibly_changes_the_image() {
    for (label, name) in LABELS.iter().enumerate() {
        for index in INDICES {
            let p = pair(index, label);
            let count = changed(&p, 12);
            eprintln!("{name} record {index}: {count} pixels changed by 12+");
            assert!(
                count >= 12,
                "{name} on record {index}: only {count} pixels changed by 12+ grey levels"
            );
            let diff: f64 = p
                .with
                .pixels
                .iter()
                .zip(&p.without.pixels)
                .map(|(a, b)| f64::from(a.abs_diff(*b)))
                .sum::<f64>()
                / (N * N) as f64;
            assert!(diff > 0.01, "{name} on record {index}: mean |diff| {diff}");
        }
    }
}

#[test]
fn a_label_changes_nothing_but_its_finding() {
    // Adding a nodule to a chest that already has an effusion leaves every
    // pixel away from the nodules as it was: anatomy, exposure, noise and
    // the effusion come from their own streams.
    for index in INDICES {
        let mut record = generator().record(index);
        record.labels = LabelSet::parse("Effusion").unwrap();
        let (before, _) = render_scene(SEED, N as u32, &record, 0.0);
        record.labels = LabelSet::parse("Effusion|Nodule").unwrap();
        let (after, scene) = render_scene(SEED, N as u32, &record, 0.0);
        let nodules = marks(&scene, pathology::NODULE);
        assert!(!nodules.is_empty());
        let centres: Vec<(f32, f32, f32)> = nodules
            .iter()
            .map(|m| {
                let (x, y) = scene.acquisition.to_image(m.center.0, m.center.1, N);
                (x, y, m.radius * N as f32 * 1.1 + 3.0)
            })
            .collect();
        for (i, (a, b)) in before.pixels.iter().zip(&after.pixels).enumerate() {
            let (x, y) = ((i % N) as f32 + 0.5, (i / N) as f32 + 0.5);
            let near = centres
                .iter()
                .any(|&(cx, cy, r)| (x - cx).powi(2) + (y - cy).powi(2) <= r * r);
            assert!(
                near || a == b,
                "record {index}: pixel ({x}, {y}) changed away from the nodules"
            );
        }
    }
}

#[test]
fn cardiomegaly_widens_the_heart_shadow() {
    for index in INDICES {
        let p = pair(index, pathology::CARDIOMEGALY);
        let a = &p.base.anatomy;
        let enlarged = &p.scene.anatomy;
        let ctr = |a: &Anatomy| 2.0 * a.heart.half_width() / (a.w[0] + a.w[1]);
        assert!(
            ctr(enlarged) > 0.52 && ctr(a) < 0.53,
            "{} vs {}",
            ctr(enlarged),
            ctr(a)
        );
        // Threshold halfway between lung and heart brightness, normal image.
        let lung = mean(&region(&p.without, &p.base, whole(), lung_fields(a)));
        let heart_v = a.heart.cy;
        let heart_u = a.cx + a.heart.off;
        let heart = at(&p.without, &p.base, heart_u, heart_v).unwrap();
        let threshold = (lung + heart) * 0.5;
        // Bright run width on rows through the normal heart, within the thorax.
        let width = |image: &GrayImage, scene: &Scene| {
            let rows = region(
                image,
                scene,
                (
                    a.cx - a.w[0] + 0.03,
                    heart_v - 0.02,
                    a.cx + a.w[1] - 0.03,
                    heart_v + 0.02,
                ),
                |_, _| true,
            );
            rows.iter().filter(|&&g| g > threshold).count()
        };
        let (normal, big) = (width(&p.without, &p.base), width(&p.with, &p.scene));
        eprintln!(
            "cardiomegaly record {index}: ctr {:.2} -> {:.2}, bright width {normal} -> {big}",
            ctr(a),
            ctr(enlarged)
        );
        assert!(
            big as f32 > normal as f32 * 1.25,
            "record {index}: bright width {big} vs normal {normal} (threshold {threshold})"
        );
    }
}

#[test]
fn effusion_fills_a_costophrenic_angle() {
    for index in INDICES {
        let p = pair(index, pathology::EFFUSION);
        let a = &p.base.anatomy;
        let sides: Vec<usize> = marks(&p.scene, pathology::EFFUSION)
            .iter()
            .map(|m| m.side)
            .collect();
        assert!(!sides.is_empty());
        for side in sides {
            let s = sign(side);
            let (ua, ub) = (a.cx + s * (a.w[side] - 0.07), a.cx + s * (a.w[side] - 0.01));
            let corner = (
                ua.min(ub),
                a.cp_y[side] - 0.07,
                ua.max(ub),
                a.cp_y[side] - 0.005,
            );
            let before = mean(&region(&p.without, &p.base, corner, |_, _| true));
            let after = mean(&region(&p.with, &p.scene, corner, |_, _| true));
            eprintln!("effusion record {index} side {side}: corner {before:.1} -> {after:.1}");
            assert!(
                after > before + 15.0,
                "record {index} side {side}: corner mean {before:.1} -> {after:.1}"
            );
        }
    }
}

/// Band-pass texture: 3x3 mean (damps pixel noise) minus 7x7 mean (drops
/// exposure gradients and much of the broad rib bands); what remains is
/// vessels and parenchyma.
fn band_pass(image: &GrayImage) -> Vec<f32> {
    let n = image.width as usize;
    let px = |x: usize, y: usize| f32::from(image.pixels[y * n + x]);
    let box_mean = |x: usize, y: usize, r: usize| {
        let mut sum = 0.0;
        for yy in y - r..=y + r {
            for xx in x - r..=x + r {
                sum += px(xx, yy);
            }
        }
        sum / ((2 * r + 1) * (2 * r + 1)) as f32
    };
    let mut out = vec![0.0; n * n];
    for y in 3..n - 3 {
        for x in 3..n - 3 {
            out[y * n + x] = box_mean(x, y, 1) - box_mean(x, y, 3);
        }
    }
    out
}

#[test]
fn pneumothorax_band_is_darker_and_has_no_lung_markings() {
    // 512 px, so that even the narrowest band is wide enough to measure
    // texture inside it without touching the chest wall or pleural line.
    let n = 512;
    let px = 1.0 / n as f32;
    let mut ratios = Vec::new();
    for index in INDICES {
        let p = pair_at(index, pathology::PNEUMOTHORAX, n);
        let a = &p.base.anatomy;
        let (side, depth) = p.scene.anatomy.pneumothorax.unwrap();
        let s = sign(side);
        // Away from rib margins: they are sharp edges in both images (the
        // lung texture shows through the ribs, so rib bodies are kept).
        let bones = a.bones(side);
        let off_bone = |r: f32, v: f32| {
            bones.iter().all(|b| {
                let (y, slope) = b.shape.at(r);
                let half = b.half * (1.0 + slope * slope).sqrt();
                r < b.r.0 - 4.5 * px
                    || r > b.r.1 + 4.5 * px
                    || ((v - y).abs() - half).abs() > 4.5 * px
            })
        };
        let band = |u: f32, v: f32| {
            let tv = (v - a.apex_y[side]) / (a.dome_y[side] - a.apex_y[side]);
            let r = (u - a.cx) * s;
            a.lung_span(side, v).is_some_and(|(_, lat)| {
                (0.3..0.75).contains(&tv) && r > lat - depth + 6.0 * px && r < lat - 6.0 * px
            }) && off_bone(r, v)
        };
        let (u0, u1) = (a.cx + s * 0.1, a.cx + s * (a.w[side] + 0.02));
        let bbox = (u0.min(u1), a.apex_y[side], u0.max(u1), a.cp_y[side]);
        // Median absolute band-pass: the rib margins are a minority of the
        // pixels, so the median follows the lung texture, not the ribs.
        let texture = |image: &GrayImage, scene: &Scene, bbox, keep: &dyn Fn(f32, f32) -> bool| {
            let filtered = band_pass(image);
            let mut values = Vec::new();
            for_region(n, scene, bbox, keep, |i| values.push(filtered[i].abs()));
            values.sort_by(f32::total_cmp);
            values[values.len() / 2]
        };
        // What pixel noise alone gives: the empty corner above the shoulder.
        let floor = texture(&p.with, &p.scene, (0.01, 0.01, 0.07, 0.07), &|_, _| true);
        let before = texture(&p.without, &p.base, bbox, &band) - floor;
        let after = texture(&p.with, &p.scene, bbox, &band) - floor;
        let dark_before = mean(&region(&p.without, &p.base, bbox, band));
        let dark_after = mean(&region(&p.with, &p.scene, bbox, band));
        assert!(
            dark_after < dark_before - 5.0,
            "record {index}: band mean {dark_before:.1} -> {dark_after:.1}"
        );
        ratios.push(after / before);
        eprintln!(
            "record {index}: side {side} depth {depth:.3} texture above noise {before:.2} -> {after:.2} (noise {floor:.2}), mean {dark_before:.1} -> {dark_after:.1}"
        );
    }
    eprintln!("pneumothorax texture ratios {ratios:?}");
    for (index, ratio) in INDICES.iter().zip(&ratios) {
        assert!(
            *ratio < 0.5,
            "record {index}: band texture ratio {ratio:.2}"
        );
    }
}

#[test]
fn emphysema_darkens_and_enlarges_the_lungs() {
    for index in INDICES {
        let p = pair(index, pathology::EMPHYSEMA);
        let a = &p.base.anatomy;
        let before = mean(&region(&p.without, &p.base, whole(), lung_fields(a)));
        let after = mean(&region(&p.with, &p.scene, whole(), lung_fields(a)));
        eprintln!("emphysema record {index}: lung mean {before:.1} -> {after:.1}");
        assert!(
            after < before - 6.0,
            "record {index}: lung mean {before:.1} -> {after:.1}"
        );
        let e = &p.scene.anatomy;
        assert!(e.dome_y[0] > a.dome_y[0] + 0.02 && e.dome_y[1] > a.dome_y[1] + 0.02);
    }
}

#[test]
fn nodules_are_small_spots_and_a_mass_is_one_large_one() {
    for index in INDICES {
        let p = pair(index, pathology::NODULE);
        let count = marks(&p.scene, pathology::NODULE).len();
        let spots = bright_spots(&p, 20);
        assert!(
            (1..=count).contains(&spots.len()),
            "record {index}: {} spots for {count} nodules",
            spots.len()
        );
        for extent in &spots {
            assert!(
                (*extent as f32) <= 0.035 * N as f32,
                "record {index}: nodule spot {extent} px wide"
            );
        }

        eprintln!("nodule record {index}: {count} nodules, spots {spots:?}");
        let p = pair(index, pathology::MASS);
        let spots = bright_spots(&p, 20);
        eprintln!("mass record {index}: spots {spots:?}");
        let largest = spots.iter().max().copied().unwrap_or(0);
        // 9-14 % of the width before the positioning scale (0.94-1.04).
        assert!(
            largest as f32 >= 0.08 * N as f32,
            "record {index}: mass spot only {largest} px wide ({spots:?})"
        );
        assert_eq!(
            spots
                .iter()
                .filter(|&&e| e as f32 >= 0.04 * N as f32)
                .count(),
            1
        );
    }
}

#[test]
fn patchy_opacities_raise_the_lungs_and_differ_in_density_and_spread() {
    for index in INDICES {
        let mut peaks = Vec::new();
        let mut spreads = Vec::new();
        for label in [
            pathology::INFILTRATION,
            pathology::PNEUMONIA,
            pathology::CONSOLIDATION,
        ] {
            let p = pair(index, label);
            let a = &p.base.anatomy;
            let before = region(&p.without, &p.base, whole(), lung_fields(a));
            let after = region(&p.with, &p.scene, whole(), lung_fields(a));
            let diffs: Vec<f32> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
            assert!(
                mean(&diffs) > 1.0,
                "{} on record {index}: lung mean up only {:.2}",
                LABELS[label],
                mean(&diffs)
            );
            let mut sorted = diffs.clone();
            sorted.sort_by(f32::total_cmp);
            peaks.push(sorted[sorted.len() * 995 / 1000]);
            spreads.push(diffs.iter().filter(|&&d| d > 4.0).count() as f32 / diffs.len() as f32);
        }
        eprintln!("patchy record {index}: peaks {peaks:?} spreads {spreads:?}");
        // Consolidation is the densest; infiltration the faintest.
        assert!(
            peaks[2] > peaks[0] + 10.0,
            "record {index}: peaks {peaks:?}"
        );
        assert!(peaks[1] > peaks[0], "record {index}: peaks {peaks:?}");
        assert!(
            spreads[0] > spreads[2],
            "record {index}: spreads {spreads:?}"
        );
        // Infiltration is scattered over both lungs.
        let p = pair(index, pathology::INFILTRATION);
        let sides: Vec<usize> = marks(&p.scene, pathology::INFILTRATION)
            .iter()
            .map(|m| m.side)
            .collect();
        assert!(sides.contains(&0) && sides.contains(&1));
    }
}

#[test]
fn atelectasis_raises_its_hemidiaphragm() {
    for index in INDICES {
        let p = pair(index, pathology::ATELECTASIS);
        let (a, b) = (&p.base.anatomy, &p.scene.anatomy);
        let side = marks(&p.scene, pathology::ATELECTASIS)[0].side;
        let lift = a.dome_y[side] - b.dome_y[side];
        assert!(lift > 0.025, "record {index}: lift {lift}");
        // The strip between the new and the old dome is now abdomen, not lung.
        let s = sign(side);
        let (ua, ub) = (a.cx + s * a.w[side] * 0.3, a.cx + s * a.w[side] * 0.85);
        let strip = (ua.min(ub), b.dome_y[side], ua.max(ub), a.cp_y[side]);
        let keep = |u: f32, v: f32| {
            let r = (u - a.cx) * s;
            let clear_of_heart = r > a.heart_extent(side, v).max(b.heart_extent(side, v)) + 0.01;
            clear_of_heart && v > b.dome(side, r) + 0.006 && v < a.dome(side, r) - 0.004
        };
        let before = mean(&region(&p.without, &p.base, strip, keep));
        let after = mean(&region(&p.with, &p.scene, strip, keep));
        eprintln!("atelectasis record {index} side {side}: strip {before:.1} -> {after:.1}");
        assert!(
            after > before + 20.0,
            "record {index}: strip {before:.1} -> {after:.1}"
        );
    }
}

#[test]
fn ap_films_magnify_the_heart_and_lower_the_contrast() {
    use crate::record::View;
    for index in INDICES {
        let mut record = generator().record(index);
        record.labels = LabelSet::default();
        record.view = View::Pa;
        let (pa, pa_scene) = render_scene(SEED, N as u32, &record, 0.0);
        record.view = View::Ap;
        let (ap, ap_scene) = render_scene(SEED, N as u32, &record, 0.0);
        let ratio = ap_scene.anatomy.heart.half_width() / pa_scene.anatomy.heart.half_width();
        assert!(
            (ratio - 1.1).abs() < 1e-3,
            "record {index}: heart ratio {ratio}"
        );
        // Lung-to-mediastinum contrast is lower on the hazier AP film.
        let contrast = |image: &GrayImage, scene: &Scene| {
            let a = &scene.anatomy;
            let lung = mean(&region(image, scene, whole(), lung_fields(a)));
            let v = a.apex_y[0] + 0.12;
            let mediastinum = mean(&region(
                image,
                scene,
                (a.cx - 0.02, v, a.cx + 0.02, v + 0.04),
                |_, _| true,
            ));
            mediastinum - lung
        };
        let (c_pa, c_ap) = (contrast(&pa, &pa_scene), contrast(&ap, &ap_scene));
        eprintln!("record {index}: contrast PA {c_pa:.1} AP {c_ap:.1}");
        assert!(
            c_ap < c_pa,
            "record {index}: contrast PA {c_pa:.1} AP {c_ap:.1}"
        );
    }
}

/// `factor`-fold box downscale (what a training resize does to a thin
/// feature, roughly).
fn downscale(image: &GrayImage, factor: usize) -> Vec<f32> {
    let n = image.width as usize;
    let m = n / factor;
    let mut out = vec![0.0; m * m];
    for y in 0..m * factor {
        for x in 0..m * factor {
            out[(y / factor) * m + x / factor] += f32::from(image.pixels[y * n + x]);
        }
    }
    let area = (factor * factor) as f32;
    out.iter_mut().for_each(|p| *p /= area);
    out
}

/// After a 4× downscale, the pixels within 3 of each drawn nodule's centre
/// brightened by 20 grey levels or more; the smallest count of the image.
fn weakest_nodule_after_downscale(index: usize, min_feature: f32) -> usize {
    let mut record = generator().record(index);
    record.labels = LabelSet::default();
    let (without, _) = render_scene(SEED, N as u32, &record, min_feature);
    record.labels = LabelSet::from_bits(1 << pathology::NODULE);
    let (with, scene) = render_scene(SEED, N as u32, &record, min_feature);
    let (small_with, small_without) = (downscale(&with, 4), downscale(&without, 4));
    let m = N / 4;
    marks(&scene, pathology::NODULE)
        .iter()
        .map(|mark| {
            let (x, y) = scene.acquisition.to_image(mark.center.0, mark.center.1, m);
            let (x, y) = (x.floor() as i64, y.floor() as i64);
            let mut count = 0;
            for yy in y - 3..=y + 3 {
                for xx in x - 3..=x + 3 {
                    if (0..m as i64).contains(&xx) && (0..m as i64).contains(&yy) {
                        let i = yy as usize * m + xx as usize;
                        count += usize::from(small_with[i] - small_without[i] >= 20.0);
                    }
                }
            }
            count
        })
        .min()
        .unwrap_or(0)
}

#[test]
fn visible_at_makes_nodules_survive_a_downscale() {
    // 256 px drawn, seen at 64 px: a realistic nodule (1.6-2.8 % of the
    // width) is ~1-2 px there, about the size of a crossing of lung
    // markings; drawn for `visible_at_px` 64 it is 3 px across or more,
    // and under 3 cm.
    let min_feature = 1.0 / 64.0;
    let (mut plain, mut visible) = (Vec::new(), Vec::new());
    for index in INDICES {
        let (p, v) = (
            weakest_nodule_after_downscale(index, 0.0),
            weakest_nodule_after_downscale(index, min_feature),
        );
        eprintln!(
            "record {index}: weakest nodule at 64 px {p} px brighter by 20+, visible_at 64: {v} px"
        );
        plain.push(p);
        visible.push(v);
        let mut record = generator().record(index);
        record.labels = LabelSet::from_bits(1 << pathology::NODULE);
        let (_, scene) = render_scene(SEED, N as u32, &record, min_feature);
        for m in marks(&scene, pathology::NODULE) {
            assert!(
                (1.5 * min_feature..=0.0375).contains(&m.radius),
                "record {index}: nodule radius {}",
                m.radius
            );
        }
    }
    eprintln!("plain {plain:?}, visible_at 64 {visible:?}");
    // A 3 px disc covers about 7 pixels.
    assert!(visible.iter().all(|&v| v >= 5), "{visible:?}");
    let (p, v) = (
        plain.iter().sum::<usize>() as f32,
        visible.iter().sum::<usize>() as f32,
    );
    assert!(v >= 3.0 * p, "weakest nodules: {p} px in all -> {v} px");
}
