//! The consumer side of the trainer: a training request (or a dataset
//! completion) becomes a durable run, queued for the worker.

use std::sync::Arc;

use async_trait::async_trait;
use chexvision_bus::{decode_event, Delivery, Handler, HandlerError};
use chexvision_config::Topics;
use chexvision_dataset::is_valid_id;
use chexvision_events::{Body, Envelope, TrainingRequested};
use chexvision_store::ObjectStore;
use tokio::sync::mpsc;

use crate::state::state_key;
use crate::{create_run, RunError, RunState, TrainerMetrics, TrainerServiceSettings};

use super::request::{dataset_ready_request, resolve_request, store_failure, RequestError};

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new run, queued for the worker.
    Started(String),
    /// The run exists already: nothing started.
    Duplicate(String),
    /// Not for this trainer (a dataset at another size).
    Ignored,
}

/// Consumes training requests (and dataset completions when configured).
pub struct TrainerHandler {
    pub store: Arc<dyn ObjectStore>,
    pub topics: Topics,
    pub settings: TrainerServiceSettings,
    /// Run ids for the worker.
    pub jobs: mpsc::UnboundedSender<String>,
    pub metrics: Option<TrainerMetrics>,
}

impl TrainerHandler {
    /// Records the run of a request and queues it; the request may be
    /// acknowledged once this returns `Ok`.
    pub async fn accept(
        &self,
        request: &TrainingRequested,
        envelope: &Envelope,
    ) -> Result<Accepted, RequestError> {
        // A duplicate is found before anything else is checked: the run it
        // names may have been made with configs since changed.
        if is_valid_id(&request.request_id) {
            match self.store.head(&state_key(&request.request_id)).await {
                Ok(_) => {
                    tracing::info!(run_id = %request.request_id, "duplicate request: the run exists");
                    return Ok(Accepted::Duplicate(request.request_id.clone()));
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(store_failure("reading the run state", &e)),
            }
        }
        let resolved =
            resolve_request(self.store.as_ref(), &self.settings, request, envelope).await?;
        let state = RunState::accepted(
            &resolved.run_id,
            &resolved.dataset_id,
            resolved.synthetic,
            &resolved.settings,
            Some(resolved.request),
        );
        match create_run(self.store.as_ref(), &state).await {
            Ok(()) => {}
            Err(RunError::Conflict(_)) => return Ok(Accepted::Duplicate(state.run_id)),
            Err(e) if e.is_unavailable() => {
                return Err(RequestError::Unavailable(format!("recording the run: {e}")))
            }
            Err(e) => return Err(RequestError::Failed(format!("recording the run: {e}"))),
        }
        tracing::info!(
            run_id = %state.run_id,
            dataset_id = %state.dataset_id,
            config = %state.request.as_ref().map(|r| r.config.as_str()).unwrap_or(""),
            "run accepted"
        );
        if let Some(metrics) = &self.metrics {
            metrics.queued_runs.inc();
        }
        // The worker is gone only at shutdown; the run is recorded and the
        // next start picks it up.
        let _ = self.jobs.send(state.run_id.clone());
        Ok(Accepted::Started(state.run_id))
    }

    fn count(&self, accepted: &Accepted) {
        if let Some(metrics) = &self.metrics {
            let outcome = match accepted {
                Accepted::Started(_) => "accepted",
                Accepted::Duplicate(_) => "duplicate",
                Accepted::Ignored => "ignored",
            };
            metrics.requests.with_label_values(&[outcome]).inc();
        }
    }
}

#[async_trait]
impl Handler for TrainerHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = decode_event(delivery, &self.topics)?;
        let accepted = match &envelope.body {
            Some(Body::TrainingRequested(request)) => self.accept(request, &envelope).await?,
            Some(Body::DatasetReady(ready)) if self.settings.train_on_dataset_ready => {
                let (settings, ready_event) = (self.settings.clone(), ready.clone());
                let request = tokio::task::spawn_blocking(move || {
                    dataset_ready_request(&settings, &ready_event)
                })
                .await
                .map_err(|e| HandlerError::Failed(format!("reading the training config: {e}")))??;
                match request {
                    Some(request) => self.accept(&request, &envelope).await?,
                    None => Accepted::Ignored,
                }
            }
            other => {
                return Err(HandlerError::Malformed(format!(
                    "expected a training request{}, got {:?}",
                    if self.settings.train_on_dataset_ready {
                        " or a dataset completion"
                    } else {
                        ""
                    },
                    other.as_ref().map(Body::kind)
                )))
            }
        };
        self.count(&accepted);
        Ok(())
    }
}
