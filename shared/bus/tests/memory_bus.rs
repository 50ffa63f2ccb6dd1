//! The bus suite against the in-process implementation.

mod suite;

use std::{sync::Arc, time::Duration};

use chexvision_bus::{Bus, MemoryBus};

fn bus() -> Arc<dyn Bus> {
    Arc::new(MemoryBus::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_arrive_exactly_once() {
    suite::acknowledged_events_arrive_exactly_once(bus(), 10_000, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn unacknowledged_event_is_delivered_again() {
    suite::unacknowledged_event_is_delivered_again(bus()).await;
}

#[tokio::test]
async fn poison_event_goes_to_dead_letter_topic() {
    suite::poison_event_goes_to_dead_letter_topic(bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_partitions() {
    suite::two_consumers_share_partitions(bus(), Duration::from_millis(10)).await;
}

#[tokio::test]
async fn unknown_topic_is_an_error() {
    suite::unknown_topic_is_an_error(bus()).await;
}

#[tokio::test]
async fn connect_by_uri() {
    let settings = Default::default();
    assert!(chexvision_bus::connect("memory://", &settings).is_ok());
    let err = chexvision_bus::connect("amqp://x", &settings).unwrap_err();
    assert!(err.to_string().contains("amqp://x"), "{err}");
}

#[tokio::test]
async fn poison_record_near_the_size_limit_does_not_block() {
    suite::poison_record_near_the_size_limit_does_not_block(bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_completes_once() {
    suite::slow_handler_completes_once(bus(), Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_and_falls_to_zero() {
    suite::lag_is_reported_and_falls_to_zero(bus(), Duration::from_secs(30)).await;
}

#[tokio::test]
async fn an_outage_longer_than_the_attempts_loses_nothing() {
    suite::an_outage_longer_than_the_attempts_loses_nothing(bus()).await;
}
