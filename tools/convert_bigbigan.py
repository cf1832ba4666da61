"""Converts a BigGAN-PyTorch generator state dict (BigBiGAN's PyTorch port `BigBiGAN_x1.pth`,
BigGAN-PyTorch's and StudioGAN's BigGAN releases) into a genrep model directory.

    python tools/convert_bigbigan.py --checkpoint G.pth (--config CONFIG.json | --preset bigbigan-128) \
        [--unconditional] --out DIR

CONFIG.json holds the `BigGAN.Generator` constructor arguments (as BigGAN-PyTorch's scripts pass
them). Spectral norm is folded as the eval-mode forward computes it at every call: one power
iteration from the stored `u0` (which eval mode never updates, so more iterations give the same),
then `W / sigma`. `u*`/`sv*` are dropped. `--unconditional` serves the model without classes,
with class 0's shared embedding for every sample (how BigBiGAN is used). Needs torch, numpy and
safetensors; the checkpoint is loaded with `weights_only=True` (no code in it runs).
"""

import argparse
import hashlib
import json
import os
import sys

# BigBiGAN as `gan_load.py` builds it (the reference note's configuration).
PRESETS = {
    "bigbigan-128": {
        "G_ch": 96,
        "dim_z": 120,
        "resolution": 128,
        "G_attn": "64",
        "n_classes": 1000,
        "G_shared": True,
        "shared_dim": 128,
        "hier": True,
        "BN_eps": 1e-4,
        "SN_eps": 1e-4,
        "num_G_SVs": 1,
        "num_G_SV_itrs": 1,
        "G_param": "SN",
        "G_activation": "ReLU",
        "norm_style": "bn",
    }
}

# `BigGAN.G_arch`: (in, out) channel multipliers per block; block i outputs 8·2^i pixels.
ARCH = {
    32: [(4, 4), (4, 4), (4, 4)],
    64: [(16, 16), (16, 8), (8, 4), (4, 2)],
    128: [(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)],
    256: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)],
    512: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1), (1, 1)],
}

# Constructor arguments that change the forward pass, and their BigGAN-PyTorch defaults.
DEFAULTS = {
    "G_ch": 64,
    "dim_z": 128,
    "bottom_width": 4,
    "resolution": 128,
    "G_attn": "64",
    "n_classes": 1000,
    "num_G_SVs": 1,
    "num_G_SV_itrs": 1,
    "G_shared": True,
    "shared_dim": 0,
    "hier": False,
    "cross_replica": False,
    "mybn": False,
    "BN_eps": 1e-5,
    "SN_eps": 1e-12,
    "G_param": "SN",
    "norm_style": "bn",
    "G_activation": "ReLU",
}


class ConvertError(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_config(raw):
    """The forward-pass arguments with defaults filled in, checked for what genrep supports."""
    cfg = dict(DEFAULTS)
    cfg.update({k: raw[k] for k in DEFAULTS if k in raw})
    if cfg["resolution"] not in ARCH:
        raise ConvertError(f"resolution = {cfg['resolution']}: the layout has {sorted(ARCH)}")
    act = cfg["G_activation"]
    if not (isinstance(act, str) and act.lower().startswith("relu")):
        raise ConvertError(f"G_activation = {act!r}: only ReLU is supported")
    if cfg["norm_style"] != "bn":
        raise ConvertError(f"norm_style = {cfg['norm_style']!r}: only 'bn' is supported")
    if cfg["mybn"] or cfg["cross_replica"]:
        raise ConvertError("mybn / cross_replica batch norms are not supported")
    if cfg["bottom_width"] != 4:
        raise ConvertError(f"bottom_width = {cfg['bottom_width']}: G_arch starts at 4")
    if cfg["hier"] and not cfg["G_shared"]:
        raise ConvertError("hier without G_shared: BigGAN-PyTorch cannot run it either")
    attn = attention(cfg)
    for i, (_, b) in enumerate(ARCH[cfg["resolution"]]):
        r, cout = 8 << i, b * cfg["G_ch"]
        if r in attn and cout % 8:
            raise ConvertError(f"attention at {r}x{r} needs a multiple of 8 channels, the block has {cout}")
    slots = len(ARCH[cfg["resolution"]]) + 1 if cfg["hier"] else 1
    if cfg["dim_z"] < slots:
        raise ConvertError(f"dim_z = {cfg['dim_z']} is shorter than its {slots} hierarchical chunks")
    return cfg


def attention(cfg):
    """The resolutions `G_attn` names ('64', '16_32'; '0' or '' for none)."""
    try:
        return {int(s) for s in str(cfg["G_attn"]).split("_") if s}
    except ValueError:
        raise ConvertError(f"G_attn = {cfg['G_attn']!r}: not '_'-separated resolutions") from None


def expected_shapes(cfg):
    """{name: shape} of every tensor the generator holds (spectral-norm buffers excluded)."""
    ch, res = cfg["G_ch"], cfg["resolution"]
    blocks = [(a * ch, b * ch, 8 << i) for i, (a, b) in enumerate(ARCH[res])]
    attn = attention(cfg)
    slots = len(blocks) + 1 if cfg["hier"] else 1
    chunk = cfg["dim_z"] // slots
    shared = cfg["shared_dim"] or cfg["dim_z"]
    cond = shared + (chunk if cfg["hier"] else 0)
    out = {}
    if cfg["G_shared"]:
        out["shared.weight"] = (cfg["n_classes"], shared)
    out["linear.weight"] = (blocks[0][0] * 16, chunk)
    out["linear.bias"] = (blocks[0][0] * 16,)
    for i, (cin, cout, r) in enumerate(blocks):
        p = f"blocks.{i}.0"
        for bn, c in (("bn1", cin), ("bn2", cout)):
            for part in ("gain", "bias"):
                out[f"{p}.{bn}.{part}.weight"] = (
                    (c, cond) if cfg["G_shared"] else (cfg["n_classes"], c)
                )
            out[f"{p}.{bn}.stored_mean"] = (c,)
            out[f"{p}.{bn}.stored_var"] = (c,)
        for conv, a, b, k in (("conv1", cin, cout, 3), ("conv2", cout, cout, 3), ("conv_sc", cin, cout, 1)):
            out[f"{p}.{conv}.weight"] = (b, a, k, k)
            out[f"{p}.{conv}.bias"] = (b,)
        if r in attn:
            a = f"blocks.{i}.1"
            out[f"{a}.theta.weight"] = (cout // 8, cout, 1, 1)
            out[f"{a}.phi.weight"] = (cout // 8, cout, 1, 1)
            out[f"{a}.g.weight"] = (cout // 2, cout, 1, 1)
            out[f"{a}.o.weight"] = (cout, cout // 2, 1, 1)
            out[f"{a}.gamma"] = ()
    last = blocks[-1][1]
    for part in ("gain", "bias", "stored_mean", "stored_var"):
        out[f"output_layer.0.{part}"] = (last,)
    out["output_layer.2.weight"] = (3, last, 3, 3)
    out["output_layer.2.bias"] = (3,)
    return out


def is_sn_buffer(name):
    last = name.rsplit(".", 1)[-1]
    return (last.startswith("u") or last.startswith("sv")) and last[1:].lstrip("v").isdigit()


def is_sn_weight(name, cfg):
    """Whether BigGAN-PyTorch wraps this weight in spectral norm: every conv and linear, not the
    shared embedding nor, without G_shared, the BNs' class embeddings."""
    if not name.endswith(".weight") or name == "shared.weight":
        return False
    if not cfg["G_shared"] and (".gain.weight" in name or ".bias.weight" in name):
        return False
    return True


def fold_sn(w, u0, eps):
    """W / sigma with sigma from one power iteration from u0 (BigGAN-PyTorch's `SN.W_`, eval)."""
    import torch
    import torch.nn.functional as F

    w64 = w.double()
    mat = w64.reshape(w64.shape[0], -1)
    u = u0.double().reshape(1, -1)
    if u.shape[1] != mat.shape[0]:
        raise ConvertError(f"u0 has {u.shape[1]} values, the weight {mat.shape[0]} rows")
    v = F.normalize(u @ mat, eps=eps)
    u = F.normalize(v @ mat.t(), eps=eps)
    sigma = (v @ mat.t() @ u.t()).squeeze()
    return (w64 / sigma).to(torch.float32)


def check_tensors(shapes, cfg):
    """`expected_shapes(cfg)`, once the checkpoint's `{name: shape}` has exactly those tensors
    (spectral-norm buffers aside) with those shapes; else a ConvertError naming the first
    difference."""
    want = expected_shapes(cfg)
    have = {k for k in shapes if not is_sn_buffer(k)}
    missing = sorted(set(want) - have)
    extra = sorted(have - set(want))
    if missing:
        raise ConvertError(
            f"{len(missing)} tensor(s) the config needs are missing, e.g. {missing[:5]}"
        )
    if extra:
        raise ConvertError(
            f"{len(extra)} tensor(s) the config has no place for, e.g. {extra[:5]} "
            "(is G_attn, hier or G_shared right?)"
        )
    for k, shape in sorted(want.items()):
        if tuple(shapes[k]) != tuple(shape):
            raise ConvertError(
                f"tensor `{k}` has shape {list(shapes[k])}, the config gives {list(shape)}"
            )
    return want


def read_state_dict(path):
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvertError(f"not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConvertError("the checkpoint is not a state dict of tensors")
    return sd


def convert(checkpoint, cfg_raw, out_dir, unconditional=False, name=None):
    import numpy as np
    from safetensors.numpy import save_file

    cfg = resolve_config(cfg_raw)
    sd = read_state_dict(checkpoint)
    want = check_tensors({k: tuple(v.shape) for k, v in sd.items()}, cfg)
    arrays = {}
    sn = cfg["G_param"] == "SN"
    for k, shape in sorted(want.items()):
        t = sd[k]
        if not t.is_floating_point():
            raise ConvertError(f"tensor `{k}` has dtype {t.dtype}, expected a float type")
        if sn and is_sn_weight(k, cfg):
            u0 = f"{k[: -len('.weight')]}.u0"
            if u0 not in sd:
                raise ConvertError(
                    f"`{k}` is spectrally normalised (G_param SN) but `{u0}` is missing"
                )
            t = fold_sn(t, sd[u0], cfg["SN_eps"])
        a = t.float().numpy()
        arrays[k] = np.ascontiguousarray(a.reshape(1) if a.ndim == 0 else a)
    os.makedirs(out_dir, exist_ok=True)
    save_file(arrays, os.path.join(out_dir, "model.safetensors"))
    config = {
        "architecture": "biggan-pytorch",
        "name": name or os.path.splitext(os.path.basename(checkpoint))[0],
        **{k: cfg[k] for k in ("G_ch", "dim_z", "resolution", "G_attn", "n_classes", "G_shared",
                                "shared_dim", "hier", "BN_eps")},
        "G_attn": str(cfg["G_attn"]),
        "source": {
            "file": os.path.basename(checkpoint),
            "sha256": sha256_file(checkpoint),
            "format": "BigGAN-PyTorch generator state dict",
            "converter": "tools/convert_bigbigan.py",
        },
    }
    if unconditional:
        config["unconditional_class"] = 0
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    n = sum(a.size for a in arrays.values())
    print(f"{checkpoint}: {len(arrays)} tensors, {n:,} parameters -> {out_dir}")
    return config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="JSON of BigGAN.Generator's constructor arguments")
    src.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--unconditional", action="store_true",
                    help="serve without classes, with class 0's embedding (BigBiGAN)")
    ap.add_argument("--name")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    try:
        if a.preset:
            raw = PRESETS[a.preset]
        else:
            try:
                with open(a.config) as f:
                    raw = json.load(f)
            except (OSError, ValueError) as e:
                raise ConvertError(f"cannot read --config {a.config}: {e}") from None
            if not isinstance(raw, dict):
                raise ConvertError(f"--config {a.config} is not a JSON object")
        convert(a.checkpoint, raw, a.out, unconditional=a.unconditional, name=a.name)
    except ConvertError as e:
        print(f"error: {a.checkpoint}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
