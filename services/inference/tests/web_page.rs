//! The web page in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) uploads an image, waits for the answer, and finds the
//! 14 bars at their probabilities with their thresholds, the abnormal
//! score, the Grad-CAM overlay, the model version and the synthetic-data
//! banner; a screenshot is saved for a person to look at.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`make deps` installs
//! them); without them the test is skipped, unless
//! `CHEXVISION_REQUIRE_BROWSER=1` (as `make test` sets) makes that a failure.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebDriver session.
struct Session {
    url: String,
}

async fn call(method: &str, url: &str, body: Value) -> Value {
    let body = if method == "GET" || method == "DELETE" {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let answer = send(method, url, &[("content-type", "application/json")], body).await;
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    assert_eq!(answer.status, 200, "{method} {url}: {v}");
    v["value"].clone()
}

impl Session {
    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        call(method, &format!("{}{path}", self.url), body).await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    async fn script(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uploads_an_image_and_sees_findings_thresholds_and_the_heatmap() {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_BROWSER").is_err(),
            "CHEXVISION_REQUIRE_BROWSER is set but {CHROMEDRIVER} or {CHROMIUM} is missing"
        );
        eprintln!(
            "skipped: no {CHROMEDRIVER} / {CHROMIUM} (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let server = TestServer::start(settings(), true).await;
    let port = free_port();
    let mut driver = Driver {
        child: Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    loop {
        let ready = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        assert!(
            driver.child.try_wait().unwrap().is_none(),
            "chromedriver exited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let session = call(
        "POST",
        &format!("{}/session", driver.base),
        json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.path().display()),
                     "--window-size=1280,1100"]}}}}),
    )
    .await;
    let session = Session {
        url: format!(
            "{}/session/{}",
            driver.base,
            session["sessionId"].as_str().unwrap()
        ),
    };

    session
        .cmd("POST", "/url", json!({"url": server.url("/")}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("chest.png");
    std::fs::write(&image, png(256, 256, 4)).unwrap();
    let select = session.find("#finding").await;
    session
        .cmd(
            "POST",
            &format!("/element/{select}/value"),
            json!({"text": "Effusion"}),
        )
        .await;
    let file = session.find("#file").await;
    session
        .cmd(
            "POST",
            &format!("/element/{file}/value"),
            json!({"text": image.display().to_string()}),
        )
        .await;
    let start = Instant::now();
    loop {
        let status = session
            .script("return document.querySelector('#status').textContent")
            .await;
        if status == "done" {
            break;
        }
        assert_ne!(
            status,
            "error",
            "the page shows an error: {}",
            session
                .script("return document.querySelector('#error').textContent")
                .await
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no result; status {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the page shows is what the API answers for the same image.
    let page = session
        .script(
            "const f = [...document.querySelectorAll('#findings .finding')].map(e => ({
                name: e.dataset.name, p: +e.dataset.probability, t: +e.dataset.threshold,
                positive: e.dataset.positive, width: e.querySelector('.bar').style.width,
                barWidth: e.querySelector('.bar').getBoundingClientRect().width }));
             const h = document.querySelector('#heatmap');
             const banner = document.querySelector('#synthetic-banner');
             return { findings: f, abnormal: +document.querySelector('#abnormal').dataset.probability,
                      version: document.querySelector('#model-version').textContent,
                      heatmap: h.getAttribute('src') || '', heatmapFinding: h.dataset.finding,
                      heatmapLoaded: h.complete && h.naturalWidth > 0,
                      banner: !!banner && banner.getBoundingClientRect().height > 0 };",
        )
        .await;
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "image/png")],
        std::fs::read(&image).unwrap(),
    )
    .await
    .json();
    let findings = page["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 14, "{page}");
    for (shown, f) in findings.iter().zip(answer["findings"].as_array().unwrap()) {
        assert_eq!(shown["name"], f["name"]);
        let p = f["probability"].as_f64().unwrap();
        assert!(
            (shown["p"].as_f64().unwrap() - p).abs() < 1e-6,
            "{shown} vs {f}"
        );
        assert!((shown["t"].as_f64().unwrap() - f["threshold"].as_f64().unwrap()).abs() < 1e-9);
        assert_eq!(shown["positive"], f["positive"].to_string());
        let width: f64 = shown["width"]
            .as_str()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap();
        assert!((width - p * 100.0).abs() < 0.01, "bar {width}% for p {p}");
    }
    // Bars are drawn to scale: a bigger probability, a wider bar.
    let mut by_p: Vec<(f64, f64)> = findings
        .iter()
        .map(|f| (f["p"].as_f64().unwrap(), f["barWidth"].as_f64().unwrap()))
        .collect();
    by_p.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(by_p.windows(2).all(|w| w[0].1 <= w[1].1 + 0.5), "{by_p:?}");
    assert!(
        (page["abnormal"].as_f64().unwrap() - answer["abnormal"]["probability"].as_f64().unwrap())
            .abs()
            < 1e-6
    );
    assert!(page["version"]
        .as_str()
        .unwrap()
        .contains(answer["model"]["version"].as_str().unwrap()));
    assert!(page["heatmap"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert_eq!(page["heatmapFinding"], "Effusion");
    assert_eq!(
        page["heatmapLoaded"], true,
        "the overlay decodes as an image"
    );
    assert_eq!(page["banner"], true, "the synthetic-data banner is shown");

    let shot = session.cmd("GET", "/screenshot", Value::Null).await;
    let png_bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot.as_str().unwrap(),
    )
    .unwrap();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("inference-web-page.png");
    std::fs::write(&out, &png_bytes).unwrap();
    eprintln!("screenshot: {}", out.display());
    assert!(png_bytes.starts_with(b"\x89PNG"));
    let _ = session.cmd("DELETE", "", Value::Null).await;
    drop(driver);
    server.stop().await;
}
