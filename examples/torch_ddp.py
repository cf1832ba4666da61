"""SimCLR with PyTorch DistributedDataParallel on genrep shards, read with stock `webdataset`:
the way most teams will consume the server at scale.

    genrep serve --port 8080 &
    torchrun --nproc_per_node 2 examples/torch_ddp.py \
        --url 'http://127.0.0.1:8080/v1/shards/train-{000000..000007}.tar?seed=1&sigma=0.2&views=1&shard_size=128'

Every rank and DataLoader worker builds the same shard list; `wds.split_by_node` gives each rank
its own shards and `wds.split_by_worker` each of its workers a share of those, so no sample is
read twice in an epoch (the script checks it: every rank reports the keys it trained on, and rank 0
prints whether they are disjoint and complete). A genrep sample is an anchor and its positive view
(`anchor.png`, `pos0.png`: images of latent neighbours), so the pair needs no augmentation.
Shards are pure functions of their URL, so ranks may be on different hosts reading one server or
any replica behind a load balancer.

DDP needs every rank to take the same number of steps, so the ranks stop together when the first
runs out of batches (`lockstep`); the samples the others had left are counted (over all epochs),
not trained on.
Choose a shard count divisible by ranks × workers (as above: 8 shards, 2 ranks, 2 workers) and
equal shard sizes, and nothing is left out.

Backend `gloo` runs on CPUs (use `nccl` on GPUs). Requires torch and webdataset (`curl` fetches
the URLs).
"""

import argparse
import json
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import webdataset as wds


class Encoder(nn.Module):
    """A small conv encoder for 28×28 grey images, with the SimCLR projection head."""

    def __init__(self, dim=128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, dim))

    def forward(self, x):
        return self.head(self.features(x))


def nt_xent(a, b, temperature=0.5):
    """SimCLR's loss over the local batch: each anchor's positive is its own view."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def lockstep(loader, left_out):
    """Yields batches while every rank has one (DDP hangs or fails when ranks take different
    numbers of steps); then counts the samples this rank had left into `left_out[0]`."""
    it = iter(loader)
    while True:
        batch = next(it, None)
        more = torch.tensor([0 if batch is None else 1])
        dist.all_reduce(more, op=dist.ReduceOp.MIN)
        if more.item() == 0:
            if batch is not None:
                left_out[0] += len(batch[0]) + sum(len(b[0]) for b in it)
            return
        yield batch


def pipeline(url, batch_size):
    return wds.DataPipeline(
        wds.SimpleShardList(url),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.decode("l"),
        wds.to_tuple("__key__", "anchor.png", "pos0.png"),
        wds.batched(batch_size, partial=True),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="shard URLs, brace-expanded ({000000..000007})")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--report", help="rank 0 also writes its summary (JSON) here")
    args = ap.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
    model = nn.parallel.DistributedDataParallel(Encoder())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = torch.utils.data.DataLoader(
        pipeline(args.url, args.batch_size), batch_size=None, num_workers=args.workers
    )

    seen, losses, steps, left_out, t = [], [], 0, [0], time.time()
    for epoch in range(args.epochs):
        for keys, anchor, pos in lockstep(loader, left_out):
            x = torch.as_tensor(anchor).float().unsqueeze(1)
            y = torch.as_tensor(pos).float().unsqueeze(1)
            loss = nt_xent(model(x * 2 - 1), model(y * 2 - 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            losses.append(loss.item())
            if epoch == 0:
                seen.extend(keys)
    elapsed = time.time() - t

    per_rank = [None] * world
    dist.all_gather_object(per_rank, {"rank": rank, "keys": seen, "steps": steps,
                                      "left_out": left_out[0],
                                      "first_loss": losses[0] if losses else None,
                                      "last_loss": losses[-1] if losses else None})
    if rank == 0:
        sets = [set(r["keys"]) for r in per_rank]
        union = set().union(*sets)
        summary = {
            "world_size": world,
            "workers_per_rank": args.workers,
            "samples_per_rank": [len(r["keys"]) for r in per_rank],
            "duplicates_within_ranks": sum(len(r["keys"]) - len(s) for r, s in zip(per_rank, sets)),
            "disjoint": sum(len(s) for s in sets) == len(union),
            "distinct_samples": len(union),
            "left_out_for_lockstep": [r["left_out"] for r in per_rank],
            "steps_per_rank": [r["steps"] for r in per_rank],
            "loss_first_last": [(r["first_loss"], r["last_loss"]) for r in per_rank],
            "epochs": args.epochs,
            "seconds": round(elapsed, 1),
        }
        print(json.dumps(summary), flush=True)
        if args.report:
            with open(args.report, "w") as f:
                json.dump(summary, f, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
