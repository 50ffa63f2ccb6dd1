//! The Open Inference Protocol's request body, parsed without HTTP: the
//! JSON header (inputs, requested outputs, parameters) and, with the
//! binary tensor data extension, the binary part after it. A plain
//! function over bytes, so the fuzz target reaches it.
//!
//! Bounds: at most `max_images` images, tensor sizes checked against the
//! bytes present before anything is allocated from them.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Why a request body was refused (a 400 naming the problem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl WireError {
    pub fn new(message: impl Into<String>) -> Self {
        WireError(message.into())
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One image of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum WireInput {
    /// An encoded file (PNG, JPEG, DICOM).
    Encoded(Bytes),
    /// A preprocessed tensor, 3 × size × size.
    Tensor { size: u32, pixels: Vec<f32> },
}

/// An input tensor of an inference request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Option<Map<String, Value>>,
    /// Row-major, flat or nested; absent when sent as binary data.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

/// An output a request asks for.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Option<Map<String, Value>>,
}

/// `POST /v2/models/{name}/infer`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

fn bool_parameter(parameters: &Option<Map<String, Value>>, key: &str) -> bool {
    parameters
        .as_ref()
        .and_then(|p| p.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A parsed request: the images (or tensors) and what to answer with.
pub struct ParsedInfer {
    pub id: Option<String>,
    pub inputs: Vec<WireInput>,
    pub tta: bool,
    /// The request parameter `study_ref` (checked by the caller).
    pub study_ref: Option<String>,
    /// Requested outputs: (index 0 findings / 1 abnormal, binary).
    pub outputs: Vec<(usize, bool)>,
}

/// Parses an inference request body (JSON, or JSON + binary data when
/// `header_length` is given). At most `max_images` images.
pub fn parse_infer(
    body: &Bytes,
    header_length: Option<usize>,
    max_images: usize,
) -> Result<ParsedInfer, WireError> {
    let (json, mut binary) = match header_length {
        Some(n) if n <= body.len() => (body.slice(..n), body.slice(n..)),
        Some(n) => {
            return Err(WireError::new(format!(
                "Inference-Header-Content-Length is {n}, but the body has only {} bytes",
                body.len()
            )))
        }
        None => (body.clone(), Bytes::new()),
    };
    let request: InferRequest = serde_json::from_slice(&json)
        .map_err(|e| WireError::new(format!("the inference request JSON: {e}")))?;
    if request.inputs.len() != 1 {
        return Err(WireError::new(format!(
            "send exactly one input, `image` (BYTES) or `pixels` (FP32); got {}",
            request.inputs.len()
        )));
    }
    let input = &request.inputs[0];
    let binary_size = input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
        .map(|v| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| WireError::new("binary_data_size must be a whole number"))
        })
        .transpose()?;
    let raw = match binary_size {
        Some(n) if n <= binary.len() => Some(binary.split_to(n)),
        Some(n) => {
            return Err(WireError::new(format!(
                "input `{}` declares {n} binary bytes, but only {} follow the header",
                input.name,
                binary.len()
            )))
        }
        None => None,
    };
    let count = |shape: &[i64]| -> Result<usize, WireError> {
        shape.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d)
                .ok()
                .and_then(|d| acc.checked_mul(d))
                .ok_or_else(|| WireError::new(format!("shape {shape:?} is not valid")))
        })
    };
    let inputs = match (input.name.as_str(), input.datatype.as_str()) {
        ("image", "BYTES") => {
            let n = count(&input.shape)?;
            if n == 0 || n > max_images {
                return Err(WireError::new(format!(
                    "`image` holds {n} images: send 1 to {max_images} (api.max_batch_images)"
                )));
            }
            let images = match raw {
                Some(raw) => split_bytes_elements(raw)?,
                None => json_bytes_elements(input.data.as_ref())?,
            };
            if images.len() != n {
                return Err(WireError::new(format!(
                    "`image` has shape {:?} but holds {} elements",
                    input.shape,
                    images.len()
                )));
            }
            images.into_iter().map(WireInput::Encoded).collect()
        }
        ("pixels", "FP32") => {
            let [n, c, h, w] = input.shape[..] else {
                return Err(WireError::new(format!(
                    "`pixels` must have shape [N, 3, S, S], not {:?}",
                    input.shape
                )));
            };
            if c != 3 || h != w || !(16..=2048).contains(&h) || n < 1 || n as usize > max_images {
                return Err(WireError::new(format!(
                    "`pixels` must have shape [N, 3, S, S] with N 1..={max_images} and S 16..=2048, not {:?}",
                    input.shape
                )));
            }
            let size = h as usize;
            let per = 3 * size * size;
            let values = match raw {
                Some(raw) => {
                    if raw.len() != n as usize * per * 4 {
                        return Err(WireError::new(format!(
                            "`pixels` binary data is {} bytes, not {} (N·3·S·S little-endian float32)",
                            raw.len(),
                            n as usize * per * 4
                        )));
                    }
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect::<Vec<f32>>()
                }
                None => {
                    let mut values = Vec::new();
                    flatten_numbers(input.data.as_ref(), &mut values, n as usize * per)?;
                    values
                }
            };
            if values.len() != n as usize * per {
                return Err(WireError::new(format!(
                    "`pixels` holds {} values, not {} for shape {:?}",
                    values.len(),
                    n as usize * per,
                    input.shape
                )));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(WireError::new("`pixels` holds a NaN or infinite value"));
            }
            values
                .chunks_exact(per)
                .map(|chunk| WireInput::Tensor {
                    size: size as u32,
                    pixels: chunk.to_vec(),
                })
                .collect()
        }
        (name, datatype) => {
            return Err(WireError::new(format!(
                "unknown input `{}` of {}: send `image` (BYTES) or `pixels` (FP32)",
                name.chars().take(64).collect::<String>(),
                datatype.chars().take(16).collect::<String>()
            )))
        }
    };
    let all_binary = bool_parameter(&request.parameters, "binary_data_output");
    let outputs = match &request.outputs {
        None => vec![(0, all_binary), (1, all_binary)],
        Some(list) => list
            .iter()
            .map(|o| {
                let index = match o.name.as_str() {
                    "findings" => 0,
                    "abnormal" => 1,
                    other => {
                        return Err(WireError::new(format!(
                            "unknown output `{}`: `findings` or `abnormal`",
                            other.chars().take(64).collect::<String>()
                        )))
                    }
                };
                Ok((
                    index,
                    all_binary || bool_parameter(&o.parameters, "binary_data"),
                ))
            })
            .collect::<Result<_, _>>()?,
    };
    let study_ref = match request.parameters.as_ref().and_then(|p| p.get("study_ref")) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(WireError::new("the parameter study_ref must be a string")),
    };
    Ok(ParsedInfer {
        id: request.id,
        tta: bool_parameter(&request.parameters, "tta"),
        study_ref,
        inputs,
        outputs,
    })
}

/// BYTES elements in the binary form: each a 4-byte little-endian length
/// and that many bytes.
fn split_bytes_elements(mut raw: Bytes) -> Result<Vec<Bytes>, WireError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 4 {
            return Err(WireError::new(
                "BYTES binary data ends inside an element's 4-byte length",
            ));
        }
        let n = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let _ = raw.split_to(4);
        if n > raw.len() {
            return Err(WireError::new(format!(
                "a BYTES element declares {n} bytes, but only {} remain",
                raw.len()
            )));
        }
        out.push(raw.split_to(n));
    }
    Ok(out)
}

/// BYTES elements in JSON: strings (flat or nested), base64 of the file.
fn json_bytes_elements(data: Option<&Value>) -> Result<Vec<Bytes>, WireError> {
    fn walk(v: &Value, out: &mut Vec<Bytes>) -> Result<(), WireError> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::String(s) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|e| {
                        WireError::new(format!(
                            "a BYTES element in JSON must be the file in base64: {e}"
                        ))
                    })?;
                out.push(Bytes::from(bytes));
                Ok(())
            }
            _ => Err(WireError::new("BYTES data must be strings")),
        }
    }
    let data = data.ok_or_else(|| WireError::new("input `image` has no data"))?;
    let mut out = Vec::new();
    walk(data, &mut out)?;
    Ok(out)
}

fn flatten_numbers(
    data: Option<&Value>,
    out: &mut Vec<f32>,
    limit: usize,
) -> Result<(), WireError> {
    fn walk(v: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), WireError> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out, limit)),
            Value::Number(n) => {
                if out.len() >= limit {
                    return Err(WireError::new("`pixels` holds more values than its shape"));
                }
                out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
                Ok(())
            }
            _ => Err(WireError::new("FP32 data must be numbers")),
        }
    }
    let data = data.ok_or_else(|| WireError::new("input `pixels` has no data"))?;
    walk(data, out, limit)
}
