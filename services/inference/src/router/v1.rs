//! `/v1`: predictions (one image, or a batch), the loaded models, the
//! admin reload, and the API port's health and metrics.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chexvision_dataset::LABELS;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{self, image_parts, is_image_type, parse_multipart, read_body};
use super::errors::{ApiError, ErrorDetail};
use super::{fhir, readiness, AppState, Ctx};
use crate::core::lifecycle::{LoadOutcome, Target};
use crate::core::model::{LoadedModel, OUTPUTS};
use crate::core::{HeatmapTarget, ImageInput, PredictRequest, Prediction, Timings};
use crate::events::validate_study_ref;
use crate::settings::Scope;
use crate::InferenceError;

/// Query options of `/v1/predict` and `/v1/predict/batch`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictOptions {
    /// Average the four test-time views.
    pub tta: Option<bool>,
    /// A finding name, `abnormal`, or `top` (the most probable finding):
    /// a Grad-CAM overlay for it.
    pub heatmap: Option<String>,
    /// A loaded model version to use instead of the serving one.
    pub model: Option<String>,
    /// An opaque reference to the study (an accession number, say), for
    /// confirming the findings later with `POST /v1/feedback`. Only its
    /// sha256 leaves the service.
    pub study_ref: Option<String>,
}

/// The model that computed an answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelSummary {
    pub version: String,
    /// `densenet` or `se_resnet`.
    pub architecture: String,
    /// Trained on synthetic images: its output says nothing about patients.
    pub synthetic: bool,
    pub input_size: u32,
    /// `registry` (chosen on validation) or `default` (0.5).
    pub thresholds_source: String,
}

/// One finding's probability and decision.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FindingScore {
    pub name: String,
    pub probability: f64,
    pub threshold: f64,
    /// `probability >= threshold`.
    pub positive: bool,
}

/// The abnormal (binary head) score.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Score {
    pub probability: f64,
    pub threshold: f64,
    pub positive: bool,
}

/// A Grad-CAM overlay.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HeatmapImage {
    /// The finding (or `abnormal`) it explains.
    pub finding: String,
    /// An RGB PNG at the model's input size, base64.
    pub png_base64: String,
}

/// The answer to `/v1/predict`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PredictResponse {
    pub request_id: String,
    pub model: ModelSummary,
    /// The 14 NIH ChestX-ray14 findings, always in the same order.
    pub findings: Vec<FindingScore>,
    pub abnormal: Score,
    pub timings_ms: Timings,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<HeatmapImage>,
}

/// One image of a JSON batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchImage {
    /// The caller's id, echoed in the result.
    pub id: Option<String>,
    /// Informational: the format is read from the bytes.
    pub content_type: Option<String>,
    /// The image file, base64 (standard alphabet).
    pub data: String,
    /// This image's study reference (else the query's `study_ref`).
    pub study_ref: Option<String>,
}

/// A JSON batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub images: Vec<BatchImage>,
    pub tta: Option<bool>,
    pub heatmap: Option<String>,
    pub model: Option<String>,
}

/// One image's result in a batch: a prediction or an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchEntry {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub request_id: String,
    pub results: Vec<BatchEntry>,
}

/// A loaded model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDetail {
    pub version: String,
    pub architecture: String,
    pub synthetic: bool,
    pub input_size: u32,
    pub checkpoint_sha256: String,
    pub loaded_at_unix_ms: u64,
    /// By finding, and `abnormal`.
    pub thresholds: BTreeMap<String, f64>,
    pub thresholds_source: String,
    /// Whether it answers requests that pin no version.
    pub serving: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsResponse {
    pub models: Vec<ModelDetail>,
}

/// What `/v1/admin/reload` loads: nothing named, the registry's production
/// model; or a registered version; or a checkpoint (key or URI).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    pub version: Option<String>,
    pub checkpoint: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadResponse {
    /// `swapped`, `unchanged` or `stale`.
    pub outcome: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// `findings` names, then `abnormal`.
pub fn output_name(index: usize) -> &'static str {
    LABELS.get(index).copied().unwrap_or("abnormal")
}

fn parse_heatmap(value: Option<&str>) -> Result<Option<HeatmapTarget>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    if value.eq_ignore_ascii_case("top") {
        return Ok(Some(HeatmapTarget::Top));
    }
    (0..OUTPUTS)
        .find(|&i| output_name(i).eq_ignore_ascii_case(value))
        .map(|i| Some(HeatmapTarget::Output(i)))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "heatmap must be `top`, `abnormal` or a finding ({}), not `{}`",
                LABELS.join(", "),
                value.chars().take(64).collect::<String>()
            ))
        })
}

fn options(req: &HttpRequest) -> Result<PredictOptions, ApiError> {
    let options = web::Query::<PredictOptions>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::bad_request(format!("query options: {e}")))?;
    check_study_ref(options.study_ref.as_deref())?;
    Ok(options)
}

fn check_study_ref(study_ref: Option<&str>) -> Result<(), ApiError> {
    match study_ref {
        Some(value) => validate_study_ref(value).map_err(ApiError::bad_request),
        None => Ok(()),
    }
}

/// The JSON answer for one prediction.
pub fn predict_response(request_id: &str, p: &Prediction) -> PredictResponse {
    let info = &p.model.info;
    let score = |i: usize| {
        let probability = f64::from(p.probabilities[i]);
        let threshold = info.thresholds[i];
        (probability, threshold, probability >= threshold)
    };
    let findings = (0..LABELS.len())
        .map(|i| {
            let (probability, threshold, positive) = score(i);
            FindingScore {
                name: LABELS[i].to_string(),
                probability,
                threshold,
                positive,
            }
        })
        .collect();
    let (probability, threshold, positive) = score(OUTPUTS - 1);
    let mut warnings = p.warnings.clone();
    if info.synthetic {
        warnings.push(
            "the model was trained on synthetic images: its probabilities say nothing about patients"
                .into(),
        );
    }
    if !info.thresholds_from_registry {
        warnings.push(
            "no registry record for this model: thresholds are 0.5, not chosen on validation"
                .into(),
        );
    }
    PredictResponse {
        request_id: request_id.to_string(),
        model: summary(&p.model),
        findings,
        abnormal: Score {
            probability,
            threshold,
            positive,
        },
        timings_ms: p.timings,
        warnings,
        heatmap: p.heatmap.as_ref().map(|(index, png)| HeatmapImage {
            finding: output_name(*index).to_string(),
            png_base64: base64::engine::general_purpose::STANDARD.encode(png),
        }),
    }
}

pub fn summary(model: &LoadedModel) -> ModelSummary {
    let info = &model.info;
    ModelSummary {
        version: info.version.clone(),
        architecture: info.architecture.clone(),
        synthetic: info.synthetic,
        input_size: info.input_size,
        thresholds_source: if info.thresholds_from_registry {
            "registry".into()
        } else {
            "default".into()
        },
    }
}

fn wants_fhir(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("application/fhir+json"))
}

/// The images of a `/v1/predict` or multipart batch body.
async fn images_of(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    json_allowed: bool,
) -> Result<Body, ApiError> {
    let media_type = body::media_type(req).ok_or_else(|| {
        ApiError::unsupported_media_type(
            "no Content-Type: send image/png, image/jpeg, application/dicom or multipart/form-data",
        )
    })?;
    let multipart = media_type == "multipart/form-data";
    let json = media_type == "application/json";
    if !(multipart || is_image_type(&media_type) || (json && json_allowed)) {
        return Err(ApiError::unsupported_media_type(format!(
            "Content-Type {} is not accepted: send image/png, image/jpeg, application/dicom{} or multipart/form-data",
            media_type.chars().take(100).collect::<String>(),
            if json_allowed { ", application/json" } else { "" }
        )));
    }
    let bytes = read_body(req, payload, state.api.max_body_bytes).await?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the body is empty: send the image file",
        ));
    }
    if json {
        let batch: BatchRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))?;
        return Ok(Body::Json(batch));
    }
    if multipart {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = body::boundary(content_type)
            .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
        let parts = parse_multipart(&bytes, &boundary, state.api.max_batch_images + 8)
            .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
        let images: Vec<(Option<String>, bytes::Bytes)> = image_parts(parts)
            .into_iter()
            .map(|p| (p.filename.or(p.name), p.data))
            .collect();
        if images.is_empty() {
            return Err(ApiError::bad_request(
                "multipart body: no part holds an image (name it `image`)",
            ));
        }
        return Ok(Body::Images(images));
    }
    Ok(Body::Images(vec![(None, bytes)]))
}

enum Body {
    /// Images with their names (a file name or part name).
    Images(Vec<(Option<String>, bytes::Bytes)>),
    Json(BatchRequest),
}

/// `POST /v1/predict`.
pub async fn predict(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v1/predict", &state);
    let result = predict_one(&ctx, &req, payload, &state).await;
    ctx.finish(result)
}

async fn predict_one(
    ctx: &Ctx,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    ctx.authorize(req, state, Scope::Predict)?;
    let options = options(req)?;
    let heatmap = parse_heatmap(options.heatmap.as_deref())?;
    let deadline = ctx.deadline(req, &state.api)?;
    // Refuse early, before reading a body nobody can compute.
    state.core.model_for(options.model.as_deref())?;
    let Body::Images(mut images) = images_of(req, payload, state, false).await? else {
        return Err(ApiError::unsupported_media_type("send one image"));
    };
    if images.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "/v1/predict takes one image, the body holds {}: use /v1/predict/batch",
            images.len()
        )));
    }
    let (_, bytes) = images.remove(0);
    let tta = options.tta.unwrap_or(false);
    let prediction = state
        .core
        .predict(PredictRequest {
            input: ImageInput::Encoded(bytes),
            tta,
            heatmap,
            model: options.model,
            deadline,
        })
        .await?;
    state.events.prediction(
        &ctx.id,
        &prediction,
        options.study_ref.as_deref(),
        "/v1/predict",
        tta,
    );
    if wants_fhir(req) {
        let report = fhir::diagnostic_report(&ctx.id, &prediction);
        return Ok(HttpResponse::Ok()
            .content_type("application/fhir+json")
            .json(report));
    }
    Ok(HttpResponse::Ok().json(predict_response(&ctx.id, &prediction)))
}

/// One image of a batch: the caller's id, its study reference, and its
/// bytes or why there are none.
type BatchInput = (
    Option<String>,
    Option<String>,
    Result<bytes::Bytes, ApiError>,
);

/// `POST /v1/predict/batch`.
pub async fn predict_batch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v1/predict/batch", &state);
    let result = batch(&ctx, &req, payload, &state).await;
    ctx.finish(result)
}

async fn batch(
    ctx: &Ctx,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    ctx.authorize(req, state, Scope::Predict)?;
    let mut options = options(req)?;
    let deadline = ctx.deadline(req, &state.api)?;
    // (caller's id, study reference, image bytes or why not)
    let images: Vec<BatchInput> = match images_of(req, payload, state, true).await? {
        Body::Images(images) => images
            .into_iter()
            .map(|(id, b)| (id, options.study_ref.clone(), Ok(b)))
            .collect(),
        Body::Json(batch) => {
            options.tta = batch.tta.or(options.tta);
            options.heatmap = batch.heatmap.or(options.heatmap);
            options.model = batch.model.or(options.model);
            batch
                .images
                .into_iter()
                .map(|image| {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(image.data.as_bytes())
                        .map(bytes::Bytes::from)
                        .map_err(|e| ApiError::bad_request(format!("`data` is not base64: {e}")));
                    let study_ref = image.study_ref.or_else(|| options.study_ref.clone());
                    let data = check_study_ref(study_ref.as_deref()).and(data);
                    (image.id, study_ref, data)
                })
                .collect()
        }
    };
    if images.is_empty() {
        return Err(ApiError::bad_request("the batch holds no images"));
    }
    if images.len() > state.api.max_batch_images {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_images",
            format!(
                "the batch holds {} images, over api.max_batch_images ({})",
                images.len(),
                state.api.max_batch_images
            ),
        ));
    }
    let heatmap = parse_heatmap(options.heatmap.as_deref())?;
    state.core.model_for(options.model.as_deref())?;
    let tta = options.tta.unwrap_or(false);
    let runs = images
        .into_iter()
        .enumerate()
        .map(|(index, (id, study_ref, data))| {
            let model = options.model.clone();
            let request_id = format!("{}-{index}", ctx.id);
            async move {
                let result = match data {
                    Err(e) => Err(e),
                    Ok(bytes) if bytes.is_empty() => Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "empty_body",
                        "this image is empty",
                    )),
                    Ok(bytes) => state
                        .core
                        .predict(PredictRequest {
                            input: ImageInput::Encoded(bytes),
                            tta,
                            heatmap,
                            model,
                            deadline,
                        })
                        .await
                        .map_err(ApiError::from),
                };
                match result {
                    Ok(p) => {
                        state.events.prediction(
                            &request_id,
                            &p,
                            study_ref.as_deref(),
                            "/v1/predict/batch",
                            tta,
                        );
                        BatchEntry {
                            index,
                            id,
                            prediction: Some(predict_response(&request_id, &p)),
                            error: None,
                        }
                    }
                    Err(e) => BatchEntry {
                        index,
                        id,
                        prediction: None,
                        error: Some(ErrorDetail {
                            code: e.code.to_string(),
                            message: e.message,
                            request_id,
                        }),
                    },
                }
            }
        });
    let results = futures::future::join_all(runs).await;
    Ok(HttpResponse::Ok().json(BatchResponse {
        request_id: ctx.id.clone(),
        results,
    }))
}

/// `GET /v1/models`.
pub async fn models(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v1/models", &state);
    let result = ctx.authorize(&req, &state, Scope::Predict).map(|()| {
        let serving = state.core.slots.current().map(|m| m.info.version.clone());
        let models = state
            .core
            .slots
            .loaded()
            .iter()
            .map(|m| {
                let info = &m.info;
                ModelDetail {
                    version: info.version.clone(),
                    architecture: info.architecture.clone(),
                    synthetic: info.synthetic,
                    input_size: info.input_size,
                    checkpoint_sha256: info.checkpoint_sha256.clone(),
                    loaded_at_unix_ms: info.loaded_at_unix_ms,
                    thresholds: (0..OUTPUTS)
                        .map(|i| (output_name(i).to_string(), info.thresholds[i]))
                        .collect(),
                    thresholds_source: summary(m).thresholds_source,
                    serving: serving.as_deref() == Some(info.version.as_str()),
                }
            })
            .collect();
        HttpResponse::Ok().json(ModelsResponse { models })
    });
    ctx.finish(result)
}

/// `POST /v1/admin/reload`.
pub async fn reload(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v1/admin/reload", &state);
    let result = reload_inner(&ctx, &req, payload, &state).await;
    ctx.finish(result)
}

async fn reload_inner(
    ctx: &Ctx,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    ctx.authorize(req, state, Scope::Admin)?;
    let bytes = read_body(req, payload, 64 * 1024).await?;
    let request: ReloadRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReloadRequest::default()
    } else {
        if body::media_type(req).as_deref() != Some("application/json") {
            return Err(ApiError::unsupported_media_type(
                "send the reload request as application/json",
            ));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))?
    };
    let target = match (request.version, request.checkpoint) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "name either a version or a checkpoint, not both",
            ))
        }
        (Some(version), None) => Target::Version(version),
        (None, Some(location)) => Target::Checkpoint {
            location,
            sha256: request.sha256,
        },
        (None, None) => Target::Production,
    };
    let outcome = state.lifecycle.load(target).await.map_err(|e| match e {
        InferenceError::NoModel(m) => ApiError::new(StatusCode::NOT_FOUND, "model_not_found", m),
        InferenceError::Registry(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable", m)
        }
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "model_load_failed",
            format!("{other}; the serving model is unchanged"),
        ),
    })?;
    let response = match outcome {
        LoadOutcome::Swapped { version, previous } => ReloadResponse {
            outcome: "swapped".into(),
            version,
            previous,
        },
        LoadOutcome::Unchanged { version } => ReloadResponse {
            outcome: "unchanged".into(),
            version,
            previous: None,
        },
        LoadOutcome::Stale { version, .. } => ReloadResponse {
            outcome: "stale".into(),
            version,
            previous: None,
        },
    };
    Ok(HttpResponse::Ok().json(response))
}

/// `GET /healthz`: the process works; never depends on a model or a broker.
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    if state.telemetry.health.is_alive() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable().json(
            serde_json::json!({"status": "failed", "failed": state.telemetry.health.failures()}),
        )
    }
}

/// `GET /readyz`: a model is loaded.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (status, body) = readiness(&state);
    HttpResponse::build(status).json(body)
}

/// `GET /metrics`.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.telemetry.render_metrics())
}
