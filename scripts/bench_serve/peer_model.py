#!/usr/bin/env python3
"""The PyTorch twin of chexvision-inference for the serving benchmark.

Loads a CheXVision checkpoint (safetensors whose tensor names are the
PyTorch state dict, metadata as shared/models/src/checkpoint.rs writes it)
into torchvision's DenseNet ``features`` + our two heads (the model of
scripts/make_model_fixtures.py), and preprocesses an encoded image the way
our service does (services/preprocess ``prepare_image`` +
shared/vision ``to_tensor_imagenet``):

1. decode to 8-bit grey: Pillow ``convert("L")`` (ITU-R 601 luma, alpha
   ignored); 16-bit samples ``>> 8`` as shared/vision/src/decode.rs does;
2. resize to the checkpoint's ``input_size`` square, Pillow BILINEAR (the
   antialiased triangle filter our resize reproduces);
3. CLAHE, ``cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))``;
4. ``v / 255``, replicated to 3 channels, ImageNet mean/std, via the same
   f64-computed, f32-rounded lookup table as ``to_tensor_imagenet``.

Outputs are probabilities (sigmoid of the logits): ``findings`` (N, 14) and
``abnormal`` (N, 1), float32.

Self-test / single-process timing:

    python3 scripts/bench_serve/peer_model.py CHECKPOINT IMAGE.png [IMAGE.png ...] [--threads 2]
"""

import argparse
import hashlib
import io
import json
import os
import struct
import sys
import threading
import time

import cv2
import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from make_model_fixtures import DualDenseNet  # noqa: E402  (scripts/make_model_fixtures.py)

MODEL_NAME = "chexvision"
LABELS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
NUM_FINDINGS = len(LABELS)
CLAHE_CLIP = 2.0
CLAHE_TILES = (8, 8)

# One OpenCV thread: the servers parallelise across requests, and torch owns
# the cores for the forward pass (a 256x256 CLAHE gains nothing from more).
cv2.setNumThreads(1)


class CheckpointError(ValueError):
    pass


def read_checkpoint(path, verify_digest=True):
    """(meta dict, state dict) of a CheXVision checkpoint, checked as
    shared/models/src/checkpoint.rs ``read_meta`` + ``Checkpoint::from_bytes``
    check it (format version, JSON fields, tensor digest)."""
    with safe_open(path, framework="pt") as f:
        info = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("chexvision.format", "architecture", "config", "labels", "input_size",
                "normalization", "parameter_count", "tensors_sha256"):
        if key not in info:
            raise CheckpointError(f"metadata has no `{key}` (not a CheXVision checkpoint?)")
    if info["chexvision.format"] != "1":
        raise CheckpointError(f"format version {info['chexvision.format']}, this reads 1")
    meta = {
        "architecture": info["architecture"],
        "config": json.loads(info["config"]),
        "labels": json.loads(info["labels"]),
        "input_size": int(info["input_size"]),
        "normalization": json.loads(info["normalization"]),
        "parameter_count": int(info["parameter_count"]),
        "tensors_sha256": info["tensors_sha256"],
        "extra": {k[len("extra."):]: v for k, v in info.items() if k.startswith("extra.")},
    }
    if verify_digest:
        digest = tensors_sha256(state)
        if digest != meta["tensors_sha256"]:
            raise CheckpointError(f"tensor digest {digest} does not match the recorded {meta['tensors_sha256']}")
    return meta, state


# candle's DType Debug names, which the Rust digest hashes.
_CANDLE_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                 torch.float64: "F64", torch.int64: "I64", torch.uint8: "U8"}


def tensors_sha256(state):
    """shared/models/src/checkpoint.rs ``tensors_sha256``: sha256 over
    (name length u64 LE, name, candle dtype name, each dim u64 LE, byte length
    u64 LE, little-endian bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(state, key=lambda s: s.encode()):
        t = state[name].detach().cpu().contiguous()
        if t.dtype not in _CANDLE_DTYPE:
            raise CheckpointError(f"`{name}` has dtype {t.dtype}, which candle does not read")
        nb = name.encode()
        h.update(struct.pack("<Q", len(nb)))
        h.update(nb)
        h.update(_CANDLE_DTYPE[t.dtype].encode())
        for d in t.shape:
            h.update(struct.pack("<Q", d))
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()


def build_model(meta, state):
    if meta["architecture"] != "densenet":
        raise CheckpointError(f"checkpoint is a {meta['architecture']} model; this benchmark serves densenet")
    cfg = meta["config"]
    if float(cfg.get("compression", 0.5)) != 0.5:
        raise CheckpointError("torchvision's DenseNet has compression 0.5 only")
    if meta["labels"] != LABELS:
        raise CheckpointError(f"label order {meta['labels']} differs from the 14 NIH findings")
    net = DualDenseNet(cfg["growth_rate"], tuple(cfg["block_config"]), cfg["num_init_features"], cfg["bn_size"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    # Our checkpoints carry no `num_batches_tracked` (candle keeps no such
    # counter); it plays no part in eval mode.
    missing = [k for k in missing if not k.endswith(".num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(f"state dict mismatch: missing {missing[:3]}... ({len(missing)}), "
                              f"unexpected {unexpected[:3]}... ({len(unexpected)})")
    net.eval()
    return net


class Preprocessor:
    """Encoded image bytes -> float32 (3, S, S), as our service prepares it."""

    def __init__(self, size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.size = int(size)
        v = np.arange(256, dtype=np.float64) / 255.0
        self.lut = np.stack([((v - m) / s) for m, s in zip(mean, std)]).astype(np.float32)  # (3, 256)
        self._local = threading.local()

    def _clahe(self):
        c = getattr(self._local, "clahe", None)
        if c is None:
            c = self._local.clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=CLAHE_TILES)
        return c

    @staticmethod
    def decode_gray8(data):
        img = Image.open(io.BytesIO(bytes(data)))
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # 16-bit grey: the high byte, as our decoder does (Pillow's
            # convert("L") would clip instead).
            arr = (np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            return Image.fromarray(arr, mode="L")
        return img.convert("L")

    def gray(self, data):
        """The 8-bit equalised image (S, S) uint8."""
        img = self.decode_gray8(data)
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return self._clahe().apply(np.ascontiguousarray(arr))

    def __call__(self, data):
        eq = self.gray(data)
        return self.lut[:, eq]  # (3, S, S) float32: gather per channel


class PeerModel:
    """The checkpoint's model and preprocessing; thread-safe ``predict``."""

    def __init__(self, checkpoint, threads=None, interop_threads=None, verify_digest=True):
        if threads:
            torch.set_num_threads(int(threads))
        if interop_threads:
            try:
                torch.set_num_interop_threads(int(interop_threads))
            except RuntimeError:
                pass  # already set in this process
        self.meta, state = read_checkpoint(checkpoint, verify_digest=verify_digest)
        self.net = build_model(self.meta, state)
        norm = self.meta["normalization"]
        self.size = self.meta["input_size"]
        self.preprocess = Preprocessor(self.size, norm["mean"], norm["std"])

    def forward(self, batch):
        """float32 (N, 3, S, S) -> (findings (N, 14), abnormal (N, 1)) probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            ml, bl = self.net(x)
            return torch.sigmoid(ml).numpy(), torch.sigmoid(bl).numpy()

    def predict(self, images):
        """List of encoded images -> (findings, abnormal)."""
        batch = np.stack([self.preprocess(b) for b in images])
        return self.forward(batch)

    def warmup(self, batch_sizes=(1,)):
        for n in batch_sizes:
            self.forward(np.zeros((n, 3, self.size, self.size), np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = PeerModel(args.checkpoint, threads=args.threads)
    load_s = time.perf_counter() - t0
    model.warmup()
    blobs = [open(p, "rb").read() for p in args.images]
    t0 = time.perf_counter()
    batch = np.stack([model.preprocess(b) for b in blobs])
    pre_ms = (time.perf_counter() - t0) * 1000 / len(blobs)
    t0 = time.perf_counter()
    findings, abnormal = model.forward(batch)
    fwd_ms = (time.perf_counter() - t0) * 1000
    print(json.dumps({
        "input_size": model.size, "threads": torch.get_num_threads(), "load_s": round(load_s, 2),
        "preprocess_ms_per_image": round(pre_ms, 1), "forward_ms_batch": round(fwd_ms, 1), "batch": len(blobs),
        "findings0": [round(float(v), 4) for v in findings[0]], "abnormal0": round(float(abnormal[0, 0]), 4),
    }))


if __name__ == "__main__":
    main()
