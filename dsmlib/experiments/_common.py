"""Shared pieces of the experiment drivers: seeds and random streams, configuration checks.

Randomness is derived from the seeds only (never from global state): member streams are
``numpy.random.SeedSequence`` children of ``(seed, purpose, ...)``, so a result can be reproduced
member by member.
"""

from __future__ import annotations

import numpy as np
import torch

SCALES = ("book", "paper", "custom")
# purposes of the random streams derived from a seed
_DATA, _INIT, _TRAIN, _EVAL, _SAMPLE = range(5)
_SHARPNESS_TOL = 1e-4   # relative Lanczos residual: ample to compare with 2 / (m eta)

def _stream_seed(*keys) -> int:
    """A 62-bit seed for the stream named by the integer ``keys`` (seed, purpose, ...)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 30) ^ int(state[1])) & ((1 << 62) - 1)


def _generator(*keys, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_stream_seed(*keys))


def _check_common(cfg):
    if cfg.scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {cfg.scale!r}")
    seeds = tuple(cfg.seeds)
    if not seeds or any(isinstance(s, bool) or int(s) != s or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty tuple of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    torch.device(cfg.device)  # raises on a malformed device string


def _check_reduction(reduction, allowed):
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")


def _check_lrs(lrs, steps):
    if len(lrs) == 0 or len(lrs) != len(steps):
        raise ValueError(f"lrs and steps must be non-empty and of equal length, "
                         f"got {lrs!r}, {steps!r}")
    if any(lr <= 0 for lr in lrs) or any(int(s) != s or s < 1 for s in steps):
        raise ValueError(f"lrs must be positive and steps positive integers, "
                         f"got {lrs!r}, {steps!r}")



def _progress(iterable, show, desc):
    if not show:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, leave=False)
