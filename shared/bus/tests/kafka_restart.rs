//! A broker restart in the middle of a stream loses nothing.
//!
//! The test runs its own tansu broker with sqlite storage (the one engine that
//! keeps topics, records and committed offsets across a restart) on a free
//! loopback port, and restarts it while events are published and consumed.
//! It needs the `tansu` binary that `make stack-up` installs; without it the
//! test is skipped, unless CHEXVISION_REQUIRE_STACK=1 (as in `make test` and CI).

mod suite;

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chexvision_bus::KafkaBus;
use chexvision_config::KafkaSettings;

fn tansu_binary() -> Option<PathBuf> {
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .chain(home_bin)
        .find(|candidate| candidate.is_file())
}

struct DurableBroker {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl DurableBroker {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn start(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let address = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.binary)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .args(["broker", "--cluster-id", "chexvision-restart-test"])
            .args([
                "--listener-url",
                &address,
                "--advertised-listener-url",
                &address,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: tansu drops connections at once, so clients reconnect and
            // retry (on SIGTERM it answers produces with errors for 5 s).
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.start();
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            // The first errors say what went wrong; the last say how it ended.
            eprintln!("--- tansu log (first errors) ---");
            for line in log
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("panic"))
                .take(20)
            {
                eprintln!("{line}");
            }
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("--- tansu log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The idempotent producer is turned off against this broker: tansu 0.6.0's
/// sqlite engine panics in its storage task when an idempotent producer
/// resumes after a restart ("more or less than one row", lite.rs:503, in about
/// one run of six here), and then fails every produce until restarted. Idempotence prevents duplicates, not losses, and
/// the test allows duplicates.
fn restart_settings() -> KafkaSettings {
    let mut settings = KafkaSettings::default();
    settings
        .properties
        .insert("enable.idempotence".into(), "false".into());
    settings
}

#[test]
fn broker_restart_loses_nothing() {
    // The body runs as a task so that a failure is reported after a bounded
    // shutdown: dropping a Kafka consumer whose broker is gone blocks in
    // librdkafka's close, and a plain #[tokio::test] would hang there.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async { tokio::spawn(restart_scenario()).await });
    runtime.shutdown_timeout(Duration::from_secs(10));
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn restart_scenario() {
    let Some(binary) = tansu_binary() else {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "CHEXVISION_REQUIRE_STACK=1 but no tansu binary: run `make stack-up`"
        );
        eprintln!("skipping: no tansu binary (run `make stack-up`)");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = DurableBroker {
        binary,
        dir: tempfile::Builder::new()
            .prefix("tansu-restart-")
            .tempdir()
            .unwrap(),
        port,
        child: None,
    };
    broker.start();
    let broker = Arc::new(Mutex::new(broker));
    let bus =
        Arc::new(KafkaBus::connect(&format!("127.0.0.1:{port}"), &restart_settings()).unwrap());
    let restarter = broker.clone();
    suite::broker_restart_loses_nothing(bus, move || restarter.lock().unwrap().restart()).await;
}
