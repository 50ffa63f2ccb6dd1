//! Evaluation speed for `scripts/bench_evaluate.sh`: a DenseNet-121
//! (seeded random weights; speed does not depend on them) scores N test
//! images at 320 px through the whole evaluation path (ready shards in a
//! local store, streamed, decoded, the fused CPU forward), without and with
//! test-time augmentation. Prints one JSON line per setting and leaves, in
//! OUT, what the PyTorch loop needs: `checkpoint.safetensors`,
//! `images.u8` (N × 320 × 320 gray) and our probabilities
//! (`ours-plain.f32`, `ours-tta.f32`, N × 15) to compare with.
//!
//! `cargo run --profile ci -p chexvision-evaluator --example bench_evaluate -- OUT N`

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use chexvision_dataset::{
    ready_manifest_key, ready_shard_key, write_shard, ImageFormat, LabelSet, Manifest,
    ManifestShard, ManifestSource, ReadyManifest, ShardOptions, ShardRow, Split, LABELS,
};
use chexvision_evaluator::{
    evaluate, CheckpointChoice, EvalHooks, EvaluationRequest, EvaluationSettings, ModelChoice,
};
use chexvision_models::candle_core::Device;
use chexvision_models::{
    checkpoint_bytes, varmap_tensors, CheckpointMeta, ChestModel, ModelConfig, Normalization,
};
use chexvision_store::{FsStore, ObjectStore};

const SIDE: u32 = 320;

/// A smooth gray image with some structure (speed does not depend on it).
fn image(index: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((SIDE * SIDE) as usize);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let v = 128.0
                + 60.0 * ((x as f32 * 0.05 + index as f32).sin() * (y as f32 * 0.03).cos())
                + ((x * 7 + y * 13 + index * 31) % 17) as f32;
            pixels.push(v.clamp(0.0, 255.0) as u8);
        }
    }
    pixels
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, n] = args.as_slice() else {
        bail!("usage: bench_evaluate OUT N");
    };
    let n: u32 = n.parse().context("N")?;
    let out = std::path::PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let store_dir = tempfile::tempdir()?;
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(store_dir.path()).await?);

    // The dataset: N test images and 32 validation images, ready at 320 px.
    let mut manifest = Manifest::new(
        "bench",
        true,
        ManifestSource {
            format: "synthetic".into(),
            uri: "bench://".into(),
        },
    );
    let mut raw = Vec::with_capacity((n * SIDE * SIDE) as usize);
    for (split, count) in [(Split::Validation, 32u32), (Split::Test, n)] {
        let rows: Vec<ShardRow> = (0..count)
            .map(|i| {
                let pixels = image(i + if split == Split::Test { 1000 } else { 0 });
                if split == Split::Test {
                    raw.extend_from_slice(&pixels);
                }
                ShardRow {
                    filename: format!("{}-{i:05}.png", split.name()),
                    patient_id: format!("{}", i / 2),
                    follow_up: 0,
                    labels: LabelSet::from_bits((i % 7) as u16),
                    split,
                    view_position: "PA".into(),
                    age: None,
                    sex: "F".into(),
                    original_width: SIDE,
                    original_height: SIDE,
                    image_format: ImageFormat::Gray8,
                    image: Bytes::from(pixels),
                }
            })
            .collect();
        for r in &rows {
            manifest.count_row(split, r.labels);
        }
        for (index, chunk) in rows.chunks(64).enumerate() {
            let key = ready_shard_key("bench", SIDE, split, index as u32);
            store
                .put(
                    &key,
                    Bytes::from(write_shard(chunk, &ShardOptions::default())?),
                )
                .await?;
            manifest.shards.push(ManifestShard {
                key,
                uri: String::new(),
                split: split.name().into(),
                index: index as u32,
                sha256: String::new(),
                size_bytes: 0,
                rows: chunk.len() as u64,
            });
        }
    }
    let ready = ReadyManifest {
        image_size_px: SIDE,
        raw_manifest_sha256: "0".repeat(64),
        manifest,
    };
    store
        .put(
            &ready_manifest_key("bench", SIDE),
            Bytes::from(serde_json::to_vec(&ready)?),
        )
        .await?;
    std::fs::write(out.join("images.u8"), &raw)?;

    // The checkpoint and a run that owns it.
    let config = ModelConfig::densenet121();
    let (_, varmap) = ChestModel::init_seeded(&config, LABELS.len(), &Device::Cpu, 7)?;
    let meta = CheckpointMeta {
        config: config.clone(),
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        input_size: SIDE as usize,
        normalization: Normalization::imagenet(),
        parameter_count: 0,
        tensors_sha256: String::new(),
        extra: BTreeMap::new(),
    };
    let bytes = checkpoint_bytes(&varmap_tensors(&varmap), &meta)?;
    std::fs::write(out.join("checkpoint.safetensors"), &bytes)?;
    let key = "runs/bench/checkpoints/epoch-000.safetensors";
    store.put(key, Bytes::from(bytes)).await?;
    let settings = chexvision_trainer::TrainSettings {
        image_size: SIDE,
        ..Default::default()
    };
    let state = chexvision_trainer::RunState::accepted("bench", "bench", true, &settings, None);
    chexvision_trainer::write_run_state(store.as_ref(), &state).await?;

    for tta in [false, true] {
        let request = EvaluationRequest {
            model: ModelChoice {
                run_id: "bench".into(),
                checkpoint: CheckpointChoice::Key(key.into()),
                expected_sha256: None,
            },
            ensemble: Vec::new(),
            dataset_id: None,
            settings: EvaluationSettings {
                tta,
                plots: false,
                batch_size: 16,
                ..EvaluationSettings::default()
            },
        };
        let store = store.clone();
        let runtime = tokio::runtime::Handle::current();
        let outcome = tokio::task::spawn_blocking(move || {
            evaluate(
                store,
                runtime,
                &request,
                &Device::Cpu,
                EvalHooks {
                    progress: &mut |_| {},
                    interrupted: &|| false,
                },
            )
        })
        .await??;
        let probabilities: Vec<u8> = outcome
            .scores
            .probabilities
            .iter()
            .flat_map(|p| (*p as f32).to_le_bytes())
            .collect();
        let name = if tta { "tta" } else { "plain" };
        std::fs::write(out.join(format!("ours-{name}.f32")), probabilities)?;
        let t = &outcome.report.timings;
        println!(
            "{{\"impl\":\"ours\",\"tta\":{tta},\"images\":{},\"seconds\":{:.2},\"images_per_second\":{:.2},\"threads\":{}}}",
            outcome.report.images,
            t.scoring_seconds,
            t.images_per_second,
            rayon::current_num_threads()
        );
    }
    Ok(())
}
