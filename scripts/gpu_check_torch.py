#!/usr/bin/env python3
"""PyTorch side of scripts/gpu_check.sh, on the same GPU as the Rust side.
One JSON line per measurement, as the Rust example gpu_check prints.

    python3 gpu_check_torch.py parity FIXTURES_DIR OUT.safetensors
    python3 gpu_check_torch.py train MODEL BATCH SIZE STEPS   # AMP bf16
    python3 gpu_check_torch.py infer MODEL BATCH SIZE REPS    # bf16 autocast, eval

parity: the small fixtures' models (scripts/make_model_fixtures.py) on the
GPU in f32 and under bf16 autocast, against the fixtures' CPU logits; the
GPU logits are written to OUT as `{name}.f32` / `{name}.bf16` for the Rust
side to compare with. train: one step as scripts/bench_train.py (forward,
BCE with pos_weight + 0.5 x BCE, backward, AdamW) under
torch.autocast(bfloat16); infer: the forward pass under no_grad. Timings
are medians after one warm-up, with torch.cuda.synchronize() around each.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_model_fixtures import DualDenseNet, SEResNet  # noqa: E402

DEVICE = "cuda"


def full_model(name):
    if name == "densenet121":
        return DualDenseNet(32, (6, 12, 24, 16), 64, 4)
    if name == "se_resnet":
        return SEResNet([3, 4, 6, 3], [64, 128, 256, 512], 64, 16, 0.3)
    raise SystemExit(f"unknown model {name}")


def small_model(name, config):
    if name == "densenet_small":
        return DualDenseNet(config["growth_rate"], tuple(config["block_config"]),
                            config["num_init_features"], config["bn_size"])
    return SEResNet(config["blocks"], config["widths"], config["stem_width"],
                    config["se_reduction"], config["dropout"])


def parity(fixtures, out):
    from safetensors import safe_open
    outputs = {}
    for name in ("densenet_small", "se_resnet_small"):
        path = f"{fixtures}/{name}.safetensors"
        with safe_open(path, "pt") as f:
            config = json.loads(f.metadata()["config"])
        net = small_model(name, config)
        net.load_state_dict(load_file(path), strict=True)
        net = net.to(DEVICE).eval()
        io = load_file(f"{fixtures}/{name}_io.safetensors")
        x = io["input"].to(DEVICE)
        want = io["eval.multilabel"].to(DEVICE)
        for precision in ("f32", "bf16"):
            with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16,
                                                 enabled=precision == "bf16"):
                findings, _ = net(x)
            findings = findings.float()
            outputs[f"{name}.{precision}"] = findings.cpu().contiguous()
            print(json.dumps({
                "check": "parity", "impl": "pytorch", "model": name, "precision": precision,
                "max_abs_diff_vs_fixture": float((findings - want).abs().max()),
                "reference_max_abs": float(want.abs().max()),
            }), flush=True)
    save_file(outputs, out)


def timed(step, reps):
    step()  # warm-up: cuDNN autotuning, allocator
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def train(model, batch, size, steps):
    torch.manual_seed(1)
    net = full_model(model).to(DEVICE).train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    y = (torch.rand(batch, 14, device=DEVICE) < 0.3).float()
    yb = y.amax(1, keepdim=True)
    pw = torch.full((14,), 2.0, device=DEVICE)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            ml, bl = net(x)
        loss = (F.binary_cross_entropy_with_logits(ml.float(), y, pos_weight=pw)
                + 0.5 * F.binary_cross_entropy_with_logits(bl.float(), yb))
        loss.backward()
        opt.step()

    median = timed(step, steps)
    print(json.dumps({"check": "train", "impl": "pytorch", "model": model, "precision": "bf16",
                      "batch": batch, "size": size, "median_ms": round(median, 2),
                      "images_per_s": round(batch * 1e3 / median, 1)}), flush=True)


def infer(model, batch, size, reps):
    torch.manual_seed(1)
    net = full_model(model).to(DEVICE).eval()
    x = torch.randn(batch, 3, size, size, device=DEVICE)

    def step():
        with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
            net(x)

    median = timed(step, reps)
    print(json.dumps({"check": "infer", "impl": "pytorch", "model": model, "precision": "bf16",
                      "batch": batch, "size": size, "median_ms": round(median, 2),
                      "images_per_s": round(batch * 1e3 / median, 1)}), flush=True)


def main():
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check_torch: torch.cuda.is_available() is False")
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "parity":
        parity(*args)
    elif cmd in ("train", "infer"):
        model, batch, size, reps = args[0], *map(int, args[1:4])
        (train if cmd == "train" else infer)(model, batch, size, reps)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
