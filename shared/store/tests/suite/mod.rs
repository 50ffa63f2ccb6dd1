//! One behaviour suite for every `ObjectStore` implementation.

#![allow(dead_code)] // each test binary uses the part of the suite it needs

use bytes::Bytes;
use chexvision_store::{put_reader, sha256_hex, ObjectStore, StoreError};
use sha2::{Digest, Sha256};

/// A prefix no other test run uses, so suites can share one bucket.
pub fn unique_prefix(name: &str) -> String {
    format!("test-{name}-{:016x}", rand::random::<u64>())
}

pub async fn round_trip_with_prefixes(store: &dyn ObjectStore) {
    let objects = [
        ("datasets/a/manifest.json", &b"{\"rows\": 3}"[..]),
        (
            "datasets/a/raw/train/shard-00000.parquet",
            &b"shard zero"[..],
        ),
        (
            "datasets/a/raw/train/shard-00001.parquet",
            &b"shard one"[..],
        ),
        ("datasets/ab/manifest.json", &b"other dataset"[..]),
        ("runs/r1/history.json", &b"[]"[..]),
    ];
    for (key, data) in objects {
        let receipt = store.put(key, Bytes::from_static(data)).await.unwrap();
        assert_eq!(receipt.sha256, sha256_hex(data), "{key}");
        assert_eq!(receipt.size, data.len() as u64);
        assert!(
            receipt.uri.ends_with(key),
            "{} does not end with {key}",
            receipt.uri
        );
    }
    for (key, data) in objects {
        assert_eq!(
            store.get(key).await.unwrap(),
            Bytes::from_static(data),
            "{key}"
        );
        assert_eq!(store.head(key).await.unwrap().size, data.len() as u64);
    }

    let keys = |list: Vec<chexvision_store::ObjectMeta>| -> Vec<String> {
        list.into_iter().map(|m| m.key).collect()
    };
    assert_eq!(
        keys(store.list("datasets/a/").await.unwrap()),
        vec![
            "datasets/a/manifest.json",
            "datasets/a/raw/train/shard-00000.parquet",
            "datasets/a/raw/train/shard-00001.parquet",
        ]
    );
    // A prefix is a string prefix, not only a folder.
    assert_eq!(
        keys(store.list("datasets/a").await.unwrap()).len(),
        4,
        "datasets/a matches datasets/a/... and datasets/ab/..."
    );
    assert_eq!(
        keys(store.list("datasets/a/raw/train/shard-0000").await.unwrap()).len(),
        2
    );
    assert!(store.list("nothing/here/").await.unwrap().is_empty());
    assert_eq!(store.list("").await.unwrap().len(), objects.len());

    // Overwrite replaces the whole object.
    store
        .put("runs/r1/history.json", Bytes::from_static(b"[1]"))
        .await
        .unwrap();
    assert_eq!(
        store.get("runs/r1/history.json").await.unwrap(),
        Bytes::from_static(b"[1]")
    );

    // Delete, and deleting again is fine.
    store.delete("runs/r1/history.json").await.unwrap();
    store.delete("runs/r1/history.json").await.unwrap();
    assert!(store
        .get("runs/r1/history.json")
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(store.list("runs/").await.unwrap().len(), 0);

    // Bad keys are refused with the reason, before any I/O.
    let err = store.put("../escape", Bytes::new()).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    assert!(err.to_string().contains("'..'"), "{err}");
}

pub async fn missing_key_is_not_found(store: &dyn ObjectStore) {
    for result in [
        store.get("no/such/object").await.map(|_| ()),
        store.head("no/such/object").await.map(|_| ()),
    ] {
        match result {
            Err(StoreError::NotFound { key, .. }) => assert_eq!(key, "no/such/object"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    // A key that is only a prefix of other objects is not an object either.
    store
        .put("folder/inside", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(store.get("folder").await.unwrap_err().is_not_found());
    assert!(store.head("folder").await.unwrap_err().is_not_found());
}

/// Deterministic pseudo-random bytes (xorshift), so content is not compressible
/// or trivially repetitive.
fn fill(buffer: &mut [u8], state: &mut u64) {
    for chunk in buffer.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Streams `total` bytes through a multipart upload and checks size and sha256
/// of what the store returns.
pub async fn large_multipart_upload(store: &dyn ObjectStore, total: usize) {
    let key = "big/object.bin";
    let mut upload = store.upload(key).await.unwrap();
    let mut expected = Sha256::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    // Odd chunk size so part boundaries never line up with writes.
    let mut chunk = vec![0u8; 1_000_003];
    let mut written = 0;
    while written < total {
        let n = chunk.len().min(total - written);
        fill(&mut chunk[..n], &mut state);
        expected.update(&chunk[..n]);
        upload.write(&chunk[..n]).await.unwrap();
        written += n;
    }
    // Not visible before finish.
    assert!(store.head(key).await.unwrap_err().is_not_found());
    let receipt = upload.finish().await.unwrap();
    let expected = hex::encode(expected.finalize());
    assert_eq!(receipt.size, total as u64);
    assert_eq!(receipt.sha256, expected);
    assert_eq!(store.head(key).await.unwrap().size, total as u64);
    let data = store.get(key).await.unwrap();
    assert_eq!(data.len(), total);
    assert_eq!(sha256_hex(&data), expected, "bytes read back differ");
    store.delete(key).await.unwrap();
}

/// Writes more than one part, then aborts: nothing may remain.
pub async fn aborted_upload_leaves_no_object(store: &dyn ObjectStore) {
    let mut upload = store.upload("partial/aborted.bin").await.unwrap();
    let chunk = vec![7u8; 3 * 1024 * 1024];
    for _ in 0..4 {
        upload.write(&chunk).await.unwrap();
    }
    upload.abort().await.unwrap();
    assert!(store
        .head("partial/aborted.bin")
        .await
        .unwrap_err()
        .is_not_found());

    // A dropped upload (a cancelled task) behaves the same.
    let mut upload = store.upload("partial/dropped.bin").await.unwrap();
    for _ in 0..4 {
        upload.write(&chunk).await.unwrap();
    }
    drop(upload);
    assert!(store
        .head("partial/dropped.bin")
        .await
        .unwrap_err()
        .is_not_found());
    assert!(store.list("partial/").await.unwrap().is_empty());

    // A failing source aborts the upload it was streaming into.
    struct Failing(usize);
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("source broke")));
            }
            self.0 -= 1;
            buf.put_slice(&[1u8; 1024 * 1024][..buf.remaining().min(1024 * 1024)]);
            std::task::Poll::Ready(Ok(()))
        }
    }
    let err = put_reader(store, "partial/from-reader.bin", Failing(12))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("source broke"), "{err}");
    assert!(store.list("partial/").await.unwrap().is_empty());

    // And a reader that succeeds gives the whole object.
    let data = vec![42u8; 2_500_000];
    let receipt = put_reader(store, "partial/ok.bin", &data[..])
        .await
        .unwrap();
    assert_eq!(receipt.sha256, sha256_hex(&data));
    store.delete("partial/ok.bin").await.unwrap();
}

/// `put_if_absent` writes a new key and refuses an existing one, leaving it
/// as it was. `enforced`: whether the store is expected to honour the
/// condition (a server that ignores `If-None-Match` overwrites).
pub async fn put_if_absent_keeps_the_first_writer(store: &dyn ObjectStore, enforced: bool) {
    let key = "claims/first.json";
    let receipt = store
        .put_if_absent(key, Bytes::from_static(b"first"))
        .await
        .expect("a new key is written");
    assert_eq!(receipt.size, 5);
    let second = store
        .put_if_absent(key, Bytes::from_static(b"second"))
        .await;
    if enforced {
        let err = second.expect_err("an existing key is refused");
        assert!(err.is_exists(), "{err}");
        assert!(err.to_string().contains(key), "{err}");
        assert_eq!(store.get(key).await.unwrap(), Bytes::from_static(b"first"));
    } else {
        // Either honoured, or a plain write: never a third outcome.
        let now = store.get(key).await.unwrap();
        match second {
            Ok(_) => {
                eprintln!("this server does not enforce If-None-Match: the second write won");
                assert_eq!(now, Bytes::from_static(b"second"));
            }
            Err(err) => {
                assert!(err.is_exists(), "{err}");
                assert_eq!(now, Bytes::from_static(b"first"));
            }
        }
    }
}
