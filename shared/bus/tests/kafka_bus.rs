//! The bus suite against a real Kafka-protocol broker (the local stack's
//! tansu, started by `make stack-up`). Skipped when no Kafka bus is configured,
//! unless CHEXVISION_REQUIRE_STACK=1 (as in `make test` and CI), where a missing
//! stack fails the run.

mod suite;

use std::{sync::Arc, time::Duration};

use chexvision_bus::{Bus, KafkaBus};
use chexvision_config::{KafkaSettings, Loader, PlatformConfig};

fn stack_settings(test: &str) -> Option<(String, KafkaSettings)> {
    let config: PlatformConfig = Loader::new()
        .load()
        .expect("configuration from CHEXVISION_*");
    let Some(brokers) = config.bus.strip_prefix("kafka://") else {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "CHEXVISION_REQUIRE_STACK=1 but CHEXVISION_BUS is `{}`, not kafka://: run `eval \"$(scripts/stack.sh env)\"`",
            config.bus
        );
        eprintln!("skipping {test}: CHEXVISION_BUS is not a kafka:// URI (run `make stack-up`)");
        return None;
    };
    Some((brokers.to_owned(), config.kafka))
}

fn stack_bus(test: &str) -> Option<Arc<dyn Bus>> {
    let (brokers, settings) = stack_settings(test)?;
    Some(Arc::new(
        KafkaBus::connect(&brokers, &settings).expect("kafka client"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_arrive_exactly_once() {
    let Some(bus) = stack_bus("exactly-once") else {
        return;
    };
    suite::acknowledged_events_arrive_exactly_once(bus, 10_000, Duration::from_secs(240)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_event_is_delivered_again() {
    let Some(bus) = stack_bus("redeliver") else {
        return;
    };
    suite::unacknowledged_event_is_delivered_again(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_goes_to_dead_letter_topic() {
    let Some(bus) = stack_bus("poison") else {
        return;
    };
    suite::poison_event_goes_to_dead_letter_topic(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_partitions() {
    let Some(bus) = stack_bus("shared") else {
        return;
    };
    suite::two_consumers_share_partitions(bus, Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_an_error() {
    let Some((brokers, mut settings)) = stack_settings("unknown-topic") else {
        return;
    };
    // The broker does not create topics on first use; a produce just waits, so
    // bound it here.
    settings.message_timeout_ms = 5_000;
    let bus = Arc::new(KafkaBus::connect(&brokers, &settings).unwrap());
    suite::unknown_topic_is_an_error(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_record_near_the_size_limit_does_not_block() {
    let Some(bus) = stack_bus("huge-poison") else {
        return;
    };
    suite::poison_record_near_the_size_limit_does_not_block(bus).await;
}

/// A handler that takes 2.5 times `max.poll.interval.ms`: without polling
/// during it, librdkafka leaves the group, the acknowledgement is lost and
/// the record is handled a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_outlasting_max_poll_interval_completes_once() {
    let Some((brokers, mut settings)) = stack_settings("slow-handler") else {
        return;
    };
    settings.session_timeout_ms = 6_000;
    settings.max_poll_interval_ms = 6_000;
    let bus = Arc::new(KafkaBus::connect(&brokers, &settings).unwrap());
    suite::slow_handler_completes_once(bus, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_and_falls_to_zero() {
    let Some(bus) = stack_bus("lag") else {
        return;
    };
    suite::lag_is_reported_and_falls_to_zero(bus, Duration::from_secs(90)).await;
}
