#!/usr/bin/env python3
"""Regenerate the 16-bit grayscale PNG fixtures of shared/vision that hold
12-bit data (the PNG decoder's handling of sBIT and of unscaled values).

Usage (Python 3.11):
    pip install numpy Pillow pypng
    python3 scripts/make_png16_fixtures.py

Versions last used (byte-identical output when rerun with them): numpy
2.4.6, Pillow 13.0.0, pypng 0.20220715.0.

Writes into shared/vision/tests/fixtures/png16/ one X-ray-like 64x48 field
of 12-bit values (200..3900, so the largest sample needs 12 bits) stored
three ways in a 16-bit grayscale PNG (colour type 0, bit depth 16):

    gray16_sbit12.png       scaled as the PNG spec says (12.3.2, left bit
                            replication): v16 = (v12 << 4) | (v12 >> 8),
                            plus an sBIT chunk of 12.
    gray16_raw12.png        the 12-bit values unscaled (0..4095), no sBIT:
                            what many exporters write.
    gray16_raw12_sbit12.png the 12-bit values unscaled, with an sBIT chunk
                            of 12 (also seen in exports).

and for each NAME.png the 8-bit grayscale the decoder must produce,
NAME.expected.png, computed here from the samples and sBIT read back from
the written file, by these rules (exact integer arithmetic; float64 gives
the same, as no case is a tie):

  (1) sBIT present with b < 16 significant bits: if every sample is
      <= 2^b - 1, the values are stored unscaled:
          y = floor(v * 255 / (2^b - 1) + 0.5);
      otherwise they are scaled per the PNG spec:
          v_b = v >> (16 - b),  y = floor(v_b * 255 / (2^b - 1) + 0.5).
  (2) no sBIT (or sBIT 16): b = the number of bits of the largest sample,
      at least 8 (max 3900 -> 12 bits); if b == 16, y = v >> 8 (as before,
      Pillow's behaviour), else y = floor(v * 255 / (2^b - 1) + 0.5).

All three files thus have the same expected image (rule 1 scaled, rule 2
with b = 12, rule 1 unscaled). pypng is given bit depth 16 and the sBIT
chunk is inserted after IHDR here: pypng's own bitdepth=12 mode rescales by
round(v * 65535 / 4095), not by bit replication (the two differ by 1 for
some samples; either gives v12 back with >> 4).
"""
import io
import sys
from pathlib import Path

import numpy as np
import png
from PIL import Image

# The same X-ray-like field as the DICOM fixtures.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_dicom_fixtures import xray_field  # noqa: E402

OUT = (
    Path(__file__).resolve().parent.parent
    / "shared" / "vision" / "tests" / "fixtures" / "png16"
)
WIDTH, HEIGHT = 64, 48
LO, HI = 200, 3900


def field12() -> np.ndarray:
    f = xray_field(WIDTH, HEIGHT, 12)
    f = (f - f.min()) / (f.max() - f.min())  # use the whole LO..HI range
    return np.rint(LO + f * (HI - LO)).astype(np.int64)


def write_png16(path: Path, values: np.ndarray, sbit: int | None) -> None:
    buf = io.BytesIO()
    png.Writer(WIDTH, HEIGHT, greyscale=True, bitdepth=16, compression=9).write(
        buf, values.astype(np.uint16).tolist())
    chunks = list(png.Reader(bytes=buf.getvalue()).chunks())
    assert chunks[0][0] == b"IHDR"
    if sbit is not None:
        chunks.insert(1, (b"sBIT", bytes([sbit])))  # before IDAT (no PLTE)
    with open(path, "wb") as f:
        png.write_chunks(f, chunks)


def scale_to_8(v: np.ndarray, bits: int) -> np.ndarray:
    """floor(v * 255 / (2^bits - 1) + 0.5), in integers."""
    top = (1 << bits) - 1
    return ((2 * 255 * v + top) // (2 * top)).astype(np.uint8)


def expected_8bit(v: np.ndarray, sbit: int | None) -> np.ndarray:
    """The rules of the docstring, for one-channel 16-bit samples."""
    v = v.astype(np.int64)
    if sbit is not None and sbit < 16:
        b = sbit
        if v.max() <= (1 << b) - 1:
            return scale_to_8(v, b)  # stored unscaled
        return scale_to_8(v >> (16 - b), b)  # scaled per the PNG spec
    b = max(8, int(v.max()).bit_length())
    if b == 16:
        return (v >> 8).astype(np.uint8)
    return scale_to_8(v, b)


def read_back(path: Path) -> tuple[np.ndarray, int | None]:
    """Samples (not rescaled) and sBIT of a written file; Pillow must read
    the same samples."""
    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.read()
    assert (width, height, info["bitdepth"], info["greyscale"]) == (WIDTH, HEIGHT, 16, True)
    values = np.array([list(r) for r in rows], dtype=np.int64)
    sbit = reader.sbit[0] if reader.sbit else None
    pil = np.asarray(Image.open(path)).astype(np.int64)
    if not np.array_equal(pil, values):
        raise SystemExit(f"{path.name}: Pillow reads other samples")
    return values, sbit


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    v12 = field12()
    assert v12.min() == LO and v12.max() == HI
    replicated = (v12 << 4) | (v12 >> 8)
    files = {
        "gray16_sbit12": (replicated, 12),
        "gray16_raw12": (v12, None),
        "gray16_raw12_sbit12": (v12, 12),
    }
    want = scale_to_8(v12, 12)
    float_rule = np.floor(v12 * 255.0 / 4095.0 + 0.5).astype(np.uint8)
    assert np.array_equal(want, float_rule)
    pypng_scaled = np.rint(v12 * 65535 / 4095).astype(np.int64)  # what bitdepth=12 would write
    print(f"pypng's bitdepth=12 scaling differs from bit replication in "
          f"{int((pypng_scaled != replicated).sum())} of {v12.size} samples "
          f"(max {int(np.abs(pypng_scaled - replicated).max())}); >> 4 agrees: "
          f"{np.array_equal(pypng_scaled >> 4, v12)}")
    for name, (values, sbit) in files.items():
        path = OUT / f"{name}.png"
        write_png16(path, values, sbit)
        got, got_sbit = read_back(path)
        if got_sbit != sbit or not np.array_equal(got, values):
            raise SystemExit(f"{name}: reads back other samples or sBIT")
        expected = expected_8bit(got, got_sbit)
        if not np.array_equal(expected, want):
            raise SystemExit(f"{name}: the rules give another image")
        Image.fromarray(expected, mode="L").save(OUT / f"{name}.expected.png", optimize=True)
        naive = (got >> 8).astype(np.int64)  # 16-bit -> 8-bit by v >> 8 alone
        print(f"{name}: samples {got.min()}..{got.max()}, sBIT {got_sbit}, expected "
              f"{expected.min()}..{expected.max()}; v >> 8 alone would be off by up to "
              f"{int(np.abs(naive - expected).max())}")
    for p in sorted(OUT.iterdir()):
        print(f"{p.stat().st_size:7d}  {p.name}")


if __name__ == "__main__":
    main()
