#!/usr/bin/env python3
"""PyTorch side of scripts/gpu-check.sh: runs pytorch-pretrained-biggan 0.1.1 on the models, dtypes
and batch sizes of a `genrep check` report, and writes the merged report with the ratios.

    python3 tools/gpu_torch_reference.py --report genrep.json --out report.json \
        [--device cuda] [--budget-s 120] [--min-time-s 1] [--gpu-info "H200, 580.xx, ..."]

Same network (the report carries each model's config), random weights, eval mode, no_grad,
truncation 1.0, and the same timing rule as genrep: one warm-up pass, then passes until
--min-time-s has elapsed, each ending with the images copied to the host as float32. Only the
entries genrep measured are run. TF32 is off, as in candle (whose f32 GEMMs run in full f32), so
f32 compares f32 arithmetic; otherwise PyTorch's defaults (cuDNN, cudnn.benchmark off). On SIGINT
(the caller's time limit) the entries measured so far are kept and the report is written.

Without torch or the package, the report is still written, with the reason under "torch". The
package is a 27 kB wheel: carry it and put it on PYTHONPATH (a wheel is importable as a zip). Its
download helpers import boto3, requests, tqdm and scipy; where those are missing they are replaced
by empty modules, since nothing here downloads.
"""

import argparse
import importlib
import json
import sys
import time
import types


def _stub_missing(names):
    """Empty stand-ins for modules only the package's download helpers use."""
    stubbed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            # A package with no files, so that importing a stubbed parent's child fails with
            # ImportError (and is stubbed in turn) instead of iterating a made-up `__path__`.
            mod.__path__ = []

            def __getattr__(attr, _name=name):  # noqa: N807 (module-level __getattr__)
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return type(attr, (Exception,), {"__module__": _name})

            mod.__getattr__ = __getattr__
            sys.modules[name] = mod
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, mod)
            stubbed.append(name)
    return stubbed


def import_biggan():
    """(torch, BigGAN, BigGANConfig, stubbed module names) or raises ImportError."""
    import torch

    stubbed = _stub_missing(
        ["boto3", "botocore", "botocore.exceptions", "requests", "tqdm", "scipy", "scipy.stats"]
    )
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    return torch, BigGAN, BigGANConfig, stubbed


def random_biggan(torch, BigGAN, BigGANConfig, config=None):
    """BigGAN-deep with the package's random init, made numerically tame: BN variances in
    [0.5, 1.5] and unit BN gains (the package initialises the statistics rows to zeros)."""
    cfg = BigGANConfig() if config is None else BigGANConfig.from_dict(config)
    model = BigGAN(cfg)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_vars"):
                m.running_vars.uniform_(0.5, 1.5)
            if hasattr(m, "weight") and m.weight is not None and not hasattr(m, "weight_orig"):
                if m.weight.dim() == 1:
                    m.weight.fill_(1.0)
    return model.eval()


def images_per_s(torch, model, cfg, batch, dtype, device, min_time):
    z = (torch.arange(batch * cfg["z_dim"]) * 7919 % 1000).float().div(500).sub(1)
    z = z.reshape(batch, cfg["z_dim"]).to(device, dtype)
    cls = torch.zeros(batch, cfg["num_classes"])
    cls[torch.arange(batch), torch.arange(batch) % cfg["num_classes"]] = 1.0
    cls = cls.to(device, dtype)
    with torch.no_grad():
        model(z, cls, 1.0).float().cpu()
        t = time.time()
        passes = 0
        while passes == 0 or time.time() - t < min_time:
            model(z, cls, 1.0).float().cpu()
            passes += 1
        return batch * passes / (time.time() - t), passes


def run_torch(report, device, budget, min_time):
    torch, BigGAN, BigGANConfig, stubbed = import_biggan()
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    thr = report.get("throughput", {"entries": [], "models": []})
    if device == "cpu" and report.get("threads"):
        torch.set_num_threads(int(report["threads"]))
    started = time.time()
    entries = []
    plan = {}
    for e in thr["entries"]:
        if "images_per_s" in e:
            plan.setdefault((e["model"], e["dtype"]), []).append(e["batch"])
    configs = {m["model"]: m for m in thr["models"]}
    interrupted = False
    try:
        for (name, dt), batches in plan.items():
            info = configs.get(name, {})
            cfg = info.get("config")
            if cfg is None:
                entries += [{"model": name, "dtype": dt, "batch": b, "skipped": "not a BigGAN-deep"} for b in batches]
                continue
            if time.time() - started >= budget:
                entries += [{"model": name, "dtype": dt, "batch": b, "skipped": "the time budget was spent"} for b in batches]
                continue
            try:
                model = random_biggan(torch, BigGAN, BigGANConfig, cfg).to(device, dtypes[dt])
            except Exception as err:  # noqa: BLE001 (reported, the sweep goes on)
                entries += [{"model": name, "dtype": dt, "batch": b, "error": f"loading: {err}"} for b in batches]
                continue
            failed = None
            for b in batches:
                e = {"model": name, "dtype": dt, "batch": b}
                if failed is not None:
                    e["skipped"] = f"batch {failed} failed"
                elif time.time() - started >= budget:
                    e["skipped"] = "the time budget was spent"
                else:
                    try:
                        ips, passes = images_per_s(torch, model, cfg, b, dtypes[dt], device, min_time)
                        e.update(images_per_s=ips, passes=passes)
                        if info.get("gflop_per_image"):
                            e["tflops"] = ips * info["gflop_per_image"] / 1e3
                    except Exception as err:  # noqa: BLE001 (out of memory and the like)
                        failed = b
                        e["error"] = str(err).splitlines()[0][:300]
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
                print(json.dumps(e), file=sys.stderr, flush=True)
                entries.append(e)
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    except KeyboardInterrupt:
        interrupted = True
    return {
        "torch_version": torch.__version__,
        "device": device,
        "settings": {
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        },
        "stubbed_modules": stubbed,
        "interrupted_at_time_limit": interrupted,
        "entries": entries,
        "seconds": time.time() - started,
    }


def compare(report, torch_side):
    """genrep / torch images/s for every (model, dtype, batch) both measured."""
    theirs = {
        (e["model"], e["dtype"], e["batch"]): e
        for e in torch_side.get("entries", [])
        if "images_per_s" in e
    }
    rows = []
    for e in report["throughput"]["entries"]:
        t = theirs.get((e.get("model"), e.get("dtype"), e.get("batch")))
        if "images_per_s" in e and t:
            rows.append({
                "model": e["model"], "dtype": e["dtype"], "batch": e["batch"],
                "genrep_images_per_s": e["images_per_s"], "torch_images_per_s": t["images_per_s"],
                "genrep_tflops": e.get("tflops"), "torch_tflops": t.get("tflops"),
                "ratio": e["images_per_s"] / t["images_per_s"],
            })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", required=True, help="the JSON report of `genrep check`")
    ap.add_argument("--out", required=True, help="where to write the merged report")
    ap.add_argument("--device", default="cuda", help="torch device: cuda, cuda:0, cpu")
    ap.add_argument("--budget-s", type=float, default=120.0)
    ap.add_argument("--min-time-s", type=float, default=None, help="default: the report's")
    ap.add_argument("--gpu-info", default=None, help="a line describing the GPU (nvidia-smi)")
    args = ap.parse_args()
    try:
        with open(args.report) as f:
            report = json.load(f)
    except (OSError, ValueError) as err:
        sys.exit(f"error: cannot read the genrep report {args.report}: {err}")
    min_time = args.min_time_s or report["throughput"].get("min_time_s", 1.0)
    try:
        torch_side = run_torch(report, args.device, args.budget_s, min_time)
    except ImportError as err:
        torch_side = {"skipped": f"no PyTorch side: {err} (install torch, and put the pytorch-pretrained-biggan 0.1.1 wheel on PYTHONPATH)"}
    merged = {
        "pass": report.get("pass"),
        "gpu": args.gpu_info,
        "genrep": report,
        "torch": torch_side,
        "genrep_vs_torch": compare(report, torch_side),
    }
    with open(args.out, "w") as f:
        json.dump(merged, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
