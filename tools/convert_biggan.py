#!/usr/bin/env python3
"""Convert a pytorch-pretrained-biggan checkpoint into a genrep model directory.

    python tools/convert_biggan.py --checkpoint biggan-deep-256/pytorch_model.bin \
        --config biggan-deep-256/config.json --out models/biggan-deep-256 [--name biggan-deep-256]

Input: the package's `pytorch_model.bin` (legacy pickle or zip torch format) and `config.json`.
Output: `OUT/config.json` (the package config plus `architecture`, `name` and the source file's
sha256) and `OUT/model.safetensors` (float32) in which every spectral-normalised weight is folded:

    weight = weight_orig / sigma,   sigma = u . (W_mat v),   W_mat = weight_orig.reshape(out, -1)

which is exactly what torch's spectral_norm computes in eval mode. `*_u` / `*_v` are dropped; every
other tensor is kept unchanged. Needs torch and safetensors (not part of the Rust build).
"""

import argparse
import hashlib
import json
import os
import sys


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def torch_format(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return "zip"
    if head[:2] == b"\x80\x02":
        return "legacy"
    return "unknown"


def fold_spectral_norm(state_dict):
    """Returns (folded dict, list of (name, sigma)). Raises ValueError if a u/v pair is missing."""
    import torch

    out, sigmas = {}, []
    for key, value in state_dict.items():
        if key.endswith("_u") or key.endswith("_v"):
            base = key[:-2]
            if base + "_orig" not in state_dict:
                raise ValueError(f"{key} has no matching {base}_orig")
            continue
        if key.endswith(".weight_orig"):
            base = key[: -len("_orig")]
            try:
                u, v = state_dict[base + "_u"], state_dict[base + "_v"]
            except KeyError as e:
                raise ValueError(f"{key}: missing power-iteration vector {e}") from None
            w = value.double()
            w_mat = w.reshape(w.shape[0], -1)
            if u.numel() != w_mat.shape[0] or v.numel() != w_mat.shape[1]:
                raise ValueError(
                    f"{key}: u {tuple(u.shape)} / v {tuple(v.shape)} do not match weight {tuple(w_mat.shape)}"
                )
            sigma = torch.dot(u.double().flatten(), torch.mv(w_mat, v.double().flatten()))
            # Fold in float32 exactly as torch eval does (weight / sigma with sigma from float32 math).
            sigma32 = torch.dot(u.float().flatten(), torch.mv(value.float().reshape(w.shape[0], -1), v.float().flatten()))
            out[base] = (value.float() / sigma32).contiguous()
            sigmas.append((base, float(sigma)))
        else:
            if not torch.is_floating_point(value):
                # e.g. num_batches_tracked: unused at inference.
                continue
            out[key] = value.float().contiguous()
    return out, sigmas


def convert(checkpoint, config_path, out_dir, name=None, quiet=False):
    import torch
    from safetensors.torch import save_file

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    with open(config_path) as f:
        config = json.load(f)
    required = ["output_dim", "z_dim", "channel_width", "num_classes", "layers", "attention_layer_position", "eps", "n_stats"]
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"{config_path}: missing config fields {missing}")

    fmt = torch_format(checkpoint)
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{checkpoint}: expected a state_dict, got {type(state_dict).__name__}")
    folded, sigmas = fold_spectral_norm(state_dict)

    os.makedirs(out_dir, exist_ok=True)
    digest = sha256_file(checkpoint)
    cfg = dict(config)
    cfg["architecture"] = "biggan-deep"
    cfg["name"] = name or os.path.basename(os.path.normpath(out_dir))
    cfg["source"] = {
        "file": os.path.basename(checkpoint),
        "sha256": digest,
        "torch_format": fmt,
        "converter": "tools/convert_biggan.py (spectral norm folded, eval semantics)",
    }
    save_file(folded, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    n_params = sum(t.numel() for t in folded.values())
    if not quiet:
        print(f"source       {checkpoint} ({fmt} torch format)")
        print(f"sha256       {digest}")
        print(f"tensors      {len(state_dict)} in -> {len(folded)} out")
        print(f"sn folded    {len(sigmas)} weights, sigma in [{min(s for _, s in sigmas):.4g}, {max(s for _, s in sigmas):.4g}]")
        print(f"elements     {n_params} ({n_params * 4 / 1e6:.1f} MB float32)")
        print(f"resolution   {config['output_dim']}, classes {config['num_classes']}, z {config['z_dim']}")
        print(f"wrote        {out_dir}/model.safetensors, {out_dir}/config.json")
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="pytorch_model.bin of pytorch-pretrained-biggan")
    ap.add_argument("--config", required=True, help="the package's config.json for that checkpoint")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--name", help="model name recorded in config.json (default: the directory name)")
    args = ap.parse_args()
    try:
        convert(args.checkpoint, args.config, args.out, args.name)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
