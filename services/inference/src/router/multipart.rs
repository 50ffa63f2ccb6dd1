//! `multipart/form-data` (RFC 7578), parsed over the whole body (already
//! read under the size limit): a plain function over bytes, so the fuzz
//! target reaches it. At most `max_parts` parts, 8 KiB of headers each.

use bytes::Bytes;

/// Why a multipart body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("multipart/form-data needs a boundary parameter (1 to 70 characters)")]
    NoBoundary,
    #[error("no opening boundary line `--{0}`")]
    NoOpening(String),
    #[error("part {0} does not end with a boundary line: truncated")]
    Unterminated(usize),
    #[error("part {0} has malformed headers: {1}")]
    Headers(usize, String),
    #[error("more than {0} parts")]
    TooManyParts(usize),
}

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: Option<String>,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// Most bytes of one part's headers.
const MAX_PART_HEADERS: usize = 8 * 1024;

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| (1..=70).contains(&b.len()))
        .ok_or(MultipartError::NoBoundary)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Splits a multipart body into at most `max_parts` parts.
pub fn parse_multipart(
    body: &Bytes,
    boundary: &str,
    max_parts: usize,
) -> Result<Vec<Part>, MultipartError> {
    let opening = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    // The first boundary may start the body or follow a preamble.
    let mut pos = if body.starts_with(opening.as_bytes()) {
        opening.len()
    } else {
        find(body, delimiter.as_bytes(), 0)
            .map(|i| i + delimiter.len())
            .ok_or_else(|| MultipartError::NoOpening(boundary.to_string()))?
    };
    let mut parts = Vec::new();
    loop {
        let index = parts.len();
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(parts); // the closing delimiter; an epilogue is ignored
        }
        // Transport padding, then CRLF.
        let line_end = find(body, b"\r\n", pos).ok_or(MultipartError::Unterminated(index))?;
        if body[pos..line_end]
            .iter()
            .any(|b| !matches!(b, b' ' | b'\t'))
        {
            return Err(MultipartError::Headers(
                index,
                "unexpected bytes after the boundary".into(),
            ));
        }
        if index >= max_parts {
            return Err(MultipartError::TooManyParts(max_parts));
        }
        let headers_start = line_end + 2;
        let (headers_end, data_start) = if body[headers_start..].starts_with(b"\r\n") {
            (headers_start, headers_start + 2)
        } else {
            let end = find(body, b"\r\n\r\n", headers_start)
                .ok_or(MultipartError::Unterminated(index))?;
            (end, end + 4)
        };
        if headers_end - headers_start > MAX_PART_HEADERS {
            return Err(MultipartError::Headers(
                index,
                format!("over {MAX_PART_HEADERS} bytes"),
            ));
        }
        let headers = std::str::from_utf8(&body[headers_start..headers_end])
            .map_err(|_| MultipartError::Headers(index, "not UTF-8".into()))?;
        let mut part = Part {
            name: None,
            filename: None,
            content_type: None,
            data: Bytes::new(),
        };
        for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
            let (key, value) = line.split_once(':').ok_or_else(|| {
                MultipartError::Headers(index, format!("`{line}` is not a header"))
            })?;
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match key.as_str() {
                "content-disposition" => {
                    for param in value.split(';').skip(1) {
                        if let Some((k, v)) = param.split_once('=') {
                            let v = v.trim().trim_matches('"').to_string();
                            match k.trim().to_ascii_lowercase().as_str() {
                                "name" => part.name = Some(v),
                                "filename" => part.filename = Some(v),
                                _ => {}
                            }
                        }
                    }
                }
                "content-type" => part.content_type = Some(value.to_ascii_lowercase()),
                _ => {}
            }
        }
        let data_end = find(body, delimiter.as_bytes(), data_start)
            .ok_or(MultipartError::Unterminated(index))?;
        part.data = body.slice(data_start..data_end);
        parts.push(part);
        pos = data_end + delimiter.len();
    }
}

/// The image parts of a multipart body: those named `image`, else every
/// part with a file name, else every part.
pub fn image_parts(parts: Vec<Part>) -> Vec<Part> {
    if parts.iter().any(|p| p.name.as_deref() == Some("image")) {
        return parts
            .into_iter()
            .filter(|p| p.name.as_deref() == Some("image"))
            .collect();
    }
    if parts.iter().any(|p| p.filename.is_some()) {
        return parts.into_iter().filter(|p| p.filename.is_some()).collect();
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Bytes {
        Bytes::from(s.replace('\n', "\r\n"))
    }

    #[test]
    fn parts_with_names_file_names_and_types() {
        let b = body(
            "preamble\n--XyZ\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\nContent-Type: image/png\n\n\u{1}\u{2}\n\n--XyZ\nContent-Disposition: form-data; name=\"note\"\n\nhello\n--XyZ--\nepilogue",
        );
        let parts = parse_multipart(&b, "XyZ", 8).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name.as_deref(), Some("image"));
        assert_eq!(parts[0].filename.as_deref(), Some("a.png"));
        assert_eq!(parts[0].content_type.as_deref(), Some("image/png"));
        assert_eq!(&parts[0].data[..], b"\x01\x02\r\n");
        assert_eq!(&parts[1].data[..], b"hello");
        assert_eq!(image_parts(parts).len(), 1);
    }

    #[test]
    fn broken_bodies_are_refused_by_name() {
        assert_eq!(
            boundary("multipart/form-data"),
            Err(MultipartError::NoBoundary)
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"abc\"").unwrap(),
            "abc"
        );
        let truncated = body("--b\nContent-Disposition: form-data; name=\"image\"\n\nabc");
        assert_eq!(
            parse_multipart(&truncated, "b", 8),
            Err(MultipartError::Unterminated(0))
        );
        assert_eq!(
            parse_multipart(&body("no boundary here"), "b", 8),
            Err(MultipartError::NoOpening("b".into()))
        );
        let many = body(&("--b\n\nx\n".repeat(5) + "--b--"));
        assert_eq!(
            parse_multipart(&many, "b", 3),
            Err(MultipartError::TooManyParts(3))
        );
        let bad_header = body("--b\nno colon here\n\nx\n--b--");
        assert!(matches!(
            parse_multipart(&bad_header, "b", 3),
            Err(MultipartError::Headers(0, _))
        ));
    }
}
