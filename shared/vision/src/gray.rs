//! The 8-bit grayscale image type used throughout the crate.

use crate::VisionError;

/// An 8-bit grayscale image, row-major, no padding between rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage8 {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` bytes, row after row.
    pub pixels: Vec<u8>,
}

impl GrayImage8 {
    /// Builds an image, checking that `pixels` holds exactly
    /// `width * height` bytes and that neither side is zero.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self, VisionError> {
        let img = Self {
            width,
            height,
            pixels,
        };
        img.validate()?;
        Ok(img)
    }

    /// Checks the invariants of [`GrayImage8::new`] on an existing value
    /// (the fields are public, so a value may have been built by hand).
    pub fn validate(&self) -> Result<(), VisionError> {
        if self.width == 0 || self.height == 0 {
            return Err(VisionError::InvalidDimensions {
                detail: format!("zero-sized image {}x{}", self.width, self.height),
            });
        }
        let expected = u64::from(self.width) * u64::from(self.height);
        if self.pixels.len() as u64 != expected {
            return Err(VisionError::InvalidDimensions {
                detail: format!(
                    "{}x{} image needs {expected} bytes, got {}",
                    self.width,
                    self.height,
                    self.pixels.len()
                ),
            });
        }
        Ok(())
    }

    /// The pixel at (x, y), or `None` outside the image.
    pub fn get(&self, x: u32, y: u32) -> Option<u8> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let idx = y as usize * self.width as usize + x as usize;
        self.pixels.get(idx).copied()
    }
}
