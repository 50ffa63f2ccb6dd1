//! The real NIH metadata, all 112,120 rows (a committed copy of
//! Data_Entry_2017_v2020.csv.gz): every row reads, the label statistics match
//! the published ones, and the patient-wise split keeps patients whole and
//! lands within one point of 70/10/20.

use std::{
    collections::{HashMap, HashSet},
    io::Read,
};

use chexvision_dataset::{read_nih_metadata, split_for_patient, Split, LABELS};

#[test]
fn all_rows_read_and_split_patient_wise() {
    let mut text = String::new();
    flate2::read::GzDecoder::new(&include_bytes!("fixtures/Data_Entry_2017_v2020.csv.gz")[..])
        .read_to_string(&mut text)
        .unwrap();
    let metadata = read_nih_metadata(text.as_bytes()).unwrap();
    assert!(
        metadata.rejected.is_empty(),
        "{:?}",
        &metadata.rejected[..metadata.rejected.len().min(5)]
    );
    let records = metadata.records;
    assert_eq!(records.len(), 112_120);

    let patients: HashSet<&str> = records.iter().map(|r| r.patient_id.as_str()).collect();
    assert_eq!(patients.len(), 30_805);
    let normal = records.iter().filter(|r| !r.labels.is_abnormal()).count();
    assert_eq!(normal, 60_361, "No Finding");
    let hernia = LABELS.iter().position(|l| *l == "Hernia").unwrap();
    let hernia_share =
        records.iter().filter(|r| r.labels.contains(hernia)).count() as f64 / 112_120.0;
    assert!(
        (hernia_share - 0.0020).abs() < 0.0001,
        "Hernia prevalence {hernia_share}"
    );

    let mut split_of_patient: HashMap<&str, Split> = HashMap::new();
    let mut images_per_split: HashMap<Split, usize> = HashMap::new();
    for record in &records {
        let split = split_for_patient(&record.patient_id);
        let first = *split_of_patient
            .entry(record.patient_id.as_str())
            .or_insert(split);
        assert_eq!(first, split, "patient {} in two splits", record.patient_id);
        *images_per_split.entry(split).or_default() += 1;
    }
    for (split, target) in [
        (Split::Train, 0.70),
        (Split::Validation, 0.10),
        (Split::Test, 0.20),
    ] {
        let share = images_per_split[&split] as f64 / records.len() as f64;
        assert!(
            (share - target).abs() <= 0.01,
            "{}: {:.2} % of images, target {:.0} %",
            split.name(),
            share * 100.0,
            target * 100.0
        );
    }
}
