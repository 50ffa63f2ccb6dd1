//! Request bodies: read under the size limit (declared length checked
//! first, then every chunk), and their media types.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};

pub use super::multipart::{boundary, image_parts, parse_multipart, MultipartError, Part};
use futures::StreamExt;

use super::errors::ApiError;

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: u64,
) -> Result<Bytes, ApiError> {
    let too_large = |n: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is {n} bytes, over the limit of {limit} bytes (api.max_body_bytes)"),
        )
    };
    if let Some(declared) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if declared > limit {
            return Err(too_large(declared.to_string()));
        }
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large(format!("more than {limit}")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The media type of a request, lower case, without parameters.
pub fn media_type(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
}

/// Media types taken as one raw image (the decoder tells the format from
/// the bytes).
pub const IMAGE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/jpg",
    "application/dicom",
    "application/octet-stream",
];

pub fn is_image_type(media_type: &str) -> bool {
    IMAGE_TYPES.contains(&media_type)
}
