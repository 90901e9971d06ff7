"""Evaluate s* on 1e6 query points against 1e5 training points (1-D) and print time and peak memory.

    python benchmarks/bench_memory.py [--queries 1000000] [--points 100000]

The weight matrix would be 1e11 entries (400 GB in float32) as one block; optimal_score processes
the queries in chunks so the peak resident memory stays far below 2 GiB.
"""
import argparse
import resource
import time

import torch

import dsmlib as dsm


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--points", type=int, default=100_000)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    data = torch.randn(args.points, generator=g)
    y = torch.randn(args.queries, generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    s = dsm.optimal_score(y, data, 0.95, 0.05)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"s* on {args.queries:.0e} queries x {args.points:.0e} points: {dt:.1f} s, "
          f"finite: {bool(torch.isfinite(s).all())}, extra peak RSS: {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
