//! Finds the parts of an NIH-layout source in a listing of its files: the
//! metadata CSV, the images (nested `images_001/images/*.png` as in the
//! official archives, or flat), the official split lists, and the marker the
//! synthetic generator leaves.

use std::collections::BTreeMap;

/// The marker file `chexvision synth` writes next to its CSV.
pub const SYNTHETIC_MARKER: &str = "synthetic.json";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NihLayout {
    /// Key of `Data_Entry_2017.csv` or `Data_Entry_2017_v2020.csv`.
    pub metadata_key: String,
    /// Image file name → key.
    pub images: BTreeMap<String, String>,
    pub train_val_list_key: Option<String>,
    pub test_list_key: Option<String>,
    pub synthetic_marker_key: Option<String>,
    /// Second and later files with a name already seen: (name, key).
    pub duplicate_images: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no Data_Entry_2017*.csv among the {0} files of the source")]
    NoMetadata(usize),
}

fn base_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// PNG, JPEG or DICOM, by extension (`.dcm`, `.dicom`).
pub fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".dcm", ".dicom"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

impl NihLayout {
    /// `keys` are the source's files, relative to its root, sorted.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Self, LayoutError> {
        let mut layout = NihLayout::default();
        let mut metadata: Vec<&str> = Vec::new();
        let mut count = 0;
        for key in keys {
            count += 1;
            let name = base_name(key);
            if name.starts_with("Data_Entry_2017") && name.ends_with(".csv") {
                metadata.push(key);
            } else if name == "train_val_list.txt" {
                layout
                    .train_val_list_key
                    .get_or_insert_with(|| key.to_owned());
            } else if name == "test_list.txt" {
                layout.test_list_key.get_or_insert_with(|| key.to_owned());
            } else if name == SYNTHETIC_MARKER {
                layout
                    .synthetic_marker_key
                    .get_or_insert_with(|| key.to_owned());
            } else if is_image_name(name) {
                if layout.images.contains_key(name) {
                    layout
                        .duplicate_images
                        .push((name.to_owned(), key.to_owned()));
                } else {
                    layout.images.insert(name.to_owned(), key.to_owned());
                }
            }
        }
        // The shallowest CSV wins (a copy deeper down is likely a backup).
        metadata.sort_by_key(|k| (k.matches('/').count(), *k));
        layout.metadata_key = metadata
            .first()
            .map(|k| (*k).to_owned())
            .ok_or(LayoutError::NoMetadata(count))?;
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_official_archive_layout() {
        let keys = [
            "Data_Entry_2017_v2020.csv",
            "images_001/images/00000001_000.png",
            "images_001/images/00000001_001.png",
            "images_002/images/00001336_000.png",
            "test_list.txt",
            "train_val_list.txt",
        ];
        let layout = NihLayout::from_keys(keys).unwrap();
        assert_eq!(layout.metadata_key, "Data_Entry_2017_v2020.csv");
        assert_eq!(layout.images.len(), 3);
        assert_eq!(
            layout.images["00001336_000.png"],
            "images_002/images/00001336_000.png"
        );
        assert_eq!(layout.test_list_key.as_deref(), Some("test_list.txt"));
        assert_eq!(
            layout.train_val_list_key.as_deref(),
            Some("train_val_list.txt")
        );
        assert!(layout.synthetic_marker_key.is_none());
    }

    #[test]
    fn flat_layout_with_duplicates_and_marker() {
        let keys = [
            "backup/Data_Entry_2017.csv",
            "Data_Entry_2017.csv",
            "a.png",
            "copy/a.png",
            "b.JPG",
            "c.dcm",
            "d.DICOM",
            "notes.txt",
            "synthetic.json",
        ];
        let layout = NihLayout::from_keys(keys).unwrap();
        assert_eq!(layout.metadata_key, "Data_Entry_2017.csv");
        assert_eq!(layout.images.len(), 4);
        assert!(layout.images.contains_key("c.dcm") && layout.images.contains_key("d.DICOM"));
        assert_eq!(
            layout.duplicate_images,
            vec![("a.png".to_owned(), "copy/a.png".to_owned())]
        );
        assert_eq!(
            layout.synthetic_marker_key.as_deref(),
            Some("synthetic.json")
        );
    }

    #[test]
    fn missing_metadata_is_named() {
        let err = NihLayout::from_keys(["a.png", "b.png"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no Data_Entry_2017*.csv among the 2 files of the source"
        );
    }
}
