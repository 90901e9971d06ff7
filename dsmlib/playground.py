r"""The precomputed grid behind the book's playground chapter ("Playground").

For each cell ``(t, n, width, data seed)`` of a small grid, one ensemble of two-layer nets is
trained by :func:`dsmlib.train_sgd` at the single noise level ``(mu, sigma) = (e^{-t},
sqrt(1 - e^{-2t}))``: one member per learning rate, all members with the same initialisation and
the same stream of SGD batches and noise (so the learning rate is the only difference). Every
learning rate gets the same *training time* ``eta * steps`` (the paper's Fig. 1 protocol:
``0.5 x 5k = 0.1 x 25k = 0.05 x 50k`` steps), rounded up to whole blocks of 256 steps.

The network is trained at one noise level, so it cannot drive the whole backward SDE of chapter 1.
What it can do at that level, and what the playground shows:

* its score ``s_theta`` next to the empirical optimal score ``s*`` (eq. 6) on a plot grid;
* **samples of p_t**: unadjusted Langevin dynamics ``y <- y + h s(y) + sqrt(2h) xi`` that use
  only the score (``h = langevin_step * sigma^2``, chains started from the Gaussian fitted to
  ``p_t``, the same start and noise for every score: common random numbers);
* **denoised samples** ``x_hat = (y + sigma^2 s(y)) / mu`` (Tweedie's formula: with ``s*`` this is
  the posterior mean ``E[W | y]`` of eq. 9, the last step of a diffusion sampler). With ``s*`` at
  small ``sigma`` they land on training points (memorization); with a smooth learned score they
  spread between them;
* the numbers: excess risk ``R_n(s_theta) - R_n(s*)``, sharpness ``lambda_max`` next to the
  stability bound ``2 / (m eta)`` (eq. 8), the threshold ``2^12 sigma^2 / (mu n^2 Delta)`` of
  Thm. 8, the memorization fraction of the denoised samples (Gu et al. 2023), and the fraction
  of hidden units active on the data range ``[mu x_(1), mu x_(n)]`` (0: a collapsed network,
  whose score is 0 on the data).

Only what is needed to redraw is stored (curves on the plot grid, histograms, numbers), in
``dsmlib/data/playground_grid.npz``, written atomically with :func:`dsmlib.save_results`.
Regenerate it with (about 4 minutes of CPU time on one thread; 324 networks in 54 ensembles)::

    python -m dsmlib.playground --regenerate

Reproducibility: on one machine the file regenerates bit for bit (every seed is explicit and the
trainer is deterministic at any thread count). Across machines it need not: the CPU kernels that
PyTorch dispatches (``torch.backends.cpu.get_cpu_capability()``: scalar code, or AVX2/AVX-512
with fused multiply-adds) round differently in the last bit, and float32 SGD over tens of
thousands of steps amplifies such a difference until the long runs (small learning rates) end
at visibly different networks. The file therefore records the capability and the library
versions it was made with (``meta["extra"]``), and ``tests/test_widgets.py`` regenerates one
cell and compares it, bit for bit, with the file whenever the capability is the same.

Settings off the grid are trained on demand by :func:`train_view` (the playground's "Train this
setting" button); on a grid setting it reproduces the stored cell.

The computation (the configuration, training and summarizing a cell or a setting, :class:`View`)
is in :mod:`dsmlib.playground_compute`; this module holds the grid file (:func:`load_grid`,
:class:`PlaygroundGrid`, :func:`regenerate`) and the command line, and re-exports the
computation's public names.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .io import check_writable, config_to_dict, load_results, save_results
from .playground_compute import (PlaygroundConfig, View, _top, compute_cell, compute_grid,
                                 steps_for, train_view, training_data)
from .schedule import ou_mu, ou_sigma
from .stability import stability_threshold

__all__ = ["PlaygroundConfig", "PlaygroundGrid", "View", "load_grid", "compute_grid",
           "compute_cell", "environment", "train_view", "training_data", "grid_path",
           "steps_for"]

GRID_FILE = "playground_grid.npz"


# --------------------------------------------------------------------------------- the grid file

def environment() -> dict:
    """What the grid's bits depend on besides the code and the seeds (stored in the file):
    torch and NumPy versions, the CPU kernels torch dispatches to, and the thread count."""
    return {"torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def grid_path():
    """The packaged grid file (a ``importlib.resources`` Traversable: works from an installed
    wheel, an editable install or Colab)."""
    return resources.files("dsmlib") / "data" / GRID_FILE


class PlaygroundGrid:
    """The loaded grid: ``config``, ``arrays`` (see :func:`compute_grid`) and ``meta``.

    ``grid.view(lr=..., t=..., n=..., width=..., seed=...)`` returns the :class:`View` of one
    setting; every value must be on the grid (``ValueError`` naming the argument otherwise).
    """

    def __init__(self, arrays: dict, config: PlaygroundConfig, meta: dict | None = None):
        self.arrays = arrays
        self.config = config
        self.meta = meta or {}

    def axis(self, name):
        """Grid values of one axis: ``"lr"``, ``"t"``, ``"n"``, ``"width"`` or ``"seed"``."""
        return {"lr": self.config.lrs, "t": self.config.times, "n": self.config.ns,
                "width": self.config.widths, "seed": self.config.seeds}[name]

    def index(self, name, value) -> int:
        """Position of ``value`` on axis ``name``; ``ValueError`` if it is not a grid value."""
        values = self.axis(name)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        for i, v in enumerate(values):
            if math.isclose(float(value), float(v), rel_tol=1e-9, abs_tol=0.0):
                return i
        raise ValueError(f"{name}={value!r} is not on the precomputed grid; grid values of {name}: "
                         f"{list(values)} (train other settings with train_view / the 'Train this "
                         f"setting' button)")

    def contains(self, **setting) -> bool:
        """True when every given value lies on the grid."""
        try:
            for k, v in setting.items():
                self.index(k, v)
        except (TypeError, ValueError):
            return False
        return True

    def view(self, *, lr, t, n, width, seed) -> View:
        """The stored :class:`View` of one grid setting."""
        l, a, b = self.index("lr", lr), self.index("t", t), self.index("n", n)
        c, d = self.index("width", width), self.index("seed", seed)
        A, cfg = self.arrays, self.config
        t_, n_ = cfg.times[a], cfg.ns[b]
        f = lambda key: float(A[key][a, b, c, d, l])  # noqa: E731
        return View(
            lr=cfg.lrs[l], t=t_, n=n_, width=cfg.widths[c], seed=cfg.seeds[d],
            mu=float(ou_mu(t_)), sigma=float(ou_sigma(t_)), steps=int(A["steps"][l]),
            data=A["data"][b, d, :n_].astype(np.float64), y=cfg.y,
            score=A["score"][a, b, c, d, l].astype(np.float64),
            optimal=A["optimal"][a, b, d].astype(np.float64), hist_edges=cfg.hist_edges,
            noisy=A["noisy"][a, b, c, d, l].astype(np.float64),
            noisy_opt=A["noisy_opt"][a, b, d].astype(np.float64),
            denoised=A["denoised"][a, b, c, d, l].astype(np.float64),
            denoised_opt=A["denoised_opt"][a, b, d].astype(np.float64),
            excess=f("excess"), sharp=f("sharp"),
            stab=stability_threshold(cfg.widths[c], cfg.lrs[l]),
            theorem_lr=float(A["theorem_lr"][a, b, d]), memo=f("memo"),
            memo_opt=float(A["memo_opt"][a, b, d]), active=f("active"),
            diverged=bool(A["diverged"][a, b, c, d, l]),
            noisy_top=_top(A["noisy"][a, b, c, d], A["noisy_opt"][a, b, d]),
            denoised_top=_top(A["denoised"][a, b, c, d], A["denoised_opt"][a, b, d]),
        )


def _config_from_dict(d) -> PlaygroundConfig:
    fields = {f.name for f in dataclasses.fields(PlaygroundConfig)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown playground config entries {sorted(unknown)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return PlaygroundConfig(**kw)


def load_grid(path=None, *, expected_config: PlaygroundConfig | None = None) -> PlaygroundGrid:
    """Load the grid file (default: the packaged one, :func:`grid_path`).

    Checks the checksum (:func:`dsmlib.load_results`) and that the stored configuration is the
    current default ``PlaygroundConfig()`` (or ``expected_config``): a stale file raises
    ``dsmlib.ResultsError`` telling how to regenerate it.
    """
    want = PlaygroundConfig() if expected_config is None else expected_config
    if path is None:
        with resources.as_file(grid_path()) as p:
            arrays, meta = _load(p, want)
    else:
        arrays, meta = _load(Path(path), want)
    return PlaygroundGrid(arrays, _config_from_dict(meta["config"]), meta)


def _load(path, want):
    from .io import ResultsError
    try:
        return load_results(path, expected_config=want)
    except ResultsError as exc:
        raise ResultsError(f"{exc}. Regenerate the playground grid with "
                           f"`python -m dsmlib.playground --regenerate`") from exc


# --------------------------------------------------------------------------------- command line

def regenerate(path=None, config: PlaygroundConfig = PlaygroundConfig(), *, verbose=True):
    """Compute the grid and write it atomically to ``path`` (default: the packaged file)."""
    if path is None:
        path = Path(str(grid_path()))
    check_writable(path)                      # before the long computation, not after it
    start, cpu = time.perf_counter(), time.process_time()
    env = environment()
    arrays = compute_grid(config, verbose=verbose)
    extra = {"seconds": round(time.perf_counter() - start, 1),
             "cpu_seconds": round(time.process_time() - cpu, 1), **env}
    save_results(path, arrays, config_to_dict(config), extra=extra, overwrite=True)
    return path


def main(argv=None) -> int:
    """Command line (``python -m dsmlib.playground --help``). Every expected failure (a missing
    or unreadable grid file, an output that cannot be written, a bad option) is one line on
    stderr and a non-zero exit status; ``--debug`` shows the traceback instead."""
    from ._cli import OneLineParser, run_guarded

    prog = "python -m dsmlib.playground"
    parser = OneLineParser(
        prog=prog,
        description="Regenerate the precomputed grid of the book's playground chapter.")
    parser.add_argument("--regenerate", action="store_true",
                        help="train every cell of the grid and write the grid file")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: the packaged file "
                             "dsmlib/data/playground_grid.npz)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the work is many small operations)")
    parser.add_argument("--check", action="store_true",
                        help="only check that the packaged grid file loads and matches the config")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of one line")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.check and args.regenerate:
        parser.error("choose one of --check and --regenerate")
    if not (args.check or args.regenerate):
        parser.print_help()
        return 2

    def body():
        if args.check:
            grid = load_grid(args.out)
            print(f"ok: {grid_path() if args.out is None else args.out} "
                  f"(dsmlib {grid.meta.get('version')}, {grid.meta.get('extra')})")
            return 0
        torch.set_num_threads(args.threads)
        path = regenerate(args.out)
        size = Path(path).stat().st_size
        print(f"wrote {path} ({size / 1e6:.2f} MB)")
        return 0

    return run_guarded(prog, body, args.debug, interrupted="interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
