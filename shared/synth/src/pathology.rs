//! The 14 findings. Each present label gets its own random stream (keyed by
//! the image and the label), first changes the anatomy parameters where the
//! finding is a change of shape (heart size, diaphragm height, lung volume),
//! then draws over the painted canvas. Removing a label therefore leaves the
//! anatomy and every other finding exactly as they were.
//!
//! Sizes are fractions of the image width; the lung-relative positions go
//! through `Anatomy::sample_lung_point`, so findings land inside the lungs.

use chexvision_dataset::LabelSet;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::anatomy::{sign, Anatomy, SIDES};
use crate::canvas::{ramp, Canvas};
use crate::seeds::{self, Domain, RngExt};

pub(crate) const ATELECTASIS: usize = 0;
pub(crate) const CARDIOMEGALY: usize = 1;
pub(crate) const EFFUSION: usize = 2;
pub(crate) const INFILTRATION: usize = 3;
pub(crate) const MASS: usize = 4;
pub(crate) const NODULE: usize = 5;
pub(crate) const PNEUMONIA: usize = 6;
pub(crate) const PNEUMOTHORAX: usize = 7;
pub(crate) const CONSOLIDATION: usize = 8;
pub(crate) const EDEMA: usize = 9;
pub(crate) const EMPHYSEMA: usize = 10;
pub(crate) const FIBROSIS: usize = 11;
pub(crate) const PLEURAL_THICKENING: usize = 12;
pub(crate) const HERNIA: usize = 13;

/// Where a finding was drawn (anatomy frame), for tests and debugging.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Mark {
    pub label: usize,
    pub side: usize,
    pub center: (f32, f32),
    pub radius: f32,
}

pub(crate) struct Finding {
    pub label: usize,
    rng: ChaCha8Rng,
    /// Smallest size of the thin features, as a fraction of the width (0: off).
    min_feature: f32,
    /// Which lung (0 = image left, 1 = image right) and whether both.
    side: usize,
    both: bool,
}

/// Largest nodule radius `min_feature` may ask for: a 3 cm nodule on the
/// 40 cm film (larger is a mass).
const NODULE_MAX_RADIUS: f32 = 0.0375;

/// A size drawn for a realistic image, enlarged for `min_feature`: the draw
/// is scaled by `max(1, min / smallest)`, so the whole range moves up
/// together and keeps its spread, and the random streams are untouched.
fn at_least(drawn: f32, smallest: f32, min: f32) -> f32 {
    drawn * (min / smallest).max(1.0)
}

/// One finding per label in the set, in label order. `min_feature` (a
/// fraction of the width, 0: off) enlarges the features thinner than that.
pub(crate) fn plan(seed: u64, index: usize, labels: LabelSet, min_feature: f32) -> Vec<Finding> {
    (0..14)
        .filter(|&k| labels.contains(k))
        .map(|label| {
            let mut rng = seeds::rng(
                seed,
                Domain::Image,
                index as u64,
                seeds::IMAGE_FINDING + label as u64,
            );
            let side = usize::from(rng.chance(0.5));
            let both = rng.chance(0.35);
            Finding {
                label,
                rng,
                min_feature,
                side,
                both,
            }
        })
        .collect()
}

impl Finding {
    fn sides(&self) -> Vec<usize> {
        if self.both {
            SIDES.to_vec()
        } else {
            vec![self.side]
        }
    }

    /// Shape changes, applied before the anatomy is painted.
    pub(crate) fn modify(&mut self, a: &mut Anatomy) {
        let rng = &mut self.rng;
        match self.label {
            CARDIOMEGALY => {
                let ctr = rng.uni(0.57, 0.66);
                let target = ctr * (a.w[0] + a.w[1]) * 0.5;
                let grow = (target / a.heart.half_width()).max(1.25);
                a.heart.grow(grow, a.dome_y[1]);
            }
            ATELECTASIS => {
                // Volume loss: that hemidiaphragm rises.
                let lift = rng.uni(0.03, 0.05);
                a.dome_y[self.side] -= lift;
                a.cp_y[self.side] -= lift;
            }
            EMPHYSEMA => {
                // Hyperinflation: low flat domes, wider darker lungs, pruned
                // vessels, long narrow heart.
                let drop = rng.uni(0.04, 0.06);
                for side in SIDES {
                    let cp = a.cp_y[side] + drop * 0.6;
                    a.dome_y[side] = cp - rng.uni(0.02, 0.03);
                    a.cp_y[side] = cp;
                    a.w[side] *= rng.uni(1.03, 1.06);
                    a.air[side] *= rng.uni(1.25, 1.35);
                }
                a.vessel_gain *= 0.55;
                a.heart.grow(0.9, a.dome_y[1]);
            }
            FIBROSIS => {
                let lift = rng.uni(0.015, 0.025);
                for side in SIDES {
                    a.dome_y[side] -= lift;
                    a.cp_y[side] -= lift;
                }
            }
            PNEUMOTHORAX => {
                let depth = rng.uni(0.04, 0.085);
                a.pneumothorax = Some((self.side, depth));
            }
            _ => {}
        }
    }

    /// Overlays, applied after the anatomy is painted.
    pub(crate) fn draw(&mut self, a: &Anatomy, c: &mut Canvas, marks: &mut Vec<Mark>) {
        let label = self.label;
        let sides = self.sides();
        let side = self.side;
        let min_feature = self.min_feature;
        let rng = &mut self.rng;
        let mut mark = |side: usize, center: (f32, f32), radius: f32| {
            marks.push(Mark {
                label,
                side,
                center,
                radius,
            })
        };
        match label {
            ATELECTASIS => {
                let (u, v) = a.sample_lung_point(rng, side, (0.72, 0.86), (0.35, 0.6));
                let width = a.w[side] * rng.uni(0.22, 0.32);
                let tilt = rng.uni(-0.12, 0.12);
                // Half thickness: a plate at least 1.5 × `min_feature` thick.
                let half = at_least(rng.uni(0.004, 0.007), 0.004, 0.75 * min_feature);
                c.tube_opacity(
                    (u - width, v - tilt * width),
                    (u + width, v + tilt * width),
                    half,
                    0.85,
                );
                // A second, fainter plate above the first, now and then.
                if rng.chance(0.4) {
                    let dv = rng.uni(0.03, 0.05);
                    c.tube_opacity(
                        (u - width * 0.7, v - dv),
                        (u + width * 0.7, v - dv + tilt * width),
                        half * 0.7,
                        0.6,
                    );
                }
                mark(side, (u, v), width);
            }
            CARDIOMEGALY => {
                let h = &a.heart;
                mark(1, (a.cx + h.off, h.cy), h.half_width());
            }
            EFFUSION => {
                for s in sides {
                    effusion(a, c, rng, s);
                    mark(s, (a.cx + sign(s) * a.w[s], a.cp_y[s]), 0.06);
                }
            }
            INFILTRATION => {
                let patches = 4 + rng.below(6);
                for k in 0..patches {
                    let s = if k % 2 == 0 { side } else { 1 - side };
                    let center = a.sample_lung_point(rng, s, (0.2, 0.85), (0.15, 0.85));
                    for _ in 0..3 + rng.below(4) {
                        let p = (
                            center.0 + rng.uni(-0.03, 0.03),
                            center.1 + rng.uni(-0.03, 0.03),
                        );
                        let sigma = rng.uni(0.012, 0.022);
                        c.puff_opacity(p, (sigma, sigma * rng.uni(0.8, 1.3)), rng.uni(0.2, 0.35));
                    }
                    mark(s, center, 0.04);
                }
            }
            MASS => {
                let radius = rng.uni(0.045, 0.07);
                let center = a.sample_lung_point(rng, side, (0.25, 0.75), (0.3, 0.7));
                let lobes = [rng.uni(0.04, 0.1), rng.uni(0.03, 0.08), rng.uni(0.0, 6.3)];
                let soft = radius * 0.12;
                let reach = radius * 1.25 + soft;
                let box_ = (
                    center.0 - reach,
                    center.1 - reach,
                    center.0 + reach,
                    center.1 + reach,
                );
                c.opacity_in(box_, |u, v| {
                    let (dx, dy) = (u - center.0, v - center.1);
                    let d = (dx * dx + dy * dy).sqrt();
                    // Lobulated edge: cos 3θ and cos 5θ from cos θ, plus sin 2θ.
                    let (cs, sn) = if d > 1e-6 {
                        (dx / d, dy / d)
                    } else {
                        (1.0, 0.0)
                    };
                    let c3 = 4.0 * cs * cs * cs - 3.0 * cs;
                    let c5 = 16.0 * cs.powi(5) - 20.0 * cs * cs * cs + 5.0 * cs;
                    let s2 = 2.0 * sn * cs * lobes[2].cos();
                    let edge = radius * (1.0 + lobes[0] * c3 + lobes[1] * c5 + 0.05 * s2);
                    // A solid ball: thicker (denser) through the middle.
                    let depth = (1.0 - (d / edge).powi(2)).max(0.0).sqrt();
                    ramp((edge - d) / soft) * (0.8 + 0.2 * depth)
                });
                c.density_in(box_, |u, v| {
                    let d = ((u - center.0).powi(2) + (v - center.1).powi(2)).sqrt();
                    0.05 * ramp((radius * 0.9 - d) / soft)
                });
                mark(side, center, radius);
            }
            NODULE => {
                let count = match rng.random::<f32>() {
                    p if p < 0.6 => 1,
                    p if p < 0.85 => 2,
                    _ => 3,
                };
                for k in 0..count {
                    let s = if k == 0 {
                        side
                    } else {
                        usize::from(rng.chance(0.5))
                    };
                    // Radius of at least 1.5 × `min_feature` (3 px across
                    // at that size), under a 3 cm nodule.
                    let radius = at_least(rng.uni(0.008, 0.014), 0.008, 1.5 * min_feature)
                        .min(NODULE_MAX_RADIUS);
                    let center = a.sample_lung_point(rng, s, (0.15, 0.85), (0.2, 0.85));
                    c.disc_opacity(center, radius, radius * 0.25, rng.uni(0.85, 0.97));
                    mark(s, center, radius);
                }
            }
            PNEUMONIA => {
                let zone = match rng.random::<f32>() {
                    p if p < 0.55 => (0.6, 0.85),
                    p if p < 0.85 => (0.4, 0.62),
                    _ => (0.15, 0.4),
                };
                for s in if rng.chance(0.2) {
                    SIDES.to_vec()
                } else {
                    vec![side]
                } {
                    let center = a.sample_lung_point(rng, s, zone, (0.35, 0.7));
                    let extent = rng.uni(0.05, 0.07);
                    for _ in 0..10 + rng.below(8) {
                        let p = (
                            center.0 + rng.uni(-extent, extent),
                            center.1 + rng.uni(-extent, extent) * 0.8,
                        );
                        let sigma = rng.uni(0.014, 0.03);
                        c.puff_opacity(p, (sigma, sigma * rng.uni(0.7, 1.2)), rng.uni(0.3, 0.6));
                    }
                    mark(s, center, extent);
                }
            }
            PNEUMOTHORAX => {
                if let Some((s, depth)) = a.pneumothorax {
                    let v = (a.apex_y[s] + a.dome_y[s]) * 0.5;
                    mark(s, (a.cx + sign(s) * (a.w[s] - depth * 0.5), v), depth);
                }
            }
            CONSOLIDATION => {
                let center = a.sample_lung_point(rng, side, (0.5, 0.8), (0.35, 0.65));
                let (rx, ry) = (rng.uni(0.06, 0.09), rng.uni(0.05, 0.08));
                // Flat, sharp upper border along a fissure.
                let top = center.1 - ry * rng.uni(0.5, 0.8);
                // Confluent: many dense overlapping puffs, fluffy at the rim.
                let puffs: Vec<((f32, f32), f32, f32)> = (0..14)
                    .map(|_| {
                        let p = (
                            center.0 + rng.uni(-0.7, 0.7) * rx,
                            center.1 + rng.uni(-0.7, 0.7) * ry,
                        );
                        (p, rng.uni(0.025, 0.04), rng.uni(0.75, 0.95))
                    })
                    .collect();
                let reach = 0.1;
                let box_ = (
                    center.0 - rx - reach,
                    top - 0.01,
                    center.0 + rx + reach,
                    center.1 + ry + reach,
                );
                c.opacity_in(box_, |u, v| {
                    if v < top - 0.005 {
                        return 0.0;
                    }
                    let mut clear = 1.0;
                    for &(p, sigma, amp) in &puffs {
                        let q = ((u - p.0).powi(2) + (v - p.1).powi(2)) / (sigma * sigma);
                        if q < 9.0 {
                            clear *= 1.0 - amp * (-0.5 * q).exp();
                        }
                    }
                    (1.0 - clear) * ramp((v - top) * 600.0)
                });
                // Air bronchograms: dark branching tubes inside the opacity.
                for _ in 0..3 + rng.below(3) {
                    let mut p = (center.0 + rng.uni(-rx, rx) * 0.4, top + 0.01);
                    let mut angle = rng.uni(1.1, 2.0);
                    for _ in 0..3 {
                        let len = rng.uni(0.02, 0.035);
                        let q = (p.0 + angle.cos() * len, p.1 + angle.sin() * len);
                        let (a0, b0) = (p, q);
                        let half = 0.0018f32.max(0.8 / c.scale());
                        let nf = c.scale();
                        let reach = half + 1.0 / nf;
                        let bbox = (
                            a0.0.min(b0.0) - reach,
                            a0.1.min(b0.1) - reach,
                            a0.0.max(b0.0) + reach,
                            a0.1.max(b0.1) + reach,
                        );
                        c.clear_in(bbox, |u, v| {
                            let (dx, dy) = (b0.0 - a0.0, b0.1 - a0.1);
                            let t = (((u - a0.0) * dx + (v - a0.1) * dy) / (dx * dx + dy * dy))
                                .clamp(0.0, 1.0);
                            let d =
                                ((u - a0.0 - t * dx).powi(2) + (v - a0.1 - t * dy).powi(2)).sqrt();
                            0.4 * ramp((half - d) * nf)
                        });
                        p = q;
                        angle += rng.uni(-0.4, 0.4);
                    }
                }
                mark(side, center, rx);
            }
            EDEMA => {
                for s in SIDES {
                    let v_h = a.apex_y[s] + 0.4 * (a.cp_y[s] - a.apex_y[s]);
                    let r_h = a.mediastinal(s, v_h).max(a.heart_extent(s, v_h)) + 0.05;
                    let hilum = (a.cx + sign(s) * r_h, v_h);
                    // Bat wing: broad haze fanning out of the hilum.
                    c.puff_opacity(hilum, (0.085 * rng.uni(0.9, 1.1), 0.11), rng.uni(0.5, 0.6));
                    c.puff_opacity(
                        (hilum.0 + sign(s) * 0.05, hilum.1 + 0.04),
                        (0.06, 0.07),
                        0.3,
                    );
                    // Kerley B: short horizontal lines at the lateral bases.
                    for _ in 0..6 + rng.below(6) {
                        let v = a.dome_y[s] - rng.uni(0.0, 0.12);
                        if let Some((_, lat)) = a.lung_span(s, v) {
                            let len = rng.uni(0.015, 0.03);
                            let p = (a.cx + sign(s) * (lat - 0.002), v);
                            let q = (a.cx + sign(s) * (lat - len), v + rng.uni(-0.003, 0.003));
                            c.tube_opacity(p, q, 0.0012, 0.7);
                        }
                    }
                    mark(s, hilum, 0.1);
                }
            }
            EMPHYSEMA => {
                // Apical bullae: round lucencies without markings.
                for _ in 0..rng.below(3) {
                    let s = usize::from(rng.chance(0.5));
                    let center = a.sample_lung_point(rng, s, (0.08, 0.3), (0.3, 0.8));
                    let radius = rng.uni(0.025, 0.04);
                    let bbox = (
                        center.0 - radius,
                        center.1 - radius,
                        center.0 + radius,
                        center.1 + radius,
                    );
                    let inside = |u: f32, v: f32| {
                        let d = ((u - center.0).powi(2) + (v - center.1).powi(2)).sqrt();
                        ramp((radius - d) * 300.0)
                    };
                    // Hyperlucent, not empty: half the markings go, plus a thin wall.
                    c.clear_in(bbox, |u, v| 0.5 * inside(u, v));
                    let wall = 1.5 / c.scale();
                    c.density_in(bbox, |u, v| {
                        let d = ((u - center.0).powi(2) + (v - center.1).powi(2)).sqrt();
                        0.03 * ramp(1.0 - (d - radius).abs() / wall)
                    });
                }
                for s in SIDES {
                    mark(s, (a.cx + sign(s) * a.w[s] * 0.6, 0.45), a.w[s]);
                }
            }
            FIBROSIS => {
                for s in SIDES {
                    fibrosis(a, c, rng, s, min_feature);
                    mark(s, (a.cx + sign(s) * a.w[s] * 0.8, a.dome_y[s] - 0.1), 0.1);
                }
            }
            PLEURAL_THICKENING => {
                for s in if self.both {
                    SIDES.to_vec()
                } else {
                    vec![side]
                } {
                    pleural_thickening(a, c, rng, s, min_feature);
                    mark(s, (a.cx + sign(s) * a.w[s], 0.4), 0.02);
                }
            }
            HERNIA => {
                let radius = rng.uni(0.045, 0.065);
                let center = (
                    a.cx + rng.uni(0.005, 0.035),
                    a.dome_y[1] - radius * rng.uni(0.6, 0.9),
                );
                let level = center.1 + radius * rng.uni(-0.2, 0.3);
                let box_ = (
                    center.0 - radius,
                    center.1 - radius,
                    center.0 + radius,
                    center.1 + radius,
                );
                let soft = (1.5 / c.scale()).max(0.002);
                c.density_in(box_, |u, v| {
                    let d = ((u - center.0).powi(2) + (v - center.1).powi(2)).sqrt();
                    let inside = ramp((radius - d) / soft);
                    let wall = ramp((radius - d) / soft) * ramp((d - radius + 0.006) / soft);
                    let fluid = ramp((v - level) / soft);
                    inside * (0.1 * fluid - 0.16 * (1.0 - fluid)) + 0.06 * wall
                });
                mark(1, center, radius);
            }
            _ => {}
        }
    }
}

/// Fluid at the base of one lung: fills the costophrenic angle, surface
/// rising towards the chest wall (meniscus), denser downwards.
fn effusion(a: &Anatomy, c: &mut Canvas, rng: &mut ChaCha8Rng, side: usize) {
    let s = sign(side);
    let level = a.dome_y[side] + rng.uni(-0.07, 0.0);
    let meniscus = rng.uni(0.04, 0.08);
    let grad = 0.02;
    let w = a.w[side];
    let (u0, u1) = (a.cx + s * 0.01, a.cx + s * (w + 0.02));
    let bbox = (
        u0.min(u1),
        level - meniscus - 0.01,
        u0.max(u1),
        a.cp_y[side] + 0.01,
    );
    c.opacity_in(bbox, |u, v| {
        let r = (u - a.cx) * s;
        let Some((med, lat)) = a.lung_span(side, v.min(a.cp_y[side] - 1e-4)) else {
            return 0.0;
        };
        let t = ((r - med) / (lat - med)).clamp(0.0, 1.0);
        let surface = level - meniscus * t * t;
        ((v - surface) / grad).clamp(0.0, 1.0).powf(0.6)
    });
}

/// A net of thin lines over the lower and outer part of one lung. With
/// `min_feature`, lines at least that wide and meshes at least 2.5 times
/// that (a coarser net, still a net once downscaled).
fn fibrosis(a: &Anatomy, c: &mut Canvas, rng: &mut ChaCha8Rng, side: usize, min_feature: f32) {
    let cell = at_least(0.022, 0.022, 2.5 * min_feature);
    let half_width = at_least(0.0016, 0.0016, 0.5 * min_feature);
    let s = sign(side);
    let (v0, v1) = (
        a.apex_y[side] + 0.4 * (a.cp_y[side] - a.apex_y[side]),
        a.cp_y[side],
    );
    let (rows, cols) = (
        ((v1 - v0) / cell) as usize + 1,
        (a.w[side] / cell) as usize + 1,
    );
    let mut nodes = vec![(0.0f32, 0.0f32); rows * cols];
    for j in 0..rows {
        for i in 0..cols {
            let r = (i as f32 + rng.uni(-0.35, 0.35)) * cell;
            let v = v0 + (j as f32 + rng.uni(-0.35, 0.35)) * cell;
            nodes[j * cols + i] = (a.cx + s * r, v);
        }
    }
    // Denser towards the base and the wall.
    let weight = |p: (f32, f32)| {
        let r = (p.0 - a.cx) * s;
        let lateral = (r / a.w[side] - 0.35) / 0.4;
        let basal = (p.1 - v0) / (v1 - v0);
        (lateral.clamp(0.0, 1.0) * 0.6 + basal.clamp(0.0, 1.0) * 0.6).min(1.0)
    };
    for j in 0..rows {
        for i in 0..cols {
            let p = nodes[j * cols + i];
            for (di, dj) in [(1, 0), (0, 1)] {
                if i + di >= cols || j + dj >= rows {
                    continue;
                }
                let q = nodes[(j + dj) * cols + i + di];
                let keep = rng.random::<f32>();
                let wgt = weight(p);
                if keep < wgt {
                    c.tube_opacity(p, q, half_width, 0.55 * (0.5 + 0.5 * wgt));
                }
            }
        }
    }
}

/// A band of tissue along the lateral chest wall, thickness undulating,
/// sometimes with an apical cap. With `min_feature`, at least twice that thick.
fn pleural_thickening(
    a: &Anatomy,
    c: &mut Canvas,
    rng: &mut ChaCha8Rng,
    side: usize,
    min_feature: f32,
) {
    let s = sign(side);
    let thick = at_least(rng.uni(0.015, 0.028), 0.015, 2.0 * min_feature);
    let (from, to) = if rng.chance(0.5) {
        (0.1, 0.6)
    } else {
        (0.35, 0.95)
    };
    let (v0, v1) = (
        a.apex_y[side] + from * (a.cp_y[side] - a.apex_y[side]),
        a.apex_y[side] + to * (a.cp_y[side] - a.apex_y[side]),
    );
    let phase = [rng.uni(0.0, 6.3), rng.uni(0.0, 6.3)];
    let cap = rng
        .chance(0.5)
        .then(|| at_least(rng.uni(0.012, 0.02), 0.012, 1.5 * min_feature));
    let w = a.w[side];
    let (u0, u1) = (a.cx, a.cx + s * (w + 0.02));
    let bbox = (u0.min(u1), a.apex_y[side], u0.max(u1), v1 + 0.02);
    let shape = |u: f32, v: f32| {
        let Some((_, lat)) = a.lung_span(side, v) else {
            return 0.0;
        };
        let r = (u - a.cx) * s;
        if r > lat + 0.004 {
            return 0.0;
        }
        let along = ramp((v - v0) / 0.02) * ramp((v1 - v) / 0.02);
        let t = thick
            * along
            * (0.75 + 0.15 * (v * 60.0 + phase[0]).sin() + 0.1 * (v * 140.0 + phase[1]).sin());
        let band = ramp((r - (lat - t)) / 0.004);
        let apical = cap.map_or(0.0, |h| ramp((a.apex_y[side] + h - v) / 0.004));
        band.max(apical)
    };
    // Replaces the lung at its edge, and is a little denser than the wall.
    c.opacity_in(bbox, shape);
    c.density_in(bbox, |u, v| 0.035 * shape(u, v));
}
