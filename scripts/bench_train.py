#!/usr/bin/env python3
"""PyTorch side of scripts/bench_train.sh: one training step (forward, BCE
with pos_weight + 0.5 x BCE, backward, AdamW) per timing, train mode, after
WARMUP untimed steps (default 1).

    python3 scripts/bench_train.py MODEL BATCH SIZE STEPS THREADS [WARMUP]
"""

import json
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_model_fixtures import DualDenseNet, SEResNet  # noqa: E402


def main():
    model, batch, size, steps, threads = sys.argv[1], *map(int, sys.argv[2:6])
    warmup = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net = DualDenseNet(32, (6, 12, 24, 16), 64, 4) if model == "densenet121" else SEResNet([3, 4, 6, 3], [64, 128, 256, 512], 64, 16, 0.3)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 14) < 0.3).float() * 0.85 + 0.05
    yb = y.amax(1, keepdim=True)
    pw = torch.full((14,), 2.0)

    def step():
        opt.zero_grad(set_to_none=True)
        ml, bl = net(x)
        loss = F.binary_cross_entropy_with_logits(ml, y, pos_weight=pw) + 0.5 * F.binary_cross_entropy_with_logits(bl, yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1000)
    step_ms = [round(t) for t in times]
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"impl": "pytorch", "model": model, "batch": batch, "size": size, "warmup": warmup,
                      "median_ms": round(med, 1), "step_ms": step_ms,
                      "images_per_s": round(batch * 1000 / med, 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
