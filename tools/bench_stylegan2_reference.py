#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench generator`'s StyleGAN2 rows: an own implementation of
NVlabs' StyleGAN2 generator (stylegan2-ada-pytorch math in fp32, CPU reference ops: conv2d,
conv_transpose2d and upfirdn2d as pad + depthwise conv), timed as the candle side is (one warm-up
pass, then passes for at least `--min-time` seconds), with random weights at the benchmark configurations.

Before any timing counts it checks itself against the shared reference fixtures (NVlabs' own
outputs) through the converted model directory:

    python tools/bench_stylegan2_reference.py --check tests/fixtures/stylegan2 --threads N \
        --configs paper256,f512 --batches 1,8

Both of NVlabs' modulated-conv paths are timed (the grouped "fused" conv and the batched
`x·s → conv → ·d` form) and the faster one is reported: the strongest PyTorch baseline.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

CONFIGS = {
    # stylegan2-ada-pytorch `paper256`: 256 px, cbase 16384, cmax 512, 8 mapping layers.
    "paper256": dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
                     num_layers=8, channel_base=16384, channel_max=512, conv_clamp=256),
    # StyleGAN2 config-f at 512 px: cbase 32768, cmax 512, 8 mapping layers.
    "f512": dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=512, img_channels=3,
                 num_layers=8, channel_base=32768, channel_max=512, conv_clamp=None),
}

FIR = torch.tensor([1.0, 3.0, 3.0, 1.0])
FIR2 = torch.outer(FIR, FIR) / 64


def lrelu(x, clamp=None):
    x = F.leaky_relu(x, 0.2) * math.sqrt(2)
    return x.clamp(-clamp, clamp) if clamp is not None else x


def fc(x, w, b, lr, act):
    x = x.matmul((w * (lr / math.sqrt(w.shape[1]))).t()) + b * lr
    return lrelu(x) if act else x


def upfirdn2d(x, pad, gain, up=1):
    """NVlabs' reference upfirdn2d for the [1,3,3,1] filter: zero-insert, pad, depthwise FIR."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[2], pad[3]])
    f = (FIR2 * gain).to(x.dtype).reshape(1, 1, 4, 4).repeat(c, 1, 1, 1)
    return F.conv2d(x, f, groups=c)


class Generator:
    def __init__(self, cfg, tensors):
        self.cfg, self.t = cfg, tensors
        r = cfg["img_resolution"]
        self.res = [2 ** k for k in range(2, int(math.log2(r)) + 1)]
        self.num_ws = 2 * int(math.log2(r)) - 2

    def ch(self, r):
        return min(self.cfg["channel_base"] // r, self.cfg["channel_max"])

    def mapping(self, z, psi=1.0):
        t = self.t
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.cfg["num_layers"]):
            x = fc(x, t[f"mapping.fc{i}.weight"], t[f"mapping.fc{i}.bias"], 0.01, True)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            avg = t["mapping.w_avg"]
            ws = avg + psi * (ws - avg)
        return ws

    def layer(self, p, x, w, up, fused, noise="const"):
        t = self.t
        s = fc(w, t[f"{p}.affine.weight"], t[f"{p}.affine.bias"], 1.0, False)
        wt = t[f"{p}.weight"]
        b, cin = x.shape[:2]
        d = ((wt.unsqueeze(0) * s.reshape(b, 1, -1, 1, 1)).square().sum([2, 3, 4]) + 1e-8).rsqrt()
        if fused:
            wm = wt.unsqueeze(0) * s.reshape(b, 1, -1, 1, 1) * d.reshape(b, -1, 1, 1, 1)
            wm = wm.reshape(-1, cin, 3, 3)
            xg = x.reshape(1, -1, *x.shape[2:])
            if up:
                wm = wm.reshape(b, -1, cin, 3, 3).transpose(1, 2).reshape(b * cin, -1, 3, 3)
                y = F.conv_transpose2d(xg, wm, stride=2, groups=b)
                y = upfirdn2d(y, [1, 1, 1, 1], 4)
            else:
                y = F.conv2d(xg, wm, padding=1, groups=b)
            y = y.reshape(b, -1, *y.shape[2:])
        else:
            xs = x * s.reshape(b, -1, 1, 1)
            if up:
                y = F.conv_transpose2d(xs, wt.transpose(0, 1), stride=2)
                y = upfirdn2d(y, [1, 1, 1, 1], 4)
            else:
                y = F.conv2d(xs, wt, padding=1)
            y = y * d.reshape(b, -1, 1, 1)
        if noise == "const":
            y = y + t[f"{p}.noise_const"] * t[f"{p}.noise_strength"].reshape(())
        y = y + t[f"{p}.bias"].reshape(1, -1, 1, 1)
        return lrelu(y, self.cfg["conv_clamp"])

    def torgb(self, p, x, w, fused):
        t = self.t
        s = fc(w, t[f"{p}.affine.weight"], t[f"{p}.affine.bias"], 1.0, False)
        s = s / math.sqrt(x.shape[1])
        wt = t[f"{p}.weight"]
        if fused:
            b = x.shape[0]
            wm = (wt.unsqueeze(0) * s.reshape(b, 1, -1, 1, 1)).reshape(-1, x.shape[1], 1, 1)
            y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), wm, groups=b).reshape(b, -1, *x.shape[2:])
        else:
            y = F.conv2d(x * s.reshape(x.shape[0], -1, 1, 1), wt)
        y = y + t[f"{p}.bias"].reshape(1, -1, 1, 1)
        c = self.cfg["conv_clamp"]
        return y.clamp(-c, c) if c is not None else y

    def synthesis(self, ws, fused, noise="const"):
        img = x = None
        i = 0
        for r in self.res:
            p = f"synthesis.b{r}"
            if r == 4:
                x = self.t[f"{p}.const"].unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
                x = self.layer(f"{p}.conv1", x, ws[:, i], False, fused, noise)
                y = self.torgb(f"{p}.torgb", x, ws[:, i + 1], fused)
                i += 1
            else:
                x = self.layer(f"{p}.conv0", x, ws[:, i], True, fused, noise)
                x = self.layer(f"{p}.conv1", x, ws[:, i + 1], False, fused, noise)
                y = self.torgb(f"{p}.torgb", x, ws[:, i + 2], fused)
                i += 2
            img = y if img is None else upfirdn2d(img, [2, 1, 2, 1], 4, up=2) + y
        return img


def random_tensors(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {}
    rn = lambda *s: torch.randn(*s, generator=g)
    z, w = cfg["z_dim"], cfg["w_dim"]
    for i in range(cfg["num_layers"]):
        t[f"mapping.fc{i}.weight"] = rn(w, z if i == 0 else w) / 0.01
        t[f"mapping.fc{i}.bias"] = torch.zeros(w)
    t["mapping.w_avg"] = rn(w) * 0.5
    gen = Generator(cfg, t)
    for r in gen.res:
        c = gen.ch(r)
        p = f"synthesis.b{r}"
        convs = ["conv1"] if r == 4 else ["conv0", "conv1"]
        if r == 4:
            t[f"{p}.const"] = rn(c, 4, 4)
        for k in convs:
            cin = gen.ch(r // 2) if k == "conv0" else c
            t[f"{p}.{k}.weight"] = rn(c, cin, 3, 3)
            t[f"{p}.{k}.bias"] = torch.zeros(c)
            t[f"{p}.{k}.affine.weight"] = rn(cin, w)
            t[f"{p}.{k}.affine.bias"] = torch.ones(cin)
            t[f"{p}.{k}.noise_strength"] = torch.tensor([0.1])
            t[f"{p}.{k}.noise_const"] = rn(r, r)
        t[f"{p}.torgb.weight"] = rn(cfg["img_channels"], c, 1, 1)
        t[f"{p}.torgb.bias"] = torch.zeros(cfg["img_channels"])
        t[f"{p}.torgb.affine.weight"] = rn(c, w)
        t[f"{p}.torgb.affine.bias"] = torch.ones(c)
    return gen


def check(fixtures):
    """Max relative error against NVlabs' outputs for the unconditional fixture; raises past 1e-5."""
    from safetensors.torch import load_file

    d = os.path.join(fixtures, "sg2-32-uncond")
    io = os.path.join(fixtures, "sg2-32-uncond-io")
    c = json.load(open(os.path.join(d, "config.json")))
    cfg = dict(z_dim=c["z_dim"], w_dim=c["w_dim"], c_dim=0, img_resolution=c["img_resolution"],
               img_channels=c["img_channels"], num_layers=c["mapping_kwargs"]["num_layers"],
               channel_base=c["synthesis_kwargs"]["channel_base"],
               channel_max=c["synthesis_kwargs"]["channel_max"],
               conv_clamp=c["synthesis_kwargs"]["conv_clamp"])
    gen = Generator(cfg, load_file(os.path.join(d, "model.safetensors")))
    z = torch.from_numpy(np.load(os.path.join(io, "z.npy")))
    worst = 0.0
    with torch.no_grad():
        for psi in (1.0, 0.7):
            name = f"psi{psi}"
            ws_ref = torch.from_numpy(np.load(os.path.join(io, f"ws_{name}.npy")))
            ws = gen.mapping(z, psi)
            worst = max(worst, float((ws - ws_ref).abs().max() / ws_ref.abs().max()))
            for fused in (False, True):
                for noise in ("const", "none"):
                    ref = torch.from_numpy(np.load(os.path.join(io, f"img_{noise}_{name}.npy")))
                    img = gen.synthesis(ws_ref, fused, noise)
                    worst = max(worst, float((img - ref).abs().max() / ref.abs().max()))
    if worst > 1e-5:
        raise SystemExit(f"the PyTorch reference is off the fixtures by {worst:.2e} (> 1e-5)")
    print(f"reference check: max relative error {worst:.2e} against NVlabs' outputs")


def images_per_s(gen, b, fused, min_time=0.3):
    z = torch.randn(b, gen.cfg["z_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gen.synthesis(gen.mapping(z), fused)
        n, t = 0, time.perf_counter()
        while True:
            gen.synthesis(gen.mapping(z), fused)
            n += b
            el = time.perf_counter() - t
            if el >= min_time:
                return n / el


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--configs", default="paper256,f512")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--check", help="tests/fixtures/stylegan2: verify against NVlabs first")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds each figure is timed for")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if a.check:
        check(a.check)
    for name in a.configs.split(","):
        gen = random_tensors(CONFIGS[name])
        for b in [int(x) for x in a.batches.split(",")]:
            best = max(images_per_s(gen, b, fused, a.min_time) for fused in (False, True))
            print(f"stylegan2-{name} torch f32 batch {b:>2}: {best:8.3f} images/s  ({1 / best:.3f} s/image)")


if __name__ == "__main__":
    main()
