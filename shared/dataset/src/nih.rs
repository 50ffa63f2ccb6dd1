//! Reader of the NIH metadata (`Data_Entry_2017.csv` and its `_v2020`
//! revision). Quirks: the headers `OriginalImage[Width,Height]` and
//! `OriginalImagePixelSpacing[x,y]` span two columns each, and the 2017 file
//! ends every line with a comma (one empty extra column). Columns are found by
//! name, so both files read the same. A row that cannot be read is returned
//! with its reason; the rest are kept.

use std::io::Read;

use crate::labels::{LabelError, LabelSet};

#[derive(Debug, thiserror::Error)]
pub enum NihError {
    #[error("NIH metadata: cannot read the CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("NIH metadata: no `{column}` column in the header (found: {found})")]
    MissingColumn { column: &'static str, found: String },
}

/// One image of the metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NihRecord {
    /// File name, e.g. `00000001_000.png`.
    pub image: String,
    pub labels: LabelSet,
    pub follow_up: u32,
    pub patient_id: String,
    pub age: Option<u16>,
    /// `M` or `F` as written.
    pub sex: String,
    /// `PA` or `AP`.
    pub view_position: String,
    pub original_width: u32,
    pub original_height: u32,
}

/// A row that was left out, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// 1-based line number in the file.
    pub line: u64,
    pub image: String,
    pub reason: String,
}

/// Every readable row and every rejected one.
#[derive(Debug, Default)]
pub struct NihMetadata {
    pub records: Vec<NihRecord>,
    pub rejected: Vec<RejectedRow>,
}

struct Columns {
    image: usize,
    labels: usize,
    follow_up: usize,
    patient: usize,
    age: usize,
    sex: usize,
    view: usize,
    width: usize,
}

impl Columns {
    fn find(header: &csv::StringRecord) -> Result<Self, NihError> {
        let find = |column: &'static str| {
            header
                .iter()
                .position(|h| h.trim() == column || h.trim().starts_with(&format!("{column}[")))
                .ok_or_else(|| NihError::MissingColumn {
                    column,
                    found: header.iter().collect::<Vec<_>>().join(", "),
                })
        };
        Ok(Columns {
            image: find("Image Index")?,
            labels: find("Finding Labels")?,
            follow_up: find("Follow-up #")?,
            patient: find("Patient ID")?,
            age: find("Patient Age")?,
            sex: find("Patient Gender")?,
            view: find("View Position")?,
            // `OriginalImage[Width` then `Height]` in the next column.
            width: find("OriginalImage")?,
        })
    }
}

/// Ages are plain numbers in the 2020 file and `058Y`-style in some copies.
fn parse_age(text: &str) -> Option<u16> {
    let digits: String = text
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads the metadata CSV.
pub fn read_nih_metadata(reader: impl Read) -> Result<NihMetadata, NihError> {
    let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let columns = Columns::find(csv.headers()?)?;
    let mut metadata = NihMetadata::default();
    for row in csv.records() {
        let row = row?;
        let line = row.position().map_or(0, |p| p.line());
        let field = |i: usize| row.get(i).unwrap_or("").trim();
        let image = field(columns.image).to_owned();
        let reject = |reason: String| RejectedRow {
            line,
            image: image.clone(),
            reason,
        };
        if image.is_empty() {
            metadata.rejected.push(reject("no image name".into()));
            continue;
        }
        let labels = match LabelSet::parse(field(columns.labels)) {
            Ok(labels) => labels,
            Err(err @ (LabelError::Unknown { .. } | LabelError::NoFindingWithFindings { .. })) => {
                metadata.rejected.push(reject(err.to_string()));
                continue;
            }
        };
        let patient_id = field(columns.patient).to_owned();
        if patient_id.is_empty() {
            metadata.rejected.push(reject("no patient id".into()));
            continue;
        }
        let number = |i: usize, what: &str| -> Result<u32, String> {
            field(i)
                .parse()
                .map_err(|_| format!("{what} `{}` is not a number", field(i)))
        };
        let parsed = (|| {
            Ok::<_, String>((
                number(columns.follow_up, "follow-up")?,
                number(columns.width, "original width")?,
                number(columns.width + 1, "original height")?,
            ))
        })();
        let (follow_up, original_width, original_height) = match parsed {
            Ok(values) => values,
            Err(reason) => {
                metadata.rejected.push(reject(reason));
                continue;
            }
        };
        metadata.records.push(NihRecord {
            image,
            labels,
            follow_up,
            patient_id,
            age: parse_age(field(columns.age)),
            sex: field(columns.sex).to_owned(),
            view_position: field(columns.view).to_owned(),
            original_width,
            original_height,
        });
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2020: &str = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n\
00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n\
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n";

    // The 2017 file: same header and rows, each line ending with a comma, ages as 058Y.
    const V2017: &str = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n\
00000001_000.png,Cardiomegaly,0,1,057Y,M,PA,2682,2749,0.143,0.143,\n\
00000001_001.png,Cardiomegaly|Emphysema,1,1,058Y,M,PA,2894,2729,0.143,0.143,\n";

    #[test]
    fn both_file_versions_read_the_same() {
        let a = read_nih_metadata(V2020.as_bytes()).unwrap();
        let b = read_nih_metadata(V2017.as_bytes()).unwrap();
        assert_eq!(a.records, b.records);
        assert!(a.rejected.is_empty() && b.rejected.is_empty());
        let second = &a.records[1];
        assert_eq!(second.image, "00000001_001.png");
        assert_eq!(second.labels.to_string(), "Cardiomegaly|Emphysema");
        assert_eq!(
            (second.original_width, second.original_height),
            (2894, 2729)
        );
        assert_eq!(second.age, Some(58));
        assert_eq!(second.follow_up, 1);
    }

    #[test]
    fn bad_rows_are_rejected_with_reasons_and_the_rest_kept() {
        let text = format!(
            "{V2020}00000002_000.png,Covid,0,2,40,F,AP,2500,2048,0.1,0.1\n00000003_000.png,Mass,x,3,40,F,AP,2500,2048,0.1,0.1\n,Mass,0,4,40,F,AP,1,1,0.1,0.1\n"
        );
        let metadata = read_nih_metadata(text.as_bytes()).unwrap();
        assert_eq!(metadata.records.len(), 2);
        let reasons: Vec<&str> = metadata
            .rejected
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        assert_eq!(metadata.rejected.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("Covid"));
        assert!(reasons[1].contains("follow-up `x`"));
        assert!(reasons[2].contains("no image name"));
        assert_eq!(metadata.rejected[0].line, 4);
    }

    #[test]
    fn missing_column_is_named() {
        let err = read_nih_metadata("Image Index,Labels\na.png,Mass\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("Finding Labels"), "{err}");
    }
}
