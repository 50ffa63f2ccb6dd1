//! `POST /v1/feedback`: the findings a radiologist confirmed for an earlier
//! prediction, named by its request id or by the study reference given
//! with it. Published to `chexvision.feedback` (202 once it is on the
//! bus); the evaluator joins it to the prediction. Its own key scope
//! (`feedback`): a reporting system need not be able to predict, nor a
//! predicting one to grade the model.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chexvision_dataset::LABELS;
use chexvision_events::FeedbackReceived;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{self, read_body};
use super::errors::ApiError;
use super::{AppState, Ctx};
use crate::events::{study_ref_sha256, validate_study_ref, FeedbackError};
use crate::settings::Scope;

/// Largest feedback body.
const MAX_FEEDBACK_BYTES: usize = 16 * 1024;

/// A confirmed reading.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The `request_id` of the answer being confirmed (a batch entry's
    /// own id), or leave it out and give `study_ref`.
    pub request_id: Option<String>,
    /// The study reference sent with the prediction(s): confirms every
    /// prediction made with it.
    pub study_ref: Option<String>,
    /// Every one of the 14 findings, true where confirmed present (all
    /// false: no finding).
    pub findings: BTreeMap<String, bool>,
    /// When the reading was confirmed (RFC 3339); now when left out.
    pub confirmed_at: Option<String>,
}

/// Feedback taken.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackAccepted {
    /// The `FeedbackReceived` event's id.
    pub feedback_id: String,
    /// This request's id.
    pub request_id: String,
    /// Findings confirmed present.
    pub positive: Vec<String>,
}

/// The event a request becomes, or why it cannot.
pub fn feedback_event(
    request: FeedbackRequest,
    source: &str,
    now_unix: i64,
) -> Result<FeedbackReceived, ApiError> {
    let request_id = request.request_id.unwrap_or_default();
    let plain = request_id.len() <= 80
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain {
        return Err(ApiError::bad_request(
            "request_id must be the X-Request-Id of an answer (at most 80 characters of letters, digits, - _ .)",
        ));
    }
    let study = match request.study_ref.as_deref() {
        Some(study) => {
            validate_study_ref(study).map_err(ApiError::bad_request)?;
            study_ref_sha256(study)
        }
        None => String::new(),
    };
    match (request_id.is_empty(), study.is_empty()) {
        (true, true) => {
            return Err(ApiError::bad_request(
                "name the prediction: request_id, or the study_ref sent with it",
            ))
        }
        (false, false) => {
            return Err(ApiError::bad_request(
                "give request_id or study_ref, not both",
            ))
        }
        _ => {}
    }
    if let Some(unknown) = request
        .findings
        .keys()
        .find(|k| !LABELS.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "`{}` is not one of the 14 findings ({})",
            unknown.chars().take(64).collect::<String>(),
            LABELS.join(", ")
        )));
    }
    let missing: Vec<&str> = LABELS
        .iter()
        .copied()
        .filter(|l| !request.findings.contains_key(*l))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!(
            "findings must give every one of the 14 findings, true or false; missing: {}",
            missing.join(", ")
        )));
    }
    let findings: Vec<bool> = LABELS.iter().map(|l| request.findings[*l]).collect();
    let confirmed_at = match request.confirmed_at {
        None => None,
        Some(text) => {
            let time: pbjson_types::Timestamp =
                serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|_| {
                    ApiError::bad_request(format!(
                        "confirmed_at `{}` is not an RFC 3339 time such as 2026-12-07T09:30:00Z",
                        text.chars().take(64).collect::<String>()
                    ))
                })?;
            // 2000-01-01 .. five minutes from now (clocks disagree a little).
            if time.seconds < 946_684_800 || time.seconds > now_unix + 300 {
                return Err(ApiError::bad_request(
                    "confirmed_at must lie between 2000-01-01 and now",
                ));
            }
            Some(time)
        }
    };
    Ok(FeedbackReceived {
        request_id,
        study_ref_sha256: study,
        findings,
        confirmed_at,
        source: source.to_owned(),
    })
}

/// `POST /v1/feedback`.
pub async fn feedback(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = Ctx::begin(&req, "/v1/feedback", &state);
    let result = feedback_inner(&ctx, &req, payload, &state).await;
    ctx.finish(result)
}

async fn feedback_inner(
    ctx: &Ctx,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let holder = state.keys.authorize(req, Scope::Feedback)?;
    if body::media_type(req).as_deref() != Some("application/json") {
        return Err(ApiError::unsupported_media_type(
            "send the feedback as application/json",
        ));
    }
    let bytes = read_body(req, payload, MAX_FEEDBACK_BYTES as u64).await?;
    let request: FeedbackRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))?;
    let source = match holder {
        Some(name) => format!("api:{name}"),
        None => "api".to_owned(),
    };
    let event = feedback_event(request, &source, chexvision_events::now().seconds)?;
    let positive = LABELS
        .iter()
        .zip(&event.findings)
        .filter(|(_, p)| **p)
        .map(|(l, _)| (*l).to_owned())
        .collect();
    let feedback_id = state.events.feedback(event).await.map_err(|e| match e {
        FeedbackError::NoBus => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_bus",
            "this replica runs without a bus: feedback cannot be taken",
        ),
        FeedbackError::Bus(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            format!("the feedback was not taken, send it again: {e}"),
        )
        .retry_after(5),
    })?;
    Ok(HttpResponse::Accepted().json(FeedbackAccepted {
        feedback_id,
        request_id: ctx.id.clone(),
        positive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(findings: &[(&str, bool)]) -> FeedbackRequest {
        FeedbackRequest {
            request_id: Some("r-1".into()),
            study_ref: None,
            findings: findings.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
            confirmed_at: None,
        }
    }

    fn all(positive: &[&str]) -> Vec<(&'static str, bool)> {
        LABELS.iter().map(|l| (*l, positive.contains(l))).collect()
    }

    #[test]
    fn a_complete_reading_becomes_an_event_in_label_order() {
        let event =
            feedback_event(request(&all(&["Effusion", "Hernia"])), "api", 2_000_000_000).unwrap();
        assert_eq!(event.findings.len(), 14);
        assert!(event.findings[2] && event.findings[13]);
        assert_eq!(event.findings.iter().filter(|p| **p).count(), 2);
        assert_eq!(event.request_id, "r-1");
    }

    #[test]
    fn incomplete_unknown_or_unnamed_readings_are_refused_by_name() {
        let mut partial = all(&[]);
        partial.retain(|(l, _)| *l != "Mass");
        let e = feedback_event(request(&partial), "api", 0).unwrap_err();
        assert!(e.message.contains("missing: Mass"), "{}", e.message);
        let mut extra = all(&[]);
        extra.push(("No Finding", true));
        let e = feedback_event(request(&extra), "api", 0).unwrap_err();
        assert!(e.message.contains("`No Finding`"), "{}", e.message);
        let mut unnamed = request(&all(&[]));
        unnamed.request_id = None;
        assert!(feedback_event(unnamed, "api", 0).is_err());
        let mut both = request(&all(&[]));
        both.study_ref = Some("ACC1".into());
        assert!(feedback_event(both, "api", 0).is_err());
        let mut by_study = request(&all(&[]));
        by_study.request_id = None;
        by_study.study_ref = Some("ACC1".into());
        let event = feedback_event(by_study, "api", 0).unwrap();
        assert_eq!(event.study_ref_sha256, study_ref_sha256("ACC1"));
    }

    #[test]
    fn confirmation_times_are_parsed_and_bounded() {
        let now = 1_796_000_000; // 2026-11
        let mut r = request(&all(&[]));
        r.confirmed_at = Some("2026-10-01T08:00:00Z".into());
        let event = feedback_event(r, "api", now).unwrap();
        assert_eq!(event.confirmed_at.unwrap().seconds, 1_790_841_600);
        for bad in ["yesterday", "1999-12-31T00:00:00Z", "2030-01-01T00:00:00Z"] {
            let mut r = request(&all(&[]));
            r.confirmed_at = Some(bad.into());
            assert!(feedback_event(r, "api", now).is_err(), "{bad}");
        }
    }
}
