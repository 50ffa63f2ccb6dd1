//! Numerical parity with PyTorch: fixtures from
//! `scripts/make_model_fixtures.py` (torchvision DenseNet, and the script's
//! SE-ResNet written in PyTorch), compared in eval mode, in train mode
//! (batch statistics, running statistics after the step) and on the
//! gradient of the training loss for every parameter.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use chexvision_models::candle_core::{DType, Device, Tensor};
use chexvision_models::candle_nn::VarBuilder;
use chexvision_models::{dual_head_loss, is_buffer, trainable_vars, ChestModel, ModelConfig};

const FINDINGS: usize = 14;
/// Largest absolute difference allowed for logits.
const LOGIT_TOLERANCE: f32 = 1e-4;
/// Largest difference allowed for a gradient or statistic, relative to the
/// reference tensor's largest magnitude.
const RELATIVE_TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Fixture {
    config: ModelConfig,
    weights: HashMap<String, Tensor>,
    io: HashMap<String, Tensor>,
}

fn load(dir: &Path, name: &str, architecture: &str) -> Fixture {
    let weights_path = dir.join(format!("{name}.safetensors"));
    let bytes =
        std::fs::read(&weights_path).unwrap_or_else(|e| panic!("{}: {e}", weights_path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("fixture header");
    let config_json = header.metadata().as_ref().expect("fixture metadata")["config"].clone();
    let mut config: serde_json::Value = serde_json::from_str(&config_json).expect("config json");
    config["architecture"] = architecture.into();
    let config: ModelConfig = serde_json::from_value(config).expect("config fits ModelConfig");
    let weights = chexvision_models::candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .expect("weights");
    let io = chexvision_models::candle_core::safetensors::load(
        dir.join(format!("{name}_io.safetensors")),
        &Device::Cpu,
    )
    .expect("io fixture");
    Fixture {
        config,
        weights,
        io,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Every tensor of the PyTorch state dict is one of ours, and the reverse
/// (torchvision's `num_batches_tracked` counters aside).
fn assert_same_names(fx: &Fixture, ours: &BTreeSet<String>) {
    let theirs: BTreeSet<String> = fx
        .weights
        .keys()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .cloned()
        .collect();
    let only_theirs: Vec<_> = theirs.difference(ours).collect();
    let only_ours: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        only_theirs.is_empty() && only_ours.is_empty(),
        "only in PyTorch: {only_theirs:?}; only ours: {only_ours:?}"
    );
}

fn check_eval(fx: &Fixture) -> f32 {
    let vb = VarBuilder::from_tensors(fx.weights.clone(), DType::F32, &Device::Cpu);
    let model = ChestModel::new(&fx.config, FINDINGS, vb).expect("model from PyTorch weights");
    let out = model.forward_t(&fx.io["input"], false).expect("forward");
    assert!(
        !out.findings.is_variable() && !out.findings.track_op(),
        "inference must not record a graph"
    );
    let d1 = max_abs_diff(&out.findings, &fx.io["eval.multilabel"]);
    let d2 = max_abs_diff(&out.abnormal, &fx.io["eval.binary"]);
    let d = d1.max(d2);
    assert!(d <= LOGIT_TOLERANCE, "eval logits differ by {d}");
    d
}

/// Our float32 gradients and PyTorch's, each held to the float64 truth.
#[derive(Default)]
struct Float64Report {
    /// (tensor, our error, PyTorch float32's error), relative to the
    /// tensor's largest magnitude.
    errors: Vec<(String, f32, f32)>,
}

/// The error of a correct float32 gradient against float64 depends on the
/// order of its sums (the kernels the CPU selects): on one tensor ours may
/// miss by many times what PyTorch's misses by, or the reverse, at random.
/// What holds for any correct implementation is the distribution: our
/// median and 90th-percentile errors within this factor of PyTorch's.
const QUANTILE_FACTOR: f32 = 3.0;
/// Below this relative error both are simply right.
const ERROR_FLOOR: f32 = 1e-5;

impl Float64Report {
    fn record(&mut self, name: &str, ours: f32, torch: f32) {
        self.errors.push((name.to_string(), ours, torch));
    }

    fn quantile(values: impl Iterator<Item = f32>, q: f64) -> f32 {
        let mut values: Vec<f32> = values.collect();
        values.sort_by(f32::total_cmp);
        values[((values.len() - 1) as f64 * q).round() as usize]
    }

    /// Panics on gradients that are wrong, not merely rounded differently
    /// (see [`Float64Report::problems`]).
    fn check(&self) {
        let closer = self.errors.iter().filter(|(_, o, t)| o <= t).count();
        let (worst_name, worst) = self
            .errors
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, o, _)| (n.as_str(), *o))
            .unwrap_or(("", 0.0));
        let torch_worst = self.errors.iter().map(|e| e.2).fold(0f32, f32::max);
        let q = |ours: bool, q: f64| {
            Self::quantile(self.errors.iter().map(|e| if ours { e.1 } else { e.2 }), q)
        };
        println!(
            "  against float64 ({}): ours worst {worst:.2e} ({worst_name}), PyTorch float32 worst {torch_worst:.2e}; \
             median {:.2e} / {:.2e}, 90th percentile {:.2e} / {:.2e} (ours / PyTorch); ours closer on {closer} of {} tensors",
            gemm_kernels(),
            q(true, 0.5),
            q(false, 0.5),
            q(true, 0.9),
            q(false, 0.9),
            self.errors.len(),
        );
        let problems = self.problems();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    /// What makes these gradients wrong, if anything: a worst error above
    /// 1.5 × PyTorch float32's worst (one tensor badly off), or a median or
    /// 90th-percentile error above [`QUANTILE_FACTOR`] × PyTorch's (a
    /// systematic error, which shifts every tensor: a missing term, a
    /// transposed weight, a scale off by a few per cent).
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let worst = self.errors.iter().map(|e| e.1).fold(0f32, f32::max);
        let torch_worst = self.errors.iter().map(|e| e.2).fold(0f32, f32::max);
        if worst > 1.5 * torch_worst.max(RELATIVE_TOLERANCE) {
            problems.push(format!(
                "worst gradient error {worst:.2e} exceeds 1.5 × PyTorch float32's worst {torch_worst:.2e}"
            ));
        }
        for q in [0.5, 0.9] {
            let ours = Self::quantile(self.errors.iter().map(|e| e.1), q);
            let torch = Self::quantile(self.errors.iter().map(|e| e.2), q);
            if ours > QUANTILE_FACTOR * torch.max(ERROR_FLOOR) {
                problems.push(format!(
                    "quantile {q} of the gradient errors {ours:.2e} exceeds {QUANTILE_FACTOR} × PyTorch float32's {torch:.2e}"
                ));
            }
        }
        problems
    }
}

/// The matrix-multiply kernels gemm runs on this CPU with this build.
fn gemm_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "gemm-avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return "gemm AVX-512 kernels (x86-64-v4)";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "gemm FMA kernels (x86-64-v3)";
        }
        "gemm scalar kernels"
    }
    #[cfg(not(target_arch = "x86_64"))]
    "gemm kernels of this architecture"
}

struct TrainReport {
    logits: f32,
    loss: f32,
    worst_grad: (String, f32),
    worst_stat: (String, f32),
    tensors: usize,
}

fn check_train(fx: &Fixture) -> TrainReport {
    let (model, varmap) = ChestModel::init(&fx.config, FINDINGS, &Device::Cpu).expect("model");
    let names: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert_same_names(fx, &names);
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&fx.weights[name]).unwrap();
    }

    let out = model
        .forward_t(&fx.io["input"], true)
        .expect("train forward");
    let logits = max_abs_diff(&out.findings, &fx.io["train.multilabel"])
        .max(max_abs_diff(&out.abnormal, &fx.io["train.binary"]));
    assert!(
        logits <= LOGIT_TOLERANCE,
        "train-mode logits differ by {logits}"
    );
    let loss = dual_head_loss(
        &out,
        &fx.io["target_multilabel"],
        &fx.io["target_binary"],
        Some(&fx.io["pos_weight"]),
        0.5,
    )
    .unwrap();
    let loss_diff = max_abs_diff(&loss.reshape(1).unwrap(), &fx.io["train.loss"]);
    assert!(loss_diff <= 1e-5, "loss differs by {loss_diff}");

    let grads = loss.backward().unwrap();
    let mut worst_grad = (String::new(), 0f32);
    let trainable = trainable_vars(&varmap, &fx.config, false);
    // With a float64 reference (full-size fixtures) both float32 gradients
    // are held to the float64 truth. Train-mode BatchNorm at batch 2 over
    // 100+ layers is ill-conditioned: PyTorch's own float32 gradients miss
    // the truth by up to percents, tensor by tensor at random, and which of
    // two correct float32 implementations is closer on a tensor depends on
    // the kernels the CPU selects. So ours is held to PyTorch's error per
    // tensor, with room for rounding (see `Float64Report::check`).
    let mut float64 = Float64Report::default();
    // The same check on our gradients made 2 % wrong: it must fail.
    let mut wrong = Float64Report::default();
    for (name, var) in &trainable {
        let reference = &fx.io[&format!("grad.{name}")];
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let rel = max_abs_diff(grad, reference) / max_abs(reference).max(1e-12);
        if let Some(truth) = fx.io.get(&format!("grad64.{name}")) {
            let scale = max_abs(truth).max(1e-12);
            let ours = max_abs_diff(grad, truth) / scale;
            let torch = max_abs_diff(reference, truth) / scale;
            float64.record(name, ours, torch);
            let skewed = grad.affine(1.02, 0.0).unwrap();
            wrong.record(name, max_abs_diff(&skewed, truth) / scale, torch);
        } else {
            assert!(
                rel <= RELATIVE_TOLERANCE,
                "gradient of {name} differs by {rel} of its largest magnitude"
            );
        }
        if rel > worst_grad.1 {
            worst_grad = (name.clone(), rel);
        }
    }
    if !float64.errors.is_empty() {
        float64.check();
        let caught = wrong.problems();
        println!("  the same gradients 2 % off: {caught:?}");
        assert!(!caught.is_empty(), "the check passes gradients 2 % off");
    }
    // Every PyTorch parameter has a gradient here.
    let grad_refs = fx.io.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(grad_refs, trainable.len());

    let mut worst_stat = (String::new(), 0f32);
    let mut stats = 0;
    for (name, var) in varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| is_buffer(n))
    {
        let reference = &fx.io[&format!("after.{name}")];
        let rel = max_abs_diff(var.as_tensor(), reference) / max_abs(reference).max(1e-12);
        assert!(
            rel <= RELATIVE_TOLERANCE,
            "running statistic {name} differs by {rel} after the step"
        );
        if rel > worst_stat.1 {
            worst_stat = (name.clone(), rel);
        }
        stats += 1;
    }
    assert!(stats > 0);
    TrainReport {
        logits,
        loss: loss_diff,
        worst_grad,
        worst_stat,
        tensors: trainable.len(),
    }
}

fn check_all(dir: &Path, name: &str, architecture: &str) {
    let fx = load(dir, name, architecture);
    let eval = check_eval(&fx);
    let train = check_train(&fx);
    println!(
        "{name}: eval logits max diff {eval:.2e}; train logits {:.2e}, loss {:.2e}; {} gradients, worst {} at {:.2e} (relative); worst running stat {} at {:.2e}",
        train.logits, train.loss, train.tensors, train.worst_grad.0, train.worst_grad.1, train.worst_stat.0, train.worst_stat.1
    );
}

#[test]
fn small_densenet_matches_torchvision() {
    check_all(&fixtures(), "densenet_small", "densenet");
}

#[test]
fn small_se_resnet_matches_pytorch() {
    check_all(&fixtures(), "se_resnet_small", "se_resnet");
}

/// Full size: `python3 scripts/make_model_fixtures.py --full DIR`, then
/// `CHEXVISION_FULL_MODEL_FIXTURES=DIR cargo test --release -p chexvision-models --test parity -- --ignored`.
/// `.ci/run` does this when PyTorch installs.
#[test]
#[ignore = "needs fixtures generated by scripts/make_model_fixtures.py --full"]
fn densenet121_matches_torchvision() {
    let dir = std::env::var("CHEXVISION_FULL_MODEL_FIXTURES")
        .expect("set CHEXVISION_FULL_MODEL_FIXTURES");
    check_all(Path::new(&dir), "densenet121", "densenet");
}

#[test]
#[ignore = "needs fixtures generated by scripts/make_model_fixtures.py --full"]
fn full_se_resnet_matches_pytorch() {
    let dir = std::env::var("CHEXVISION_FULL_MODEL_FIXTURES")
        .expect("set CHEXVISION_FULL_MODEL_FIXTURES");
    check_all(Path::new(&dir), "se_resnet", "se_resnet");
}

/// The fused CPU path gives PyTorch's eval logits too.
fn check_cpu_inference(fx: &Fixture) -> f32 {
    let tensors = fx.weights.clone().into_iter().collect();
    let fast =
        chexvision_models::CpuInference::new(&fx.config, FINDINGS, &tensors).expect("fused plan");
    let out = fast.forward(&fx.io["input"]).expect("fused forward");
    let d = max_abs_diff(&out.findings, &fx.io["eval.multilabel"])
        .max(max_abs_diff(&out.abnormal, &fx.io["eval.binary"]));
    assert!(d <= LOGIT_TOLERANCE, "fused CPU logits differ by {d}");
    // A single image takes the row-split, all-threads path.
    let one = fast
        .forward(&fx.io["input"].narrow(0, 1, 1).unwrap())
        .expect("single image");
    let d1 = max_abs_diff(
        &one.findings,
        &fx.io["eval.multilabel"].narrow(0, 1, 1).unwrap(),
    );
    assert!(
        d1 <= LOGIT_TOLERANCE,
        "fused CPU logits of one image differ by {d1}"
    );
    d.max(d1)
}

#[test]
fn fused_cpu_inference_matches_pytorch() {
    for (name, arch) in [
        ("densenet_small", "densenet"),
        ("se_resnet_small", "se_resnet"),
    ] {
        let fx = load(&fixtures(), name, arch);
        let d = check_cpu_inference(&fx);
        println!("{name}: fused CPU logits max diff {d:.2e}");
    }
}

#[test]
#[ignore = "needs fixtures generated by scripts/make_model_fixtures.py --full"]
fn full_fused_cpu_inference_matches_pytorch() {
    let dir = std::env::var("CHEXVISION_FULL_MODEL_FIXTURES")
        .expect("set CHEXVISION_FULL_MODEL_FIXTURES");
    for (name, arch) in [("densenet121", "densenet"), ("se_resnet", "se_resnet")] {
        let fx = load(Path::new(&dir), name, arch);
        let d = check_cpu_inference(&fx);
        println!("{name}: fused CPU logits max diff {d:.2e}");
    }
}

/// `scripts/convert_torchvision_weights.py` output of a torchvision-style
/// legacy `.pth` (written by the fixture script) loads into DenseNet-121's
/// backbone with every tensor in place.
#[test]
#[ignore = "needs fixtures generated by scripts/make_model_fixtures.py --full and the converter"]
fn converted_torchvision_weights_load() {
    let dir = PathBuf::from(
        std::env::var("CHEXVISION_FULL_MODEL_FIXTURES")
            .expect("set CHEXVISION_FULL_MODEL_FIXTURES"),
    );
    let bytes =
        std::fs::read(dir.join("densenet121_converted.safetensors")).expect("converted file");
    let fx = load(&dir, "densenet121", "densenet");
    let (_, varmap) = ChestModel::init(&fx.config, FINDINGS, &Device::Cpu).unwrap();
    let report = chexvision_models::load_torchvision_backbone(&varmap, &fx.config, &bytes)
        .expect("backbone loads");
    assert_eq!(report.initialised.len(), 4, "{:?}", report.initialised);
    assert!(report
        .ignored
        .iter()
        .all(|k| k.starts_with("classifier.") || k.ends_with("num_batches_tracked")));
    assert!(report.ignored.contains(&"classifier.weight".to_string()));
    let mut checked = 0;
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.starts_with("heads.") {
            continue;
        }
        // The legacy file was saved after the train-mode step: its running
        // statistics are the `after.` ones.
        let expected = if is_buffer(name) {
            &fx.io[&format!("after.{name}")]
        } else {
            &fx.weights[name]
        };
        assert_eq!(max_abs_diff(var.as_tensor(), expected), 0.0, "{name}");
        checked += 1;
    }
    assert_eq!(checked, report.loaded);
    println!(
        "converted torchvision weights: {} tensors loaded, {} ignored",
        report.loaded,
        report.ignored.len()
    );
}
