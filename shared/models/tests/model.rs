//! Checkpoints, backbone loading, freezing, loss, pooling and Grad-CAM on
//! small configurations.

use std::collections::{BTreeMap, HashMap};

use chexvision_models::candle_core::{DType, Device, Tensor, Var};
use chexvision_models::candle_nn::VarBuilder;
use chexvision_models::{
    bce_with_logits, checkpoint_bytes, grad_cam, load_torchvision_backbone, overlay_png,
    parameter_count, read_meta, trainable_vars, varmap_tensors, Checkpoint, CheckpointMeta,
    ChestModel, DenseNetConfig, MaxPool2d, ModelConfig, ModelError, Normalization, SeResNetConfig,
};

const LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

fn small_densenet() -> ModelConfig {
    ModelConfig::Densenet(DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 2],
        num_init_features: 8,
        bn_size: 2,
        compression: 0.5,
    })
}

fn small_se_resnet(dropout: f32) -> ModelConfig {
    ModelConfig::SeResnet(SeResNetConfig {
        blocks: vec![1, 1],
        widths: vec![8, 16],
        stem_width: 8,
        se_reduction: 4,
        dropout,
    })
}

fn batch(n: usize, side: usize, seed: u64) -> Tensor {
    // A cheap deterministic pattern, different per seed.
    let len = n * 3 * side * side;
    let values: Vec<f32> = (0..len)
        .map(|i| {
            (((i as u64).wrapping_mul(2654435761).wrapping_add(seed * 97)) % 1000) as f32 / 500.0
                - 1.0
        })
        .collect();
    Tensor::from_vec(values, (n, 3, side, side), &Device::Cpu).unwrap()
}

fn meta(config: &ModelConfig) -> CheckpointMeta {
    CheckpointMeta {
        config: config.clone(),
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        input_size: 64,
        normalization: Normalization::imagenet(),
        parameter_count: 0,
        tensors_sha256: String::new(),
        extra: BTreeMap::from([("run_id".to_string(), "r-1".to_string())]),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
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

#[test]
fn densenet121_has_torchvision_shape() {
    let config = ModelConfig::densenet121();
    assert_eq!(config.num_features(), 1024);
    let (model, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    // torchvision densenet121 without its classifier: 6,953,856 parameters;
    // our heads add 1024·15 + 15.
    assert_eq!(parameter_count(&varmap), 6_953_856 + 1024 * 15 + 15);
    let names = varmap
        .data()
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    for key in [
        "features.conv0.weight",
        "features.denseblock1.denselayer1.norm1.running_mean",
        "features.denseblock4.denselayer16.conv2.weight",
        "features.transition1.conv.weight",
        "features.norm5.bias",
        "heads.multilabel.weight",
        "heads.binary.bias",
    ] {
        assert!(names.iter().any(|n| n == key), "missing {key}");
    }
    let out = model.forward_t(&batch(1, 64, 1), false).unwrap();
    assert_eq!(out.findings.dims(), &[1, 14]);
    assert_eq!(out.abnormal.dims(), &[1, 1]);
}

#[test]
fn se_resnet_standard_size() {
    let config = ModelConfig::se_resnet();
    let (_, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let count = parameter_count(&varmap);
    // ResNet-34 trunk (21.28 M) + SE + heads.
    assert!((21_000_000..22_000_000).contains(&count), "{count}");
}

#[test]
fn checkpoint_round_trip_keeps_running_statistics() {
    let config = small_densenet();
    let (model, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    // Train-mode passes move the running statistics away from (0, 1).
    for seed in 0..3 {
        model.forward_t(&batch(4, 48, seed), true).unwrap();
    }
    let tensors = varmap_tensors(&varmap);
    let mean = &tensors["features.norm5.running_mean"];
    assert!(
        mean.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0,
        "stats did not move"
    );

    let bytes = checkpoint_bytes(&tensors, &meta(&config)).unwrap();
    let read = read_meta(&bytes).unwrap();
    assert_eq!(read.config, config);
    assert_eq!(read.labels.len(), 14);
    assert_eq!(read.parameter_count, parameter_count(&varmap));
    assert_eq!(read.extra["run_id"], "r-1");

    let checkpoint = Checkpoint::from_bytes(&bytes, &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&checkpoint.tensors["features.norm5.running_mean"], mean),
        0.0
    );
    let restored = checkpoint.inference_model(&Device::Cpu).unwrap();
    let x = batch(2, 48, 9);
    let a = model.forward_t(&x, false).unwrap();
    let b = restored.forward_t(&x, false).unwrap();
    assert_eq!(max_abs_diff(&a.findings, &b.findings), 0.0);
    assert_eq!(max_abs_diff(&a.abnormal, &b.abnormal), 0.0);

    // And into a fresh trainable model, running statistics included.
    let (fresh, fresh_map) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    checkpoint.restore_into(&fresh_map).unwrap();
    let c = fresh.forward_t(&x, false).unwrap();
    assert_eq!(max_abs_diff(&a.findings, &c.findings), 0.0);
}

#[test]
fn checkpoint_mismatch_says_what_differs() {
    let config = small_densenet();
    let (_, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let bytes = checkpoint_bytes(&varmap_tensors(&varmap), &meta(&config)).unwrap();
    let checkpoint = Checkpoint::from_bytes(&bytes, &Device::Cpu).unwrap();
    checkpoint.expect(&config, &LABELS).unwrap();

    let err = checkpoint
        .expect(&small_se_resnet(0.0), &LABELS)
        .unwrap_err()
        .to_string();
    assert!(err.contains("densenet model, expected se_resnet"), "{err}");

    let mut other = small_densenet();
    if let ModelConfig::Densenet(c) = &mut other {
        c.growth_rate = 8;
    }
    let err = checkpoint.expect(&other, &LABELS).unwrap_err().to_string();
    assert!(
        err.contains("\"growth_rate\":4") && err.contains("\"growth_rate\":8"),
        "{err}"
    );

    let mut swapped = LABELS;
    swapped.swap(2, 3);
    let err = checkpoint
        .expect(&config, &swapped)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label order differs at output 2") && err.contains("Effusion"),
        "{err}"
    );
    let err = checkpoint
        .expect(&config, &LABELS[..13])
        .unwrap_err()
        .to_string();
    assert!(err.contains("14 findings, expected 13"), "{err}");

    // A model of another architecture refuses the tensors too.
    let (_, se_map) = ChestModel::init(&small_se_resnet(0.0), 14, &Device::Cpu).unwrap();
    let err = checkpoint.restore_into(&se_map).unwrap_err().to_string();
    assert!(err.contains("missing from the checkpoint"), "{err}");
}

#[test]
fn damaged_checkpoints_are_refused() {
    let config = small_densenet();
    let (_, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let bytes = checkpoint_bytes(&varmap_tensors(&varmap), &meta(&config)).unwrap();

    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let err = Checkpoint::from_bytes(&flipped, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("does not match the recorded"),
        "{err}"
    );

    for cut in [0, 7, 100, bytes.len() / 2] {
        let err = Checkpoint::from_bytes(&bytes[..cut], &Device::Cpu).unwrap_err();
        assert!(
            matches!(err, ModelError::CheckpointFormat(_)),
            "cut at {cut}: {err}"
        );
    }

    // A plain safetensors file (no metadata) is not a checkpoint.
    let plain = safetensors::serialize(
        [("x", Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap())],
        None,
    )
    .unwrap();
    let err = read_meta(&plain).unwrap_err().to_string();
    assert!(err.contains("no metadata"), "{err}");
}

#[test]
fn torchvision_backbone_loads_and_heads_stay_initialised() {
    let config = small_densenet();
    // A torchvision-style state dict: backbone, classifier, counters.
    let (_, source) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let mut state: BTreeMap<String, Tensor> = varmap_tensors(&source)
        .into_iter()
        .filter(|(k, _)| k.starts_with("features."))
        .collect();
    let features = config.num_features();
    state.insert(
        "classifier.weight".into(),
        Tensor::ones((1000, features), DType::F32, &Device::Cpu).unwrap(),
    );
    state.insert(
        "classifier.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
    );
    state.insert(
        "features.norm0.num_batches_tracked".into(),
        Tensor::zeros((), DType::I64, &Device::Cpu).unwrap(),
    );
    let bytes = safetensors::serialize(state.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();

    let (model, target) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let heads_before = varmap_tensors(&target)["heads.multilabel.weight"].clone();
    let report = load_torchvision_backbone(&target, &config, &bytes).unwrap();
    assert_eq!(
        report.ignored,
        vec![
            "classifier.bias",
            "classifier.weight",
            "features.norm0.num_batches_tracked"
        ]
    );
    assert_eq!(
        report.initialised,
        vec![
            "heads.binary.bias",
            "heads.binary.weight",
            "heads.multilabel.bias",
            "heads.multilabel.weight"
        ]
    );
    assert_eq!(report.loaded, state.len() - 3);
    let loaded = varmap_tensors(&target);
    assert_eq!(
        max_abs_diff(
            &loaded["features.conv0.weight"],
            &state["features.conv0.weight"]
        ),
        0.0
    );
    assert_eq!(
        max_abs_diff(&loaded["heads.multilabel.weight"], &heads_before),
        0.0
    );
    model.forward_t(&batch(1, 48, 3), false).unwrap();

    // A DenseNet of another shape: the first misfit is named.
    let bigger = ModelConfig::Densenet(DenseNetConfig {
        growth_rate: 8,
        ..match &config {
            ModelConfig::Densenet(c) => c.clone(),
            _ => unreachable!(),
        }
    });
    let (_, wrong) = ChestModel::init(&bigger, 14, &Device::Cpu).unwrap();
    let err = load_torchvision_backbone(&wrong, &bigger, &bytes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has shape") || err.contains("has no"), "{err}");
}

#[test]
fn frozen_backbone_gets_no_gradient() {
    let config = small_densenet();
    let (model, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let all = trainable_vars(&varmap, &config, false);
    let heads_only = trainable_vars(&varmap, &config, true);
    assert!(heads_only.iter().all(|(n, _)| n.starts_with("heads.")));
    assert_eq!(heads_only.len(), 4);
    assert!(all.len() > heads_only.len());
    assert!(all.iter().all(|(n, _)| !n.contains("running_")));

    let x = batch(2, 48, 5);
    let targets = Tensor::ones((2, 14), DType::F32, &Device::Cpu).unwrap();
    let loss_of = |model: &ChestModel| {
        let out = model.forward_t(&x, true).unwrap();
        bce_with_logits(&out.findings, &targets, None).unwrap()
    };
    model.set_backbone_frozen(true);
    let grads = loss_of(&model).backward().unwrap();
    let conv0 = &all
        .iter()
        .find(|(n, _)| n == "features.conv0.weight")
        .unwrap()
        .1;
    assert!(
        grads.get(conv0.as_tensor()).is_none(),
        "frozen backbone got a gradient"
    );
    assert!(grads.get(heads_only[3].1.as_tensor()).is_some());

    model.set_backbone_frozen(false);
    let grads = loss_of(&model).backward().unwrap();
    assert!(grads.get(conv0.as_tensor()).is_some());
}

#[test]
fn dropout_only_in_train_mode() {
    let config = small_se_resnet(0.5);
    let (model, _) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let x = batch(2, 48, 8);
    let e1 = model.forward_t(&x, false).unwrap().findings;
    let e2 = model.forward_t(&x, false).unwrap().findings;
    assert_eq!(max_abs_diff(&e1, &e2), 0.0);
    let t1 = model.forward_t(&x, true).unwrap().findings;
    let t2 = model.forward_t(&x, true).unwrap().findings;
    assert!(
        max_abs_diff(&t1, &t2) > 0.0,
        "dropout had no effect in train mode"
    );
}

#[test]
fn dropout_is_seeded_and_keeps_the_expected_value() {
    let config = small_se_resnet(0.5);
    let (model, _) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let x = batch(2, 48, 8);
    let fmap = model.feature_map(&x, false).unwrap();
    let train = |seed: u64| {
        model.set_dropout_seed(seed);
        model.heads_from_feature_map(&fmap, true).unwrap().findings
    };
    assert_eq!(
        max_abs_diff(&train(7), &train(7)),
        0.0,
        "same seed, same masks"
    );
    assert!(
        max_abs_diff(&train(7), &train(8)) > 0.0,
        "another seed, other masks"
    );
    // Successive passes after one seed draw different masks.
    model.set_dropout_seed(7);
    let first = model.heads_from_feature_map(&fmap, true).unwrap().findings;
    let second = model.heads_from_feature_map(&fmap, true).unwrap().findings;
    assert!(max_abs_diff(&first, &second) > 0.0);
    // Inverted dropout: the heads are linear, so the mean over many masks
    // approaches the eval output.
    let eval = model.heads_from_feature_map(&fmap, false).unwrap().findings;
    model.set_dropout_seed(1);
    let draws = 400;
    let mut sum = eval.zeros_like().unwrap();
    for _ in 0..draws {
        sum = (sum + model.heads_from_feature_map(&fmap, true).unwrap().findings).unwrap();
    }
    let mean = (sum / draws as f64).unwrap();
    let spread = max_abs_diff(&train(3), &eval);
    let error = max_abs_diff(&mean, &eval);
    assert!(
        error < spread / 4.0,
        "mean of {draws} draws off by {error} (one draw: {spread})"
    );
}

#[test]
fn inference_model_refuses_train_mode() {
    let config = small_densenet();
    let (_, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = varmap_tensors(&varmap).into_iter().collect();
    let model = ChestModel::new(
        &config,
        14,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let err = model
        .forward_t(&batch(2, 48, 1), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("running statistics held as variables"),
        "{err}"
    );
    let err = model
        .forward_t(
            &Tensor::zeros((1, 1, 48, 48), DType::F32, &Device::Cpu).unwrap(),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("[1, 1, 48, 48]"), "{err}");
}

#[test]
fn bce_is_stable_and_weighted() {
    let logits = Tensor::new(&[[100f32, -100.0, 0.0, 3.0]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[[0f32, 1.0, 1.0, 0.25]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[2f32, 3.0, 1.0, 4.0], &Device::Cpu).unwrap();
    let loss = bce_with_logits(&logits, &targets, Some(&w))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // Per element: x=100,y=0 → 100; x=-100,y=1,w=3 → 300; x=0,y=1 → ln 2;
    // x=3,y=.25,w=4: (1−y)·x + (1+(w−1)·y)·softplus(−x).
    let sp = (1.0f64 + (-3.0f64).exp()).ln();
    let expected = (100.0 + 300.0 + 2f64.ln() + (0.75 * 3.0 + 1.75 * sp)) / 4.0;
    assert!(
        (f64::from(loss) - expected).abs() < 1e-4,
        "{loss} vs {expected}"
    );
}

#[test]
fn padded_max_pool_custom_op_equals_composed_version() {
    let pool = MaxPool2d::new(3, 2, 1);
    // Distinct values (a permutation), so the first maximum is unique.
    let n = 2 * 3 * 9 * 11;
    let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32 - 300.0).collect();
    let x =
        Var::from_tensor(&Tensor::from_vec(values, (2, 3, 9, 11), &Device::Cpu).unwrap()).unwrap();
    let fast = pool.forward(x.as_tensor()).unwrap();
    let composed = pool.forward_composed(x.as_tensor()).unwrap();
    assert_eq!(fast.dims(), &[2, 3, 5, 6]);
    assert_eq!(max_abs_diff(&fast, &composed), 0.0);
    let weights = Tensor::arange(0f32, (2 * 3 * 5 * 6) as f32, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 5, 6))
        .unwrap();
    let g_fast = (&fast * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_comp = (&composed * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let a = g_fast.get(x.as_tensor()).unwrap();
    let b = g_comp.get(x.as_tensor()).unwrap();
    assert_eq!(max_abs_diff(a, b), 0.0);
    // Each output's gradient lands once: the sums agree.
    let total = weights.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(a.sum_all().unwrap().to_scalar::<f32>().unwrap(), total);
}

#[test]
fn grad_cam_is_the_weighted_feature_map() {
    let config = small_densenet();
    let (model, varmap) = ChestModel::init(&config, 14, &Device::Cpu).unwrap();
    for seed in 0..2 {
        model.forward_t(&batch(4, 64, seed), true).unwrap();
    }
    let x = batch(1, 64, 11);
    let err = grad_cam(&model, &x, 15).unwrap_err().to_string();
    assert!(err.contains("15 out of range"), "{err}");

    let tensors = varmap_tensors(&varmap);
    let fmap = model.feature_map(&x, false).unwrap(); // (1, C, h, w)
    let (_, c, h, w) = fmap.dims4().unwrap();
    // The model is randomly initialised: for some outputs no channel
    // supports the logit and the map is all zero, which Grad-CAM must say.
    let mut compared = 0;
    for output in 0..15usize {
        let cam = grad_cam(&model, &x, output).unwrap();
        assert_eq!(
            (cam.width, cam.height, cam.heatmap.len()),
            (64, 64, 64 * 64)
        );
        assert!(cam.heatmap.iter().all(|v| (0.0..=1.0).contains(v)));
        // For linear heads after average pooling, ∂y/∂A_c = W_c / (h·w):
        // the map is ReLU(Σ_c W_c·A_c) up to a positive scale.
        let weight = if output < 14 {
            tensors["heads.multilabel.weight"]
                .narrow(0, output, 1)
                .unwrap()
        } else {
            tensors["heads.binary.weight"].clone()
        };
        let manual = fmap
            .broadcast_mul(&weight.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .sum_keepdim(1)
            .unwrap()
            .relu()
            .unwrap()
            .upsample_bilinear2d(64, 64, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let max = manual.iter().copied().fold(0f32, f32::max);
        if max == 0.0 {
            assert!(
                cam.heatmap.iter().all(|&v| v == 0.0),
                "output {output}: expected an empty map"
            );
            continue;
        }
        compared += 1;
        let worst = manual
            .iter()
            .zip(&cam.heatmap)
            .map(|(m, g)| (m / max - g).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "output {output}: Grad-CAM differs from the weighted map by {worst}"
        );
        assert!(h * w > 1);
        let probs = model.forward_t(&x, false).unwrap().probabilities().unwrap();
        let p = probs
            .narrow(1, output, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!((p - cam.probability).abs() < 1e-6);
    }
    assert!(compared >= 3, "only {compared} outputs had a non-empty map");

    let cam = grad_cam(&model, &x, 2).unwrap();
    let gray: Vec<u8> = (0..64 * 64).map(|i| (i % 251) as u8).collect();
    let png_bytes = overlay_png(&gray, &cam, 0.5).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!(
        (info.width, info.height, info.color_type),
        (64, 64, png::ColorType::Rgb)
    );
    assert!(overlay_png(&gray[..10], &cam, 0.5).is_err());
}

#[test]
fn seeded_init_is_reproducible_and_follows_the_rules() {
    for config in [small_densenet(), small_se_resnet(0.0)] {
        let (_, a) = ChestModel::init_seeded(&config, 14, &Device::Cpu, 7).unwrap();
        let (_, b) = ChestModel::init_seeded(&config, 14, &Device::Cpu, 7).unwrap();
        let (_, c) = ChestModel::init_seeded(&config, 14, &Device::Cpu, 8).unwrap();
        let (ta, tb, tc) = (varmap_tensors(&a), varmap_tensors(&b), varmap_tensors(&c));
        for (name, t) in &ta {
            assert_eq!(
                max_abs_diff(t, &tb[name]),
                0.0,
                "{name} differs for the same seed"
            );
            // Random draws (conv and linear weights) change with the seed.
            if t.dims().len() >= 2 {
                assert!(
                    max_abs_diff(t, &tc[name]) > 0.0,
                    "{name} did not change with the seed"
                );
            }
        }
        // BatchNorm starts as the identity; head biases at zero.
        let bn = ta
            .keys()
            .find(|k| k.ends_with("running_var"))
            .unwrap()
            .clone();
        let prefix = bn.trim_end_matches(".running_var");
        let ones = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        };
        assert!(ones(&ta[&bn]) && ones(&ta[&format!("{prefix}.weight")]));
        let heads_bias = ta["heads.multilabel.bias"]
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(heads_bias, 0.0);
        // Kaiming: the first conv's standard deviation is about √(2 / fan).
        let conv = ta
            .iter()
            .find(|(k, t)| k.ends_with("weight") && t.dims().len() == 4)
            .unwrap()
            .1;
        let d = conv.dims().to_vec();
        let fan = match config {
            ModelConfig::Densenet(_) => d[1] * d[2] * d[3],
            ModelConfig::SeResnet(_) => d[0] * d[2] * d[3],
        };
        let std = conv
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        let want = (2.0 / fan as f32).sqrt();
        assert!(
            (std / want - 1.0).abs() < 0.15,
            "conv std {std}, expected about {want}"
        );
    }
}

#[test]
fn autocast_computes_convs_in_half_precision_and_trains_the_f32_variables() {
    use chexvision_models::autocast;
    use chexvision_models::candle_core::DType;
    // F16 here: candle's CPU matmul has no bf16 (the GPU runs bf16); the
    // casts and the gradient path are the same for both.
    for config in [small_densenet(), small_se_resnet(0.0)] {
        let (model, varmap) = ChestModel::init_seeded(&config, 14, &Device::Cpu, 5).unwrap();
        let x = batch(2, 48, 3);
        let full = model.forward_t(&x, false).unwrap();
        let half = autocast(Some(DType::F16), || model.forward_t(&x, false)).unwrap();
        assert_eq!(
            half.findings.dtype(),
            DType::F32,
            "outputs come back in f32"
        );
        let scale = full
            .findings
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let error = max_abs_diff(&full.findings, &half.findings);
        // bf16 keeps 8 bits of mantissa: about 0.4 % per rounding.
        assert!(error > 0.0, "autocast changed nothing");
        assert!(
            error < 0.05 * scale.max(1.0),
            "bf16 off by {error} (scale {scale})"
        );
        // Restored afterwards.
        let again = model.forward_t(&x, false).unwrap();
        assert_eq!(max_abs_diff(&full.findings, &again.findings), 0.0);
        // Train mode: every trainable f32 variable gets a gradient.
        let out = autocast(Some(DType::F16), || model.forward_t(&x, true)).unwrap();
        let loss = (out.findings.sqr().unwrap().mean_all().unwrap()
            + out.abnormal.sqr().unwrap().mean_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in chexvision_models::trainable_vars(&varmap, &config, false) {
            assert_eq!(var.dtype(), DType::F32, "{name}");
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(grad.dtype(), DType::F32, "{name}");
        }
    }
}
