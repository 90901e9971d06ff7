"""Evaluate s* on 1e6 query points against 1e5 training points (1-D) and print time and peak memory.

    python benchmarks/bench_memory.py [--queries 1000000] [--points 100000] [--blocks 20]
    python benchmarks/bench_memory.py --quick       # 1e5 x 1e4: a few seconds

The weight matrix would be 1e11 entries (400 GB in float32) as one block; optimal_score processes
the queries in chunks so the peak resident memory stays far below 2 GiB. The full case takes a few
minutes on 2 CPU cores: the queries are passed in ``--blocks`` calls (each one still far too large
to hold as one block) so that a progress bar can show how far it is.
"""
import argparse
import resource
import time

import torch
from tqdm.auto import tqdm

import dsmlib as dsm


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--blocks", type=int, default=20,
                   help="calls of optimal_score the queries are split into (for the progress bar)")
    p.add_argument("--quick", action="store_true", help="1e5 queries x 1e4 points")
    args = p.parse_args(argv)
    if args.quick:
        args.queries, args.points = 100_000, 10_000
    if min(args.queries, args.points, args.blocks) < 1:
        p.error("--queries, --points and --blocks must be >= 1")
    g = torch.Generator().manual_seed(0)
    data = torch.randn(args.points, generator=g)
    y = torch.randn(args.queries, generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    parts = []
    for block in tqdm(torch.tensor_split(y, min(args.blocks, args.queries)), unit="block",
                      desc=f"s* on {args.queries:.0e} x {args.points:.0e}"):
        parts.append(dsm.optimal_score(block, data, 0.95, 0.05))
    s = torch.cat(parts)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"s* on {args.queries:.0e} queries x {args.points:.0e} points: {dt:.1f} s, "
          f"finite: {bool(torch.isfinite(s).all())}, extra peak RSS: {peak / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
