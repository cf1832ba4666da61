"""Writes the malformed rosinality checkpoints of tests/fixtures/stylegan2-pt/bad/ (a few KB
each), which `genrep` must refuse with a message naming the problem (tests/model_dir_errors.rs),
and `sg2-32-uncond-no-latent-avg.pt`: the fixture checkpoint without `latent_avg`, as rosinality's
`train.py` saves them (genrep estimates it).

    python tools/make_rosinality_error_fixtures.py   # needs torch
"""

import io
import os
import pickletools
import zipfile

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "stylegan2-pt", "bad")


def z(*shape):
    return torch.zeros(*shape)


def mapping(dim=8):
    return {"style.1.weight": z(dim, dim), "style.1.bias": z(dim)}


def save(name, obj, **kw):
    torch.save(obj, os.path.join(OUT, name), **kw)


def lying_shape(name):
    """A 2x2 tensor whose pickle claims 60000x60000 (14 GB): must be refused before any
    allocation."""
    buf = io.BytesIO()
    torch.save({"g_ema": {"style.1.weight": z(2, 2)}, "latent_avg": z(2)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = zipfile.ZipFile(os.path.join(OUT, name), "w", zipfile.ZIP_STORED)
    for info in src.infolist():
        data = src.read(info.filename)
        if info.filename.endswith("data.pkl"):
            data = _patch_first_shape(data, 60000)
        out.writestr(info, data)
    out.close()


def _patch_first_shape(pkl, n):
    """Rewrites the (2, 2) size tuple and its (2, 1) strides to (n, n) / (n, 1)."""
    # size: BININT1 2, BININT1 2, TUPLE2, BINPUT 10; stride: BININT1 2, BININT1 1, TUPLE2.
    old = b"K\x02K\x02\x86q\nK\x02K\x01\x86"
    assert pkl.count(old) == 1, "the pickle's layout changed"
    big = b"J" + n.to_bytes(4, "little")
    return pkl.replace(old, big + big + b"\x86q\n" + big + b"K\x01\x86")


def main():
    os.makedirs(OUT, exist_ok=True)
    save("no-g-ema.pt", {"model": {"w": z(2)}})
    save("no-mapping.pt", {"g_ema": {"input.input": z(1, 8, 4, 4)}, "latent_avg": z(8)})
    save("missing-tensor.pt", {"g_ema": mapping(), "latent_avg": z(8)})
    save(
        "bad-conv-shape.pt",
        {
            "g_ema": {**mapping(), "input.input": z(1, 8, 4, 4), "conv1.conv.weight": z(8, 8, 3, 3)},
            "latent_avg": z(8),
        },
    )
    save(
        "integer-tensor.pt",
        {"g_ema": {"style.1.weight": torch.zeros(8, 8, dtype=torch.int64)}, "latent_avg": z(8)},
    )
    save(
        "too-many-blocks.pt",
        {
            "g_ema": {**mapping(), **{f"to_rgbs.{k}.conv.weight": z(1) for k in range(9)}},
            "latent_avg": z(8),
        },
    )
    save("legacy-format.pt", {"g_ema": mapping(), "latent_avg": z(8)},
         _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(os.path.join(OUT, "plain-zip.pt"), "w") as f:
        f.writestr("readme.txt", "not a checkpoint")
    lying_shape("lying-shape.pt")
    src = os.path.join(OUT, "..", "sg2-32-uncond.pt")
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    del ckpt["latent_avg"]
    torch.save(ckpt, os.path.join(OUT, "..", "sg2-32-uncond-no-latent-avg.pt"))
    for n in sorted(os.listdir(OUT)):
        print(n, os.path.getsize(os.path.join(OUT, n)))


if __name__ == "__main__":
    main()
