//! Render + encode time at 1024 px. Ignored by default (meaningful only in
//! release): cargo test -p chexvision-synth --release --test timing -- --ignored --nocapture

mod common;

use std::time::Instant;

use chexvision_synth::encode_png;

#[test]
#[ignore]
fn render_and_encode_1024() {
    let g = common::generator(64, 1024, 1);
    let count = 16;
    let (mut render, mut encode, mut bytes) = (0.0, 0.0, 0);
    for i in 0..count {
        let record = g.record(i);
        let t0 = Instant::now();
        let image = g.render(&record);
        let t1 = Instant::now();
        bytes += encode_png(&image).unwrap().len();
        render += (t1 - t0).as_secs_f64();
        encode += t1.elapsed().as_secs_f64();
    }
    let per = |s: f64| s * 1e3 / count as f64;
    println!(
        "1024x1024, one thread, mean of {count}: render {:.1} ms + encode {:.1} ms = {:.1} ms, {:.0} KiB",
        per(render),
        per(encode),
        per(render + encode),
        bytes as f64 / 1024.0 / count as f64
    );
}

#[test]
#[ignore]
fn write_layout_1024_throughput() {
    let g = common::generator(48, 1024, 2);
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    chexvision_synth::write_nih_layout(&dir.path().join("set"), &g, |_| {}).unwrap();
    let s = t0.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "write_nih_layout 48 x 1024 px on {threads} threads: {:.2} s, {:.1} images/s",
        s,
        48.0 / s
    );
}
