//! The working buffers of one image, in the anatomy frame (before the
//! positioning warp), and the drawing primitives the anatomy and the findings
//! share. Coordinates are normalised: u (x) and v (y) in 0..1 across the
//! square image, so every size looks the same.
//!
//! The final density is `D = tissue − air · air_left`:
//! - `tissue`: soft tissue, bone, mediastinum (additive, bright = dense);
//! - `air`: how much air the lungs hold at a pixel (0 outside them);
//! - `air_left`: the fraction of that air not displaced by vessels, lung
//!   texture or disease (1 = clear lung). Opacities multiply it by
//!   (1 − opacity), so they only ever show inside the lungs, overlap
//!   naturally and never exceed the density of solid tissue.

pub(crate) struct Canvas {
    pub n: usize,
    pub tissue: Vec<f32>,
    pub air: Vec<f32>,
    pub air_left: Vec<f32>,
}

/// 0 below -0.5, 1 above 0.5, smooth in between (t in edge widths).
#[inline]
pub(crate) fn ramp(t: f32) -> f32 {
    let c = (t + 0.5).clamp(0.0, 1.0);
    c * c * (3.0 - 2.0 * c)
}

impl Canvas {
    pub(crate) fn new(n: usize) -> Self {
        Canvas {
            n,
            tissue: vec![0.0; n * n],
            air: vec![0.0; n * n],
            air_left: vec![1.0; n * n],
        }
    }

    /// Pixels per unit of normalised length.
    #[inline]
    pub(crate) fn scale(&self) -> f32 {
        self.n as f32
    }

    /// Pixel index range [lo, hi) covering normalised [a, b].
    fn span(&self, a: f32, b: f32) -> (usize, usize) {
        let n = self.n as f32;
        let lo = (a.min(b) * n - 1.0).floor().clamp(0.0, n) as usize;
        let hi = (a.max(b) * n + 1.0).ceil().clamp(0.0, n) as usize;
        (lo, hi)
    }

    /// Calls `f(index, u, v)` for each pixel centre in the normalised box.
    fn each_in(&self, u0: f32, v0: f32, u1: f32, v1: f32, mut f: impl FnMut(usize, f32, f32)) {
        let (x0, x1) = self.span(u0, u1);
        let (y0, y1) = self.span(v0, v1);
        let inv = 1.0 / self.n as f32;
        for y in y0..y1 {
            let v = (y as f32 + 0.5) * inv;
            for x in x0..x1 {
                f(y * self.n + x, (x as f32 + 0.5) * inv, v);
            }
        }
    }

    /// Opacity `f(u, v)` in 0..1 over a box: air_left *= 1 − f.
    pub(crate) fn opacity_in(
        &mut self,
        (u0, v0, u1, v1): (f32, f32, f32, f32),
        f: impl Fn(f32, f32) -> f32,
    ) {
        let mut left = std::mem::take(&mut self.air_left);
        self.each_in(u0, v0, u1, v1, |i, u, v| {
            let o = f(u, v);
            if o > 0.0 {
                left[i] *= 1.0 - o.min(1.0);
            }
        });
        self.air_left = left;
    }

    /// Extra density `f(u, v)` over a box (may be negative: gas).
    pub(crate) fn density_in(
        &mut self,
        (u0, v0, u1, v1): (f32, f32, f32, f32),
        f: impl Fn(f32, f32) -> f32,
    ) {
        let mut tissue = std::mem::take(&mut self.tissue);
        self.each_in(u0, v0, u1, v1, |i, u, v| tissue[i] += f(u, v));
        self.tissue = tissue;
    }

    /// Gives back air over a box: air_left += (1 − air_left) · f (air bronchograms, bullae).
    pub(crate) fn clear_in(
        &mut self,
        (u0, v0, u1, v1): (f32, f32, f32, f32),
        f: impl Fn(f32, f32) -> f32,
    ) {
        let mut left = std::mem::take(&mut self.air_left);
        self.each_in(u0, v0, u1, v1, |i, u, v| {
            let c = f(u, v).clamp(0.0, 1.0);
            left[i] += (1.0 - left[i]) * c;
        });
        self.air_left = left;
    }

    /// A soft-edged tube from p to q (vessels, bands, lines) as an opacity of
    /// `strength` at its axis. `half_width` is normalised; tubes thinner than
    /// a pixel are drawn one pixel wide and fainter, so they stay visible.
    pub(crate) fn tube_opacity(
        &mut self,
        p: (f32, f32),
        q: (f32, f32),
        half_width: f32,
        strength: f32,
    ) {
        let n = self.scale();
        let mut hw = half_width * n;
        let mut s = strength;
        if hw < 0.75 {
            s *= hw / 0.75;
            hw = 0.75;
        }
        let (px, py) = (p.0 * n, p.1 * n);
        let (dx, dy) = (q.0 * n - px, q.1 * n - py);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        let inv_hw2 = 1.0 / (hw * hw);
        let pad = (hw + 1.0) / n;
        let bbox = (
            p.0.min(q.0) - pad,
            p.1.min(q.1) - pad,
            p.0.max(q.0) + pad,
            p.1.max(q.1) + pad,
        );
        self.opacity_in(bbox, |u, v| {
            let (x, y) = (u * n - px, v * n - py);
            let t = ((x * dx + y * dy) / len2).clamp(0.0, 1.0);
            let (ex, ey) = (x - t * dx, y - t * dy);
            let d2 = (ex * ex + ey * ey) * inv_hw2;
            if d2 >= 1.0 {
                0.0
            } else {
                // Cylinder profile: thickness through a round vessel.
                s * (1.0 - d2).sqrt()
            }
        });
    }

    /// A round opacity: solid to `radius`, then falling off over `soft`
    /// (both normalised); `amp` is the opacity at the centre.
    pub(crate) fn disc_opacity(&mut self, c: (f32, f32), radius: f32, soft: f32, amp: f32) {
        let soft = soft.max(1.0 / self.scale());
        let reach = radius + soft;
        self.opacity_in(
            (c.0 - reach, c.1 - reach, c.0 + reach, c.1 + reach),
            |u, v| {
                let d = ((u - c.0).powi(2) + (v - c.1).powi(2)).sqrt();
                amp * ramp((radius - d) / soft)
            },
        );
    }

    /// A Gaussian puff of opacity (ill-defined patches, haze).
    pub(crate) fn puff_opacity(&mut self, c: (f32, f32), sigma: (f32, f32), amp: f32) {
        let (ix, iy) = (1.0 / (sigma.0 * sigma.0), 1.0 / (sigma.1 * sigma.1));
        let (rx, ry) = (sigma.0 * 2.6, sigma.1 * 2.6);
        self.opacity_in((c.0 - rx, c.1 - ry, c.0 + rx, c.1 + ry), |u, v| {
            let q = (u - c.0).powi(2) * ix + (v - c.1).powi(2) * iy;
            if q > 6.76 {
                0.0
            } else {
                amp * (-0.5 * q).exp()
            }
        });
    }
}
