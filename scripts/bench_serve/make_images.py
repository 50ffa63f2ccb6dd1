#!/usr/bin/env python3
"""Deterministic chest-like 8-bit grey PNGs for the serving benchmark.

    python3 scripts/bench_serve/make_images.py OUTDIR [--count 8] [--size 1024] [--seed 0]

Each image: a bright body silhouette, two darker lung fields, a brighter
mediastinum and spine, rib arcs, soft low-frequency texture and fine
detector noise. What matters for the benchmark is that decoding costs what
a real radiograph's does: the noise level is set so a 1024x1024 file is a
few hundred KB (NIH ChestX-ray14's 1024 px PNGs average about 350 KB),
not the few KB a smooth synthetic picture compresses to.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageFilter


def smooth_noise(rng, size, scale):
    """Low-frequency noise in [-1, 1]: coarse grid upsampled bicubically."""
    n = max(2, size // scale)
    coarse = rng.standard_normal((n, n)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32)
    return a / (np.abs(a).max() + 1e-6)


def chest(rng, size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx = 0.5 + rng.uniform(-0.02, 0.02)
    # Body: wide ellipse, brighter than the air around it.
    body = ((x - cx) / 0.46) ** 2 + ((y - 0.58) / 0.55) ** 2 < 1.0
    img = np.where(body, 150.0, 25.0).astype(np.float32)
    # Lungs: two ellipses, darker.
    for side in (-1, 1):
        lx = cx + side * rng.uniform(0.17, 0.2)
        rx, ry = rng.uniform(0.13, 0.16), rng.uniform(0.3, 0.34)
        d = ((x - lx) / rx) ** 2 + ((y - 0.5) / ry) ** 2
        img -= 85.0 * np.clip(1.2 - d, 0, 1) ** 0.6
    # Mediastinum / heart, spine.
    heart = ((x - cx - 0.04) / 0.12) ** 2 + ((y - 0.62) / 0.14) ** 2 < 1.0
    img += 40.0 * heart
    img += 35.0 * np.exp(-(((x - cx) / 0.035) ** 2))
    # Ribs: arcs, bright thin bands over the lungs.
    for k in range(10):
        y0 = 0.22 + 0.065 * k + rng.uniform(-0.01, 0.01)
        arc = y0 + 0.12 * ((x - cx) ** 2) * 4
        img += 22.0 * np.exp(-(((y - arc) / 0.008) ** 2)) * body
    # Texture: soft blobs at two scales, then fine noise.
    img += 10.0 * smooth_noise(rng, size, 64) + 6.0 * smooth_noise(rng, size, 12)
    img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)),
                     dtype=np.float32)
    img += rng.normal(0.0, 0.9, img.shape).astype(np.float32)
    # Vertical exposure gradient.
    img *= 0.9 + 0.15 * y
    return np.clip(img, 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    sizes = []
    for i in range(args.count):
        rng = np.random.default_rng(args.seed * 1000 + i)
        path = os.path.join(args.outdir, f"chest-{i:03d}.png")
        Image.fromarray(chest(rng, args.size), mode="L").save(path, optimize=False, compress_level=6)
        sizes.append(os.path.getsize(path))
    print(json.dumps({"outdir": args.outdir, "count": args.count, "size": args.size,
                      "mean_bytes": int(np.mean(sizes)), "min_bytes": min(sizes), "max_bytes": max(sizes)}))


if __name__ == "__main__":
    main()
