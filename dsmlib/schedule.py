r"""The Ornstein–Uhlenbeck noise schedule of the forward SDE ``dX = -X dt + sqrt(2) dB``.

Given ``X_0 = x``, ``X_t ~ N(mu(t) x, sigma(t)^2 I)`` with

    mu(t) = exp(-t),    sigma(t) = sqrt(1 - exp(-2 t)),    so  mu^2 + sigma^2 = 1.

See chapter 1, "Diffusion models".
"""

from __future__ import annotations

import math

import torch

from . import _checks

__all__ = ["ou_mu", "ou_sigma", "time_from_sigma"]


def _time(t, name="t"):
    """Validate ``t >= 0``; return a float for scalars, a tensor otherwise."""
    if isinstance(t, torch.Tensor) and t.numel() != 1 or isinstance(t, (list, tuple)) \
            or (hasattr(t, "ndim") and getattr(t, "ndim", 0) > 0):
        tt = _checks.as_tensor(t, name)
        if bool((tt < 0).any()):
            raise ValueError(f"{name} must be >= 0 (time runs forward from the data at t = 0)")
        return tt
    return _checks.nonnegative(t, name)


def ou_mu(t):
    """Signal scale ``mu(t) = exp(-t)``.

    t: a number ``>= 0`` (returns a float) or a tensor/array of times (returns a tensor, same shape).
    """
    t = _time(t)
    return torch.exp(-t) if isinstance(t, torch.Tensor) else math.exp(-t)


def ou_sigma(t):
    """Noise scale ``sigma(t) = sqrt(1 - exp(-2 t))`` (computed as ``sqrt(-expm1(-2t))``).

    t: a number ``>= 0`` (returns a float) or a tensor/array of times (returns a tensor, same shape).
    """
    t = _time(t)
    if isinstance(t, torch.Tensor):
        return torch.sqrt(-torch.expm1(-2 * t))
    return math.sqrt(-math.expm1(-2 * t))


def time_from_sigma(sigma):
    """Inverse of :func:`ou_sigma`: ``t = -log(1 - sigma^2) / 2`` for ``0 < sigma < 1``."""
    s = _checks.positive(sigma, "sigma")
    if s >= 1:
        raise ValueError(f"sigma must be < 1 on the OU schedule (sigma(t) -> 1 as t -> inf), got {s}")
    return -0.5 * math.log1p(-s * s)
