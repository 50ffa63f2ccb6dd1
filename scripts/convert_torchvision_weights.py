#!/usr/bin/env python3
"""Convert a torchvision DenseNet state dict (.pth) to safetensors for
`chexvision_models::load_torchvision_backbone`.

    pip install torch safetensors
    python3 scripts/convert_torchvision_weights.py densenet121-a639ec97.pth densenet121.safetensors

The official ImageNet weights are torchvision's
`DenseNet121_Weights.IMAGENET1K_V1`, published at
https://download.pytorch.org/models/densenet121-a639ec97.pth
(ImageNet top-1 74.434 %). `torchvision.models.densenet121(weights="IMAGENET1K_V1")`
downloads the same file into ~/.cache/torch/hub/checkpoints/.

What the conversion does:
* renames the legacy keys of that file (`denselayer1.norm.1.weight`) to
  the names torchvision's DenseNet has used since (`denselayer1.norm1.weight`),
  with the same pattern torchvision applies when it loads the file;
* keeps every tensor, `classifier.*` and `num_batches_tracked` included (the
  Rust loader ignores those), as contiguous float32 (counters stay int64);
* records the source file name and its sha256 in the metadata.
"""

import argparse
import hashlib
import re

import torch
from safetensors.torch import save_file

# torchvision.models.densenet._load_state_dict uses this pattern.
LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def convert(state):
    out = {}
    for key, value in state.items():
        match = LEGACY.match(key)
        if match:
            key = match.group(1) + match.group(2)
        if value.is_floating_point():
            value = value.float()
        out[key] = value.contiguous()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="torchvision .pth state dict")
    ap.add_argument("dst", help="output .safetensors")
    args = ap.parse_args()
    with open(args.src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    state = torch.load(args.src, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = convert(state)
    missing = [k for k in ("features.conv0.weight", "features.norm5.weight") if k not in tensors]
    if missing:
        raise SystemExit(f"{args.src}: not a torchvision DenseNet state dict (no {', '.join(missing)})")
    save_file(tensors, args.dst, metadata={"source": args.src.rsplit("/", 1)[-1], "source_sha256": digest})
    params = sum(v.numel() for k, v in tensors.items() if "running_" not in k and "num_batches" not in k)
    print(f"{args.dst}: {len(tensors)} tensors, {params} parameters (classifier included), from sha256 {digest[:16]}…")


if __name__ == "__main__":
    main()
