#!/usr/bin/env python3
"""Train genrep's embedded default generator (class-conditional DCGAN on the 4000 MNIST training digits).

Exports, under --out (default models/mnist-cdcgan):
  config.json, model.safetensors       the genrep model directory (architecture `cdcgan`)
  reference_batch.safetensors          z, y and the PyTorch outputs, for the candle parity test
  eval/classifier.safetensors          the digit classifier used for the quality figures (and Rust tests)
  samples.png                          sample sheet, one row per class
  quality.json                         the figures quoted in the model card

Run (CPU, fixed seed; the shipped model):
    python tools/train_embedded_generator.py --iters 5000 --threads 2 --ms-weight 0.2 --aux-weight 0.2
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_common import CDCGAN, ROOT, Classifier, load_split, state_dict_for_export, to_unit  # noqa: E402

SN = nn.utils.spectral_norm


class Discriminator(nn.Module):
    """Projection discriminator with spectral norm and an auxiliary class head (trained on real data)."""

    def __init__(self, n_classes=10, ch=(32, 64, 128)):
        super().__init__()
        self.c1 = SN(nn.Conv2d(1, ch[0], 3, padding=1))
        self.c2 = SN(nn.Conv2d(ch[0], ch[1], 4, stride=2, padding=1))
        self.c3 = SN(nn.Conv2d(ch[1], ch[2], 4, stride=2, padding=1))
        self.out = SN(nn.Linear(ch[2], 1))
        self.proj = SN(nn.Embedding(n_classes, ch[2]))
        self.aux = nn.Linear(ch[2], n_classes)

    def forward(self, x, y):
        h = F.leaky_relu(self.c1(x), 0.1)
        h = F.leaky_relu(self.c2(h), 0.1)
        h = F.leaky_relu(self.c3(h), 0.1)
        h = h.sum(dim=(2, 3))
        return self.out(h).squeeze(1) + (self.proj(y) * h).sum(1), self.aux(h)


def truncnorm(shape, bound, gen):
    """Standard normal truncated to [-bound, bound] by resampling (the server's anchor law)."""
    z = torch.randn(shape, generator=gen)
    while True:
        bad = z.abs() > bound
        if not bad.any():
            return z
        z[bad] = torch.randn(int(bad.sum()), generator=gen)


def shift_augment(x, gen):
    """Random +-2 pixel translation; the classifier sees only 4000 digits."""
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    out = torch.empty_like(x)
    offs = torch.randint(0, 5, (x.shape[0], 2), generator=gen)
    for i in range(x.shape[0]):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = pad[i, :, dy : dy + 28, dx : dx + 28]
    return out


def train_classifier(xtr, ytr, xte, yte, seed, epochs):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clf = Classifier()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    n = xtr.shape[0]
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        clf.train()
        for i in range(0, n, 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(clf(shift_augment(xtr[idx], gen)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        acc = (clf(xte).argmax(1) == yte).float().mean().item()
    return clf, acc


@torch.no_grad()
def standing_stats(g, z_dim, n_classes, gen, batches=200, bs=100):
    """Recompute BN running stats of the (EMA) generator as a cumulative average over fresh batches."""
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    g.train()
    for _ in range(batches):
        z = torch.randn(bs, z_dim, generator=gen)
        y = torch.randint(0, n_classes, (bs,), generator=gen)
        g(z, y)
    g.eval()


@torch.no_grad()
def quality(g, clf, xtr, ytr, z_dim, seed, per_class=1000):
    gen = torch.Generator().manual_seed(seed + 7)
    res = {"per_class": {}}
    fid_all, div_ratio_all = [], []
    for c in range(10):
        z = truncnorm((per_class, z_dim), 2.0, gen)
        y = torch.full((per_class,), c, dtype=torch.long)
        x = g(z, y)
        fidelity = (clf(x).argmax(1) == c).float().mean().item()
        # Mean pairwise L2 distance in [-1,1] pixel space, generated vs real train digits of the class.
        xg = x[:400].flatten(1)
        xr = xtr[ytr == c].flatten(1)
        dg = torch.cdist(xg, xg)
        dr = torch.cdist(xr, xr)
        mg = dg.sum() / (dg.shape[0] * (dg.shape[0] - 1))
        mr = dr.sum() / (dr.shape[0] * (dr.shape[0] - 1))
        res["per_class"][str(c)] = {
            "fidelity": fidelity,
            "diversity_generated": mg.item(),
            "diversity_real": mr.item(),
            "diversity_ratio": (mg / mr).item(),
        }
        fid_all.append(fidelity)
        div_ratio_all.append((mg / mr).item())
    res["fidelity_min"] = min(fid_all)
    res["fidelity_mean"] = float(np.mean(fid_all))
    res["diversity_ratio_min"] = min(div_ratio_all)
    # Latent smoothness with the server's gaussian method: w ~ N(0, s^2) truncated at +-2s.
    smooth = {}
    n = 2000
    z = truncnorm((n, z_dim), 2.0, gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    xa = g(z, y)
    for s in (0.1, 0.2, 0.5, 1.0):
        w = truncnorm((n, z_dim), 2.0, gen) * s
        xp = g(z + w, y)
        dist = (xp - xa).abs().mean().item()
        keep = (clf(xp).argmax(1) == y).float().mean().item()
        smooth[str(s)] = {"mean_abs_pixel_distance": dist, "class_kept": keep}
    res["smoothness"] = smooth
    return res


def independent_judges(xtr_u8, ytr, xte_u8, yte):
    """Classifiers that never saw the generator: an RBF SVM and a logistic regression on raw pixels
    of the 4000 real training digits (the CNN above trained alongside the generator's aux loss)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    xtr = xtr_u8.reshape(len(xtr_u8), -1) / 255.0
    xte = xte_u8.reshape(len(xte_u8), -1) / 255.0
    judges = {"rbf_svm": SVC(C=5, gamma="scale"), "logistic_regression": LogisticRegression(max_iter=2000, C=0.1)}
    real = {}
    for name, j in judges.items():
        j.fit(xtr, ytr)
        real[name] = float(j.score(xte, yte))
    return judges, real


@torch.no_grad()
def judge_quality(g, judges, real, z_dim, seed, n=2000):
    """Share of anchors (truncated at 2, the server's default) and of their sigma = 0.2 Gaussian
    positives that each judge assigns to the conditioning class, relative to its real-test accuracy."""
    gen = torch.Generator().manual_seed(seed + 11)
    z = truncnorm((n, z_dim), 2.0, gen)
    y = torch.arange(n) % 10
    xa = g(z, y)
    xp = g(z + 0.2 * truncnorm((n, z_dim), 2.0, gen), y)
    to_px = lambda x: ((x + 1) / 2).clamp(0, 1).flatten(1).numpy()
    out = {}
    for name, j in judges.items():
        pa, pp = j.predict(to_px(xa)), j.predict(to_px(xp))
        acc_a = float((pa == y.numpy()).mean())
        acc_p = float((pp == y.numpy()).mean())
        out[name] = {
            "real_test_accuracy": real[name],
            "anchor_accuracy": acc_a,
            "positive_accuracy": acc_p,
            "anchor_ratio": acc_a / real[name],
            "positive_ratio": acc_p / real[name],
            "anchor_per_class": [float((pa[y.numpy() == c] == c).mean()) for c in range(10)],
        }
    return out


def sample_sheet(g, z_dim, path, cols=12, seed=0):
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = truncnorm((10 * cols, z_dim), 2.0, gen)
        y = torch.arange(10).repeat_interleave(cols)
        x = g(z, y)
    img = ((x + 1) * 127.5).clamp(0, 255).round().byte().squeeze(1).numpy()
    sheet = np.zeros((10 * 30, cols * 30), dtype=np.uint8)
    for i in range(10 * cols):
        r, c = divmod(i, cols)
        sheet[r * 30 + 1 : r * 30 + 29, c * 30 + 1 : c * 30 + 29] = img[i]
    Image.fromarray(sheet).resize((cols * 60, 10 * 60), Image.NEAREST).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "mnist-cdcgan"))
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clf-epochs", type=int, default=8)
    ap.add_argument("--aux-weight", type=float, default=0.2, help="ACGAN-style class loss on G (0 = off)")
    ap.add_argument("--ms-weight", type=float, default=0.2, help="mode-seeking regulariser weight (MSGAN)")
    ap.add_argument("--ema", type=float, default=0.999)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    xtr_u8, ytr_np, xte_u8, yte_np = load_split()
    xtr, xte = to_unit(xtr_u8), to_unit(xte_u8)
    ytr, yte = torch.from_numpy(ytr_np), torch.from_numpy(yte_np)
    print(f"data: train {tuple(xtr.shape)} test {tuple(xte.shape)}", flush=True)

    clf, clf_acc = train_classifier(xtr, ytr, xte, yte, args.seed, args.clf_epochs)
    print(f"classifier test accuracy {clf_acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
    judges, judge_real = independent_judges(xtr_u8, ytr_np, xte_u8, yte_np)
    print(f"independent judges, real test accuracy: {judge_real}", flush=True)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    g = CDCGAN()
    d = Discriminator()
    g_ema = CDCGAN()
    g_ema.load_state_dict(g.state_dict())
    for p in g_ema.parameters():
        p.requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    n_params = sum(p.numel() for p in g.parameters())
    print(f"generator parameters: {n_params}", flush=True)

    n = xtr.shape[0]
    perm, pos = torch.randperm(n, generator=gen), 0
    t_train = time.time()
    for it in range(1, args.iters + 1):
        if pos + args.batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        xr, yr = xtr[idx], ytr[idx]

        z = torch.randn(args.batch, g.z_dim, generator=gen)
        yf = torch.randint(0, 10, (args.batch,), generator=gen)
        xf = g(z, yf)

        dr, aux_r = d(xr, yr)
        df, _ = d(xf.detach(), yf)
        loss_d = F.relu(1 - dr).mean() + F.relu(1 + df).mean() + F.cross_entropy(aux_r, yr)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

        dg, aux_f = d(xf, yf)
        loss_g = -dg.mean()
        if args.aux_weight > 0:
            loss_g = loss_g + args.aux_weight * F.cross_entropy(aux_f, yf)
        if args.ms_weight > 0:
            # Mode seeking (Mao et al. 2019): two latents of the same class must give images that
            # differ in proportion to the latents; counters intra-class collapse.
            z2 = torch.randn(args.batch, g.z_dim, generator=gen)
            xf2 = g(z2, yf)
            ratio = (xf - xf2).abs().mean(dim=(1, 2, 3)) / (z - z2).abs().mean(dim=1)
            loss_g = loss_g + args.ms_weight / (ratio.mean() + 1e-5)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()

        with torch.no_grad():
            for pe, p in zip(g_ema.parameters(), g.parameters()):
                pe.lerp_(p, 1 - args.ema)
        if it % 50 == 0:
            el = time.time() - t_train
            print(f"it {it} loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f} {el / it:.3f}s/it", flush=True)
        if it % 250 == 0:
            with torch.no_grad():
                g.eval()
                ratios = []
                for c in (0, 3, 8):
                    xg = g(torch.randn(100, g.z_dim, generator=gen), torch.full((100,), c, dtype=torch.long)).flatten(1)
                    xr = xtr[ytr == c][:100].flatten(1)
                    ratios.append((torch.cdist(xg, xg).mean() / torch.cdist(xr, xr).mean()).item())
                fid = (clf(g(torch.randn(200, g.z_dim, generator=gen), torch.arange(200) % 10)).argmax(1) == torch.arange(200) % 10).float().mean().item()
                g.train()
            print(f"monitor it {it}: diversity ratios {[round(r, 3) for r in ratios]} fidelity {fid:.3f}", flush=True)
        if it % 1000 == 0:
            g.eval()
            jq = judge_quality(g, judges, judge_real, g.z_dim, args.seed)
            g.train()
            print(
                f"judge it {it} (live generator): "
                + ", ".join(f"{k} anchors {v['anchor_ratio']:.3f}x positives {v['positive_ratio']:.3f}x" for k, v in jq.items()),
                flush=True,
            )

    gen_eval = torch.Generator().manual_seed(args.seed + 1)
    standing_stats(g_ema, g.z_dim, 10, gen_eval)
    q = quality(g_ema, clf, xtr, ytr, g.z_dim, args.seed)
    q["independent_judges"] = judge_quality(g_ema, judges, judge_real, g.z_dim, args.seed)
    wall = time.time() - t0
    q.update(
        {
            "classifier_test_accuracy": clf_acc,
            "iterations": args.iters,
            "batch_size": args.batch,
            "parameters": n_params,
            "wall_seconds": wall,
            "command": "python tools/train_embedded_generator.py " + " ".join(sys.argv[1:]),
            "torch_version": torch.__version__,
            "threads": args.threads,
        }
    )
    print(json.dumps(q, indent=1), flush=True)

    os.makedirs(os.path.join(args.out, "eval"), exist_ok=True)
    cfg = g_ema.config()
    cfg["name"] = "mnist-cdcgan"
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_file(state_dict_for_export(g_ema), os.path.join(args.out, "model.safetensors"))
    save_file(state_dict_for_export(clf), os.path.join(args.out, "eval", "classifier.safetensors"))
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(q, f, indent=2)

    # Reference batch for the candle parity test: every class, truncated anchors.
    with torch.no_grad():
        rz = truncnorm((20, g.z_dim), 2.0, torch.Generator().manual_seed(123))
        ry = torch.arange(20) % 10
        rx = g_ema(rz, ry)
        rlogits = clf(rx)
    save_file(
        {"z": rz.contiguous(), "y": ry.to(torch.int64).contiguous(), "images": rx.contiguous(), "logits": rlogits.contiguous()},
        os.path.join(args.out, "reference_batch.safetensors"),
    )
    sample_sheet(g_ema, g.z_dim, os.path.join(args.out, "samples.png"))
    print(f"done in {wall:.0f}s -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
