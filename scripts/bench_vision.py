#!/usr/bin/env python3
"""Python timings for scripts/bench_vision.sh, on the PNGs in argv[1].

Prints lines of `key value` pairs the shell script parses:

  python decode X cvdecode X resize X clahe320 X clahefull X
      Pillow and OpenCV steps, one thread, ms per image: decode PNG to gray
      (Pillow, OpenCV), resize to 320 px (bilinear, antialiased as Pillow
      does), CLAHE 2.0 8x8 at 320 px and at full size.
  python pipe1 X pipeN X procs N pngbytes X
      The whole per-image pipeline, decode -> gray -> resize 320 -> CLAHE ->
      encode PNG, in images/s: one process with one thread (pipe1), and a
      multiprocessing.Pool of `procs` (= os.cpu_count()) single-threaded
      workers (pipeN). The chain takes the faster decoder (OpenCV or Pillow)
      and the fastest PNG encoder of this run (each encoder's ms and bytes
      per image go to stderr as `python-encoder` lines); it is named on a
      line `python-chain ...`.
  python aug_pil X aug_u8 X aug_f32 X
      torchvision transforms v2, the training augmentation recipe on a
      320x320 gray image to a 3x320x320 ImageNet-normalised float32 tensor,
      one thread (torch.set_num_threads(1)), images/s, for three input
      representations (PIL "L" image, uint8 tensor, float32 tensor).
      Skipped (with a note on stderr) when torch/torchvision are missing;
      the versions follow on a line `python-versions ...`.

Timings of the whole pipeline and of the augmentation are the best of
BENCH_REPEATS (default 3) passes over all images; the step timings are one
pass, as before.
"""
import io
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

cv2.setNumThreads(1)
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
AUG_ROUNDS = int(os.environ.get("BENCH_AUG_ROUNDS", "5"))
SIZE = 320

# PNG encoders tried for the last step: zlib level 1 (the fastest level)
# with OpenCV's default, RLE and Huffman-only strategies, and Pillow's.
_L1 = [cv2.IMWRITE_PNG_COMPRESSION, 1]
ENCODERS = [
    ("opencv-l1", _L1),
    ("opencv-l1-rle", _L1 + [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]),
    ("opencv-l1-huffman", _L1 + [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]),
    ("pillow-l1", None),
]

# The pipeline's choices, set by whole_pipeline() before the workers fork.
DATA = []
DECODER = "opencv"
ENCODER = ENCODERS[0]
CLAHE = None


def encode(pixels, encoder):
    name, params = encoder
    if params is None:
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
        return out.getvalue()
    ok, out = cv2.imencode(".png", pixels, params)
    assert ok
    return out.tobytes()


def decode(data, decoder):
    if decoder == "opencv":
        return Image.fromarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
    image = Image.open(io.BytesIO(data)).convert("L")
    image.load()
    return image


def pipeline(index):
    """One image: decode, gray, resize 320 (Pillow bilinear), CLAHE, PNG.
    Returns the PNG's size."""
    gray = decode(DATA[index], DECODER)
    small = np.asarray(gray.resize((SIZE, SIZE), Image.BILINEAR))
    return len(encode(CLAHE.apply(small), ENCODER))


def init_worker():
    global CLAHE
    cv2.setNumThreads(1)
    CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))


def best_rate(run, n):
    """Images/s of the best of REPEATS passes of `run` over n images."""
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return n / best


def steps(data):
    n = len(data)
    t = time.perf_counter()
    decoded = [Image.open(io.BytesIO(b)).convert("L") for b in data]
    for im in decoded:
        im.load()
    decode_ms = (time.perf_counter() - t) * 1e3 / n

    t = time.perf_counter()
    cv_decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in data]
    cv_decode_ms = (time.perf_counter() - t) * 1e3 / n

    t = time.perf_counter()
    resized = [im.resize((SIZE, SIZE), Image.BILINEAR) for im in decoded]
    resize_ms = (time.perf_counter() - t) * 1e3 / n

    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    small = [np.asarray(im) for im in resized]
    t = time.perf_counter()
    equalised = [clahe.apply(a) for a in small]
    clahe320_ms = (time.perf_counter() - t) * 1e3 / n

    t = time.perf_counter()
    for a in cv_decoded:
        clahe.apply(a)
    clahefull_ms = (time.perf_counter() - t) * 1e3 / n
    print(
        f"python decode {decode_ms:.3f} cvdecode {cv_decode_ms:.3f} resize {resize_ms:.3f} "
        f"clahe320 {clahe320_ms:.3f} clahefull {clahefull_ms:.3f}",
        flush=True,
    )
    return decode_ms, cv_decode_ms, equalised


def whole_pipeline(data, decode_ms, cv_decode_ms, equalised):
    global DATA, DECODER, ENCODER
    DATA = data
    n = len(data)
    DECODER = "opencv" if cv_decode_ms <= decode_ms else "pillow"
    # The fastest encoder on this run's 320 px images.
    encode_ms = {}
    for encoder in ENCODERS:
        t = time.perf_counter()
        sizes = [len(encode(a, encoder)) for a in equalised]
        encode_ms[encoder[0]] = ((time.perf_counter() - t) * 1e3 / n, sum(sizes) / n)
    ENCODER = min(ENCODERS, key=lambda e: encode_ms[e[0]][0])
    for name, (ms, size) in encode_ms.items():
        print(f"python-encoder {name} {ms:.3f} ms {size:.0f} bytes", file=sys.stderr)

    init_worker()
    pipe1 = best_rate(lambda: [pipeline(i) for i in range(n)], n)
    procs = os.cpu_count() or 1
    # fork: the workers inherit DATA and the choices without copying them
    # through a pipe; only the index goes in and the size comes back.
    with get_context("fork").Pool(procs, initializer=init_worker) as pool:
        chunk = max(1, n // (procs * 8))
        pool.map(pipeline, range(min(n, procs * 2)), chunksize=1)  # warm up
        sizes = []
        pipen = best_rate(lambda: sizes.append(pool.map(pipeline, range(n), chunksize=chunk)), n)
    png_bytes = sum(sizes[-1]) / n
    decoder_name = "OpenCV imdecode" if DECODER == "opencv" else "Pillow open+convert('L')"
    encoder_name = {
        "opencv-l1": "OpenCV imencode level 1",
        "opencv-l1-rle": "OpenCV imencode level 1 RLE",
        "opencv-l1-huffman": "OpenCV imencode level 1 Huffman-only",
        "pillow-l1": "Pillow save compress_level=1",
    }[ENCODER[0]]
    print(
        f"python-chain {decoder_name}, Pillow resize BILINEAR, OpenCV CLAHE, {encoder_name}",
        flush=True,
    )
    print(f"python pipe1 {pipe1:.1f} pipeN {pipen:.1f} procs {procs} pngbytes {png_bytes:.0f}", flush=True)


def augmentation(equalised):
    try:
        import torch
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import InterpolationMode
    except ImportError as e:
        print(f"skipping torchvision augmentation: {e}", file=sys.stderr)
        return
    torch.set_num_threads(1)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

    class Gray3(torch.nn.Module):
        """1xHxW -> 3xHxW (a view; Normalize writes the 3 channels)."""

        def forward(self, x):
            return x.expand(3, -1, -1)

    # The recipe of chexvision_vision::augment (AugmentConfig::default):
    # bilinear affine with fill 0; blur sigma 0.1-2.0 (ours: kernel radius
    # ceil(3 sigma), i.e. 3..13 taps; here a fixed 9, ours at sigma ~1.05).
    def geometry_and_colour():
        return [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomAffine(
                degrees=15,
                translate=(0.05, 0.05),
                shear=5,
                interpolation=InterpolationMode.BILINEAR,
                fill=0,
            ),
            v2.ColorJitter(brightness=0.3, contrast=0.3),
            v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=0.2),
        ]

    tail = [Gray3(), v2.Normalize(mean, std), v2.RandomErasing(p=0.1, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)]
    to_float = v2.ToDtype(torch.float32, scale=True)
    variants = {
        "aug_pil": (
            lambda a: Image.fromarray(a),
            v2.Compose(geometry_and_colour() + [v2.ToImage(), to_float] + tail),
        ),
        "aug_u8": (
            lambda a: torch.from_numpy(a).unsqueeze(0),
            v2.Compose(geometry_and_colour() + [to_float] + tail),
        ),
        "aug_f32": (
            lambda a: torch.from_numpy(a).unsqueeze(0),
            v2.Compose([to_float] + geometry_and_colour() + tail),
        ),
    }
    rates = []
    for name, (prepare, transform) in variants.items():
        torch.manual_seed(0)
        inputs = [prepare(a) for a in equalised]
        for x in inputs:
            out = transform(x)  # warm up: one untimed pass
        assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32, (out.shape, out.dtype)

        def run():
            for _ in range(AUG_ROUNDS):
                for x in inputs:
                    transform(x)

        rates.append(f"{name} {best_rate(run, AUG_ROUNDS * len(inputs)):.1f}")
    import torchvision

    print(f"python {' '.join(rates)}", flush=True)
    print(f"python-versions torch {torch.__version__} torchvision {torchvision.__version__}", flush=True)


def main():
    files = sorted(Path(sys.argv[1]).glob("*.png"))
    data = [f.read_bytes() for f in files]
    decode_ms, cv_decode_ms, equalised = steps(data)
    whole_pipeline(data, decode_ms, cv_decode_ms, equalised)
    augmentation(equalised)


if __name__ == "__main__":
    main()
