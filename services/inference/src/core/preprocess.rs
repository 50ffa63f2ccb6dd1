//! An uploaded image to the model's input: decoded under limits (PNG, JPEG,
//! DICOM), resized to the model's input size (bilinear), equalised with
//! CLAHE as the preprocess service did to the training images, and
//! normalised; with test-time augmentation, its four views. DICOM
//! acquisition attributes become warnings when the image is not a frontal
//! chest radiograph.

use std::time::Instant;

use chexvision_vision::{
    clahe, decode_gray8, dicom_view, resize_gray8, to_tensor_imagenet, tta_views, DecodeLimits,
    GrayImage8, ResizeFilter, VisionError,
};

use crate::settings::PreprocessSettings;

/// A decoded upload.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: GrayImage8,
    pub warnings: Vec<String>,
    pub decode_ms: f64,
}

/// An image ready for the model at one input size.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub size: u32,
    /// The equalised image at input size (what the heatmap is drawn on).
    pub gray: GrayImage8,
    /// One normalised tensor (3 × size × size) per view: 1, or 4 with TTA.
    pub views: Vec<Vec<f32>>,
    pub preprocess_ms: f64,
}

/// Decodes `bytes` under `limits`; DICOM acquisition attributes that say
/// the image is not a frontal chest radiograph become warnings.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, VisionError> {
    let start = Instant::now();
    let image = decode_gray8(bytes, limits)?;
    let warnings = dicom_view(bytes)
        .map(|view| view_warnings(&view))
        .unwrap_or_default();
    Ok(Decoded {
        image,
        warnings,
        decode_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

fn view_warnings(view: &chexvision_vision::DicomView) -> Vec<String> {
    let mut warnings = Vec::new();
    // Values are coded strings from a short list; anything else is not
    // echoed back (it could carry free text).
    let printable = |s: &str| {
        if s.len() <= 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'_')
        {
            s.to_string()
        } else {
            "an unrecognised value".to_string()
        }
    };
    if let Some(position) = &view.view_position {
        let p = position.to_ascii_uppercase();
        if !matches!(p.as_str(), "PA" | "AP" | "") {
            warnings.push(format!(
                "DICOM View Position is {} (not PA or AP): the model reads frontal radiographs; a lateral or other view gives unreliable results",
                printable(position)
            ));
        }
    }
    if let Some(part) = &view.body_part {
        let p = part.to_ascii_uppercase();
        if !p.is_empty() && !p.contains("CHEST") && !p.contains("THORAX") && !p.contains("LUNG") {
            warnings.push(format!(
                "DICOM Body Part Examined is {} (not CHEST): the model reads chest radiographs",
                printable(part)
            ));
        }
    }
    if let Some(modality) = &view.modality {
        let m = modality.to_ascii_uppercase();
        if !matches!(m.as_str(), "CR" | "DX" | "DR" | "RG" | "OT" | "") {
            warnings.push(format!(
                "DICOM Modality is {} (not CR or DX): the model reads radiographs",
                printable(modality)
            ));
        }
    }
    warnings
}

/// Resizes, equalises and normalises `image` for a model of input `size`.
pub fn prepare(
    image: &GrayImage8,
    size: u32,
    settings: &PreprocessSettings,
    tta: bool,
) -> Result<Prepared, VisionError> {
    let start = Instant::now();
    let resized = resize_gray8(image, size, size, ResizeFilter::Bilinear)?;
    let gray = clahe(
        &resized,
        settings.clahe_clip_limit,
        (settings.clahe_tiles, settings.clahe_tiles),
    )?;
    let views = if tta {
        tta_views(&gray)?.iter().map(to_tensor_imagenet).collect()
    } else {
        vec![to_tensor_imagenet(&gray)]
    };
    Ok(Prepared {
        size,
        gray,
        views,
        preprocess_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontal_chest_dicom_attributes_give_no_warning() {
        let view = chexvision_vision::DicomView {
            modality: Some("DX".into()),
            body_part: Some("CHEST".into()),
            view_position: Some("PA".into()),
        };
        assert!(view_warnings(&view).is_empty());
    }

    #[test]
    fn lateral_and_non_chest_dicom_attributes_are_warned_about() {
        let view = chexvision_vision::DicomView {
            modality: Some("MR".into()),
            body_part: Some("KNEE".into()),
            view_position: Some("LL".into()),
        };
        let warnings = view_warnings(&view);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("View Position is LL"));
        assert!(warnings[1].contains("Body Part Examined is KNEE"));
        assert!(warnings[2].contains("Modality is MR"));
        // Free text is not echoed.
        let odd = chexvision_vision::DicomView {
            body_part: Some("Left knee of DOE^JOHN".into()),
            ..Default::default()
        };
        let w = view_warnings(&odd);
        assert!(w[0].contains("an unrecognised value"), "{w:?}");
        assert!(!w[0].contains("DOE"));
    }

    #[test]
    fn tta_gives_four_views_of_the_input_size() {
        let image = GrayImage8::new(40, 30, (0..1200).map(|i| (i % 251) as u8).collect()).unwrap();
        let p = prepare(&image, 32, &PreprocessSettings::default(), true).unwrap();
        assert_eq!(p.views.len(), 4);
        assert!(p.views.iter().all(|v| v.len() == 3 * 32 * 32));
        assert_eq!((p.gray.width, p.gray.height), (32, 32));
        assert_ne!(p.views[0], p.views[1], "the flipped view differs");
    }
}
