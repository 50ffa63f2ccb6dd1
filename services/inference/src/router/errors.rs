//! Errors as the API answers them: `{"error": {"code", "message",
//! "request_id"}}` on `/v1` and everywhere else; on the Open Inference
//! Protocol routes the protocol's own `{"error": "message"}` (with `code`
//! and `request_id` beside it), which KServe and Triton clients read.

use actix_web::http::StatusCode;
use serde::Serialize;

use crate::core::CoreError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u32>,
}

/// The body of every error on `/v1`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (e.g. `unsupported_media_type`).
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    pub request_id: String,
}

/// The body of every error on `/v2` (Open Inference Protocol).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OipErrorBody {
    pub error: String,
    pub code: String,
    pub request_id: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        use chexvision_vision::VisionError as V;
        let message = e.to_string();
        match e {
            CoreError::NotReady => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_not_ready", message)
                    .retry_after(5)
            }
            CoreError::ModelNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "model_not_found", message)
            }
            CoreError::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message).retry_after(1)
            }
            CoreError::DeadlineExceeded(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded", message)
            }
            CoreError::Image(vision) => {
                let code = match vision {
                    V::Empty => {
                        return ApiError::new(StatusCode::BAD_REQUEST, "empty_body", message)
                    }
                    V::TooManyBytes { .. } => {
                        return ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            message,
                        )
                    }
                    V::TooLarge { .. } => "image_too_large",
                    V::UnsupportedFormat { .. } => "unsupported_image",
                    V::Corrupt { .. } | V::InvalidDimensions { .. } => "undecodable_image",
                    V::InvalidParameter { .. } | V::Resize { .. } => "undecodable_image",
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            CoreError::Input(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
            }
            CoreError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
                    .retry_after(1)
            }
            CoreError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}
