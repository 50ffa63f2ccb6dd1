//! Parity with Pillow (resize) and OpenCV (CLAHE) on the committed
//! fixtures of scripts/make_vision_fixtures.py. Run with `--nocapture` to
//! see the measured figures.

mod common;

use chexvision_vision::{clahe, resize_gray8, ResizeFilter};
use common::{compare, load};

const INPUTS: [&str; 3] = ["xray_a", "xray_b", "xray_c"];

fn resize_cases(input: &str) -> Vec<(u32, u32)> {
    let mut sizes = vec![(64, 64), (97, 80)];
    if input == "xray_c" {
        sizes.push((96, 140)); // upscale
    }
    sizes
}

#[test]
fn resize_matches_pillow() {
    let filters = [
        ("bilinear", ResizeFilter::Bilinear),
        ("bicubic", ResizeFilter::Bicubic),
        ("lanczos3", ResizeFilter::Lanczos3),
        ("area", ResizeFilter::Area),
    ];
    for (fname, filter) in filters {
        let mut worst_max = 0u8;
        let mut worst_mean = 0f64;
        for input in INPUTS {
            let src = load(&format!("{input}.png"));
            for (w, h) in resize_cases(input) {
                let want = load(&format!("{input}_resize_{fname}_{w}x{h}.png"));
                let got = resize_gray8(&src, w, h, filter)
                    .unwrap_or_else(|e| panic!("{input} {fname} {w}x{h}: {e}"));
                let (max, mean, within1) = compare(&got, &want);
                println!(
                    "resize {fname:8} {input} -> {w}x{h}: max {max}, mean {mean:.4}, within ±1 {:.3}%",
                    within1 * 100.0
                );
                assert!(
                    mean <= 0.5,
                    "{fname} {input} {w}x{h}: mean abs error {mean}"
                );
                // Area (box) can differ more at single pixels: fast_image_resize
                // and Pillow place box-kernel edges slightly differently.
                if filter != ResizeFilter::Area {
                    assert!(max <= 2, "{fname} {input} {w}x{h}: max abs error {max}");
                }
                worst_max = worst_max.max(max);
                worst_mean = worst_mean.max(mean);
            }
        }
        println!("resize {fname:8} ALL: max {worst_max}, worst mean {worst_mean:.4}");
    }
}

#[test]
fn clahe_matches_opencv() {
    // xray_d (97x64) is CLAHE-only: width not a multiple of 8, height one.
    for input in ["xray_a", "xray_b", "xray_c", "xray_d"] {
        let src = load(&format!("{input}.png"));
        let want = load(&format!("{input}_clahe.png"));
        let got = clahe(&src, 2.0, (8, 8)).unwrap_or_else(|e| panic!("{input}: {e}"));
        let (max, mean, within1) = compare(&got, &want);
        println!(
            "clahe {input} {}x{}: max {max}, mean {mean:.4}, within ±1 {:.4}%",
            src.width,
            src.height,
            within1 * 100.0
        );
        assert!(within1 >= 0.99, "{input}: only {within1} within ±1");
    }
}
