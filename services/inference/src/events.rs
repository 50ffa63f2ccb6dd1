//! What the service tells the platform: every answer as a `PredictionMade`
//! on `chexvision.predictions`, and the radiologists' confirmations from
//! `POST /v1/feedback` as `FeedbackReceived` on `chexvision.feedback`. The
//! evaluator joins the two into the model's AUC on the hospital's own
//! patients.
//!
//! A prediction event must never slow or fail an answer: it is queued
//! (bounded) and published by a background task, one at a time; a full
//! queue drops the event and counts it. Feedback is different: it is the
//! caller's data, so `POST /v1/feedback` answers only once the event is on
//! the bus.

use std::sync::Arc;
use std::time::Duration;

use chexvision_bus::{publish_event, Bus, BusError};
use chexvision_config::Topics;
use chexvision_events::{Envelope, FeedbackReceived, PredictionMade};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::Prediction;

/// Prediction events waiting for the bus; beyond this they are dropped.
pub const QUEUE_CAPACITY: usize = 10_000;

/// The longest study reference accepted.
pub const MAX_STUDY_REF_LEN: usize = 128;

/// Checks a caller's study reference: 1–128 characters of letters, digits
/// and `. _ : / -` (accession numbers, study UIDs, opaque tokens).
pub fn validate_study_ref(value: &str) -> Result<(), String> {
    let ok = (1..=MAX_STUDY_REF_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "study_ref must be 1 to {MAX_STUDY_REF_LEN} characters of letters, digits and . _ : / - (an opaque reference such as an accession number; never a name)"
        ))
    }
}

/// What leaves the service instead of the reference itself.
pub fn study_ref_sha256(value: &str) -> String {
    chexvision_store::sha256_hex(value.as_bytes())
}

/// The publisher; cheap to clone.
#[derive(Clone)]
pub struct Events {
    inner: Option<Arc<Inner>>,
    counts: IntCounterVec,
}

struct Inner {
    bus: Arc<dyn Bus>,
    topics: Topics,
    queue: mpsc::Sender<Envelope>,
}

impl Events {
    /// No bus: prediction events are counted as dropped, feedback refused.
    pub fn disabled(counts: IntCounterVec) -> Events {
        Events {
            inner: None,
            counts,
        }
    }

    /// Publishes through `bus` until `shutdown`, then drains what is queued
    /// (for at most `drain`).
    pub fn start(
        bus: Arc<dyn Bus>,
        topics: Topics,
        counts: IntCounterVec,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> (Events, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let (queue, mut receiver) = mpsc::channel::<Envelope>(QUEUE_CAPACITY);
        let task = {
            let (bus, topic, counts) = (bus.clone(), topics.predictions.clone(), counts.clone());
            tokio::spawn(async move {
                // One at a time: a prediction event is small, and one
                // record per batch keeps every consumer's offsets simple.
                let publish = |event: Envelope| {
                    let (bus, topic, counts) = (bus.clone(), topic.clone(), counts.clone());
                    async move {
                        let key = match &event.body {
                            Some(chexvision_events::Body::PredictionMade(p)) => {
                                p.request_id.clone()
                            }
                            _ => String::new(),
                        };
                        let outcome = match publish_event(&*bus, &topic, &key, &event).await {
                            Ok(()) => "published",
                            Err(e) => {
                                tracing::warn!(error = %e, request_id = %key, "prediction event not published");
                                "failed"
                            }
                        };
                        counts.with_label_values(&[outcome]).inc();
                    }
                };
                loop {
                    tokio::select! {
                        biased;
                        event = receiver.recv() => match event {
                            Some(event) => publish(event).await,
                            None => return Ok(()),
                        },
                        _ = shutdown.cancelled() => break,
                    }
                }
                receiver.close();
                let drained = tokio::time::timeout(drain, async {
                    while let Some(event) = receiver.recv().await {
                        publish(event).await;
                    }
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(
                        left = receiver.len(),
                        "prediction events still queued at shutdown were dropped"
                    );
                    counts
                        .with_label_values(&["dropped"])
                        .inc_by(receiver.len() as u64);
                }
                Ok(())
            })
        };
        let events = Events {
            inner: Some(Arc::new(Inner { bus, topics, queue })),
            counts,
        };
        (events, task)
    }

    /// Queues the event of one answer; never waits.
    pub fn prediction(
        &self,
        request_id: &str,
        prediction: &Prediction,
        study_ref: Option<&str>,
        route: &str,
        tta: bool,
    ) {
        let Some(inner) = &self.inner else {
            self.counts.with_label_values(&["dropped"]).inc();
            return;
        };
        let event = Envelope::new(
            PredictionMade {
                request_id: request_id.to_owned(),
                model_version: prediction.model.info.version.clone(),
                probabilities: prediction.probabilities.to_vec(),
                study_ref_sha256: study_ref.map(study_ref_sha256).unwrap_or_default(),
                route: route.to_owned(),
                tta,
            },
            crate::service::PRODUCER,
        );
        if inner.queue.try_send(event).is_err() {
            self.counts.with_label_values(&["dropped"]).inc();
        }
    }

    /// Publishes a confirmation; returns once it is on the bus.
    pub async fn feedback(&self, feedback: FeedbackReceived) -> Result<String, FeedbackError> {
        let inner = self.inner.as_ref().ok_or(FeedbackError::NoBus)?;
        let key = if feedback.request_id.is_empty() {
            feedback.study_ref_sha256.clone()
        } else {
            feedback.request_id.clone()
        };
        let event = Envelope::new(feedback, crate::service::PRODUCER);
        let id = event.event_id().to_owned();
        publish_event(&*inner.bus, &inner.topics.feedback, &key, &event)
            .await
            .map_err(FeedbackError::Bus)?;
        Ok(id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("this service has no bus to send feedback through")]
    NoBus,
    #[error("the bus did not take the feedback: {0}")]
    Bus(BusError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_references_are_bounded_and_plain() {
        assert!(validate_study_ref("ACC-2026.12/0001:a_b").is_ok());
        assert!(validate_study_ref("").is_err());
        assert!(validate_study_ref("Jane Doe").is_err());
        assert!(validate_study_ref(&"a".repeat(129)).is_err());
        assert!(validate_study_ref(&"a".repeat(128)).is_ok());
        assert_eq!(study_ref_sha256("abc").len(), 64);
        assert_ne!(study_ref_sha256("abc"), study_ref_sha256("abd"));
    }
}
