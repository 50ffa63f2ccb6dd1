//! Bad configurations are refused with the field named.

use chexvision_synth::{encode_png, Generator, GrayImage, SynthConfig, SynthError};

fn config(rows: usize, size_px: u32) -> SynthConfig {
    SynthConfig {
        rows,
        size_px,
        seed: 1,
    }
}

#[test]
fn bad_values_name_the_field() {
    for (bad, field, value) in [
        (config(10, 10), "size_px", "10"),
        (config(10, 63), "size_px", "63"),
        (config(10, 4097), "size_px", "4097"),
        (config(0, 256), "rows", "0"),
        (config(100_000_000, 256), "rows", "100000000"),
    ] {
        let err = Generator::new(bad).unwrap_err();
        assert!(
            matches!(err, SynthError::InvalidConfig { field: f, .. } if f == field),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(field) && text.contains(value), "{text}");
    }
    for good in [config(1, 64), config(112_120, 1024), config(5, 4096)] {
        assert!(Generator::new(good).is_ok());
    }
}

#[test]
fn the_smallest_and_odd_sizes_render_every_finding() {
    let all = chexvision_dataset::LabelSet::from_bits(u16::MAX);
    for size in [64, 97] {
        let g = Generator::new(config(3, size)).unwrap();
        let mut record = g.record(2);
        record.labels = all;
        let image = g.render(&record);
        assert_eq!((image.width, image.height), (size, size));
        assert_eq!(image.pixels.len(), (size * size) as usize);
        let mean =
            image.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / image.pixels.len() as f64;
        assert!(
            (20.0..230.0).contains(&mean),
            "size {size}: mean grey {mean}"
        );
        assert!(encode_png(&image).is_ok());
    }
}

#[test]
fn encoding_a_malformed_image_is_an_error_not_a_panic() {
    let image = GrayImage {
        width: 4,
        height: 4,
        pixels: vec![0; 15],
    };
    assert!(matches!(encode_png(&image), Err(SynthError::Png(_))));
}
