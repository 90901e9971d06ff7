r"""The paper's bounds and thresholds (Sections 3-6 of arXiv 2502.03435 v1), and the book's lemmas.

Notation (1-D data unless stated): ``x_1 <= ... <= x_n`` the sorted training points,
``Delta = min_{i != j} |x_i - x_j|``, ``D = x_n - x_1``, noise level ``(mu, sigma)``, and ``W(y)``
the posterior training point (``P(W = x_i | y) ∝ exp(-(y - mu x_i)^2 / (2 sigma^2))``, eq. 9).
The chain of results, each with the function that evaluates it (statements as in
``shared/PAPER.md``, transcribed from v1):

* Prop. 2 (posterior at midpoints and near data points): :func:`dsmlib.prop2_midpoint_bound`,
  :func:`dsmlib.prop2_near_data_bound`;
* Cor. 3 (``s*'`` swings between data points and midpoints; eq. 10: ``R_n(s*) -> 0``):
  :func:`dsmlib.cor3_derivative_gap`, :func:`optimal_risk_bound`;
* Thm. 4 (``s*`` is irregular): :func:`tv_lower_bound`, :func:`tv_lower_bound_condition`;
* Prop. 6 (regularity from the curvature, for every ``theta``; at a stable minimum):
  :func:`prop6_bound_terms`, :func:`prop6_tv_upper_bound`;
* Prop. 7 (small risk forces irregularity): :func:`prop7_tv_lower_bound`, :func:`prop7_conditions`;
* Thm. 8 (main result) and the conditions ``sigma_1..sigma_4`` of its proof:
  :func:`theorem_lr_threshold`, :func:`theorem_excess_bound`, :func:`sigma2_condition`,
  :func:`sigma4_condition`, :func:`theorem_checklist`.

Not the paper's: :func:`dsmlib.posterior_near_data_lemma` and
:func:`dsmlib.posterior_midpoint_lemma` are sharper versions of Prop. 2 proved in this book
(chapter 7, "a lemma of this book"). Prop. 2, Cor. 3 and these lemmas (the bounds on the posterior
``W(y)``) live in :mod:`dsmlib.posterior_bounds`; the weight ``pi`` and ``TV_pi`` in
:mod:`dsmlib.regularity` (re-exported here).

The constants are far from tight; chapters 6, 7 and 7b print each bound next to the quantity it
bounds. Scalar results are Python floats; per-gap results are tensors in the data's dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _checks
from .regularity import _data_1d, _noise, tv_weight, weighted_tv

_PAIR_BLOCK_ELEMENTS = 1 << 22   # entries of a (rows, n) block of a pairwise computation

__all__ = [
    "min_gap",
    "theorem_lr_threshold",
    "theorem_excess_bound",
    "tv_lower_bound",
    "tv_lower_bound_condition",
    "optimal_risk_bound",
    "prop6_bound_terms",
    "Prop6Terms",
    "prop6_tv_upper_bound",
    "prop7_tv_lower_bound",
    "prop7_conditions",
    "sigma2_condition",
    "sigma4_condition",
    "theorem_checklist",
    "tv_weight",
    "weighted_tv",
]


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------

# _data_1d (sorted 1-D data) and _noise (checked mu, sigma) come from dsmlib.regularity


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


def _number_or_tensor_any(x, name):
    """A float (for a scalar) or a finite tensor, of any sign."""
    if isinstance(x, torch.Tensor) and x.numel() != 1 or isinstance(x, (list, tuple)) \
            or (hasattr(x, "ndim") and getattr(x, "ndim", 0) > 0):
        return _checks.as_tensor(x, name)
    return _checks.scalar(x, name)


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
    r"""Eq. 10 (with Cor. 3): ``R_n(s*) <= 4 mu^2 D^2 / sigma^4 * exp(-mu^2 Delta^2 / (32 sigma^2))``.

    ``D = x_n - x_1``. data: (n,). Returns a float; it tends to 0 as ``sigma -> 0`` (``s*``
    denoises perfectly). Compare with ``dsm.dsm_risk("optimal", data, mu, sigma)``.
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


class Prop6Terms(NamedTuple):
    """Result of :func:`prop6_bound_terms`: the three terms of Prop. 6 and their sum."""

    curvature: object   #: lambda_max(hess R_n(theta)) m / 4  (1 / (2 eta) at a stable minimum)
    risk_root: object   #: sqrt(R) / 2
    risk_A: object      #: A / (sqrt(2 pi) sigma) max{sqrt(2 n R), (sqrt(2 pi e) A sigma n R)^(1/3)}
    total: object       #: the upper bound on TV_pi(s_theta)


def _prop6_risk_terms(R, n, sigma, A):
    first = _sqrt(2.0 * n * R)
    second = (math.sqrt(2.0 * math.pi * math.e) * A * sigma * n * R) ** (1.0 / 3.0)
    biggest = torch.maximum(first, second) if isinstance(R, torch.Tensor) else max(first, second)
    coef = A / (math.sqrt(2.0 * math.pi) * sigma)          # inf for an enormous A: then R = 0
    if isinstance(biggest, torch.Tensor):                   # must give 0, not inf * 0
        third = torch.where(biggest == 0, torch.zeros_like(biggest), coef * biggest)
    else:
        third = 0.0 if biggest == 0 else coef * biggest
    return _sqrt(R) / 2.0, third


def prop6_bound_terms(sharpness, width, risk, data, mu, sigma, A) -> Prop6Terms:
    r"""Prop. 6 (paper), first statement, term by term: for **every** ``theta`` of the theory model,

        TV_pi(s_theta) <= lambda_max(hess R_n(theta)) m / 4 + sqrt(R) / 2
                + A / (sqrt(2 pi) sigma) * max{ sqrt(2 n R), (sqrt(2 pi e) A sigma n R)^(1/3) },

    ``R = R_n(theta)``, the Hessian in ``theta = (a, b)`` (``dsm.sharpness``), ``|a_l| <= A``.
    The proof bounds the top eigenvalue of the Gauss-Newton part of the Hessian
    (``dsm.gauss_newton_sharpness``) from below by ``4 TV_pi / m``; the risk terms bound what the
    residual part of the Hessian can take away. sharpness (``lambda_max``, any real) and risk
    (``R >= 0``): numbers (floats returned) or tensors (broadcast). width: ``m``. data: (n,).
    Returns ``Prop6Terms(curvature, risk_root, risk_A, total)``.
    """
    lam = _number_or_tensor_any(sharpness, "sharpness")
    m = _checks.integer(width, "width", minimum=1)
    R = _number_or_tensor(risk, "risk", strict=False)
    _checks.same_shape(sharpness=lam, risk=R)
    mu, sigma = _noise(mu, sigma)
    A = _checks.positive(A, "A")
    n = _data_1d(data).numel()
    root, with_A = _prop6_risk_terms(R, n, sigma, A)
    curvature = lam * m / 4.0
    return Prop6Terms(curvature, root, with_A, curvature + root + with_A)


def prop6_tv_upper_bound(lr, risk, data, mu, sigma, A):
    r"""Prop. 6 (paper) at a linearly stable minimum ``theta*`` of the theory model (``|a_l| <= A``):

        TV_pi(s_theta*) <= 1/(2 eta) + sqrt(R)/2
                + A / (sqrt(2 pi) sigma) * max{ sqrt(2 n R), (sqrt(2 pi e) A sigma n R)^(1/3) },

    :func:`prop6_bound_terms` with ``lambda_max m / 4 <= 1 / (2 eta)`` (eq. 8). ``R = R_n(theta*)``.
    lr (``eta > 0``) and risk (``R >= 0``) may be numbers (returns a float) or tensors (broadcast;
    returns a tensor). data: (n,).
    """
    lr = _number_or_tensor(lr, "lr", strict=True)
    R = _number_or_tensor(risk, "risk", strict=False)
    _checks.same_shape(lr=lr, risk=R)
    mu, sigma = _noise(mu, sigma)
    A = _checks.positive(A, "A")
    n = _data_1d(data).numel()
    root, with_A = _prop6_risk_terms(R, n, sigma, A)
    return 1.0 / (2.0 * lr) + root + with_A


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
# the conditions of Thm. 8's proof (App. B.6): sigma_0 = min(sigma_1, ..., sigma_4)
# ----------------------------------------------------------------------------------------------

def sigma2_condition(data, mu, sigma, A):
    r"""The inequality that defines ``sigma_2`` in the proof of Thm. 8 (paper, App. B.6):

        exp(-mu^2 Delta^2 / (32 sigma^2)) <= pi n^5 mu / (2^38 e^{1/2} (x_n - x_1)^2 A^4).

    Its role: with eq. 10 it makes ``R_n(s*)`` negligible against Thm. 8's bound, so that a lower
    bound on the risk is one on the excess risk. data: (n,). Returns ``(lhs, rhs, holds)``.
    """
    mu, sigma = _noise(mu, sigma)
    A = _checks.positive(A, "A")
    x = _data_1d(data)
    n, delta, spread = x.numel(), min_gap(x), float(x[-1] - x[0])
    try:
        lhs = math.exp(-mu ** 2 * delta ** 2 / (32.0 * sigma ** 2))
    except OverflowError:                       # Delta^2 beyond float64: the decay is 0
        lhs = 0.0
    rhs = _guarded(lambda: math.pi * n ** 5 * mu / (2.0 ** 38 * math.sqrt(math.e) * spread ** 2
                                                    * A ** 4),
                   lambda: math.log(math.pi) + 5 * _log(n) + _log(mu) - 38 * math.log(2) - 0.5
                   - 2 * _log(spread) - 4 * _log(A))
    return lhs, rhs, lhs <= rhs


def sigma4_condition(data, mu, sigma, risk):
    r"""The inequality that defines ``sigma_4`` in the proof of Thm. 8 (paper, App. B.6):

        sqrt(R_n(theta*)) / 2 <= mu n^2 Delta / (2^13 sigma^2)     (a quarter of Prop. 7's bound).

    risk: ``R_n(theta*) >= 0`` (a number). data: (n,). Returns ``(lhs, rhs, holds)``.
    """
    mu, sigma = _noise(mu, sigma)
    R = _checks.nonnegative(risk, "risk")
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    lhs, rhs = math.sqrt(R) / 2.0, mu * n ** 2 * delta / (2.0 ** 13 * sigma ** 2)
    return lhs, rhs, lhs <= rhs


def theorem_checklist(data, mu, sigma, A, *, lr=None, risk=None) -> list:
    r"""Every explicit hypothesis of Thm. 8 and of the results its proof uses, evaluated.

    One row (a dict with keys ``condition``, ``lhs``, ``rhs``, ``holds``, ``used by``) per check
    ``lhs <= rhs`` (or ``>=``, as the name says): ``n >= 10`` (Thm. 4's proof),
    ``sigma <= sigma_1 = mu Delta / 8`` (Cor. 3, Prop. 7), Thm. 4's condition, Prop. 2's
    ``Delta >= 2 sigma / mu``, the ``sigma_2`` inequality (:func:`sigma2_condition`),
    ``sigma <= sigma_3 = 1/n``; with ``lr``: ``eta > 2^12 sigma^2 / (mu n^2 Delta)``; with
    ``risk`` (``R_n(theta*)``): Prop. 7's ``R <= 1 / (16 n sigma^2)`` and the ``sigma_4``
    inequality (:func:`sigma4_condition`). Linear stability of ``theta*`` is not a closed-form
    check and is not in the list. data: (n,). Returns a list of dicts (``dsm.plotting.table``
    shows it).
    """
    mu, sigma = _noise(mu, sigma)
    A = _checks.positive(A, "A")
    x = _data_1d(data)
    n, delta = x.numel(), min_gap(x)
    rows = []

    def add(condition, lhs, rhs, holds, used_by):
        rows.append({"condition": condition, "lhs": float(lhs), "rhs": float(rhs),
                     "holds": bool(holds), "used by": used_by})

    add("n >= 10", n, 10, n >= 10, "Thm. 4 (proof)")
    add("sigma <= sigma_1 = mu Delta/8", sigma, mu * delta / 8.0, sigma <= mu * delta / 8.0,
        "Cor. 3, Prop. 7")
    value, holds = tv_lower_bound_condition(x, mu, sigma)
    add("16 n^3 exp(-mu^2 Delta^2/(4 sigma^2)) <= 1", value, 1.0, holds, "Thm. 4")
    add("Delta >= 2 sigma/mu", delta, 2.0 * sigma / mu, delta >= 2.0 * sigma / mu,
        "Prop. 2, Cor. 3")
    lhs, rhs, holds = sigma2_condition(x, mu, sigma, A)
    add(f"sigma_2: exp(-mu^2 Delta^2/(32 sigma^2)) <= rhs (A = {A:.3g})", lhs, rhs, holds,
        "Thm. 8 (R_n(s*))")
    add("sigma <= sigma_3 = 1/n", sigma, 1.0 / n, sigma <= 1.0 / n, "Thm. 8")
    if lr is not None:
        eta = _checks.positive(lr, "lr")
        thr = theorem_lr_threshold(x, mu, sigma)
        add("eta > 2^12 sigma^2/(mu n^2 Delta)", eta, thr, eta > thr, "Thm. 8")
    if risk is not None:
        R = _checks.nonnegative(risk, "risk")
        add("R_n(theta) <= 1/(16 n sigma^2)", R, 1.0 / (16.0 * n * sigma ** 2),
            R <= 1.0 / (16.0 * n * sigma ** 2), "Prop. 7")
        lhs, rhs, holds = sigma4_condition(x, mu, sigma, R)
        add("sigma_4: sqrt(R_n)/2 <= mu n^2 Delta/(2^13 sigma^2)", lhs, rhs, holds, "Thm. 8")
    return rows
