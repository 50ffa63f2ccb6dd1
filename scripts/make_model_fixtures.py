#!/usr/bin/env python3
"""Reference outputs from PyTorch for the candle models (shared/models).

    pip install torch torchvision safetensors
    python3 scripts/make_model_fixtures.py                       # small fixtures, committed
    python3 scripts/make_model_fixtures.py --full OUT_DIR        # DenseNet-121 at 224 px, not committed

For each network the script writes two safetensors files:

* ``{name}.safetensors``: the state dict (torchvision key names, BatchNorm
  running statistics and ``num_batches_tracked`` included), what the Rust
  side loads;
* ``{name}_io.safetensors``: a fixed input batch, targets and ``pos_weight``,
  the eval-mode logits, the train-mode logits, the running statistics after
  that train-mode forward (``after.{key}``) and the gradient of the loss
  with respect to every parameter (``grad.{key}``).

The loss is the training loss of the architecture document: BCE with logits
and per-class ``pos_weight`` on the 14 findings plus 0.5 x BCE on the binary
head (no label smoothing here: the targets are given as they are).

The networks are torchvision's ``DenseNet`` (any growth/blocks/features) with
our two heads in place of ``classifier``, and an SE-ResNet written below that
mirrors ``shared/models/src/se_resnet.rs`` name for name.
"""

import argparse
import copy
import json
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

NUM_FINDINGS = 14


class DualHeads(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.multilabel = nn.Linear(features, NUM_FINDINGS)
        self.binary = nn.Linear(features, 1)

    def forward(self, pooled):
        return self.multilabel(pooled), self.binary(pooled)


class DualDenseNet(nn.Module):
    """torchvision DenseNet features + our heads (classifier dropped)."""

    def __init__(self, growth_rate, block_config, num_init_features, bn_size):
        super().__init__()
        net = torchvision.models.DenseNet(
            growth_rate=growth_rate,
            block_config=block_config,
            num_init_features=num_init_features,
            bn_size=bn_size,
            drop_rate=0.0,
        )
        self.features = net.features
        self.heads = DualHeads(net.classifier.in_features)

    def forward(self, x):
        f = F.relu(self.features(x))
        pooled = torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)
        return self.heads(pooled)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, reduction):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcitation(cout, reduction)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class SEResNet(nn.Module):
    def __init__(self, blocks, widths, stem_width, reduction, dropout):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        cin = stem_width
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                layer.append(BasicBlock(cin, w, stride, reduction))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.num_stages = len(blocks)
        self.dropout = nn.Dropout(dropout)
        self.heads = DualHeads(cin)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.heads(self.dropout(pooled))


def randomise_batchnorm(model, gen):
    # Fresh BatchNorm layers are the identity (weight 1, bias 0, mean 0,
    # var 1); random values make the test see every term.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.num_batches_tracked.fill_(3)


def loss_fn(ml, bl, y_ml, y_bin, pos_weight):
    ml_loss = F.binary_cross_entropy_with_logits(ml, y_ml, pos_weight=pos_weight)
    bin_loss = F.binary_cross_entropy_with_logits(bl, y_bin)
    return ml_loss + 0.5 * bin_loss


def write(model, name, out_dir, batch, size, seed, config, float64_reference=False):
    gen = torch.Generator().manual_seed(seed)
    randomise_batchnorm(model, gen)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, f"{name}.safetensors"), metadata={"config": json.dumps(config)})

    x = torch.randn(batch, 3, size, size, generator=gen)
    y_ml = (torch.rand(batch, NUM_FINDINGS, generator=gen) < 0.3).float()
    y_bin = y_ml.amax(1, keepdim=True)
    pos_weight = torch.rand(NUM_FINDINGS, generator=gen) * 5 + 0.5

    io = {"input": x, "target_multilabel": y_ml, "target_binary": y_bin, "pos_weight": pos_weight}
    model.eval()
    with torch.no_grad():
        ml, bl = model(x)
    io["eval.multilabel"], io["eval.binary"] = ml, bl

    model.train()
    model.zero_grad()
    ml, bl = model(x)
    loss = loss_fn(ml, bl, y_ml, y_bin, pos_weight)
    loss.backward()
    io["train.multilabel"], io["train.binary"] = ml.detach(), bl.detach()
    io["train.loss"] = loss.detach().reshape(1)
    for k, v in model.state_dict().items():
        if "running_" in k:
            io[f"after.{k}"] = v.detach().clone()
    for k, p in model.named_parameters():
        io[f"grad.{k}"] = p.grad.detach().clone()
    if float64_reference:
        # Train-mode gradients of a deep network at batch 2 are ill-conditioned
        # in float32 (BatchNorm over few values, 100+ layers): PyTorch's own
        # float32 gradients differ from float64 ones by percents. The float64
        # values are the ground truth both float32 implementations are held to.
        model64 = copy.deepcopy(model).double()
        model64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
        model64.train()
        ml64, bl64 = model64(x.double())
        loss_fn(ml64, bl64, y_ml.double(), y_bin.double(), pos_weight.double()).backward()
        for k, p in model64.named_parameters():
            io[f"grad64.{k}"] = p.grad.detach().float().clone()
    io = {k: v.contiguous() for k, v in io.items()}
    save_file(io, os.path.join(out_dir, f"{name}_io.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters, input {tuple(x.shape)}, loss {loss.item():.6f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="shared/models/tests/fixtures")
    ap.add_argument("--full", metavar="OUT_DIR", help="write DenseNet-121 and SE-ResNet (full size) here instead")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    if args.full:
        # PyTorch's own CPU kernels, not oneDNN's: on some CPUs and torch
        # builds (2.15 here) oneDNN's float32 convolutions land 500x nearer
        # float64 than plain float32 arithmetic does (SE-ResNet gradients:
        # median error 3.7e-6 against 2.0e-3), so a reference taken with it
        # depends on the machine. Ours is held to the plain float32 one.
        torch.backends.mkldnn.enabled = False
        os.makedirs(args.full, exist_ok=True)
        torch.manual_seed(121)
        cfg = {"growth_rate": 32, "block_config": [6, 12, 24, 16], "num_init_features": 64, "bn_size": 4}
        net = DualDenseNet(cfg["growth_rate"], tuple(cfg["block_config"]), cfg["num_init_features"], cfg["bn_size"])
        write(net, "densenet121", args.full, 2, 224, 121, cfg, float64_reference=True)
        # The same backbone as torchvision's published file stores it
        # (legacy `norm.1` key names, a 1000-class classifier), for the
        # converter test: convert_torchvision_weights.py turns it back.
        legacy = {}
        for k, v in net.state_dict().items():
            if k.startswith("heads."):
                continue
            legacy[re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k)] = v
        legacy["classifier.weight"] = torch.zeros(1000, 1024)
        legacy["classifier.bias"] = torch.zeros(1000)
        torch.save(legacy, os.path.join(args.full, "densenet121_torchvision_legacy.pth"))
        torch.manual_seed(50)
        cfg = {"blocks": [3, 4, 6, 3], "widths": [64, 128, 256, 512], "stem_width": 64, "se_reduction": 16, "dropout": 0.0}
        net = SEResNet(cfg["blocks"], cfg["widths"], cfg["stem_width"], cfg["se_reduction"], cfg["dropout"])
        write(net, "se_resnet", args.full, 2, 224, 50, cfg, float64_reference=True)
        return

    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(7)
    cfg = {"growth_rate": 8, "block_config": [2, 3], "num_init_features": 16, "bn_size": 2}
    net = DualDenseNet(cfg["growth_rate"], tuple(cfg["block_config"]), cfg["num_init_features"], cfg["bn_size"])
    write(net, "densenet_small", args.out, 3, 48, 7, cfg)

    torch.manual_seed(11)
    cfg = {"blocks": [1, 2, 1, 1], "widths": [8, 16, 16, 24], "stem_width": 8, "se_reduction": 4, "dropout": 0.0}
    net = SEResNet(cfg["blocks"], cfg["widths"], cfg["stem_width"], cfg["se_reduction"], cfg["dropout"])
    write(net, "se_resnet_small", args.out, 3, 48, 11, cfg)


if __name__ == "__main__":
    main()
