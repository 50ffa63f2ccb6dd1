use std::fs;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

/// The error message of loading `file` with an empty environment.
fn file_error(file: &Path) -> String {
    Loader::new()
        .with_env(no_env())
        .file(Some(file))
        .load::<PlatformConfig>()
        .unwrap_err()
        .to_string()
}

/// The error message of loading with only `vars` in the environment.
fn env_error(vars: &[(&str, &str)]) -> String {
    Loader::new()
        .with_env(vars.iter().copied())
        .load::<PlatformConfig>()
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults_are_the_embedded_mode() {
    let config: PlatformConfig = Loader::new().with_env(no_env()).load().unwrap();
    assert_eq!(config.store, DEFAULT_STORE);
    assert_eq!(config.bus, "memory://");
    assert_eq!(config.topics.dead_letter, "chexvision.dlq");
    assert_eq!(
        config.topics.training_requests,
        "chexvision.training.requests"
    );
}

#[test]
fn file_then_env_then_override() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "svc.yaml",
        "store: s3://bucket/a\nbus: kafka://k1:9092\nkafka:\n  partitions: 8\n  client_id: from-file\n",
    );
    let config: PlatformConfig = Loader::new()
        .with_env([
            ("CHEXVISION_KAFKA__PARTITIONS", "12"),
            ("CHEXVISION_S3__ENDPOINT", "http://127.0.0.1:3900"),
            ("CHEXVISION_S3__MAX_ATTEMPTS", "2"),
            ("CHEXVISION_TOPICS__DEAD_LETTER", "my.dlq"),
            ("CHEXVISION_REQUIRE_STACK", "1"), // unrelated: ignored
            ("OTHER_THING", "x"),
        ])
        .file(Some(&file))
        .override_value("store", "file:///tmp/x", "flag --store")
        .load()
        .unwrap();
    assert_eq!(config.store, "file:///tmp/x");
    assert_eq!(config.bus, "kafka://k1:9092");
    assert_eq!(config.kafka.partitions, 12);
    assert_eq!(config.kafka.client_id, "from-file");
    assert_eq!(config.s3.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
    assert_eq!(config.s3.max_attempts, 2);
    assert_eq!(config.topics.dead_letter, "my.dlq");
}

#[test]
fn env_value_that_looks_like_a_number_can_be_a_string() {
    let config: PlatformConfig = Loader::new()
        .with_env([
            ("CHEXVISION_S3__ACCESS_KEY_ID", "0123"),
            ("CHEXVISION_KAFKA__CLIENT_ID", "true"),
        ])
        .load()
        .unwrap();
    assert_eq!(config.s3.access_key_id.as_deref(), Some("0123"));
    assert_eq!(config.kafka.client_id, "true");
}

#[test]
fn a_librdkafka_property_from_the_environment_keeps_its_dotted_name_and_text() {
    let config: PlatformConfig = Loader::new()
        .with_env([
            ("CHEXVISION_KAFKA__PROPERTIES__ENABLE.IDEMPOTENCE", "false"),
            ("CHEXVISION_KAFKA__PROPERTIES__LINGER.MS", "05"),
            ("CHEXVISION_KAFKA__PROPERTIES__CLIENT.RACK", "eu-1a"),
        ])
        .load()
        .unwrap();
    assert_eq!(
        config.kafka.properties,
        BTreeMap::from([
            ("client.rack".to_owned(), "eu-1a".to_owned()),
            ("enable.idempotence".to_owned(), "false".to_owned()),
            ("linger.ms".to_owned(), "05".to_owned()),
        ])
    );
}

#[test]
fn bad_type_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.yaml", "kafka:\n  partitions: many\n");
    let err = file_error(&file);
    assert!(err.contains("kafka.partitions"), "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
}

#[test]
fn unknown_key_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "typo.yaml", "kafka:\n  partitons: 3\n");
    let err = file_error(&file);
    assert!(err.contains("partitons"), "{err}");
    assert!(err.contains("typo.yaml"), "{err}");
}

#[test]
fn failed_validation_names_key_and_env_var() {
    let err = env_error(&[("CHEXVISION_KAFKA__PARTITIONS", "0")]);
    assert!(err.contains("kafka.partitions"), "{err}");
    assert!(err.contains("CHEXVISION_KAFKA__PARTITIONS"), "{err}");
    assert!(err.contains("at least 1"), "{err}");

    let err = env_error(&[("CHEXVISION_BUS", "rabbitmq://x")]);
    assert!(
        err.contains("`bus`") && err.contains("CHEXVISION_BUS"),
        "{err}"
    );
}

#[test]
fn failed_validation_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "s3.yaml", "s3:\n  multipart_part_bytes: 1024\n");
    let err = file_error(&file);
    assert!(err.contains("s3.multipart_part_bytes"), "{err}");
    assert!(err.contains("s3.yaml"), "{err}");
}

#[test]
fn inheritance_merges_deeply_and_blames_the_right_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "base.yaml",
        "bus: kafka://base:9092\nkafka:\n  partitions: 6\n  compression: lz4\n",
    );
    let child = write(
        dir.path(),
        "child.yaml",
        "inherits: base.yaml\nkafka:\n  partitions: 2\n",
    );
    let config: PlatformConfig = Loader::new()
        .with_env(no_env())
        .file(Some(&child))
        .load()
        .unwrap();
    assert_eq!(config.bus, "kafka://base:9092");
    assert_eq!(config.kafka.partitions, 2);
    assert_eq!(config.kafka.compression, "lz4");

    write(dir.path(), "base.yaml", "kafka:\n  compression: snappy\n");
    let err = file_error(&child);
    assert!(
        err.contains("kafka.compression") && err.contains("base.yaml"),
        "{err}"
    );
}

#[test]
fn inheritance_cycle_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", "inherits: b.yaml\n");
    let b = write(dir.path(), "b.yaml", "inherits: a.yaml\n");
    let err = Loader::new()
        .with_env(no_env())
        .file(Some(&b))
        .load::<PlatformConfig>()
        .unwrap_err();
    assert!(matches!(err, ConfigError::InheritanceCycle { .. }), "{err}");
}

#[test]
fn missing_and_malformed_files_name_the_file() {
    let err = file_error(Path::new("/nonexistent/chexvision.yaml"));
    assert!(err.contains("/nonexistent/chexvision.yaml"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broken.yaml", "kafka: [unclosed\n");
    let err = file_error(&file);
    assert!(
        err.contains("broken.yaml") && err.contains("not valid YAML"),
        "{err}"
    );

    let file = write(dir.path(), "list.yaml", "- a\n- b\n");
    let err = file_error(&file);
    assert!(
        err.contains("list.yaml") && err.contains("mapping"),
        "{err}"
    );
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Worker {
    threads: u32,
}

impl Validate for Worker {
    fn validate(&self) -> Vec<(String, String)> {
        if self.threads > 64 {
            vec![("threads".into(), "at most 64".into())]
        } else {
            Vec::new()
        }
    }
}

#[test]
fn service_section_is_validated_under_its_key() {
    let config: Config<Worker> = Loader::new()
        .with_env([("CHEXVISION_SERVICE__THREADS", "8")])
        .load()
        .unwrap();
    assert_eq!(config.service.threads, 8);
    let err = Loader::new()
        .with_env([("CHEXVISION_SERVICE__THREADS", "100")])
        .load::<Config<Worker>>()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service.threads") && err.contains("CHEXVISION_SERVICE__THREADS"),
        "{err}"
    );
}

/// The config files shipped in configs/ load and validate, and the platform
/// file spells out exactly the built-in defaults.
#[test]
fn shipped_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let platform: PlatformConfig = Loader::new()
        .with_env(no_env())
        .file(Some(dir.join("platform.yaml")))
        .load()
        .unwrap();
    assert_eq!(platform, PlatformConfig::default());

    let local: PlatformConfig = Loader::new()
        .with_env(no_env())
        .file(Some(dir.join("local-stack.yaml")))
        .load()
        .unwrap();
    assert_eq!(local.bus, "kafka://127.0.0.1:9092");
    assert_eq!(local.s3.region, "garage");
    assert_eq!(local.kafka, platform.kafka);
}
