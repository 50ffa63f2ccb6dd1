#!/usr/bin/env python3
"""DICOM decode benchmark: pydicom (with its plugins) per transfer syntax,
merged with the Rust decoder's timings when given.

Usage (Python 3.11):
    pip install "pydicom>=3" numpy pylibjpeg pylibjpeg-openjpeg \\
        pylibjpeg-libjpeg pyjpegls imagecodecs Pillow
    python3 scripts/bench_dicom_decode.py --out /tmp/dcmbench [--repeat 5]
    # then, with the Rust timings (one JSON line per file,
    # {"file": ..., "ms_median": ..., "ms_best": ...}):
    python3 scripts/bench_dicom_decode.py --out /tmp/dcmbench --merge-only \\
        --rust-json /tmp/dcmbench/rust.jsonl
    # or in one go:
    python3 scripts/bench_dicom_decode.py --out /tmp/dcmbench \\
        --rust-cmd "cargo run --release -p chexvision-vision \\
                    --example dicom_decode_bench -- --repeat 5 {files}"
(scripts/bench_dicom_decode.sh does the three steps.)

Versions last used: pydicom 3.0.2, numpy 2.4.6, pylibjpeg 2.1.0,
pylibjpeg-openjpeg 2.6.0 (OpenJPEG 2.5.2), pylibjpeg-libjpeg 2.5.0,
pyjpegls 1.5.1 (CharLS 2.4.2), Pillow 13.0.0 (OpenJPEG 2.5.4), imagecodecs
2026.3.6 (only to encode JPEG Lossless SV1: libjpeg-turbo 3.1.3).

Generates into --out (not committed) one chest X-ray-sized file per
transfer syntax, --rows x --cols (default 2500 x 2048), 16 bits allocated,
12 stored, MONOCHROME2 with a window, holding one X-ray-like field
(collimation border, body, lungs, ribs, vessels-like texture, a lead
marker) with signal-dependent noise (about 8 units of 4095 mid-grey), so
that lossless coders reach ratios like real radiographs (about 2-3:1
against the 16-bit native size):

    native      Explicit VR Little Endian        pydicom
    rle         RLE Lossless                     pydicom's encoder (plugin
                                                 picked by pydicom)
    jpeg_sv1    JPEG Lossless SV1 (process 14)   imagecodecs (libjpeg-turbo),
                                                 skipped without imagecodecs
    j2k         JPEG 2000 Lossless               pylibjpeg-openjpeg
    j2k_lossy   JPEG 2000 (9-7, --j2k-cr)        pylibjpeg-openjpeg
    jls         JPEG-LS Lossless                 pyjpegls
    jls_near    JPEG-LS Near-Lossless (--near)   pyjpegls

Each lossless file is checked to decode back to the field. Then, for each
file and each pydicom decoding plugin available for its syntax (the
plugin pydicom uses by default is marked), times a fresh
`dcmread(path)` + `.pixel_array` --repeat times after one untimed warm-up
(the file is then in the page cache), and reports the median and the best
in ms. pixel_array gives the stored values (no VOI / 8-bit mapping, which
the Rust decode_gray8 also does).

Threads: everything runs single-threaded. OpenJPEG only starts worker
threads when OPJ_NUM_THREADS is set (neither pylibjpeg-openjpeg nor
Pillow call opj_codec_set_threads), so the variable is removed here;
CharLS, libjpeg (pylibjpeg-libjpeg) and pydicom's RLE decoder are
single-threaded; OMP/BLAS pools are pinned to 1 for numpy.

Writes OUT/pydicom.json (a list of records: file, syntax (pydicom's UID
keyword), syntax_uid, syntax_name, bytes, rows, cols, plugin, plugin_version, default_plugin,
pydicom_ms_median, pydicom_ms_best, pydicom_version), and with Rust
timings OUT/merged.json (the records plus rust_ms_median, rust_ms_best,
ratio = rust_ms_median / pydicom_ms_median), and prints a Markdown table.
"""
import os

os.environ.pop("OPJ_NUM_THREADS", None)
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.uid import (  # noqa: E402
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

UID_ROOT = "2.25.1234567890123456789.77"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

# Distribution behind each pydicom plugin, per syntax, for the version.
PLUGIN_PACKAGES = {
    ("pylibjpeg", "j2k"): ["pylibjpeg", "pylibjpeg-openjpeg"],
    ("pylibjpeg", "jls"): ["pylibjpeg", "pylibjpeg-libjpeg"],
    ("pylibjpeg", "jpeg"): ["pylibjpeg", "pylibjpeg-libjpeg"],
    ("pylibjpeg", "rle"): ["pylibjpeg", "pylibjpeg-rle"],
    ("pyjpegls", "jls"): ["pyjpegls"],
    ("pillow", "j2k"): ["Pillow"],
    ("pillow", "jpeg"): ["Pillow"],
    ("gdcm", "j2k"): ["python-gdcm"],
    ("gdcm", "jls"): ["python-gdcm"],
    ("gdcm", "jpeg"): ["python-gdcm"],
    ("gdcm", "rle"): ["python-gdcm"],
    ("pydicom", "rle"): [],
}
FAMILY = {
    JPEG2000Lossless: "j2k", JPEG2000: "j2k", JPEGLSLossless: "jls",
    JPEGLSNearLossless: "jls", JPEGLosslessSV1: "jpeg", RLELossless: "rle",
}


# ---------------------------------------------------------------------------
# The image


def xray_12bit(rows: int, cols: int, seed: int = 2048) -> np.ndarray:
    """A chest-radiograph-like 12-bit field (uint16, values 0..4095)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, rows)[:, None]
    x = np.linspace(0.0, 1.0, cols)[None, :]
    img = 0.10 + 0.10 * y + 0.05 * np.sin(np.pi * x)  # background, float64
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.58) / 0.52) ** 2 < 1.0
    img = img + 0.40 * body
    for cx in (0.30, 0.70):  # lungs, darker
        lung = np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.47) / 0.27) ** 2) ** 2)
        img = img - 0.28 * lung
    heart = np.exp(-(((x - 0.55) / 0.12) ** 2 + ((y - 0.62) / 0.14) ** 2))
    img = img + 0.18 * heart
    spine = np.exp(-((x - 0.5) / 0.035) ** 2) * body
    img = img + 0.15 * spine
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (11 * y + 1.5 * np.abs(x - 0.5) ** 1.3))
    img = img + 0.06 * ribs ** 4 * body
    # Vessel-like texture: band-limited noise (FFT filter), mostly in the body.
    white = rng.normal(0.0, 1.0, size=(rows, cols))
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    f = np.hypot(fy, fx)
    band = np.exp(-((f - 0.02) / 0.015) ** 2)
    texture = np.fft.irfft2(np.fft.rfft2(white) * band, s=(rows, cols))
    texture /= texture.std()
    img = img + 0.02 * texture * body
    v = 150.0 + np.clip(img, 0.0, 1.0) * 3600.0
    # Collimation: a flat, dark border.
    border = (x < 0.04) | (x > 0.96) | (y < 0.03) | (y > 0.97)
    v = np.where(border, 120.0, v)
    # Lead marker: a bright rectangle.
    r0, c0 = int(rows * 0.08), int(cols * 0.08)
    v[r0:r0 + rows // 40, c0:c0 + cols // 40] = 4000.0
    # Quantum-like noise, signal dependent: ~8 units at mid-grey.
    v = v + rng.normal(0.0, 1.0, size=v.shape) * 0.18 * np.sqrt(v)
    return np.clip(np.rint(v), 0, 4095).astype(np.uint16)


def dataset(rows: int, cols: int, n: int, pixels: np.ndarray) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.{n}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = f"{UID_ROOT}.999"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = f"{UID_ROOT}.{n}.1"
    ds.SeriesInstanceUID = f"{UID_ROOT}.{n}.2"
    ds.Modality = "DX"
    ds.PatientID = "BENCH"
    ds.PatientName = "Bench^Synthetic"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2000
    ds.WindowWidth = 3600
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def set_lossy(ds: Dataset, frame_len: int, method: str) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{ds.Rows * ds.Columns * 2 / frame_len:.2f}"
    ds.LossyImageCompressionMethod = method


def generate(out: Path, rows: int, cols: int, j2k_cr: float, near: int) -> list[dict]:
    """Write the files; return [{file, syntax, uid, lossless}]."""
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pixels = xray_12bit(rows, cols)
    print(f"field {rows}x{cols}: {time.perf_counter() - t:.1f} s, values "
          f"{pixels.min()}..{pixels.max()}", file=sys.stderr)
    made = []

    def write(tag: str, n: int, uid: str, encode, lossless: bool) -> None:
        t = time.perf_counter()
        ds = dataset(rows, cols, n, pixels)
        try:
            encode(ds)
        except (RuntimeError, ImportError, ValueError) as e:
            print(f"{tag}: skipped ({e.__class__.__name__}: {e})", file=sys.stderr)
            return
        path = out / f"bench_{tag}.dcm"
        ds.save_as(path, enforce_file_format=True)
        print(f"{tag}: {path.stat().st_size / 1e6:.2f} MB, ratio "
              f"{rows * cols * 2 / path.stat().st_size:.2f}, encoded in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        made.append({"file": str(path), "syntax": uid.keyword, "syntax_uid": str(uid),
                     "syntax_name": uid.name, "lossless": lossless})

    write("native", 1, ExplicitVRLittleEndian, lambda ds: None, True)
    write("rle", 2, RLELossless,
          lambda ds: ds.compress(RLELossless, generate_instance_uid=False), True)

    def sv1(ds: Dataset) -> None:
        import imagecodecs

        frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1,
                                         bitspersample=12)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    write("jpeg_sv1", 3, JPEGLosslessSV1, sv1, True)
    write("j2k", 4, JPEG2000Lossless,
          lambda ds: ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg",
                                 generate_instance_uid=False), True)

    def j2k_lossy(ds: Dataset) -> None:
        ds.compress(JPEG2000, encoding_plugin="pylibjpeg", generate_instance_uid=False,
                    j2k_cr=[j2k_cr])
        set_lossy(ds, len(ds.PixelData), "ISO_15444_1")

    write("j2k_lossy", 5, JPEG2000, j2k_lossy, False)
    write("jls", 6, JPEGLSLossless,
          lambda ds: ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls",
                                 generate_instance_uid=False), True)

    def jls_near(ds: Dataset) -> None:
        ds.compress(JPEGLSNearLossless, encoding_plugin="pyjpegls",
                    generate_instance_uid=False, jls_error=near)
        set_lossy(ds, len(ds.PixelData), "ISO_14495_1")

    write("jls_near", 7, JPEGLSNearLossless, jls_near, False)

    # The lossless ones decode back to the field; the lossy ones stay close.
    for rec in made:
        got = pydicom.dcmread(rec["file"]).pixel_array.astype(np.int64)
        err = int(np.abs(got - pixels).max())
        if rec["lossless"] and err:
            raise SystemExit(f"{rec['file']}: lossless file decodes with error {err}")
        if rec["syntax_uid"] == JPEGLSNearLossless and err > near:
            raise SystemExit(f"{rec['file']}: error {err} > NEAR {near}")
        rec["max_abs_error"] = err
    return made


# ---------------------------------------------------------------------------
# Timing


def plugin_version(plugin: str, uid: str) -> str:
    names = PLUGIN_PACKAGES.get((plugin, FAMILY.get(uid, "")), [])
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} ?")
    if plugin == "pylibjpeg" and FAMILY.get(uid) == "j2k":
        try:
            import _openjpeg

            parts.append(f"OpenJPEG {_openjpeg.get_version().decode()}")
        except (ImportError, AttributeError):
            pass
    if plugin == "pillow" and FAMILY.get(uid) == "j2k":
        from PIL import features

        parts.append(f"OpenJPEG {features.version('jpg_2000')}")
    return ", ".join(parts) or f"pydicom {pydicom.__version__}"


def plugins_for(uid: str) -> tuple[list[str], str]:
    """(available decoding plugins, the one pydicom tries first)."""
    if not pydicom.uid.UID(uid).is_compressed:
        return ["native"], "native"
    dec = get_decoder(uid)
    ordered = list(getattr(dec, "_available", {}).keys()) or list(dec.available_plugins)
    return ordered, ordered[0]


def time_decode(path: str, plugin: str, repeat: int) -> list[float]:
    def once() -> float:
        t = time.perf_counter()
        ds = pydicom.dcmread(path)
        if plugin != "native":
            ds.pixel_array_options(decoding_plugin=plugin)
        arr = ds.pixel_array
        ms = (time.perf_counter() - t) * 1e3
        assert arr.shape == (ds.Rows, ds.Columns)
        return ms

    once()  # warm-up: imports, page cache
    return [once() for _ in range(repeat)]


def bench(files: list[dict], repeat: int, which: str) -> list[dict]:
    records = []
    for rec in files:
        path = rec["file"]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        plugins, default = plugins_for(rec["syntax_uid"])
        if which == "default":
            plugins = [default]
        for plugin in plugins:
            try:
                times = time_decode(path, plugin, repeat)
            except Exception as e:  # a plugin that cannot decode this file
                print(f"{Path(path).name} / {plugin}: {e.__class__.__name__}: {e}",
                      file=sys.stderr)
                continue
            r = {
                "file": path, "syntax": rec["syntax"], "syntax_uid": rec["syntax_uid"],
                "syntax_name": rec["syntax_name"],
                "bytes": Path(path).stat().st_size, "rows": int(ds.Rows),
                "cols": int(ds.Columns), "plugin": plugin,
                "plugin_version": plugin_version(plugin, rec["syntax_uid"]),
                "default_plugin": plugin == default,
                "pydicom_version": pydicom.__version__,
                "pydicom_ms_median": round(statistics.median(times), 2),
                "pydicom_ms_best": round(min(times), 2),
                "repeat": repeat,
            }
            if "max_abs_error" in rec:
                r["max_abs_error"] = rec["max_abs_error"]
            print(f"{Path(path).name:22} {plugin:10} median {r['pydicom_ms_median']:9.1f} ms"
                  f"  best {r['pydicom_ms_best']:9.1f} ms", file=sys.stderr)
            records.append(r)
    return records


# ---------------------------------------------------------------------------
# Rust timings and the table


def parse_rust_lines(text: str) -> dict[str, dict]:
    rows = {}
    text = text.strip()
    if text.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    for item in items:
        if "file" in item and "ms_median" in item:
            rows[str(Path(item["file"]).resolve())] = item
    return rows


def run_rust(cmd: str, files: list[str]) -> dict[str, dict]:
    quoted = " ".join(shlex.quote(f) for f in files)
    full = cmd.replace("{files}", quoted)
    print(f"running: {full}", file=sys.stderr)
    done = subprocess.run(full, shell=True, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the Rust command failed with exit status {done.returncode}")
    return parse_rust_lines(done.stdout)


def merge(records: list[dict], rust: dict[str, dict]) -> list[dict]:
    by_name = {Path(k).name: v for k, v in rust.items()}
    merged = []
    for r in records:
        item = rust.get(str(Path(r["file"]).resolve())) or by_name.get(Path(r["file"]).name)
        m = dict(r)
        if item is not None:
            m["rust_ms_median"] = float(item["ms_median"])
            m["rust_ms_best"] = float(item.get("ms_best", item["ms_median"]))
            m["ratio"] = round(m["rust_ms_median"] / r["pydicom_ms_median"], 3)
        merged.append(m)
    missing = {Path(r["file"]).name for r in records} - set(by_name)
    if rust and missing:
        print(f"no Rust timing for: {', '.join(sorted(missing))}", file=sys.stderr)
    return merged


def markdown(records: list[dict]) -> str:
    rust = any("rust_ms_median" in r for r in records)
    head = ["file", "syntax", "MB", "rows x cols", "pydicom plugin",
            "pydicom median ms", "pydicom best ms"]
    if rust:
        head += ["Rust median ms", "Rust best ms", "Rust / pydicom"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        plugin = r["plugin"] + (" (default)" if r["default_plugin"] and r["plugin"] != "native" else "")
        row = [Path(r["file"]).name, r["syntax"], f"{r['bytes'] / 1e6:.2f}",
               f"{r['rows']} x {r['cols']}", f"{plugin}: {r['plugin_version']}",
               f"{r['pydicom_ms_median']:.1f}", f"{r['pydicom_ms_best']:.1f}"]
        if rust:
            if "rust_ms_median" in r:
                row += [f"{r['rust_ms_median']:.1f}", f"{r['rust_ms_best']:.1f}",
                        f"{r['ratio']:.2f}"]
            else:
                row += ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the files and JSON")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per file (default 5)")
    ap.add_argument("--rows", type=int, default=2500)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--j2k-cr", type=float, default=10.0,
                    help="JPEG 2000 lossy compression ratio given to OpenJPEG "
                         "(against 12-bit precision; default 10)")
    ap.add_argument("--near", type=int, default=2, help="JPEG-LS NEAR (default 2)")
    ap.add_argument("--plugins", choices=["all", "default"], default="all",
                    help="time every available pydicom plugin, or only the default")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse OUT/files.json instead of generating again")
    ap.add_argument("--merge-only", action="store_true",
                    help="no generating or timing: merge OUT/pydicom.json with the Rust timings")
    ap.add_argument("--rust-cmd", help='command printing the Rust JSON lines; "{files}" is '
                                       "replaced by the files, quoted")
    ap.add_argument("--rust-json", type=Path,
                    help="file of Rust JSON lines (or one JSON list) to merge")
    ap.add_argument("--list-files", action="store_true",
                    help="print the generated files, one a line, on stdout and stop")
    args = ap.parse_args()
    out = args.out.resolve()
    index = out / "files.json"

    if args.merge_only:
        records = json.loads((out / "pydicom.json").read_text())
    else:
        if args.reuse and index.exists():
            files = json.loads(index.read_text())
        else:
            files = generate(out, args.rows, args.cols, args.j2k_cr, args.near)
            index.write_text(json.dumps(files, indent=1))
        if args.list_files:
            print("\n".join(f["file"] for f in files))
            return
        records = bench(files, args.repeat, args.plugins)
        (out / "pydicom.json").write_text(json.dumps(records, indent=1))

    rust = {}
    if args.rust_json:
        rust.update(parse_rust_lines(args.rust_json.read_text()))
    if args.rust_cmd:
        rust.update(run_rust(args.rust_cmd, sorted({r["file"] for r in records})))
    merged = merge(records, rust)
    if rust:
        (out / "merged.json").write_text(json.dumps(merged, indent=1))
    print(markdown(merged))


if __name__ == "__main__":
    main()
