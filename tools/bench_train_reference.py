#!/usr/bin/env python3
"""PyTorch side of `cargo bench -p genrep-client --bench train_step`: the same encoder (ResNet,
width 16, 1 block per stage, 3 stages, 1x28x28 input, MLP head to 64) and the same SimCLR step
(forward on 2 x 256 images, NT-Xent at temperature 0.1, backward, SGD momentum 0.9 / wd 1e-4)
on CPU; prints samples/s.

    python tools/bench_train_reference.py [--threads N]
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.down(x) if self.down is not None else x))


class Encoder(nn.Module):
    def __init__(self, width=16, stages=3, proj=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for s in range(stages):
            cout = width << s
            blocks.append(Block(cin, cout, 2 if s > 0 else 1))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(cin, cin), nn.ReLU(), nn.Linear(cin, proj))

    def forward(self, x):
        f = self.blocks(self.stem((x - 0.5) * 2)).mean((2, 3))
        return self.head(f)


def nt_xent(z, views, t):
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    b = n // views
    sim = z @ z.t() / t
    sim = sim - torch.eye(n) * 1e9
    ids = torch.arange(n) % b
    pos = (ids[:, None] == ids[None, :]).float() - torch.eye(n)
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    return -((logp * pos).sum(1) / pos.sum(1)).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    enc = Encoder()
    opt = torch.optim.SGD(enc.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.rand(512, 1, 28, 28)

    def step():
        t = time.time()
        loss = nt_xent(enc(x), 2, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.time() - t

    step()
    per = sum(step() for _ in range(args.steps)) / args.steps
    # Where the time goes, as the Rust runner prints it: forward + loss, then backward.
    t = time.time()
    loss = nt_xent(enc(x), 2, 0.1)
    fwd = time.time() - t
    opt.zero_grad()
    t = time.time()
    loss.backward()
    bwd = time.time() - t
    print(f"  forward {fwd:.3f} s, backward {bwd:.3f} s, optimizer + rest {max(per - fwd - bwd, 0):.3f} s")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads) train step, batch 256 x 2 views: {per:.3f} s/step, {256 / per:.1f} samples/s")


if __name__ == "__main__":
    main()
