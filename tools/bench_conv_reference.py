#!/usr/bin/env python3
"""PyTorch side of `cargo bench -p genrep-kernels --bench conv`: forward (and forward + backward)
GFLOP/s of `torch.nn.functional.conv2d` on the shapes the Rust runner passes, and the f32 GEMM
rate of a large square matmul. The Rust runner starts this script itself when
`GENREP_BENCH_PYTHON` names a Python with torch, so both sides are measured in one run with the
same thread count; it can also be run by hand:

    python tools/bench_conv_reference.py --threads 2 --shapes '[[8,512,4,4,512,3,1,1]]'

Each shape is [batch, c_in, h, w, c_out, k, stride, padding]. Prints one JSON object per line.
"""

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F


def rate(fn, flops, min_time=float(os.environ.get("BENCH_MIN_TIME", "0.3"))):
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 2:
            return flops * n / dt / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--shapes", required=True, help="JSON list of [b,cin,h,w,cout,k,s,p]")
    ap.add_argument("--gemm", type=int, default=2048, help="square matmul size for the peak")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.gemm
    a, b = torch.randn(n, n), torch.randn(n, n)
    print(json.dumps({"gemm": n, "gflops": rate(lambda: a @ b, 2.0 * n**3), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)
    for shape in json.loads(args.shapes):
        bsz, cin, h, w, cout, k, s, p = shape
        x = torch.randn(bsz, cin, h, w)
        wt = torch.randn(cout, cin, k, k)
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        flops = 2.0 * bsz * cout * ho * wo * cin * k * k
        with torch.no_grad():
            fwd = rate(lambda: F.conv2d(x, wt, stride=s, padding=p), flops)
        xg, wg = x.clone().requires_grad_(), wt.clone().requires_grad_()
        r = torch.randn(bsz, cout, ho, wo)

        def step():
            xg.grad = None
            wg.grad = None
            F.conv2d(xg, wg, stride=s, padding=p).backward(r)

        # forward + both gradients: 3x the forward's multiply-adds
        train = rate(step, 3 * flops)
        print(json.dumps({"shape": shape, "fwd": fwd, "train": train}), flush=True)


if __name__ == "__main__":
    main()
