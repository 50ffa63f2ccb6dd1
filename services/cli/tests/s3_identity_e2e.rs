//! S3 without static keys, as pods get their credentials in a cluster: the
//! CLI ingests into the local S3 server (garage) with credentials from
//!
//! * a web identity (EKS IAM roles for service accounts): the projected
//!   token file is exchanged at STS (`AssumeRoleWithWebIdentity`) for the
//!   role's keys;
//! * a container credentials endpoint (EKS Pod Identity, ECS): the keys are
//!   fetched with the agent's authorization token.
//!
//! STS and the Pod Identity agent cannot run here, so a small HTTP server on
//! loopback stands in for both (reached through `AWS_ENDPOINT_URL_STS` and
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI`, as the SDK reads them) and hands
//! out the S3 server's real keys; S3 itself is the real server, so a write
//! succeeds only with the keys the exchange returned. The test checks what
//! the stand-in was sent: the role, the token from the file, the agent's
//! authorization header.
//!
//! Skipped without the stack unless CHEXVISION_REQUIRE_STACK=1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

mod common;
use chexvision_dataset::{manifest_key, Manifest};
use chexvision_store::get_json;
use common::{chexvision, stack};

/// One request the stand-in answered: (method, path, headers, body).
type Seen = Arc<Mutex<Vec<(String, String, Vec<String>, String)>>>;

/// Answers a POST as STS's AssumeRoleWithWebIdentity and a GET as a
/// container credentials endpoint, both with `key` / `secret`.
fn identity_stand_in(key: String, secret: String) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let line = line.trim_end().to_owned();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push(line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or("").to_owned();
            let path = parts.next().unwrap_or("").to_owned();
            let (content_type, answer) = if method == "POST" {
                (
                    "text/xml",
                    format!(
                        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                         <AssumeRoleWithWebIdentityResult>\
                         <Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
                         <SessionToken>session-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
                         <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/chexvision/test</Arn>\
                         <AssumedRoleId>AROATEST:test</AssumedRoleId></AssumedRoleUser>\
                         </AssumeRoleWithWebIdentityResult>\
                         <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>\
                         </AssumeRoleWithWebIdentityResponse>"
                    ),
                )
            } else {
                (
                    "application/json",
                    serde_json::json!({
                        "AccessKeyId": key,
                        "SecretAccessKey": secret,
                        "Token": "session-token",
                        "Expiration": "2099-01-01T00:00:00Z",
                    })
                    .to_string(),
                )
            };
            log.lock().unwrap().push((
                method,
                path,
                headers,
                String::from_utf8_lossy(&body).into_owned(),
            ));
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (port, seen)
}

/// `chexvision ingest` of a few synthetic images into `store`, with the
/// S3 keys taken out of its environment and `identity` put in.
fn ingest_without_keys(store: &str, dataset_id: &str, identity: &[(&str, String)]) {
    let images = tempfile::tempdir().unwrap();
    let out = images.path().display().to_string();
    let status = chexvision()
        .args([
            "synth", "--rows", "30", "--size", "64", "--seed", "3", "--out", &out,
        ])
        .env("CHEXVISION_LOG__LEVEL", "error")
        .output()
        .unwrap();
    assert!(status.status.success());
    let mut command: Command = chexvision();
    command
        .args(["ingest", "--source", &out, "--dataset-id", dataset_id])
        .env("CHEXVISION_STORE", store)
        .env("CHEXVISION_LOG__LEVEL", "error");
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "CHEXVISION_S3__ACCESS_KEY_ID",
        "CHEXVISION_S3__SECRET_ACCESS_KEY",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    ] {
        command.env_remove(name);
    }
    command.envs(identity.iter().map(|(k, v)| (*k, v)));
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "ingest with {identity:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_to_s3_with_a_web_identity_or_a_pod_identity_and_no_keys() {
    let Some(common::Stack { config, bucket }) = stack() else {
        return;
    };
    let key = config
        .s3
        .access_key_id
        .clone()
        .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok())
        .expect("the stack's S3 key");
    let secret = config
        .s3
        .secret_access_key
        .clone()
        .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok())
        .expect("the stack's S3 secret");
    let (port, seen) = identity_stand_in(key, secret);
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let store_uri = format!("s3://{bucket}/e2e-identity-{unique}");
    let store = chexvision_store::open(&store_uri, &config.s3)
        .await
        .unwrap();

    // IRSA: the projected token, the role, STS.
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(
        &token_file,
        "eyJhbGciOiJSUzI1NiJ9.service-account.signature",
    )
    .unwrap();
    let role = "arn:aws:iam::123456789012:role/chexvision-trainer";
    ingest_without_keys(
        &store_uri,
        "by-web-identity",
        &[
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("AWS_ROLE_ARN", role.to_owned()),
            ("AWS_ENDPOINT_URL_STS", format!("http://127.0.0.1:{port}")),
        ],
    );
    let manifest: Manifest = get_json(store.as_ref(), &manifest_key("by-web-identity"))
        .await
        .unwrap()
        .expect("the manifest written with the web identity's keys");
    assert_eq!(manifest.rows_total + manifest.rejected_total, 30);
    {
        let seen = seen.lock().unwrap();
        let exchanges: Vec<&String> = seen
            .iter()
            .filter(|(method, ..)| method == "POST")
            .map(|(.., body)| body)
            .collect();
        assert!(!exchanges.is_empty(), "STS was never asked");
        let body = exchanges[0];
        assert!(body.contains("Action=AssumeRoleWithWebIdentity"), "{body}");
        assert!(
            body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fchexvision-trainer"),
            "{body}"
        );
        assert!(
            body.contains("WebIdentityToken=eyJhbGciOiJSUzI1NiJ9.service-account.signature"),
            "{body}"
        );
    }

    // EKS Pod Identity: the agent's endpoint and its authorization token.
    ingest_without_keys(
        &store_uri,
        "by-pod-identity",
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://127.0.0.1:{port}/v1/credentials"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "agent-token".to_owned(),
            ),
        ],
    );
    let manifest: Option<Manifest> = get_json(store.as_ref(), &manifest_key("by-pod-identity"))
        .await
        .unwrap();
    assert!(
        manifest.is_some(),
        "the manifest written with the pod identity's keys"
    );
    let seen = seen.lock().unwrap();
    let fetches: Vec<&Vec<String>> = seen
        .iter()
        .filter(|(method, path, ..)| method == "GET" && path == "/v1/credentials")
        .map(|(_, _, headers, _)| headers)
        .collect();
    assert!(
        !fetches.is_empty(),
        "the credentials endpoint was never asked"
    );
    assert!(
        fetches[0]
            .iter()
            .any(|h| h.eq_ignore_ascii_case("authorization: agent-token")),
        "{:?}",
        fetches[0]
    );
}
