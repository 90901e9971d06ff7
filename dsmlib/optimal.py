r"""The empirical optimal score ``s*`` (paper eq. 6) and its posterior form (eq. 9).

With training points ``x_1..x_n`` and noise level ``(mu, sigma)``, the DSM risk is minimised by the
score of the Gaussian mixture ``p(y) = (1/n) sum_i N(y; mu x_i, sigma^2 I)``:

    s*(y) = sum_i alpha_i(y) (mu x_i - y) / sigma^2,
    alpha_i(y) = phi_i(y) / sum_j phi_j(y),  phi_i(y) = exp(-|y - mu x_i|^2 / (2 sigma^2)).

Writing ``W`` for the random training point drawn with probabilities ``alpha_i(y)`` (the posterior
of the index given ``y``), ``s*(y) = (mu E[W] - y) / sigma^2`` and, in 1-D,
``s*'(y) = (-1 + mu^2 Var[W] / sigma^2) / sigma^2``.

The weights are computed as a softmax of logits ``(mu y.x_i - mu^2 |x_i|^2 / 2) / sigma^2`` (the
common term ``|y|^2`` dropped), so no ``0/0`` occurs for small ``sigma`` or far-away ``y``.
Where those logits overflow (float32 queries at ``|y| ~ 1e27`` with ``sigma = 1e-6``, data at
``+-1e20``), the rows concerned are recomputed in float64 from rescaled logits that cannot
overflow (:func:`_stable_moments`); the result is then finite, or ``+-inf`` where the true value
exceeds the dtype's range, never NaN. Data far from the origin compared with their spread
(``1e4 +- 1``) are shifted by their midrange first (``_checks.data_center``): the logits are
translation covariant, and unshifted their two large terms cancel. ``sigma`` must have a normal square in the computation's
dtype (``_checks.noise``). Query points are processed in chunks so memory stays bounded (about
``chunk_elements`` entries of the ``(chunk, n)`` weight matrix at a time), each chunk written
into a preallocated output. See chapter 2.
"""

from __future__ import annotations

import math

import torch

from . import _checks

__all__ = [
    "optimal_score",
    "optimal_score_derivative",
    "posterior_moments",
    "log_mixture_density",
    "naive_optimal_score",
]

_CHUNK_ELEMENTS = 2 ** 22  # entries of the (chunk, n) logit matrix held at once (32 MiB in float64)


def _prepare(y, data, mu, sigma):
    _checks.positive(mu, "mu")
    _checks.positive(sigma, "sigma")
    x, was_1d = _checks.data_2d(data, "data")
    yy, out_shape = _checks.points_like(y, x.shape[1], "y")
    dtype = torch.promote_types(x.dtype, yy.dtype)
    mu, sigma = _checks.noise(mu, sigma, dtype)
    return yy.to(dtype), x.to(dtype=dtype, device=yy.device), mu, sigma, out_shape


def _stable_weights(y, x, mu, sigma):
    """Posterior weights (float64, (N, n)) from logits that cannot overflow.

    The logits ``(mu y.x_j - mu^2 |x_j|^2 / 2) / sigma^2`` are written as ``S (a y'.x'_j - b |x'_j|^2)``
    with ``y' = y / c_y``, ``x' = x / c_x`` (entries in [-1, 1]), ``a, b <= 1`` and the scale ``S``
    (possibly ``inf``) factored out in logarithms; after subtracting the row maximum, the largest
    entry is exactly 0 and the others are ``<= 0`` (``-inf`` allowed), so the softmax has no
    ``inf - inf``. Used only for the rows where the fast formula overflows. y: (N, d); x: (n, d),
    not all zero. Returns ``(alpha, x64, c_x)``.
    """
    y64, x64 = y.detach().to(torch.float64), x.detach().to(torch.float64)
    cy, cx = float(y64.abs().max()), float(x64.abs().max())
    yn, xn = (y64 / cy if cy > 0 else y64), x64 / cx
    la = math.log(mu) + (math.log(cy) if cy > 0 else -math.inf) + math.log(cx) - 2 * math.log(sigma)
    lb = 2 * math.log(mu) + 2 * math.log(cx) - math.log(2.0) - 2 * math.log(sigma)
    top = max(la, lb)
    a, b = math.exp(la - top), math.exp(lb - top)
    scale = math.exp(top) if top < 709.0 else math.inf
    t = a * (yn @ xn.T) - b * (xn * xn).sum(1)
    t = t - t.amax(1, keepdim=True)
    logits = torch.where(t == 0, torch.zeros_like(t), t * scale)
    return torch.softmax(logits, dim=1), x64, cx


def _stable_moments(y, x, mu, sigma, *, variance=False):
    """Posterior mean (and variance, 1-D) in float64 via :func:`_stable_weights`.
    y: (N, d); x: (n, d). Returns float64 tensors (N, d) [and (N,)]."""
    if float(x.detach().abs().max()) == 0.0:                 # every training point is 0
        mean = torch.zeros(y.shape, dtype=torch.float64, device=y.device)
        return (mean, torch.zeros_like(mean[:, 0])) if variance else mean
    alpha, x64, cx = _stable_weights(y, x, mu, sigma)
    mean = alpha @ x64
    if not variance:
        return mean
    # Var = c_x^2 sum_j alpha_j (x'_j - mean')^2: no inf * 0 when (x_j - mean)^2 overflows
    var = (alpha * (x64[None, :, 0] / cx - mean[:, :1] / cx) ** 2).sum(1)
    return mean, torch.where(var == 0, torch.zeros_like(var), var * (cx * cx))


def _repair_rows(out, bad, recompute):
    """Rows of ``out`` (first axis) flagged in ``bad`` (bool) replaced by ``recompute(index)``."""
    if bool(bad.any()):
        idx = bad.nonzero()[:, 0]
        out[idx] = recompute(idx).to(out.dtype)
    return out


def _logits(y, x, mu, sigma):
    """(N, n) logits of the posterior weights alpha_i(y), up to a per-row constant."""
    mx = mu * x
    return (y @ mx.T - 0.5 * (mx * mx).sum(1)) / sigma ** 2


def _chunks(num_rows: int, n: int, chunk_size):
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(n, 1))
    else:
        chunk_size = _checks.integer(chunk_size, "chunk_size", minimum=1)
    for start in range(0, num_rows, chunk_size):
        yield slice(start, min(start + chunk_size, num_rows))


def _posterior_mean(y, x, mu, sigma, chunk_size):
    """E[W | y] for each row of y: (N, d)."""
    out = torch.empty_like(y)
    for sl in _chunks(y.shape[0], x.shape[0], chunk_size):
        alpha = torch.softmax(_logits(y[sl], x, mu, sigma), dim=1)
        out[sl] = alpha @ x
    return out


def posterior_moments(y, data, mu, sigma, *, chunk_size=None):
    r"""Mean and variance of the posterior training point ``W`` given ``y`` (eq. 9), 1-D data.

    ``P(W = x_i | y) = alpha_i(y)``. y: (N,); data: (n,). Returns ``(E[W], Var[W])``, each (N,).
    The variance is computed in two passes (``sum alpha_i (x_i - E W)^2``), so it is never
    negative.
    """
    yy, x, mu, sigma, out_shape = _prepare(y, data, mu, sigma)
    if x.shape[1] != 1:
        raise ValueError(f"posterior_moments needs one-dimensional data, got data of dimension {x.shape[1]}")
    c = _checks.data_center(x)
    if c is not None:                    # data far from the origin: shift it (module docstring)
        x, yy = x - c, yy - mu * c
    mean = torch.empty(yy.shape[0], dtype=yy.dtype, device=yy.device)
    var = torch.empty_like(mean)
    xs = x[:, 0]
    for sl in _chunks(yy.shape[0], x.shape[0], chunk_size):
        alpha = torch.softmax(_logits(yy[sl], x, mu, sigma), dim=1)
        m = alpha @ xs
        mean[sl] = m
        var[sl] = (alpha * (xs[None, :] - m[:, None]) ** 2).sum(1)
    bad = ~(torch.isfinite(mean) & torch.isfinite(var))
    if bool(bad.any()):                                      # overflowing logits: see module doc
        idx = bad.nonzero()[:, 0]
        m64, v64 = _stable_moments(yy[idx], x, mu, sigma, variance=True)
        mean[idx], var[idx] = m64[:, 0].to(mean.dtype), v64.to(var.dtype)
    if c is not None:
        mean = mean + c[0]
    return mean.reshape(out_shape), var.reshape(out_shape)


def optimal_score(y, data, mu, sigma, *, chunk_size=None):
    r"""Empirical optimal score ``s*(y)`` of the DSM risk (paper eq. 6).

    ``s*(y) = sum_i alpha_i(y) (mu x_i - y) / sigma^2 = (mu E[W | y] - y) / sigma^2``,
    ``alpha = softmax_i(-|y - mu x_i|^2 / (2 sigma^2))``.

    y: (N,) (1-D data) or (N, d); data: (n,) or (n, d); mu, sigma > 0.
    Returns a tensor shaped like ``y`` (dtype: the promotion of y's and data's).
    Stable for any ``sigma > 0`` and any finite ``y`` (log-sum-exp weights); memory is bounded by
    processing ``chunk_size`` query points at a time (default: about 4M weights per chunk).
    """
    yy, x, mu, sigma, out_shape = _prepare(y, data, mu, sigma)
    if yy.shape[0] == 0:
        return yy.reshape(out_shape)
    c = _checks.data_center(x)
    if c is not None:        # data far from the origin: s* = (mu E[W - c] - (y - mu c)) / sigma^2
        x, yy = x - c, yy - mu * c
    mean = _posterior_mean(yy, x, mu, sigma, chunk_size)
    score = (mu * mean - yy) / sigma ** 2
    bad = ~torch.isfinite(score).all(1)                      # overflowing logits: see module doc

    def recompute(idx):
        y64 = yy[idx].detach().to(torch.float64)
        return (mu * _stable_moments(yy[idx], x, mu, sigma) - y64) / sigma ** 2

    return _repair_rows(score, bad, recompute).reshape(out_shape)


def optimal_score_derivative(y, data, mu, sigma, *, chunk_size=None):
    r"""Derivative ``s*'(y)`` of the empirical optimal score in 1-D (paper eq. 9).

    ``s*'(y) = (-1 + mu^2 Var[W | y] / sigma^2) / sigma^2``.

    y: (N,); data: (n,). Returns (N,). It equals ``-1/sigma^2`` near a data point and peaks at
    ``(-1 + mu^2 Delta^2 / (4 sigma^2)) / sigma^2`` midway between two isolated points.
    """
    _, var = posterior_moments(y, data, mu, sigma, chunk_size=chunk_size)
    mu_, sigma_ = float(mu), float(sigma)
    return (-1.0 + mu_ ** 2 * var / sigma_ ** 2) / sigma_ ** 2


def log_mixture_density(y, data, mu, sigma, *, chunk_size=None):
    r"""Log density of ``p(y) = (1/n) sum_i N(y; mu x_i, sigma^2 I)`` (the ``p_t`` of empirical data).

    y: (N,) or (N, d); data: (n,) or (n, d). Returns (N,). Its gradient in ``y`` is ``s*(y)``;
    the tests use autograd of this function as the oracle for :func:`optimal_score`.
    Far from the data the density underflows: the log density is then ``-inf`` only where it is
    below the dtype's range. Queries are processed in chunks of about ``chunk_elements`` entries
    of the ``(chunk, n, d)`` difference array, written into a preallocated output.
    """
    yy, x, mu, sigma, out_shape = _prepare(y, data, mu, sigma)
    n, d = x.shape
    log_norm = math.log(n) + 0.5 * d * math.log(2 * math.pi * sigma ** 2)
    out = torch.empty(yy.shape[0], dtype=yy.dtype, device=yy.device)
    mx = mu * x
    for sl in _chunks(yy.shape[0], n * d, chunk_size):
        if d == 1:      # the same numbers without the (chunk, n, 1) array and its 1-term sum
            sq = (yy[sl] - mx[:, 0][None, :]) ** 2                       # (chunk, n)
        else:
            sq = ((yy[sl, None, :] - mx[None, :, :]) ** 2).sum(-1)      # (chunk, n)
        out[sl] = torch.logsumexp(-sq / (2 * sigma ** 2), dim=1) - log_norm
    return out


def naive_optimal_score(y, data, mu, sigma, *, chunk_size=None):
    r"""Eq. 6 evaluated literally, ``sum_i (mu x_i - y) phi_i / (sigma^2 sum_i phi_i)``, in 1-D.

    For teaching only: when every ``phi_i(y)`` underflows to 0 (small ``sigma`` or ``y`` far from
    the data) it returns ``0/0 = NaN``: the one function of dsmlib that returns NaN on purpose.
    Use :func:`optimal_score` instead. y: (N,); data: (n,). Returns (N,).
    """
    yy, x, mu, sigma, out_shape = _prepare(y, data, mu, sigma)
    if x.shape[1] != 1:
        raise ValueError("naive_optimal_score is the 1-D formula; data must have shape (n,)")
    out = torch.empty(yy.shape[0], dtype=yy.dtype, device=yy.device)
    mx = mu * x[:, 0][None, :]
    for sl in _chunks(yy.shape[0], 4 * x.shape[0], chunk_size):      # ~8 temporaries a chunk
        diff = mx - yy[sl]                                               # (chunk, n)
        phi = torch.exp(-diff ** 2 / (2 * sigma ** 2))
        out[sl] = (diff * phi).sum(1) / (sigma ** 2 * phi.sum(1))
    return out.reshape(out_shape)
