//! RLE Lossless (PS3.5 Annex G).

use super::corrupt;
use super::values::{to_usize, Layout};
use crate::VisionError;

/// Decodes one RLE fragment (one frame) into native little-endian samples,
/// pixel-interleaved (planar configuration 0).
pub(super) fn decode_rle(layout: &Layout, fragment: &[u8]) -> Result<Vec<u8>, VisionError> {
    let header = fragment.get(..64).ok_or_else(|| {
        corrupt(format!(
            "RLE fragment of {} bytes is shorter than its 64-byte header",
            fragment.len()
        ))
    })?;
    let word = |i: usize| -> u32 {
        header
            .get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    let bytes_per_sample = layout.bits_allocated as usize / 8;
    let samples = usize::from(layout.samples);
    let segments = samples * bytes_per_sample;
    if word(0) as usize != segments {
        return Err(corrupt(format!(
            "RLE header declares {} segments; {} sample(s) of {} byte(s) need {segments}",
            word(0),
            samples,
            bytes_per_sample
        )));
    }
    let pixels = to_usize(layout.pixels())?;
    let segment = |k: usize| -> Result<&[u8], VisionError> {
        let start = word(k + 1) as usize;
        let end = if k + 1 < segments {
            word(k + 2) as usize
        } else {
            fragment.len()
        };
        let bytes = fragment
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| {
                corrupt(format!(
                    "RLE segment {k} spans bytes {start}..{end} of a {}-byte fragment",
                    fragment.len()
                ))
            })?;
        // Two bytes of PackBits make at most 128: a segment too short to
        // fill the frame is refused before the frame is allocated.
        if (bytes.len() as u64).saturating_mul(64) < pixels as u64 {
            return Err(corrupt(format!(
                "RLE segment {k} of {} bytes cannot hold {} × {} pixels",
                bytes.len(),
                layout.height,
                layout.width
            )));
        }
        Ok(bytes)
    };
    for k in 0..segments {
        segment(k)?;
    }
    let stride = segments;
    let mut out = vec![0u8; to_usize(layout.frame_bytes())?];
    for k in 0..segments {
        let segment = segment(k)?;
        // Segments go most significant byte first, sample by sample; the
        // output is little endian.
        let sample = k / bytes_per_sample;
        let byte = bytes_per_sample - 1 - k % bytes_per_sample;
        let first = sample * bytes_per_sample + byte;
        let written = unpack_bits(segment, &mut out, first, stride, pixels);
        if written < pixels {
            return Err(corrupt(format!(
                "RLE segment {k} decodes to {written} bytes; {} × {} pixels need {pixels}",
                layout.height, layout.width
            )));
        }
    }
    Ok(out)
}

/// PackBits (PS3.5 G.3.1) from `src` into `out[first + i * stride]` for
/// `i < count`; returns how many bytes were written. Bytes beyond `count`
/// (padding) are ignored.
fn unpack_bits(src: &[u8], out: &mut [u8], first: usize, stride: usize, count: usize) -> usize {
    let mut written = 0usize;
    let mut i = 0usize;
    let mut put = |b: u8, written: &mut usize| {
        if let Some(slot) = out.get_mut(first + *written * stride) {
            *slot = b;
        }
        *written += 1;
    };
    while written < count {
        let Some(&header) = src.get(i) else { break };
        i += 1;
        let n = header as i8;
        if n >= 0 {
            let run = n as usize + 1;
            let Some(literal) = src.get(i..i + run) else {
                break;
            };
            i += run;
            for &b in literal.iter().take(count - written) {
                put(b, &mut written);
            }
        } else if n != -128 {
            let run = (1 - i32::from(n)) as usize;
            let Some(&b) = src.get(i) else { break };
            i += 1;
            for _ in 0..run.min(count - written) {
                put(b, &mut written);
            }
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_runs_and_literals() {
        // Literal of 3, run of 4 x 0xAA, no-op, literal of 1.
        let src = [2, 1, 2, 3, 0xFD, 0xAA, 0x80, 0, 9];
        let mut out = vec![0u8; 8];
        assert_eq!(unpack_bits(&src, &mut out, 0, 1, 8), 8);
        assert_eq!(out, [1, 2, 3, 0xAA, 0xAA, 0xAA, 0xAA, 9]);
        // Strided, short input.
        let mut out = vec![0u8; 6];
        assert_eq!(unpack_bits(&[0xFF, 7], &mut out, 1, 2, 3), 2);
        assert_eq!(out, [0, 7, 0, 7, 0, 0]);
    }
}
