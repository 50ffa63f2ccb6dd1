//! Hot swap under load: concurrent clients keep predicting while five
//! promotions arrive as `ModelPromoted` events (one of them a checkpoint
//! whose bytes were changed after registration). No request fails, the
//! versions each client sees never go backwards, and the tampered model is
//! never served: its event goes to the dead-letter topic with the reason.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chexvision_bus::{publish_event, Bus, Consumer, ConsumerOptions, MemoryBus, TopicSpec};
use chexvision_config::{KafkaSettings, Topics};
use chexvision_events::{Envelope, ModelPromoted, ObjectRef};
use chexvision_inference::service::PromotionHandler;
use chexvision_registry::Registry;
use common::*;
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 8;
const REQUESTS: usize = 1200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotions_under_load_fail_no_request_and_never_serve_a_tampered_model() {
    let server = TestServer::start(settings(), true).await;
    let registry = Registry::new(server.store.clone(), "test");
    let first = registry.production().await.unwrap().unwrap().version;

    // Five promotions, the third of a tampered checkpoint.
    let mut promotions = Vec::new();
    for (i, run) in ["run-b", "run-c", "run-t", "run-d", "run-e"]
        .iter()
        .enumerate()
    {
        let bytes = checkpoint(10 + i as u64, run);
        let stored = if *run == "run-t" {
            let mut b = bytes.clone();
            let n = b.len();
            b[n - 100] ^= 0x40; // a weight changed after registration
            b
        } else {
            bytes.clone()
        };
        let record = register(&server.store, run, &bytes, &stored).await;
        promotions.push((record, *run == "run-t"));
    }
    let tampered = promotions[2].0.version.clone();
    let order: Vec<String> = std::iter::once(first.clone())
        .chain(
            promotions
                .iter()
                .filter(|(_, t)| !t)
                .map(|(r, _)| r.version.clone()),
        )
        .collect();

    // The consumer, as the service runs it, on the in-process bus.
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    bus.create_topics(&[
        TopicSpec::new(&topics.models_promoted, 1),
        TopicSpec::new(&topics.dead_letter, 1),
    ])
    .await
    .unwrap();
    let kafka = KafkaSettings {
        handler_max_attempts: 1,
        ..KafkaSettings::default()
    };
    let consumer = Consumer::new(
        bus.clone(),
        ConsumerOptions::new(
            "inference-test",
            &[topics.models_promoted.as_str()],
            &kafka,
            &topics,
        ),
    );
    let handler = PromotionHandler {
        lifecycle: server.lifecycle.clone(),
        topics: topics.clone(),
    };
    let stop = CancellationToken::new();
    let consuming = {
        let stop = stop.clone();
        tokio::spawn(async move { consumer.run(&handler, stop).await })
    };

    // Clients: sequential requests each, the versions in answer order.
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let image = png(64, 64, 3);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let url = server.url("/v1/predict");
        let image = image.clone();
        let done = done.clone();
        let finished = finished.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut failures = Vec::new();
            while !finished.load(Ordering::SeqCst) {
                done.fetch_add(1, Ordering::SeqCst);
                let answer = send(
                    "POST",
                    &url,
                    &[("content-type", "image/png")],
                    image.clone(),
                )
                .await;
                if answer.status == 200 {
                    seen.push(
                        answer.json()["model"]["version"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    );
                } else {
                    failures.push((
                        answer.status,
                        String::from_utf8_lossy(&answer.body).to_string(),
                    ));
                }
            }
            (seen, failures)
        }));
    }

    // Promotions spread over the load: registry pointer, then the event.
    // Each waits until requests have started after the previous swap, so
    // every good version answers some.
    let wait_for = |count: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let mut after_swap = 0;
    for (i, (record, is_tampered)) in promotions.iter().enumerate() {
        wait_for(((i + 1) * REQUESTS / 7).max(after_swap + 40)).await;
        let change = registry
            .promote(&record.version, "test", "tests")
            .await
            .unwrap();
        let event = ModelPromoted {
            run_id: record.run_id.clone(),
            model_version: record.version.clone(),
            checkpoint: Some(ObjectRef {
                uri: record.checkpoint.uri.clone(),
                sha256: record.checkpoint.sha256.clone(),
                size_bytes: record.checkpoint.size_bytes,
            }),
            registry: None,
            previous_model_version: change.previous_version.clone().unwrap_or_default(),
            macro_auc: 0.5,
            reason: "test".into(),
        };
        publish_event(
            bus.as_ref(),
            &topics.models_promoted,
            &record.version,
            &Envelope::new(event, "tests"),
        )
        .await
        .unwrap();
        // Wait for the consumer to act on it before the next promotion.
        let failures = || {
            server
                .state
                .metrics
                .swap_failures
                .with_label_values(&["checkpoint"])
                .get()
        };
        for _ in 0..2000 {
            let serving = server
                .lifecycle
                .slots()
                .current()
                .unwrap()
                .info
                .version
                .clone();
            if (*is_tampered && failures() == 1) || (!is_tampered && serving == record.version) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        after_swap = done.load(Ordering::SeqCst);
    }
    wait_for(REQUESTS.max(after_swap + 40)).await;
    finished.store(true, Ordering::SeqCst);

    let mut total = 0;
    let mut served = std::collections::BTreeSet::new();
    for client in clients {
        let (seen, failures) = client.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        total += seen.len();
        let positions: Vec<usize> = seen
            .iter()
            .map(|v| {
                assert_ne!(v, &tampered, "the tampered model answered");
                order
                    .iter()
                    .position(|o| o == v)
                    .unwrap_or_else(|| panic!("unknown version {v}"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] <= w[1]),
            "a client saw versions go backwards: {seen:?}"
        );
        served.extend(seen);
    }
    assert!(total >= REQUESTS, "{total} requests");
    assert_eq!(
        server.lifecycle.slots().current().unwrap().info.version,
        order[4]
    );
    let everything: std::collections::BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        served, everything,
        "every good version answered some requests"
    );

    // The tampered promotion is in the dead-letter topic, with the reason.
    let mut dlq = bus
        .subscribe("dlq-reader", std::slice::from_ref(&topics.dead_letter))
        .await
        .unwrap();
    let letters = chexvision_bus::drain(dlq.as_mut(), 10, Duration::from_millis(500)).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = chexvision_events::Envelope::decode_checked(&letters[0].payload).unwrap();
    let text = format!("{letter:?}");
    assert!(
        text.contains(&tampered) && text.contains("sha256"),
        "{text}"
    );
    assert_eq!(
        server.state.metrics.swaps.get(),
        5,
        "the first model and four promotions"
    );
    stop.cancel();
    consuming.await.unwrap().unwrap();
    server.stop().await;
}
