//! Tests of the training augmentations, tensor conversion and TTA views.

use chexvision_vision::{
    apply_params, augment, draw_params, to_tensor_imagenet, tta_views, AugmentConfig,
    AugmentParams, EraseRect, GrayImage8, VisionError, IMAGENET_MEAN, IMAGENET_STD,
};

fn image_from_fn(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> GrayImage8 {
    let mut pixels = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            pixels.push(f(x, y));
        }
    }
    GrayImage8::new(w, h, pixels).unwrap()
}

/// Smooth, asymmetric, X-ray-ish test image.
fn smooth_image(w: u32, h: u32) -> GrayImage8 {
    image_from_fn(w, h, |x, y| {
        let fx = x as f64 / w as f64;
        let fy = y as f64 / h as f64;
        let v = 60.0
            + 80.0 * fx
            + 40.0 * fy
            + 30.0 * ((fx * 6.0).sin() * (fy * 4.0).cos())
            + 20.0 * (-((fx - 0.3).powi(2) + (fy - 0.6).powi(2)) * 30.0).exp();
        v.round() as u8
    })
}

/// Black image with one bright pixel.
fn marker_image(w: u32, h: u32, mx: u32, my: u32) -> GrayImage8 {
    image_from_fn(w, h, |x, y| if (x, y) == (mx, my) { 255 } else { 0 })
}

fn argmax(img: &GrayImage8) -> (u32, u32) {
    let (i, _) = img
        .pixels
        .iter()
        .enumerate()
        .max_by_key(|&(i, &v)| (v, std::cmp::Reverse(i)))
        .unwrap();
    (i as u32 % img.width, i as u32 / img.width)
}

fn mean(img: &GrayImage8) -> f64 {
    img.pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / img.pixels.len() as f64
}

fn variance(img: &GrayImage8) -> f64 {
    let m = mean(img);
    img.pixels
        .iter()
        .map(|&v| (f64::from(v) - m).powi(2))
        .sum::<f64>()
        / img.pixels.len() as f64
}

#[test]
fn same_seed_same_output_other_seed_differs() {
    let img = smooth_image(64, 48);
    let cfg = AugmentConfig::default();
    let a = augment(&img, &cfg, 42).unwrap();
    let b = augment(&img, &cfg, 42).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        draw_params(&cfg, 64, 48, 42).unwrap(),
        draw_params(&cfg, 64, 48, 42).unwrap()
    );
    let c = augment(&img, &cfg, 43).unwrap();
    assert_ne!(a.pixels, c.pixels);
    assert_eq!((a.width, a.height), (64, 48));
}

#[test]
fn identity_params_return_input_unchanged() {
    let img = smooth_image(37, 23);
    let out = apply_params(&img, &AugmentParams::identity()).unwrap();
    assert_eq!(out, img);
    // A config with every augmentation off is the identity for any seed.
    let off = AugmentConfig {
        hflip_p: 0.0,
        rotate_deg: 0.0,
        translate_frac: 0.0,
        shear_deg: 0.0,
        brightness: 0.0,
        contrast: 0.0,
        blur_p: 0.0,
        erase_p: 0.0,
        ..AugmentConfig::default()
    };
    for seed in 0..5 {
        assert_eq!(augment(&img, &off, seed).unwrap(), img);
    }
}

#[test]
fn hflip_mirrors_and_twice_is_identity() {
    let img = smooth_image(31, 17);
    let flip = AugmentParams {
        hflip: true,
        ..AugmentParams::identity()
    };
    let once = apply_params(&img, &flip).unwrap();
    for y in 0..img.height {
        for x in 0..img.width {
            assert_eq!(once.get(x, y), img.get(img.width - 1 - x, y));
        }
    }
    assert_ne!(once, img);
    assert_eq!(apply_params(&once, &flip).unwrap(), img);
}

#[test]
fn flip_is_applied_after_the_affine_warp() {
    // Translate right by 4, then mirror: marker at x=5 goes to 9, then to
    // w-1-9.
    let img = marker_image(30, 20, 5, 10);
    let p = AugmentParams {
        hflip: true,
        translate_x: 4.0,
        ..AugmentParams::identity()
    };
    let out = apply_params(&img, &p).unwrap();
    assert_eq!(argmax(&out), (30 - 1 - 9, 10));
    assert_eq!(out.get(30 - 1 - 9, 10), Some(255));
}

#[test]
fn rotate_plus_then_minus_keeps_centre_close() {
    let (w, h) = (96u32, 80u32);
    let img = smooth_image(w, h);
    let rot = |a: f64| AugmentParams {
        angle_deg: a,
        ..AugmentParams::identity()
    };
    let back = apply_params(&apply_params(&img, &rot(7.0)).unwrap(), &rot(-7.0)).unwrap();
    let mut err = 0.0;
    let mut n = 0.0;
    for y in h / 4..3 * h / 4 {
        for x in w / 4..3 * w / 4 {
            err += (f64::from(img.get(x, y).unwrap()) - f64::from(back.get(x, y).unwrap())).abs();
            n += 1.0;
        }
    }
    let mae = err / n;
    assert!(mae < 2.0, "mean abs error {mae}");
    // The single rotation itself does change the image.
    let once = apply_params(&img, &rot(7.0)).unwrap();
    assert_ne!(once, img);
}

#[test]
fn rotation_by_90_moves_marker_counter_clockwise() {
    // 31x31: centre (15, 15). A marker 10 px right of the centre ends up
    // 10 px above it (counter-clockwise on screen, y down).
    let img = marker_image(31, 31, 25, 15);
    let p = AugmentParams {
        angle_deg: 90.0,
        ..AugmentParams::identity()
    };
    let out = apply_params(&img, &p).unwrap();
    assert_eq!(argmax(&out), (15, 5));
    assert!(out.get(15, 5).unwrap() >= 250);
    assert_eq!(out.get(25, 15), Some(0));
    // -90 moves it below the centre.
    let p = AugmentParams {
        angle_deg: -90.0,
        ..AugmentParams::identity()
    };
    assert_eq!(argmax(&apply_params(&img, &p).unwrap()), (15, 25));
}

#[test]
fn translation_shifts_marker_by_k() {
    let img = marker_image(40, 40, 10, 12);
    for (kx, ky) in [(5i32, 3i32), (-4, 0), (0, -7)] {
        let p = AugmentParams {
            translate_x: f64::from(kx),
            translate_y: f64::from(ky),
            ..AugmentParams::identity()
        };
        let out = apply_params(&img, &p).unwrap();
        let expect = ((10 + kx) as u32, (12 + ky) as u32);
        assert_eq!(argmax(&out), expect);
        assert_eq!(out.get(expect.0, expect.1), Some(255));
        assert_eq!(out.pixels.iter().filter(|&&v| v != 0).count(), 1);
    }
}

#[test]
fn shear_moves_rows_away_from_centre_sideways() {
    // x' = x + tan(s) * (y - cy): a marker 10 rows below the centre of a
    // 41x41 image moves right by 10 * tan(45°) = 10.
    let img = marker_image(41, 41, 20, 30);
    let p = AugmentParams {
        shear_deg: 45.0,
        ..AugmentParams::identity()
    };
    let out = apply_params(&img, &p).unwrap();
    assert_eq!(argmax(&out), (30, 30));
}

#[test]
fn out_of_bounds_fill_is_zero() {
    let img = image_from_fn(20, 20, |_, _| 200);
    let p = AugmentParams {
        translate_x: 5.0,
        ..AugmentParams::identity()
    };
    let out = apply_params(&img, &p).unwrap();
    for y in 0..20 {
        for x in 0..5 {
            assert_eq!(out.get(x, y), Some(0));
        }
        for x in 5..20 {
            assert_eq!(out.get(x, y), Some(200));
        }
    }
}

#[test]
fn brightness_scales_the_mean() {
    let img = image_from_fn(50, 40, |x, y| (60 + (x + 2 * y) % 80) as u8);
    let m0 = mean(&img);
    for f in [0.7, 1.2, 1.5] {
        let p = AugmentParams {
            brightness: f,
            ..AugmentParams::identity()
        };
        let m1 = mean(&apply_params(&img, &p).unwrap());
        assert!((m1 / m0 - f).abs() < 0.01, "factor {f}: {m0} -> {m1}");
    }
}

#[test]
fn contrast_zero_is_flat_at_the_mean() {
    let img = smooth_image(33, 29);
    let m = mean(&img);
    let p = AugmentParams {
        contrast: 0.0,
        ..AugmentParams::identity()
    };
    let out = apply_params(&img, &p).unwrap();
    let v = m.round() as u8;
    assert!(out.pixels.iter().all(|&p| p == v), "expected all {v}");
    // Contrast 1.5 widens the spread around the mean.
    let p = AugmentParams {
        contrast: 1.5,
        ..AugmentParams::identity()
    };
    assert!(variance(&apply_params(&img, &p).unwrap()) > variance(&img) * 1.5);
}

#[test]
fn blur_lowers_checkerboard_variance() {
    let img = image_from_fn(
        32,
        32,
        |x, y| if (x / 2 + y / 2) % 2 == 0 { 40 } else { 220 },
    );
    let v0 = variance(&img);
    let mut last = v0;
    for sigma in [0.5, 1.0, 2.0] {
        let p = AugmentParams {
            blur_sigma: Some(sigma),
            ..AugmentParams::identity()
        };
        let out = apply_params(&img, &p).unwrap();
        let v = variance(&out);
        assert!(v < last, "sigma {sigma}: variance {v} not below {last}");
        last = v;
        // The mean is kept (reflect padding, normalised kernel).
        assert!((mean(&out) - mean(&img)).abs() < 1.0);
    }
    assert!(last < v0 * 0.2);
}

#[test]
fn erasing_zeroes_exactly_the_rectangle() {
    let img = image_from_fn(50, 40, |_, _| 200);
    let rect = EraseRect {
        x: 7,
        y: 5,
        width: 12,
        height: 9,
    };
    let p = AugmentParams {
        erase: Some(rect),
        ..AugmentParams::identity()
    };
    let out = apply_params(&img, &p).unwrap();
    for y in 0..40 {
        for x in 0..50 {
            let inside = (7..19).contains(&x) && (5..14).contains(&y);
            assert_eq!(out.get(x, y), Some(if inside { 0 } else { 200 }));
        }
    }
}

#[test]
fn erasing_via_augment_area_fraction_in_range() {
    let (w, h) = (224u32, 200u32);
    let img = image_from_fn(w, h, |_, _| 200);
    let cfg = AugmentConfig {
        hflip_p: 0.0,
        rotate_deg: 0.0,
        translate_frac: 0.0,
        shear_deg: 0.0,
        brightness: 0.0,
        contrast: 0.0,
        blur_p: 0.0,
        erase_p: 1.0,
        ..AugmentConfig::default()
    };
    let area = f64::from(w * h);
    let mut erased = 0;
    for seed in 0..300 {
        let p = draw_params(&cfg, w, h, seed).unwrap();
        let out = augment(&img, &cfg, seed).unwrap();
        let zeros = out.pixels.iter().filter(|&&v| v == 0).count();
        match p.erase {
            Some(r) => {
                erased += 1;
                assert_eq!(zeros as u32, r.width * r.height);
                assert!(r.x + r.width <= w && r.y + r.height <= h);
                // Sides are rounded to whole pixels (as torchvision), so the
                // fraction may leave [0.02, 0.33] by a rounding margin:
                // ±0.5 px on sides of ≥ 15 px is < 7 %.
                let frac = zeros as f64 / area;
                assert!(
                    (0.02 * 0.93..=0.33 * 1.07).contains(&frac),
                    "seed {seed}: fraction {frac}"
                );
                let ratio = f64::from(r.height) / f64::from(r.width);
                assert!((0.25..=4.0).contains(&ratio), "ratio {ratio}");
            }
            None => assert_eq!(zeros, 0),
        }
    }
    // Most draws fit within 10 attempts.
    assert!(erased > 270, "only {erased} of 300 erased");
}

#[test]
fn draw_distribution_over_2000_seeds() {
    let cfg = AugmentConfig::default();
    let (w, h) = (224u32, 224u32);
    let n = 2000;
    let (mut flips, mut blurs, mut erases) = (0, 0, 0);
    let (mut min_angle, mut max_angle) = (f64::MAX, f64::MIN);
    for seed in 0..n {
        let p = draw_params(&cfg, w, h, seed).unwrap();
        flips += usize::from(p.hflip);
        blurs += usize::from(p.blur_sigma.is_some());
        erases += usize::from(p.erase.is_some());
        assert!(p.angle_deg.abs() <= 15.0, "angle {}", p.angle_deg);
        min_angle = min_angle.min(p.angle_deg);
        max_angle = max_angle.max(p.angle_deg);
        assert!(p.translate_x.abs() <= 0.05 * 224.0);
        assert!(p.translate_y.abs() <= 0.05 * 224.0);
        assert!(p.shear_deg.abs() <= 5.0);
        assert!((0.7..=1.3).contains(&p.brightness));
        assert!((0.7..=1.3).contains(&p.contrast));
        if let Some(s) = p.blur_sigma {
            assert!((0.1..=2.0).contains(&s));
        }
    }
    let rate = |k: usize| k as f64 / n as f64;
    assert!((rate(flips) - 0.5).abs() <= 0.05, "flip {}", rate(flips));
    assert!((rate(blurs) - 0.2).abs() <= 0.04, "blur {}", rate(blurs));
    assert!((rate(erases) - 0.1).abs() <= 0.03, "erase {}", rate(erases));
    // Angles cover the range, not a sliver of it.
    assert!(min_angle < -14.0 && max_angle > 14.0);
}

#[test]
fn tensor_values_and_chw_layout() {
    // 3x2 image: pixel 0 at (0,0), 255 at (2,1), 128 elsewhere.
    let img = GrayImage8::new(3, 2, vec![0, 128, 128, 128, 128, 255]).unwrap();
    let t = to_tensor_imagenet(&img);
    assert_eq!(t.len(), 3 * 2 * 3);
    let plane = 6;
    for c in 0..3 {
        let m = f64::from(IMAGENET_MEAN[c]);
        let s = f64::from(IMAGENET_STD[c]);
        let at = |x: usize, y: usize| f64::from(t[c * plane + y * 3 + x]);
        assert!((at(0, 0) - (0.0 - m) / s).abs() < 1e-6, "c{c} black");
        assert!((at(2, 1) - (1.0 - m) / s).abs() < 1e-6, "c{c} white");
        assert!((at(1, 0) - (128.0 / 255.0 - m) / s).abs() < 1e-6);
    }
    // The literal constants.
    assert_eq!(IMAGENET_MEAN, [0.485, 0.456, 0.406]);
    assert_eq!(IMAGENET_STD, [0.229, 0.224, 0.225]);
    // Channels differ (different mean/std), so the planes are distinct.
    assert_ne!(t[0], t[plane]);
    assert_ne!(t[plane], t[2 * plane]);
}

#[test]
fn tta_views_shapes_and_flip() {
    let img = smooth_image(45, 38);
    let views = tta_views(&img).unwrap();
    for v in &views {
        assert_eq!((v.width, v.height, v.pixels.len()), (45, 38, 45 * 38));
    }
    assert_eq!(views[0], img);
    for y in 0..38 {
        for x in 0..45 {
            assert_eq!(views[1].get(x, y), img.get(44 - x, y));
        }
    }
    assert_ne!(views[2], img);
    assert_ne!(views[3], img);
    assert_ne!(views[2], views[3]);
    // Same warp code: ±7° views equal apply_params with those angles.
    let rot = AugmentParams {
        angle_deg: 7.0,
        ..AugmentParams::identity()
    };
    assert_eq!(views[2], apply_params(&img, &rot).unwrap());
}

fn assert_names_field(err: VisionError, field: &str) {
    match err {
        VisionError::InvalidParameter { detail } => {
            assert!(detail.contains(field), "{detail:?} does not name {field}")
        }
        other => panic!("expected InvalidParameter for {field}, got {other:?}"),
    }
}

#[test]
fn bad_config_is_rejected_naming_the_field() {
    assert!(AugmentConfig::default().validate().is_ok());
    let cases: Vec<(AugmentConfig, &str)> = vec![
        (
            AugmentConfig {
                hflip_p: -0.1,
                ..AugmentConfig::default()
            },
            "hflip_p",
        ),
        (
            AugmentConfig {
                blur_p: 1.5,
                ..AugmentConfig::default()
            },
            "blur_p",
        ),
        (
            AugmentConfig {
                erase_p: f64::NAN,
                ..AugmentConfig::default()
            },
            "erase_p",
        ),
        (
            AugmentConfig {
                rotate_deg: f64::NAN,
                ..AugmentConfig::default()
            },
            "rotate_deg",
        ),
        (
            AugmentConfig {
                brightness: -0.3,
                ..AugmentConfig::default()
            },
            "brightness",
        ),
        (
            AugmentConfig {
                shear_deg: 90.0,
                ..AugmentConfig::default()
            },
            "shear_deg",
        ),
        (
            AugmentConfig {
                blur_sigma_max: 0.05,
                ..AugmentConfig::default()
            },
            "blur_sigma_max",
        ),
        (
            AugmentConfig {
                erase_ratio_min: 0.0,
                ..AugmentConfig::default()
            },
            "erase_ratio_min",
        ),
    ];
    let img = smooth_image(16, 16);
    for (cfg, field) in cases {
        assert_names_field(cfg.validate().unwrap_err(), field);
        assert_names_field(augment(&img, &cfg, 0).unwrap_err(), field);
        assert_names_field(draw_params(&cfg, 16, 16, 0).unwrap_err(), field);
    }
}

#[test]
fn bad_params_and_images_are_errors_not_panics() {
    let img = smooth_image(16, 16);
    let outside = AugmentParams {
        erase: Some(EraseRect {
            x: 10,
            y: 0,
            width: 7,
            height: 3,
        }),
        ..AugmentParams::identity()
    };
    assert_names_field(apply_params(&img, &outside).unwrap_err(), "erase");
    let nan_angle = AugmentParams {
        angle_deg: f64::NAN,
        ..AugmentParams::identity()
    };
    assert_names_field(apply_params(&img, &nan_angle).unwrap_err(), "angle_deg");
    let bad_sigma = AugmentParams {
        blur_sigma: Some(0.0),
        ..AugmentParams::identity()
    };
    assert_names_field(apply_params(&img, &bad_sigma).unwrap_err(), "blur_sigma");
    let broken = GrayImage8 {
        width: 4,
        height: 4,
        pixels: vec![0; 3],
    };
    assert!(matches!(
        augment(&broken, &AugmentConfig::default(), 0),
        Err(VisionError::InvalidDimensions { .. })
    ));
    assert!(tta_views(&broken).is_err());
    assert!(draw_params(&AugmentConfig::default(), 0, 5, 0).is_err());
}

#[test]
fn tiny_images_do_not_panic() {
    let cfg = AugmentConfig {
        hflip_p: 1.0,
        blur_p: 1.0,
        erase_p: 1.0,
        ..AugmentConfig::default()
    };
    for (w, h) in [(1u32, 1u32), (1, 7), (7, 1), (2, 2)] {
        let img = image_from_fn(w, h, |x, y| (x * 30 + y * 50) as u8);
        for seed in 0..20 {
            let out = augment(&img, &cfg, seed).unwrap();
            assert_eq!((out.width, out.height), (w, h));
        }
        tta_views(&img).unwrap();
    }
}

/// The warp and blur take fast paths inside the image; they must give what
/// the plain formulas give (written out here the slow way, in f64:
/// per-pixel inverse map, bounds-checked bilinear, reflected taps). The
/// warp samples at f32 positions, so a value right at a rounding boundary
/// may come out one gray level apart: at most 1 level, on few pixels.
#[test]
fn fast_paths_equal_the_plain_formulas() {
    fn reference_warp(img: &GrayImage8, p: &AugmentParams) -> Vec<f32> {
        let (w, h) = (img.width as usize, img.height as usize);
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        let (sin, cos) = p.angle_deg.to_radians().sin_cos();
        let tan = p.shear_deg.to_radians().tan();
        let px = |x: i64, y: i64| -> f64 {
            if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                0.0
            } else {
                f64::from(img.pixels[y as usize * w + x as usize])
            }
        };
        let mut out = vec![0f32; w * h];
        for oy in 0..h {
            for ox in 0..w {
                let x = if p.hflip { w - 1 - ox } else { ox };
                let dx = x as f64 - cx - p.translate_x;
                let dy = oy as f64 - cy - p.translate_y;
                let qx = cos * dx - sin * dy;
                let qy = sin * dx + cos * dy;
                let (sx, sy) = (qx - tan * qy + cx, qy + cy);
                let (x0f, y0f) = (sx.floor(), sy.floor());
                if x0f < -1.0 || y0f < -1.0 || x0f > w as f64 || y0f > h as f64 {
                    continue;
                }
                let (fx, fy) = (sx - x0f, sy - y0f);
                let (x0, y0) = (x0f as i64, y0f as i64);
                let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1, y0) * fx;
                let bottom = px(x0, y0 + 1) * (1.0 - fx) + px(x0 + 1, y0 + 1) * fx;
                out[oy * w + ox] = (top * (1.0 - fy) + bottom * fy) as f32;
            }
        }
        out
    }
    fn reflect(i: i64, n: i64) -> usize {
        let period = 2 * (n - 1);
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - m }) as usize
    }
    fn reference_blur(src: &[f32], w: usize, h: usize, sigma: f64) -> Vec<f32> {
        let radius = (3.0 * sigma).ceil() as i64;
        let weights: Vec<f64> = (-radius..=radius)
            .map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp())
            .collect();
        let sum: f64 = weights.iter().sum();
        let kernel: Vec<f32> = weights.iter().map(|&v| (v / sum) as f32).collect();
        let mut tmp = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f32;
                for (k, &kw) in kernel.iter().enumerate() {
                    acc += kw * src[y * w + reflect(x as i64 + k as i64 - radius, w as i64)];
                }
                tmp[y * w + x] = acc;
            }
        }
        let mut out = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f32;
                for (k, &kw) in kernel.iter().enumerate() {
                    acc += kw * tmp[reflect(y as i64 + k as i64 - radius, h as i64) * w + x];
                }
                out[y * w + x] = acc.clamp(0.0, 255.0);
            }
        }
        out
    }
    let img = smooth_image(61, 47);
    let mut cases = vec![
        (13.0, 4.0, 2.5, -1.5, false, Some(1.3)),
        (-9.0, -3.0, -3.0, 2.0, true, Some(0.4)),
        (90.0, 0.0, 0.0, 0.0, false, Some(2.0)),
        (0.5, 0.0, 0.25, 0.0, true, None),
        // Rows and columns that run along an edge of the image.
        (0.0, 3.0, 0.0, 0.0, false, None),
        (0.0, 0.0, 0.5, 23.0, false, None),
        (0.0, 0.0, -30.0, 0.0, true, None),
        (180.0, 0.0, 0.0, 0.0, true, None),
    ];
    let mut state = 11u64;
    let mut next = |lo: f64, hi: f64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((state >> 11) as f64 / (1u64 << 53) as f64)
    };
    for _ in 0..60 {
        let flip = next(0.0, 1.0) < 0.5;
        let blur = next(0.0, 1.0) < 0.3;
        cases.push((
            next(-20.0, 20.0),
            next(-6.0, 6.0),
            next(-4.0, 4.0),
            next(-4.0, 4.0),
            flip,
            blur.then(|| next(0.2, 2.0)),
        ));
    }
    let (mut differing, mut total) = (0usize, 0usize);
    for (i, (angle, shear, tx, ty, flip, sigma)) in cases.into_iter().enumerate() {
        let params = AugmentParams {
            hflip: flip,
            angle_deg: angle,
            shear_deg: shear,
            translate_x: tx,
            translate_y: ty,
            blur_sigma: sigma,
            ..AugmentParams::identity()
        };
        let mut want = reference_warp(&img, &params);
        if let Some(s) = sigma {
            want = reference_blur(&want, 61, 47, s);
        }
        let want: Vec<u8> = want
            .iter()
            .map(|&v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        let got = apply_params(&img, &params).unwrap();
        for (g, w) in got.pixels.iter().zip(&want) {
            assert!(g.abs_diff(*w) <= 1, "case {i}: {g} against {w}");
            differing += usize::from(g != w);
        }
        total += want.len();
    }
    assert!(
        differing * 1000 <= total,
        "{differing} of {total} pixels one level apart"
    );
}
