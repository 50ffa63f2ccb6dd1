#!/usr/bin/env python3
"""Writes a DenseNet-121 checkpoint in CheXVision's format for the serving
benchmark: torchvision ``densenet121`` (ImageNet-shaped, weights=None, so
nothing is downloaded) with seeded random weights, plus our two heads
(``heads.multilabel`` 1024->14, ``heads.binary`` 1024->1).

    python3 scripts/bench_serve/make_checkpoint.py OUT.safetensors [--input-size 224] [--seed 121]

The file is what shared/models/src/checkpoint.rs ``checkpoint_bytes`` writes
and ``read_meta`` / ``Checkpoint::from_bytes`` require, so the Rust service
loads it too:

* tensors: the state dict by PyTorch name, float32, BatchNorm running
  statistics included, ``num_batches_tracked`` left out (candle keeps no
  such counter, so a Rust-made checkpoint has none);
* metadata (all strings): ``chexvision.format`` = ``1``, ``architecture`` =
  ``densenet``, ``config`` (the ModelConfig JSON, serde's tagged form and
  field order), ``labels`` (JSON array, NIH order), ``input_size``,
  ``normalization`` (``{"mean": [...], "std": [...]}``), ``parameter_count``
  (BatchNorm buffers excluded), ``tensors_sha256`` (the Rust digest, see
  peer_model.tensors_sha256), ``extra.*``.

BatchNorm layers get seeded random affine parameters and running statistics
(as scripts/make_model_fixtures.py does), so the outputs are not those of an
identity-normalised network. The same seed gives the same tensors and
``tensors_sha256`` (the file's bytes may differ: safetensors writes the
metadata map in hash order).
"""

import argparse
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_model import LABELS, DualDenseNet, read_checkpoint, tensors_sha256  # noqa: E402

# serde_json's compact output of ModelConfig::densenet121() (tag first, then
# the fields in struct order).
CONFIG = {"architecture": "densenet", "growth_rate": 32, "block_config": [6, 12, 24, 16],
          "num_init_features": 64, "bn_size": 4, "compression": 0.5}
NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def is_buffer(name):
    return name.endswith((".running_mean", ".running_var", ".num_batches_tracked"))


def to_json(v):
    return json.dumps(v, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=121)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    reference = torchvision.models.densenet121(weights=None)
    net = DualDenseNet(CONFIG["growth_rate"], tuple(CONFIG["block_config"]), CONFIG["num_init_features"],
                       CONFIG["bn_size"])
    net.features.load_state_dict(reference.features.state_dict())  # torchvision's own init, seeded
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
        for head in (net.heads.multilabel, net.heads.binary):
            head.weight.normal_(0.0, 0.02, generator=gen)
            head.bias.zero_()

    state = {k: v.detach().to(torch.float32).contiguous().clone()
             for k, v in net.state_dict().items() if not k.endswith(".num_batches_tracked")}
    params = sum(v.numel() for k, v in state.items() if not is_buffer(k))
    meta = {
        "chexvision.format": "1",
        "architecture": "densenet",
        "config": to_json(CONFIG),
        "labels": to_json(LABELS),
        "input_size": str(args.input_size),
        "normalization": to_json(NORMALIZATION),
        "parameter_count": str(params),
        "tensors_sha256": tensors_sha256(state),
        "extra.source": "scripts/bench_serve/make_checkpoint.py",
        "extra.seed": str(args.seed),
        "extra.synthetic": "true",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(state, args.out, metadata=meta)
    # Read it back the way the peers (and, in kind, the Rust loader) do.
    back, _ = read_checkpoint(args.out)
    print(json.dumps({"out": args.out, "bytes": os.path.getsize(args.out), "tensors": len(state),
                      "parameter_count": params, "input_size": back["input_size"],
                      "tensors_sha256": back["tensors_sha256"]}))


if __name__ == "__main__":
    main()
