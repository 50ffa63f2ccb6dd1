//! How long a `put` of a large object keeps the async runtime's thread from
//! running other tasks: a 1 ms ticker on a single-threaded runtime records
//! its longest gap while the put runs. Side by side, the same ticker while
//! the sha256 of the same bytes is computed on the runtime thread, as every
//! `put` did before hashing moved to a blocking thread.
//!
//! `cargo run --release -p chexvision-store --example runtime_stall -- [MiB] [s3]`
//! (`s3`: the store of `CHEXVISION_STORE`, e.g. the local stack's; default
//! a temporary folder).

use std::time::{Duration, Instant};

use bytes::Bytes;
use chexvision_config::{Loader, PlatformConfig};
use chexvision_store::ObjectStore;

/// Longest gap between ticks of a 1 ms interval while `work` runs.
async fn longest_stall<F: std::future::Future>(work: F) -> (Duration, F::Output) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        })
    };
    // Let the ticker start.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let output = work.await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    (ticker.await.unwrap_or_default(), output)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().map_or(Ok(64), |a| a.parse())?;
    let use_s3 = args.get(1).is_some_and(|a| a == "s3");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let store: std::sync::Arc<dyn ObjectStore> = if use_s3 {
            let config: PlatformConfig = Loader::new().load()?;
            chexvision_store::open(&format!("{}/stall-bench", config.store), &config.s3).await?
        } else {
            chexvision_store::open(
                &format!("file://{}", dir.path().display()),
                &Default::default(),
            )
            .await?
        };
        let data = Bytes::from(
            (0..mib * 1024 * 1024)
                .map(|i| (i * 31 % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let (inline, _) = longest_stall(async { chexvision_store::sha256_hex(&data) }).await;
        let (put, receipt) = longest_stall(store.put("stall/object.bin", data.clone())).await;
        receipt?;
        store.delete("stall/object.bin").await?;
        println!(
            "{mib} MiB into {}: longest stall of the runtime thread {:.1} ms during put \
             (hashing on the runtime thread, as before: {:.1} ms)",
            store.uri(""),
            put.as_secs_f64() * 1e3,
            inline.as_secs_f64() * 1e3
        );
        Ok(())
    })
}
