#!/usr/bin/env python3
"""PyTorch side of scripts/bench_evaluate.sh: the same DenseNet-121
checkpoint (our state-dict names are torchvision's `features.*`, plus our
two heads) scores the same images in an evaluation loop (ImageNet
normalisation, batches of 16, torch.inference_mode, sigmoid; with TTA the
original, horizontal flip and ±7° rotations, averaged). Prints one JSON
line per setting, and the largest difference from our probabilities.

    python3 scripts/bench_evaluate.py OUT THREADS
"""

import json
import sys
import time

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from safetensors.torch import load_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from make_model_fixtures import DualDenseNet  # noqa: E402

SIDE = 320
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def views(batch, tta):
    """batch: (B, 1, H, W) uint8 → list of (B, 3, H, W) normalised float."""
    out = [batch]
    if tta:
        out.append(TF.horizontal_flip(batch))
        for angle in (7.0, -7.0):
            out.append(TF.rotate(batch, angle, interpolation=TF.InterpolationMode.BILINEAR))
    return [((v.float() / 255.0).expand(-1, 3, -1, -1) - MEAN) / STD for v in out]


def main():
    out, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    net = DualDenseNet(32, (6, 12, 24, 16), 64, 4)
    state = {k: v for k, v in load_file(f"{out}/checkpoint.safetensors").items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not [m for m in missing if not m.endswith("num_batches_tracked")], missing
    assert not unexpected, unexpected
    net.eval()
    images = np.fromfile(f"{out}/images.u8", dtype=np.uint8).reshape(-1, 1, SIDE, SIDE)
    images = torch.from_numpy(images)
    for tta in (False, True):
        start = time.perf_counter()
        probabilities = []
        with torch.inference_mode():
            for i in range(0, len(images), 16 // (4 if tta else 1)):
                batch = images[i : i + 16 // (4 if tta else 1)]
                vs = views(batch, tta)
                findings, abnormal = net(torch.cat(vs))
                p = torch.sigmoid(torch.cat([findings, abnormal], 1))
                probabilities.append(p.view(len(vs), len(batch), -1).mean(0))
        seconds = time.perf_counter() - start
        theirs = torch.cat(probabilities).numpy()
        ours = np.fromfile(f"{out}/ours-{'tta' if tta else 'plain'}.f32", dtype=np.float32).reshape(theirs.shape)
        print(json.dumps({"impl": "pytorch", "tta": tta, "images": len(images), "seconds": round(seconds, 2),
                          "images_per_second": round(len(images) / seconds, 2), "threads": threads,
                          "max_abs_diff_vs_ours": float(np.abs(ours - theirs).max())}))


if __name__ == "__main__":
    main()
