#!/usr/bin/env python3
"""Regenerate the parity fixtures of shared/vision (chexvision-vision).

Writes deterministic X-ray-like 8-bit grayscale inputs (smooth gradients,
bright ellipses, seeded noise) and the reference outputs of Pillow
(resize) and OpenCV (CLAHE) into shared/vision/tests/fixtures/.

Requires: numpy, Pillow, opencv-python-headless.
Usage: python3 scripts/make_vision_fixtures.py
"""
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "shared" / "vision" / "tests" / "fixtures"

# name -> (width, height, seed)
INPUTS = {
    "xray_a": (256, 256, 1),
    "xray_b": (250, 203, 2),
    "xray_c": (64, 97, 3),
}

# CLAHE-only inputs: width not a multiple of 8 with height a multiple.
CLAHE_ONLY = {
    "xray_d": (97, 64, 4),
}

RESIZE_FILTERS = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos3": Image.LANCZOS,
    "area": Image.BOX,
}

# Downscales for every input, plus one upscale (of the smallest input).
RESIZE_SIZES = [(64, 64), (97, 80)]
UPSCALE = ("xray_c", (96, 140))


def xray_like(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u = xx / max(width - 1, 1)
    v = yy / max(height - 1, 1)
    # Dark background with a smooth vertical and horizontal gradient.
    img = 30.0 + 40.0 * v + 20.0 * np.sin(np.pi * u)
    # Two "lungs": darker ellipses inside a brighter "chest".
    chest = ((u - 0.5) / 0.45) ** 2 + ((v - 0.55) / 0.5) ** 2 < 1.0
    img[chest] += 90.0
    for cx in (0.32, 0.68):
        lung = ((u - cx) / 0.15) ** 2 + ((v - 0.5) / 0.3) ** 2 < 1.0
        img[lung] -= 60.0
    # Bright round structures (nodules, heart, clavicles) at seeded places.
    for _ in range(6):
        cx, cy = rng.uniform(0.15, 0.85, size=2)
        rx, ry = rng.uniform(0.03, 0.12, size=2)
        amp = rng.uniform(30.0, 90.0)
        d = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
        img += amp * np.exp(-d)
    # Ribs: gentle periodic bands.
    img += 12.0 * np.sin(2 * np.pi * 7 * v + 3 * u) * chest
    # Seeded noise.
    img += rng.normal(0.0, 3.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def save(arr: np.ndarray, name: str) -> None:
    Image.fromarray(arr, mode="L").save(OUT / name, optimize=True)


def colour(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255.0 * xx / (width - 1)
    g = 255.0 * yy / (height - 1)
    b = 128.0 + 100.0 * np.sin(xx / 5.0 + yy / 7.0)
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0.0, 20.0, size=(height, width, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_fixtures() -> None:
    """Inputs in every PNG layout we accept, plus JPEGs, each with the
    8-bit grayscale Pillow makes of it (`*_L.png`)."""
    rgb = colour(40, 30, 10)
    im_rgb = Image.fromarray(rgb, mode="RGB")
    im_rgb.save(OUT / "dec_rgb.png")
    save(np.asarray(im_rgb.convert("L")), "dec_rgb_L.png")

    alpha = np.random.default_rng(11).integers(0, 256, size=(30, 40), dtype=np.uint8)
    im_rgba = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    im_rgba.save(OUT / "dec_rgba.png")
    save(np.asarray(im_rgba.convert("RGB").convert("L")), "dec_rgba_L.png")

    im_pal = im_rgb.quantize(colors=64)
    im_pal.save(OUT / "dec_palette.png")
    save(np.asarray(im_pal.convert("RGB").convert("L")), "dec_palette_L.png")

    gray = xray_like(40, 30, 12)
    im_la = Image.fromarray(np.dstack([gray, alpha]), mode="LA")
    im_la.save(OUT / "dec_graya.png")
    save(gray, "dec_graya_L.png")

    g16 = (gray.astype(np.uint16) << 8) | np.random.default_rng(13).integers(
        0, 256, size=gray.shape, dtype=np.uint16
    )
    cv2.imwrite(str(OUT / "dec_gray16.png"), g16)
    save((g16 >> 8).astype(np.uint8), "dec_gray16_L.png")

    rgb16 = (rgb.astype(np.uint16) << 8) | 0x5A
    cv2.imwrite(str(OUT / "dec_rgb16.png"), rgb16[:, :, ::-1])  # OpenCV writes BGR
    save(np.asarray(Image.fromarray((rgb16 >> 8).astype(np.uint8), mode="RGB").convert("L")),
         "dec_rgb16_L.png")

    Image.fromarray(gray, mode="L").save(OUT / "dec_gray.jpg", quality=90)
    save(np.asarray(Image.open(OUT / "dec_gray.jpg").convert("L")), "dec_gray_jpg_L.png")
    Image.fromarray(gray, mode="L").save(OUT / "dec_gray_progressive.jpg", quality=90,
                                         progressive=True)
    save(np.asarray(Image.open(OUT / "dec_gray_progressive.jpg").convert("L")),
         "dec_gray_progressive_jpg_L.png")
    im_rgb.save(OUT / "dec_rgb.jpg", quality=90)
    save(np.asarray(Image.open(OUT / "dec_rgb.jpg").convert("L")), "dec_rgb_jpg_L.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (w, h, seed) in INPUTS.items():
        arr = xray_like(w, h, seed)
        save(arr, f"{name}.png")
        src = Image.fromarray(arr, mode="L")
        sizes = list(RESIZE_SIZES)
        if name == UPSCALE[0]:
            sizes.append(UPSCALE[1])
        for fname, flt in RESIZE_FILTERS.items():
            for (dw, dh) in sizes:
                out = np.asarray(src.resize((dw, dh), flt))
                save(out, f"{name}_resize_{fname}_{dw}x{dh}.png")
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        save(clahe.apply(arr), f"{name}_clahe.png")
    for name, (w, h, seed) in CLAHE_ONLY.items():
        arr = xray_like(w, h, seed)
        save(arr, f"{name}.png")
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        save(clahe.apply(arr), f"{name}_clahe.png")
    decode_fixtures()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
