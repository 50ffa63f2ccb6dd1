//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, with the
//! schemas generated from the Rust types the routes answer with (utoipa),
//! so the document cannot drift from the answers; each operation lists
//! every status it can answer.

use actix_web::HttpResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, PathItem, PathsBuilder, Ref, RefOr, Required,
    ResponseBuilder, Schema,
};
use utoipa::OpenApi;

use super::errors::{ErrorBody, ErrorDetail, OipErrorBody};
use super::feedback::{FeedbackAccepted, FeedbackRequest};
use super::oip::{
    InferInput, InferRequest, InferResponse, ModelMetadata, OutputTensor, RequestedOutput,
    ServerMetadata, TensorMetadata,
};
use super::v1::{
    BatchEntry, BatchImage, BatchRequest, BatchResponse, FindingScore, HeatmapImage, ModelDetail,
    ModelSummary, ModelsResponse, PredictResponse, ReloadRequest, ReloadResponse, Score,
};
use crate::core::Timings;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CheXVision inference API",
        description = "Chest X-ray findings (NIH ChestX-ray14) from PNG, JPEG or DICOM: JSON, FHIR R4, and the Open Inference Protocol (KServe v2).",
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        OipErrorBody,
        PredictResponse,
        ModelSummary,
        FindingScore,
        Score,
        HeatmapImage,
        Timings,
        BatchImage,
        BatchRequest,
        BatchEntry,
        BatchResponse,
        ModelDetail,
        ModelsResponse,
        ReloadRequest,
        ReloadResponse,
        FeedbackRequest,
        FeedbackAccepted,
        ServerMetadata,
        TensorMetadata,
        ModelMetadata,
        InferInput,
        RequestedOutput,
        InferRequest,
        OutputTensor,
        InferResponse
    ))
)]
struct Components;

fn binary() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
        .into()
}

fn schema_ref(name: &str) -> RefOr<Schema> {
    Ref::from_schema_name(name).into()
}

fn json_content(name: &str) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema_ref(name))).build()
}

/// Error responses, by status, with the body of `/v1` or `/v2`.
fn errors(mut op: OperationBuilder, statuses: &[(&str, &str)], oip: bool) -> OperationBuilder {
    let body = if oip { "OipErrorBody" } else { "ErrorBody" };
    for (status, description) in statuses {
        let mut response = ResponseBuilder::new()
            .description(*description)
            .content("application/json", json_content(body));
        if matches!(*status, "429" | "503") {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("seconds"))
                    .build(),
            );
        }
        op = op.response(*status, response.build());
    }
    op
}

const AUTH: &[(&str, &str)] = &[
    ("401", "no API key, or an unknown one"),
    ("403", "the key's scope does not allow this route"),
];
const PREDICT_ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "empty body, malformed multipart or JSON, a bad option or header",
    ),
    ("401", "no API key, or an unknown one"),
    ("403", "the key's scope does not allow this route"),
    ("404", "the pinned model version is not loaded"),
    ("413", "the body is over the size limit"),
    ("415", "not an accepted media type"),
    (
        "422",
        "the image cannot be decoded, is too large, or is an unsupported DICOM",
    ),
    ("429", "the queue is full"),
    ("500", "the model failed"),
    ("503", "no model is loaded yet, or the service is stopping"),
    ("504", "the request's deadline passed"),
];

fn query(name: &str, description: &str, schema: RefOr<Schema>) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn header_param(
    name: &str,
    description: &str,
    schema: RefOr<Schema>,
) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn path_param(name: &str, example: Option<&str>) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(RefOr::T(
            ObjectBuilder::new().schema_type(Type::String).into(),
        )))
        .example(example.map(serde_json::Value::from))
        .build()
}

fn string() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn predict_parameters(op: OperationBuilder, max_deadline_ms: u64) -> OperationBuilder {
    op.parameter(query(
        "tta",
        "average the four test-time views",
        ObjectBuilder::new().schema_type(Type::Boolean).into(),
    ))
    .parameter(query(
        "heatmap",
        "`top`, `abnormal` or a finding name: a Grad-CAM overlay",
        string(),
    ))
    .parameter(query("model", "a loaded model version", string()))
    .parameter(query(
        "study_ref",
        "an opaque study reference (1-128 of A-Z a-z 0-9 . _ : / -) for confirming the findings later with POST /v1/feedback; only its sha256 leaves the service",
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some("^[A-Za-z0-9._:/-]+$"))
            .into(),
    ))
    .parameter(header_param(
        "X-Request-Deadline-Ms",
        "give up (504) after this many milliseconds",
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(max_deadline_ms as f64))
            .into(),
    ))
}

fn image_body() -> utoipa::openapi::request_body::RequestBody {
    let multipart = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("image", binary())
        .required("image")
        .build();
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .description(Some(
            "one chest X-ray: PNG, JPEG or DICOM, raw or as a multipart file part",
        ))
        .content(
            "image/png",
            ContentBuilder::new().schema(Some(binary())).build(),
        )
        .content(
            "image/jpeg",
            ContentBuilder::new().schema(Some(binary())).build(),
        )
        .content(
            "application/dicom",
            ContentBuilder::new().schema(Some(binary())).build(),
        )
        .content(
            "multipart/form-data",
            ContentBuilder::new()
                .schema(Some(RefOr::T(multipart.into())))
                .build(),
        )
        .build()
}

fn ok(description: &str, content_type: &str, schema: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(content_type, json_content(schema))
        .build()
}

fn build(max_deadline_ms: u64, model_name: &str) -> Document {
    let mut doc = Components::openapi();
    let json_object = || {
        ContentBuilder::new()
            .schema(Some(RefOr::T(
                ObjectBuilder::new().schema_type(Type::Object).into(),
            )))
            .build()
    };
    let fhir = ContentBuilder::new()
        .schema(Some(RefOr::T(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(
                    "a FHIR R4 DiagnosticReport with contained Device and Observations",
                ))
                .into(),
        )))
        .build();

    let predict = errors(
        predict_parameters(
            OperationBuilder::new()
                .operation_id(Some("predict"))
                .summary(Some("Findings for one chest X-ray"))
                .request_body(Some(image_body()))
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("the 14 findings and the abnormal score (FHIR R4 with Accept: application/fhir+json)")
                        .content("application/json", json_content("PredictResponse"))
                        .content("application/fhir+json", fhir)
                        .build(),
                ),
            max_deadline_ms,
        ),
        PREDICT_ERRORS,
        false,
    );
    let batch_body = RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content("application/json", json_content("BatchRequest"))
        .content(
            "multipart/form-data",
            ContentBuilder::new()
                .schema(Some(RefOr::T(
                    ObjectBuilder::new()
                        .schema_type(Type::Object)
                        .property(
                            "image",
                            utoipa::openapi::schema::ArrayBuilder::new()
                                .items(binary())
                                .build(),
                        )
                        .into(),
                )))
                .build(),
        )
        .build();
    let batch = errors(
        predict_parameters(
            OperationBuilder::new()
                .operation_id(Some("predict_batch"))
                .summary(Some("Findings for several chest X-rays"))
                .request_body(Some(batch_body))
                .response(
                    "200",
                    ok(
                        "one result (or error) per image",
                        "application/json",
                        "BatchResponse",
                    ),
                ),
            max_deadline_ms,
        ),
        PREDICT_ERRORS,
        false,
    );
    let models = errors(
        OperationBuilder::new()
            .operation_id(Some("models"))
            .summary(Some("The loaded models"))
            .response(
                "200",
                ok("the loaded models", "application/json", "ModelsResponse"),
            ),
        AUTH,
        false,
    );
    let reload = errors(
        OperationBuilder::new()
            .operation_id(Some("reload"))
            .summary(Some("Load a model and swap it in (admin)"))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::False))
                    .content("application/json", json_content("ReloadRequest"))
                    .build(),
            ))
            .response(
                "200",
                ok("what the reload did", "application/json", "ReloadResponse"),
            ),
        &[
            ("400", "bad JSON"),
            ("401", "no API key, or an unknown one"),
            ("403", "not an admin key"),
            ("404", "no such model in the registry"),
            ("413", "the body is over 64 KiB"),
            ("415", "not application/json"),
            (
                "422",
                "the model failed to load; the serving model is unchanged",
            ),
            ("503", "the registry cannot be read"),
        ],
        false,
    );
    let feedback = errors(
        OperationBuilder::new()
            .operation_id(Some("feedback"))
            .summary(Some(
                "The findings a radiologist confirmed for an earlier prediction (feedback scope)",
            ))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content("application/json", json_content("FeedbackRequest"))
                    .build(),
            ))
            .response(
                "202",
                ok(
                    "on the bus: the evaluator will join it to the prediction",
                    "application/json",
                    "FeedbackAccepted",
                ),
            ),
        &[
            (
                "400",
                "bad JSON, a finding missing or unknown, no or both of request_id and study_ref",
            ),
            ("401", "no API key, or an unknown one"),
            ("403", "not a feedback (or admin) key"),
            ("413", "the body is over 16 KiB"),
            ("415", "not application/json"),
            ("503", "the bus did not take it: send it again"),
        ],
        false,
    );
    let health = |id: &str, summary: &str| {
        OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some(summary))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("yes")
                    .content("application/json", json_object())
                    .build(),
            )
            .response(
                "503",
                ResponseBuilder::new()
                    .description("no")
                    .content("application/json", json_object())
                    .build(),
            )
            .build()
    };
    let oip_model = |id: &str, versioned: bool| {
        let mut op = OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some("Open Inference Protocol model metadata"))
            .parameter(path_param("name", Some(model_name)))
            .response(
                "200",
                ok("model metadata", "application/json", "ModelMetadata"),
            );
        if versioned {
            op = op.parameter(path_param("version", None));
        }
        errors(
            op,
            &[AUTH[0], AUTH[1], ("404", "no such model or version")],
            true,
        )
        .build()
    };
    let oip_ready = |id: &str, versioned: bool| {
        let mut op = OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some("Open Inference Protocol model readiness"))
            .parameter(path_param("name", Some(model_name)))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("ready")
                    .content("application/json", json_object())
                    .build(),
            )
            .response(
                "503",
                ResponseBuilder::new()
                    .description("not ready")
                    .content("application/json", json_object())
                    .build(),
            );
        if versioned {
            op = op.parameter(path_param("version", None));
        }
        errors(op, &[AUTH[0], AUTH[1], ("404", "no such model")], true).build()
    };
    let infer = |id: &str, versioned: bool| {
        let mut op = OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some("Open Inference Protocol inference: `image` (BYTES) or `pixels` (FP32) in; `findings` and `abnormal` out"))
            .parameter(path_param("name", Some(model_name)))
            .parameter(header_param(
                "X-Request-Deadline-Ms",
                "give up (504) after this many milliseconds",
                ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(max_deadline_ms as f64)).into(),
            ))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content("application/json", json_content("InferRequest"))
                    .content("application/octet-stream", ContentBuilder::new().schema(Some(binary())).build())
                    .build(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("the outputs (binary when asked for)")
                    .content("application/json", json_content("InferResponse"))
                    .content("application/octet-stream", ContentBuilder::new().schema(Some(binary())).build())
                    .build(),
            );
        if versioned {
            op = op.parameter(path_param("version", None));
        }
        errors(op, PREDICT_ERRORS, true).build()
    };
    let text = |id: &str, summary: &str, content_type: &str| {
        OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some(summary))
            .response(
                "200",
                ResponseBuilder::new()
                    .description(summary)
                    .content(
                        content_type,
                        ContentBuilder::new().schema(Some(string())).build(),
                    )
                    .build(),
            )
            .build()
    };
    let openapi = OperationBuilder::new()
        .operation_id(Some("openapi"))
        .summary(Some("This document"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("OpenAPI 3.1")
                .content("application/json", json_object())
                .build(),
        )
        .build();
    let server = OperationBuilder::new()
        .operation_id(Some("server_metadata"))
        .summary(Some("Open Inference Protocol server metadata"))
        .response(
            "200",
            ok("server metadata", "application/json", "ServerMetadata"),
        )
        .build();

    doc.paths = PathsBuilder::new()
        .path(
            "/",
            PathItem::new(HttpMethod::Get, text("page", "The web page", "text/html")),
        )
        .path("/openapi.json", PathItem::new(HttpMethod::Get, openapi))
        .path(
            "/metrics",
            PathItem::new(
                HttpMethod::Get,
                text("metrics", "Prometheus metrics", "text/plain"),
            ),
        )
        .path(
            "/healthz",
            PathItem::new(
                HttpMethod::Get,
                health("healthz", "Liveness: never depends on a model or a broker"),
            ),
        )
        .path(
            "/readyz",
            PathItem::new(
                HttpMethod::Get,
                health("readyz", "Readiness: a model is loaded"),
            ),
        )
        .path(
            "/v1/predict",
            PathItem::new(HttpMethod::Post, predict.build()),
        )
        .path(
            "/v1/predict/batch",
            PathItem::new(HttpMethod::Post, batch.build()),
        )
        .path("/v1/models", PathItem::new(HttpMethod::Get, models.build()))
        .path(
            "/v1/feedback",
            PathItem::new(HttpMethod::Post, feedback.build()),
        )
        .path(
            "/v1/admin/reload",
            PathItem::new(HttpMethod::Post, reload.build()),
        )
        .path("/v2", PathItem::new(HttpMethod::Get, server))
        .path(
            "/v2/health/live",
            PathItem::new(
                HttpMethod::Get,
                health("live", "Open Inference Protocol liveness"),
            ),
        )
        .path(
            "/v2/health/ready",
            PathItem::new(
                HttpMethod::Get,
                health("ready", "Open Inference Protocol readiness"),
            ),
        )
        .path(
            "/v2/models/{name}",
            PathItem::new(HttpMethod::Get, oip_model("model_metadata", false)),
        )
        .path(
            "/v2/models/{name}/ready",
            PathItem::new(HttpMethod::Get, oip_ready("model_ready", false)),
        )
        .path(
            "/v2/models/{name}/versions/{version}",
            PathItem::new(HttpMethod::Get, oip_model("model_version_metadata", true)),
        )
        .path(
            "/v2/models/{name}/versions/{version}/ready",
            PathItem::new(HttpMethod::Get, oip_ready("model_version_ready", true)),
        )
        .path(
            "/v2/models/{name}/infer",
            PathItem::new(HttpMethod::Post, infer("infer", false)),
        )
        .path(
            "/v2/models/{name}/versions/{version}/infer",
            PathItem::new(HttpMethod::Post, infer("infer_version", true)),
        )
        .build();
    doc
}

/// The document, as JSON: the deadline header's bound and the model name
/// (the path examples, so generated requests reach the model) from the
/// settings.
pub fn json(api: &crate::settings::ApiSettings) -> String {
    build(api.max_deadline_ms, &api.model_name)
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `GET /openapi.json`.
pub async fn document(state: actix_web::web::Data<super::AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}
