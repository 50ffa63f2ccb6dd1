//! The bus over TLS with SCRAM-SHA-512, as managed Kafka (MSK, Confluent,
//! Strimzi's `tls` listener) is reached: `security.protocol=SASL_SSL`.
//!
//! The broker is tansu with authentication on (a SCRAM user created while
//! it was open, kept in its sqlite storage). tansu 0.6 accepts TLS flags but
//! does not use them, so socat terminates TLS in front of it with a server
//! certificate for 127.0.0.1 signed by a CA made here with openssl; the
//! broker advertises socat's port, so every connection goes through TLS.
//!
//! Checked: events go out and come back with the right password and the
//! CA; a wrong password and an unknown CA each get nothing through.
//!
//! Needs tansu (`make stack-up`), socat and openssl (`make deps`); skipped
//! without them unless CHEXVISION_REQUIRE_STACK=1 (make test, CI).

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chexvision_bus::{Bus, KafkaBus, OutboundRecord, TopicSpec};
use chexvision_config::KafkaSettings;

fn tool(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .chain(home)
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(program: &Path, args: &[&str], dir: &Path) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Processes killed when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tansu(binary: &Path, dir: &Path, port: u16, advertised: u16, authentication: bool) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .unwrap();
    let mut command = Command::new(binary);
    command
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .args(["broker", "--cluster-id", "chexvision-security-test"])
        .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
        ])
        .args(["--storage-engine", "sqlite://tansu.db", "--silent"]);
    if authentication {
        command.arg("--authentication");
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start tansu");
    wait_listening(port, "tansu");
    child
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn certificates(openssl: &Path, dir: &Path) {
    run(
        openssl,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=chexvision test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    run(
        openssl,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        dir,
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(
        openssl,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
        dir,
    );
    // Another CA, which did not sign the server's certificate.
    run(
        openssl,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=some other CA",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
        ],
        dir,
    );
}

fn settings(password: &str, ca: &Path) -> KafkaSettings {
    let mut settings = KafkaSettings::default();
    // tansu 0.6's sqlite engine and idempotent producers: see kafka_restart.rs.
    for (key, value) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "chexvision"),
        ("sasl.password", password),
        ("ssl.ca.location", &ca.display().to_string()),
        ("enable.idempotence", "false"),
    ] {
        settings.properties.insert(key.into(), value.into());
    }
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_through_tls_with_scram_and_a_wrong_password_or_ca_gets_nothing() {
    let tools = (tool("tansu"), tool("socat"), tool("openssl"));
    let (Some(tansu_bin), Some(socat), Some(openssl)) = tools else {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "CHEXVISION_REQUIRE_STACK=1 but tansu, socat or openssl is missing: {tools:?} \
             (make stack-up installs tansu, make deps socat)"
        );
        eprintln!("skipping: tansu, socat or openssl is missing");
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("kafka-security-")
        .tempdir()
        .unwrap();
    let (broker_port, tls_port) = (free_port(), free_port());
    certificates(&openssl, dir.path());

    // The user, created while the broker is open; then authentication on.
    let mut open = tansu(&tansu_bin, dir.path(), broker_port, broker_port, false);
    run(
        &tansu_bin,
        &[
            "user",
            "create",
            "--broker",
            &format!("tcp://127.0.0.1:{broker_port}"),
            "--mechanism",
            "scram512",
            "chexvision",
            "s3cret-pa55",
        ],
        dir.path(),
    );
    let _ = Command::new("kill")
        .args(["-INT", &open.id().to_string()])
        .status();
    let _ = open.wait();
    let broker = tansu(&tansu_bin, dir.path(), broker_port, tls_port, true);
    let terminator = Command::new(&socat)
        .current_dir(dir.path())
        .arg(format!(
            "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert=server.pem,key=server.key,verify=0"
        ))
        .arg(format!("TCP:127.0.0.1:{broker_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start socat");
    let _processes = Processes(vec![broker, terminator]);
    wait_listening(tls_port, "socat");
    let brokers = format!("127.0.0.1:{tls_port}");
    let ca = dir.path().join("ca.pem");

    // The right password and CA: out and back.
    let bus =
        KafkaBus::connect(&brokers, &settings("s3cret-pa55", &ca)).expect("a SASL_SSL client");
    bus.create_topics(&[TopicSpec::new("secure.events", 1)])
        .await
        .expect("topic created over TLS with SCRAM");
    for i in 0..3u8 {
        bus.publish(OutboundRecord {
            topic: "secure.events".into(),
            key: format!("k{i}").into_bytes(),
            payload: vec![i; 16],
            headers: Vec::new(),
        })
        .await
        .expect("published over TLS with SCRAM");
    }
    let mut subscription = bus
        .subscribe("secure-readers", &["secure.events".to_owned()])
        .await
        .unwrap();
    let mut payloads = Vec::new();
    while payloads.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("records within a minute")
            .expect("a record");
        payloads.push(delivery.payload.clone());
        subscription.ack(&delivery).await.unwrap();
    }
    assert_eq!(payloads, (0..3u8).map(|i| vec![i; 16]).collect::<Vec<_>>());

    // A wrong password, or a CA that did not sign the broker's certificate:
    // nothing goes through (each would wait for ever; 15 s is plenty to
    // see that the right settings work and these never do).
    for (what, settings) in [
        ("a wrong password", settings("not-the-password", &ca)),
        (
            "an unknown CA",
            settings("s3cret-pa55", &dir.path().join("other.pem")),
        ),
    ] {
        let bus = KafkaBus::connect(&brokers, &settings).unwrap();
        let created = tokio::time::timeout(
            Duration::from_secs(15),
            bus.create_topics(&[TopicSpec::new("secure.refused", 1)]),
        )
        .await;
        assert!(
            !matches!(created, Ok(Ok(()))),
            "{what}: the broker took a request"
        );
    }
}
