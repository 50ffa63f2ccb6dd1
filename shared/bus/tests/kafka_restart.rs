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
    fn start(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
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
            let log =
                std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- tansu log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing() {
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
        dir: tempfile::tempdir().unwrap(),
        port,
        child: None,
    };
    broker.start();
    let broker = Arc::new(Mutex::new(broker));

    let bus = Arc::new(
        KafkaBus::connect(&format!("127.0.0.1:{port}"), &KafkaSettings::default()).unwrap(),
    );
    let restarter = broker.clone();
    suite::broker_restart_loses_nothing(bus, move || restarter.lock().unwrap().restart()).await;
}
