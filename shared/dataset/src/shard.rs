//! Parquet shards: one row per image, with its labels, split and metadata,
//! and the image bytes as they came (raw shards) or preprocessed (ready
//! shards, written by the preprocess stage with the same schema).
//!
//! Writing is deterministic: the same rows give the same bytes, so a re-run of
//! an ingest produces the same content hashes and shard keys. Reading streams
//! rows in small batches, so a shard's images are never all in memory at once.

use std::sync::Arc;

use bytes::Bytes;
use parquet::{
    basic::{Compression, ZstdLevel},
    data_type::{ByteArray, ByteArrayType, Int32Type},
    file::{
        metadata::KeyValue,
        properties::WriterProperties,
        reader::{ChunkReader, FileReader},
        serialized_reader::SerializedFileReader,
        writer::SerializedFileWriter,
    },
    record::{reader::RowIter, Field, Row},
    schema::parser::parse_message_type,
};

use crate::{image_header::ImageFormat, LabelSet, Split};

/// Bumped when the columns change; stored in each file's metadata.
pub const SHARD_FORMAT_VERSION: &str = "1";

const SCHEMA: &str = "
message chexvision_shard {
  REQUIRED BYTE_ARRAY filename (UTF8);
  REQUIRED BYTE_ARRAY patient_id (UTF8);
  REQUIRED INT32 follow_up;
  REQUIRED BYTE_ARRAY labels (UTF8);
  REQUIRED INT32 label_bits;
  REQUIRED BYTE_ARRAY split (UTF8);
  REQUIRED BYTE_ARRAY view_position (UTF8);
  OPTIONAL INT32 age;
  REQUIRED BYTE_ARRAY sex (UTF8);
  REQUIRED INT32 original_width;
  REQUIRED INT32 original_height;
  REQUIRED BYTE_ARRAY image_format (UTF8);
  REQUIRED BYTE_ARRAY image;
}";

/// Rows decoded per batch when reading.
const READ_BATCH_ROWS: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    pub filename: String,
    pub patient_id: String,
    pub follow_up: u32,
    pub labels: LabelSet,
    pub split: Split,
    pub view_position: String,
    pub age: Option<u16>,
    pub sex: String,
    pub original_width: u32,
    pub original_height: u32,
    pub image_format: ImageFormat,
    pub image: Bytes,
}

#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Rows per Parquet row group (the unit a reader fetches).
    pub row_group_rows: usize,
    pub zstd_level: i32,
    /// Extra key/value metadata stored in the file footer.
    pub metadata: Vec<(String, String)>,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            row_group_rows: 128,
            zstd_level: 1,
            metadata: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("shard row {row}: column `{column}` {problem}")]
    BadValue {
        row: usize,
        column: &'static str,
        problem: String,
    },
    #[error("value out of range for column `{column}`: {value}")]
    OutOfRange { column: &'static str, value: u64 },
}

fn int32(column: &'static str, value: u32) -> Result<i32, ShardError> {
    i32::try_from(value).map_err(|_| ShardError::OutOfRange {
        column,
        value: value.into(),
    })
}

/// Encodes rows as one Parquet file (zstd), in memory.
pub fn write_shard(rows: &[ShardRow], options: &ShardOptions) -> Result<Vec<u8>, ShardError> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let mut metadata = vec![KeyValue::new(
        "chexvision.shard_format_version".to_owned(),
        SHARD_FORMAT_VERSION.to_owned(),
    )];
    metadata.extend(
        options
            .metadata
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(options.zstd_level)?))
        .set_key_value_metadata(Some(metadata))
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(properties))?;
    for group in rows.chunks(options.row_group_rows.max(1)) {
        let strings = |f: fn(&ShardRow) -> &str| -> Vec<ByteArray> {
            group.iter().map(|r| ByteArray::from(f(r))).collect()
        };
        let ints =
            |column: &'static str, f: fn(&ShardRow) -> u32| -> Result<Vec<i32>, ShardError> {
                group.iter().map(|r| int32(column, f(r))).collect()
            };
        let labels: Vec<ByteArray> = group
            .iter()
            .map(|r| ByteArray::from(r.labels.to_string().as_str()))
            .collect();
        let formats: Vec<ByteArray> = group
            .iter()
            .map(|r| ByteArray::from(r.image_format.to_string().as_str()))
            .collect();
        let images: Vec<ByteArray> = group
            .iter()
            .map(|r| ByteArray::from(r.image.clone()))
            .collect();
        let ages: Vec<i32> = group.iter().filter_map(|r| r.age.map(i32::from)).collect();
        let age_levels: Vec<i16> = group.iter().map(|r| i16::from(r.age.is_some())).collect();

        enum Column {
            Bytes(Vec<ByteArray>),
            Int(Vec<i32>),
            OptionalInt(Vec<i32>, Vec<i16>),
        }
        let columns = [
            Column::Bytes(strings(|r| &r.filename)),
            Column::Bytes(strings(|r| &r.patient_id)),
            Column::Int(ints("follow_up", |r| r.follow_up)?),
            Column::Bytes(labels),
            Column::Int(group.iter().map(|r| i32::from(r.labels.bits())).collect()),
            Column::Bytes(strings(|r| r.split.name())),
            Column::Bytes(strings(|r| &r.view_position)),
            Column::OptionalInt(ages, age_levels),
            Column::Bytes(strings(|r| &r.sex)),
            Column::Int(ints("original_width", |r| r.original_width)?),
            Column::Int(ints("original_height", |r| r.original_height)?),
            Column::Bytes(formats),
            Column::Bytes(images),
        ];
        let mut row_group = writer.next_row_group()?;
        for column in columns {
            let Some(mut writer) = row_group.next_column()? else {
                break;
            };
            match column {
                Column::Bytes(values) => {
                    writer
                        .typed::<ByteArrayType>()
                        .write_batch(&values, None, None)?;
                }
                Column::Int(values) => {
                    writer
                        .typed::<Int32Type>()
                        .write_batch(&values, None, None)?;
                }
                Column::OptionalInt(values, levels) => {
                    writer
                        .typed::<Int32Type>()
                        .write_batch(&values, Some(&levels), None)?;
                }
            }
            writer.close()?;
        }
        row_group.close()?;
    }
    Ok(writer.into_inner()?)
}

/// Streams the rows of a shard.
pub struct ShardReader {
    rows: RowIter<'static>,
    metadata: Vec<(String, String)>,
    num_rows: u64,
    next_row: usize,
}

impl std::fmt::Debug for ShardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader")
            .field("num_rows", &self.num_rows)
            .field("next_row", &self.next_row)
            .finish()
    }
}

/// Opens a shard for streaming (from a file, or from bytes already fetched).
pub fn read_shard<R: ChunkReader + 'static>(source: R) -> Result<ShardReader, ShardError> {
    let reader = SerializedFileReader::new(source)?;
    let file_metadata = reader.metadata().file_metadata();
    let metadata = file_metadata
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let num_rows = u64::try_from(file_metadata.num_rows()).unwrap_or(0);
    let rows = RowIter::from_file_into(Box::new(reader)).with_batch_size(READ_BATCH_ROWS);
    Ok(ShardReader {
        rows,
        metadata,
        num_rows,
        next_row: 0,
    })
}

impl ShardReader {
    /// The footer's key/value metadata.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    pub fn num_rows(&self) -> u64 {
        self.num_rows
    }
}

impl Iterator for ShardReader {
    type Item = Result<ShardRow, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = self.rows.next()?;
        let index = self.next_row;
        self.next_row += 1;
        Some(
            row.map_err(ShardError::from)
                .and_then(|r| decode_row(index, &r)),
        )
    }
}

fn decode_row(index: usize, row: &Row) -> Result<ShardRow, ShardError> {
    let bad = |column: &'static str, problem: String| ShardError::BadValue {
        row: index,
        column,
        problem,
    };
    let field = |name: &'static str| -> Result<&Field, ShardError> {
        row.get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f)
            .ok_or_else(|| bad(name, "is missing".into()))
    };
    let text = |name: &'static str| -> Result<String, ShardError> {
        match field(name)? {
            Field::Str(s) => Ok(s.clone()),
            other => Err(bad(name, format!("is not text: {other}"))),
        }
    };
    let int = |name: &'static str| -> Result<u32, ShardError> {
        match field(name)? {
            Field::Int(v) => u32::try_from(*v).map_err(|_| bad(name, format!("is negative: {v}"))),
            other => Err(bad(name, format!("is not an integer: {other}"))),
        }
    };
    let labels = text("labels")?;
    let labels = LabelSet::parse(&labels).map_err(|e| bad("labels", e.to_string()))?;
    let split = text("split")?;
    let split =
        Split::from_name(&split).ok_or_else(|| bad("split", format!("unknown: {split}")))?;
    let age = match field("age")? {
        Field::Null => None,
        Field::Int(v) => Some(u16::try_from(*v).map_err(|_| bad("age", format!("{v}")))?),
        other => return Err(bad("age", format!("is not an integer: {other}"))),
    };
    let image_format = match text("image_format")?.as_str() {
        "png" => ImageFormat::Png,
        "jpeg" => ImageFormat::Jpeg,
        "gray8" => ImageFormat::Gray8,
        "dicom" => ImageFormat::Dicom,
        other => return Err(bad("image_format", format!("unknown: {other}"))),
    };
    let image = match field("image")? {
        Field::Bytes(b) => Bytes::copy_from_slice(b.data()),
        other => return Err(bad("image", format!("is not bytes: {other}"))),
    };
    Ok(ShardRow {
        filename: text("filename")?,
        patient_id: text("patient_id")?,
        follow_up: int("follow_up")?,
        labels,
        split,
        view_position: text("view_position")?,
        age,
        sex: text("sex")?,
        original_width: int("original_width")?,
        original_height: int("original_height")?,
        image_format,
        image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u32, age: Option<u16>) -> ShardRow {
        ShardRow {
            filename: format!("{i:08}_000.png"),
            patient_id: i.to_string(),
            follow_up: i % 3,
            labels: LabelSet::parse(if i.is_multiple_of(2) {
                "No Finding"
            } else {
                "Mass|Nodule"
            })
            .unwrap(),
            split: if i.is_multiple_of(5) {
                Split::Test
            } else {
                Split::Train
            },
            view_position: "PA".into(),
            age,
            sex: "F".into(),
            original_width: 1024,
            original_height: 1000 + i,
            // Every format string goes through the column.
            image_format: [
                ImageFormat::Png,
                ImageFormat::Jpeg,
                ImageFormat::Gray8,
                ImageFormat::Dicom,
            ][i as usize % 4],
            image: Bytes::from(vec![i as u8; 100 + i as usize]),
        }
    }

    #[test]
    fn rows_survive_a_round_trip_across_row_groups() {
        let rows: Vec<ShardRow> = (0..45)
            .map(|i| {
                row(
                    i,
                    if i.is_multiple_of(7) {
                        None
                    } else {
                        Some(40 + i as u16)
                    },
                )
            })
            .collect();
        let options = ShardOptions {
            row_group_rows: 10,
            metadata: vec![("chexvision.dataset_id".into(), "d1".into())],
            ..ShardOptions::default()
        };
        let bytes = write_shard(&rows, &options).unwrap();
        let reader = read_shard(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(reader.num_rows(), 45);
        assert!(reader
            .metadata()
            .contains(&("chexvision.dataset_id".into(), "d1".into())));
        let back: Vec<ShardRow> = reader.map(Result::unwrap).collect();
        assert_eq!(back, rows);
        // Deterministic: the same rows give the same bytes.
        assert_eq!(write_shard(&rows, &options).unwrap(), bytes);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let err = read_shard(Bytes::from_static(b"not a parquet file at all")).unwrap_err();
        assert!(err.to_string().contains("parquet"), "{err}");
        let good = write_shard(&[row(1, None)], &ShardOptions::default()).unwrap();
        let truncated = Bytes::from(good[..good.len() - 10].to_vec());
        assert!(read_shard(truncated).is_err());
    }
}
