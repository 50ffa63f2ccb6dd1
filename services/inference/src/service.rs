//! The `chexvision-inference` process: the API server over the core, the
//! first model load, the `ModelPromoted` consumer (each replica in its own
//! group: every replica must see every promotion) and the registry poll.
//!
//! Neither the broker nor the store is needed to answer: a bus outage
//! delays promotions (the registry poll still converges), and liveness
//! never depends on either. A first load that fails leaves the service
//! alive and not ready, retrying on the registry poll; only a checkpoint
//! named on the command line that cannot be loaded stops the start.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::{Context, Result};
use async_trait::async_trait;
use chexvision_bus::{decode_event, Consumer, ConsumerOptions, Delivery, Handler, HandlerError};
use chexvision_config::Topics;
use chexvision_events::Body;
use chexvision_service::{Service, Task};
use tokio_util::sync::CancellationToken;

use crate::core::lifecycle::{Lifecycle, Target};
use crate::core::slots::ModelSlots;
use crate::core::Core;
use crate::router::{self, AppState, Keys};
use crate::settings::InferenceSettings;
use crate::{InferenceError, InferenceMetrics};

/// The `producer` / service name.
pub const PRODUCER: &str = "chexvision-inference";

/// Loads `ModelPromoted` events' models.
pub struct PromotionHandler {
    pub lifecycle: Arc<Lifecycle>,
    pub topics: Topics,
}

#[async_trait]
impl Handler for PromotionHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = decode_event(delivery, &self.topics)?;
        let Some(Body::ModelPromoted(event)) = &envelope.body else {
            return Err(HandlerError::Malformed(
                "expected a ModelPromoted event".into(),
            ));
        };
        let checkpoint = event
            .checkpoint
            .as_ref()
            .filter(|c| !c.uri.is_empty() && c.sha256.len() == 64)
            .ok_or_else(|| {
                HandlerError::Malformed("ModelPromoted has no checkpoint URI and sha256".into())
            })?;
        if chexvision_registry::validate_version(&event.model_version).is_err() {
            return Err(HandlerError::Malformed(format!(
                "`{}` is not a model version",
                event.model_version.chars().take(80).collect::<String>()
            )));
        }
        let target = Target::Promoted {
            version: event.model_version.clone(),
            location: checkpoint.uri.clone(),
            sha256: checkpoint.sha256.clone(),
        };
        match self.lifecycle.load(target).await {
            Ok(_) => Ok(()),
            // The registry or store may answer again: retried, then
            // dead-lettered.
            Err(InferenceError::Registry(e)) => Err(HandlerError::Failed(e)),
            // A checkpoint that does not load will not load next time:
            // dead-lettered with the reason; the serving model stays.
            Err(e) => Err(HandlerError::Malformed(format!(
                "model {} was not loaded: {e}",
                event.model_version
            ))),
        }
    }
}

/// What [`start_api`] returns.
pub struct Api {
    pub state: web::Data<AppState>,
    pub address: std::net::SocketAddr,
    pub server: actix_web::dev::ServerHandle,
    pub tasks: Vec<Task>,
}

/// Starts the core and the API server on `bind` (no model loaded yet).
pub fn start_api(
    settings: &InferenceSettings,
    lifecycle: Arc<Lifecycle>,
    metrics: InferenceMetrics,
    telemetry: chexvision_telemetry::Telemetry,
    events: crate::events::Events,
    shutdown: CancellationToken,
) -> Result<Api> {
    let keys = Keys::load(&settings.api.keys, &settings.api.keys_file)?;
    if !keys.enabled() {
        tracing::warn!("no API keys configured: the API is open to anyone who can reach it");
    }
    // The queue stops after the server: requests in flight at shutdown
    // are answered, not refused.
    let queue_stop = CancellationToken::new();
    let (core, queue_task) = Core::start(
        settings,
        lifecycle.slots().clone(),
        metrics.clone(),
        queue_stop.clone(),
    )?;
    let state = web::Data::new(AppState {
        core,
        lifecycle,
        api: settings.api.clone(),
        keys,
        metrics,
        telemetry,
        openapi: router::openapi::json(&settings.api),
        events,
    });
    let app_state = state.clone();
    let workers = match settings.api.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let server =
        HttpServer::new(move || App::new().configure(router::configure(app_state.clone())))
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(30)
            .bind(&settings.api.bind)
            .with_context(|| format!("serve the API on {}", settings.api.bind))?;
    let address = server
        .addrs()
        .first()
        .copied()
        .context("the API bound no address")?;
    let server = server.run();
    let handle = server.handle();
    let stopper_handle = handle.clone();
    let server_task = tokio::spawn(async move {
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            // Graceful: requests in flight finish (up to 30 s).
            stopper_handle.stop(true).await;
        });
        let result = server.await;
        stopper.abort();
        queue_stop.cancel();
        result.map_err(anyhow::Error::from)
    });
    tracing::info!(%address, "inference API up");
    Ok(Api {
        state,
        address,
        server: handle,
        tasks: vec![
            ("batching queue".to_string(), queue_task),
            ("API server".to_string(), server_task),
        ],
    })
}

/// Wires the whole service onto a started [`Service`]; returns its tasks
/// and the API's handle (stopped by the caller after the tasks).
pub async fn spawn(
    service: &Service<InferenceSettings>,
) -> Result<(
    Vec<Task>,
    actix_web::dev::ServerHandle,
    std::net::SocketAddr,
)> {
    let settings = service.config.service.clone();
    let metrics = InferenceMetrics::register(&service.telemetry.registry)?;
    let slots = Arc::new(ModelSlots::default());
    let lifecycle = Arc::new(Lifecycle::new(
        slots,
        service.store.clone(),
        settings.model.clone(),
        metrics.clone(),
    ));
    // Readiness on the operations port follows the model too.
    service
        .telemetry
        .health
        .not_ready("model", "no model loaded yet");
    // Prediction events outlive the API: answers given while it stops are
    // still published (drained for up to 10 s).
    let events_stop = CancellationToken::new();
    let (events, events_task) = crate::events::Events::start(
        service.bus.clone(),
        service.config.topics.clone(),
        metrics.prediction_events.clone(),
        events_stop.clone(),
        Duration::from_secs(10),
    );
    let api = start_api(
        &settings,
        lifecycle.clone(),
        metrics,
        service.telemetry.clone(),
        events,
        service.shutdown.clone(),
    )?;
    let mut tasks = api.tasks;
    {
        let shutdown = service.shutdown.clone();
        let server = api.server.clone();
        tasks.push((
            "prediction events".to_string(),
            tokio::spawn(async move {
                shutdown.cancelled().await;
                // After the server has answered its last request.
                server.stop(true).await;
                events_stop.cancel();
                events_task.await?
            }),
        ));
    }

    match lifecycle.load(lifecycle.initial_target()).await {
        Ok(outcome) => {
            tracing::info!(?outcome, "first model loaded");
            service.telemetry.health.ready("model");
        }
        Err(e) if !settings.model.checkpoint.is_empty() => {
            return Err(anyhow::anyhow!(e)).context("the checkpoint named by --checkpoint");
        }
        Err(e) => tracing::warn!(error = %e, "no model yet: not ready; the registry is polled"),
    }

    if settings.model.registry_poll_secs > 0 {
        let lifecycle = lifecycle.clone();
        let health = service.telemetry.health.clone();
        let shutdown = service.shutdown.clone();
        let every = Duration::from_secs(settings.model.registry_poll_secs);
        tasks.push((
            "registry poll".to_string(),
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(every) => {}
                    }
                    if let Err(e) = lifecycle.follow_registry().await {
                        tracing::debug!(error = %e, "registry poll");
                    }
                    if lifecycle.slots().current().is_some() {
                        health.ready("model");
                    }
                }
            }),
        ));
    }

    if settings.model.follow_promotions {
        let instance = if settings.model.instance_id.is_empty() {
            std::env::var("HOSTNAME").unwrap_or_else(|_| uuid::Uuid::new_v4().to_string())
        } else {
            settings.model.instance_id.clone()
        };
        let group = format!("{}-{}", settings.model.group_prefix, instance);
        let topics = service.config.topics.clone();
        let options = ConsumerOptions::new(
            &group,
            &[topics.models_promoted.as_str()],
            &service.config.kafka,
            &topics,
        );
        let consumer =
            Consumer::new(service.bus.clone(), options).with_metrics(service.bus_metrics.clone());
        let handler = PromotionHandler {
            lifecycle: lifecycle.clone(),
            topics: topics.clone(),
        };
        let bus = service.bus.clone();
        let health = service.telemetry.health.clone();
        let shutdown = service.shutdown.clone();
        let partitions = service.config.kafka.partitions;
        tasks.push((
            "ModelPromoted consumer".to_string(),
            tokio::spawn(async move {
                // The broker may be down at start: serving does not wait
                // for it; promotions are followed once it answers.
                let specs = [
                    chexvision_bus::TopicSpec::new(&topics.models_promoted, partitions),
                    chexvision_bus::TopicSpec::new(&topics.predictions, partitions),
                    chexvision_bus::TopicSpec::new(&topics.feedback, partitions),
                    chexvision_bus::TopicSpec::new(&topics.dead_letter, 1),
                ];
                loop {
                    match bus.create_topics(&specs).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "the bus does not answer; promotions wait (the registry poll still follows)");
                            tokio::select! {
                                _ = shutdown.cancelled() => return Ok(()),
                                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                            }
                        }
                    }
                }
                health.ready("bus");
                consumer
                    .run(&handler, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }),
        ));
    } else {
        service.telemetry.health.ready("bus");
    }
    Ok((tasks, api.server, api.address))
}
