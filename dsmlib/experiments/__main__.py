"""Command line: ``python -m dsmlib.experiments fig2 --scale paper [--dim 10] ...``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .. import _checks
from .._cli import OneLineParser, run_guarded
from .runner import FIGURES, run

__all__ = ["main"]

PROG = "python -m dsmlib.experiments"
_MAX_SEEDS = 100_000


def main(argv=None) -> int:
    """Command line: ``python -m dsmlib.experiments fig2 --scale paper [--dim 10] ...``.

    Every expected failure (a bad option, an unavailable device, an output that cannot be
    written, a results file of another configuration, ...) is one line on stderr and a non-zero
    exit status (see :mod:`dsmlib._cli`); ``--debug`` shows the traceback instead. The device and
    the output are checked before anything is computed.
    """
    parser = OneLineParser(
        prog=PROG,
        description="Reproduce a figure of Wu, Marion, Biau & Boyer (COLT 2025), Appendix D, and "
                    "save its results (an .npz with the configuration) under --out.")
    parser.add_argument("figure", choices=sorted(FIGURES), help="which figure to compute")
    parser.add_argument("--scale", choices=("book", "paper"), default="book",
                        help="'paper': Appendix D settings; 'book': the reduced ones of the book "
                             "(default)")
    parser.add_argument("--dim", type=int, default=None,
                        help="fig2 and mechanism only: data dimension (the paper shows 1 and 10; "
                             "default 1)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="use seeds 0..N-1 instead of the preset's (a partial run; the file "
                             "name gets the tag sN)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute and replace an existing file (by default a file with "
                             "the same configuration is kept, and one with another configuration "
                             "is an error)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the kernels are small and extra "
                             "threads mostly add synchronisation; 2 helps a little for fig2 "
                             "with --dim 10)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of one line")
    args = parser.parse_args(argv)
    overrides = {"device": args.device}
    if args.dim is not None:
        if args.figure not in ("fig2", "mechanism"):
            parser.error("--dim applies to fig2 and mechanism only")
        if args.dim < 1:
            parser.error(f"--dim must be >= 1, got {args.dim}")
        overrides["dim"] = args.dim
    tag = None
    if args.seeds is not None:
        if not 1 <= args.seeds <= _MAX_SEEDS:
            parser.error(f"--seeds must be between 1 and {_MAX_SEEDS}, got {args.seeds}")
        overrides["seeds"] = tuple(range(args.seeds))
        tag = f"s{args.seeds}"
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out} is a file; it must be a folder")

    def body():
        _checks.device(args.device, "--device")
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        arrays, meta, path = run(args.figure, args.scale, args.out, tag=tag,
                                 overwrite=args.overwrite, progress=not args.quiet, **overrides)
        extra = meta.get("extra", {})
        print(f"{path}: wall {extra.get('wall_seconds', float('nan')):.1f} s, "
              f"CPU {extra.get('cpu_seconds', float('nan')):.1f} s "
              f"(this call {time.perf_counter() - t0:.1f} s)")
        return 0

    return run_guarded(PROG, body, args.debug, interrupted="interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
