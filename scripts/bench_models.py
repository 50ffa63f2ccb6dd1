#!/usr/bin/env python3
"""PyTorch eager side of scripts/bench_models.sh: one configuration per
process; prints one JSON line like the Rust example bench_forward.

    python3 scripts/bench_models.py MODEL BATCH SIZE REPS [THREADS]
"""

import json
import resource
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_model_fixtures import DualDenseNet, SEResNet  # noqa: E402


def main():
    model, batch, size, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else torch.get_num_threads()
    torch.set_num_threads(threads)
    if model == "densenet121":
        net = DualDenseNet(32, (6, 12, 24, 16), 64, 4)
    elif model == "se_resnet":
        net = SEResNet([3, 4, 6, 3], [64, 128, 256, 512], 64, 16, 0.3)
    else:
        raise SystemExit(f"unknown model {model}")
    net.eval()
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        net(x)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "pytorch", "model": model, "batch": batch, "size": size,
                      "median_ms": round(times[len(times) // 2], 1), "min_ms": round(times[0], 1),
                      "peak_rss_mib": round(peak), "threads": threads}))


if __name__ == "__main__":
    main()
