//! The Open Inference Protocol (KServe v2 REST), so the service runs as a
//! KServe custom runtime and answers Triton's clients: health, server and
//! model metadata, and inference with JSON tensors or the binary tensor
//! data extension (`Inference-Header-Content-Length`: the JSON header,
//! then each binary input's bytes in order; a `BYTES` element is a 4-byte
//! little-endian length and its bytes).
//!
//! Inputs: `image` (`BYTES`, `[N]`: PNG, JPEG or DICOM files; in JSON,
//! base64 strings) or `pixels` (`FP32`, `[N, 3, S, S]`, preprocessed).
//! Outputs: `findings` (`FP32`, `[N, 14]`) and `abnormal` (`FP32`, `[N, 1]`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use chexvision_dataset::LABELS;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::body::read_body;
use super::errors::ApiError;
use super::{readiness, AppState, Ctx};
use crate::core::model::OUTPUTS;
use crate::core::{ImageInput, PredictRequest};
use crate::settings::Scope;

const HEADER_LENGTH: &str = "inference-header-content-length";

/// `GET /v2`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// A tensor's description in model metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// The findings' names (the columns of `findings`), the serving
    /// version, whether it was trained on synthetic data.
    pub parameters: Map<String, Value>,
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

/// An output tensor.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

/// `GET /v2`.
pub async fn server_metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v2", &state);
    ctx.finish(Ok(HttpResponse::Ok().json(ServerMetadata {
        name: "chexvision-inference".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })))
}

/// `GET /v2/health/live`: never depends on a model or a broker.
pub async fn live(state: web::Data<AppState>) -> HttpResponse {
    let live = state.telemetry.health.is_alive();
    let status = if live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(serde_json::json!({"live": live}))
}

/// `GET /v2/health/ready`: a model is loaded.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (status, _) = readiness(&state);
    HttpResponse::build(status).json(serde_json::json!({"ready": status.is_success()}))
}

fn check_name(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.api.model_name {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "no model named `{}` (this server serves `{}`)",
                name.chars().take(64).collect::<String>(),
                state.api.model_name
            ),
        ))
    }
}

fn metadata(state: &AppState, version: Option<&str>) -> Result<ModelMetadata, ApiError> {
    let current = match version {
        Some(v) => Some(state.core.model_for(Some(v))?),
        None => state.core.slots.current(),
    };
    let size = current
        .as_ref()
        .map_or(-1, |m| i64::from(m.info.input_size));
    let mut parameters = Map::new();
    parameters.insert("labels".into(), serde_json::json!(LABELS));
    if let Some(m) = &current {
        parameters.insert("version".into(), Value::from(m.info.version.clone()));
        parameters.insert(
            "architecture".into(),
            Value::from(m.info.architecture.clone()),
        );
        parameters.insert("synthetic".into(), Value::from(m.info.synthetic));
        parameters.insert("input_size".into(), Value::from(m.info.input_size));
    }
    let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    };
    Ok(ModelMetadata {
        name: state.api.model_name.clone(),
        versions: state
            .core
            .slots
            .loaded()
            .iter()
            .map(|m| m.info.version.clone())
            .collect(),
        platform: "chexvision_candle_cpu".into(),
        inputs: vec![
            tensor("image", "BYTES", vec![-1]),
            tensor("pixels", "FP32", vec![-1, 3, size, size]),
        ],
        outputs: vec![
            tensor("findings", "FP32", vec![-1, LABELS.len() as i64]),
            tensor("abnormal", "FP32", vec![-1, 1]),
        ],
        parameters,
    })
}

/// `GET /v2/models/{name}`.
pub async fn model_metadata(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v2/models/{name}", &state);
    let result = ctx
        .authorize(&req, &state, Scope::Predict)
        .and_then(|()| check_name(&state, &path))
        .and_then(|()| metadata(&state, None))
        .map(|m| HttpResponse::Ok().json(m));
    ctx.finish(result)
}

/// `GET /v2/models/{name}/versions/{version}`.
pub async fn model_metadata_version(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v2/models/{name}/versions/{version}", &state);
    let (name, version) = path.into_inner();
    let result = ctx
        .authorize(&req, &state, Scope::Predict)
        .and_then(|()| check_name(&state, &name))
        .and_then(|()| metadata(&state, Some(&version)))
        .map(|m| HttpResponse::Ok().json(m));
    ctx.finish(result)
}

/// `GET /v2/models/{name}/ready`.
pub async fn model_ready(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v2/models/{name}/ready", &state);
    let result = ctx
        .authorize(&req, &state, Scope::Predict)
        .and_then(|()| check_name(&state, &path))
        .map(|()| {
            let ready = state.core.ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            HttpResponse::build(status)
                .json(serde_json::json!({"name": state.api.model_name, "ready": ready}))
        });
    ctx.finish(result)
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
pub async fn model_ready_version(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v2/models/{name}/versions/{version}/ready", &state);
    let (name, version) = path.into_inner();
    let result = ctx
        .authorize(&req, &state, Scope::Predict)
        .and_then(|()| check_name(&state, &name))
        .map(|()| {
            let ready = state.core.slots.get(&version).is_some();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            HttpResponse::build(status).json(
                serde_json::json!({"name": state.api.model_name, "version": version, "ready": ready}),
            )
        });
    ctx.finish(result)
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v2/models/{name}/infer", &state);
    let result = infer_inner(&ctx, &req, &path, None, payload, &state).await;
    ctx.finish(result)
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v2/models/{name}/versions/{version}/infer", &state);
    let (name, version) = path.into_inner();
    let result = infer_inner(&ctx, &req, &name, Some(version), payload, &state).await;
    ctx.finish(result)
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
    pub inputs: Vec<ImageInput>,
    pub tta: bool,
    /// Requested outputs: (index 0 findings / 1 abnormal, binary).
    pub outputs: Vec<(usize, bool)>,
}

/// Parses an inference request body (JSON, or JSON + binary data when
/// `header_length` is given). At most `max_images` images.
pub fn parse_infer(
    body: &Bytes,
    header_length: Option<usize>,
    max_images: usize,
) -> Result<ParsedInfer, ApiError> {
    let (json, mut binary) = match header_length {
        Some(n) if n <= body.len() => (body.slice(..n), body.slice(n..)),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "Inference-Header-Content-Length is {n}, but the body has only {} bytes",
                body.len()
            )))
        }
        None => (body.clone(), Bytes::new()),
    };
    let request: InferRequest = serde_json::from_slice(&json)
        .map_err(|e| ApiError::bad_request(format!("the inference request JSON: {e}")))?;
    if request.inputs.len() != 1 {
        return Err(ApiError::bad_request(format!(
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
                .ok_or_else(|| ApiError::bad_request("binary_data_size must be a whole number"))
        })
        .transpose()?;
    let raw = match binary_size {
        Some(n) if n <= binary.len() => Some(binary.split_to(n)),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "input `{}` declares {n} binary bytes, but only {} follow the header",
                input.name,
                binary.len()
            )))
        }
        None => None,
    };
    let count = |shape: &[i64]| -> Result<usize, ApiError> {
        shape.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d)
                .ok()
                .and_then(|d| acc.checked_mul(d))
                .ok_or_else(|| ApiError::bad_request(format!("shape {shape:?} is not valid")))
        })
    };
    let inputs = match (input.name.as_str(), input.datatype.as_str()) {
        ("image", "BYTES") => {
            let n = count(&input.shape)?;
            if n == 0 || n > max_images {
                return Err(ApiError::bad_request(format!(
                    "`image` holds {n} images: send 1 to {max_images} (api.max_batch_images)"
                )));
            }
            let images = match raw {
                Some(raw) => split_bytes_elements(raw)?,
                None => json_bytes_elements(input.data.as_ref())?,
            };
            if images.len() != n {
                return Err(ApiError::bad_request(format!(
                    "`image` has shape {:?} but holds {} elements",
                    input.shape,
                    images.len()
                )));
            }
            images.into_iter().map(ImageInput::Encoded).collect()
        }
        ("pixels", "FP32") => {
            let [n, c, h, w] = input.shape[..] else {
                return Err(ApiError::bad_request(format!(
                    "`pixels` must have shape [N, 3, S, S], not {:?}",
                    input.shape
                )));
            };
            if c != 3 || h != w || !(16..=2048).contains(&h) || n < 1 || n as usize > max_images {
                return Err(ApiError::bad_request(format!(
                    "`pixels` must have shape [N, 3, S, S] with N 1..={max_images} and S 16..=2048, not {:?}",
                    input.shape
                )));
            }
            let size = h as usize;
            let per = 3 * size * size;
            let values = match raw {
                Some(raw) => {
                    if raw.len() != n as usize * per * 4 {
                        return Err(ApiError::bad_request(format!(
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
                return Err(ApiError::bad_request(format!(
                    "`pixels` holds {} values, not {} for shape {:?}",
                    values.len(),
                    n as usize * per,
                    input.shape
                )));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(ApiError::bad_request(
                    "`pixels` holds a NaN or infinite value",
                ));
            }
            values
                .chunks_exact(per)
                .map(|chunk| ImageInput::Tensor {
                    size: size as u32,
                    pixels: chunk.to_vec(),
                })
                .collect()
        }
        (name, datatype) => {
            return Err(ApiError::bad_request(format!(
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
                        return Err(ApiError::bad_request(format!(
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
    Ok(ParsedInfer {
        id: request.id,
        tta: bool_parameter(&request.parameters, "tta"),
        inputs,
        outputs,
    })
}

/// BYTES elements in the binary form: each a 4-byte little-endian length
/// and that many bytes.
fn split_bytes_elements(mut raw: Bytes) -> Result<Vec<Bytes>, ApiError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 4 {
            return Err(ApiError::bad_request(
                "BYTES binary data ends inside an element's 4-byte length",
            ));
        }
        let n = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        let _ = raw.split_to(4);
        if n > raw.len() {
            return Err(ApiError::bad_request(format!(
                "a BYTES element declares {n} bytes, but only {} remain",
                raw.len()
            )));
        }
        out.push(raw.split_to(n));
    }
    Ok(out)
}

/// BYTES elements in JSON: strings (flat or nested), base64 of the file.
fn json_bytes_elements(data: Option<&Value>) -> Result<Vec<Bytes>, ApiError> {
    fn walk(v: &Value, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::String(s) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "a BYTES element in JSON must be the file in base64: {e}"
                        ))
                    })?;
                out.push(Bytes::from(bytes));
                Ok(())
            }
            _ => Err(ApiError::bad_request("BYTES data must be strings")),
        }
    }
    let data = data.ok_or_else(|| ApiError::bad_request("input `image` has no data"))?;
    let mut out = Vec::new();
    walk(data, &mut out)?;
    Ok(out)
}

fn flatten_numbers(data: Option<&Value>, out: &mut Vec<f32>, limit: usize) -> Result<(), ApiError> {
    fn walk(v: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), ApiError> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out, limit)),
            Value::Number(n) => {
                if out.len() >= limit {
                    return Err(ApiError::bad_request(
                        "`pixels` holds more values than its shape",
                    ));
                }
                out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
                Ok(())
            }
            _ => Err(ApiError::bad_request("FP32 data must be numbers")),
        }
    }
    let data = data.ok_or_else(|| ApiError::bad_request("input `pixels` has no data"))?;
    walk(data, out, limit)
}

async fn infer_inner(
    ctx: &Ctx,
    req: &HttpRequest,
    name: &str,
    version: Option<String>,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    ctx.authorize(req, state, Scope::Predict)?;
    check_name(state, name)?;
    let deadline = ctx.deadline(req, &state.api)?;
    state.core.model_for(version.as_deref())?;
    let header_length = match req.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Inference-Header-Content-Length must be a number")
                })?,
        ),
    };
    let body = read_body(req, payload, state.api.max_body_bytes).await?;
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the body is empty: send an inference request",
        ));
    }
    let parsed = parse_infer(&body, header_length, state.api.max_batch_images)?;
    let runs = parsed.inputs.into_iter().map(|input| {
        state.core.predict(PredictRequest {
            input,
            tta: parsed.tta,
            heatmap: None,
            model: version.clone(),
            deadline,
        })
    });
    let predictions = futures::future::try_join_all(runs).await?;
    let n = predictions.len();
    // Every image of one request answered by one model: report it.
    let model_version = predictions
        .first()
        .map(|p| p.model.info.version.clone())
        .unwrap_or_default();
    let mut outputs = Vec::new();
    let mut blobs: Vec<Vec<f32>> = Vec::new();
    for (index, binary) in &parsed.outputs {
        let (name, columns, range) = if *index == 0 {
            ("findings", LABELS.len(), 0..LABELS.len())
        } else {
            ("abnormal", 1, OUTPUTS - 1..OUTPUTS)
        };
        let values: Vec<f32> = predictions
            .iter()
            .flat_map(|p| p.probabilities[range.clone()].to_vec())
            .collect();
        let shape = vec![n as i64, columns as i64];
        if *binary {
            let mut parameters = Map::new();
            parameters.insert("binary_data_size".into(), Value::from(values.len() * 4));
            outputs.push(OutputTensor {
                name: name.into(),
                datatype: "FP32".into(),
                shape,
                data: None,
                parameters: Some(parameters),
            });
            blobs.push(values);
        } else {
            outputs.push(OutputTensor {
                name: name.into(),
                datatype: "FP32".into(),
                shape,
                data: Some(values),
                parameters: None,
            });
        }
    }
    let response = InferResponse {
        model_name: state.api.model_name.clone(),
        model_version,
        id: parsed.id,
        outputs,
    };
    if blobs.is_empty() {
        return Ok(HttpResponse::Ok().json(response));
    }
    let header = serde_json::to_vec(&response)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut out =
        BytesMut::with_capacity(header.len() + blobs.iter().map(|b| b.len() * 4).sum::<usize>());
    out.put_slice(&header);
    for blob in &blobs {
        for v in blob {
            out.put_f32_le(*v);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("Inference-Header-Content-Length", header.len().to_string()))
        .body(out.freeze()))
}
