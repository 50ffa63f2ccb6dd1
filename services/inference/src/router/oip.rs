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
use bytes::{BufMut, BytesMut};
use chexvision_dataset::LABELS;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::body::read_body;
use super::errors::ApiError;
use super::oip_wire::{parse_infer, WireInput};
pub use super::oip_wire::{InferInput, InferRequest, RequestedOutput};
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
        // A version this replica has not loaded does not exist here (404);
        // the loaded ones are ready.
        .and_then(|()| state.core.model_for(Some(&version)).map_err(ApiError::from))
        .map(|model| {
            HttpResponse::Ok().json(serde_json::json!({
                "name": state.api.model_name,
                "version": model.info.version,
                "ready": true
            }))
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
    let parsed = parse_infer(&body, header_length, state.api.max_batch_images)
        .map_err(|e| ApiError::bad_request(e.0))?;
    if let Some(study_ref) = &parsed.study_ref {
        crate::events::validate_study_ref(study_ref).map_err(ApiError::bad_request)?;
    }
    let runs = parsed.inputs.into_iter().map(|input| {
        let input = match input {
            WireInput::Encoded(bytes) => ImageInput::Encoded(bytes),
            WireInput::Tensor { size, pixels } => ImageInput::Tensor { size, pixels },
        };
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
    for (i, prediction) in predictions.iter().enumerate() {
        // One image: the request's id; several: `{id}-{index}` as in a batch.
        let request_id = if n == 1 {
            ctx.id.clone()
        } else {
            format!("{}-{i}", ctx.id)
        };
        state.events.prediction(
            &request_id,
            prediction,
            parsed.study_ref.as_deref(),
            "/v2/infer",
            parsed.tta,
        );
    }
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
