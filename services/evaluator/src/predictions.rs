//! `predictions.parquet`: one row per scored image, no pixels, so anyone can
//! recompute every number of the report (and the registry can compare two
//! models on the same images).
//!
//! ```text
//! image_id            string   the image's file name
//! patient_id          string
//! label_{Finding}     boolean  × 14, in the fixed label order
//! prob_{Finding}      double   × 14
//! prob_abnormal       double   the binary head
//! ```

use std::sync::Arc;

use bytes::Bytes;
use chexvision_dataset::LABELS;
use parquet::{
    basic::{Compression, ZstdLevel},
    data_type::{BoolType, ByteArray, ByteArrayType, DoubleType},
    file::{
        properties::WriterProperties, reader::FileReader, serialized_reader::SerializedFileReader,
        writer::SerializedFileWriter,
    },
    record::Field,
    schema::parser::parse_message_type,
};

use crate::score::{SplitScores, OUTPUTS};
use crate::EvalError;

/// Rows per row group.
const ROW_GROUP_ROWS: usize = 8192;

fn schema() -> String {
    let mut s = String::from(
        "message chexvision_predictions {\n  REQUIRED BYTE_ARRAY image_id (UTF8);\n  REQUIRED BYTE_ARRAY patient_id (UTF8);\n",
    );
    for label in LABELS {
        s.push_str(&format!("  REQUIRED BOOLEAN label_{label};\n"));
    }
    for label in LABELS {
        s.push_str(&format!("  REQUIRED DOUBLE prob_{label};\n"));
    }
    s.push_str("  REQUIRED DOUBLE prob_abnormal;\n}");
    s
}

/// Encodes `scores` as a Parquet file.
pub fn write_predictions(scores: &SplitScores) -> Result<Vec<u8>, EvalError> {
    let pq =
        |e: parquet::errors::ParquetError| EvalError::Data(format!("predictions.parquet: {e}"));
    let schema = Arc::new(parse_message_type(&schema()).map_err(pq)?);
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(pq)?))
        .build();
    let mut writer =
        SerializedFileWriter::new(Vec::new(), schema, Arc::new(properties)).map_err(pq)?;
    let k = LABELS.len();
    let rows = scores.rows();
    let mut start = 0;
    while start < rows {
        let end = (start + ROW_GROUP_ROWS).min(rows);
        let mut group = writer.next_row_group().map_err(pq)?;
        let strings = |v: &[String]| -> Vec<ByteArray> {
            v[start..end]
                .iter()
                .map(|s| ByteArray::from(s.as_str()))
                .collect()
        };
        for ids in [strings(&scores.image_ids), strings(&scores.patient_ids)] {
            if let Some(mut column) = group.next_column().map_err(pq)? {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&ids, None, None)
                    .map_err(pq)?;
                column.close().map_err(pq)?;
            }
        }
        for c in 0..k {
            let values: Vec<bool> = (start..end).map(|r| scores.labels[r * k + c]).collect();
            if let Some(mut column) = group.next_column().map_err(pq)? {
                column
                    .typed::<BoolType>()
                    .write_batch(&values, None, None)
                    .map_err(pq)?;
                column.close().map_err(pq)?;
            }
        }
        for c in 0..OUTPUTS {
            let values: Vec<f64> = (start..end)
                .map(|r| scores.probabilities[r * OUTPUTS + c])
                .collect();
            if let Some(mut column) = group.next_column().map_err(pq)? {
                column
                    .typed::<DoubleType>()
                    .write_batch(&values, None, None)
                    .map_err(pq)?;
                column.close().map_err(pq)?;
            }
        }
        group.close().map_err(pq)?;
        start = end;
    }
    writer.into_inner().map_err(pq)
}

/// Reads a predictions file back (skipped images are not in it).
pub fn read_predictions(bytes: Bytes) -> Result<SplitScores, EvalError> {
    let bad = |detail: String| EvalError::Data(format!("predictions.parquet: {detail}"));
    let reader = SerializedFileReader::new(bytes).map_err(|e| bad(e.to_string()))?;
    let rows = reader.get_row_iter(None).map_err(|e| bad(e.to_string()))?;
    let k = LABELS.len();
    let mut out = SplitScores::default();
    for (index, row) in rows.enumerate() {
        let row = row.map_err(|e| bad(e.to_string()))?;
        let mut labels = vec![None; k];
        let mut probs = vec![None; OUTPUTS];
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("image_id", Field::Str(s)) => out.image_ids.push(s.clone()),
                ("patient_id", Field::Str(s)) => out.patient_ids.push(s.clone()),
                (n, Field::Bool(b)) => {
                    if let Some(c) = n
                        .strip_prefix("label_")
                        .and_then(|l| LABELS.iter().position(|x| *x == l))
                    {
                        labels[c] = Some(*b);
                    }
                }
                (n, Field::Double(p)) => {
                    let c = match n.strip_prefix("prob_") {
                        Some("abnormal") => Some(k),
                        Some(l) => LABELS.iter().position(|x| *x == l),
                        None => None,
                    };
                    if let Some(c) = c {
                        probs[c] = Some(*p);
                    }
                }
                _ => {}
            }
        }
        if out.image_ids.len() != index + 1 || out.patient_ids.len() != index + 1 {
            return Err(bad(format!("row {index} lacks image_id or patient_id")));
        }
        for (c, l) in labels.into_iter().enumerate() {
            out.labels
                .push(l.ok_or_else(|| bad(format!("row {index} lacks label_{}", LABELS[c])))?);
        }
        for (c, p) in probs.into_iter().enumerate() {
            out.probabilities
                .push(p.ok_or_else(|| bad(format!("row {index} lacks probability {c}")))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = LABELS.len();
        let mut scores = SplitScores::default();
        for r in 0..3 {
            scores.image_ids.push(format!("{r:08}_000.png"));
            scores.patient_ids.push(format!("{r}"));
            scores.labels.extend((0..k).map(|c| (r + c) % 3 == 0));
            scores
                .probabilities
                .extend((0..OUTPUTS).map(|c| (r * OUTPUTS + c) as f64 / 100.0));
        }
        let bytes = write_predictions(&scores).unwrap();
        assert_eq!(read_predictions(Bytes::from(bytes)).unwrap(), scores);
        assert!(read_predictions(Bytes::from_static(b"not parquet")).is_err());
    }
}
