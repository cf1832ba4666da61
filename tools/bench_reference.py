#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench generator`: pytorch-pretrained-biggan's BigGAN-deep-128
(package default config, random weights, eval mode, no_grad) images/s at batch 1, 8 and 32 on CPU,
timed as the candle side is (one warm-up pass, then passes for at least 0.3 s).

    python tools/bench_reference.py [--threads N]
"""

import argparse

from gpu_torch_reference import images_per_s, import_biggan, random_biggan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    torch, BigGAN, BigGANConfig, _ = import_biggan()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    model = random_biggan(torch, BigGAN, BigGANConfig)  # the package default is BigGAN-deep-128
    cfg = model.config.to_dict()
    for b in [int(x) for x in args.batches.split(",")]:
        ips, _ = images_per_s(torch, model, cfg, b, torch.float32, "cpu", 0.3)
        print(f"biggan-deep-128 torch f32   batch {b:>2}: {ips:7.3} images/s  ({1 / ips:.3f} s/image)")


if __name__ == "__main__":
    main()
