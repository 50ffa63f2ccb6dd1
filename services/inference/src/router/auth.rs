//! API keys: `Authorization: Bearer KEY`, checked against sha256 hashes
//! (the service never holds a key itself), with a scope per key.

use std::path::Path;

use actix_web::http::{header, StatusCode};
use actix_web::HttpRequest;
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use crate::settings::{ApiKey, Scope};

/// The keys the service accepts; empty: no authentication.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Vec<ApiKey>,
}

impl Keys {
    /// From the config's keys and, when named, a YAML or JSON file of more
    /// (a mounted Kubernetes secret).
    pub fn load(keys: &[ApiKey], file: &str) -> anyhow::Result<Keys> {
        let mut all = keys.to_vec();
        if !file.is_empty() {
            let text = std::fs::read_to_string(Path::new(file))
                .map_err(|e| anyhow::anyhow!("api.keys_file {file}: {e}"))?;
            let more: Vec<ApiKey> = serde_yaml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("api.keys_file {file}: not a list of keys: {e}"))?;
            all.extend(more);
        }
        for key in &mut all {
            key.sha256 = key.sha256.to_ascii_lowercase();
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!(
                    "API key `{}`: sha256 must be 64 hex digits (the hash, never the key)",
                    key.name
                );
            }
        }
        Ok(Keys { keys: all })
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key's holder when the request may act at `scope`.
    pub fn authorize(&self, req: &HttpRequest, scope: Scope) -> Result<Option<String>, ApiError> {
        if !self.enabled() {
            return Ok(None);
        }
        let unauthorized = |message: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message.to_string(),
            )
        };
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty() && t.len() <= 512)
            .ok_or_else(|| unauthorized("an API key is required: Authorization: Bearer KEY"))?;
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        let key = self
            .keys
            .iter()
            .find(|k| k.sha256 == digest)
            .ok_or_else(|| unauthorized("the API key is not known"))?;
        if !key.scope.allows(scope) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "key `{}` has the {} scope; this route needs the {} scope",
                    key.name,
                    key.scope.name(),
                    scope.name()
                ),
            ));
        }
        Ok(Some(key.name.clone()))
    }
}

/// The sha256 to put in the config for `key`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}
