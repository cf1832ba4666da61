"""Shared helpers for the embedded-generator tools: the vendored MNIST split and the models.

The split is defined once, here and in `src/data.rs` (Rust), identically:
for each class, walk the rows of `data/mnist_5k.csv.gz` in file order and number that class's
rows 0..499; row k goes to **test** when k % 5 == 4, otherwise to **train**. That gives a
stratified 4000 train / 1000 test split (400 / 100 per class) with no RNG involved.
"""

import gzip
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "mnist_5k.csv.gz")


def load_split():
    """Returns (x_train uint8 [4000,28,28], y_train, x_test uint8 [1000,28,28], y_test)."""
    with gzip.open(DATA, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    y = rows[:, 784]
    seen = np.zeros(10, dtype=np.int64)
    is_test = np.zeros(len(y), dtype=bool)
    for i, c in enumerate(y):
        is_test[i] = seen[c] % 5 == 4
        seen[c] += 1
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def to_unit(x_uint8):
    """uint8 [N,28,28] -> float [N,1,28,28] in [-1, 1], the generator's output range."""
    return torch.from_numpy(x_uint8).float().div(127.5).sub(1.0).unsqueeze(1)


class CondBN(nn.Module):
    """BatchNorm without affine, then a per-class gain (1 + g[y]) and bias b[y]."""

    def __init__(self, c, n_classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, affine=False, eps=1e-5, momentum=0.1)
        self.gain = nn.Embedding(n_classes, c)
        self.bias = nn.Embedding(n_classes, c)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x, y):
        h = self.bn(x)
        return h * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class CDCGAN(nn.Module):
    """Class-conditional DCGAN generator (architecture `cdcgan` in genrep's registry).

    [z ++ embed(y)] -> linear -> C0 x 7 x 7 -> (cBN, ReLU, up x2, conv3) x 2 -> cBN, ReLU, conv3 -> tanh.
    """

    def __init__(self, z_dim=64, embed_dim=64, n_classes=10, ch=(128, 64, 32), out_ch=1):
        super().__init__()
        self.z_dim, self.embed_dim, self.n_classes, self.ch, self.out_ch = z_dim, embed_dim, n_classes, ch, out_ch
        self.embed = nn.Embedding(n_classes, embed_dim)
        self.linear = nn.Linear(z_dim + embed_dim, ch[0] * 7 * 7)
        self.bn0 = CondBN(ch[0], n_classes)
        self.conv1 = nn.Conv2d(ch[0], ch[1], 3, padding=1)
        self.bn1 = CondBN(ch[1], n_classes)
        self.conv2 = nn.Conv2d(ch[1], ch[2], 3, padding=1)
        self.bn2 = CondBN(ch[2], n_classes)
        self.conv_out = nn.Conv2d(ch[2], out_ch, 3, padding=1)

    def config(self):
        return {
            "architecture": "cdcgan",
            "z_dim": self.z_dim,
            "embed_dim": self.embed_dim,
            "num_classes": self.n_classes,
            "channels": list(self.ch),
            "out_channels": self.out_ch,
            "base_size": 7,
            "bn_eps": 1e-5,
        }

    def forward(self, z, y):
        h = self.linear(torch.cat([z, self.embed(y)], 1)).view(-1, self.ch[0], 7, 7)
        h = F.interpolate(F.relu(self.bn0(h, y)), scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = F.interpolate(F.relu(self.bn1(h, y)), scale_factor=2, mode="nearest")
        h = self.conv2(h)
        h = self.conv_out(F.relu(self.bn2(h, y)))
        return torch.tanh(h)


class Classifier(nn.Module):
    """Small CNN digit classifier used to measure class fidelity (also ported to Rust for the tests)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.fc1(h.flatten(1)))
        return self.fc2(h)


def state_dict_for_export(model):
    """Float32 contiguous tensors; BatchNorm's num_batches_tracked is dropped (unused at inference)."""
    return {
        k: v.detach().float().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
