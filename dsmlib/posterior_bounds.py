r"""Bounds on the posterior training point ``W(y)`` near data points and at midpoints (1-D).

``W(y)`` is the training point a noisy observation ``y`` came from, ``P(W = x_i | y) ∝
exp(-(y - mu x_i)^2 / (2 sigma^2))`` (eq. 9); its mean and variance give ``s*`` and ``s*'``. Near a
data point ``W(y)`` is almost surely that point, at a midpoint it is a coin flip between the two
neighbours, so ``s*'`` swings between them (notation of :mod:`dsmlib.theory`):

* Prop. 2 (paper): :func:`prop2_midpoint_bound`, :func:`prop2_near_data_bound`;
* Cor. 3 (paper, the swing of ``s*'``): :func:`cor3_derivative_gap`;
* sharper versions of Prop. 2 proved in this book (chapter 7, "a lemma of this book"):
  :func:`posterior_near_data_lemma`, :func:`posterior_midpoint_lemma`.

The rest of the paper's chain (Thm. 4, eq. 10, Prop. 6-7, Thm. 8) is in :mod:`dsmlib.theory`,
whose validation helpers this module uses. Scalar results are Python floats; per-gap results are
tensors in the data's dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _checks
from .regularity import _data_1d, _noise
from .theory import _guarded, _log, min_gap

__all__ = [
    "prop2_midpoint_bound",
    "prop2_near_data_bound",
    "cor3_derivative_gap",
    "Prop2Midpoint",
    "Prop2NearData",
    "Cor3Bound",
    "posterior_near_data_lemma",
    "posterior_midpoint_lemma",
    "NearDataBounds",
    "MidpointBounds",
]


class Prop2Midpoint(NamedTuple):
    """Result of :func:`prop2_midpoint_bound` (tensors of shape (n - 1,), sorted gaps)."""

    midpoints: torch.Tensor   #: m_i = mu (x_i + x_{i+1}) / 2
    var_lower: torch.Tensor   #: (x_{i+1} - x_i)^2 / (2n) <= Var[W(m_i)]


class Prop2NearData(NamedTuple):
    """Result of :func:`prop2_near_data_bound` (floats and a bool)."""

    radius: float       #: the bounds are stated for |y - mu x_i| <= radius = mu Delta / 4, every i
    mean_error: float   #: n Delta exp(-mu^2 Delta^2 / (4 sigma^2)) >= |E[W(y)] - x_i|
    var_upper: float    #: 4 n^2 Delta^2 exp(-mu^2 Delta^2 / (4 sigma^2)) >= Var[W(y)]
    applies: bool       #: the hypothesis Delta >= 2 sigma / mu holds


class Cor3Bound(NamedTuple):
    """Result of :func:`cor3_derivative_gap`."""

    midpoints: torch.Tensor   #: m_i = mu (x_i + x_{i+1}) / 2, (n - 1,)
    lower: torch.Tensor       #: lower bound on |s*'(y) - s*'(m_i)|, (n - 1,); may be negative
    radius: float             #: for every y within mu Delta / 4 of mu x_i or of mu x_{i+1}
    applies: bool             #: the hypothesis Delta >= 2 sigma / mu holds


def _exp_quarter(mu, sigma, delta):
    """``exp(-mu^2 Delta^2 / (4 sigma^2))``, the decay of Prop. 2 and Thm. 4."""
    try:
        return math.exp(-mu ** 2 * delta ** 2 / (4.0 * sigma ** 2))
    except OverflowError:                       # Delta^2 beyond float64: the decay is 0
        return 0.0


def prop2_midpoint_bound(data, mu) -> Prop2Midpoint:
    r"""Prop. 2 (paper), first statement: ``Var[W(m_i)] >= (x_i - x_{i+1})^2 / (2n)``.

    At ``m_i = mu (x_i + x_{i+1}) / 2`` the two neighbours are the closest scaled points, so
    ``alpha_i = alpha_{i+1} >= 1/n`` and ``Var W >= (1/n) min_c [(x_i - c)^2 + (x_{i+1} - c)^2]``.
    No condition on the noise level; the bound does not depend on sigma. data: (n,), sorted
    internally, ``n >= 2``. Returns ``Prop2Midpoint(midpoints, var_lower)``, each (n - 1,).
    """
    mu = _checks.positive(mu, "mu")
    x = _data_1d(data)
    gaps = x[1:] - x[:-1]
    return Prop2Midpoint(mu * (x[1:] + x[:-1]) / 2.0, gaps ** 2 / (2.0 * x.numel()))


def prop2_near_data_bound(data, mu, sigma, *, strict=False) -> Prop2NearData:
    r"""Prop. 2 (paper), second statement: near a data point the posterior is a point mass.

    If ``|y - mu x_i| <= mu Delta / 4`` and ``Delta >= 2 sigma / mu``, then, with
    ``e = exp(-mu^2 Delta^2 / (4 sigma^2))``,

        |E[W(y)] - x_i| <= n Delta e,        Var[W(y)] <= 4 n^2 Delta^2 e.

    The hypothesis ``Delta >= 2 sigma / mu`` is reported in ``applies`` (with ``strict=True`` a
    failing hypothesis raises ``ValueError`` instead); the values are returned either way, and
    without the hypothesis they can be wrong (the tests show a case). data: (n,), ``n >= 2``.
    Returns ``Prop2NearData(radius, mean_error, var_upper, applies)``.
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    applies = delta >= 2.0 * sigma / mu
    if strict and not applies:
        raise ValueError(f"Prop. 2 needs Delta >= 2 sigma / mu = {2.0 * sigma / mu:.3g}; "
                         f"Delta = {delta:.3g}")
    e = _exp_quarter(mu, sigma, delta)
    var_upper = _guarded(lambda: 4.0 * n ** 2 * delta ** 2 * e,
                         lambda: math.log(4) + 2 * _log(n) + 2 * _log(delta) + _log(e))
    return Prop2NearData(mu * delta / 4.0, n * delta * e, var_upper, applies)


def cor3_derivative_gap(data, mu, sigma, *, strict=False) -> Cor3Bound:
    r"""Cor. 3 (paper): ``s*'`` changes a lot between a data point and the next midpoint.

    With eq. 9, ``s*'(m_i) - s*'(y) = mu^2 (Var[W(m_i)] - Var[W(y)]) / sigma^4``; Prop. 2 bounds
    the first variance from below (:func:`prop2_midpoint_bound`) and the second from above near
    ``mu x_i`` and ``mu x_{i+1}`` (:func:`prop2_near_data_bound`), so for every such y

        |s*'(y) - s*'(m_i)| >= (mu^2 / sigma^4) ((x_i - x_{i+1})^2 / (2n)
                                               - 4 n^2 Delta^2 exp(-mu^2 Delta^2 / (4 sigma^2))).

    The paper writes the statement for ``y ∈ {x_i, x_{i+1}}``; the chain from Prop. 2 gives it
    within ``mu Delta / 4`` of the noisy points ``mu x_i``, ``mu x_{i+1}`` (where Thm. 4's proof
    uses it), which contains ``x_i`` only when ``(1 - mu) |x_i| <= mu Delta / 4``. The hypothesis
    ``Delta >= 2 sigma / mu`` is reported in ``applies`` (``strict=True`` raises instead).
    data: (n,), ``n >= 2``. Returns ``Cor3Bound(midpoints, lower, radius, applies)``.
    """
    mid = prop2_midpoint_bound(data, mu)
    near = prop2_near_data_bound(data, mu, sigma, strict=strict)
    mu, sigma = float(mu), float(sigma)
    try:
        factor = mu ** 2 / sigma ** 4
    except (ZeroDivisionError, OverflowError):  # sigma^4 underflows: (mu / sigma^2)^2, maybe inf
        k = mu / (sigma * sigma)
        factor = k * k
    gap = mid.var_lower - near.var_upper
    lower = torch.where(gap == 0, torch.zeros_like(gap), factor * gap)     # no inf * 0
    return Cor3Bound(mid.midpoints, lower, near.radius, near.applies)


class NearDataBounds(NamedTuple):
    """Result of :func:`posterior_near_data_lemma` (floats)."""

    radius: float       #: the bounds hold for every y with |y - mu x_i| <= radius, every i
    mean_error: float   #: bound on |E[W(y)] - x_i|
    var_upper: float    #: bound on Var[W(y)]


class MidpointBounds(NamedTuple):
    """Result of :func:`posterior_midpoint_lemma` (tensors of shape (n - 1,), sorted gaps)."""

    midpoints: torch.Tensor   #: m_i = mu (x_i + x_{i+1}) / 2, where the bounds hold
    mean_error: torch.Tensor  #: bound on |E[W(m_i)] - (x_i + x_{i+1}) / 2|
    var_lower: torch.Tensor   #: lower bound on Var[W(m_i)]
    var_upper: torch.Tensor   #: upper bound on Var[W(m_i)]


def posterior_near_data_lemma(data, mu, sigma, *, radius=None) -> NearDataBounds:
    r"""A lemma of this book (sharper than the paper's Prop. 2, no condition on sigma): ``W(y)`` near
    a data point is almost surely that point.

    For every i and every y with ``|y - mu x_i| <= r`` (``r < mu Delta / 2``; default
    ``r = mu Delta / 4``, Prop. 2's radius), with ``d_ij = |x_j - x_i|`` and
    ``e_ij = exp(-mu d_ij (mu d_ij - 2 r) / (2 sigma^2))``:

        |E[W(y)] - x_i| <= max_i sum_{j != i} d_ij e_ij,    Var[W(y)] <= max_i sum_{j != i} d_ij^2 e_ij.

    Proof: ``alpha_j <= alpha_j / alpha_i = exp(-((y - mu x_j)^2 - (y - mu x_i)^2) / (2 sigma^2))``
    and ``(y - mu x_j)^2 - (y - mu x_i)^2 >= mu d_ij (mu d_ij - 2 r) > 0``; then
    ``|E W - x_i| = |sum_j alpha_j (x_j - x_i)| <= sum_{j != i} alpha_j d_ij`` and
    ``Var W <= E (W - x_i)^2 = sum_{j != i} alpha_j d_ij^2``.
    At the default radius each term is at most ``d e^{-mu^2 d^2 / (4 sigma^2)}`` (resp. ``d^2 ...``),
    which is decreasing in ``d >= Delta`` once ``Delta >= 2 sigma / mu``: so the lemma implies the
    paper's Prop. 2 (:func:`prop2_near_data_bound`, ``n Delta e`` and ``4 n^2 Delta^2 e``) where
    that applies. Consequence (eq. 9): ``s*'(y) <= (-1 + mu^2 Var[W(y)] / sigma^2) / sigma^2``, so
    ``s*' ≈ -1/sigma^2`` there. Proof also in chapter 7; the tests check the bounds against
    :func:`dsmlib.posterior_moments`. data: (n,) with distinct points.
    Returns ``NearDataBounds(radius, mean_error, var_upper)`` (floats).
    """
    _noise(mu, sigma)
    x = _data_1d(data)
    mu, sigma = _noise(mu, sigma, x.dtype)     # the bounds are computed in x's dtype
    delta = min_gap(x)
    if delta == 0:
        raise ValueError("data has coincident points (Delta = 0): no neighbourhood of a data point "
                         "isolates it")
    r = mu * delta / 4.0 if radius is None else _checks.nonnegative(radius, "radius")
    if r >= mu * delta / 2.0:
        raise ValueError(f"radius must be < mu * Delta / 2 = {mu * delta / 2.0}, got {r}")
    d = (x[None, :] - x[:, None]).abs()                                     # (n, n), 0 on the diagonal
    e = torch.exp(-mu * d * (mu * d - 2.0 * r) / (2.0 * sigma ** 2)) * (d > 0).to(d.dtype)
    dde = torch.where(e == 0, torch.zeros_like(e), d * d * e)               # no inf * 0
    return NearDataBounds(r, float((d * e).sum(1).max()), float(dde.sum(1).max()))


def posterior_midpoint_lemma(data, mu, sigma) -> MidpointBounds:
    r"""A lemma of this book (sharper than the paper's Prop. 2): ``W`` at a midpoint is a coin flip.

    At ``m_i = mu (x_i + x_{i+1}) / 2`` (sorted data, gap ``g_i = x_{i+1} - x_i``) the two
    neighbours have equal weight ``alpha_i = alpha_{i+1} = 1 / (2 + q_i)``, where ``q_i``, the
    other points' total weight relative to ``alpha_i``, satisfies
    ``q_i <= (n - 2) exp(-mu^2 Delta (Delta + g_i) / (2 sigma^2))`` (every other j has
    ``(x_j - x_i)(x_j - x_{i+1}) >= Delta (Delta + g_i)``). Hence, with ``D = x_n - x_1``,

        g_i^2 / (2 (2 + q_i)) <= Var[W(m_i)] <= (g_i^2 / 2 + q_i D^2) / (2 + q_i),
        |E[W(m_i)] - (x_i + x_{i+1}) / 2| <= q_i D / (2 + q_i).

    Proof of the lower bound: ``Var W >= alpha_i [(x_i - c)^2 + (x_{i+1} - c)^2] >= alpha_i g_i^2 / 2``
    with ``c = E W``; the upper bounds take ``E (W - (x_i + x_{i+1}) / 2)^2`` and the mean term by
    term. All three are monotone in ``q_i``, so its upper bound may be used. Since
    ``2 + q_i <= n`` the lower bound is never below the paper's ``g_i^2 / (2n)``
    (:func:`prop2_midpoint_bound`), and it tends to ``g_i^2 / 4`` as ``sigma -> 0``: by eq. 9,
    ``s*'(m_i) ≈ (-1 + mu^2 g_i^2 / (4 sigma^2)) / sigma^2``, the swing of ``s*'`` behind Thm. 4.
    Proof also in chapter 7. data: (n,), ``n >= 2``.
    Returns ``MidpointBounds(midpoints, mean_error, var_lower, var_upper)``, each (n - 1,).
    """
    _noise(mu, sigma)
    x = _data_1d(data)
    mu, sigma = _noise(mu, sigma, x.dtype)     # the bounds are computed in x's dtype
    n, delta = x.numel(), min_gap(x)
    gaps = x[1:] - x[:-1]
    spread = x[-1] - x[0]
    q = (n - 2) * torch.exp(-mu ** 2 * delta * (delta + gaps) / (2.0 * sigma ** 2))
    mids = mu * (x[1:] + x[:-1]) / 2.0
    # q = 0 with an overflowing spread**2 would give 0 * inf: the term is then 0
    spread_term = torch.where(q == 0, torch.zeros_like(q), q * spread ** 2)
    return MidpointBounds(mids, q * spread / (2.0 + q), gaps ** 2 / (2.0 * (2.0 + q)),
                          (gaps ** 2 / 2.0 + spread_term) / (2.0 + q))
