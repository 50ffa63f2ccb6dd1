//! Same seed, same bytes; another seed, other bytes; thread count irrelevant.

mod common;

use chexvision_synth::{encode_png, write_nih_layout, write_nih_layout_with_threads};
use common::{generator, tree};

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = generator(40, 128, 7);
    let b = generator(40, 128, 7);
    let c = generator(40, 128, 8);
    let mut differing_images = 0;
    for i in [0, 1, 5, 17, 39] {
        let (ra, rb, rc) = (a.record(i), b.record(i), c.record(i));
        assert_eq!(ra, rb);
        let (pa, pb) = (
            encode_png(&a.render(&ra)).unwrap(),
            encode_png(&b.render(&rb)).unwrap(),
        );
        assert_eq!(pa, pb, "record {i}: PNG bytes differ for the same seed");
        if encode_png(&c.render(&rc)).unwrap() != pa {
            differing_images += 1;
        }
    }
    assert_eq!(differing_images, 5, "another seed must give other images");
    let meta = |g: &chexvision_synth::Generator| -> Vec<String> {
        g.records().map(|r| format!("{r:?}")).collect()
    };
    assert_eq!(meta(&a), meta(&b));
    assert_ne!(meta(&a), meta(&c));
}

#[test]
fn a_record_does_not_depend_on_the_set_size_or_on_order() {
    let small = generator(10, 96, 3);
    let large = generator(5000, 96, 3);
    for i in (0..10).rev() {
        assert_eq!(small.record(i), large.record(i));
    }
    assert_eq!(
        small.render(&small.record(9)),
        large.render(&large.record(9))
    );
}

#[test]
fn written_folders_are_identical_whatever_the_thread_count() {
    let generator = generator(30, 96, 11);
    let (one, many, again) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_nih_layout_with_threads(&one.path().join("set"), &generator, 1, |_| {}).unwrap();
    write_nih_layout_with_threads(&many.path().join("set"), &generator, 5, |_| {}).unwrap();
    write_nih_layout(&again.path().join("set"), &generator, |_| {}).unwrap();
    let reference = tree(&one.path().join("set"));
    assert_eq!(reference.len(), 32, "30 PNGs, the CSV and synthetic.json");
    assert!(
        reference == tree(&many.path().join("set")),
        "1 vs 5 threads differ"
    );
    assert!(
        reference == tree(&again.path().join("set")),
        "1 vs default threads differ"
    );

    let other = tempfile::tempdir().unwrap();
    write_nih_layout_with_threads(
        &other.path().join("set"),
        &common::generator(30, 96, 12),
        2,
        |_| {},
    )
    .unwrap();
    let other = tree(&other.path().join("set"));
    let csv = |t: &[(String, Vec<u8>)]| {
        t.iter()
            .find(|(p, _)| p.ends_with(".csv"))
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(
        csv(&reference),
        csv(&other),
        "another seed must give another CSV"
    );
}
