#!/usr/bin/env python3
"""Build the BigGAN-deep parity fixture used by `tests/biggan_parity.rs`.

Builds pytorch-pretrained-biggan 0.1.1's `BigGAN` with a small config (random weights, fixed
seed; up and non-up blocks, channel-dropping skips, self-attention, 5 classes), saves its
state_dict as a legacy-format `pytorch_model.bin`, converts it with `tools/convert_biggan.py`, and
writes reference outputs of the package (eval mode) for one-hot and soft class inputs at
truncations 1.0, 0.4 (grid rows), 0.47 and 0.456 (between rows; 0.456 is 80/20 between
rows 22 and 23, so the package's swapped interpolation weights are checked).

    python tools/make_biggan_fixture.py [--out tests/fixtures/biggan-tiny]
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_biggan import convert  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = {
    "output_dim": 32,
    "z_dim": 16,
    "class_embed_dim": 16,
    "channel_width": 8,
    "num_classes": 5,
    "layers": [[False, 16, 16], [True, 16, 8], [False, 8, 8], [True, 8, 4], [True, 4, 2], [False, 2, 1]],
    "attention_layer_position": 4,
    "eps": 1e-4,
    "n_stats": 51,
}
TRUNCATIONS = [1.0, 0.4, 0.47, 0.456]


def randomise(model, gen):
    """Random but well-scaled weights; every buffer that matters gets distinct per-row values."""
    from pytorch_pretrained_biggan.model import BigGANBatchNorm, SelfAttn

    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 if p.dim() > 1 else torch.randn(p.shape, generator=gen) * 0.05)
        for m in model.modules():
            if isinstance(m, BigGANBatchNorm):
                m.running_means.copy_(torch.randn(m.running_means.shape, generator=gen) * 0.3)
                m.running_vars.copy_(0.5 + torch.rand(m.running_vars.shape, generator=gen))
                if not m.conditional:
                    m.weight.copy_(0.75 + 0.5 * torch.rand(m.weight.shape, generator=gen))
            if isinstance(m, SelfAttn):
                m.gamma.fill_(0.8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "biggan-tiny"))
    args = ap.parse_args()
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    config = BigGANConfig.from_dict(CONFIG) if hasattr(BigGANConfig, "from_dict") else BigGANConfig(**CONFIG)
    model = BigGAN(config)
    randomise(model, gen)
    # Spectral norm's u/v start random; a few power iterations (train-mode forwards; BigGAN's BN
    # never uses batch statistics) make them consistent, as in the released checkpoints.
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(2, CONFIG["z_dim"], generator=gen), torch.eye(CONFIG["num_classes"])[:2], 1.0)
    model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "pytorch_model.bin")
        torch.save(model.state_dict(), ckpt, _use_new_zipfile_serialization=False)
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(CONFIG, f)
        convert(ckpt, cfg_path, args.out, name="biggan-deep-tiny")

    n = CONFIG["num_classes"]
    z = (torch.randn(6, CONFIG["z_dim"], generator=gen).clamp(-2, 2)).float()
    ids = torch.tensor([0, 1, 2, 3, 4, 2])
    onehot = torch.eye(n)[ids]
    soft = torch.zeros(2, n)
    soft[0, 1], soft[0, 3] = 0.5, 0.5
    soft[1, 0], soft[1, 2], soft[1, 4] = 0.2, 0.3, 0.5
    io_dir = args.out + "-io"
    os.makedirs(io_dir, exist_ok=True)
    np.save(os.path.join(io_dir, "z.npy"), z.numpy())
    np.save(os.path.join(io_dir, "class_ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(io_dir, "class_onehot.npy"), onehot.numpy())
    np.save(os.path.join(io_dir, "class_soft.npy"), soft.numpy())
    with torch.no_grad():
        for t in TRUNCATIONS:
            out = model(z, onehot, t)
            np.save(os.path.join(io_dir, f"out_onehot_t{t}.npy"), out.numpy())
            out_soft = model(z[:2], soft, t)
            np.save(os.path.join(io_dir, f"out_soft_t{t}.npy"), out_soft.numpy())
            sat = (out.abs() > 0.99).float().mean().item()
            print(f"t={t}: out mean {out.mean():.4f} std {out.std():.4f} saturated {sat:.3f}")
    with open(os.path.join(io_dir, "README.md"), "w") as f:
        f.write(
            "Inputs and reference outputs of pytorch-pretrained-biggan 0.1.1 (eval mode) for the model in\n"
            "`../biggan-tiny`. Made by `tools/make_biggan_fixture.py`; checked by `tests/biggan_parity.rs`.\n\n"
            "- `z.npy` [6,16] f32, `class_ids.npy` [6] i64, `class_onehot.npy` [6,5], `class_soft.npy` [2,5]\n"
            "- `out_onehot_t{T}.npy` [6,3,32,32]: model(z, onehot, T)\n"
            "- `out_soft_t{T}.npy` [2,3,32,32]: model(z[:2], soft, T)\n"
            f"- T in {TRUNCATIONS}\n"
        )
    print(f"fixture written to {args.out} and {io_dir}")


if __name__ == "__main__":
    main()
