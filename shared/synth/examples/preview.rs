//! Writes contact sheets for eyeballing the phantoms, and times rendering.
//!
//! cargo run --release -p chexvision-synth --example preview -- OUT_DIR [SIZE] [SEED]
//!
//! OUT_DIR/sheet_findings.png: one chest, no finding then each of the 14 alone;
//! OUT_DIR/sheet_random.png: 16 consecutive records as drawn;
//! OUT_DIR/finding_KK.png: the tiles of the first sheet (00 = no finding).

use std::path::PathBuf;
use std::time::Instant;

use chexvision_dataset::{LabelSet, LABELS};
use chexvision_synth::{encode_png, Generator, GrayImage, SynthConfig};

fn sheet(tiles: &[GrayImage], columns: usize) -> GrayImage {
    let n = tiles[0].width as usize;
    let rows = tiles.len().div_ceil(columns);
    let (w, h) = (n * columns, n * rows);
    let mut pixels = vec![0u8; w * h];
    for (k, tile) in tiles.iter().enumerate() {
        let (ox, oy) = ((k % columns) * n, (k / columns) * n);
        for y in 0..n {
            pixels[(oy + y) * w + ox..(oy + y) * w + ox + n]
                .copy_from_slice(&tile.pixels[y * n..(y + 1) * n]);
        }
    }
    GrayImage {
        width: w as u32,
        height: h as u32,
        pixels,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "synth-preview".into()));
    let size: u32 = args.next().map_or(Ok(256), |s| s.parse())?;
    let seed: u64 = args.next().map_or(Ok(1), |s| s.parse())?;
    std::fs::create_dir_all(&out)?;
    let generator = Generator::new(SynthConfig {
        rows: 64,
        size_px: size,
        seed,
    })?;

    let base = generator.record(0);
    let mut tiles = Vec::new();
    for k in 0..=LABELS.len() {
        let mut record = base.clone();
        record.labels = if k == 0 {
            LabelSet::default()
        } else {
            LabelSet::from_bits(1 << (k - 1))
        };
        let image = generator.render(&record);
        std::fs::write(out.join(format!("finding_{k:02}.png")), encode_png(&image)?)?;
        tiles.push(image);
    }
    tiles.push(generator.render(&base));
    std::fs::write(
        out.join("sheet_findings.png"),
        encode_png(&sheet(&tiles, 4))?,
    )?;

    let records: Vec<_> = (0..16).map(|i| generator.record(i)).collect();
    for r in &records {
        println!(
            "{} patient {} fu {} {} {} {} [{}]",
            r.image_index, r.patient_id, r.follow_up, r.age, r.sex, r.view, r.labels
        );
    }
    let tiles: Vec<_> = records.iter().map(|r| generator.render(r)).collect();
    std::fs::write(out.join("sheet_random.png"), encode_png(&sheet(&tiles, 4))?)?;

    // Timing: render and encode a few images at this size.
    let count = 8;
    let (mut render_s, mut encode_s, mut bytes) = (0.0, 0.0, 0);
    for i in 0..count {
        let record = generator.record(i);
        let t0 = Instant::now();
        let image = generator.render(&record);
        let t1 = Instant::now();
        let png = encode_png(&image)?;
        let t2 = Instant::now();
        render_s += (t1 - t0).as_secs_f64();
        encode_s += (t2 - t1).as_secs_f64();
        bytes += png.len();
    }
    println!(
        "{size}x{size}: render {:.1} ms, encode {:.1} ms, {:.0} KiB per image (mean of {count})",
        render_s * 1e3 / count as f64,
        encode_s * 1e3 / count as f64,
        bytes as f64 / 1024.0 / count as f64
    );
    Ok(())
}
