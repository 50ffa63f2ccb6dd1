//! S3 store through aws-sdk-s3: custom endpoints (Garage, MinIO), path-style
//! addressing, bounded retries with backoff, multipart uploads with several
//! parts in flight, aborted on failure so no partial object or orphaned parts
//! remain.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{
    ecs::EcsCredentialsProvider, provider_config::ProviderConfig,
    web_identity_token::WebIdentityTokenCredentialsProvider,
};
use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::{
    config::{
        http::HttpResponse, retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion,
        Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
        SharedCredentialsProvider,
    },
    error::{DisplayErrorContext, SdkError},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
    Client,
};
use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{
        interceptors::{context::BeforeTransmitInterceptorContextMut, Intercept},
        runtime_components::RuntimeComponents,
    },
};
use aws_smithy_types::config_bag::ConfigBag;
use bytes::{Bytes, BytesMut};
use chexvision_config::S3Settings;
use tokio::task::JoinSet;

use crate::{
    validate_key, validate_prefix, Digester, ObjectMeta, ObjectStore, PutReceipt, Result,
    StoreError, Upload,
};

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix inside the bucket, empty or ending with '/'.
    prefix: String,
    max_attempts: u32,
    part_bytes: usize,
    concurrency: usize,
    endpoint: String,
}

impl S3Store {
    /// Builds a client for `s3://bucket/prefix`. Credentials come from the settings,
    /// else from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.
    pub fn connect(bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Self> {
        let uri = format!("s3://{bucket}/{prefix}");
        if bucket.is_empty() {
            return Err(StoreError::InvalidUri {
                uri,
                reason: "no bucket after s3://".into(),
            });
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            validate_key(prefix).map_err(|e| StoreError::InvalidUri {
                uri: uri.clone(),
                reason: e.to_string(),
            })?;
        }
        let source = credentials(settings, |name| std::env::var(name).ok())
            .map_err(|reason| StoreError::InvalidUri { uri, reason })?;
        let region = Region::new(settings.region.clone());
        let path_style = settings.path_style.unwrap_or(settings.endpoint.is_some());
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .credentials_provider(credentials_provider(source, &region))
            .force_path_style(path_style)
            // Checksums in trailers are not understood by every S3-compatible
            // server; sha256 of every object is computed by us anyway.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
                    .operation_attempt_timeout(Duration::from_millis(settings.attempt_timeout_ms))
                    .build(),
            );
        let endpoint = match &settings.endpoint {
            Some(endpoint) => {
                builder = builder.endpoint_url(endpoint);
                endpoint.clone()
            }
            None => format!("AWS S3 ({})", settings.region),
        };
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            max_attempts: settings.max_attempts,
            part_bytes: settings.multipart_part_bytes,
            concurrency: settings.multipart_concurrency.max(1),
            endpoint,
        })
    }

    /// Keys of multipart uploads started under `prefix` and neither completed nor
    /// aborted (they hold storage without being visible as objects).
    pub async fn pending_multipart_uploads(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let output = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .send()
            .await
            .map_err(|e| self.error("list multipart uploads under", prefix, e))?;
        Ok(output
            .uploads
            .unwrap_or_default()
            .into_iter()
            .filter_map(|u| u.key)
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }

    /// One PUT; `if_absent` adds `If-None-Match: *` (HTTP 412 when the
    /// object exists).
    async fn put_object(&self, key: &str, data: Bytes, if_absent: bool) -> Result<PutReceipt> {
        validate_key(key)?;
        let (sha256, size) = crate::digest_of(&data).await;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(size as i64)
            .body(ByteStream::from(data));
        if if_absent {
            request = request.if_none_match("*");
        }
        let sent = request
            .customize()
            .interceptor(PrecomputedPayloadHash(sha256.clone()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(PutReceipt {
                key: key.to_owned(),
                uri: self.uri(key),
                size,
                sha256,
            }),
            // 409: a conditional write raced another one on AWS.
            Err(e)
                if if_absent
                    && matches!(
                        e.raw_response().map(|r| r.status().as_u16()),
                        Some(412 | 409)
                    ) =>
            {
                Err(StoreError::Exists {
                    store: self.store_uri(),
                    key: key.to_owned(),
                })
            }
            Err(e) => Err(self.error("put", key, e)),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn store_uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Turns an SDK error into ours: 404s are NotFound; connection failures and
    /// timeouts (after the SDK's bounded retries) are Unavailable.
    fn error<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let detail = DisplayErrorContext(&err).to_string();
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => StoreError::Unavailable {
                store: format!("{} at {}", self.store_uri(), self.endpoint),
                operation,
                key: key.to_owned(),
                attempts: self.max_attempts,
                detail,
            },
            _ if status == Some(404) || detail.contains("NoSuchKey") => StoreError::NotFound {
                store: self.store_uri(),
                key: key.to_owned(),
            },
            _ => StoreError::Backend {
                store: self.store_uri(),
                operation,
                key: key.to_owned(),
                detail,
            },
        }
    }
}

/// Signs a PUT with the body's sha256 computed already (off the async
/// threads), instead of the SDK hashing the whole body again on them.
#[derive(Debug)]
struct PrecomputedPayloadHash(String);

impl Intercept for PrecomputedPayloadHash {
    fn name(&self) -> &'static str {
        "PrecomputedPayloadHash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// Where the client's credentials come from.
#[derive(Debug)]
enum CredentialSource {
    /// Keys from the settings or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    Static(Credentials),
    /// A projected service-account token exchanged with STS for a role
    /// (EKS IAM roles for service accounts: AWS_WEB_IDENTITY_TOKEN_FILE
    /// and AWS_ROLE_ARN).
    WebIdentity,
    /// A credentials endpoint beside the container (EKS Pod Identity, ECS:
    /// AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI).
    Container,
}

/// Picks the credentials, first match wins: static keys from the settings,
/// then from the AWS_* variables that `env` looks up, then a web identity,
/// then a container credentials endpoint. The error says how to provide
/// them. (The EC2 instance role is not used: a pod would borrow its node's
/// identity.)
fn credentials(
    settings: &S3Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<CredentialSource, String> {
    let access_key = settings
        .access_key_id
        .clone()
        .or_else(|| env("AWS_ACCESS_KEY_ID"));
    let secret_key = settings
        .secret_access_key
        .clone()
        .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
    if let (Some(access_key), Some(secret_key)) = (access_key, secret_key) {
        return Ok(CredentialSource::Static(Credentials::new(
            access_key,
            secret_key,
            env("AWS_SESSION_TOKEN"),
            None,
            "chexvision-config",
        )));
    }
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    if set("AWS_WEB_IDENTITY_TOKEN_FILE") {
        if !set("AWS_ROLE_ARN") {
            return Err(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: \
                        the role to assume for S3 (IRSA sets both)"
                    .into(),
            );
        }
        return Ok(CredentialSource::WebIdentity);
    }
    if set("AWS_CONTAINER_CREDENTIALS_FULL_URI") || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Ok(CredentialSource::Container);
    }
    Err(
        "no S3 credentials: set s3.access_key_id and s3.secret_access_key \
         (CHEXVISION_S3__ACCESS_KEY_ID, ...) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
         or run with a cloud identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, \
         or AWS_CONTAINER_CREDENTIALS_FULL_URI)"
            .into(),
    )
}

/// The provider for a source. The web identity and container providers
/// read their variables from the process environment; the client caches
/// what they return and refreshes it before it expires.
fn credentials_provider(source: CredentialSource, region: &Region) -> SharedCredentialsProvider {
    let config = ProviderConfig::without_region().with_region(Some(region.clone()));
    match source {
        CredentialSource::Static(credentials) => SharedCredentialsProvider::new(credentials),
        CredentialSource::WebIdentity => SharedCredentialsProvider::new(
            WebIdentityTokenCredentialsProvider::builder()
                .configure(&config)
                .build(),
        ),
        CredentialSource::Container => SharedCredentialsProvider::new(
            EcsCredentialsProvider::builder().configure(&config).build(),
        ),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn uri(&self, key: &str) -> String {
        format!("{}{key}", self.store_uri())
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        self.put_object(key, data, false).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutReceipt> {
        self.put_object(key, data, true).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        validate_key(key)?;
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("get", key, e))?;
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Backend {
                store: self.store_uri(),
                operation: "get",
                key: key.to_owned(),
                detail: format!("reading the body failed: {e}"),
            })?;
        Ok(body.into_bytes())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let output = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: output.content_length.unwrap_or(0).max(0) as u64,
            last_modified: output
                .last_modified
                .and_then(|t| std::time::SystemTime::try_from(t).ok()),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", prefix, e))?;
            for object in page.contents.unwrap_or_default() {
                let Some(full) = object.key else { continue };
                let Some(key) = full.strip_prefix(&self.prefix) else {
                    continue;
                };
                objects.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size.unwrap_or(0).max(0) as u64,
                    last_modified: object
                        .last_modified
                        .and_then(|t| std::time::SystemTime::try_from(t).ok()),
                });
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("delete", key, e))?;
        Ok(())
    }

    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        validate_key(key)?;
        Ok(Box::new(S3Upload {
            store: self.clone(),
            key: key.to_owned(),
            buffer: BytesMut::new(),
            digest: Digester::default(),
            upload_id: None,
            next_part: 1,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
            closed: false,
        }))
    }
}

/// A multipart upload. Small objects (under one part) become a single PUT at
/// `finish`; larger ones start a multipart upload on the first full part.
struct S3Upload {
    store: S3Store,
    key: String,
    buffer: BytesMut,
    digest: Digester,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    parts: Vec<CompletedPart>,
    /// Finished or aborted: nothing left to clean up on drop.
    closed: bool,
}

impl S3Upload {
    async fn upload_id(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let output = self
            .store
            .client
            .create_multipart_upload()
            .bucket(&self.store.bucket)
            .key(self.store.full_key(&self.key))
            .send()
            .await
            .map_err(|e| self.store.error("start multipart upload of", &self.key, e))?;
        let id = output.upload_id.ok_or_else(|| StoreError::Backend {
            store: self.store.store_uri(),
            operation: "start multipart upload of",
            key: self.key.clone(),
            detail: "the server returned no upload id".into(),
        })?;
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Sends one part, waiting first for a free slot.
    async fn send_part(&mut self, data: Bytes) -> Result<()> {
        let upload_id = self.upload_id().await?;
        while self.in_flight.len() >= self.store.concurrency {
            self.join_one().await?;
        }
        let part_number = self.next_part;
        self.next_part += 1;
        let store = self.store.clone();
        let key = self.key.clone();
        self.in_flight.spawn(async move {
            let output = store
                .client
                .upload_part()
                .bucket(&store.bucket)
                .key(store.full_key(&key))
                .upload_id(upload_id)
                .part_number(part_number)
                .content_length(data.len() as i64)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| store.error("upload part of", &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(output.e_tag)
                .build())
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(part)) => {
                self.parts.push(part?);
                Ok(())
            }
            Some(Err(join)) => Err(StoreError::Backend {
                store: self.store.store_uri(),
                operation: "upload part of",
                key: self.key.clone(),
                detail: format!("part task failed: {join}"),
            }),
            None => Ok(()),
        }
    }

    async fn try_finish(&mut self) -> Result<PutReceipt> {
        let data = self.buffer.split().freeze();
        if self.upload_id.is_none() {
            // Never reached one part: a plain PUT.
            let receipt = self.store.put(&self.key, data).await?;
            self.closed = true;
            return Ok(receipt);
        }
        if !data.is_empty() {
            self.send_part(data).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        self.parts.sort_by_key(|p| p.part_number());
        let upload_id = self.upload_id().await?;
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(self.store.full_key(&self.key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                self.store
                    .error("complete multipart upload of", &self.key, e)
            })?;
        self.closed = true;
        let (sha256, size) = std::mem::take(&mut self.digest).finish();
        Ok(PutReceipt {
            key: self.key.clone(),
            uri: self.store.uri(&self.key),
            size,
            sha256,
        })
    }

    async fn abort_now(&mut self) -> Result<()> {
        self.closed = true;
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(upload_id) = self.upload_id.take() {
            self.store
                .client
                .abort_multipart_upload()
                .bucket(&self.store.bucket)
                .key(self.store.full_key(&self.key))
                .upload_id(upload_id)
                .send()
                .await
                .map_err(|e| self.store.error("abort multipart upload of", &self.key, e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.digest.update(chunk);
        self.buffer.extend_from_slice(chunk);
        while self.buffer.len() >= self.store.part_bytes {
            let part = self.buffer.split_to(self.store.part_bytes).freeze();
            if let Err(err) = self.send_part(part).await {
                let _ = self.abort_now().await;
                return Err(err);
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<PutReceipt> {
        match self.try_finish().await {
            Ok(receipt) => Ok(receipt),
            Err(err) => {
                if let Err(abort_err) = self.abort_now().await {
                    tracing::warn!(key = %self.key, error = %abort_err, "aborting failed upload also failed");
                }
                Err(err)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_now().await
    }
}

impl Drop for S3Upload {
    /// An upload dropped without finish or abort (a cancelled task, a panic
    /// elsewhere) is aborted in the background so no parts are left behind.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.in_flight.abort_all();
        let (Some(upload_id), Ok(runtime)) =
            (self.upload_id.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let client = self.store.client.clone();
        let bucket = self.store.bucket.clone();
        let key = self.store.full_key(&self.key);
        runtime.spawn(async move {
            if let Err(err) = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(&key)
                .upload_id(upload_id)
                .send()
                .await
            {
                tracing::warn!(%key, error = %DisplayErrorContext(&err), "abort of dropped upload failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_settings_then_environment_else_a_clear_error() {
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("GKenv".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_owned()),
            _ => None,
        };
        let keys = |source| match source {
            CredentialSource::Static(credentials) => credentials,
            other => panic!("{other:?}"),
        };
        let from_env = keys(credentials(&S3Settings::default(), env).unwrap());
        assert_eq!(from_env.access_key_id(), "GKenv");
        assert_eq!(from_env.session_token(), None);

        let configured = S3Settings {
            access_key_id: Some("GKconfig".into()),
            secret_access_key: Some("config-secret".into()),
            ..Default::default()
        };
        let from_config = keys(credentials(&configured, env).unwrap());
        assert_eq!(from_config.access_key_id(), "GKconfig");
        assert_eq!(from_config.secret_access_key(), "config-secret");

        let err = credentials(&S3Settings::default(), |_| None).unwrap_err();
        assert!(
            err.contains("AWS_ACCESS_KEY_ID")
                && err.contains("s3.access_key_id")
                && err.contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
            "{err}"
        );
    }

    #[test]
    fn without_keys_a_cloud_identity_is_used_and_an_incomplete_one_is_named() {
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let irsa = lookup(&[
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
            ),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/chexvision"),
        ]);
        assert!(matches!(
            credentials(&S3Settings::default(), irsa),
            Ok(CredentialSource::WebIdentity)
        ));
        let pod_identity = lookup(&[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.23/v1/credentials",
        )]);
        assert!(matches!(
            credentials(&S3Settings::default(), pod_identity),
            Ok(CredentialSource::Container)
        ));
        // Static keys win over an identity.
        let configured = S3Settings {
            access_key_id: Some("GKconfig".into()),
            secret_access_key: Some("config-secret".into()),
            ..Default::default()
        };
        assert!(matches!(
            credentials(&configured, irsa),
            Ok(CredentialSource::Static(_))
        ));
        let no_role = lookup(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/token")]);
        let err = credentials(&S3Settings::default(), no_role).unwrap_err();
        assert!(err.contains("AWS_ROLE_ARN"), "{err}");
    }
}
