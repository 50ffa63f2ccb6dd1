#!/usr/bin/env python3
"""Writes a small Parquet file in the schema of the published 320 px dataset
(arudaev/chest-xray-14-320: `image` struct {bytes, path}, `labels`
pipe-separated, `filename`), as pyarrow writes it (snappy, several row
groups), with a few broken rows the reader must set aside.

    pip install pyarrow && python3 scripts/make_hf_parquet_fixture.py

Output: shared/dataset/tests/fixtures/hf_320_sample.parquet
"""
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def gray_png(width: int, height: int, level: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes([(level + x + y) % 256 for x in range(width)]) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


rows = [
    ("00000001_000.png", "Cardiomegaly", gray_png(32, 32, 10)),
    ("00000001_001.png", "Cardiomegaly|Emphysema", gray_png(32, 32, 20)),
    ("00000002_000.png", "No Finding", gray_png(32, 32, 30)),
    ("00000003_000.png", "Hernia", gray_png(32, 32, 40)),
    ("00000003_001.png", "Hernia|Infiltration", gray_png(32, 32, 50)),
    ("00000004_000.png", "Mass|Nodule|Effusion", gray_png(32, 32, 60)),
    ("00000005_000.png", "Pneumonia", gray_png(32, 32, 70)),
    ("00000006_000.png", "No Finding", gray_png(32, 32, 80)),
    # Broken rows: an unknown label, a name without a patient id, no bytes.
    ("00000007_000.png", "Fracture", gray_png(32, 32, 90)),
    ("scan-42.png", "No Finding", gray_png(32, 32, 100)),
    ("00000008_000.png", "No Finding", None),
    ("00000009_000.png", "Atelectasis", gray_png(32, 32, 110)),
]
table = pa.table(
    {
        "image": pa.array(
            [{"bytes": data, "path": name} for name, _, data in rows],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        ),
        "labels": pa.array([labels for _, labels, _ in rows], type=pa.string()),
        "filename": pa.array([name for name, _, _ in rows], type=pa.string()),
    }
)
out = Path(__file__).resolve().parent.parent / "shared/dataset/tests/fixtures/hf_320_sample.parquet"
pq.write_table(table, out, row_group_size=5, compression="snappy")
print(f"wrote {out} ({out.stat().st_size} bytes, {len(rows)} rows)")
