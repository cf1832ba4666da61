#!/usr/bin/env python3
"""Convert a StyleGAN2 checkpoint into a genrep model directory.

    python tools/convert_stylegan2.py --checkpoint FILE --out DIR [--name NAME] [--noise-mode const]

Input, recognised by its content (not its name):
  * an NVlabs network pickle (`*.pkl` of stylegan2-ada-pytorch: `{'G_ema': <persistent Generator>,
    ...}`). It is read with a restricted unpickler: NVlabs' persistent classes are replaced by a
    stub that returns the module's saved state, so the pickle's embedded module source is never
    executed, and any class outside a short allow-list (torch tensors and storages, OrderedDict,
    NVlabs' EasyDict) is refused by name;
  * a rosinality checkpoint (`*.pt`: `{'g_ema': state_dict, 'latent_avg': [w_dim], ...}`), whose
    names are mapped to NVlabs' layout and whose configuration is read off the tensor shapes.
  A TF-era StyleGAN2 pickle (it needs TensorFlow 1.x) is refused with the way out: convert it
  with NVlabs' `legacy.py` first.

Output: `DIR/model.safetensors` (float32, NVlabs names, without the fixed FIR buffers) and
`DIR/config.json` (`architecture: stylegan2`, NVlabs' constructor arguments, the served noise
mode, the source file's sha256). Needs torch, numpy and safetensors (not part of the Rust build).
"""

import argparse
import hashlib
import io
import json
import math
import os
import pickle
import sys
import zipfile


class ConvertError(Exception):
    """A checkpoint that cannot be converted; the message says why."""


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _State(dict):
    """What a persistent NVlabs object is replaced by: its `__dict__` (module state)."""


def _reconstruct_persistent_obj(meta):
    # meta = {type, version, module_src, class_name, state}; module_src is never looked at.
    state = meta.get("state") if isinstance(meta, dict) else None
    if not isinstance(state, dict):
        raise ConvertError("a persistent object in the pickle carries no state")
    out = _State(state)
    out["__class_name__"] = meta.get("class_name")
    return out


class _EasyDict(dict):
    pass


# What an NVlabs pickle may reference, beyond torch's own tensor machinery.
_STUBS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
}


# Plain data constructors the pickle's attributes use (numpy scalars and arrays in a module's
# `__dict__`, ordered dicts of parameters).
_DATA = {
    ("collections", "OrderedDict"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _STUBS:
            return _STUBS[(module, name)]
        if module.startswith("dnnlib.tflib") or module.startswith("tensorflow"):
            raise ConvertError(
                "this is a TF-era StyleGAN2 pickle (it needs TensorFlow 1.x): convert it to the "
                "PyTorch format with NVlabs' stylegan2-ada-pytorch `legacy.py` first, e.g. "
                "`python legacy.py --source=network.pkl --dest=network-pt.pkl`"
            )
        allowed_torch = module == "torch" or module.startswith("torch._utils") or (
            module == "torch.storage" and name == "_load_from_bytes"
        )
        if allowed_torch or (module, name) in _DATA:
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)
        raise ConvertError(
            f"the pickle references {module}.{name}, which a StyleGAN2 network pickle does not "
            "need; refusing to load it"
        )


def _module_tensors(state, prefix, out):
    """Collects parameters and buffers of a persistent module state, recursively, as a flat
    NVlabs state dict."""
    import torch

    for group in ("_parameters", "_buffers"):
        for k, v in (state.get(group) or {}).items():
            if v is None:
                continue
            if not isinstance(v, torch.Tensor):
                raise ConvertError(f"{prefix}{k} is not a tensor")
            out[prefix + k] = v.detach()
    for k, sub in (state.get("_modules") or {}).items():
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConvertError(f"module {prefix}{k} is not a saved module state")
        _module_tensors(sub, f"{prefix}{k}.", out)


def read_nvlabs_pickle(path):
    """(state dict, NVlabs init kwargs) of `G_ema` in an NVlabs network pickle."""
    with open(path, "rb") as f:
        try:
            data = _Unpickler(f).load()
        except ConvertError:
            raise
        except Exception as e:  # a truncated or foreign pickle
            raise ConvertError(f"not a readable network pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or "G_ema" not in data:
        raise ConvertError("the pickle has no 'G_ema' (not an NVlabs network pickle)")
    g = data["G_ema"]
    if not isinstance(g, dict) or "_init_kwargs" not in g:
        raise ConvertError("'G_ema' is not an NVlabs Generator (no constructor arguments)")
    kwargs = dict(g["_init_kwargs"])
    for k in ("mapping_kwargs", "synthesis_kwargs"):
        kwargs[k] = dict(kwargs.get(k) or {})
    tensors = {}
    _module_tensors(g, "", tensors)
    return tensors, kwargs


def _ros(sd, name):
    if name not in sd:
        raise ConvertError(f"rosinality checkpoint: tensor `{name}` is missing")
    return sd[name]


def read_rosinality(path):
    """(state dict in NVlabs names, NVlabs init kwargs) of a rosinality checkpoint."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvertError(f"not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt:
        raise ConvertError("the checkpoint has no 'g_ema' (not a rosinality StyleGAN2 checkpoint)")
    sd = ckpt["g_ema"]
    if "latent_avg" not in ckpt:
        raise ConvertError(
            "the checkpoint has no 'latent_avg' (rosinality's train.py saves none; its "
            "convert_weight.py does): serve the .pt directly with `genrep serve --model FILE.pt`, "
            "which estimates it as the mean of the mapping over 4096 z, as rosinality's "
            "mean_latent does"
        )
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    if n_mlp == 0:
        raise ConvertError("rosinality checkpoint: no mapping layers (`style.1.weight`)")
    w_dim = _ros(sd, f"style.{n_mlp}.weight").shape[0]
    z_dim = _ros(sd, "style.1.weight").shape[1]
    n_rgb = 0
    while f"to_rgbs.{n_rgb}.conv.weight" in sd:
        n_rgb += 1
    res = 4 * 2**n_rgb
    out = {}
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = _ros(sd, f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = _ros(sd, f"style.{i + 1}.bias")
    out["mapping.w_avg"] = ckpt["latent_avg"].reshape(-1)
    const = _ros(sd, "input.input")
    out["synthesis.b4.const"] = const[0]

    def layer(src, dst, noise):
        out[f"{dst}.weight"] = _ros(sd, f"{src}.conv.weight")[0]
        out[f"{dst}.affine.weight"] = _ros(sd, f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = _ros(sd, f"{src}.conv.modulation.bias")
        out[f"{dst}.noise_strength"] = _ros(sd, f"{src}.noise.weight").reshape(())
        out[f"{dst}.bias"] = _ros(sd, f"{src}.activate.bias")
        out[f"{dst}.noise_const"] = _ros(sd, f"noises.{noise}")[0, 0]

    def torgb(src, dst):
        out[f"{dst}.weight"] = _ros(sd, f"{src}.conv.weight")[0]
        out[f"{dst}.affine.weight"] = _ros(sd, f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = _ros(sd, f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = _ros(sd, f"{src}.bias").reshape(-1)

    layer("conv1", "synthesis.b4.conv1", "noise_0")
    torgb("to_rgb1", "synthesis.b4.torgb")
    for k in range(n_rgb):
        r = 2 ** (k + 3)
        layer(f"convs.{2 * k}", f"synthesis.b{r}.conv0", f"noise_{2 * k + 1}")
        layer(f"convs.{2 * k + 1}", f"synthesis.b{r}.conv1", f"noise_{2 * k + 2}")
        torgb(f"to_rgbs.{k}", f"synthesis.b{r}.torgb")
    channels = {4: const.shape[1]}
    for k in range(n_rgb):
        r = 2 ** (k + 3)
        channels[r] = out[f"synthesis.b{r}.conv1.weight"].shape[0]
    base, cmax = channel_rule(channels)
    kwargs = {
        "z_dim": int(z_dim),
        "c_dim": 0,
        "w_dim": int(w_dim),
        "img_resolution": res,
        "img_channels": int(out["synthesis.b4.torgb.weight"].shape[0]),
        "mapping_kwargs": {"num_layers": n_mlp},
        # rosinality's layers do not clamp.
        "synthesis_kwargs": {"channel_base": base, "channel_max": cmax, "conv_clamp": None},
    }
    return out, kwargs


def channel_rule(channels):
    """(channel_base, channel_max) with `min(base // r, max) == channels[r]` for every block,
    or a ConvertError naming the resolution that no such rule gives."""
    cmax = max(channels.values())
    below = sorted(r for r, c in channels.items() if c < cmax)
    base = channels[below[0]] * below[0] if below else cmax * max(channels)
    for r, c in sorted(channels.items()):
        if min(base // r, cmax) != c:
            raise ConvertError(
                f"the channel widths {dict(sorted(channels.items()))} do not follow "
                "min(channel_base / r, channel_max); genrep cannot describe this generator"
            )
    return base, cmax


def checkpoint_kind(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return "rosinality"  # torch.save's zip format
    if head[:1] == b"\x80":
        # A pickle: an NVlabs network pickle, or a legacy-format torch.save of a rosinality dict.
        with open(path, "rb") as f:
            text = f.read(1 << 16)
        if b"torch_utils.persistence" in text or b"dnnlib" in text:
            return "nvlabs"
        return "rosinality"
    raise ConvertError("not a pickle or a torch checkpoint (unknown file format)")


def convert(checkpoint, out_dir, name=None, noise_mode="const"):
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    kind = checkpoint_kind(checkpoint)
    tensors, kwargs = (read_nvlabs_pickle if kind == "nvlabs" else read_rosinality)(checkpoint)
    for k in ("z_dim", "w_dim", "img_resolution", "img_channels"):
        if k not in kwargs:
            raise ConvertError(f"the generator's constructor arguments have no `{k}`")
    res = int(kwargs["img_resolution"])
    if res < 4 or res & (res - 1):
        raise ConvertError(f"img_resolution = {res}: not a power of two >= 4")
    arrays = {}
    for k, v in sorted(tensors.items()):
        if k.endswith("resample_filter"):
            f = v.double()
            expect = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
            expect = torch.outer(expect, expect) / 64
            if f.shape != expect.shape or not torch.allclose(f, expect):
                raise ConvertError(f"{k} is not the [1,3,3,1] filter; genrep supports only it")
            continue
        if not v.is_floating_point():
            raise ConvertError(f"tensor `{k}` has dtype {v.dtype}, expected a float type")
        a = v.to(torch.float32).cpu().numpy()
        # safetensors readers disagree on 0-d tensors: scalars (noise strengths) are [1].
        arrays[k] = np.ascontiguousarray(a.reshape(1) if a.ndim == 0 else a)
    os.makedirs(out_dir, exist_ok=True)
    save_file(arrays, os.path.join(out_dir, "model.safetensors"))
    syn = dict(kwargs.get("synthesis_kwargs") or {})
    m = dict(kwargs.get("mapping_kwargs") or {})
    config = {
        "architecture": "stylegan2",
        "name": name or os.path.splitext(os.path.basename(checkpoint))[0],
        "z_dim": int(kwargs["z_dim"]),
        "c_dim": int(kwargs.get("c_dim") or 0),
        "w_dim": int(kwargs["w_dim"]),
        "img_resolution": res,
        "img_channels": int(kwargs["img_channels"]),
        "mapping_kwargs": {
            k: m[k]
            for k in ("num_layers", "embed_features", "layer_features", "lr_multiplier")
            if m.get(k) is not None
        },
        "synthesis_kwargs": {
            "channel_base": int(syn.get("channel_base", 32768)),
            "channel_max": int(syn.get("channel_max", 512)),
            "conv_clamp": syn.get("conv_clamp"),
        },
        "noise_mode": noise_mode,
        "source": {
            "file": os.path.basename(checkpoint),
            "sha256": sha256_file(checkpoint),
            "format": kind,
            "converter": "tools/convert_stylegan2.py",
        },
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    n = sum(a.size for a in arrays.values())
    print(f"{checkpoint} ({kind}): {len(arrays)} tensors, {n:,} parameters -> {out_dir}")
    return config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name")
    ap.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    a = ap.parse_args()
    try:
        convert(a.checkpoint, a.out, a.name, a.noise_mode)
    except (ConvertError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
