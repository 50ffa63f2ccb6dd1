//! The published 320 px Parquet layout, read from a file pyarrow wrote
//! (scripts/make_hf_parquet_fixture.py): snappy, several row groups, a struct
//! image column, and rows the reader must set aside.

use chexvision_dataset::{probe_image, read_hf_parquet, HfItem, LabelSet};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/hf_320_sample.parquet"
);

#[test]
fn reads_rows_and_sets_broken_ones_aside() {
    let file = std::fs::File::open(FIXTURE).unwrap();
    let reader = read_hf_parquet(file).unwrap();
    assert_eq!(reader.num_rows(), 12);
    let items: Vec<HfItem> = reader.map(Result::unwrap).collect();
    let rows: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            HfItem::Row(row) => Some(row),
            HfItem::Rejected { .. } => None,
        })
        .collect();
    let rejected: Vec<(&str, &str)> = items
        .iter()
        .filter_map(|i| match i {
            HfItem::Rejected { filename, reason } => Some((filename.as_str(), reason.as_str())),
            HfItem::Row(_) => None,
        })
        .collect();
    assert_eq!(rows.len(), 9);
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(rejected[0].0 == "00000007_000.png" && rejected[0].1.contains("Fracture"));
    assert!(rejected[1].0 == "scan-42.png" && rejected[1].1.contains("patient"));
    assert!(rejected[2].0 == "00000008_000.png" && rejected[2].1.contains("no bytes"));

    let second = rows[1];
    assert_eq!(second.filename, "00000001_001.png");
    assert_eq!((second.patient_id.as_str(), second.follow_up), ("1", 1));
    assert_eq!(
        second.labels,
        LabelSet::parse("Emphysema|Cardiomegaly").unwrap()
    );
    let info = probe_image(&second.image).unwrap();
    assert_eq!((info.width, info.height), (32, 32));
    // Rows keep the file's order across row groups.
    assert_eq!(rows.last().unwrap().filename, "00000009_000.png");
}

#[test]
fn a_file_of_another_schema_is_named() {
    use std::sync::Arc;

    use parquet::{file::writer::SerializedFileWriter, schema::parser::parse_message_type};
    let schema =
        parse_message_type("message other { REQUIRED BYTE_ARRAY labels (UTF8); }").unwrap();
    let writer =
        SerializedFileWriter::new(Vec::new(), Arc::new(schema), Default::default()).unwrap();
    let other = writer.into_inner().unwrap();
    let err = read_hf_parquet(bytes::Bytes::from(other)).unwrap_err();
    assert!(err.to_string().contains("no `image` column"), "{err}");

    let err = read_hf_parquet(bytes::Bytes::from_static(b"PAR1 not really")).unwrap_err();
    assert!(err.to_string().starts_with("parquet"), "{err}");
}
