//! The store suite against the local filesystem implementation.

mod suite;

use chexvision_store::FsStore;

async fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn round_trip_with_prefixes() {
    let (_dir, store) = store().await;
    suite::round_trip_with_prefixes(&store).await;
}

#[tokio::test]
async fn missing_key_is_not_found() {
    let (_dir, store) = store().await;
    suite::missing_key_is_not_found(&store).await;
}

#[tokio::test]
async fn large_multipart_upload() {
    let (_dir, store) = store().await;
    suite::large_multipart_upload(&store, 100 * 1024 * 1024).await;
}

#[tokio::test]
async fn aborted_upload_leaves_no_object() {
    let (dir, store) = store().await;
    suite::aborted_upload_leaves_no_object(&store).await;
    // No temporary files are left behind either.
    let temp = std::fs::read_dir(dir.path().join(".chexvision-tmp"))
        .unwrap()
        .count();
    assert_eq!(temp, 0);
}

#[tokio::test]
async fn open_by_uri_and_bad_uris() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("file://{}", dir.path().display());
    let store = chexvision_store::open(&uri, &Default::default())
        .await
        .unwrap();
    let receipt = store
        .put("x/y", bytes::Bytes::from_static(b"z"))
        .await
        .unwrap();
    assert_eq!(receipt.uri, format!("{uri}/x/y"));
    assert!(dir.path().join("x/y").is_file());

    for bad in ["ftp://x", "file://", "s3://"] {
        let err = chexvision_store::open(bad, &Default::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[tokio::test]
async fn unwritable_root_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let err = FsStore::open(file.join("store")).await.unwrap_err();
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[tokio::test]
async fn put_if_absent_keeps_the_first_writer() {
    let (dir, store) = store().await;
    suite::put_if_absent_keeps_the_first_writer(&store, true).await;
    let temp = std::fs::read_dir(dir.path().join(".chexvision-tmp"))
        .unwrap()
        .count();
    assert_eq!(temp, 0, "no temporary file left behind");
}
