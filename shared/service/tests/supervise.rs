//! The runtime watches its tasks: a task that ends before shutdown (a
//! worker that failed, a consumer whose subscription failed) turns the
//! service unready and unhealthy over HTTP, and `run_until_shutdown`
//! returns an error naming it (the process exits non-zero). A bus that does
//! not answer turns it unready.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chexvision_bus::{
    Bus, BusError, Delivery, Handler, HandlerError, MemoryBus, OutboundRecord, Subscription,
    TopicSpec,
};
use chexvision_service::{watch_bus, Service, ServiceArgs};
use chexvision_telemetry::Health;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct NoSettings {}

impl chexvision_config::Validate for NoSettings {
    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

async fn start(dir: &tempfile::TempDir) -> Service<NoSettings> {
    let config = dir.path().join("service.yaml");
    std::fs::write(
        &config,
        "http:\n  bind: 127.0.0.1:0\nlog:\n  format: pretty\n",
    )
    .unwrap();
    let args = ServiceArgs {
        config: Some(config),
        store: Some(format!("file://{}", dir.path().join("store").display())),
        bus: Some("memory://".into()),
    };
    Service::start("chexvision-supervise-test", &args)
        .await
        .expect("service starts")
}

/// HTTP status of `path`, or None once nothing answers.
fn status(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

/// Polls `/readyz` and `/healthz` until nothing answers; returns what it saw.
fn watch_endpoints(address: SocketAddr) -> std::thread::JoinHandle<Vec<(u16, u16)>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            match (status(address, "/readyz"), status(address, "/healthz")) {
                (Some(ready), Some(alive)) => seen.push((ready, alive)),
                _ => break,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_worker_makes_the_service_unhealthy_and_exit_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(&dir).await;
    service.create_topics(&[]).await.unwrap();
    let address = service.address;
    let health = service.telemetry.health.clone();
    assert_eq!(status(address, "/readyz"), Some(200));
    let watcher = watch_endpoints(address);
    let worker = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        anyhow::bail!("the store went away")
    });
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        service.run_until_shutdown(vec![("worker".into(), worker)]),
    )
    .await
    .expect("the service stops on its own");
    let error = result.expect_err("a failed task is an error").to_string();
    assert!(
        error.contains("worker failed: the store went away"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!health.is_ready() && !health.is_alive());
    let seen = watcher.join().unwrap();
    assert_eq!(seen.first(), Some(&(200, 200)), "{seen:?}");
    assert!(
        seen.contains(&(503, 503)),
        "/readyz and /healthz never answered 503 before the exit: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_subscription_failed_stops_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(&dir).await;
    // Subscribing to a topic nobody created fails on the in-process bus.
    let consumer = service.spawn_consumer("group", &["never.created"], Ignore);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        service.run_until_shutdown(vec![consumer]),
    )
    .await
    .expect("the service stops on its own");
    let error = result
        .expect_err("a failed consumer is an error")
        .to_string();
    assert!(error.contains("consumer never.created failed"), "{error}");
    assert!(error.contains("never.created"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_or_cancellation_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(&dir).await;
    service.create_topics(&["t"]).await.unwrap();
    let consumer = service.spawn_consumer("group", &["t"], Ignore);
    let shutdown = service.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
    });
    service
        .run_until_shutdown(vec![consumer])
        .await
        .expect("a requested stop is not a failure");
}

/// Tasks that end because shutdown began (as the consumers and the
/// inference API server do) are a clean stop, however the wake-ups race:
/// here the task has already ended when the stop is seen, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_because_of_the_stop_is_not_a_failure() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let service = start(&dir).await;
        let shutdown = service.shutdown.clone();
        let task = tokio::spawn(async move {
            shutdown.cancelled().await;
            Ok(())
        });
        service.shutdown.cancel();
        while !task.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        service
            .run_until_shutdown(vec![("worker".to_string(), task)])
            .await
            .expect("a requested stop is not a failure");
    }
}

struct Ignore;

#[async_trait]
impl Handler for Ignore {
    async fn handle(&self, _: &Delivery) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The in-process bus, with a switch that makes it stop answering.
#[derive(Debug)]
struct FlakyBus {
    inner: MemoryBus,
    down: AtomicBool,
}

#[async_trait]
impl Bus for FlakyBus {
    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        self.inner.create_topics(topics).await
    }
    async fn publish(&self, record: OutboundRecord) -> Result<(), BusError> {
        self.inner.publish(record).await
    }
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(group, topics).await
    }
    async fn probe(&self) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            Err(BusError::Closed)
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_bus_that_does_not_answer_makes_the_service_unready_until_it_does() {
    let bus = Arc::new(FlakyBus {
        inner: MemoryBus::new(),
        down: AtomicBool::new(false),
    });
    let health = Health::default();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watch_bus(
        bus.clone(),
        health.clone(),
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let wait = |want: bool| {
        let health = health.clone();
        async move {
            let started = Instant::now();
            while health.is_ready() != want {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "readiness never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait(true).await;
    bus.down.store(true, Ordering::SeqCst);
    wait(false).await;
    let reasons = health.waiting_for();
    assert!(reasons["bus"].contains("does not answer"), "{reasons:?}");
    assert!(
        health.is_alive(),
        "an unreachable bus is not a reason to restart"
    );
    bus.down.store(false, Ordering::SeqCst);
    wait(true).await;
    shutdown.cancel();
    task.await.unwrap();
}
