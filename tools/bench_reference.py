#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench generator`: pytorch-pretrained-biggan's BigGAN-deep-128
(package default config, random weights, eval mode, no_grad) images/s at batch 1, 8 and 32 on CPU.

    python tools/bench_reference.py [--threads N]
"""

import argparse
import time

import torch
from pytorch_pretrained_biggan import BigGAN, BigGANConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    model = BigGAN(BigGANConfig())  # the package default config is BigGAN-deep-128
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_vars"):
                m.running_vars.uniform_(0.5, 1.5)
            if hasattr(m, "weight") and m.weight is not None and not hasattr(m, "weight_orig"):
                if m.weight.dim() == 1:
                    m.weight.fill_(1.0)
    model.eval()
    for b in [int(x) for x in args.batches.split(",")]:
        z = torch.randn(b, 128).clamp(-2, 2)
        cls = torch.zeros(b, 1000)
        cls[torch.arange(b), torch.arange(b) % 1000] = 1.0
        reps = 3 if b == 1 else 1
        with torch.no_grad():
            model(z, cls, 1.0)
            t = time.time()
            for _ in range(reps):
                model(z, cls, 1.0)
            ips = b * reps / (time.time() - t)
        print(f"biggan-deep-128 torch f32   batch {b:>2}: {ips:7.3} images/s  ({1 / ips:.3f} s/image)")


if __name__ == "__main__":
    main()
