//! What the end-to-end tests against the local stack share: the CLI
//! binary, and the stack's settings (skip without it, unless
//! CHEXVISION_REQUIRE_STACK=1, as in `make test` and CI); the service
//! binaries run as child processes, their logs and metrics, topics read
//! from the start.
#![allow(dead_code)] // each test uses its own part

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chexvision_bus::{Bus, Delivery};
use chexvision_events::Envelope;

use chexvision_config::{Loader, PlatformConfig};

pub fn chexvision() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chexvision"))
}

/// Every platform topic, by its `CHEXVISION_TOPICS__{NAME}` name.
pub const TOPICS: [&str; 11] = [
    "INGEST_REQUESTS",
    "SHARDS_RAW",
    "SHARDS_READY",
    "DATASETS",
    "TRAINING_REQUESTS",
    "CHECKPOINTS",
    "EVALUATIONS",
    "MODELS_PROMOTED",
    "PREDICTIONS",
    "FEEDBACK",
    "DEAD_LETTER",
];

/// `CHEXVISION_TOPICS__{NAME}` for each of `names`, every topic of its own
/// (`test.e2e.{suite}.{name}.{unique}`), so runs never read each other's.
pub fn topic_env(suite: &str, unique: &str, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|t| {
            (
                format!("CHEXVISION_TOPICS__{t}"),
                format!("test.e2e.{suite}.{}.{unique}", t.to_lowercase()),
            )
        })
        .collect()
}

/// The topic `env` (from [`topic_env`]) gives `name`.
pub fn topic_of(env: &[(String, String)], name: &str) -> String {
    let key = format!("CHEXVISION_TOPICS__{name}");
    env.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no topic {name} in the test's environment"))
}

/// A file of the repository.
pub fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the CLI with `env`, expecting success; its stdout.
pub fn cli(env: &[(String, String)], args: &[&str], stdin: Option<&str>) -> String {
    let mut child = chexvision()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CHEXVISION_LOG__LEVEL", "error")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub struct Stack {
    pub config: PlatformConfig,
    pub bucket: String,
}

/// The stack from the environment (`eval "$(scripts/stack.sh env)"`), or
/// None to skip; a missing stack fails instead when it is required.
pub fn stack() -> Option<Stack> {
    let config: PlatformConfig = Loader::new().load().expect("configuration");
    let required = std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() == Ok("1");
    let Some(rest) = config.store.strip_prefix("s3://") else {
        assert!(!required, "CHEXVISION_REQUIRE_STACK=1 but no s3:// store");
        eprintln!("skipping: no s3:// store (run `make stack-up`)");
        return None;
    };
    if !config.bus.starts_with("kafka://") {
        assert!(!required, "CHEXVISION_REQUIRE_STACK=1 but no kafka:// bus");
        eprintln!("skipping: no kafka:// bus (run `make stack-up`)");
        return None;
    }
    let bucket = rest.split('/').next().unwrap_or(rest).to_owned();
    Some(Stack { config, bucket })
}

/// The longest any single wait may take.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A service binary of this build (another package's, which Cargo does not
/// build for these tests): the one `env_var` names, else built here (a
/// no-op when it is up to date).
pub fn service_binary(package: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    // Next to this package's own binary: <target>/<profile>/chexvision.
    let cli = Path::new(env!("CARGO_BIN_EXE_chexvision"));
    let profile_dir = cli.parent().expect("binary folder");
    let target_dir = profile_dir.parent().expect("target folder");
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Both packages selected, so features resolve as for `cargo test -p
    // chexvision-cli` and the dependencies built for it are reused (a
    // workspace-wide run resolves some features differently: there, pass
    // the binary it built in `env_var` to skip this build).
    eprintln!("building {package} for this test");
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--locked"])
        .args(["-p", "chexvision-cli", "-p", package])
        .args(["--bin", package, "--target-dir"])
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => panic!("unexpected binary path {}", cli.display()),
    }
    let status = command.status().expect("run cargo");
    assert!(status.success(), "building {package} failed");
    let binary = profile_dir.join(format!("{package}{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

/// A running service binary. Killed (SIGKILL) when dropped, so no
/// process outlives the test even when an assertion fails; its log is
/// printed then.
pub struct Service {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Service {
    /// Starts `binary --config config` with `env`, logging JSON to a pipe.
    pub fn start(binary: &Path, config: &Path, env: &[(String, String)], name: &str) -> Service {
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Any free port: the address is read back from the log.
            .env("CHEXVISION_HTTP__BIND", "127.0.0.1:0")
            .env("CHEXVISION_LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            // Also keeps the pipe drained, so the service never blocks on it.
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            });
        }
        Service {
            child,
            log,
            name: name.to_owned(),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics (with the log) if the service has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited early ({status}); its log:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
    }

    /// The address of its HTTP endpoints, from the "http endpoints up" log line.
    pub async fn http_address(&mut self) -> SocketAddr {
        let deadline = Deadline::new(&format!("{}: http endpoints up", self.name));
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                if value["message"] != "http endpoints up" {
                    return None;
                }
                value["address"].as_str()?.parse().ok()
            });
            if let Some(address) = found {
                return address;
            }
            deadline.tick(self).await;
        }
    }

    /// SIGKILL: no chance to clean up, as when a node dies.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// SIGTERM, then waits for the graceful exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within 45 s of SIGTERM; its log:\n{}",
                self.name,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} log (last 60 lines) ---", self.name);
            eprintln!("{}", self.log_tail(60));
        }
    }
}

/// A wait with the test's patience that also fails at once when the service
/// died.
pub struct Deadline {
    until: Instant,
    what: String,
}

impl Deadline {
    pub fn new(what: &str) -> Self {
        Deadline {
            until: Instant::now() + PATIENCE,
            what: what.to_owned(),
        }
    }

    pub async fn tick(&self, service: &mut Service) {
        self.tick_every(service, Duration::from_millis(100)).await
    }

    /// [`Deadline::tick`], sleeping `interval` instead of 100 ms.
    pub async fn tick_every(&self, service: &mut Service, interval: Duration) {
        service.assert_running();
        assert!(
            Instant::now() < self.until,
            "waited {PATIENCE:?} for {}; service log:\n{}",
            self.what,
            service.log_tail(40)
        );
        tokio::time::sleep(interval).await;
    }
}

/// Every record of a topic, collected by a consumer of its own group from
/// the start of the topic while the test runs.
pub struct TopicReader {
    records: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TopicReader {
    pub async fn start(bus: &Arc<dyn Bus>, topic: &str) -> TopicReader {
        let group = format!("e2e-check-{}", uuid::Uuid::new_v4().simple());
        let mut subscription = bus.subscribe(&group, &[topic.to_owned()]).await.unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let records = records.clone();
            tokio::spawn(async move {
                loop {
                    match subscription.next().await {
                        Ok(delivery) => records.lock().unwrap().push(delivery),
                        Err(e) => {
                            eprintln!("test consumer: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        TopicReader { records, task }
    }

    /// (key, event) of every record so far.
    pub fn events(&self) -> Vec<(String, Envelope)> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|d| {
                let event = Envelope::decode_checked(&d.payload)
                    .unwrap_or_else(|e| panic!("{d}: not an event: {e}"));
                (String::from_utf8_lossy(&d.key).into_owned(), event)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for TopicReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service's Prometheus text (GET /metrics over HTTP/1.0).
pub fn metrics_text(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"));
    response
}

/// The value of counter `name` with (at least) these labels; 0 when absent.
pub fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metric(text, name, labels).unwrap_or(0.0) as u64
}

/// The value of metric `name` with (at least) these labels.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (set, value) = if let Some(labelled) = rest.strip_prefix('{') {
            let Some(split) = labelled.split_once("} ") else {
                continue;
            };
            split
        } else if let Some(value) = rest.strip_prefix(' ') {
            ("", value)
        } else {
            continue;
        };
        let matches = labels
            .iter()
            .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        if matches {
            return value.trim().parse::<f64>().ok();
        }
    }
    None
}

/// The `prometheus` binary on PATH (Debian's package), if any.
pub fn prometheus_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus on loopback that scrapes the targets listed in a file
/// (re-read every second, so a restarted service's new port is followed).
pub struct Prometheus {
    child: Child,
    pub port: u16,
    targets: PathBuf,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(binary: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets = dir.path().join("targets.json");
        std::fs::write(&targets, "[]").unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: chexvision\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
                targets.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            port,
            targets,
            dir,
        }
    }

    /// Scrape `address` (and only it) from now on.
    pub fn scrape(&self, address: SocketAddr) {
        let tmp = self.targets.with_extension("tmp");
        std::fs::write(&tmp, format!(r#"[{{"targets": ["{address}"]}}]"#)).unwrap();
        std::fs::rename(&tmp, &self.targets).unwrap();
    }

    /// Scrape each `(job, address)` from now on, labelled with its job.
    pub fn scrape_jobs(&self, jobs: &[(&str, SocketAddr)]) {
        let groups: Vec<serde_json::Value> = jobs
            .iter()
            .map(|(job, address)| {
                serde_json::json!({"targets": [address.to_string()], "labels": {"job": job}})
            })
            .collect();
        let tmp = self.targets.with_extension("tmp");
        std::fs::write(&tmp, serde_json::Value::Array(groups).to_string()).unwrap();
        std::fs::rename(&tmp, &self.targets).unwrap();
    }

    /// The whole answer of an instant query (`status`, `data`, `error`).
    pub fn query_json(&self, promql: &str) -> serde_json::Value {
        let mut encoded = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let answer = (|| -> Option<serde_json::Value> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .ok()?;
            write!(
                stream,
                "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let (_, body) = response.split_once("\r\n\r\n")?;
            serde_json::from_str(body).ok()
        })();
        answer.unwrap_or_else(
            || serde_json::json!({"status": "error", "error": "no answer from Prometheus"}),
        )
    }

    /// The value of a one-series instant query, if Prometheus has it.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let mut encoded = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 request: (status, body).
pub fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status_line = String::from_utf8_lossy(&response[..split]).to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, response[split + 4..].to_vec())
}

/// Runs a Python `script` with `input` on its stdin; its stdout as JSON.
/// None where Python or the script's packages are missing and the stack is
/// not required (with it required, as in CI, that is a failure naming `what`).
pub fn python_json(script: &str, input: &str, what: &str) -> Option<serde_json::Value> {
    let required = std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() == Ok("1");
    let output = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())?;
            child.wait_with_output()
        });
    let failure = match output {
        Ok(output) if output.status.success() => {
            return Some(serde_json::from_slice(&output.stdout).expect("the script prints JSON"))
        }
        Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    assert!(
        !required,
        "{what} is needed (make deps installs it): {failure}"
    );
    eprintln!("skipping the {what} check: {failure}");
    None
}

/// The `prometheus` binary, or None to skip (a failure when the stack is
/// required).
pub fn prometheus_or_skip() -> Option<PathBuf> {
    let found = prometheus_binary();
    assert!(
        found.is_some() || std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
        "CHEXVISION_REQUIRE_STACK=1 but no prometheus binary"
    );
    found
}
