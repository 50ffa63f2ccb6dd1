//! The HTTP API over the core (actix-web): `/v1` predictions in JSON or
//! FHIR R4, the Open Inference Protocol under `/v2`, `/openapi.json`, the
//! web page at `/`, and the API port's own `/healthz`, `/readyz` and
//! `/metrics`. Every route goes through [`Ctx`]: a request id, the API key
//! check, the answer or a JSON error, metrics and one log line (never the
//! image, never patient attributes).

pub mod auth;
pub mod body;
pub mod errors;
pub mod feedback;
pub mod fhir;
pub mod multipart;
pub mod oip;
pub mod oip_wire;
pub mod openapi;
mod page;
pub mod v1;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chexvision_telemetry::Telemetry;

use crate::core::lifecycle::Lifecycle;
use crate::core::Core;
use crate::metrics::InferenceMetrics;
use crate::settings::{ApiSettings, Scope};
pub use auth::{hash_key, Keys};
use errors::{ApiError, ErrorBody, ErrorDetail, OipErrorBody};

/// What every route reaches.
pub struct AppState {
    pub core: Arc<Core>,
    pub lifecycle: Arc<Lifecycle>,
    pub api: ApiSettings,
    pub keys: Keys,
    pub metrics: InferenceMetrics,
    pub telemetry: Telemetry,
    /// `/openapi.json`, built once.
    pub openapi: String,
    /// Prediction and feedback events.
    pub events: crate::events::Events,
}

/// Mounts every route on an actix-web app.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(state)
            .route("/", web::get().to(page::index))
            .route("/openapi.json", web::get().to(openapi::document))
            .route("/healthz", web::get().to(v1::healthz))
            .route("/readyz", web::get().to(v1::readyz))
            .route("/metrics", web::get().to(v1::metrics))
            .route("/v1/predict", web::post().to(v1::predict))
            .route("/v1/predict/batch", web::post().to(v1::predict_batch))
            .route("/v1/feedback", web::post().to(feedback::feedback))
            .route("/v1/models", web::get().to(v1::models))
            .route("/v1/admin/reload", web::post().to(v1::reload))
            .route("/v2", web::get().to(oip::server_metadata))
            .route("/v2/health/live", web::get().to(oip::live))
            .route("/v2/health/ready", web::get().to(oip::ready))
            .route("/v2/models/{name}", web::get().to(oip::model_metadata))
            .route("/v2/models/{name}/ready", web::get().to(oip::model_ready))
            .route(
                "/v2/models/{name}/versions/{version}",
                web::get().to(oip::model_metadata_version),
            )
            .route(
                "/v2/models/{name}/versions/{version}/ready",
                web::get().to(oip::model_ready_version),
            )
            .route("/v2/models/{name}/infer", web::post().to(oip::infer))
            .route(
                "/v2/models/{name}/versions/{version}/infer",
                web::post().to(oip::infer_version),
            )
            .default_service(web::to(not_found));
    }
}

async fn not_found(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = Ctx::begin(&req, "unmatched", &state);
    let path = req.path().chars().take(200).collect::<String>();
    let message = format!("no route {} {path}", req.method());
    ctx.finish(Err(ApiError::not_found(message)))
}

/// The `X-Request-Id` of a request: the client's when it is a short token,
/// else a new UUID v7.
fn request_id(req: &HttpRequest) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// One request's context: its id, route pattern (the metric label) and
/// clock.
pub struct Ctx {
    pub id: String,
    route: &'static str,
    start: Instant,
    oip: bool,
    metrics: InferenceMetrics,
}

impl Ctx {
    pub fn begin(req: &HttpRequest, route: &'static str, state: &AppState) -> Ctx {
        Ctx {
            id: request_id(req),
            route,
            start: Instant::now(),
            oip: route.starts_with("/v2"),
            metrics: state.metrics.clone(),
        }
    }

    /// Checks the API key for `scope`.
    pub fn authorize(
        &self,
        req: &HttpRequest,
        state: &AppState,
        scope: Scope,
    ) -> Result<(), ApiError> {
        state.keys.authorize(req, scope).map(|_| ())
    }

    /// The request's deadline: `X-Request-Deadline-Ms`, else the default.
    pub fn deadline(&self, req: &HttpRequest, api: &ApiSettings) -> Result<Duration, ApiError> {
        match req.headers().get("x-request-deadline-ms") {
            None => Ok(Duration::from_millis(api.default_deadline_ms)),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| (1..=api.max_deadline_ms).contains(ms))
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "X-Request-Deadline-Ms must be a whole number of milliseconds, 1..={}",
                        api.max_deadline_ms
                    ))
                }),
        }
    }

    /// The answer, or the error as JSON; counted, timed and logged.
    pub fn finish(self, result: Result<HttpResponse, ApiError>) -> HttpResponse {
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                self.metrics.rejected.with_label_values(&[error.code]).inc();
                if error.status == StatusCode::INTERNAL_SERVER_ERROR {
                    tracing::error!(request_id = %self.id, route = self.route, code = error.code, message = %error.message, "request failed");
                } else if error.status.is_server_error() {
                    // Not ready, shutting down, a deadline passed: the
                    // service works; the request could not be served now.
                    tracing::warn!(request_id = %self.id, route = self.route, code = error.code, message = %error.message, "request not served");
                } else {
                    tracing::info!(request_id = %self.id, route = self.route, code = error.code, message = %error.message, "request refused");
                }
                self.error_response(&error)
            }
        };
        if let Ok(value) = header::HeaderValue::from_str(&self.id) {
            response
                .headers_mut()
                .insert(header::HeaderName::from_static("x-request-id"), value);
        }
        let status = response.status();
        self.metrics
            .requests
            .with_label_values(&[self.route, status.as_str()])
            .inc();
        let seconds = self.start.elapsed().as_secs_f64();
        self.metrics
            .request_seconds
            .with_label_values(&[self.route])
            .observe(seconds);
        if status.is_success() {
            tracing::debug!(request_id = %self.id, route = self.route, status = status.as_u16(), ms = seconds * 1e3, "answered");
        }
        response
    }

    fn error_response(&self, error: &ApiError) -> HttpResponse {
        let mut builder = HttpResponse::build(error.status);
        if let Some(seconds) = error.retry_after {
            builder.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if self.oip {
            builder.json(OipErrorBody {
                error: format!("{}: {}", error.code, error.message),
                code: error.code.to_string(),
                request_id: self.id.clone(),
            })
        } else {
            builder.json(ErrorBody {
                error: ErrorDetail {
                    code: error.code.to_string(),
                    message: error.message.clone(),
                    request_id: self.id.clone(),
                },
            })
        }
    }
}

/// 503 while no model is loaded (readiness is about the model only: the
/// bus and the store are not needed to answer).
pub fn readiness(state: &AppState) -> (StatusCode, serde_json::Value) {
    let alive = state.telemetry.health.is_alive();
    match state.core.slots.current() {
        Some(model) if alive => (
            StatusCode::OK,
            serde_json::json!({"ready": true, "model": model.info.version}),
        ),
        Some(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "waiting_for": state.telemetry.health.failures()}),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "waiting_for": {"model": "no model loaded yet"}}),
        ),
    }
}
