//! What every service exposes to its operators: structured logs (JSON for log
//! collectors, pretty for terminals), a Prometheus registry, and the
//! `/metrics`, `/healthz` and `/readyz` endpoints on the operations port.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use actix_web::{http::header::ContentType, web, App, HttpResponse, HttpServer};
use chexvision_config::{LogFormat, LogSettings};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global tracing subscriber. `RUST_LOG`, when set, wins over the
/// configured level. Calling it twice keeps the first (tests call it freely).
pub fn init_tracing(settings: &LogSettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&settings.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Readiness of a service: ready once nothing holds it back. Components name
/// what they wait for (`bus`, `store`, `model`), and clear it when done.
#[derive(Clone, Debug, Default)]
pub struct Health {
    waiting_for: Arc<Mutex<BTreeMap<String, String>>>,
    /// Components that failed for good: `/healthz` answers 503 (the pod
    /// should be restarted).
    failed: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    /// Marks the service not ready because of `component`, with a reason.
    pub fn not_ready(&self, component: &str, reason: impl Into<String>) {
        self.lock().insert(component.to_owned(), reason.into());
    }

    /// Clears what `component` held back.
    pub fn ready(&self, component: &str) {
        self.lock().remove(component);
    }

    pub fn is_ready(&self) -> bool {
        self.lock().is_empty()
    }

    /// What the service still waits for, by component.
    pub fn waiting_for(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    /// Marks `component` failed for good: not ready, and not alive.
    pub fn fail(&self, component: &str, reason: impl Into<String>) {
        let reason = reason.into();
        self.lock().insert(component.to_owned(), reason.clone());
        lock(&self.failed).insert(component.to_owned(), reason);
    }

    /// Whether nothing has failed for good (`/healthz`).
    pub fn is_alive(&self) -> bool {
        lock(&self.failed).is_empty()
    }

    /// What failed for good, by component.
    pub fn failures(&self) -> BTreeMap<String, String> {
        lock(&self.failed).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        lock(&self.waiting_for)
    }
}

fn lock(
    map: &Mutex<BTreeMap<String, String>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A service's registry and health, shared with its HTTP endpoints.
#[derive(Clone, Debug)]
pub struct Telemetry {
    pub service: String,
    pub registry: Registry,
    pub health: Health,
}

impl Telemetry {
    /// A fresh registry with `chexvision_build_info{service, version}` = 1.
    pub fn new(service: &str) -> Self {
        let registry = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new(
                "chexvision_build_info",
                "Service name and version; always 1",
            ),
            &["service", "version"],
        )
        .expect("static metric definition is valid");
        info.with_label_values(&[service, env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(info))
            .expect("a fresh registry has no build_info yet");
        Telemetry {
            service: service.to_owned(),
            registry,
            health: Health::default(),
        }
    }

    /// Prometheus text exposition of every registered metric.
    pub fn render_metrics(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

async fn metrics(telemetry: web::Data<Telemetry>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(telemetry.render_metrics())
}

async fn healthz(telemetry: web::Data<Telemetry>) -> HttpResponse {
    let failures = telemetry.health.failures();
    if failures.is_empty() {
        return HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(serde_json::json!({"status": "ok", "service": telemetry.service}).to_string());
    }
    HttpResponse::ServiceUnavailable()
        .content_type(ContentType::json())
        .body(
            serde_json::json!({
                "status": "failed",
                "service": telemetry.service,
                "failed": failures,
            })
            .to_string(),
        )
}

async fn readyz(telemetry: web::Data<Telemetry>) -> HttpResponse {
    let waiting_for = telemetry.health.waiting_for();
    let body = serde_json::json!({
        "ready": waiting_for.is_empty(),
        "service": telemetry.service,
        "waiting_for": waiting_for,
    })
    .to_string();
    let mut response = if waiting_for.is_empty() {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response.content_type(ContentType::json()).body(body)
}

/// Mounts `/metrics`, `/healthz` and `/readyz`; a service with its own API
/// (inference) adds these to its app.
pub fn configure(telemetry: Telemetry) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(telemetry))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
    }
}

/// Starts the operations server on `bind`. Returns the running server (await
/// it, or stop it with its handle on shutdown) and the bound address.
pub fn serve(
    bind: &str,
    telemetry: Telemetry,
) -> std::io::Result<(actix_web::dev::Server, std::net::SocketAddr)> {
    let server = HttpServer::new(move || App::new().configure(configure(telemetry.clone())))
        .workers(1)
        .disable_signals() // the service's main owns shutdown
        .bind(bind)?;
    let address = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other(format!("bound no address for {bind}")))?;
    Ok((server.run(), address))
}

/// The HTTP endpoints running on the current Tokio runtime.
pub struct RunningServer {
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// [`serve`], spawned on the current Tokio runtime.
pub fn spawn(
    bind: &str,
    telemetry: Telemetry,
) -> std::io::Result<(RunningServer, std::net::SocketAddr)> {
    let (server, address) = serve(bind, telemetry)?;
    let handle = server.handle();
    let task = tokio::spawn(server);
    Ok((RunningServer { handle, task }, address))
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return interrupt.await.unwrap_or(());
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}

#[cfg(test)]
mod tests {
    use actix_web::{body::to_bytes, test};

    use super::*;

    #[actix_rt::test]
    async fn endpoints_report_metrics_health_and_readiness() {
        let telemetry = Telemetry::new("chexvision-test");
        let counter =
            prometheus::IntCounter::new("chexvision_test_things_total", "things").unwrap();
        telemetry
            .registry
            .register(Box::new(counter.clone()))
            .unwrap();
        counter.inc_by(3);
        telemetry
            .health
            .not_ready("bus", "connecting to kafka://127.0.0.1:9092");
        let app = test::init_service(App::new().configure(configure(telemetry.clone()))).await;

        let response =
            test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
        assert!(response.status().is_success());
        let body =
            String::from_utf8(to_bytes(response.into_body()).await.unwrap().to_vec()).unwrap();
        assert!(body.contains("chexvision_test_things_total 3"), "{body}");
        assert!(
            body.contains("chexvision_build_info{service=\"chexvision-test\""),
            "{body}"
        );

        let response =
            test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(response.status(), 200);

        let response =
            test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
        assert_eq!(response.status(), 503);
        let body =
            String::from_utf8(to_bytes(response.into_body()).await.unwrap().to_vec()).unwrap();
        assert!(body.contains("connecting to kafka"), "{body}");

        telemetry.health.ready("bus");
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
        assert_eq!(response.status(), 200);

        // A component that failed for good: neither ready nor alive.
        telemetry
            .health
            .fail("worker", "the worker stopped: store gone");
        for uri in ["/readyz", "/healthz"] {
            let response =
                test::call_service(&app, test::TestRequest::get().uri(uri).to_request()).await;
            assert_eq!(response.status(), 503, "{uri}");
            let body =
                String::from_utf8(to_bytes(response.into_body()).await.unwrap().to_vec()).unwrap();
            assert!(
                body.contains("the worker stopped: store gone"),
                "{uri}: {body}"
            );
        }
    }

    #[actix_rt::test]
    async fn serve_binds_and_answers_over_tcp() {
        use std::io::{Read, Write};
        let telemetry = Telemetry::new("chexvision-tcp");
        let (server, address) = serve("127.0.0.1:0", telemetry).unwrap();
        let handle = server.handle();
        actix_rt::spawn(server);
        let response = actix_rt::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .await
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("chexvision-tcp"), "{response}");
        handle.stop(true).await;
    }
}
