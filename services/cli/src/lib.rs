//! `chexvision`, the command line for people.
//!
//! Every command takes `--config FILE`, `--store URI` and `--bus URI` (also
//! settable in the config file and as `CHEXVISION_STORE` / `CHEXVISION_BUS`).
//! Commands: `synth` (synthetic chest X-rays in the NIH layout), `ingest`
//! (a source to Parquet shards, announced), `preprocess` (ready shards),
//! `events send|decode|example` (JSON to protobuf events on a topic and back),
//! `topics create`, `train`, `evaluate` (a report with intervals, TTA and
//! ensembles), `registry list|show|promote|rollback|history`, `serve`,
//! `model init` and `demo` (all of it in one process).

pub mod data;
pub mod demo;
mod evaluate;
mod serve;
mod train;

use std::{
    io::{Read, Write},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use chexvision_bus::{Bus, Delivery, OutboundRecord, Subscription, TopicSpec};
use chexvision_config::{Loader, PlatformConfig, Topics};
use chexvision_events::{Body, Envelope, EventKind};
use clap::{Parser, Subcommand, ValueEnum};

/// Name the CLI writes as `producer` in the events it sends.
pub const PRODUCER: &str = "chexvision-cli";

#[derive(Debug, Parser)]
#[command(
    name = "chexvision",
    version,
    about = "CheXVision: chest X-ray pathology detection"
)]
pub struct Cli {
    /// YAML config file (shared keys: store, bus, s3, kafka, topics, log, http).
    #[arg(long, global = true, env = "CHEXVISION_CONFIG")]
    pub config: Option<PathBuf>,
    /// Object store: file:///path or s3://bucket/prefix.
    #[arg(long, global = true)]
    pub store: Option<String>,
    /// Event bus: memory:// or kafka://host:port.
    #[arg(long, global = true)]
    pub bus: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write synthetic chest X-rays (PNG + Data_Entry CSV, the NIH layout).
    Synth(data::SynthArgs),
    /// Ingest a source into Parquet shards in the store, announced on the bus.
    Ingest(data::IngestArgs),
    /// Make the ready shards (decoded, resized, CLAHE) of an ingested dataset.
    Preprocess(data::PreprocessArgs),
    /// Train a model on a dataset's ready shards (--config: a training
    /// config such as configs/tiny.yaml); re-run with --run-id to resume.
    Train(train::TrainArgs),
    /// Evaluate a run's checkpoint on the test split: report.json with
    /// confidence intervals, predictions.parquet, plots, report.md
    /// (--config: an evaluator config such as configs/evaluator.yaml).
    Evaluate(evaluate::EvaluateArgs),
    /// The model registry: versions, the production pointer, its history.
    #[command(subcommand)]
    Registry(evaluate::RegistryCommand),
    /// Serve the registry's production model (or --checkpoint) over REST,
    /// FHIR and the Open Inference Protocol (--config: configs/inference.yaml).
    Serve(serve::ServeArgs),
    /// Model files: `model init` writes an untrained, seeded checkpoint.
    #[command(subcommand)]
    Model(serve::ModelCommand),
    /// Send and read platform events as JSON.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Manage the platform's topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// The whole product in one process: synthetic images, ingest,
    /// preprocess, train, evaluate, promote, serve (a second run serves at once).
    Demo(demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Send events written as JSON (one document, or one per line) to a topic.
    ///
    /// Metadata may be left out: id, time, schema version and correlation id
    /// are filled in. Example:
    ///   echo '{"trainingRequested": {"requestId": "r1", "datasetId": "latest",
    ///          "modelKind": "MODEL_KIND_DENSENET121"}}' | chexvision events send --bus kafka://127.0.0.1:9092
    Send {
        /// Topic; by default the one the event kind belongs on.
        #[arg(long)]
        topic: Option<String>,
        /// Record key; by default the event's request id, else its event id.
        #[arg(long)]
        key: Option<String>,
        /// Do not create the topic if it is missing.
        #[arg(long)]
        no_create: bool,
        /// File to read; `-` or nothing reads standard input.
        input: Option<PathBuf>,
    },
    /// Print events from a topic (or a file holding one record value) as JSON lines.
    Decode {
        /// Topic to read.
        #[arg(long, required_unless_present = "file")]
        topic: Option<String>,
        /// Decode one record value stored in a file instead of reading a topic.
        #[arg(long, conflicts_with = "topic")]
        file: Option<PathBuf>,
        /// Consumer group: records read are committed for it. Without one,
        /// the topic is read from the start and nothing is committed.
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<usize>,
        /// Stop after this many seconds without a record.
        #[arg(long, default_value_t = 5.0)]
        idle_secs: f64,
    },
    /// Print an example event of a kind, as JSON to edit and send.
    Example {
        #[arg(value_enum)]
        kind: ExampleKind,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExampleKind {
    IngestRequested,
    TrainingRequested,
    /// A radiologist's confirmed findings for an earlier prediction.
    FeedbackReceived,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every platform topic that does not exist yet.
    Create,
}

impl Cli {
    /// The configuration: file, then environment, then flags.
    pub fn load_config(&self) -> Result<PlatformConfig> {
        Ok(Loader::new()
            .file(self.config.as_ref())
            .store_and_bus_flags(self.store.as_deref(), self.bus.as_deref())
            .load()?)
    }
}

/// Runs a parsed command line, writing results to `out`.
pub async fn execute(cli: Cli, out: &mut (dyn Write + Send)) -> Result<()> {
    // A training config has its own `service:` section.
    if let Command::Train(args) = &cli.command {
        return train::train(&cli, args, out).await;
    }
    // So does the evaluator's (evaluation settings, promotion policy).
    if let Command::Evaluate(args) = &cli.command {
        return evaluate::evaluate_command(&cli, args, out).await;
    }
    if let Command::Registry(command) = &cli.command {
        return evaluate::registry_command(&cli, command, out).await;
    }
    // The inference service's config has its own `service:` section.
    if let Command::Demo(args) = &cli.command {
        return demo::demo(&cli, args, out).await;
    }
    if let Command::Serve(args) = &cli.command {
        return serve::serve(&cli, args, out).await;
    }
    if let Command::Model(command) = &cli.command {
        return serve::model_command(command, out);
    }
    let config = cli.load_config()?;
    match cli.command {
        Command::Synth(args) => data::synth(args, &config, out).await,
        Command::Ingest(args) => data::ingest(args, &config, out).await,
        Command::Preprocess(args) => data::preprocess(args, &config, out).await,
        Command::Train(_)
        | Command::Evaluate(_)
        | Command::Registry(_)
        | Command::Serve(_)
        | Command::Demo(_)
        | Command::Model(_) => {
            unreachable!("handled above")
        }
        Command::Events(EventsCommand::Send {
            topic,
            key,
            no_create,
            input,
        }) => {
            let text = read_input(input.as_ref())?;
            let events = parse_events(&text)?;
            let bus = connect(&config)?;
            send(
                bus.as_ref(),
                &config,
                &events,
                topic.as_deref(),
                key.as_deref(),
                !no_create,
                out,
            )
            .await
        }
        Command::Events(EventsCommand::Decode {
            topic,
            file,
            group,
            max,
            idle_secs,
        }) => {
            if let Some(file) = file {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let event = Envelope::decode_checked(&bytes).with_context(|| {
                    format!("{} does not hold a CheXVision event", file.display())
                })?;
                writeln!(out, "{}", event.to_json())?;
                return Ok(());
            }
            let topic = topic.context("--topic or --file is needed")?;
            let bus = connect(&config)?;
            decode(
                bus.as_ref(),
                &topic,
                group.as_deref(),
                max.unwrap_or(usize::MAX),
                Duration::from_secs_f64(idle_secs.max(0.0)),
                out,
            )
            .await
        }
        Command::Events(EventsCommand::Example { kind }) => {
            writeln!(out, "{}", example(kind))?;
            Ok(())
        }
        Command::Topics(TopicsCommand::Create) => {
            let bus = connect(&config)?;
            let specs: Vec<TopicSpec> = config
                .topics
                .all()
                .into_iter()
                .map(|(_, name)| TopicSpec::new(name, config.kafka.partitions))
                .collect();
            bus.create_topics(&specs).await?;
            for spec in specs {
                writeln!(
                    out,
                    "topic {} ready ({} partitions)",
                    spec.name, spec.partitions
                )?;
            }
            Ok(())
        }
    }
}

fn connect(config: &PlatformConfig) -> Result<Arc<dyn Bus>> {
    chexvision_bus::connect(&config.bus, &config.kafka)
        .with_context(|| format!("connecting to the bus {}", config.bus))
}

fn read_input(input: Option<&PathBuf>) -> Result<String> {
    match input {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            Ok(text)
        }
    }
}

/// Parses one JSON document or several (one per line, or concatenated). All
/// are checked before any is sent.
pub fn parse_events(text: &str) -> Result<Vec<Envelope>> {
    let mut events = Vec::new();
    for (index, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .enumerate()
    {
        let number = index + 1;
        let value = value.with_context(|| format!("event {number}: not valid JSON"))?;
        let event = Envelope::from_json(&value.to_string(), PRODUCER)
            .with_context(|| format!("event {number}"))?;
        events.push(event);
    }
    if events.is_empty() {
        bail!(
            "no events in the input: expected JSON such as {}",
            example(ExampleKind::TrainingRequested)
        );
    }
    Ok(events)
}

/// The topic an event kind belongs on (see [`chexvision_bus::home_topic`]).
pub fn topic_for(event: &Envelope, topics: &Topics) -> Option<String> {
    chexvision_bus::home_topic(event, topics).map(str::to_owned)
}

/// The record key: the request id for requests (so a repeated request lands on
/// the same partition as the first), else the event id.
pub fn default_key(event: &Envelope) -> String {
    match &event.body {
        Some(Body::IngestRequested(r)) if !r.request_id.is_empty() => r.request_id.clone(),
        Some(Body::TrainingRequested(r)) if !r.request_id.is_empty() => r.request_id.clone(),
        // Readings of one prediction stay in order on one partition.
        Some(Body::FeedbackReceived(f)) if !f.request_id.is_empty() => f.request_id.clone(),
        Some(Body::FeedbackReceived(f)) if !f.study_ref_sha256.is_empty() => {
            f.study_ref_sha256.clone()
        }
        _ => event.event_id().to_owned(),
    }
}

async fn send(
    bus: &dyn Bus,
    config: &PlatformConfig,
    events: &[Envelope],
    topic: Option<&str>,
    key: Option<&str>,
    create: bool,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let mut records = Vec::new();
    for event in events {
        let topic = match topic {
            Some(topic) => topic.to_owned(),
            None => topic_for(event, &config.topics).context("event has no body")?,
        };
        let key = key.map_or_else(|| default_key(event), str::to_owned);
        records.push((OutboundRecord::event(&topic, &key, event), event));
    }
    if create {
        let mut specs: Vec<TopicSpec> = records
            .iter()
            .map(|(r, _)| TopicSpec::new(&r.topic, config.kafka.partitions))
            .collect();
        specs.dedup();
        bus.create_topics(&specs).await?;
    }
    for (record, event) in records {
        let (topic, key) = (
            record.topic.clone(),
            String::from_utf8_lossy(&record.key).into_owned(),
        );
        bus.publish(record).await?;
        writeln!(
            out,
            "sent {} {} to {topic} (key {key}, correlation {})",
            event.kind().map_or("event", EventKind::json_name),
            event.event_id(),
            event.correlation_id()
        )?;
    }
    Ok(())
}

/// One JSON line describing a record: where it was, its headers, and the event
/// (or why it is not one).
pub fn describe(delivery: &Delivery) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = delivery
        .headers
        .iter()
        .map(|(name, value)| {
            let text = match std::str::from_utf8(value) {
                Ok(text) if !name.ends_with("original-payload") => text.to_owned(),
                _ => format!("hex:{}", hex::encode(value)),
            };
            (name.clone(), serde_json::Value::String(text))
        })
        .collect();
    let mut line = serde_json::json!({
        "topic": delivery.topic,
        "partition": delivery.partition,
        "offset": delivery.offset,
        "key": String::from_utf8_lossy(&delivery.key),
        "headers": headers,
    });
    match Envelope::decode_checked(&delivery.payload) {
        Ok(event) => {
            line["event"] = serde_json::from_str(&event.to_json()).unwrap_or_default();
        }
        Err(err) => {
            line["error"] = err.to_string().into();
            line["payload_hex"] = hex::encode(&delivery.payload).into();
        }
    }
    line
}

async fn decode(
    bus: &dyn Bus,
    topic: &str,
    group: Option<&str>,
    max: usize,
    idle: Duration,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let commit = group.is_some();
    let group = group.map_or_else(
        || format!("chexvision-cli-decode-{}", uuid::Uuid::new_v4()),
        str::to_owned,
    );
    let mut subscription: Box<dyn Subscription> =
        bus.subscribe(&group, &[topic.to_owned()]).await?;
    let mut count = 0;
    while count < max {
        let delivery = match tokio::time::timeout(idle, subscription.next()).await {
            Err(_) => break, // idle
            Ok(delivery) => delivery?,
        };
        writeln!(out, "{}", describe(&delivery))?;
        if commit {
            subscription.ack(&delivery).await?;
        }
        count += 1;
    }
    subscription.close().await?;
    Ok(())
}

/// An example event, in the JSON a person writes.
pub fn example(kind: ExampleKind) -> String {
    let json = match kind {
        ExampleKind::TrainingRequested => serde_json::json!({
            "trainingRequested": {
                "requestId": "retrain-2026-11-30",
                "datasetId": "latest",
                "modelKind": "MODEL_KIND_DENSENET121",
                "config": "transfer",
                "overrides": {"recipe.epochs": "20"},
                "reason": "new data from site B",
                "requestedBy": "data-team@hospital.example"
            }
        }),
        ExampleKind::FeedbackReceived => serde_json::json!({
            "feedbackReceived": {
                "requestId": "req-2026-11-30-0001",
                // The 14 findings in label order (Atelectasis … Hernia).
                "findings": [false, true, false, false, false, false, false,
                             false, false, false, false, false, false, false],
                "confirmedAt": "2026-11-30T09:30:00Z",
                "source": "ris-site-b"
            }
        }),
        ExampleKind::IngestRequested => serde_json::json!({
            "ingestRequested": {
                "requestId": "ingest-nih-2026-11-30",
                "datasetId": "nih-2026-11",
                "sourceFormat": "SOURCE_FORMAT_NIH",
                "sourceUri": "file:///data/nih"
            }
        }),
    };
    json.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chexvision_events::ShardStage;

    #[test]
    fn examples_are_valid_events_routed_to_their_topics() {
        let topics = Topics::default();
        for (kind, topic) in [
            (
                ExampleKind::TrainingRequested,
                "chexvision.training.requests",
            ),
            (ExampleKind::IngestRequested, "chexvision.ingest.requests"),
            (ExampleKind::FeedbackReceived, "chexvision.feedback"),
        ] {
            let events = parse_events(&example(kind)).unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(topic_for(&events[0], &topics).unwrap(), topic);
            assert!(default_key(&events[0]).contains("2026-11-30"));
        }
    }

    #[test]
    fn the_training_request_example_trains_with_the_configs_it_names() {
        let events = parse_events(&example(ExampleKind::TrainingRequested)).unwrap();
        let Some(chexvision_events::Body::TrainingRequested(request)) = &events[0].body else {
            panic!("not a training request")
        };
        let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let overrides = request.overrides.clone().into_iter().collect();
        let settings = chexvision_trainer::service::load_run_settings(
            &configs,
            &request.config,
            &overrides,
            "the example",
        )
        .unwrap_or_else(|e| panic!("the example's overrides: {e}"));
        assert_eq!(settings.recipe.epochs, 20);
    }

    #[test]
    fn json_lines_and_errors_name_the_event() {
        let text = format!(
            "{}\n{}\n",
            example(ExampleKind::TrainingRequested),
            example(ExampleKind::IngestRequested)
        );
        assert_eq!(parse_events(&text).unwrap().len(), 2);

        let bad = format!(
            "{}\n{{\"trainingRequested\": {{\"modelKind\": \"RESNET9000\"}}}}\n",
            example(ExampleKind::TrainingRequested)
        );
        let err = format!("{:#}", parse_events(&bad).unwrap_err());
        assert!(
            err.contains("event 2") && err.contains("RESNET9000"),
            "{err}"
        );

        let err = format!("{:#}", parse_events("   \n").unwrap_err());
        assert!(err.contains("no events"), "{err}");
        let err = format!(
            "{:#}",
            parse_events("{\"trainingRequested\": ").unwrap_err()
        );
        assert!(err.contains("event 1: not valid JSON"), "{err}");
    }

    #[test]
    fn shard_events_route_by_stage() {
        let topics = Topics::default();
        let raw = Envelope::new(
            chexvision_events::ShardWritten {
                stage: ShardStage::Raw as i32,
                ..Default::default()
            },
            "t",
        );
        let ready = Envelope::new(
            chexvision_events::ShardWritten {
                stage: ShardStage::Ready as i32,
                ..Default::default()
            },
            "t",
        );
        assert_eq!(topic_for(&raw, &topics).unwrap(), topics.shards_raw);
        assert_eq!(topic_for(&ready, &topics).unwrap(), topics.shards_ready);
    }

    #[tokio::test]
    async fn send_then_decode_on_the_in_process_bus() {
        let cli = Cli::parse_from(["chexvision", "--bus", "memory://", "topics", "create"]);
        let config = cli.load_config().unwrap();
        let bus = chexvision_bus::MemoryBus::new();
        let events = parse_events(&example(ExampleKind::TrainingRequested)).unwrap();
        let mut sent = Vec::new();
        send(&bus, &config, &events, None, None, true, &mut sent)
            .await
            .unwrap();
        let sent = String::from_utf8(sent).unwrap();
        assert!(
            sent.contains("trainingRequested") && sent.contains("chexvision.training.requests"),
            "{sent}"
        );

        let mut decoded = Vec::new();
        decode(
            &bus,
            "chexvision.training.requests",
            None,
            10,
            Duration::from_millis(200),
            &mut decoded,
        )
        .await
        .unwrap();
        let line: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(
            line["event"]["trainingRequested"]["requestId"],
            "retrain-2026-11-30"
        );
        assert_eq!(line["key"], "retrain-2026-11-30");
        assert_eq!(line["event"]["meta"]["eventId"], events[0].event_id());
    }
}
