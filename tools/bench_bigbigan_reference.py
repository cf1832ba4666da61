#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench generator`'s BigBiGAN rows: an own implementation of the
BigGAN-PyTorch generator's eval-mode math (spectral norm already folded, as genrep's model
directories hold it) on PyTorch's CPU reference ops, timed as the candle side is (one warm-up
pass, then passes for at least `--min-time` seconds), with random weights at BigBiGAN-128.

Before any timing counts it checks itself against the reference fixture's outputs through the
converted model directory:

    python tools/bench_bigbigan_reference.py --check tests/fixtures/bigbigan --threads N --batches 1,8
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

# The arch table of tools/convert_bigbigan.py (one definition of the layout).
import sys

sys.path.insert(0, os.path.dirname(__file__))
from convert_bigbigan import ARCH, PRESETS, expected_shapes, resolve_config  # noqa: E402


class Generator:
    """`G(z, classes)` of BigGAN-PyTorch in eval mode, from a folded state dict `t`."""

    def __init__(self, cfg, t):
        self.cfg, self.t = cfg, t
        ch = cfg["G_ch"]
        self.blocks = [(a * ch, b * ch, 8 << i) for i, (a, b) in enumerate(ARCH[cfg["resolution"]])]
        self.attn = {int(s) for s in str(cfg["G_attn"]).split("_") if s}
        slots = len(self.blocks) + 1 if cfg["hier"] else 1
        self.chunk = cfg["dim_z"] // slots
        self.slots = slots

    def bn(self, x, p, gain, bias, eps):
        t = self.t
        x = F.batch_norm(x, t[f"{p}.stored_mean"], t[f"{p}.stored_var"], None, None, False, 0.0, eps)
        return x * gain.reshape(x.shape[0] if gain.dim() > 1 else 1, -1, 1, 1) + bias.reshape(
            x.shape[0] if bias.dim() > 1 else 1, -1, 1, 1)

    def ccbn(self, x, p, y):
        t = self.t
        gain = 1 + y @ t[f"{p}.gain.weight"].t()
        bias = y @ t[f"{p}.bias.weight"].t()
        return self.bn(x, p, gain, bias, self.cfg["BN_eps"])

    def attention(self, x, p):
        t = self.t
        b, c, h, w = x.shape
        theta = F.conv2d(x, t[f"{p}.theta.weight"]).reshape(b, c // 8, h * w)
        phi = F.max_pool2d(F.conv2d(x, t[f"{p}.phi.weight"]), 2).reshape(b, c // 8, h * w // 4)
        g = F.max_pool2d(F.conv2d(x, t[f"{p}.g.weight"]), 2).reshape(b, c // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = F.conv2d(torch.bmm(g, beta.transpose(1, 2)).reshape(b, c // 2, h, w), t[f"{p}.o.weight"])
        return t[f"{p}.gamma"].reshape(()) * o + x

    def __call__(self, z, class_ids):
        t, cfg = self.t, self.cfg
        y = t["shared.weight"][class_ids]
        zs = torch.split(z, self.chunk, 1) if self.slots > 1 else (z,)
        ys = [torch.cat([y, c], 1) for c in zs[1:]] if self.slots > 1 else [y] * len(self.blocks)
        h = F.linear(zs[0], t["linear.weight"], t["linear.bias"])
        h = h.reshape(z.shape[0], -1, 4, 4)
        for i, (_, _, r) in enumerate(self.blocks):
            p = f"blocks.{i}.0"
            x = h
            h = F.relu(self.ccbn(h, f"{p}.bn1", ys[i]))
            h = F.interpolate(h, scale_factor=2)
            x = F.interpolate(x, scale_factor=2)
            h = F.conv2d(h, t[f"{p}.conv1.weight"], t[f"{p}.conv1.bias"], padding=1)
            h = F.relu(self.ccbn(h, f"{p}.bn2", ys[i]))
            h = F.conv2d(h, t[f"{p}.conv2.weight"], t[f"{p}.conv2.bias"], padding=1)
            h = h + F.conv2d(x, t[f"{p}.conv_sc.weight"], t[f"{p}.conv_sc.bias"])
            if r in self.attn:
                h = self.attention(h, f"blocks.{i}.1")
        h = F.relu(self.bn(h, "output_layer.0", t["output_layer.0.gain"], t["output_layer.0.bias"], 1e-5))
        h = F.conv2d(h, t["output_layer.2.weight"], t["output_layer.2.bias"], padding=1)
        return torch.tanh(h)


def random_tensors(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for k, shape in expected_shapes(cfg).items():
        if k.endswith("stored_var"):
            t[k] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            t[k] = torch.randn(shape, generator=g) / fan_in**0.5
        else:
            t[k] = torch.randn(shape, generator=g) * 0.1
    return t


def check(fixtures):
    """Max relative error against the reference outputs (conditional and class 0); raises past 1e-5."""
    from safetensors.torch import load_file

    io = os.path.join(fixtures, "bbg-32-io")
    d = os.path.join(fixtures, "bbg-32")
    cfg = resolve_config(json.load(open(os.path.join(d, "config.json"))))
    t = load_file(os.path.join(d, "model.safetensors"))
    gen = Generator(cfg, t)
    z = torch.from_numpy(np.load(os.path.join(io, "z.npy")))
    ids = torch.from_numpy(np.load(os.path.join(io, "class_ids.npy")))
    worst = 0.0
    with torch.no_grad():
        for cls, ref in ((ids, "img_classes.npy"), (torch.zeros_like(ids), "img_class0.npy")):
            want = torch.from_numpy(np.load(os.path.join(io, ref)))
            got = gen(z, cls)
            worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    if worst > 1e-5:
        raise SystemExit(f"the PyTorch reference is off the fixture by {worst:.2e} (> 1e-5)")
    print(f"reference check: max relative error {worst:.2e} against the BigGAN-PyTorch outputs")


def images_per_s(gen, b, min_time):
    z = torch.randn(b, gen.slots * gen.chunk, generator=torch.Generator().manual_seed(1))
    cls = torch.zeros(b, dtype=torch.long)
    with torch.no_grad():
        gen(z, cls)
        n, t = 0, time.perf_counter()
        while True:
            gen(z, cls)
            n += b
            el = time.perf_counter() - t
            if el >= min_time:
                return n / el


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--check", help="tests/fixtures/bigbigan: verify against the reference first")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds each figure is timed for")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if a.check:
        check(a.check)
    cfg = resolve_config(PRESETS["bigbigan-128"])
    gen = Generator(cfg, random_tensors(cfg))
    for b in [int(x) for x in a.batches.split(",")]:
        ips = images_per_s(gen, b, a.min_time)
        print(f"bigbigan-128 torch f32 batch {b:>2}: {ips:8.3f} images/s  ({1 / ips:.3f} s/image)")


if __name__ == "__main__":
    main()
