//! A real Prometheus server scrapes a service's /metrics: the exposition is
//! accepted and the values arrive. Needs the `prometheus` binary (Debian
//! package `prometheus`, installed by `.ci/run`); skipped without it unless
//! CHEXVISION_REQUIRE_STACK=1.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chexvision_telemetry::{serve, Telemetry};

fn prometheus_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over plain HTTP/1.0; returns the body of a 200 response.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of a one-series instant query, once Prometheus has it.
fn query(port: u16, promql: &str) -> Option<String> {
    let path = format!("/api/v1/query?query={promql}");
    let body = http_get(port, &path)?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_owned)
}

#[actix_rt::test]
async fn prometheus_scrapes_the_metrics_endpoint() {
    let Some(binary) = prometheus_binary() else {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "CHEXVISION_REQUIRE_STACK=1 but no prometheus binary (apt-get install prometheus)"
        );
        eprintln!("skipping: no prometheus binary");
        return;
    };

    let telemetry = Telemetry::new("chexvision-scrape-test");
    let handled = prometheus::IntCounterVec::new(
        prometheus::Opts::new("chexvision_test_records_total", "records by outcome"),
        &["outcome"],
    )
    .unwrap();
    telemetry
        .registry
        .register(Box::new(handled.clone()))
        .unwrap();
    handled.with_label_values(&["handled"]).inc_by(7);
    let (server, address) = serve("127.0.0.1:0", telemetry).unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: chexvision\n    static_configs:\n      - targets: ['{address}']\n"
        ),
    )
    .unwrap();
    let web_port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = KillOnDrop(
        Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );

    let found = actix_rt::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let up = query(web_port, "up%7Bjob%3D%22chexvision%22%7D");
            let records = query(
                web_port,
                "chexvision_test_records_total%7Boutcome%3D%22handled%22%7D",
            );
            let info = query(
                web_port,
                "chexvision_build_info%7Bservice%3D%22chexvision-scrape-test%22%7D",
            );
            if let (Some(up), Some(records), Some(info)) = (up, records, info) {
                return Some((up, records, info));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await
    .unwrap();
    handle.stop(true).await;
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let (up, records, info) =
        found.unwrap_or_else(|| panic!("Prometheus never had the series; its log:\n{log}"));
    assert_eq!(up, "1", "the scrape succeeded");
    assert_eq!(records, "7");
    assert_eq!(info, "1");
}
