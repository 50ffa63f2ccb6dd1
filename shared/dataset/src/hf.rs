//! The Parquet layout of the 320 px dataset the Python project published
//! (`arudaev/chest-xray-14-320`): columns `image` {bytes, path}, `labels`
//! (pipe-separated), `filename`; other columns are ignored.
//!
//! Files are streamed in small batches of rows, so a shard's images are never
//! all in memory. The patient id and follow-up number come from the NIH file
//! name (`{patient:08}_{follow_up:03}.png`), as the layout has no such columns.

use bytes::Bytes;
use parquet::{
    file::{
        reader::{ChunkReader, FileReader},
        serialized_reader::SerializedFileReader,
    },
    record::{reader::RowIter, Field, Row},
};

use crate::{shard::ShardError, LabelSet};

const READ_BATCH_ROWS: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct HfRow {
    pub filename: String,
    pub patient_id: String,
    pub follow_up: u32,
    pub labels: LabelSet,
    pub image: Bytes,
}

/// One row of the source: usable, or set aside with the reason.
#[derive(Debug, Clone, PartialEq)]
pub enum HfItem {
    Row(HfRow),
    Rejected { filename: String, reason: String },
}

pub struct HfReader {
    rows: RowIter<'static>,
    num_rows: u64,
    next_row: usize,
}

impl std::fmt::Debug for HfReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfReader")
            .field("num_rows", &self.num_rows)
            .finish()
    }
}

/// Opens one file of the published layout. A file without the expected
/// columns is an error naming the missing one.
pub fn read_hf_parquet<R: ChunkReader + 'static>(source: R) -> Result<HfReader, ShardError> {
    let reader = SerializedFileReader::new(source)?;
    let schema = reader.metadata().file_metadata().schema();
    for column in ["image", "labels", "filename"] {
        if !schema.get_fields().iter().any(|f| f.name() == column) {
            return Err(ShardError::BadValue {
                row: 0,
                column: "schema",
                problem: format!("has no `{column}` column (expected image, labels, filename)"),
            });
        }
    }
    let num_rows = u64::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
    let rows = RowIter::from_file_into(Box::new(reader)).with_batch_size(READ_BATCH_ROWS);
    Ok(HfReader {
        rows,
        num_rows,
        next_row: 0,
    })
}

impl HfReader {
    pub fn num_rows(&self) -> u64 {
        self.num_rows
    }
}

impl Iterator for HfReader {
    type Item = Result<HfItem, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = self.rows.next()?;
        let index = self.next_row;
        self.next_row += 1;
        Some(row.map_err(ShardError::from).map(|r| decode(index, &r)))
    }
}

fn column<'r>(row: &'r Row, name: &str) -> Option<&'r Field> {
    row.get_column_iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, f)| f)
}

fn decode(index: usize, row: &Row) -> HfItem {
    let filename = match column(row, "filename") {
        Some(Field::Str(name)) if !name.trim().is_empty() => name.trim().to_owned(),
        _ => {
            return HfItem::Rejected {
                filename: format!("row {index}"),
                reason: "no filename".into(),
            }
        }
    };
    let reject = |reason: String| HfItem::Rejected {
        filename: filename.clone(),
        reason,
    };
    let labels = match column(row, "labels") {
        Some(Field::Str(text)) => match LabelSet::parse(text) {
            Ok(labels) => labels,
            Err(e) => return reject(e.to_string()),
        },
        _ => return reject("no labels".into()),
    };
    let image = match column(row, "image") {
        Some(Field::Group(image)) => match column(image, "bytes") {
            Some(Field::Bytes(bytes)) if !bytes.data().is_empty() => {
                Bytes::copy_from_slice(bytes.data())
            }
            _ => return reject("image has no bytes".into()),
        },
        Some(Field::Bytes(bytes)) if !bytes.data().is_empty() => {
            Bytes::copy_from_slice(bytes.data())
        }
        _ => return reject("no image".into()),
    };
    let Some((patient_id, follow_up)) = patient_from_filename(&filename) else {
        return reject("file name is not {patient}_{follow_up}.png, so no patient id".into());
    };
    HfItem::Row(HfRow {
        filename,
        patient_id,
        follow_up,
        labels,
        image,
    })
}

/// `00000013_005.png` → ("13", 5): the NIH naming, patient id as in the CSV.
pub fn patient_from_filename(filename: &str) -> Option<(String, u32)> {
    let base = filename.rsplit('/').next()?;
    let stem = base.split('.').next()?;
    let (patient, follow_up) = stem.split_once('_')?;
    let patient: u64 = patient.parse().ok()?;
    let follow_up: u32 = follow_up.parse().ok()?;
    Some((patient.to_string(), follow_up))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_ids_come_from_nih_file_names() {
        assert_eq!(
            patient_from_filename("00000013_005.png"),
            Some(("13".into(), 5))
        );
        assert_eq!(
            patient_from_filename("images/00030805_000.png"),
            Some(("30805".into(), 0))
        );
        assert_eq!(patient_from_filename("scan.png"), None);
        assert_eq!(patient_from_filename("abc_001.png"), None);
    }
}
