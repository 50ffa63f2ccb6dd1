//! Resizing by convolution with antialiasing (Pillow's algorithm), via
//! fast_image_resize.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::{GrayImage8, VisionError};

/// Resampling filter; each matches the Pillow filter of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeFilter {
    /// Pillow `Image.BILINEAR` (triangle filter, support 1).
    Bilinear,
    /// Pillow `Image.BICUBIC` (Catmull-Rom, a = -0.5, support 2).
    Bicubic,
    /// Pillow `Image.LANCZOS` (support 3).
    Lanczos3,
    /// Pillow `Image.BOX`: area averaging (box filter).
    Area,
}

impl ResizeFilter {
    fn filter_type(self) -> FilterType {
        match self {
            Self::Bilinear => FilterType::Bilinear,
            Self::Bicubic => FilterType::CatmullRom,
            Self::Lanczos3 => FilterType::Lanczos3,
            Self::Area => FilterType::Box,
        }
    }
}

/// Resizes `src` to `width` × `height` with `filter`. Downscaling widens the
/// kernel by the scale factor (antialiasing), as Pillow does.
pub fn resize_gray8(
    src: &GrayImage8,
    width: u32,
    height: u32,
    filter: ResizeFilter,
) -> Result<GrayImage8, VisionError> {
    src.validate()?;
    if width == 0 || height == 0 {
        return Err(VisionError::InvalidDimensions {
            detail: format!("resize target {width}x{height} has a zero side"),
        });
    }
    let src_view =
        ImageRef::new(src.width, src.height, &src.pixels, PixelType::U8).map_err(|e| {
            VisionError::Resize {
                detail: e.to_string(),
            }
        })?;
    let mut dst = Image::new(width, height, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter.filter_type()));
    Resizer::new()
        .resize(&src_view, &mut dst, &options)
        .map_err(|e| VisionError::Resize {
            detail: e.to_string(),
        })?;
    GrayImage8::new(width, height, dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() -> Result<(), VisionError> {
        let src = GrayImage8::new(40, 30, vec![117; 1200])?;
        for f in [
            ResizeFilter::Bilinear,
            ResizeFilter::Bicubic,
            ResizeFilter::Lanczos3,
            ResizeFilter::Area,
        ] {
            for (w, h) in [(13, 7), (40, 30), (97, 61), (1, 1)] {
                let out = resize_gray8(&src, w, h, f)?;
                assert_eq!((out.width, out.height), (w, h));
                assert!(out.pixels.iter().all(|&p| p == 117), "{f:?} {w}x{h}");
            }
        }
        Ok(())
    }

    #[test]
    fn zero_target_is_an_error() -> Result<(), VisionError> {
        let src = GrayImage8::new(4, 4, vec![0; 16])?;
        assert!(matches!(
            resize_gray8(&src, 0, 4, ResizeFilter::Bilinear),
            Err(VisionError::InvalidDimensions { .. })
        ));
        Ok(())
    }

    #[test]
    fn inconsistent_source_is_an_error() {
        let src = GrayImage8 {
            width: 4,
            height: 4,
            pixels: vec![0; 15],
        };
        assert!(matches!(
            resize_gray8(&src, 2, 2, ResizeFilter::Bilinear),
            Err(VisionError::InvalidDimensions { .. })
        ));
    }
}
