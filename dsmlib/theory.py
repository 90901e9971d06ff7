r"""The paper's quantities: spacing, thresholds, bounds and the weighted total variation (Sections 3-5).

Notation (1-D data unless stated): ``x_1 <= ... <= x_n`` the sorted training points,
``Delta = min_{i != j} |x_i - x_j|``, ``D = x_n - x_1``, noise level ``(mu, sigma)``, and ``W(y)``
the posterior training point (``P(W = x_i | y) ∝ exp(-(y - mu x_i)^2 / (2 sigma^2))``, eq. 9).
The chain of results, each with the function that evaluates it:

* Prop. 2 (posterior near data points and at midpoints): :func:`prop2_near_data_bounds`,
  :func:`prop2_midpoint_bounds`;
* Cor. 3 (``R_n(s*) -> 0``): :func:`optimal_risk_bound`;
* the weight ``pi`` and ``TV_pi(f) = ∫ |f''| pi``: :func:`tv_weight`, :func:`weighted_tv`;
* Thm. 4 (``s*`` is irregular): :func:`tv_lower_bound`, :func:`tv_lower_bound_condition`;
* Prop. 6 (stable minima are regular): :func:`prop6_tv_upper_bound`;
* Prop. 7 (small risk forces irregularity): :func:`prop7_tv_lower_bound`, :func:`prop7_conditions`;
* Thm. 8 (main result): :func:`theorem_lr_threshold`, :func:`theorem_excess_bound`.

The constants are those of arXiv 2502.03435 v1 as quoted in the project brief; they are far from
tight, and chapter 6 prints each bound next to the quantity it bounds. Scalar results are Python
floats; per-point results are tensors in the data's dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _checks

__all__ = [
    "min_gap",
    "theorem_lr_threshold",
    "theorem_excess_bound",
    "tv_lower_bound",
    "tv_lower_bound_condition",
    "optimal_risk_bound",
    "prop2_near_data_bounds",
    "prop2_midpoint_bounds",
    "NearDataBounds",
    "MidpointBounds",
    "prop6_tv_upper_bound",
    "prop7_tv_lower_bound",
    "prop7_conditions",
    "tv_weight",
    "weighted_tv",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_PAIR_BLOCK_ELEMENTS = 1 << 22   # entries of a (rows, n) block of a pairwise computation
_CUBE_LIMIT = 1e100              # |x| whose cubed posterior deviations stay finite in float64


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------

def _data_1d(data, min_points=2):
    """Sorted 1-D training points as an (n,) tensor; (n,) and (n, 1) are accepted."""
    return torch.sort(_checks.data_1d(data, min_points=min_points)).values


def _noise(mu, sigma, dtype=torch.float64):
    """``(mu, sigma)`` as floats, checked by :func:`dsmlib._checks.noise` for ``dtype``."""
    _checks.positive(mu, "mu")
    _checks.positive(sigma, "sigma")
    return _checks.noise(mu, sigma, dtype)


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _exp(t: float) -> float:
    return math.exp(t) if t < 709.0 else math.inf


def _guarded(direct, log_value) -> float:
    """A positive bound: ``direct()`` (the formula as written) or, where an intermediate power
    over- or underflows, ``exp(log_value())``.

    The bounds are products of powers of ``n, mu, sigma, Delta, A``; at extreme (legal) values a
    power such as ``sigma**4`` underflows to 0 or ``A**4`` overflows although the bound itself is a
    float64 number, or is 0.0 / inf only because it lies beyond the float64 range. ``direct()`` is
    kept whenever it agrees with the logarithmic form, so ordinary values are exactly the formula's.
    """
    try:
        v = direct()
    except (ZeroDivisionError, OverflowError):
        v = math.nan
    lv = log_value()
    if math.isnan(lv):
        raise FloatingPointError("the bound is not defined at these values (0 * inf)")
    if math.isfinite(v) and v > 0 and math.isfinite(lv) \
            and abs(math.log(v) - lv) <= 1e-9 * max(1.0, abs(lv)):
        return v
    return 0.0 if lv == -math.inf else _exp(lv)


def _number_or_tensor(x, name, *, strict):
    """A float (for a scalar) or a tensor; checks ``> 0`` (strict) or ``>= 0``."""
    if isinstance(x, torch.Tensor) and x.numel() != 1 or isinstance(x, (list, tuple)) \
            or (hasattr(x, "ndim") and getattr(x, "ndim", 0) > 0):
        t = _checks.as_tensor(x, name)
        if bool((t <= 0).any() if strict else (t < 0).any()):
            raise ValueError(f"{name} must be {'positive' if strict else 'non-negative'}")
        return t
    return _checks.positive(x, name) if strict else _checks.nonnegative(x, name)


def _sqrt(x):
    return torch.sqrt(x) if isinstance(x, torch.Tensor) else math.sqrt(x)


# ----------------------------------------------------------------------------------------------
# spacing, thresholds and the closed-form bounds
# ----------------------------------------------------------------------------------------------

def min_gap(data) -> float:
    r"""Minimum spacing ``Delta = min_{i != j} |x_i - x_j|`` (Euclidean distance in d dimensions).

    data: (n,) or (n, d) with ``n >= 2``. Returns a float; 0.0 when two points coincide (then the
    theorem's learning-rate threshold :func:`theorem_lr_threshold` is infinite). 1-D uses the
    sorted gaps (O(n log n)); d > 1 all pairwise distances (O(n^2 d)).
    """
    x, was_1d = _checks.data_2d(data, "data", min_points=2)
    if x.shape[1] == 1:
        xs = torch.sort(x[:, 0]).values
        gap = float((xs[1:] - xs[:-1]).min())
        if not math.isfinite(gap):                  # float32 points near +-3e38: gaps overflow
            xs = xs.to(torch.float64)
            gap = float((xs[1:] - xs[:-1]).min())
        return gap
    # distances from the differences (the Gram expansion |a|^2 + |b|^2 - 2 a.b loses every digit
    # for points much closer than their norm), a block of rows at a time (bounded memory)
    x = x.to(torch.float64)
    n = x.shape[0]
    rows = max(1, _PAIR_BLOCK_ELEMENTS // (n * x.shape[1]))
    best = math.inf
    for start in range(0, n, rows):
        blk = torch.cdist(x[start:start + rows], x, compute_mode="donot_use_mm_for_euclid_dist")
        idx = torch.arange(blk.shape[0], device=x.device)
        blk[idx, idx + start] = math.inf
        best = min(best, float(blk.min()))
    return best


def theorem_lr_threshold(data, mu, sigma) -> float:
    r"""Learning-rate threshold of Thm. 8: ``eta > 2^12 sigma^2 / (mu n^2 Delta)``.

    Above it, a linearly stable minimum cannot have a small excess risk (see
    :func:`theorem_excess_bound`). data: (n,), ``n >= 2``. Returns a float (``inf`` if ``Delta = 0``).
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    if delta == 0:
        return math.inf
    return _guarded(lambda: 2.0 ** 12 * sigma ** 2 / (mu * n ** 2 * delta),
                    lambda: 12 * math.log(2) + 2 * _log(sigma) - _log(mu) - 2 * _log(n)
                    - _log(delta))


def theorem_excess_bound(data, mu, sigma, A) -> float:
    r"""Excess-risk lower bound of Thm. 8: ``pi n^5 mu^3 Delta^3 / (2^36 e^{1/2} A^4 sigma^4)``.

    Valid for ``sigma <= sigma_0`` and ``eta`` above :func:`theorem_lr_threshold`, at a linearly
    stable minimum of the theory model with ``|a_l| <= A``. data: (n,). Returns a float.
    """
    mu, sigma = _noise(mu, sigma)
    A = _checks.positive(A, "A")
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)

    def direct():
        denominator = 2.0 ** 36 * math.sqrt(math.e) * A ** 4 * sigma ** 4
        return math.pi * n ** 5 * mu ** 3 * delta ** 3 / denominator

    return _guarded(direct, lambda: math.log(math.pi) + 5 * _log(n) + 3 * _log(mu)
                    + 3 * _log(delta) - 36 * math.log(2) - 0.5 - 4 * _log(A) - 4 * _log(sigma))


def tv_lower_bound(data, mu, sigma) -> float:
    r"""Thm. 4: ``TV_pi(s*) >= mu^3 n Delta^3 / (2^12 sigma^4)``.

    It holds when :func:`tv_lower_bound_condition` does.
    data: (n,). Returns the right-hand side as a float.
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    return _guarded(lambda: mu ** 3 * n * delta ** 3 / (2.0 ** 12 * sigma ** 4),
                    lambda: 3 * _log(mu) + _log(n) + 3 * _log(delta) - 12 * math.log(2)
                    - 4 * _log(sigma))


def tv_lower_bound_condition(data, mu, sigma):
    r"""Condition of Thm. 4: ``16 n^3 exp(-mu^2 Delta^2 / (4 sigma^2)) <= 1``.

    data: (n,). Returns ``(value, holds)``: the left-hand side (float) and whether it is ``<= 1``.
    It implies ``Delta >= 2 sigma / mu``: the noise must be small against the spacing.
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    # exponent mu^2 Delta^2 / (4 sigma^2) = (mu Delta / (2 sigma))^2, in logarithms if it overflows
    log_ratio = _log(mu) + _log(delta) - math.log(2) - _log(sigma)
    value = _guarded(lambda: 16.0 * n ** 3 * math.exp(-mu ** 2 * delta ** 2 / (4.0 * sigma ** 2)),
                     lambda: 4 * math.log(2) + 3 * _log(n) - _exp(2 * log_ratio))
    return value, value <= 1.0


def optimal_risk_bound(data, mu, sigma) -> float:
    r"""Cor. 3: ``R_n(s*) <= 4 mu^2 (x_n - x_1)^2 / sigma^4 * exp(-mu^2 Delta^2 / (32 sigma^2))``.

    data: (n,). Returns a float; it tends to 0 as ``sigma -> 0`` (``s*`` denoises perfectly).
    Compare with ``dsm.dsm_risk("optimal", data, mu, sigma)``.
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    spread, delta = float(x[-1] - x[0]), min_gap(x)

    def direct():
        decay = math.exp(-mu ** 2 * delta ** 2 / (32.0 * sigma ** 2))
        return 4.0 * mu ** 2 * spread ** 2 / sigma ** 4 * decay

    exponent = _exp(2 * (_log(mu) + _log(delta) - _log(sigma)) - math.log(32))
    return _guarded(direct, lambda: 2 * math.log(2) + 2 * _log(mu) + 2 * _log(spread)
                    - 4 * _log(sigma) - exponent)


class NearDataBounds(NamedTuple):
    """Result of :func:`prop2_near_data_bounds` (floats)."""

    radius: float       #: the bounds hold for every y with |y - mu x_i| <= radius, every i
    mean_error: float   #: bound on |E[W(y)] - x_i|
    var_upper: float    #: bound on Var[W(y)]


class MidpointBounds(NamedTuple):
    """Result of :func:`prop2_midpoint_bounds` (tensors of shape (n - 1,), sorted gaps)."""

    midpoints: torch.Tensor   #: m_i = mu (x_i + x_{i+1}) / 2, where the bounds hold
    mean_error: torch.Tensor  #: bound on |E[W(m_i)] - (x_i + x_{i+1}) / 2|
    var_lower: torch.Tensor   #: lower bound on Var[W(m_i)]
    var_upper: torch.Tensor   #: upper bound on Var[W(m_i)]


def prop2_near_data_bounds(data, mu, sigma, *, radius=None) -> NearDataBounds:
    r"""Posterior near a data point (the Prop. 2 mechanism): ``W(y)`` is almost surely ``x_i``.

    For every i and every y with ``|y - mu x_i| <= r`` (``r < mu Delta / 2``; default
    ``r = mu Delta / 4``), with ``eps = (n - 1) exp(-mu Delta (mu Delta - 2 r) / (2 sigma^2))``:

        |E[W(y)] - x_i| <= eps D,    Var[W(y)] <= eps D^2,       D = x_n - x_1.

    Proof: for ``j != i``, ``alpha_j / alpha_i = exp(-((y - mu x_j)^2 - (y - mu x_i)^2) / 2 sigma^2)``
    and ``(y - mu x_j)^2 - (y - mu x_i)^2 >= mu d (mu d - 2 r) >= mu Delta (mu Delta - 2 r)`` with
    ``d = |x_j - x_i|``; then ``|E W - x_i| <= sum_j alpha_j d`` and
    ``Var W <= E (W - x_i)^2``. With the default radius the exponent is
    ``-mu^2 Delta^2 / (4 sigma^2)``, the one in Thm. 4's condition. Consequence (eq. 9):
    ``s*'(y) <= (-1 + mu^2 eps D^2 / sigma^2) / sigma^2``, i.e. ``s*' ≈ -1/sigma^2`` there.

    The constants are derived here (the paper's exact statement of Prop. 2 was not available to
    us); the tests check them against :func:`dsmlib.posterior_moments`.
    data: (n,) with distinct points. Returns ``NearDataBounds(radius, mean_error, var_upper)``.
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    if delta == 0:
        raise ValueError("data has coincident points (Delta = 0): no neighbourhood of a data point "
                         "isolates it")
    r = mu * delta / 4.0 if radius is None else _checks.nonnegative(radius, "radius")
    if r >= mu * delta / 2.0:
        raise ValueError(f"radius must be < mu * Delta / 2 = {mu * delta / 2.0}, got {r}")
    spread = float(x[-1] - x[0])
    eps = (n - 1) * math.exp(-mu * delta * (mu * delta - 2.0 * r) / (2.0 * sigma ** 2))
    var_upper = _guarded(lambda: eps * spread ** 2, lambda: _log(eps) + 2 * _log(spread))
    return NearDataBounds(r, eps * spread, var_upper)


def prop2_midpoint_bounds(data, mu, sigma) -> MidpointBounds:
    r"""Posterior midway between consecutive data points (the Prop. 2 mechanism): ``W`` is a coin flip.

    At ``m_i = mu (x_i + x_{i+1}) / 2`` (sorted data, gap ``g_i = x_{i+1} - x_i``) the two
    neighbours have equal weight ``alpha_i = alpha_{i+1} = 1 / (2 + q_i)`` where ``q_i`` (the others'
    total weight relative to ``alpha_i``) satisfies
    ``q_i <= (n - 2) exp(-mu^2 Delta (Delta + g_i) / (2 sigma^2))``, since
    ``(x_j - x_i)(x_j - x_{i+1}) >= Delta (Delta + g_i)`` for every other j. Hence

        Var[W(m_i)] >= g_i^2 / (2 + q_i)^2,
        Var[W(m_i)] <= g_i^2 / 4 + q_i D^2 / (2 + q_i),
        |E[W(m_i)] - (x_i + x_{i+1}) / 2| <= q_i D / (2 + q_i).

    So ``Var[W(m_i)] ≈ g_i^2 / 4`` and (eq. 9)
    ``s*'(m_i) ≈ (-1 + mu^2 g_i^2 / (4 sigma^2)) / sigma^2``:
    the derivative of ``s*`` swings by about ``mu^2 g_i^2 / (4 sigma^4)`` between a data point and
    the next midpoint, the irregularity behind Thm. 4. Constants derived here (see
    :func:`prop2_near_data_bounds`). data: (n,), ``n >= 2``.
    Returns ``MidpointBounds(midpoints, mean_error, var_lower, var_upper)``, each (n - 1,).
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    gaps = x[1:] - x[:-1]
    spread = x[-1] - x[0]
    q = (n - 2) * torch.exp(-mu ** 2 * delta * (delta + gaps) / (2.0 * sigma ** 2))
    mids = mu * (x[1:] + x[:-1]) / 2.0
    # q = 0 with an overflowing spread**2 would give 0 * inf: the term is then 0
    spread_term = torch.where(q == 0, torch.zeros_like(q), q * spread ** 2 / (2.0 + q))
    return MidpointBounds(mids, q * spread / (2.0 + q), gaps ** 2 / (2.0 + q) ** 2,
                          gaps ** 2 / 4.0 + spread_term)


def prop6_tv_upper_bound(lr, risk, data, mu, sigma, A):
    r"""Prop. 6: at a linearly stable minimum ``theta*`` of the theory model (``|a_l| <= A``),

        TV_pi(s_theta*) <= 1/(2 eta) + sqrt(R)/2
                + A / (sqrt(2 pi) sigma) * max{ sqrt(2 n R), (sqrt(2 pi e) A sigma n R)^(1/3) },

    with ``R = R_n(theta*)`` the DSM risk there. lr (``eta > 0``) and risk (``R >= 0``) may be
    numbers (returns a float) or tensors (broadcast; returns a tensor). data: (n,).
    """
    lr = _number_or_tensor(lr, "lr", strict=True)
    R = _number_or_tensor(risk, "risk", strict=False)
    _checks.same_shape(lr=lr, risk=R)
    mu, sigma = _noise(mu, sigma)
    A = _checks.positive(A, "A")
    n = _data_1d(data).numel()
    first = _sqrt(2.0 * n * R)
    second = (math.sqrt(2.0 * math.pi * math.e) * A * sigma * n * R) ** (1.0 / 3.0)
    biggest = torch.maximum(first, second) if isinstance(R, torch.Tensor) else max(first, second)
    coef = A / (math.sqrt(2.0 * math.pi) * sigma)          # inf for an enormous A: then R = 0
    if isinstance(biggest, torch.Tensor):                   # must give 0, not inf * 0
        third = torch.where(biggest == 0, torch.zeros_like(biggest), coef * biggest)
    else:
        third = 0.0 if biggest == 0 else coef * biggest
    return 1.0 / (2.0 * lr) + _sqrt(R) / 2.0 + third


def prop7_tv_lower_bound(data, mu, sigma) -> float:
    r"""Prop. 7: ``TV_pi(s_theta) >= mu n^2 Delta / (2^11 sigma^2)`` under :func:`prop7_conditions`.

    data: (n,). Returns the right-hand side as a float.
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    return mu * n ** 2 * delta / (2.0 ** 11 * sigma ** 2)


def prop7_conditions(data, mu, sigma, risk):
    r"""Conditions of Prop. 7: ``Delta >= 8 sigma / mu`` and ``R_n(theta) <= 1 / (16 n sigma^2)``.

    data: (n,); risk: the DSM risk ``R_n(theta) >= 0`` (a number). Returns ``(spacing_ok, risk_ok)``,
    two bools; the bound :func:`prop7_tv_lower_bound` applies when both hold.
    """
    mu, sigma = _noise(mu, sigma)
    R = _checks.nonnegative(risk, "risk")
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    return delta >= 8.0 * sigma / mu, R <= 1.0 / (16.0 * n * sigma ** 2)


# ----------------------------------------------------------------------------------------------
# the weight pi and the weighted total variation
# ----------------------------------------------------------------------------------------------

def _min_pieces(v):
    """``min(pi_+, pi_-)`` as linear pieces between ``2n - 1`` sorted breakpoints.

    v: sorted ``mu x`` (n,). On ``(v_k, v_{k+1})`` (k points at or left of it)
    ``pi_-(u) = (k/n^2) (k u - sum_{j<=k} v_j)`` and ``pi_+(u) = ((n-k)/n^2) (sum_{j>k} v_j - (n-k) u)``;
    their difference is increasing, so the minimum is ``pi_-`` left of their crossing ``c_k`` and
    ``pi_+`` right of it (``c_k`` clipped to the interval). Outside ``[v_1, v_n]`` both vanish.
    Returns ``breaks = (v_1, c_1, v_2, c_2, ..., c_{n-1}, v_n)`` (2n - 1,) and the coefficients
    ``c0, c1`` (2n - 2,) of ``c0 + c1 u`` on each piece ``[breaks[p], breaks[p+1]]``.
    """
    n = v.numel()
    k = torch.arange(1, n, dtype=v.dtype, device=v.device)                   # (n-1,)
    prefix = torch.cumsum(v, 0)[:-1]                                          # sum_{j<=k} v_j
    suffix = v.sum() - prefix
    a_minus, b_minus = k * k / n ** 2, -k * prefix / n ** 2                   # pi_- = a u + b
    a_plus, b_plus = -(n - k) ** 2 / n ** 2, (n - k) * suffix / n ** 2
    cross = (b_plus - b_minus) / (a_minus - a_plus)
    cross = torch.minimum(torch.maximum(cross, v[:-1]), v[1:])
    breaks = torch.cat([torch.stack([v[:-1], cross], 1).reshape(-1), v[-1:]])
    c0 = torch.stack([b_minus, b_plus], 1).reshape(-1)
    c1 = torch.stack([a_minus, a_plus], 1).reshape(-1)
    return breaks, c0, c1


def _tv_weight(y, v, sigma):
    """pi at y (any shape) for sorted ``v = mu x``: exact Gaussian expectation of the pieces.

    The (N, 2n - 1) arrays are built for a block of query points at a time, each block written
    into a preallocated output (bounded memory for many queries and many data points)."""
    c = _checks.data_center(v[:, None])
    if c is not None:                    # far from the origin: shift (pi is translation covariant)
        v, y = v - c[0], y - c[0]
    breaks, c0, c1 = _min_pieces(v)
    flat = y.reshape(-1, 1)
    rows = max(1, (_PAIR_BLOCK_ELEMENTS // 4) // breaks.numel())   # ~12 temporaries per block
    if flat.shape[0] <= rows:
        return _tv_weight_rows(flat, v, sigma, breaks, c0, c1).reshape(y.shape)
    out = torch.empty(flat.shape[0], dtype=flat.dtype, device=flat.device)
    for start in range(0, flat.shape[0], rows):
        out[start:start + rows] = _tv_weight_rows(flat[start:start + rows], v, sigma, breaks, c0, c1)
    return out.reshape(y.shape)


def _tv_weight_rows(flat, v, sigma, breaks, c0, c1):
    """pi at the points ``flat`` (N, 1): (N,)."""
    # E_xi g(y - xi) = ∫ g(u) N(u; y, sigma^2) du; on a piece, with t = (u - y) / sigma:
    # ∫ (c0 + c1 y + c1 sigma t) phi(t) dt
    #     = (c0 + c1 y) (Phi(t_hi) - Phi(t_lo)) + c1 sigma (phi(t_lo) - phi(t_hi)).
    t = (breaks[None, :] - flat) / sigma                                      # (N, 2n-1)
    lower, upper = torch.special.ndtr(t), torch.special.ndtr(-t)
    dens = torch.exp(-0.5 * t * t) * _INV_SQRT_2PI
    # Phi(hi) - Phi(lo), from the upper tails when lo > 0 (no 1 - 1 cancellation)
    mass = torch.where(t[:, :-1] > 0, upper[:, :-1] - upper[:, 1:], lower[:, 1:] - lower[:, :-1])
    val = ((c0 + c1 * flat) * mass + c1 * sigma * (dens[:, :-1] - dens[:, 1:])).sum(1)
    inside = (flat[:, 0] >= v[0]) & (flat[:, 0] <= v[-1])
    return torch.where(inside, val.clamp_min(0.0), torch.zeros_like(val))


def tv_weight(y, data, mu, sigma):
    r"""The weight ``pi(y)`` of the weighted total variation (Section 5, before Thm. 4).

        pi(y) = 1{mu x_1 <= y <= mu x_n} E_{xi ~ N(0, sigma^2)} min{pi_+, pi_-}(y - xi),
        pi_-(u) = P(mu U < u)^2 E[u - mu U | mu U < u] = P(mu U < u) E[(u - mu U)_+],
        pi_+(u) = P(mu U > u)^2 E[mu U - u | mu U > u],       U uniform on the data.

    The convolution acts on ``min{pi_+, pi_-}`` (itself zero outside ``[mu x_1, mu x_n]``) and the
    indicator is applied afterwards, as in the brief's statement. ``min{pi_+, pi_-}`` is piecewise
    linear (``pi_-`` jumps up and ``pi_+`` down at the data points; they cross once), so the
    Gaussian expectation is computed exactly, piece by piece, with ``Phi`` and ``phi`` (no
    quadrature). For ``n = 2`` it is a tent of height ``mu |x_2 - x_1| / 8`` blurred by ``sigma``.

    y: tensor of any shape (typically (N,)); data: (n,), ``n >= 2``.
    Returns a tensor shaped like ``y`` (dtype: promotion of y's and data's). Cost O(N n).
    """
    _noise(mu, sigma)
    x = _data_1d(data)
    yy = _checks.as_tensor(y, "y", allow_empty=True)
    dtype = torch.promote_types(yy.dtype, x.dtype)
    mu, sigma = _noise(mu, sigma, dtype)
    yy, x = yy.to(dtype), x.to(dtype=dtype, device=yy.device)
    if yy.numel() == 0:
        return yy.clone()
    _check_magnitude(mu * x, dtype)
    return _tv_weight(yy, mu * x, sigma)


def _third_central_moment(y, x, mu, sigma):
    """E[(W - E W)^3] of the posterior W(y) (1-D), via softmax weights. y: (N,); x: (n,).
    Rows whose logits overflow are recomputed from rescaled logits (as in dsmlib.optimal)."""
    out = _third_central_moment_fast(y, x, mu, sigma)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        from .optimal import _stable_weights
        idx = bad.nonzero()[:, 0]
        c = _checks.data_center(x[:, None])
        xs, ys = (x, y) if c is None else (x - c[0], y - mu * c[0])
        alpha, x64, cx = _stable_weights(ys[idx, None], xs[:, None], mu, sigma)
        xn = x64[:, 0] / cx
        m = alpha @ xn
        third = (alpha * (xn[None, :] - m[:, None]) ** 3).sum(1)        # in units of c_x^3
        out[idx] = torch.where(third == 0, torch.zeros_like(third), third * cx ** 3).to(out.dtype)
    return out


def _third_central_moment_fast(y, x, mu, sigma):
    c = _checks.data_center(x[:, None])
    if c is not None:                     # far from the origin: shift (the moment is invariant)
        x, y = x - c[0], y - mu * c[0]
    out = torch.empty_like(y)
    chunk = max(1, (1 << 22) // x.numel())
    mx = mu * x
    for s in range(0, y.numel(), chunk):
        yc = y[s:s + chunk]
        alpha = torch.softmax((yc[:, None] * mx[None, :] - 0.5 * mx[None, :] ** 2) / sigma ** 2, 1)
        mean = alpha @ x
        out[s:s + chunk] = (alpha * (x[None, :] - mean[:, None]) ** 3).sum(1)
    return out


def _optimal_score_second_derivative(y, x, mu, sigma):
    r"""``s*''(y) = mu^3 E[(W - E W)^3] / sigma^6`` (differentiate eq. 9 once more:
    ``d/dy E[f(W)] = (mu / sigma^2) Cov(f(W), W)``). Where ``sigma^6`` underflows or the value
    overflows, it is computed as ``E[.] (mu / sigma^2)^3`` (``+-inf`` beyond float64, never NaN)."""
    third = _third_central_moment(y, x, mu, sigma)
    if sigma ** 6 > 0:
        out = mu ** 3 * third / sigma ** 6
        if bool(torch.isfinite(out).all()):
            return out
    k = mu / (sigma * sigma)
    return torch.where(third == 0, torch.zeros_like(third), third * k * k * k)


def _check_magnitude(v, dtype, name="data"):
    """The weight pi sums ``n`` values of ``mu x``: refuse data so large that the sums overflow."""
    top = float(v.abs().max()) * v.numel()
    limit = torch.finfo(dtype).max / 16.0
    if not top <= limit:
        kind = str(dtype).replace("torch.", "")
        raise ValueError(f"{name} is too large for this computation in {kind}: n mu max(abs(x)) = "
                         f"{top:.3g} exceeds {limit:.3g} (its sums would overflow); rescale the "
                         f"data")


def _grid(v, x, mu, sigma, size):
    """Sorted nodes on ``[v_1, v_n]``: a uniform grid plus a fine grid around each midpoint.

    Between consecutive points ``x_i < x_{i+1}`` the posterior switches from one to the other over
    a width ``~ sigma^2 / (mu g_i)`` in y; ``s*''`` is negligible elsewhere (``W`` is a point mass).
    Each midpoint gets ``size`` nodes on ``+- min(mu g_i / 2, 40 sigma^2 / (mu g_i))``.
    """
    coarse = torch.linspace(float(v[0]), float(v[-1]), size, dtype=v.dtype, device=v.device)
    nodes = [coarse]
    gaps = x[1:] - x[:-1]
    keep = gaps > 0
    tol = 1e-12 * float(v[-1] - v[0])     # nodes closer than this are merged (see below)
    if bool(keep.any()):
        g = gaps[keep]
        mid = (v[1:] + v[:-1])[keep] / 2.0
        half = torch.minimum(mu * g / 2.0, 40.0 * sigma ** 2 / (mu * g))
        s = torch.linspace(-1.0, 1.0, size, dtype=v.dtype, device=v.device)
        # fine intervals lie in disjoint gaps; coarse nodes inside them would sit arbitrarily close
        # to fine ones (ruinous for divided differences), so they are dropped there
        lo, hi = mid - half, mid + half
        inside = ((coarse[:, None] > lo[None, :]) & (coarse[:, None] < hi[None, :])).any(1)
        nodes = [coarse[~inside], (mid[:, None] + half[:, None] * s[None, :]).reshape(-1)]
        # a transition narrower than 1e-12 of the span (widely spaced data, tiny sigma) keeps
        # its fine nodes: the merging tolerance stays below their spacing
        spacing = float(half.min()) * 2.0 / (size - 1)
        tol = min(tol, 0.25 * spacing)
        resolution = torch.finfo(v.dtype).eps * float(v.abs().max())
        if spacing < 0.25 * resolution:     # the nodes of a transition would collapse: no answer
            raise ValueError(f"sigma = {sigma:g} is too small for data spread over "
                             f"{float(x[-1] - x[0]):.3g}: the transitions of s* between data "
                             f"points are narrower than {str(v.dtype).replace('torch.', '')} "
                             f"can resolve there (node spacing {spacing:.3g} where the points "
                             f"reach {float(v.abs().max()):.3g}); raise sigma, lower grid or "
                             f"rescale the data")
    y = torch.sort(torch.cat(nodes).clamp(float(v[0]), float(v[-1]))).values
    # merge nodes closer than rounding (interval ends that meet at a data point)
    close = torch.diff(y) <= tol
    return y[torch.cat([torch.ones(1, dtype=torch.bool, device=y.device), ~close])]


def _is_score_net(f):
    return all(hasattr(f, k) for k in ("W1", "b", "W2")) and isinstance(getattr(f, "W1"), torch.Tensor)


def _weighted_tv_net(net, v, sigma):
    """Exact ``sum_l |a_l w_l| / m * pi(k_l)`` for a 1-D net (single or ensemble)."""
    W1, b, W2 = net.W1.detach(), net.b.detach(), net.W2.detach()
    _checks.finite_parameters("f", W1=W1, b=b, W2=W2)
    _checks.float_dtype(W2.dtype, "f.W2.dtype")
    _checks.noise_scale(sigma, "sigma", torch.promote_types(W2.dtype, v.dtype))
    if W1.shape[-1] != 1:
        raise ValueError("weighted_tv of a network needs a 1-D net (dim = 1), "
                         f"got dim = {W1.shape[-1]}")
    w, a = W1[..., 0], W2[..., 0, :]
    m = w.shape[-1]
    nonzero = w != 0
    kink = -b / torch.where(nonzero, w, torch.ones_like(w))
    outside = torch.full_like(kink, float(v[0]) - 1.0)                      # where pi = 0
    weight = _tv_weight(torch.where(nonzero, kink, outside), v.to(dtype=w.dtype, device=w.device), sigma)
    return (torch.abs(a * w) / m * weight * nonzero.to(w.dtype)).sum(-1)


def weighted_tv(f, data, mu, sigma, *, grid=2001):
    r"""Weighted total variation of the derivative, ``TV_pi(f) = ∫ |f''(y)| pi(y) dy`` (Section 5).

    ``pi`` is :func:`tv_weight`, supported on ``[mu x_1, mu x_n]``.

    * ``f`` a 1-D ``TwoLayerScoreNet``: exact. ``f'' = sum_l (a_l |w_l| / m) delta(y - k_l)`` (at
      its kink ``k_l = -b_l / w_l`` the slope of ``ReLU(w_l y + b_l)`` jumps by ``|w_l|``), so
      ``TV_pi(f) = sum_l |a_l w_l| / m * pi(k_l)`` (units with ``w_l = 0`` have no kink). Returns a
      0-d tensor, or ``(K,)`` for an ensemble.
    * ``f = "optimal"``: ``s*'' = mu^3 E[(W - E W)^3] / sigma^6`` (exact, from eq. 9), integrated by
      the trapezoid rule on the nodes described below. Returns a float.
    * ``f`` a callable ``y (N,) -> (N,)`` or ``(..., N)``: ``sum_k |f'_{k+1/2} - f'_{k-1/2}| pi(y_k)``
      with ``f'_{k+1/2}`` the slope between nodes k and k + 1 (the total variation of the derivative
      of the piecewise-linear interpolant; it converges both for smooth ``f`` and for kinks).
      Returns a float, or a tensor of shape ``(...,)``.

    Nodes: ``grid`` equally spaced points on ``[mu x_1, mu x_n]`` plus ``grid`` points around each
    midpoint ``mu (x_i + x_{i+1}) / 2`` on ``+- min(mu g_i / 2, 40 sigma^2 / (mu g_i))``, the width
    over which ``s*`` switches from one data point to the next (it can be far below ``sigma``).
    Cost O(n^2 grid). data: (n,), ``n >= 2``.
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    grid = _checks.integer(grid, "grid", minimum=3)
    _checks.noise(mu, sigma, x.dtype)
    if _is_score_net(f):
        _check_magnitude(mu * x, x.dtype)
        return _weighted_tv_net(f, mu * x, sigma)
    if isinstance(f, str):
        if f != "optimal":
            raise ValueError(f'f must be a TwoLayerScoreNet, a callable or "optimal", got {f!r}')
        x64 = x.to(torch.float64)
        v = mu * x64
        _check_magnitude(v, torch.float64)
        if float(x64.abs().max()) > _CUBE_LIMIT:
            raise ValueError(f"data is too large for weighted_tv('optimal'): the third moment of "
                             f"the posterior needs |x| <= {_CUBE_LIMIT:.3g}; rescale the data")
        y = _grid(v, x64, mu, sigma, grid)
        weight = _tv_weight(y, v, sigma)
        d2 = _optimal_score_second_derivative(y, x64, mu, sigma).abs()
        integrand = torch.where(weight == 0, torch.zeros_like(weight), d2 * weight)  # no inf * 0
        return float(torch.trapezoid(integrand, y))
    if not callable(f):
        raise TypeError(f'f must be a TwoLayerScoreNet, a callable or "optimal", got {type(f).__name__}')
    v = mu * x
    _check_magnitude(v, x.dtype)
    y = _grid(v, x, mu, sigma, grid)
    with torch.no_grad():
        values = _checks.call_user(f, "f", y)
        if not isinstance(values, torch.Tensor):           # lists and arrays are fine too
            try:
                values = torch.as_tensor(values)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"f must return a tensor (or array) of values, got "
                                f"{type(values).__name__}") from None
        _checks.function_output(values, "f")
    if values.shape[-1:] != y.shape:
        raise ValueError(f"f(y) must end with the axis of y ({y.numel()} points), got shape "
                         f"{tuple(values.shape)}")
    values = values.to(torch.promote_types(values.dtype, y.dtype))
    yv = y.to(values.dtype)
    slopes = torch.diff(values, dim=-1) / torch.diff(yv)
    jumps = torch.diff(slopes, dim=-1).abs()                                 # at interior nodes
    out = (jumps * _tv_weight(yv[1:-1], v.to(values.dtype), sigma)).sum(-1)
    if bool(torch.isnan(out).any()):
        raise FloatingPointError("the slopes of f overflow (inf - inf): f's values are too large "
                                 "for the grid's spacing in this dtype")
    return float(out) if out.dim() == 0 else out
