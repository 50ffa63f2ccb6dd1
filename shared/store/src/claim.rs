//! Claims: which replica owns a piece of work (a training run, a dataset
//! announcement), as a small object `{owner, expires_at}` that its owner
//! renews and anyone may take over once it has expired.
//!
//! A new claim is written with a conditional write (`If-None-Match: *` on
//! S3, an atomic link on a local folder): of two replicas racing for a free
//! key exactly one wins where the store enforces it. Taking over an expired
//! claim deletes it first, and some S3-compatible servers ignore the
//! condition, so every writer also waits `settle` and reads the claim back:
//! the later of two racing writers wins and the earlier sees it and backs
//! off. That holds unless a writer stalls for longer than `settle` between
//! reading the old claim and writing its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{get_json, put_json, ObjectStore, Result};

/// The content of a claim object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub owner: String,
    /// Milliseconds since the Unix epoch after which anyone may take it.
    pub expires_at_unix_ms: u64,
}

impl Claim {
    fn new(owner: &str, ttl: Duration) -> Self {
        Claim {
            owner: owner.to_owned(),
            expires_at_unix_ms: now_ms().saturating_add(ttl.as_millis() as u64),
        }
    }

    pub fn expired(&self) -> bool {
        now_ms() >= self.expires_at_unix_ms
    }
}

/// Whether a claim was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Ours now (new, renewed, or taken over from an expired owner).
    Owned,
    /// Another owner holds it and it has not expired.
    HeldBy(Claim),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes the claim `key` for `owner` for `ttl`: when nobody holds it, when
/// its holder's time ran out, or when `owner` holds it already (renewed).
pub async fn claim(
    store: &dyn ObjectStore,
    key: &str,
    owner: &str,
    ttl: Duration,
    settle: Duration,
) -> Result<ClaimOutcome> {
    if let Some(existing) = get_json::<Claim>(store, key).await? {
        if existing.owner == owner {
            put_json(store, key, &Claim::new(owner, ttl)).await?;
            return Ok(ClaimOutcome::Owned);
        }
        if !existing.expired() {
            return Ok(ClaimOutcome::HeldBy(existing));
        }
        tracing::info!(%key, previous = %existing.owner, %owner, "taking over an expired claim");
        store.delete(key).await?;
    }
    let body =
        serde_json::to_vec(&Claim::new(owner, ttl)).map_err(|e| crate::StoreError::Decode {
            store: store.uri(""),
            key: key.to_owned(),
            detail: e.to_string(),
        })?;
    match store.put_if_absent(key, Bytes::from(body)).await {
        Ok(_) => {}
        Err(e) if e.is_exists() => {
            return Ok(match get_json::<Claim>(store, key).await? {
                Some(other) if other.owner != owner => ClaimOutcome::HeldBy(other),
                _ => ClaimOutcome::Owned,
            })
        }
        Err(e) => return Err(e),
    }
    // Taking over an expired claim deletes it first, and a racer may delete
    // ours in between: the read-back after `settle` sees who won.
    tokio::time::sleep(settle).await;
    match get_json::<Claim>(store, key).await? {
        Some(after) if after.owner != owner => Ok(ClaimOutcome::HeldBy(after)),
        _ => Ok(ClaimOutcome::Owned),
    }
}

/// Extends `owner`'s claim; false when someone else holds it now (the
/// work must stop: another replica took it over).
pub async fn renew(store: &dyn ObjectStore, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
    match get_json::<Claim>(store, key).await? {
        Some(existing) if existing.owner != owner => Ok(false),
        _ => {
            put_json(store, key, &Claim::new(owner, ttl)).await?;
            Ok(true)
        }
    }
}

/// Gives the claim up, if `owner` holds it.
pub async fn release(store: &dyn ObjectStore, key: &str, owner: &str) -> Result<()> {
    if let Some(existing) = get_json::<Claim>(store, key).await? {
        if existing.owner == owner {
            store.delete(key).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsStore;

    #[tokio::test]
    async fn one_owner_at_a_time_until_the_claim_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        let ttl = Duration::from_millis(300);
        let settle = Duration::ZERO;
        assert_eq!(
            claim(&store, "runs/r/lease.json", "a", ttl, settle)
                .await
                .unwrap(),
            ClaimOutcome::Owned
        );
        match claim(&store, "runs/r/lease.json", "b", ttl, settle)
            .await
            .unwrap()
        {
            ClaimOutcome::HeldBy(c) => assert_eq!(c.owner, "a"),
            other => panic!("b took a live claim: {other:?}"),
        }
        // The owner renews; nobody else may.
        assert!(renew(&store, "runs/r/lease.json", "a", ttl).await.unwrap());
        assert!(!renew(&store, "runs/r/lease.json", "b", ttl).await.unwrap());
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        assert_eq!(
            claim(&store, "runs/r/lease.json", "b", ttl, settle)
                .await
                .unwrap(),
            ClaimOutcome::Owned
        );
        // The old owner finds out when it renews, and its release is a no-op.
        assert!(!renew(&store, "runs/r/lease.json", "a", ttl).await.unwrap());
        release(&store, "runs/r/lease.json", "a").await.unwrap();
        assert!(store.head("runs/r/lease.json").await.is_ok());
        release(&store, "runs/r/lease.json", "b").await.unwrap();
        assert!(store
            .head("runs/r/lease.json")
            .await
            .unwrap_err()
            .is_not_found());
    }

    #[tokio::test]
    async fn racing_claimants_get_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FsStore::open(dir.path()).await.unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let store = store.clone();
            tasks.spawn(async move {
                let owner = format!("replica-{i}");
                let outcome = claim(
                    store.as_ref(),
                    "x/claim.json",
                    &owner,
                    Duration::from_secs(60),
                    Duration::ZERO,
                )
                .await
                .unwrap();
                (owner, outcome)
            });
        }
        let mut winners = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (owner, outcome) = done.unwrap();
            if outcome == ClaimOutcome::Owned {
                winners.push(owner);
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let held: Claim = get_json(store.as_ref(), "x/claim.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held.owner, winners[0]);
    }
}
