#!/usr/bin/env python3
"""Regenerate the DICOM fixtures of shared/vision (chexvision-vision).

Usage (Python 3.11):
    pip install "pydicom>=3" numpy Pillow pylibjpeg pylibjpeg-libjpeg \
        pylibjpeg-openjpeg pyjpegls imagecodecs
    python3 scripts/make_dicom_fixtures.py             # every fixture
    python3 scripts/make_dicom_fixtures.py --only-new  # the second set only

Versions last used (the committed files are byte-identical when rerun with
them): pydicom 3.0.2, numpy 2.4.6, Pillow 13.0.0 (libjpeg-turbo, OpenJPEG
2.5.4), pylibjpeg 2.1.0, pylibjpeg-libjpeg 2.5.0, pylibjpeg-openjpeg 2.6.0
(bundles OpenJPEG 2.5.2), pyjpegls 1.5.1 (bundles CharLS 2.4.2),
imagecodecs 2026.3.6 (OpenJPEG 2.5.4, CharLS 2.4.3, libjpeg-turbo 3.1.3).
A newer encoder may write other bytes; --only-new then leaves the first
set untouched.

(pylibjpeg-libjpeg only lets pydicom read back the JPEG Lossless file, as a
check of the small encoder below; without it that check is skipped.)

Second set (--only-new writes just these): the JPEG 2000 frames are
written by pydicom's Dataset.compress() with the pylibjpeg-openjpeg plugin
(raw J2K codestreams, 5 decomposition levels, one quality layer; lossless:
5-3 reversible wavelet; lossy 1.2.840.10008.1.2.4.91: 9-7 irreversible,
j2k_cr=[6], which OpenJPEG counts against the 12-bit precision, so about
8:1 against the 16-bit native size), the JPEG-LS frames by compress() with
pyjpegls (CharLS; near-lossless with jls_error = NEAR = 2), and the RGB
JPEG baseline frame by Pillow with keep_rgb=True (libjpeg-turbo: Adobe
APP14 with transform 0, component ids 'R' 'G' 'B', no JFIF APP0, 4:4:4).
pydicom leaves the Lossy Image Compression attributes to the caller; they
are set here (01, ratio of native size to frame size, ISO_15444_1 /
ISO_14495_1 / ISO_10918_1). Lossless files: the PNG follows from the values
written, and pydicom's decoding with the named plugin (no fallback) must
give exactly those values, as must imagecodecs' and Pillow's where they
can decode the frame. Lossy files (j2k_lossy, jpegls_near,
jpeg_baseline_rgb): the PNG is the same 8-bit mapping applied to the
decoded values: pydicom + pylibjpeg-openjpeg for JPEG 2000 (imagecodecs'
and Pillow's OpenJPEG 2.5.4 agree exactly), pydicom + pyjpegls for JPEG-LS
(imagecodecs' CharLS agrees; near-lossless reconstruction is exact by ISO
14495-1), Pillow for the RGB JPEG (imagecodecs agrees exactly,
pylibjpeg-libjpeg within 1). JPEG 2000 RGB uses the reversible colour
transform (MCT = 1 in COD), so its Photometric Interpretation is YBR_RCT
as PS3.5 8.2.4 requires; decoders undo the RCT and give RGB.
ybr_full_422_u8_native is a valid native YBR_FULL_422 file (Y1 Y2 Cb Cr per
pair of pixels, rows * cols * 2 bytes; pydicom decodes it) with no expected
PNG: the decoder's output is its Y plane, which the Rust test reads from
the file itself.

Writes small X-ray-like DICOM files into shared/vision/tests/fixtures/dicom/
and, for each decodable one, NAME.png: the 8-bit grayscale the decoder must
produce, computed here in numpy from the values written (not from pydicom's
decoding) with the formulas of the standard:

    stored value -> Modality LUT (v = stored * RescaleSlope + RescaleIntercept)
    -> VOI (VOI LUT Sequence, else the first Window Center/Width with the
       VOI LUT Function, else min-max of v over the frame) -> 0..255
    -> MONOCHROME1: 255 - y.

VOI LUT: index = floor(v) - first mapped value, clamped to the table; output
entry / (2^bits - 1) * 255. Windows: PS3.3 C.11.2.1.2.1 (LINEAR),
C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID), y in 0..255. Every
mapping rounds half up: floor(y + 0.5), clipped to 0..255. Colour: Pillow's
convert("L") luma, (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.

pydicom writes the files (and RLE-encodes with its own encoder); after
writing, each file's pixel_array as pydicom decodes it is checked against
the values meant to be stored, so the files are what they claim to be.
Everything is seeded: the same pydicom/numpy/Pillow versions give the same
bytes. The file unsupported_jpeg2000 holds garbage under the JPEG 2000
Lossless syntax on purpose (it was the unsupported-syntax test; with JPEG
2000 supported it is a corrupt frame) and has no expected PNG.
"""
import argparse
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

OUT = (
    Path(__file__).resolve().parent.parent
    / "shared" / "vision" / "tests" / "fixtures" / "dicom"
)
WIDTH, HEIGHT = 64, 48
# Fixed UIDs (generate_uid would be random). 2.25 = UUID-derived root.
UID_ROOT = "2.25.1234567890123456789"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def xray_field(width: int, height: int, seed: int) -> np.ndarray:
    """An X-ray-like image in [0, 1]: chest, darker lungs, bright blobs,
    ribs and a little noise (as in make_vision_fixtures.py)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u = xx / max(width - 1, 1)
    v = yy / max(height - 1, 1)
    img = 0.12 + 0.15 * v + 0.08 * np.sin(np.pi * u)
    chest = ((u - 0.5) / 0.45) ** 2 + ((v - 0.55) / 0.5) ** 2 < 1.0
    img[chest] += 0.35
    for cx in (0.32, 0.68):
        lung = ((u - cx) / 0.15) ** 2 + ((v - 0.5) / 0.3) ** 2 < 1.0
        img[lung] -= 0.22
    for _ in range(5):
        cx, cy = rng.uniform(0.15, 0.85, size=2)
        rx, ry = rng.uniform(0.04, 0.12, size=2)
        amp = rng.uniform(0.1, 0.3)
        img += amp * np.exp(-(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2))
    img += 0.05 * np.sin(2 * np.pi * 7 * v + 3 * u) * chest
    img += rng.normal(0.0, 0.01, size=img.shape)
    return np.clip(img, 0.0, 1.0)


def scaled(field: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.rint(lo + field * (hi - lo)).astype(np.int64)


# ---------------------------------------------------------------------------
# Reference pipeline (numpy, float64, same operation order as the standard)


def round_half_up(y: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def window(v: np.ndarray, c: float, w: float, function: str) -> np.ndarray:
    if function == "LINEAR":
        c, w = c - 0.5, w - 1.0
        mid = ((v - c) / w + 0.5) * 255.0
        return np.where(v <= c - w / 2.0, 0.0, np.where(v > c + w / 2.0, 255.0, mid))
    if function == "LINEAR_EXACT":
        mid = ((v - c) / w + 0.5) * 255.0
        return np.where(v <= c - w / 2.0, 0.0, np.where(v > c + w / 2.0, 255.0, mid))
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (v - c) / w))
    raise ValueError(function)


def reference(stored: np.ndarray, slope=1.0, intercept=0.0, win=None,
              function="LINEAR", lut=None, monochrome1=False) -> np.ndarray:
    v = stored.astype(np.float64) * slope + intercept
    if lut is not None:
        first, bits, table = lut
        index = np.clip(np.floor(v) - first, 0, len(table) - 1).astype(np.int64)
        top = float(2**bits - 1)
        entry = np.minimum(np.asarray(table, dtype=np.float64)[index], top)
        y = entry / top * 255.0
    elif win is not None:
        y = window(v, win[0], win[1], function)
    else:
        lo, hi = v.min(), v.max()
        y = (v - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(v) - 0.5
    out = round_half_up(y)
    return 255 - out if monochrome1 else out


def luma(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


# ---------------------------------------------------------------------------
# JPEG Lossless (ITU T.81 process 14, selection value 1), which neither
# Pillow nor pydicom can write: one component, no restart intervals, one
# Huffman table giving every difference category 0..16 a 5-bit code.


def jpeg_lossless_sv1(img: np.ndarray, precision: int) -> bytes:
    h, w = img.shape
    x = img.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)  # point transform 0
    pred[0, 1:] = x[0, :-1]  # first line: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the sample above
    pred[1:, 1:] = x[1:, :-1]  # selection value 1: left neighbour
    diff = ((x - pred) + 32768) % 65536 - 32768  # modulo 2^16 (H.1.2.1)

    bits = []
    for d in diff.ravel().tolist():
        ssss = 0 if d == 0 else abs(d).bit_length()
        bits.append(format(ssss, "05b"))  # canonical code of category ssss
        if 1 <= ssss <= 15:
            extra = d if d > 0 else d + (1 << ssss) - 1
            bits.append(format(extra, f"0{ssss}b"))
        # ssss == 16 (difference 32768) has no extra bits
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad with 1-bits
    entropy = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        entropy.append(byte)
        if byte == 0xFF:
            entropy.append(0x00)  # byte stuffing

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof3 = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns, Cs/Td/Ta, Ss = predictor 1, Se, Ah/Al
    return (b"\xFF\xD8" + segment(0xC3, sof3) + segment(0xC4, dht) + segment(0xDA, sos)
            + bytes(entropy) + b"\xFF\xD9")


# ---------------------------------------------------------------------------
# Writing


def base_dataset(n: int, ts: str, rows: int, cols: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.{n}"
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = f"{UID_ROOT}.999"
    meta.ImplementationVersionName = "CHEXVISION_FIX"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = f"{UID_ROOT}.{n}.1"
    ds.SeriesInstanceUID = f"{UID_ROOT}.{n}.2"
    ds.Modality = "DX"
    ds.PatientID = f"FIXTURE{n:03d}"
    ds.PatientName = "Fixture^Synthetic"
    # A sequence of undefined length before the image attributes, so the
    # header walk has to step over one.
    ref = Dataset()
    ref.ReferencedSOPClassUID = SECONDARY_CAPTURE
    ref.ReferencedSOPInstanceUID = f"{UID_ROOT}.{n}.3"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.ReferencedImageSequence.is_undefined_length = True
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def set_bits(ds: Dataset, allocated: int, stored: int, signed: bool) -> None:
    ds.BitsAllocated = allocated
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 1 if signed else 0


def native_bytes(words: np.ndarray, allocated: int) -> bytes:
    dtype = "<u2" if allocated == 16 else "u1"
    mask = 0xFFFF if allocated == 16 else 0xFF
    return (words.astype(np.int64) & mask).astype(dtype).tobytes()


def save(ds: Dataset, name: str, expected_stored=None, expected=None) -> None:
    path = OUT / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    if expected_stored is not None:
        # pydicom's own decoding gives the values we meant to store.
        try:
            got = pydicom.dcmread(path).pixel_array
        except (RuntimeError, NotImplementedError) as e:
            print(f"{name}: read-back check skipped ({e.__class__.__name__}: no decoder)")
            got = expected_stored
        want = expected_stored
        if got.ndim == 3 and want.ndim == 2 and ds.get("NumberOfFrames", 1) > 1:
            got = got[0]
        if not np.array_equal(got.astype(np.int64), want.astype(np.int64)):
            raise SystemExit(f"{name}: pydicom reads back different pixel values")
    if expected is not None:
        Image.fromarray(expected, mode="L").save(OUT / f"{name}.png", optimize=True)


def original_fixtures() -> None:
    """The first fixture set (native, RLE, JPEG baseline / lossless)."""
    # 1. MONOCHROME2, 16 bits allocated, 12 stored, windowed (two windows:
    #    the first is used). Random garbage in the 4 unused high bits, which
    #    the decoder must mask off.
    stored = scaled(xray_field(WIDTH, HEIGHT, 1), 150, 3900)
    rng = np.random.default_rng(101)
    garbage = rng.integers(0, 16, size=stored.shape) << 12
    ds = base_dataset(1, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.WindowCenter = [1800, 1000]
    ds.WindowWidth = [2600, 500]
    ds.PixelData = native_bytes(stored | garbage, 16)
    save(ds, "mono2_u16_bs12_window", None,
         reference(stored, win=(1800, 2600)))
    # pydicom masks to Bits Stored too:
    if not np.array_equal(pydicom.dcmread(OUT / "mono2_u16_bs12_window.dcm").pixel_array, stored):
        raise SystemExit("mono2_u16_bs12_window: pydicom reads back different values")

    # 2. MONOCHROME2, 16/16 unsigned, no window, no rescale: min-max.
    #    Implicit VR Little Endian.
    stored = scaled(xray_field(WIDTH, HEIGHT, 2), 9000, 52000)
    ds = base_dataset(2, ImplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 16, False)
    ds.PixelData = native_bytes(stored, 16)
    save(ds, "mono2_u16_minmax_implicit", stored, reference(stored))

    # 3. MONOCHROME1, 16 bits allocated, 12 stored, windowed (inverted).
    stored = 4095 - scaled(xray_field(WIDTH, HEIGHT, 3), 300, 3700)
    ds = base_dataset(3, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 3000
    ds.PixelData = native_bytes(stored, 16)
    save(ds, "mono1_u16_window", stored,
         reference(stored, win=(2048, 3000), monochrome1=True))

    # 4. CT-like: 16-bit signed, slope 1, intercept -1024, lung window;
    #    negative stored values (padding outside the field of view).
    stored = scaled(xray_field(WIDTH, HEIGHT, 4), -200, 2400)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    stored[(xx - WIDTH / 2) ** 2 + (yy - HEIGHT / 2) ** 2 > (WIDTH * 0.55) ** 2] = -2000
    ds = base_dataset(4, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 16, True)
    ds.Modality = "CT"
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.RescaleType = "HU"
    ds.WindowCenter = -400
    ds.WindowWidth = 1500
    ds.PixelData = native_bytes(stored, 16)
    save(ds, "ct_s16_rescale_window", stored,
         reference(stored, slope=1.0, intercept=-1024.0, win=(-400, 1500)))

    # 5. 12-bit signed (two's complement in 12 bits), slope 0.5,
    #    intercept 100, LINEAR_EXACT window.
    stored = scaled(xray_field(WIDTH, HEIGHT, 5), -1800, 1900)
    ds = base_dataset(5, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, True)
    ds.RescaleSlope = "0.5"
    ds.RescaleIntercept = "100"
    ds.WindowCenter = 150
    ds.WindowWidth = 1400
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.PixelData = native_bytes(stored, 16)
    save(ds, "mono2_s12_slope_linear_exact", stored,
         reference(stored, slope=0.5, intercept=100.0, win=(150, 1400),
                   function="LINEAR_EXACT"))

    # 6. 8 bits allocated and stored, slope 2, intercept -10, SIGMOID.
    stored = scaled(xray_field(WIDTH, HEIGHT, 6), 10, 245)
    ds = base_dataset(6, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 8, 8, False)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -10
    ds.WindowCenter = 230
    ds.WindowWidth = 300
    ds.VOILUTFunction = "SIGMOID"
    ds.PixelData = native_bytes(stored, 8)
    save(ds, "mono2_u8_sigmoid", stored,
         reference(stored, slope=2.0, intercept=-10.0, win=(230, 300),
                   function="SIGMOID"))

    # 7. Multi-frame (2 frames, 16/16 unsigned, window): frame 0 is decoded.
    #    40x30, to keep the fixtures small.
    frame0 = scaled(xray_field(40, 30, 7), 1000, 30000)
    frame1 = 31000 - frame0
    ds = base_dataset(7, ExplicitVRLittleEndian, 30, 40)
    set_bits(ds, 16, 16, False)
    ds.NumberOfFrames = 2
    ds.WindowCenter = 15000
    ds.WindowWidth = 26000
    ds.PixelData = native_bytes(np.stack([frame0, frame1]), 16)
    save(ds, "mono2_u16_multiframe", frame0, reference(frame0, win=(15000, 26000)))

    # 8. VOI LUT Sequence (a gamma curve over 12-bit input, 1024 entries
    #    from 1000), and a window that must lose to it.
    stored = scaled(xray_field(WIDTH, HEIGHT, 8), 600, 2400)
    first, entries, bits = 1000, 1024, 12
    table = np.rint(4095 * (np.arange(entries) / (entries - 1)) ** 0.6).astype(np.uint16)
    ds = base_dataset(8, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.WindowCenter = 2000
    ds.WindowWidth = 100
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item["LUTDescriptor"].VR = "US"
    item.LUTExplanation = "GAMMA 0.6"
    item.LUTData = table.tolist()
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    ds.PixelData = native_bytes(stored, 16)
    save(ds, "mono2_u16_voi_lut", stored,
         reference(stored, lut=(first, bits, table)))

    # 9. RLE Lossless (pydicom's encoder), 16/16 unsigned, window.
    stored = scaled(xray_field(WIDTH, HEIGHT, 9), 2000, 60000)
    stored[:6, :] = 2000  # a flat band, so RLE has runs as well as literals
    ds = base_dataset(9, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 16, False)
    ds.WindowCenter = 30000
    ds.WindowWidth = 50000
    ds.PixelData = native_bytes(stored, 16)
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, "mono2_u16_rle", stored, reference(stored, win=(30000, 50000)))

    # 10. RGB, 8-bit, planar configuration 1 (native), 32x24: luma.
    w, h = 32, 24
    rng = np.random.default_rng(10)
    rgb = np.stack([
        scaled(xray_field(w, h, 10), 0, 255),
        scaled(xray_field(w, h, 11), 20, 200),
        rng.integers(0, 256, size=(h, w)),
    ], axis=-1).astype(np.uint8)
    ds = base_dataset(10, ExplicitVRLittleEndian, h, w)
    set_bits(ds, 8, 8, False)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 1
    ds.PixelData = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    save(ds, "rgb_u8_planar", rgb, luma(rgb))

    # 11. RGB, 8-bit, RLE Lossless, 32x24: luma.
    ds = base_dataset(11, ExplicitVRLittleEndian, h, w)
    set_bits(ds, 8, 8, False)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = rgb.tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, "rgb_u8_rle", rgb, luma(rgb))

    # 12. JPEG Baseline, MONOCHROME2 8-bit, window: the frame is a Pillow
    #     JPEG; the reference is Pillow's decoding of it, then the window.
    stored = scaled(xray_field(WIDTH, HEIGHT, 12), 20, 235).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(stored, mode="L").save(buf, format="JPEG", quality=92)
    jpeg = buf.getvalue()
    decoded = np.asarray(Image.open(BytesIO(jpeg)).convert("L"))
    ds = base_dataset(12, JPEGBaseline8Bit, HEIGHT, WIDTH)
    set_bits(ds, 8, 8, False)
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    save(ds, "mono2_u8_jpeg_baseline", None, reference(decoded, win=(128, 256)))

    # 13. JPEG Lossless SV1 (process 14), 16 bits allocated, 12 stored,
    #     window; encoded above, checked by reading back with pydicom.
    stored = scaled(xray_field(WIDTH, HEIGHT, 13), 100, 4000)
    ds = base_dataset(13, JPEGLosslessSV1, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.WindowCenter = 2000
    ds.WindowWidth = 3500
    ds.PixelData = encapsulate([jpeg_lossless_sv1(stored, 12)])
    ds["PixelData"].VR = "OB"
    save(ds, "mono2_u16_bs12_jpeg_lossless", stored, reference(stored, win=(2000, 3500)))

    # 14. JPEG 2000 Lossless transfer syntax with a garbage payload: once
    #     refused as unsupported, now a corrupt frame, named so.
    ds = base_dataset(14, JPEG2000Lossless, HEIGHT, WIDTH)
    set_bits(ds, 16, 16, False)
    garbage = np.random.default_rng(14).integers(0, 256, size=96, dtype=np.uint8)
    ds.PixelData = encapsulate([garbage.tobytes()])
    ds["PixelData"].VR = "OB"
    save(ds, "unsupported_jpeg2000")



# ---------------------------------------------------------------------------
# Second set: JPEG 2000, JPEG-LS, JPEG baseline RGB without colour
# transform, and a native YBR_FULL_422 file (decoded to its Y plane). Encoded by
# pydicom's compress() with its plugins (pylibjpeg-openjpeg for JPEG 2000,
# pyjpegls for JPEG-LS) and by Pillow (JPEG RGB); checked against other
# decoders where one is installed (imagecodecs, Pillow, pylibjpeg-libjpeg).


# pydicom's decoding plugins that give the reference decodings.
J2K_PLUGIN = "pylibjpeg"  # pylibjpeg-openjpeg
JLS_PLUGIN = "pyjpegls"


def frame_of(path: Path) -> bytes:
    """The first (only) encapsulated frame of a file."""
    ds = pydicom.dcmread(path)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def decoded(path: Path, plugin: str) -> np.ndarray:
    """pydicom's decoding of the file with one named decoding plugin (no
    fallback: a missing plugin is an error, not a skipped check)."""
    ds = pydicom.dcmread(path)
    ds.pixel_array_options(decoding_plugin=plugin)
    return ds.pixel_array


def check_lossless(name: str, plugin: str, want: np.ndarray) -> None:
    got = decoded(OUT / f"{name}.dcm", plugin)
    if not np.array_equal(got.astype(np.int64), want.astype(np.int64)):
        raise SystemExit(f"{name}: pydicom ({plugin}) reads back different pixel values")


def j2k_header(cs: bytes) -> dict:
    """SIZ and COD of a JPEG 2000 codestream (ISO 15444-1 A.5.1, A.6.1)."""
    if cs[:4] != b"\xFF\x4F\xFF\x51":
        raise SystemExit("not a raw JPEG 2000 codestream (SOC, SIZ)")
    info, i = {}, 2
    while i + 4 <= len(cs):
        marker, length = int.from_bytes(cs[i:i + 2], "big"), int.from_bytes(cs[i + 2:i + 4], "big")
        seg = cs[i + 4:i + 2 + length]
        if marker == 0xFF51:
            info["size"] = (int.from_bytes(seg[2:6], "big"), int.from_bytes(seg[6:10], "big"))
            ncomp = int.from_bytes(seg[34:36], "big")
            ssiz = seg[36:36 + 3 * ncomp:3]
            info["components"] = ncomp
            info["precision"] = [(s & 0x7F) + 1 for s in ssiz]
            info["signed"] = [bool(s & 0x80) for s in ssiz]
        elif marker == 0xFF52:
            info["layers"] = int.from_bytes(seg[2:4], "big")
            info["mct"] = seg[4]
            info["levels"] = seg[5]
            info["wavelet"] = "5-3 reversible" if seg[9] == 1 else "9-7 irreversible"
        elif marker == 0xFF90:  # first tile part: the main header is over
            break
        i += 2 + length
    return info


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of a JPEG / JPEG-LS stream up to its first SOS."""
    out, i = [], 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise SystemExit(f"JPEG: no marker at {i}")
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        out.append((marker, data[i + 4:i + 2 + length]))
        if marker == 0xDA:
            break
        i += 2 + length
    return out


def set_lossy(ds: Dataset, frame: bytes, method: str) -> float:
    """Lossy Image Compression attributes (PS3.3 C.7.6.1.1.5), which
    pydicom's compress() leaves to the caller."""
    ratio = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated / 8 / len(frame)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    ds.LossyImageCompressionMethod = method
    return ratio


def other_decoders(name: str, frame: bytes, kind: str) -> dict[str, np.ndarray]:
    """Decodings of a frame by decoders other than pydicom's plugins, where
    installed: imagecodecs (OpenJPEG / CharLS / libjpeg-turbo, other builds
    than the pydicom plugins') and Pillow (OpenJPEG, libjpeg-turbo)."""
    out = {}
    try:
        import imagecodecs

        fn = {"j2k": imagecodecs.jpeg2k_decode, "jls": imagecodecs.jpegls_decode,
              "jpeg": imagecodecs.jpeg8_decode}[kind]
        out[f"imagecodecs {imagecodecs.__version__}"] = np.asarray(fn(frame))
    except ImportError:
        print(f"{name}: imagecodecs not installed, cross-check skipped")
    if kind in ("j2k", "jpeg"):
        img = Image.open(BytesIO(frame))
        img.load()
        arr = np.asarray(img)
        if kind == "j2k" and img.mode == "I;16":
            # Pillow scales samples of fewer bits up to 16 (v << (16 - p)).
            shift = 16 - j2k_header(frame)["precision"][0]
            if np.any(arr & ((1 << shift) - 1)):
                raise SystemExit(f"{name}: Pillow's 16-bit samples are not v << {shift}")
            arr = arr >> shift
        out[f"Pillow {Image.__version__}"] = arr
    return out


def check_other_decoders(name, frame, kind, want):
    """Every other installed decoder of `kind` gives exactly `want`."""
    for who, arr in other_decoders(name, frame, kind).items():
        if not np.array_equal(arr.astype(np.int64), want):
            raise SystemExit(f"{name}: {who} decodes different values")


def report_diffs(name: str, ref: np.ndarray, others: dict[str, np.ndarray],
                 to8=None) -> None:
    for who, arr in others.items():
        if arr.shape != ref.shape:
            raise SystemExit(f"{name}: {who} decodes shape {arr.shape}, want {ref.shape}")
        d = np.abs(arr.astype(np.int64) - ref.astype(np.int64)).max()
        line = f"{name}: {who} vs pydicom: max abs diff {d} (decoded values)"
        if to8 is not None:
            d8 = np.abs(to8(arr).astype(np.int64) - to8(ref).astype(np.int64)).max()
            line += f", {d8} after the 8-bit mapping"
        print(line)


def new_fixtures() -> None:
    # 15. JPEG 2000 Lossless, 16 allocated / 12 stored, window.
    name = "mono2_u16_bs12_j2k_lossless"
    stored = scaled(xray_field(WIDTH, HEIGHT, 15), 150, 3900)
    ds = base_dataset(15, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.WindowCenter = 1900
    ds.WindowWidth = 2800
    ds.PixelData = native_bytes(stored, 16)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    save(ds, name, None, reference(stored, win=(1900, 2800)))
    check_lossless(name, J2K_PLUGIN, stored)
    frame = frame_of(OUT / f"{name}.dcm")
    print(f"{name}: {j2k_header(frame)}")
    check_other_decoders(name, frame, "j2k", stored)

    # 16. JPEG 2000 (lossy, 9-7 irreversible wavelet), compression ratio
    #     6, same layout: expected from pydicom's (OpenJPEG) decoding.
    name = "mono2_u16_bs12_j2k_lossy"
    stored = scaled(xray_field(WIDTH, HEIGHT, 16), 150, 3900)
    ds = base_dataset(16, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.WindowCenter = 1900
    ds.WindowWidth = 2800
    ds.PixelData = native_bytes(stored, 16)
    ds.compress(JPEG2000, encoding_plugin="pylibjpeg", generate_instance_uid=False,
                j2k_cr=[6])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ratio = set_lossy(ds, frame, "ISO_15444_1")
    ds.save_as(OUT / f"{name}.dcm", enforce_file_format=True)
    got = decoded(OUT / f"{name}.dcm", J2K_PLUGIN)
    err = np.abs(got.astype(np.int64) - stored)
    print(f"{name}: ratio {ratio:.2f}, {j2k_header(frame)}, vs original: max abs "
          f"{err.max()}, PSNR {psnr(stored, got, 4095):.1f} dB")
    if err.max() == 0:
        raise SystemExit(f"{name}: not lossy")
    to8 = lambda a: reference(a, win=(1900, 2800))  # noqa: E731
    save(ds, name, None, to8(got))
    report_diffs(name, got, other_decoders(name, frame, "j2k"), to8)

    # 17. JPEG 2000 Lossless, CT-like: 16-bit signed, rescale, window.
    name = "mono2_s16_j2k_lossless_rescale"
    stored = scaled(xray_field(WIDTH, HEIGHT, 17), -200, 2400)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    stored[(xx - WIDTH / 2) ** 2 + (yy - HEIGHT / 2) ** 2 > (WIDTH * 0.55) ** 2] = -2000
    ds = base_dataset(17, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 16, True)
    ds.Modality = "CT"
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.RescaleType = "HU"
    ds.WindowCenter = -400
    ds.WindowWidth = 1500
    ds.PixelData = native_bytes(stored, 16)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    save(ds, name, None, reference(stored, slope=1.0, intercept=-1024.0, win=(-400, 1500)))
    check_lossless(name, J2K_PLUGIN, stored)
    frame = frame_of(OUT / f"{name}.dcm")
    print(f"{name}: {j2k_header(frame)}")
    for who, arr in other_decoders(name, frame, "j2k").items():
        if who.startswith("Pillow"):
            continue  # Pillow has no signed 16-bit grey mode
        if not np.array_equal(arr.astype(np.int64), stored):
            raise SystemExit(f"{name}: {who} decodes different values")

    # 18. JPEG 2000 Lossless, 8-bit, no window: min-max.
    name = "mono2_u8_j2k_lossless"
    stored = scaled(xray_field(WIDTH, HEIGHT, 18), 10, 245)
    ds = base_dataset(18, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 8, 8, False)
    ds.PixelData = native_bytes(stored, 8)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    save(ds, name, None, reference(stored))
    check_lossless(name, J2K_PLUGIN, stored)
    frame = frame_of(OUT / f"{name}.dcm")
    print(f"{name}: {j2k_header(frame)}")
    check_other_decoders(name, frame, "j2k", stored)

    # 19. JPEG 2000 Lossless, RGB 8-bit through the reversible colour
    #     transform (MCT = 1 in COD): Photometric Interpretation YBR_RCT,
    #     as PS3.5 8.2.4 requires. 64x48: the encoder's 5 decomposition
    #     levels need at least 32 pixels each way (32x24 fails to encode).
    name = "rgb_u8_j2k_lossless"
    w, h = WIDTH, HEIGHT
    rgb = colour_field(w, h, 19)
    ds = base_dataset(19, ExplicitVRLittleEndian, h, w)
    set_bits(ds, 8, 8, False)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_RCT"  # the value after encoding
    ds.PlanarConfiguration = 0
    ds.PixelData = rgb.tobytes()  # RGB samples: the encoder applies the RCT
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    save(ds, name, None, luma(rgb))
    check_lossless(name, J2K_PLUGIN, rgb)
    frame = frame_of(OUT / f"{name}.dcm")
    info = j2k_header(frame)
    print(f"{name}: {info}")
    if info["mct"] != 1 or info["wavelet"] != "5-3 reversible":
        raise SystemExit(f"{name}: want the RCT (MCT 1) and the 5-3 wavelet")
    check_other_decoders(name, frame, "j2k", rgb)

    # 20. JPEG-LS Lossless, 16 allocated / 12 stored, window.
    name = "mono2_u16_bs12_jpegls_lossless"
    stored = scaled(xray_field(WIDTH, HEIGHT, 20), 150, 3900)
    ds = base_dataset(20, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.WindowCenter = 2000
    ds.WindowWidth = 3000
    ds.PixelData = native_bytes(stored, 16)
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls", generate_instance_uid=False)
    save(ds, name, None, reference(stored, win=(2000, 3000)))
    check_lossless(name, JLS_PLUGIN, stored)
    frame = frame_of(OUT / f"{name}.dcm")
    print(f"{name}: {jpegls_header(frame)}")
    check_other_decoders(name, frame, "jls", stored)

    # 21. JPEG-LS Near-Lossless, NEAR = 2: every decoded value within 2 of
    #     the original; the reconstruction is exactly defined by ISO 14495-1,
    #     so every conforming decoder gives the same values.
    name = "mono2_u16_bs12_jpegls_near"
    near = 2
    stored = scaled(xray_field(WIDTH, HEIGHT, 21), 150, 3900)
    ds = base_dataset(21, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 16, 12, False)
    ds.WindowCenter = 1700
    ds.WindowWidth = 1400  # gain ~0.18 per unit: errors of 2 show in 8 bits
    ds.PixelData = native_bytes(stored, 16)
    ds.compress(JPEGLSNearLossless, encoding_plugin="pyjpegls", generate_instance_uid=False,
                jls_error=near)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ratio = set_lossy(ds, frame, "ISO_14495_1")
    ds.save_as(OUT / f"{name}.dcm", enforce_file_format=True)
    got = decoded(OUT / f"{name}.dcm", JLS_PLUGIN)
    err = np.abs(got.astype(np.int64) - stored)
    hdr = jpegls_header(frame)
    print(f"{name}: ratio {ratio:.2f}, {hdr}, vs original: max abs {err.max()}")
    if err.max() == 0 or err.max() > near or hdr["near"] != near:
        raise SystemExit(f"{name}: errors {err.max()}, NEAR {hdr['near']}")
    to8 = lambda a: reference(a, win=(1700, 1400))  # noqa: E731
    if np.array_equal(to8(got), to8(stored)):
        raise SystemExit(f"{name}: the loss does not show after the window")
    save(ds, name, None, to8(got))
    report_diffs(name, got, other_decoders(name, frame, "jls"), to8)

    # 22. JPEG-LS Lossless, 8-bit, window.
    name = "mono2_u8_jpegls_lossless"
    stored = scaled(xray_field(WIDTH, HEIGHT, 22), 10, 245)
    ds = base_dataset(22, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 8, 8, False)
    ds.WindowCenter = 120
    ds.WindowWidth = 200
    ds.PixelData = native_bytes(stored, 8)
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls", generate_instance_uid=False)
    save(ds, name, None, reference(stored, win=(120, 200)))
    check_lossless(name, JLS_PLUGIN, stored)
    frame = frame_of(OUT / f"{name}.dcm")
    print(f"{name}: {jpegls_header(frame)}")
    check_other_decoders(name, frame, "jls", stored)

    # 23. Native YBR_FULL_422 (PS3.3 C.7.6.3.1.2): per pair of pixels
    #     Y1 Y2 Cb Cr, so Pixel Data is rows * cols * 2 bytes. No expected
    #     PNG: the decoder keeps the Y plane, which the Rust test reads from
    #     the file. pydicom decodes it, as a check that the file is what it
    #     claims to be.
    name = "ybr_full_422_u8_native"
    rgb = colour_field(WIDTH, HEIGHT, 23).astype(np.float64)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    cb = 128 - 0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 128 + 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    q = lambda a: np.clip(np.floor(a + 0.5), 0, 255).astype(np.uint8)  # noqa: E731
    y8 = q(y)
    cb8 = q((cb[:, 0::2] + cb[:, 1::2]) / 2)  # one Cb, Cr per pair of pixels
    cr8 = q((cr[:, 0::2] + cr[:, 1::2]) / 2)
    packed = np.stack([y8[:, 0::2], y8[:, 1::2], cb8, cr8], axis=-1)  # Y1 Y2 Cb Cr
    ds = base_dataset(23, ExplicitVRLittleEndian, HEIGHT, WIDTH)
    set_bits(ds, 8, 8, False)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.PixelData = packed.tobytes()
    if len(ds.PixelData) != WIDTH * HEIGHT * 2:
        raise SystemExit(f"{name}: Pixel Data {len(ds.PixelData)} bytes")
    save(ds, name)
    back = pydicom.dcmread(OUT / f"{name}.dcm")
    back.pixel_array_options(as_rgb=False)
    ycc = back.pixel_array  # upsampled Y Cb Cr, pixel by pixel
    if not (np.array_equal(ycc[..., 0], y8) and np.array_equal(ycc[:, 0::2, 1], cb8)
            and np.array_equal(ycc[:, 1::2, 2], cr8)):
        raise SystemExit(f"{name}: pydicom reads back different samples")
    roundtrip = np.abs(pydicom.dcmread(OUT / f"{name}.dcm").pixel_array.astype(np.int64)
                       - rgb.astype(np.int64)).max()
    print(f"{name}: {len(ds.PixelData)} bytes of Pixel Data; pydicom's RGB vs the "
          f"source RGB: max abs {roundtrip} (chroma subsampling)")

    # 24. JPEG Baseline, RGB stored without colour transform: Adobe APP14
    #     transform 0, component ids 'R' 'G' 'B', no JFIF APP0 (Pillow's
    #     keep_rgb=True, libjpeg-turbo). Expected: luma of Pillow's
    #     decoding (which honours APP14 transform 0).
    name = "rgb_u8_jpeg_baseline_rgb"
    w, h = 32, 24
    rgb = colour_field(w, h, 24)
    buf = BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=90,
                                          keep_rgb=True, subsampling=0)
    jpeg = buf.getvalue()
    segments = jpeg_segments(jpeg)
    app14 = [p for m, p in segments if m == 0xEE]
    sof0 = [p for m, p in segments if m == 0xC0]
    if any(m == 0xE0 for m, _ in segments):
        raise SystemExit(f"{name}: has a JFIF APP0 (implies YCbCr)")
    if len(app14) != 1 or app14[0][:5] != b"Adobe" or app14[0][11] != 0:
        raise SystemExit(f"{name}: want one Adobe APP14 with transform 0")
    if len(sof0) != 1 or sof0[0][5] != 3 or bytes(sof0[0][6:15:3]) != b"RGB" \
            or set(sof0[0][7:15:3]) != {0x11}:
        raise SystemExit(f"{name}: want a baseline frame of components R G B, 1x1")
    samples = np.asarray(Image.open(BytesIO(jpeg)).convert("RGB"))
    ds = base_dataset(24, JPEGBaseline8Bit, h, w)
    set_bits(ds, 8, 8, False)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ratio = set_lossy(ds, jpeg, "ISO_10918_1")
    want = luma(samples)
    save(ds, name, None, want)
    print(f"{name}: {len(jpeg)} bytes, ratio {ratio:.2f}, APP14 transform "
          f"{app14[0][11]}, components {bytes(sof0[0][6:15:3])!r}; vs the source RGB "
          f"max abs {np.abs(samples.astype(np.int64) - rgb).max()}")
    others = other_decoders(name, jpeg, "jpeg")
    for plugin in ("pylibjpeg", "pillow"):
        try:
            others[f"pydicom+{plugin}"] = decoded(OUT / f"{name}.dcm", plugin)
        except (RuntimeError, ValueError) as e:
            print(f"{name}: pydicom with {plugin}: {e.__class__.__name__}: {e}")
    report_diffs(name, samples, others, luma)
    # What a decoder that wrongly applies YCbCr -> RGB would show.
    wrong = luma(ycbcr_to_rgb(samples))
    diff = np.abs(wrong.astype(np.int64) - want.astype(np.int64))
    print(f"{name}: wrongly YCbCr-converted vs expected: max abs diff {diff.max()}, "
          f"mean {diff.mean():.1f}")
    if diff.max() <= 10:
        raise SystemExit(f"{name}: a wrong colour transform would not show")


def colour_field(w: int, h: int, seed: int) -> np.ndarray:
    """8-bit RGB with three unlike channels (as for rgb_u8_planar)."""
    rng = np.random.default_rng(seed)
    return np.stack([
        scaled(xray_field(w, h, seed), 0, 255),
        scaled(xray_field(w, h, seed + 100), 20, 200),
        rng.integers(0, 256, size=(h, w)),
    ], axis=-1).astype(np.uint8)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """JFIF YCbCr -> RGB (what a decoder does to a JFIF 3-component frame)."""
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack([y + 1.402 * (cr - 128),
                    y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], axis=-1)
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def jpegls_header(frame: bytes) -> dict:
    """SOF55 and SOS of a JPEG-LS stream (ISO 14495-1 C.2.2, C.2.3)."""
    segments = jpeg_segments(frame)
    sof = [p for m, p in segments if m == 0xF7]
    sos = [p for m, p in segments if m == 0xDA]
    if frame[:2] != b"\xFF\xD8" or len(sof) != 1 or len(sos) != 1:
        raise SystemExit("not a JPEG-LS stream (SOI, SOF55, SOS)")
    ns = sos[0][0]
    return {"precision": sof[0][0], "size": (int.from_bytes(sof[0][3:5], "big"),
                                              int.from_bytes(sof[0][1:3], "big")),
            "components": sof[0][5], "near": sos[0][1 + 2 * ns],
            "interleave": sos[0][2 + 2 * ns]}


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only-new", action="store_true",
        help="write only the second set (JPEG 2000, JPEG-LS, ...), leaving "
             "the files of the first set as they are")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.only_new:
        for old in OUT.glob("*"):
            old.unlink()
        original_fixtures()
    new_fixtures()

    total = sum(p.stat().st_size for p in OUT.iterdir())
    for p in sorted(OUT.iterdir()):
        print(f"{p.stat().st_size:7d}  {p.name}")
    print(f"{total:7d}  total")


if __name__ == "__main__":
    main()
