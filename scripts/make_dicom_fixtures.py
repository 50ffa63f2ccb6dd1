#!/usr/bin/env python3
"""Regenerate the DICOM fixtures of shared/vision (chexvision-vision).

Usage (Python 3.11):
    pip install pydicom numpy Pillow pylibjpeg pylibjpeg-libjpeg
    python3 scripts/make_dicom_fixtures.py

(pylibjpeg-libjpeg only lets pydicom read back the JPEG Lossless file, as a
check of the small encoder below; without it that check is skipped.)

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
bytes. The JPEG 2000 file holds garbage on purpose (unsupported-syntax
test) and has no expected PNG.
"""
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
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


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()

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

    # 14. JPEG 2000 Lossless transfer syntax with a garbage payload:
    #     must be refused as unsupported, by name.
    ds = base_dataset(14, JPEG2000Lossless, HEIGHT, WIDTH)
    set_bits(ds, 16, 16, False)
    garbage = np.random.default_rng(14).integers(0, 256, size=96, dtype=np.uint8)
    ds.PixelData = encapsulate([garbage.tobytes()])
    ds["PixelData"].VR = "OB"
    save(ds, "unsupported_jpeg2000")

    total = sum(p.stat().st_size for p in OUT.iterdir())
    for p in sorted(OUT.iterdir()):
        print(f"{p.stat().st_size:7d}  {p.name}")
    print(f"{total:7d}  total")


if __name__ == "__main__":
    main()
