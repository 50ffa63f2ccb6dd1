//! One behaviour suite for every `Bus` implementation.

#![allow(dead_code)] // each test binary uses the part of the suite it needs

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chexvision_bus::{
    header, publish_event, Bus, BusMetrics, Consumer, ConsumerOptions, Delivery, Handler,
    HandlerError, OutboundRecord, TopicSpec,
};
use chexvision_events::{Body, Envelope, TrainingRequested};
use tokio_util::sync::CancellationToken;

/// Names no other run uses (the broker keeps topics between runs).
pub fn unique(name: &str) -> String {
    format!("test.{name}.{:012x}", rand::random::<u64>() >> 16)
}

pub fn request(id: &str) -> Envelope {
    Envelope::new(
        TrainingRequested {
            request_id: id.to_owned(),
            dataset_id: "synthetic".into(),
            ..Default::default()
        },
        "bus-suite",
    )
}

/// The request id inside a delivered event.
pub fn request_id(delivery: &Delivery) -> Result<String, HandlerError> {
    let event = Envelope::decode_checked(&delivery.payload)
        .map_err(|e| HandlerError::Malformed(e.to_string()))?;
    match event.body {
        Some(Body::TrainingRequested(r)) => Ok(r.request_id),
        other => Err(HandlerError::Malformed(format!(
            "unexpected body {other:?}"
        ))),
    }
}

pub async fn publish_requests(bus: &dyn Bus, topic: &str, ids: impl IntoIterator<Item = String>) {
    // Many in flight at once, as a producer service would.
    let ids: Vec<String> = ids.into_iter().collect();
    for chunk in ids.chunks(500) {
        let sends = chunk
            .iter()
            .map(|id| async move { publish_event(bus, topic, id, &request(id)).await });
        for result in futures::future::join_all(sends).await {
            result.expect("publish");
        }
    }
}

/// Records request ids as they are handled; fails on ids it is told to.
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<String>>,
    /// Ids that fail every attempt.
    pub always_fail: BTreeSet<String>,
    pub attempts: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let id = request_id(delivery)?;
        *self.attempts.lock().unwrap().entry(id.clone()).or_default() += 1;
        if self.always_fail.contains(&id) {
            return Err(HandlerError::Failed(format!(
                "store unreachable while handling {id}"
            )));
        }
        self.seen.lock().unwrap().push(id);
        Ok(())
    }
}

impl Recorder {
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{what}: after {:.1}s", started.elapsed().as_secs_f64());
}

fn options(group: &str, topic: &str, dlq: &str) -> ConsumerOptions {
    ConsumerOptions {
        group: group.to_owned(),
        topics: vec![topic.to_owned()],
        dead_letter_topic: dlq.to_owned(),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        dead_letter_max_payload_bytes: 64 * 1024,
    }
}

/// Runs a consumer in the background; returns its shutdown token, task and metrics.
pub fn spawn_consumer(
    bus: Arc<dyn Bus>,
    options: ConsumerOptions,
    handler: Arc<Recorder>,
) -> (CancellationToken, tokio::task::JoinHandle<()>, BusMetrics) {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let metrics = BusMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let consumer = Consumer::new(bus, options).with_metrics(metrics.clone());
    let task = tokio::spawn(async move {
        consumer
            .run(handler.as_ref(), token)
            .await
            .expect("consumer run");
    });
    (shutdown, task, metrics)
}

/// Every record arrives exactly once when each is acknowledged, and a new
/// member of the group afterwards gets nothing (the offsets were committed).
pub async fn acknowledged_events_arrive_exactly_once(
    bus: Arc<dyn Bus>,
    count: usize,
    timeout: Duration,
) {
    let topic = unique("exactly-once");
    let dlq = unique("dlq");
    bus.create_topics(&[TopicSpec::new(&topic, 4), TopicSpec::new(&dlq, 1)])
        .await
        .unwrap();
    let ids: Vec<String> = (0..count).map(|i| format!("req-{i:05}")).collect();
    let publish_started = Instant::now();
    publish_requests(bus.as_ref(), &topic, ids.clone()).await;
    eprintln!(
        "published {count} in {:.1}s",
        publish_started.elapsed().as_secs_f64()
    );

    let group = unique("group");
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task, _) =
        spawn_consumer(bus.clone(), options(&group, &topic, &dlq), recorder.clone());
    wait_until("every event", timeout, || recorder.count() >= count).await;
    // Give duplicates, if any, a moment to show up before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    task.await.unwrap();

    let seen = recorder.seen.lock().unwrap().clone();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "delivered more than once: {:?}",
        &duplicated[..duplicated.len().min(10)]
    );
    assert_eq!(counts.len(), count, "distinct events received");

    let mut again = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let leftovers = chexvision_bus::drain(again.as_mut(), 10, Duration::from_secs(5)).await;
    assert!(
        leftovers.is_empty(),
        "committed events delivered again: {leftovers:?}"
    );
    again.close().await.unwrap();
}

/// A record whose handler crashed before acknowledging is delivered again to
/// the next member of the group; the acknowledged one before it is not.
pub async fn unacknowledged_event_is_delivered_again(bus: Arc<dyn Bus>) {
    let topic = unique("redeliver");
    bus.create_topics(&[TopicSpec::new(&topic, 2)])
        .await
        .unwrap();
    let group = unique("group");
    for id in ["first", "second", "third"] {
        // One key: one partition, in order.
        publish_event(bus.as_ref(), &topic, "same-key", &request(id))
            .await
            .unwrap();
    }

    let mut worker = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let first = worker.next().await.unwrap();
    assert_eq!(request_id(&first).unwrap(), "first");
    worker.ack(&first).await.unwrap();
    let second = worker.next().await.unwrap();
    assert_eq!(request_id(&second).unwrap(), "second");
    // The handler "crashes": the worker goes away without acknowledging.
    drop(worker);

    let mut successor = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let redelivered = chexvision_bus::drain(successor.as_mut(), 2, Duration::from_secs(30)).await;
    let ids: Vec<String> = redelivered.iter().map(|d| request_id(d).unwrap()).collect();
    assert_eq!(ids, ["second", "third"], "after a crash");
    assert_eq!(redelivered[0].offset, second.offset);
    for delivery in &redelivered {
        successor.ack(delivery).await.unwrap();
    }
    successor.close().await.unwrap();
}

/// A malformed record and one whose handler keeps failing land in the
/// dead-letter topic with their errors; the records behind them are handled.
pub async fn poison_event_goes_to_dead_letter_topic(bus: Arc<dyn Bus>) {
    let topic = unique("poison");
    let dlq = unique("dlq");
    bus.create_topics(&[TopicSpec::new(&topic, 1), TopicSpec::new(&dlq, 1)])
        .await
        .unwrap();
    publish_event(bus.as_ref(), &topic, "k", &request("good-1"))
        .await
        .unwrap();
    let garbage = b"\x08\x96\x01 this is not an envelope".to_vec();
    bus.publish(OutboundRecord {
        topic: topic.clone(),
        key: b"k".to_vec(),
        payload: garbage.clone(),
        headers: vec![],
    })
    .await
    .unwrap();
    publish_event(bus.as_ref(), &topic, "k", &request("keeps-failing"))
        .await
        .unwrap();
    publish_event(bus.as_ref(), &topic, "k", &request("good-2"))
        .await
        .unwrap();

    let recorder = Arc::new(Recorder {
        always_fail: ["keeps-failing".to_string()].into(),
        ..Default::default()
    });
    let group = unique("group");
    let (shutdown, task, metrics) =
        spawn_consumer(bus.clone(), options(&group, &topic, &dlq), recorder.clone());
    wait_until(
        "good events behind the poison",
        Duration::from_secs(60),
        || recorder.count() >= 2,
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(*recorder.seen.lock().unwrap(), ["good-1", "good-2"]);
    assert_eq!(metrics.consumed(&topic, "handled"), 2);
    assert_eq!(metrics.consumed(&topic, "retried"), 2);
    assert_eq!(metrics.consumed(&topic, "dead_lettered"), 2);
    assert_eq!(
        recorder.attempts.lock().unwrap()["keeps-failing"],
        3,
        "bounded retries"
    );

    let mut reader = bus
        .subscribe(&unique("dlq-reader"), std::slice::from_ref(&dlq))
        .await
        .unwrap();
    let letters = chexvision_bus::drain(reader.as_mut(), 2, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 2, "dead letters: {letters:?}");

    let malformed = &letters[0];
    let error = malformed
        .header_str(header::DLQ_ERROR)
        .expect("error header");
    assert!(error.contains("malformed"), "{error}");
    // The payload travels once, in the body; headers only describe it.
    assert!(
        malformed.headers.iter().all(|(_, v)| v != &garbage),
        "a header repeats the payload"
    );
    assert_eq!(
        malformed.header_str(header::DLQ_SOURCE_TOPIC),
        Some(topic.as_str())
    );
    assert_eq!(malformed.header_str(header::DLQ_ATTEMPTS), Some("1"));
    let event = Envelope::decode_checked(&malformed.payload).expect("a dead letter is an event");
    let Some(Body::DeadLetter(letter)) = event.body else {
        panic!("not a DeadLetter: {event:?}")
    };
    assert_eq!(letter.original_payload, garbage);
    assert!(!letter.original_truncated);
    assert_eq!(letter.original_size_bytes, garbage.len() as u64);
    assert_eq!(letter.source_topic, topic);
    assert_eq!(letter.source_offset, 1);
    assert_eq!(letter.consumer_group, group);

    let failing = &letters[1];
    assert_eq!(failing.header_str(header::DLQ_ATTEMPTS), Some("3"));
    assert!(failing
        .header_str(header::DLQ_ERROR)
        .unwrap()
        .contains("store unreachable while handling keeps-failing"));
    let event = Envelope::decode_checked(&failing.payload).unwrap();
    let original = request("x");
    assert_ne!(event.correlation_id(), original.correlation_id());
    let Some(Body::DeadLetter(letter)) = event.body else {
        panic!()
    };
    let original = Envelope::decode_checked(&letter.original_payload).unwrap();
    // The dead letter carries the correlation id of the event it failed on.
    assert_eq!(
        event.meta.unwrap().correlation_id,
        original.correlation_id()
    );
    reader.close().await.unwrap();
}

/// Two members of one group split the partitions: each record goes to one
/// of them, each partition to one of them.
pub async fn two_consumers_share_partitions(bus: Arc<dyn Bus>, settle: Duration) {
    let topic = unique("shared");
    bus.create_topics(&[TopicSpec::new(&topic, 4)])
        .await
        .unwrap();
    let group = unique("group");
    let a = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let b = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();

    let received: Arc<Mutex<Vec<(usize, Delivery)>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (member, mut subscription) in [(0usize, a), (1, b)] {
        let received = received.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    next = subscription.next() => {
                        let delivery = next.unwrap();
                        subscription.ack(&delivery).await.unwrap();
                        received.lock().unwrap().push((member, delivery));
                    }
                }
            }
            subscription.close().await.unwrap();
        }));
    }
    // Let the group settle on its assignment before publishing.
    tokio::time::sleep(settle).await;
    let count = 400;
    publish_requests(
        bus.as_ref(),
        &topic,
        (0..count).map(|i| format!("share-{i}")),
    )
    .await;
    wait_until("all shared events", Duration::from_secs(60), || {
        received.lock().unwrap().len() >= count
    })
    .await;
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }

    let received = received.lock().unwrap();
    let ids: BTreeSet<String> = received
        .iter()
        .map(|(_, d)| request_id(d).unwrap())
        .collect();
    assert_eq!(ids.len(), count, "each event once");
    assert_eq!(received.len(), count, "no duplicates");
    let partitions = |member: usize| -> BTreeSet<i32> {
        received
            .iter()
            .filter(|(m, _)| *m == member)
            .map(|(_, d)| d.partition)
            .collect()
    };
    let (pa, pb) = (partitions(0), partitions(1));
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "both members got work: {pa:?} {pb:?}"
    );
    assert!(
        pa.is_disjoint(&pb),
        "a partition went to both members: {pa:?} {pb:?}"
    );
    assert_eq!(pa.len() + pb.len(), 4);
}

/// The broker restarts in the middle of a stream: every event published is
/// still consumed (duplicates are allowed, losses are not).
pub async fn broker_restart_loses_nothing(
    bus: Arc<dyn Bus>,
    restart: impl FnOnce() + Send + 'static,
) {
    let topic = unique("restart");
    let dlq = unique("dlq");
    bus.create_topics(&[TopicSpec::new(&topic, 2), TopicSpec::new(&dlq, 1)])
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let group = unique("group");
    let (shutdown, task, _) =
        spawn_consumer(bus.clone(), options(&group, &topic, &dlq), recorder.clone());

    let total = 1000;
    let ids: Vec<String> = (0..total).map(|i| format!("restart-{i:04}")).collect();
    publish_requests(bus.as_ref(), &topic, ids[..300].to_vec()).await;
    wait_until("first events consumed", Duration::from_secs(60), || {
        recorder.count() >= 100
    })
    .await;

    // Restart while the rest is being published (paced, so the stream is
    // still flowing when the broker goes away) and consumed.
    let publisher = {
        let bus = bus.clone();
        let topic = topic.clone();
        let rest = ids[300..].to_vec();
        tokio::spawn(async move {
            let mut sends = tokio::task::JoinSet::new();
            for id in rest {
                let bus = bus.clone();
                let topic = topic.clone();
                sends.spawn(async move {
                    publish_event(bus.as_ref(), &topic, &id, &request(&id)).await
                });
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            while let Some(result) = sends.join_next().await {
                result.unwrap().expect("publish across the restart");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let consumed_before_restart = recorder.count();
    tokio::task::spawn_blocking(restart).await.unwrap();
    publisher.await.unwrap();
    assert!(
        consumed_before_restart < total,
        "the restart came after the stream ended; the test proves nothing"
    );

    wait_until(
        "every event after the restart",
        Duration::from_secs(180),
        || {
            let seen: BTreeSet<String> = recorder.seen.lock().unwrap().iter().cloned().collect();
            seen.len() >= total
        },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    let seen: BTreeSet<String> = recorder.seen.lock().unwrap().iter().cloned().collect();
    let expected: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(seen, expected);
}

/// Publishing to a topic nobody created is an error naming the topic.
pub async fn unknown_topic_is_an_error(bus: Arc<dyn Bus>) {
    let topic = unique("never-created");
    let err = tokio::time::timeout(
        Duration::from_secs(120),
        publish_event(bus.as_ref(), &topic, "k", &request("x")),
    )
    .await
    .expect("publish to an unknown topic must fail, not hang")
    .unwrap_err();
    assert!(err.to_string().contains(&topic), "{err}");
}

/// A record close to the broker's 1 MB limit that no handler can decode is
/// dead-lettered (cut, with its sha256 and size) and the records behind it
/// are handled: before, its dead letter carried it twice, the broker refused
/// that for good, and the consumer retried it forever.
pub async fn poison_record_near_the_size_limit_does_not_block(bus: Arc<dyn Bus>) {
    let topic = unique("huge-poison");
    let dlq = unique("dlq");
    bus.create_topics(&[TopicSpec::new(&topic, 1), TopicSpec::new(&dlq, 1)])
        .await
        .unwrap();
    // librdkafka's default message.max.bytes is 1,000,000 including overhead.
    let huge: Vec<u8> = (0..990_000u32).map(|i| (i % 253) as u8 | 0x80).collect();
    bus.publish(OutboundRecord {
        topic: topic.clone(),
        key: b"k".to_vec(),
        payload: huge.clone(),
        headers: vec![],
    })
    .await
    .expect("the poison record itself fits");
    publish_event(bus.as_ref(), &topic, "k", &request("after-the-poison"))
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task, metrics) = spawn_consumer(
        bus.clone(),
        options(&unique("group"), &topic, &dlq),
        recorder.clone(),
    );
    wait_until(
        "the record behind the poison",
        Duration::from_secs(60),
        || recorder.count() >= 1,
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(*recorder.seen.lock().unwrap(), ["after-the-poison"]);
    assert_eq!(metrics.consumed(&topic, "dead_lettered"), 1);
    assert_eq!(metrics.dead_letter_failures(&topic), 0);

    let mut reader = bus
        .subscribe(&unique("dlq-reader"), std::slice::from_ref(&dlq))
        .await
        .unwrap();
    let letters = chexvision_bus::drain(reader.as_mut(), 1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1);
    let event = Envelope::decode_checked(&letters[0].payload).unwrap();
    let Some(Body::DeadLetter(letter)) = event.body else {
        panic!("not a dead letter: {event:?}")
    };
    assert!(letter.original_truncated);
    assert_eq!(letter.original_payload, huge[..64 * 1024]);
    assert_eq!(letter.original_size_bytes, huge.len() as u64);
    use sha2::Digest;
    assert_eq!(
        letter.original_sha256,
        hex::encode(sha2::Sha256::digest(&huge))
    );
    reader.close().await.unwrap();
}

/// A handler slower than `slow` runs once and its record is acknowledged:
/// the consume loop keeps the member alive while it works.
pub async fn slow_handler_completes_once(bus: Arc<dyn Bus>, slow: Duration) {
    let topic = unique("slow");
    let dlq = unique("dlq");
    bus.create_topics(&[TopicSpec::new(&topic, 1), TopicSpec::new(&dlq, 1)])
        .await
        .unwrap();
    for id in ["slow-1", "quick-2"] {
        publish_event(bus.as_ref(), &topic, "k", &request(id))
            .await
            .unwrap();
    }
    let handler = Arc::new(SlowHandler {
        slow,
        calls: Mutex::default(),
    });
    let group = unique("group");
    let shutdown = CancellationToken::new();
    let metrics = BusMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let consumer =
        Consumer::new(bus.clone(), options(&group, &topic, &dlq)).with_metrics(metrics.clone());
    let task = {
        let handler = handler.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { consumer.run(handler.as_ref(), token).await })
    };
    wait_until(
        "both records handled",
        slow * 3 + Duration::from_secs(60),
        || handler.calls.lock().unwrap().iter().any(|c| c == "quick-2"),
    )
    .await;
    // Time for a redelivery to show up, had the member been evicted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    shutdown.cancel();
    task.await.unwrap().expect("consumer");
    assert_eq!(*handler.calls.lock().unwrap(), ["slow-1", "quick-2"]);
    // An evicted member hears of it on its next poll ("maximum poll
    // interval exceeded"); a broker that does not fence the evicted
    // member's commit (tansu) shows nothing else.
    assert_eq!(
        metrics.receive_errors(&group),
        0,
        "the client reported an error"
    );

    let mut again = bus
        .subscribe(&group, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let leftovers = chexvision_bus::drain(again.as_mut(), 10, Duration::from_secs(10)).await;
    assert!(
        leftovers.is_empty(),
        "acknowledged records came back: {leftovers:?}"
    );
    again.close().await.unwrap();
}

struct SlowHandler {
    slow: Duration,
    calls: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for SlowHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let id = request_id(delivery)?;
        self.calls.lock().unwrap().push(id.clone());
        if id.starts_with("slow") {
            tokio::time::sleep(self.slow).await;
        }
        Ok(())
    }
}

/// Blocks every record until opened.
pub struct Gate {
    pub open: tokio::sync::watch::Sender<bool>,
    pub handled: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Handler for Gate {
    async fn handle(&self, _delivery: &Delivery) -> Result<(), HandlerError> {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        self.handled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The consumer reports its partitions' lag: every record while the first
/// is still being handled, none once all are acknowledged.
pub async fn lag_is_reported_and_falls_to_zero(bus: Arc<dyn Bus>, timeout: Duration) {
    let topic = unique("lag");
    let dlq = unique("lag-dlq");
    bus.create_topics(&[TopicSpec::new(&topic, 1), TopicSpec::new(&dlq, 1)])
        .await
        .unwrap();
    for i in 0..20 {
        let id = format!("r{i}");
        publish_event(&*bus, &topic, &id, &request(&id))
            .await
            .unwrap();
    }
    let registry = prometheus::Registry::new();
    let metrics = BusMetrics::register(&registry).unwrap();
    let group = unique("lag-group");
    let mut options =
        ConsumerOptions::new(&group, &[&topic], &Default::default(), &Default::default());
    options.dead_letter_topic = dlq;
    let consumer = Consumer::new(bus.clone(), options).with_metrics(metrics.clone());
    let (open, _) = tokio::sync::watch::channel(false);
    let gate = Arc::new(Gate {
        open,
        handled: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let task = {
        let (gate, shutdown) = (gate.clone(), shutdown.clone());
        tokio::spawn(async move { consumer.run(&*gate, shutdown).await })
    };
    let wait_for = |want: i64, what: &'static str| {
        let metrics = metrics.clone();
        let (group, topic) = (group.clone(), topic.clone());
        async move {
            let deadline = Instant::now() + timeout;
            loop {
                if metrics.lag(&group, &topic, 0) == Some(want) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: lag {:?}, want {want}",
                    metrics.lag(&group, &topic, 0)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The first record is held by the handler: nothing is committed.
    wait_for(20, "while the first record is handled").await;
    gate.open.send_replace(true);
    wait_for(0, "once every record is acknowledged").await;
    assert_eq!(gate.handled.load(std::sync::atomic::Ordering::SeqCst), 20);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(&format!(
            "chexvision_bus_consumer_lag_records{{group=\"{group}\",partition=\"0\",topic=\"{topic}\"}} 0"
        )),
        "{text}"
    );
    // Dead letters per topic exist at zero before the first one.
    assert!(
        text.contains(&format!(
            "chexvision_bus_records_total{{outcome=\"dead_lettered\",topic=\"{topic}\"}} 0"
        )),
        "{text}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        metrics.lag(&group, &topic, 0),
        None,
        "a member that left reports no partitions"
    );
}

/// Fails with `Unavailable` this many times, then handles.
pub struct Outage {
    pub failures_left: Mutex<u32>,
    pub handled: Mutex<u32>,
}

#[async_trait]
impl Handler for Outage {
    async fn handle(&self, _delivery: &Delivery) -> Result<(), HandlerError> {
        let mut left = self.failures_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Err(HandlerError::Unavailable(
                "the store does not answer".into(),
            ));
        }
        *self.handled.lock().unwrap() += 1;
        Ok(())
    }
}

/// A dependency down for longer than the record's attempts: the record
/// waits for it and is handled, not dead-lettered.
pub async fn an_outage_longer_than_the_attempts_loses_nothing(bus: Arc<dyn Bus>) {
    let topic = unique("outage");
    let dlq = unique("outage-dlq");
    bus.create_topics(&[TopicSpec::new(&topic, 1), TopicSpec::new(&dlq, 1)])
        .await
        .unwrap();
    publish_requests(&*bus, &topic, ["r0".to_string()]).await;
    let registry = prometheus::Registry::new();
    let metrics = BusMetrics::register(&registry).unwrap();
    let mut options = ConsumerOptions::new(
        &unique("outage-group"),
        &[&topic],
        &Default::default(),
        &Default::default(),
    );
    options.dead_letter_topic = dlq.clone();
    options.max_attempts = 2;
    options.backoff_initial = Duration::from_millis(1);
    options.backoff_max = Duration::from_millis(5);
    let consumer = Consumer::new(bus.clone(), options).with_metrics(metrics.clone());
    let outage = Arc::new(Outage {
        failures_left: Mutex::new(10),
        handled: Mutex::new(0),
    });
    let shutdown = CancellationToken::new();
    let task = {
        let (outage, shutdown) = (outage.clone(), shutdown.clone());
        tokio::spawn(async move { consumer.run(&*outage, shutdown).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while *outage.handled.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "never handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metrics.consumed(&topic, "retried"), 10);
    assert_eq!(metrics.consumed(&topic, "dead_lettered"), 0);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let mut letters = bus.subscribe(&unique("check"), &[dlq]).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), letters.next())
            .await
            .is_err(),
        "nothing was dead-lettered"
    );
}
