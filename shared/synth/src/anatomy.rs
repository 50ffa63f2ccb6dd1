//! The normal chest: parameters drawn first (body build per patient, the
//! rest per image), then painted into a [`Canvas`] in the anatomy frame.
//! Findings change the parameters (`pathology::Finding::modify`) before
//! painting and draw over the canvas after it.
//!
//! Geometry is in normalised units, lungs described per side by their
//! distance `r` from the midline: side 0 = patient's right = image left,
//! side 1 = patient's left = image right (heart apex, aortic knob, stomach).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::canvas::{ramp, Canvas};
use crate::record::{Sex, SyntheticRecord, View};
use crate::seeds::{self, Domain, RngExt};

pub(crate) const SIDES: [usize; 2] = [0, 1];

/// -1 for the image-left lung, +1 for the image-right one.
#[inline]
pub(crate) fn sign(side: usize) -> f32 {
    if side == 0 {
        -1.0
    } else {
        1.0
    }
}

/// The heart: an ellipse whose long axis runs from upper image-left to
/// lower image-right (towards the apex), sitting on the left dome.
#[derive(Debug, Clone)]
pub(crate) struct Heart {
    /// Shift of the centre towards the image right (patient's left).
    pub off: f32,
    pub cy: f32,
    /// Semi-axes (long, short) and tilt of the long axis below horizontal.
    pub a: f32,
    pub b: f32,
    pub tilt: f32,
}

impl Heart {
    /// A heart of horizontal half-width `half_width` with axis ratio `ratio`.
    fn with_half_width(half_width: f32, ratio: f32, tilt: f32) -> Heart {
        let (s, c) = tilt.sin_cos();
        let b = half_width / (ratio * ratio * c * c + s * s).sqrt();
        Heart {
            off: 0.0,
            cy: 0.0,
            a: b * ratio,
            b,
            tilt,
        }
    }

    /// Quadratic form (A, B, C): inside when A·dx² + B·dx·dy + C·dy² < 1.
    pub(crate) fn form(&self) -> (f32, f32, f32) {
        let (s, c) = self.tilt.sin_cos();
        let (ia, ib) = (1.0 / (self.a * self.a), 1.0 / (self.b * self.b));
        (
            c * c * ia + s * s * ib,
            2.0 * c * s * (ia - ib),
            s * s * ia + c * c * ib,
        )
    }

    /// Horizontal half-width: cardiothoracic ratio = 2 · this / (w0 + w1).
    pub(crate) fn half_width(&self) -> f32 {
        let (s, c) = self.tilt.sin_cos();
        (self.a * self.a * c * c + self.b * self.b * s * s).sqrt()
    }

    pub(crate) fn half_height(&self) -> f32 {
        let (s, c) = self.tilt.sin_cos();
        (self.a * self.a * s * s + self.b * self.b * c * c).sqrt()
    }

    /// Grows the heart by `k` about its centre, keeping it on the diaphragm.
    pub(crate) fn grow(&mut self, k: f32, dome: f32) {
        self.a *= k;
        self.b *= k;
        self.off *= k;
        self.seat(dome);
    }

    /// Puts the centre so the lower part dips under the dome.
    pub(crate) fn seat(&mut self, dome: f32) {
        self.cy = dome - self.half_height() * 0.42;
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Anatomy {
    pub cx: f32,
    /// Lateral (inner chest wall) distance of each lung at its base.
    pub w: [f32; 2],
    pub apex_y: [f32; 2],
    /// Apex position as a fraction of w.
    pub apex_r: [f32; 2],
    /// Top of each diaphragm dome.
    pub dome_y: [f32; 2],
    /// Costophrenic angle height (where the dome meets the chest wall).
    pub cp_y: [f32; 2],
    /// Dome peak position as a fraction of w.
    pub dome_r: [f32; 2],
    pub mediastinum: f32,
    pub aortic_knob: f32,
    pub heart: Heart,
    pub body_hw: f32,
    pub neck_hw: f32,
    pub tissue: f32,
    pub air: [f32; 2],
    /// Multiplies vessel opacity (emphysema prunes markings).
    pub vessel_gain: f32,
    pub rib_start: f32,
    pub rib_spacing: f32,
    pub rib_half: f32,
    pub bone: f32,
    pub clavicle_y: f32,
    pub gastric_bubble: Option<f32>,
    pub female: bool,
    pub ap: bool,
    /// Pneumothorax: (side, depth of the air band).
    pub pneumothorax: Option<(usize, f32)>,
}

/// Positioning and exposure of one image, applied after the anatomy.
#[derive(Debug, Clone)]
pub(crate) struct Acquisition {
    pub shift: (f32, f32),
    pub rotation: f32,
    pub scale: f32,
    pub gain: f32,
    pub gamma: f32,
    pub offset: f32,
    /// Scatter haze of bedside (AP) films: lower contrast.
    pub haze: f32,
    /// Top-to-bottom exposure gradient (anode heel effect).
    pub heel: f32,
    /// Noise standard deviation in grey levels.
    pub noise: f32,
}

impl Acquisition {
    /// Where anatomy point (u, v) lands in the output image, in pixels.
    #[cfg(test)]
    pub(crate) fn to_image(&self, u: f32, v: f32, n: usize) -> (f32, f32) {
        let (s, c) = self.rotation.sin_cos();
        let (du, dv) = (u - 0.5, v - 0.5);
        let x = 0.5 + self.shift.0 + self.scale * (c * du - s * dv);
        let y = 0.5 + self.shift.1 + self.scale * (s * du + c * dv);
        (x * n as f32, y * n as f32)
    }
}

/// Draws the anatomy of a record. Body build comes from the patient's
/// stream (follow-ups look like the same person), breathing, positioning
/// and exposure from the image's.
pub(crate) fn draw(seed: u64, record: &SyntheticRecord) -> (Anatomy, Acquisition) {
    let patient = u64::from(record.patient_id.saturating_sub(1));
    let mut body = seeds::rng(seed, Domain::Patient, patient, seeds::PATIENT_BODY);
    let mut image = seeds::rng(
        seed,
        Domain::Image,
        record.index as u64,
        seeds::IMAGE_ACQUISITION,
    );
    let age = f32::from(record.age.min(95));
    let ap = record.view == View::Ap;

    let cx = 0.5 + body.uni(-0.012, 0.012);
    let w_base = body.uni(0.33, 0.39);
    let w = [w_base * body.uni(0.98, 1.02), w_base * body.uni(0.95, 0.99)];
    let apex = body.uni(0.10, 0.135);
    let apex_y = [
        apex + body.uni(-0.004, 0.004),
        apex + body.uni(-0.004, 0.004),
    ];
    let apex_r = [body.uni(0.5, 0.6), body.uni(0.5, 0.6)];
    let dome0 = body.uni(0.66, 0.71);
    let dome_y = [dome0, dome0 + body.uni(0.01, 0.03)];
    let cp_drop = [body.uni(0.065, 0.09), body.uni(0.065, 0.09)];
    let dome_r = [body.uni(0.4, 0.55), body.uni(0.4, 0.55)];
    let mediastinum = body.uni(0.045, 0.055);
    let ctr = body.uni(0.39, 0.46);
    let heart_ratio = body.uni(1.2, 1.35);
    let heart_tilt = body.uni(0.35, 0.6);
    let heart_off = body.uni(0.28, 0.4);
    let body_margin = body.uni(0.05, 0.09);
    let neck_hw = body.uni(0.07, 0.09);
    let tissue = body.uni(0.40, 0.47);
    let air = body.uni(0.31, 0.36);
    let air = [air * body.uni(0.98, 1.02), air * body.uni(0.98, 1.02)];
    let vessel_gain = body.uni(0.85, 1.15);
    let rib_count = body.uni(9.2, 10.2);
    let rib_half = body.uni(0.0085, 0.011);
    let bone = body.uni(0.065, 0.09) * (1.0 - 0.25 * age / 95.0);
    let clavicle = body.uni(0.015, 0.04);
    let bubble = body.uni(0.7, 1.3);
    let has_bubble = body.chance(0.8);

    // Breathing depth moves both domes together.
    let breath = image.uni(-0.015, 0.015) + if ap { -0.025 } else { 0.0 };
    let dome_y = [dome_y[0] + breath, dome_y[1] + breath];
    let cp_y = [dome_y[0] + cp_drop[0], dome_y[1] + cp_drop[1]];
    // AP: the heart is far from the detector, so magnified.
    let magnify = if ap { 1.1 } else { 1.0 };
    let mut heart =
        Heart::with_half_width(ctr * (w[0] + w[1]) * 0.5 * magnify, heart_ratio, heart_tilt);
    heart.off = heart.half_width() * heart_off;
    heart.seat(dome_y[1]);
    let rib_start = apex - 0.01;
    let anatomy = Anatomy {
        cx,
        w,
        apex_y,
        apex_r,
        dome_y,
        cp_y,
        dome_r,
        mediastinum: mediastinum * magnify,
        aortic_knob: 0.01 + 0.014 * age / 95.0,
        heart,
        body_hw: w[0].max(w[1]) + body_margin,
        neck_hw,
        tissue,
        air,
        vessel_gain,
        rib_start,
        rib_spacing: (cp_y[0] - rib_start) / rib_count,
        rib_half,
        bone,
        clavicle_y: apex + clavicle - if ap { 0.035 } else { 0.0 },
        gastric_bubble: has_bubble.then_some(bubble),
        female: record.sex == Sex::Female,
        ap,
        pneumothorax: None,
    };
    let acquisition = Acquisition {
        shift: (image.uni(-0.025, 0.025), image.uni(-0.025, 0.025)),
        rotation: image.uni(-0.05, 0.05),
        scale: image.uni(0.94, 1.04),
        gain: image.uni(0.9, 1.08),
        gamma: image.uni(0.85, 1.2),
        offset: image.uni(0.02, 0.07),
        haze: if ap { image.uni(0.04, 0.08) } else { 0.0 },
        heel: image.uni(-0.05, 0.05),
        noise: image.uni(0.8, 2.5),
    };
    (anatomy, acquisition)
}

/// A vessel segment still to draw: start, angle, length, half-width,
/// opacity, depth in the tree.
type Branch = ((f32, f32), f32, f32, f32, f32, u32);

/// A curved bone band: centre line `shape`, over distances `r` from the
/// midline, of half-thickness `half`.
pub(crate) struct Bone {
    pub shape: BoneShape,
    pub r: (f32, f32),
    pub half: f32,
    pub density: f32,
}

pub(crate) enum BoneShape {
    /// Up from the spine, then arching down to the chest wall.
    PosteriorRib { y0: f32, w: f32 },
    /// From the chest wall down towards the sternum.
    AnteriorRib { end: f32, w: f32 },
    /// From the sternum out and up to the shoulder.
    Clavicle { y: f32, reach: f32 },
}

impl BoneShape {
    /// Centre height and slope (dy/dr) at distance r from the midline.
    pub(crate) fn at(&self, r: f32) -> (f32, f32) {
        match *self {
            BoneShape::PosteriorRib { y0, w } => {
                let t = r / w;
                (y0 + w * (-0.2 * t + 0.45 * t * t), -0.2 + 0.9 * t)
            }
            BoneShape::AnteriorRib { end, w } => {
                let t = r / w;
                (
                    end + w * (0.45 * (1.0 - t) + 0.1 * (1.0 - t).powi(2)),
                    -0.45 - 0.2 * (1.0 - t),
                )
            }
            BoneShape::Clavicle { y, reach } => {
                let t = r / reach;
                (
                    y + 0.012 + 0.015 * t - 0.055 * t * t,
                    (0.015 - 0.11 * t) / reach,
                )
            }
        }
    }
}

/// Lung-edge data of one canvas row, in pixels from the midline.
#[derive(Clone, Copy)]
struct LungRow {
    med: f32,
    lat: f32,
    mid: f32,
    inv_half: f32,
    /// Air of this row (apices are thinner).
    air: f32,
}

struct Row {
    body: f32,
    mediastinum: [f32; 2],
    lung: [Option<LungRow>; 2],
    trachea: f32,
    spine: f32,
    /// Mediastinal density of this row: fades in over the thoracic inlet.
    inlet: f32,
    /// Beyond this distance from the midline (px) no central structure
    /// (mediastinum, heart, spine, trachea) reaches: skip them.
    central: f32,
}

impl Anatomy {
    /// Half-width of the mediastinum on one side at height v (aortic knob on the left).
    pub(crate) fn mediastinal(&self, side: usize, v: f32) -> f32 {
        let knob_v = self.apex_y[1] + 0.17;
        let knob = if side == 1 {
            self.aortic_knob * (-((v - knob_v) / 0.03).powi(2)).exp()
        } else {
            0.0
        };
        // Narrow at the thoracic inlet, wider at the hila.
        let widen = 0.025 * ((v - self.apex_y[0]) / 0.3).clamp(0.0, 1.0);
        self.mediastinum + widen + knob
    }

    /// How far the heart reaches from the midline on one side at height v
    /// (negative or zero where it does not reach that side).
    pub(crate) fn heart_extent(&self, side: usize, v: f32) -> f32 {
        let h = &self.heart;
        let (a, b, c) = h.form();
        let dy = v - h.cy;
        // Solve A x² + B dy x + C dy² − 1 = 0 for the ellipse's x at this row.
        let disc = (b * dy).powi(2) - 4.0 * a * (c * dy * dy - 1.0);
        if disc <= 0.0 {
            return 0.0;
        }
        let root = disc.sqrt();
        if side == 1 {
            h.off + (-b * dy + root) / (2.0 * a)
        } else {
            -(h.off + (-b * dy - root) / (2.0 * a))
        }
    }

    /// Medial and lateral edge of a lung at height v (distances from the
    /// midline), or None above the apex / below the costophrenic angle.
    pub(crate) fn lung_span(&self, side: usize, v: f32) -> Option<(f32, f32)> {
        let (apex, bottom) = (self.apex_y[side], self.cp_y[side]);
        if v <= apex || v >= bottom {
            return None;
        }
        let t = (v - apex) / (bottom - apex);
        let w = self.w[side];
        let ra = self.apex_r[side] * w;
        // Quarter-circle rounding of the apex, faster laterally.
        let round = |k: f32| {
            let s = (t / k).min(1.0);
            (1.0 - (1.0 - s) * (1.0 - s)).sqrt()
        };
        let lat = ra + (w * (0.94 + 0.06 * t) - ra) * round(0.3);
        let med = (ra * (1.0 - round(0.22)))
            .max(self.mediastinal(side, v))
            .max(self.heart_extent(side, v));
        (lat > med).then_some((med, lat))
    }

    /// Height of the diaphragm under lung `side` at distance r from the midline.
    pub(crate) fn dome(&self, side: usize, r: f32) -> f32 {
        let w = self.w[side];
        let rd = self.dome_r[side] * w;
        let t = (r - rd) / (w - rd);
        let curve = if t < 0.0 { 0.35 * t * t } else { t * t };
        self.dome_y[side] + (self.cp_y[side] - self.dome_y[side]) * curve
    }

    /// The point at fraction `tv` down the lung (apex 0, dome 1) and `tl`
    /// across it (medial 0, lateral 1), if it lies inside the lung.
    pub(crate) fn lung_point(&self, side: usize, tv: f32, tl: f32) -> Option<(f32, f32)> {
        let v = self.apex_y[side] + tv * (self.dome_y[side] - self.apex_y[side]);
        let (med, lat) = self.lung_span(side, v)?;
        let r = med + tl * (lat - med);
        (v < self.dome(side, r) - 0.01).then_some((self.cx + sign(side) * r, v))
    }

    /// A point inside lung `side` within the given fractions, tried a few
    /// times; falls back to mid-lung, which always exists.
    pub(crate) fn sample_lung_point(
        &self,
        rng: &mut impl Rng,
        side: usize,
        tv: (f32, f32),
        tl: (f32, f32),
    ) -> (f32, f32) {
        for _ in 0..24 {
            let p = self.lung_point(side, rng.uni(tv.0, tv.1), rng.uni(tl.0, tl.1));
            if let Some(p) = p {
                return p;
            }
        }
        self.lung_point(side, 0.55, 0.5).unwrap_or((
            self.cx + sign(side) * self.w[side] * 0.6,
            (self.apex_y[side] + self.dome_y[side]) * 0.5,
        ))
    }

    /// Outline of the body: neck, shoulders (widest), a dip at the armpits,
    /// chest wall, slightly narrower abdomen; smooth between control points.
    fn body_half_width(&self, v: f32) -> f32 {
        let apex = self.apex_y[0];
        let wall = self.body_hw;
        let points = [
            (apex - 0.16, self.neck_hw),
            (apex - 0.09, self.neck_hw * 1.1),
            (apex - 0.02, wall + 0.06),
            (apex + 0.1, wall + 0.02),
            (apex + 0.22, wall),
            (0.75, wall),
            (1.05, wall - 0.03),
        ];
        let mut prev = points[0];
        if v <= prev.0 {
            return prev.1;
        }
        for &next in &points[1..] {
            if v <= next.0 {
                let t = (v - prev.0) / (next.0 - prev.0);
                return prev.1 + (next.1 - prev.1) * t * t * (3.0 - 2.0 * t);
            }
            prev = next;
        }
        prev.1
    }

    fn row(&self, v: f32, n: f32) -> Row {
        let body = self.body_half_width(v);
        let inlet = ((v - (self.apex_y[0] - 0.08)) / 0.09).clamp(0.0, 1.0);
        let mediastinum = SIDES.map(|side| self.mediastinal(side, v) * n);
        let lung = SIDES.map(|side| {
            self.lung_span(side, v).map(|(med, lat)| {
                let t = ((v - self.apex_y[side]) / 0.14).clamp(0.0, 1.0);
                LungRow {
                    med: med * n,
                    lat: lat * n,
                    mid: (med + lat) * 0.5 * n,
                    inv_half: 2.0 / ((lat - med) * n),
                    air: self.air[side] * (0.7 + 0.3 * t),
                }
            })
        });
        let carina = self.apex_y[0] + 0.16;
        let trachea = if v < carina {
            0.013 * n
        } else {
            (0.013 - (v - carina) * 0.6).max(0.0) * n
        };
        // Vertebrae: bright bodies, darker disc spaces.
        let phase = ((v - self.rib_start) / self.rib_spacing).fract();
        let disc = (phase - 0.85).abs() < 0.07;
        let heart = self.heart_extent(0, v).max(self.heart_extent(1, v)) * n;
        let central = mediastinum[0]
            .max(mediastinum[1])
            .max(heart)
            .max(trachea)
            .max(0.03 * n)
            + 4.0 * (0.0015 * n).max(1.0);
        Row {
            body: body * n,
            central,
            mediastinum,
            lung,
            trachea,
            spine: if disc { 0.025 } else { 0.045 },
            inlet: inlet * inlet * (3.0 - 2.0 * inlet),
        }
    }

    /// Paints the normal chest. `markings` is the patient's stream for
    /// vessels and lung texture.
    pub(crate) fn paint(&self, canvas: &mut Canvas, markings: &mut ChaCha8Rng) {
        let n = canvas.n;
        let nf = n as f32;
        let inv = 1.0 / nf;
        let edge = (0.0015 * nf).max(1.0);
        let inv_edge = 1.0 / edge;
        let cx = self.cx * nf;
        let heart_cx = (self.cx + self.heart.off) * nf;
        let heart_cy = self.heart.cy * nf;
        let (ha, hb, hc) = self.heart.form();
        let (ha, hb, hc) = (ha / (nf * nf), hb / (nf * nf), hc / (nf * nf));
        // (1 − q) · k ≈ distance inside the outline in edge widths.
        let heart_k = self.heart.b * nf * 0.5 * inv_edge;
        let spine_hw = 0.028 * nf;
        let liver_blend = 1.0 / (0.06 * nf);
        let domes: Vec<f32> = (0..n)
            .map(|x| {
                let dx = (x as f32 + 0.5) - cx;
                let side = usize::from(dx > 0.0);
                self.dome(side, dx.abs() * inv) * nf
            })
            .collect();
        let texture = Texture::new(markings, n);

        for y in 0..n {
            let yf = y as f32 + 0.5;
            let v = yf * inv;
            let row = self.row(v, nf);
            let base = y * n;
            let tex_row = texture.row(v);
            for (x, &dome) in domes.iter().enumerate() {
                let xf = x as f32 + 0.5;
                let dx = xf - cx;
                let side = usize::from(dx > 0.0);
                let r = dx.abs();
                let body = ramp((row.body - r) * inv_edge);
                let i = base + x;
                if body <= 0.0 {
                    canvas.tissue[i] = 0.02;
                    continue;
                }
                // Thickness of a round body: thinner at its edges.
                let rel = (r / row.body).min(1.0);
                let mut e = self.tissue * (0.5 + 0.5 * (1.0 - rel * rel).sqrt());
                let below = ramp((yf - dome) * inv_edge * 0.5);
                // Liver under the right dome is denser than the stomach side.
                e += below * (0.05 + 0.02 * ramp(-dx * liver_blend));
                if r < row.central && row.inlet > 0.0 {
                    let med = ramp((row.mediastinum[side] - r) * inv_edge)
                        * 0.17
                        * row.inlet
                        * (1.0 - below);
                    let (hx, hy) = (xf - heart_cx, yf - heart_cy);
                    let q = ha * hx * hx + hb * hx * hy + hc * hy * hy;
                    // Below the dome the heart is lost in the liver's density.
                    let heart = ramp((1.0 - q) * heart_k) * 0.2 * (1.0 - below);
                    e += med.max(heart);
                    e += ramp((spine_hw - r) * inv_edge) * row.spine * row.inlet;
                }
                if r < row.central {
                    e -= ramp((row.trachea - r) * inv_edge) * 0.12;
                }
                canvas.tissue[i] = 0.02 + body * e;

                if let Some(lung) = row.lung[side] {
                    let d = (r - lung.med).min(lung.lat - r).min(dome - yf);
                    if d > -edge {
                        let q = (r - lung.mid) * lung.inv_half;
                        let thick = 0.72 + 0.28 * (1.0 - q * q).max(0.0);
                        canvas.air[i] = ramp(d * inv_edge) * lung.air * thick;
                        canvas.air_left[i] = 1.0 - texture.at(&tex_row, x);
                    }
                }
            }
        }
        self.paint_bones(canvas);
        self.paint_soft_extras(canvas);
        self.paint_vessels(canvas, markings);
        if let Some((side, depth)) = self.pneumothorax {
            self.paint_pneumothorax(canvas, side, depth);
        }
    }

    /// Ribs (posterior: from the spine out and down; anterior: fainter,
    /// from the wall down towards the sternum) and the clavicle of one side.
    pub(crate) fn bones(&self, side: usize) -> Vec<Bone> {
        let w = self.w[side];
        let mut bones = Vec::new();
        let mut k = 0;
        loop {
            let y0 = self.rib_start + k as f32 * self.rib_spacing;
            if y0 > self.cp_y[side] + 0.02 {
                break;
            }
            bones.push(Bone {
                shape: BoneShape::PosteriorRib { y0, w },
                r: (0.02, w + 0.03),
                half: self.rib_half,
                density: self.bone,
            });
            let end = y0 + w * 0.25;
            if end < self.dome_y[side] - 0.02 {
                bones.push(Bone {
                    shape: BoneShape::AnteriorRib { end, w },
                    r: (0.3 * w, w + 0.02),
                    half: self.rib_half * 1.2,
                    density: self.bone * 0.45,
                });
            }
            k += 1;
        }
        let reach = w + 0.06;
        bones.push(Bone {
            shape: BoneShape::Clavicle {
                y: self.clavicle_y,
                reach,
            },
            r: (0.025, reach),
            half: 0.0095,
            density: 0.16,
        });
        bones
    }

    fn paint_bones(&self, canvas: &mut Canvas) {
        for side in SIDES {
            for bone in self.bones(side) {
                self.paint_bone(canvas, side, &bone);
            }
        }
    }

    /// Rasterises one curved bone column by column, cortex a little
    /// brighter than the middle.
    fn paint_bone(&self, canvas: &mut Canvas, side: usize, bone: &Bone) {
        let n = canvas.n;
        let nf = n as f32;
        let (r0, r1) = bone.r;
        let x_at = |r: f32| (self.cx + sign(side) * r) * nf;
        let (xa, xb) = (x_at(r0), x_at(r1));
        let (x0, x1) = (
            xa.min(xb).max(0.0) as usize,
            (xa.max(xb).ceil().max(0.0) as usize).min(n),
        );
        for x in x0..x1 {
            let r = ((x as f32 + 0.5) / nf - self.cx).abs();
            if r < r0 || r > r1 {
                continue;
            }
            let fade = ramp((r - r0) / 0.02 - 0.5) * ramp((r1 - r) / 0.02 - 0.5);
            let (yc, slope) = bone.shape.at(r);
            let hv = bone.half * nf * (1.0 + slope * slope).sqrt();
            let yc = yc * nf;
            let ya = (yc - hv - 1.0).floor().max(0.0) as usize;
            let yb = ((yc + hv + 1.0).ceil().max(0.0) as usize).min(n);
            for y in ya..yb {
                let i = y * n + x;
                // Bones only inside the body outline (background is 0.02).
                let body = ((canvas.tissue[i] - 0.02) * 20.0).clamp(0.0, 1.0);
                let d = ((y as f32 + 0.5) - yc).abs() / hv;
                let cover = ramp((1.0 - d) * hv);
                canvas.tissue[i] += bone.density * fade * cover * body * (0.8 + 0.2 * d * d);
            }
        }
    }

    /// Breast shadows, AP scapulae and the stomach bubble.
    fn paint_soft_extras(&self, canvas: &mut Canvas) {
        let cx = self.cx;
        for side in SIDES {
            let s = sign(side);
            let w = self.w[side];
            if self.female {
                // Broad, faint, fading upwards; only the lower edge is crisp.
                let (rc, vc) = (cx + s * 0.6 * w, self.dome_y[side] - 0.02);
                let (rx, ry) = (0.45 * w, 0.14);
                canvas.density_in((rc - rx, vc - ry, rc + rx, vc + ry), |u, v| {
                    let q = ((u - rc) / rx).powi(2) + ((v - vc) / ry).powi(2);
                    let lower = ramp((1.0 - q) * 30.0 - 0.5);
                    let rise = ((v - (vc - ry)) / (2.0 * ry)).clamp(0.0, 1.0);
                    0.045 * lower * rise * rise
                });
            }
            if self.ap {
                // Medial border of the scapula projected over the lung edge.
                let (v0, v1) = (self.apex_y[side] + 0.04, self.apex_y[side] + 0.32);
                let (ua, ub) = (cx + s * (w - 0.09), cx + s * (w + 0.05));
                canvas.density_in((ua.min(ub), v0, ua.max(ub), v1), |u, v| {
                    let t = (v - v0) / (v1 - v0);
                    let border = w - 0.085 + 0.05 * t;
                    let r = (u - cx) * s;
                    0.05 * ramp((r - border) / 0.012)
                        * ramp((w + 0.05 - r) / 0.01)
                        * ramp(t * 12.0 - 0.5)
                        * ramp((1.0 - t) * 12.0 - 0.5)
                });
            }
        }
        if let Some(size) = self.gastric_bubble {
            let (uc, vc) = (cx + 0.55 * self.w[1], self.dome_y[1] + 0.045);
            let (rx, ry) = (0.04 * size, 0.025 * size);
            canvas.density_in((uc - rx, vc - ry, uc + rx, vc + ry), |u, v| {
                let q = ((u - uc) / rx).powi(2) + ((v - vc) / ry).powi(2);
                // Gas above a flat fluid level.
                -0.12 * ramp((1.0 - q) * 8.0) * ramp((vc + 0.2 * ry - v) * 400.0)
            });
        }
    }

    /// Vessel trees branching out of each hilum, thinning and fading towards
    /// the periphery, plus the hilar shadows themselves.
    fn paint_vessels(&self, canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
        for side in SIDES {
            let s = sign(side);
            let w = self.w[side];
            let v_h = self.apex_y[side] + 0.38 * (self.cp_y[side] - self.apex_y[side]);
            let r_h = self
                .mediastinal(side, v_h)
                .max(self.heart_extent(side, v_h))
                + 0.012;
            let hilum = (self.cx + s * r_h, v_h);
            canvas.puff_opacity(hilum, (0.02, 0.035), 0.3 * self.vessel_gain.min(1.0));
            let scale = w / 0.37;
            let mut stack: Vec<Branch> = Vec::new();
            for base in [-1.15f32, -0.6, -0.05, 0.45, 0.95] {
                let length = rng.uni(0.05, 0.065) * scale * if base > 0.3 { 1.2 } else { 1.0 };
                stack.push((hilum, base + rng.uni(-0.12, 0.12), length, 0.0065, 0.3, 0));
            }
            while let Some((p, angle, length, half, strength, depth)) = stack.pop() {
                // Two sub-segments with a random bend, so vessels curve.
                let bend = rng.uni(-0.25, 0.25);
                let mid_angle = angle + bend;
                let m = (
                    p.0 + s * mid_angle.cos() * length * 0.5,
                    p.1 + mid_angle.sin() * length * 0.5,
                );
                let end_angle = angle - bend * 0.5;
                let q = (
                    m.0 + s * end_angle.cos() * length * 0.5,
                    m.1 + end_angle.sin() * length * 0.5,
                );
                let dist = ((q.0 - hilum.0).powi(2) + (q.1 - hilum.1).powi(2)).sqrt();
                let fade = 1.0 - 0.7 * (dist / w).min(1.0);
                let k = strength * fade * self.vessel_gain;
                canvas.tube_opacity(p, m, half * scale, k);
                canvas.tube_opacity(m, q, half * scale * 0.92, k);
                if depth < 6 {
                    let spread = rng.uni(0.2, 0.45);
                    let tilt = rng.uni(-0.15, 0.15);
                    for a in [end_angle - spread + tilt, end_angle + spread + tilt] {
                        let len = length * rng.uni(0.7, 0.85);
                        stack.push((
                            q,
                            a.clamp(-1.6, 1.6),
                            len,
                            half * 0.74,
                            strength * 0.9,
                            depth + 1,
                        ));
                    }
                }
            }
        }
    }

    /// A band along the chest wall and apex where the lung has fallen away:
    /// more air and no markings, behind a thin visceral pleural line.
    fn paint_pneumothorax(&self, canvas: &mut Canvas, side: usize, depth: f32) {
        let n = canvas.n;
        let nf = n as f32;
        let s = sign(side);
        let line_half = (0.0012 * nf).max(0.8);
        for y in 0..n {
            let v = (y as f32 + 0.5) / nf;
            let Some((med, lat)) = self.lung_span(side, v) else {
                continue;
            };
            let inner = lat - depth;
            for x in 0..n {
                let r = ((x as f32 + 0.5) / nf - self.cx) * s;
                if r <= med || r > lat + 0.01 {
                    continue;
                }
                let i = y * n + x;
                let band = ramp((r - inner) * nf);
                if band > 0.0 {
                    canvas.air_left[i] += (1.0 - canvas.air_left[i]) * band;
                    canvas.air[i] *= 1.0 + 0.15 * band;
                }
                if inner > med + 0.01 && v < self.dome(side, inner) {
                    let d = ((r - inner) * nf).abs() / line_half;
                    if d < 1.5 {
                        canvas.tissue[i] += 0.1 * ramp(1.0 - d);
                    }
                }
            }
        }
    }
}

/// Three octaves of value noise for the lung parenchyma (a faint mottled
/// texture), on fixed grids so it looks the same at any size.
struct Texture {
    coarse: Grid,
    fine: Grid,
    finest: Grid,
}

struct Grid {
    cells: usize,
    values: Vec<f32>,
    /// Lattice column and weight of every canvas column (same for all rows).
    columns: Vec<(usize, f32)>,
}

/// Interpolation weights of one row: (lattice row, fraction) per grid.
struct TextureRow {
    coarse: (usize, f32),
    fine: (usize, f32),
    finest: (usize, f32),
}

impl Grid {
    fn new(cells: usize, rng: &mut ChaCha8Rng, n: usize) -> Self {
        let side = cells + 2;
        let mut grid = Grid {
            cells,
            values: (0..side * side).map(|_| rng.random::<f32>()).collect(),
            columns: Vec::new(),
        };
        grid.columns = (0..n)
            .map(|x| grid.locate((x as f32 + 0.5) / n as f32))
            .collect();
        grid
    }

    fn locate(&self, t: f32) -> (usize, f32) {
        let g = t.clamp(0.0, 1.0) * self.cells as f32;
        let i = g.floor();
        let f = g - i;
        (i as usize, f * f * (3.0 - 2.0 * f))
    }

    fn at(&self, (j, fy): (usize, f32), x: usize) -> f32 {
        let (i, fx) = self.columns.get(x).copied().unwrap_or((0, 0.0));
        let side = self.cells + 2;
        let at = |a: usize, b: usize| self.values.get(b * side + a).copied().unwrap_or(0.5);
        let top = at(i, j) + (at(i + 1, j) - at(i, j)) * fx;
        let bottom = at(i, j + 1) + (at(i + 1, j + 1) - at(i, j + 1)) * fx;
        top + (bottom - top) * fy
    }
}

impl Texture {
    fn new(rng: &mut ChaCha8Rng, n: usize) -> Self {
        Texture {
            coarse: Grid::new(24, rng, n),
            fine: Grid::new(72, rng, n),
            finest: Grid::new(160, rng, n),
        }
    }

    fn row(&self, v: f32) -> TextureRow {
        TextureRow {
            coarse: self.coarse.locate(v),
            fine: self.fine.locate(v),
            finest: self.finest.locate(v),
        }
    }

    /// Opacity of the parenchyma at canvas column x on a row.
    fn at(&self, row: &TextureRow, x: usize) -> f32 {
        0.12 * self.coarse.at(row.coarse, x)
            + 0.24 * self.fine.at(row.fine, x)
            + 0.16 * self.finest.at(row.finest, x)
    }
}
