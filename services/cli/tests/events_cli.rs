//! The `chexvision` binary as a data team uses it from a shell.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use chexvision_config::{Loader, PlatformConfig};

fn chexvision() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chexvision"))
}

fn run_with_stdin(mut command: Command, stdin: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn malformed_json_fails_with_a_message_naming_the_problem() {
    let mut command = chexvision();
    command.args(["--bus", "memory://", "events", "send"]);
    let output = run_with_stdin(
        command,
        r#"{"trainingRequested": {"modelKind": "RESNET9000"}}"#,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("event 1") && stderr.contains("RESNET9000"),
        "{stderr}"
    );
}

#[test]
fn bad_bus_uri_names_the_flag() {
    let output = chexvision()
        .args(["--bus", "rabbit://x", "topics", "create"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("flag --bus") && stderr.contains("rabbit://x"),
        "{stderr}"
    );
}

/// Through the real broker: a training request written as JSON goes out as a
/// protobuf event and comes back, as JSON, with every field.
#[test]
fn training_request_round_trip_through_kafka() {
    let config: PlatformConfig = Loader::new().load().unwrap();
    if !config.bus.starts_with("kafka://") {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "CHEXVISION_REQUIRE_STACK=1 but CHEXVISION_BUS is not kafka://"
        );
        eprintln!("skipping: CHEXVISION_BUS is not a kafka:// URI (run `make stack-up`)");
        return;
    }
    let suffix = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let topic = format!("test.cli.{suffix}");
    let request_id = format!("cli-{suffix}");
    let json = format!(
        r#"{{"trainingRequested": {{"requestId": "{request_id}", "datasetId": "latest",
            "modelKind": "MODEL_KIND_DENSENET121", "overrides": {{"trainer.epochs": "3"}},
            "reason": "shell test"}}}}"#
    );
    let mut send = chexvision();
    send.args(["events", "send", "--topic", &topic]);
    let output = run_with_stdin(send, &json);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("key {request_id}")), "{stdout}");

    let output = chexvision()
        .args([
            "events",
            "decode",
            "--topic",
            &topic,
            "--max",
            "1",
            "--idle-secs",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    let request = &line["event"]["trainingRequested"];
    assert_eq!(request["requestId"], request_id.as_str());
    assert_eq!(request["modelKind"], "MODEL_KIND_DENSENET121");
    assert_eq!(request["overrides"]["trainer.epochs"], "3");
    assert_eq!(line["key"], request_id.as_str());
    assert_eq!(
        line["headers"]["chexvision-event-kind"],
        "trainingRequested"
    );
    let meta = &line["event"]["meta"];
    assert_eq!(meta["producer"], "chexvision-cli");
    assert_eq!(meta["correlationId"], meta["eventId"]);
}

#[test]
fn bad_ingest_flag_is_named() {
    let output = chexvision()
        .args(["--bus", "memory://", "ingest", "--source", "/nonexistent"])
        .args(["--dataset-id", "x", "--max-rejected-share", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--max-rejected-share must be between 0 and 1"),
        "{stderr}"
    );
}

#[test]
fn missing_source_folder_is_named() {
    let store = tempfile::tempdir().unwrap();
    let output = chexvision()
        .args(["--bus", "memory://", "--store"])
        .arg(format!("file://{}", store.path().display()))
        .args([
            "ingest",
            "--source",
            "/nonexistent/nih",
            "--dataset-id",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/nih is not a folder"),
        "{stderr}"
    );
}
