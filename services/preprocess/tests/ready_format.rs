//! Measurement, not a test (ignored by default): which way of storing ready
//! images does the trainer's loader read fastest per byte of storage? Both
//! formats side by side in one run, on the same synthetic images.
//!
//!   cargo test --release -p chexvision-preprocess --test ready_format -- --ignored --nocapture

use std::time::Instant;

use bytes::Bytes;
use chexvision_dataset::{read_shard, write_shard, ImageFormat, ShardOptions, ShardRow};
use chexvision_preprocess::{prepare_image, PreprocessSettings, ReadyFormat};
use chexvision_synth::{encode_png, Generator, SynthConfig};
use chexvision_vision::{decode_gray8, DecodeLimits};

const IMAGES: usize = 256;

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn raw_pixels_versus_png_for_the_loader() {
    let generator = Generator::new(SynthConfig {
        rows: IMAGES,
        size_px: 1024,
        seed: 9,
    })
    .unwrap();
    let raw_pngs: Vec<(chexvision_synth::SyntheticRecord, Vec<u8>)> = (0..IMAGES)
        .map(|i| {
            let record = generator.record(i);
            let png = encode_png(&generator.render(&record)).unwrap();
            (record, png)
        })
        .collect();
    println!("images: {IMAGES} synthetic 1024 px, ready at 320 px, CLAHE 2.0 8x8");
    let mut results = Vec::new();
    for format in [ReadyFormat::Raw, ReadyFormat::Png] {
        let settings = PreprocessSettings {
            ready_format: format,
            ..PreprocessSettings::default()
        };
        let started = Instant::now();
        let rows: Vec<ShardRow> = raw_pngs
            .iter()
            .map(|(record, png)| ShardRow {
                filename: record.image_index.clone(),
                patient_id: record.patient_id.to_string(),
                follow_up: record.follow_up,
                labels: record.labels,
                split: chexvision_dataset::Split::Train,
                view_position: record.view.as_str().into(),
                age: Some(record.age),
                sex: record.sex.as_str().into(),
                original_width: 1024,
                original_height: 1024,
                image_format: match format {
                    ReadyFormat::Raw => ImageFormat::Gray8,
                    ReadyFormat::Png => ImageFormat::Png,
                },
                image: Bytes::from(prepare_image(png, &settings).unwrap()),
            })
            .collect();
        let shard = write_shard(&rows, &ShardOptions::default()).unwrap();
        let write_seconds = started.elapsed().as_secs_f64();

        // The loader: read every row and get its 320×320 pixels.
        let rounds = 5;
        let started = Instant::now();
        let mut checksum = 0u64;
        for _ in 0..rounds {
            for row in read_shard(Bytes::from(shard.clone())).unwrap() {
                let row = row.unwrap();
                let pixels = match row.image_format {
                    ImageFormat::Gray8 => row.image.to_vec(),
                    _ => {
                        decode_gray8(&row.image, &DecodeLimits::default())
                            .unwrap()
                            .pixels
                    }
                };
                assert_eq!(pixels.len(), 320 * 320);
                checksum += u64::from(pixels[pixels.len() / 2]);
            }
        }
        let per_image = started.elapsed().as_secs_f64() / (rounds * IMAGES) as f64;
        let bytes_per_image = shard.len() as f64 / IMAGES as f64;
        println!(
            "{:>4}: {:8.0} bytes/image, shard written in {:5.2} s, loader {:7.1} µs/image ({:7.0} images/s), checksum {checksum}",
            format.name(),
            bytes_per_image,
            write_seconds,
            per_image * 1e6,
            1.0 / per_image,
        );
        results.push((format, bytes_per_image, per_image));
    }
    let (raw, png) = (&results[0], &results[1]);
    println!(
        "png / raw: storage {:.2}×, loader time {:.2}×",
        png.1 / raw.1,
        png.2 / raw.2
    );
}
