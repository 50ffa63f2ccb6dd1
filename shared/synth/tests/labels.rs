//! Metadata sampling follows the real NIH shares.

mod common;

use std::collections::{HashMap, HashSet};

use chexvision_dataset::LabelSet;
use chexvision_synth::{Sex, View};
use common::generator;

const TABLE: &str = include_str!("../data/label_sets.tsv");

fn table() -> HashSet<LabelSet> {
    TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| LabelSet::parse(l.split_once('\t').unwrap().1).unwrap())
        .collect()
}

#[test]
fn the_table_is_the_real_one() {
    let lines: Vec<&str> = TABLE.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 836);
    let total: u64 = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 112_120);
    assert_eq!(lines[0], "60361\tNo Finding");
    assert_eq!(lines[1], "9547\tInfiltration");
}

#[test]
fn label_sets_follow_the_real_frequencies() {
    let n = 20_000;
    let g = generator(n, 128, 2024);
    let known = table();
    let infiltration = LabelSet::parse("Infiltration").unwrap();
    let (mut none, mut infiltration_alone) = (0, 0);
    let (mut male, mut pa) = (0, 0);
    for r in g.records() {
        assert!(
            known.contains(&r.labels),
            "{} is not in the table",
            r.labels
        );
        none += usize::from(!r.labels.is_abnormal());
        infiltration_alone += usize::from(r.labels == infiltration);
        male += usize::from(r.sex == Sex::Male);
        pa += usize::from(r.view == View::Pa);
        assert!(r.age <= 95);
        assert_eq!((r.width, r.height), (128, 128));
    }
    let share = |k: usize| 100.0 * k as f64 / n as f64;
    eprintln!(
        "No Finding {:.2} %, Infiltration alone {:.2} %, male {:.2} %, PA {:.2} %",
        share(none),
        share(infiltration_alone),
        share(male),
        share(pa)
    );
    assert!(
        (share(none) - 53.84).abs() < 2.0,
        "No Finding {:.2} %",
        share(none)
    );
    assert!(
        (share(infiltration_alone) - 8.52).abs() < 1.5,
        "Infiltration alone {:.2} %",
        share(infiltration_alone)
    );
    // Sex is drawn per patient, so it varies more than per image.
    assert!(
        (share(male) - 56.49).abs() < 4.0,
        "male {:.2} %",
        share(male)
    );
    assert!((share(pa) - 60.03).abs() < 2.0, "PA {:.2} %", share(pa));
}

#[test]
fn patients_have_consecutive_follow_ups_and_stable_attributes() {
    let n = 20_000;
    let g = generator(n, 128, 99);
    let records: Vec<_> = g.records().collect();
    let mut patients: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut names = HashSet::new();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.index, i);
        patients.entry(r.patient_id).or_default().push(i);
        assert!(
            names.insert(r.image_index.clone()),
            "duplicate name {}",
            r.image_index
        );
        assert_eq!(
            r.image_index,
            format!("{:08}_{:03}.png", r.patient_id, r.follow_up)
        );
    }
    for (patient, images) in &patients {
        // One run of consecutive indices, follow-ups 0, 1, 2 ...
        let first = images[0];
        for (k, &i) in images.iter().enumerate() {
            assert_eq!(i, first + k, "patient {patient} is not one run");
            let r = &records[i];
            assert_eq!(r.follow_up as usize, k);
            assert_eq!(r.sex, records[first].sex);
            assert!(r.age >= records[first].age);
        }
        assert_eq!(*patient as usize, first + 1);
    }
    let per_patient = n as f64 / patients.len() as f64;
    let singles_share =
        patients.values().filter(|v| v.len() == 1).count() as f64 / patients.len() as f64;
    let ages: f64 = records.iter().map(|r| f64::from(r.age)).sum::<f64>() / n as f64;
    eprintln!(
        "{} patients, {per_patient:.2} images each, {:.1} % with one image, mean age {ages:.1}",
        patients.len(),
        100.0 * singles_share
    );
    assert!(
        (3.2..4.0).contains(&per_patient),
        "{per_patient:.2} images per patient"
    );
    let singles = patients.values().filter(|v| v.len() == 1).count() as f64 / patients.len() as f64;
    assert!(
        (0.5..0.64).contains(&singles),
        "{singles:.2} of patients with one image"
    );
}
