"""Slider-to-redraw time of the playground chapter.

    python benchmarks/bench_playground.py [--moves 20] [--seed 0]

Builds the explorer on the packaged grid (dsmlib/data/playground_grid.npz) and sets slider values
programmatically, exactly as a reader's slider move does (``slider.value = v`` fires the update
callback: read the grid, update the artists in place, render the PNG into the Image widget).
Prints the median and the maximum over ``--moves`` moves, wall-clock and CPU time, for
(a) learning-rate moves (the common case: only the learned curves and numbers are redrawn on a
cached background) and (b) moves of a random other slider (a full redraw). Target: < 0.2 s.
Wall-clock numbers on a shared machine include time waiting for a core: compare with CPU time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from dsmlib import playground as pg
from dsmlib import widgets


def _timed_moves(w, moves, rng, names):
    wall, cpu = [], []
    for _ in range(moves):
        name = rng.choice(names)
        slider = w.sliders[name]
        options = [v for _, v in slider.options if v != slider.value]
        value = rng.choice(options)
        t0, c0 = time.perf_counter(), time.process_time()
        slider.value = value                     # fires the observer: the whole redraw
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert w.view is not None and getattr(w.view, name) == value
    return wall, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)

    t0 = time.perf_counter()
    grid = pg.load_grid()
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = widgets.playground(grid)
    build = time.perf_counter() - t0
    print(f"grid file: {pg.grid_path()}  loaded in {load:.2f} s; explorer built in {build:.2f} s")

    for label, names in (("learning-rate slider", ["lr"]),
                         ("any other slider", ["t", "n", "width", "seed"])):
        wall, cpu = _timed_moves(w, args.moves, rng, names)
        print(f"{label:22s} ({args.moves} moves): median {statistics.median(wall) * 1e3:6.1f} ms "
              f"wall, {statistics.median(cpu) * 1e3:6.1f} ms CPU;  max {max(wall) * 1e3:6.1f} ms "
              f"wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
