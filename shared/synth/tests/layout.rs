//! The written folder reads back through the real NIH reader.

mod common;

use std::fs;

use chexvision_dataset::read_nih_metadata;
use chexvision_synth::{write_nih_layout, write_nih_layout_with_threads, SynthError, WriteSummary};
use common::{decode_png, generator, tree};

#[test]
fn folder_reads_back_through_the_nih_reader() {
    let g = generator(25, 128, 5);
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("synth");
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let most = std::sync::atomic::AtomicUsize::new(0);
    let summary = write_nih_layout(&set, &g, |done| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        most.fetch_max(done, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(
        summary,
        WriteSummary {
            written: 25,
            kept: 0
        }
    );
    assert_eq!(calls.into_inner(), 25);
    assert_eq!(most.into_inner(), 25);

    let csv = fs::read_to_string(set.join("Data_Entry_2017_v2020.csv")).unwrap();
    assert!(csv.starts_with("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"));
    let metadata = read_nih_metadata(csv.as_bytes()).unwrap();
    assert!(metadata.rejected.is_empty(), "{:?}", metadata.rejected);
    assert_eq!(metadata.records.len(), 25);
    for (row, record) in metadata.records.iter().zip(g.records()) {
        assert_eq!(row.image, record.image_index);
        assert_eq!(row.labels, record.labels);
        assert_eq!(row.follow_up, record.follow_up);
        assert_eq!(row.patient_id, record.patient_id.to_string());
        assert_eq!(row.age, Some(record.age));
        assert_eq!(row.sex, record.sex.as_str());
        assert_eq!(row.view_position, record.view.as_str());
        assert_eq!((row.original_width, row.original_height), (128, 128));
        let bytes = fs::read(set.join("images").join(&row.image)).unwrap();
        let (w, h, pixels) = decode_png(&bytes);
        assert_eq!((w, h), (128, 128));
        assert_eq!(pixels, g.render(&record).pixels);
    }
    let marker = fs::read_to_string(set.join("synthetic.json")).unwrap();
    assert_eq!(
        marker.trim(),
        r#"{"generator":"chexvision-synth","format_version":1,"seed":5,"rows":25,"size_px":128}"#
    );
    // Nothing left under temporary names.
    assert!(tree(&set).iter().all(|(p, _)| !p.ends_with(".tmp")));
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let g = generator(12, 96, 21);
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("synth");
    write_nih_layout_with_threads(&set, &g, 2, |_| {}).unwrap();
    let complete = tree(&set);
    // As if killed: three images and the CSV missing, a stray temporary file.
    let names: Vec<String> = g.records().map(|r| r.image_index).collect();
    for name in &names[3..6] {
        fs::remove_file(set.join("images").join(name)).unwrap();
    }
    fs::remove_file(set.join("Data_Entry_2017_v2020.csv")).unwrap();
    fs::write(
        set.join("images").join(format!("{}.tmp", names[4])),
        b"half a png",
    )
    .unwrap();
    let summary = write_nih_layout_with_threads(&set, &g, 3, |_| {}).unwrap();
    assert_eq!(
        summary,
        WriteSummary {
            written: 3,
            kept: 9
        }
    );
    assert!(
        complete == tree(&set),
        "resumed folder differs from a clean run"
    );
}

#[test]
fn refuses_folders_that_hold_something_else() {
    let dir = tempfile::tempdir().unwrap();
    // A real (non-synthetic) folder is never written into.
    let real = dir.path().join("nih");
    fs::create_dir_all(&real).unwrap();
    fs::write(real.join("Data_Entry_2017_v2020.csv"), "real data").unwrap();
    let err = write_nih_layout(&real, &generator(3, 64, 1), |_| {}).unwrap_err();
    assert!(matches!(err, SynthError::NotSynthetic { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(real.join("Data_Entry_2017_v2020.csv")).unwrap(),
        "real data"
    );
    // Another synthetic configuration is not mixed in.
    let set = dir.path().join("synth");
    write_nih_layout(&set, &generator(3, 64, 1), |_| {}).unwrap();
    let err = write_nih_layout(&set, &generator(3, 64, 2), |_| {}).unwrap_err();
    assert!(matches!(err, SynthError::OtherSet { .. }), "{err}");
    assert!(err.to_string().contains("\"seed\":1"), "{err}");
}
