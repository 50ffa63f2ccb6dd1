//! `chexvision demo` from nothing to a served model, on a smaller dataset
//! and one epoch: every stage reports, the evaluation table is printed, the
//! web page and the API answer with the promoted version; a second run
//! finds the model in production and serves at once. The embedded default
//! (a folder store, the in-process bus): no server needed; and the same
//! demo with `--store s3://…` and `--bus kafka://…` on the local stack.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{chexvision, free_port, http, repo_file};

/// A running demo: its output so far, line by line.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
}

impl Demo {
    fn start(store: &str, address: SocketAddr) -> Demo {
        Demo::start_on(store, "memory://", &[], address)
    }

    fn start_on(store: &str, bus: &str, env: &[(String, String)], address: SocketAddr) -> Demo {
        let mut child = chexvision()
            .current_dir(repo_file(""))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("CHEXVISION_LOG__LEVEL", "error")
            .args(["--store", store, "--bus", bus, "demo"])
            .args(["--rows", "400", "--epochs", "1", "--quiet"])
            .args(["--bind", &address.to_string()])
            .stdout(Stdio::piped())
            // Errors show in the test's output.
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            output: Vec::new(),
        }
    }

    /// Reads output until a line contains `marker`; the output so far.
    fn until(&mut self, marker: &str, patience: Duration) -> String {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(marker);
                    self.output.push(line);
                    if found {
                        return self.output.join("\n");
                    }
                }
                Err(e) => panic!(
                    "no `{marker}` ({e}: the demo {} within {patience:?}); it said:\n{}",
                    if matches!(e, mpsc::RecvTimeoutError::Disconnected) {
                        "exited"
                    } else {
                        "is still running"
                    },
                    self.output.join("\n")
                ),
            }
        }
    }

    /// Waits for the API to answer.
    fn ready(&self, address: SocketAddr) {
        for _ in 0..300 {
            if std::net::TcpStream::connect(address).is_ok() {
                let (status, _) = http(address, "GET", "/readyz", &[], b"");
                if status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the demo's API never became ready");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn predict(address: SocketAddr, png: &[u8]) -> serde_json::Value {
    let (status, body) = http(
        address,
        "POST",
        "/v1/predict",
        &[("Content-Type", "image/png")],
        png,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn the_demo_trains_evaluates_promotes_and_serves_then_serves_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let samples = dir.path().join("samples");
    let status = chexvision()
        .args(["synth", "--rows", "2", "--size", "128", "--quiet", "--out"])
        .arg(&samples)
        .status()
        .unwrap();
    assert!(status.success());
    let png = std::fs::read(samples.join("images/00000001_000.png")).unwrap();

    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut demo = Demo::start(&store, address);
    let output = demo.until("the web page:", Duration::from_secs(600));
    for stage in ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"] {
        assert!(output.contains(stage), "{stage} missing:\n{output}");
    }
    assert!(output.contains("promoted"), "{output}");
    assert!(output.contains("macro (14 findings)"), "{output}");
    assert!(output.contains("Cardiomegaly"), "{output}");
    let version = output
        .lines()
        .find_map(|l| l.strip_prefix("model "))
        .and_then(|l| l.split(':').next())
        .expect("the evaluation table names the model")
        .to_owned();
    demo.ready(address);
    let (status, page) = http(address, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<html"));
    let answer = predict(address, &png);
    assert_eq!(answer["model"]["version"], version.as_str(), "{answer}");
    assert_eq!(answer["findings"].as_array().unwrap().len(), 14);
    drop(demo);

    // Again: the model is in production; no stage runs.
    let mut again = Demo::start(&store, address);
    let output = again.until("the web page:", Duration::from_secs(60));
    assert!(output.contains("is in production"), "{output}");
    assert!(!output.contains("[1/6]"), "{output}");
    again.ready(address);
    assert_eq!(predict(address, &png)["model"]["version"], version.as_str());
}

#[test]
fn the_same_demo_runs_on_the_local_kafka_broker_and_s3_server() {
    let Some(common::Stack { config, bucket }) = common::stack() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    // Topics of its own, so nothing another run left on the broker is read.
    let topics = common::topic_env("demo", &unique, &common::TOPICS);
    let store = format!("s3://{bucket}/e2e-demo-{unique}");
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut demo = Demo::start_on(&store, &config.bus, &topics, address);
    let output = demo.until("the web page:", Duration::from_secs(600));
    for stage in ["[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"] {
        assert!(output.contains(stage), "{stage} missing:\n{output}");
    }
    assert!(output.contains(&store), "the report in S3:\n{output}");
    let version = output
        .lines()
        .find_map(|l| l.strip_prefix("model "))
        .and_then(|l| l.split(':').next())
        .expect("the evaluation table names the model")
        .to_owned();
    demo.ready(address);
    let samples = tempfile::tempdir().unwrap();
    let status = chexvision()
        .args(["synth", "--rows", "1", "--size", "128", "--quiet", "--out"])
        .arg(samples.path())
        .status()
        .unwrap();
    assert!(status.success());
    let png = std::fs::read(samples.path().join("images/00000001_000.png")).unwrap();
    assert_eq!(predict(address, &png)["model"]["version"], version.as_str());
}
