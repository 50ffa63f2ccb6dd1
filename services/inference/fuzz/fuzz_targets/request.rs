//! Request bodies as the inference service parses them: the first byte
//! picks the parser (multipart/form-data, an Open Inference Protocol body
//! with its binary part, or an image body such as DICOM), the rest is the
//! body. Every outcome must be a value or an error, never a panic; what
//! parses is decoded under small limits, which must hold.
#![no_main]

#[path = "../../src/router/multipart.rs"]
#[allow(dead_code)]
mod multipart;
#[path = "../../src/router/oip_wire.rs"]
#[allow(dead_code)]
mod oip_wire;

use bytes::Bytes;
use chexvision_vision::{decode_gray8, dicom_view, DecodeLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 4_000_000,
    max_bytes: 1 << 20,
};

fn decode(bytes: &[u8]) {
    let _ = dicom_view(bytes);
    if let Ok(image) = decode_gray8(bytes, &LIMITS) {
        assert!(u64::from(image.width) * u64::from(image.height) <= LIMITS.max_pixels);
        assert_eq!(
            image.pixels.len() as u64,
            u64::from(image.width) * u64::from(image.height)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            let body = Bytes::copy_from_slice(rest);
            if let Ok(parts) = multipart::parse_multipart(&body, "fuzzboundary", 8) {
                assert!(parts.len() <= 8);
                for part in multipart::image_parts(parts) {
                    assert!(part.data.len() <= body.len());
                    decode(&part.data);
                }
            }
        }
        1 => {
            // Two bytes of header length, then the body.
            let Some((len, body)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let body = Bytes::copy_from_slice(body);
            let header = usize::from(u16::from_le_bytes(*len));
            if let Ok(parsed) = oip_wire::parse_infer(&body, Some(header), 4) {
                assert!(!parsed.inputs.is_empty() && parsed.inputs.len() <= 4);
                for input in parsed.inputs {
                    match input {
                        oip_wire::WireInput::Encoded(bytes) => decode(&bytes),
                        oip_wire::WireInput::Tensor { size, pixels } => {
                            assert_eq!(pixels.len(), 3 * (size as usize) * (size as usize));
                        }
                    }
                }
            }
            let _ = oip_wire::parse_infer(&body, None, 4);
        }
        _ => decode(rest),
    }
});
