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
Query points are processed in chunks so memory stays bounded (about ``chunk_elements`` entries
of the ``(chunk, n)`` weight matrix at a time). See chapter 2.
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
    mu = _checks.positive(mu, "mu")
    sigma = _checks.positive(sigma, "sigma")
    x, was_1d = _checks.data_2d(data, "data")
    yy, out_shape = _checks.points_like(y, x.shape[1], "y")
    dtype = torch.promote_types(x.dtype, yy.dtype)
    return yy.to(dtype), x.to(dtype=dtype, device=yy.device), mu, sigma, out_shape


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
    mean = torch.empty(yy.shape[0], dtype=yy.dtype, device=yy.device)
    var = torch.empty_like(mean)
    xs = x[:, 0]
    for sl in _chunks(yy.shape[0], x.shape[0], chunk_size):
        alpha = torch.softmax(_logits(yy[sl], x, mu, sigma), dim=1)
        m = alpha @ xs
        mean[sl] = m
        var[sl] = (alpha * (xs[None, :] - m[:, None]) ** 2).sum(1)
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
    mean = _posterior_mean(yy, x, mu, sigma, chunk_size)
    return ((mu * mean - yy) / sigma ** 2).reshape(out_shape)


def optimal_score_derivative(y, data, mu, sigma, *, chunk_size=None):
    r"""Derivative ``s*'(y)`` of the empirical optimal score in 1-D (paper eq. 9).

    ``s*'(y) = (-1 + mu^2 Var[W | y] / sigma^2) / sigma^2``.

    y: (N,); data: (n,). Returns (N,). It equals ``-1/sigma^2`` near a data point and peaks at
    ``(-1 + mu^2 Delta^2 / (4 sigma^2)) / sigma^2`` midway between two isolated points.
    """
    _, var = posterior_moments(y, data, mu, sigma, chunk_size=chunk_size)
    mu_, sigma_ = float(mu), float(sigma)
    return (-1.0 + mu_ ** 2 * var / sigma_ ** 2) / sigma_ ** 2


def log_mixture_density(y, data, mu, sigma):
    r"""Log density of ``p(y) = (1/n) sum_i N(y; mu x_i, sigma^2 I)`` (the ``p_t`` of empirical data).

    y: (N,) or (N, d); data: (n,) or (n, d). Returns (N,). Its gradient in ``y`` is ``s*(y)``;
    the tests use autograd of this function as the oracle for :func:`optimal_score`.
    """
    yy, x, mu, sigma, out_shape = _prepare(y, data, mu, sigma)
    n, d = x.shape
    sq = ((yy[:, None, :] - mu * x[None, :, :]) ** 2).sum(-1)          # (N, n)
    log_norm = math.log(n) + 0.5 * d * math.log(2 * math.pi * sigma ** 2)
    return torch.logsumexp(-sq / (2 * sigma ** 2), dim=1) - log_norm


def naive_optimal_score(y, data, mu, sigma):
    r"""Eq. 6 evaluated literally, ``sum_i (mu x_i - y) phi_i / (sigma^2 sum_i phi_i)``, in 1-D.

    For teaching only: when every ``phi_i(y)`` underflows to 0 (small ``sigma`` or ``y`` far from
    the data) it returns ``0/0 = NaN``. Use :func:`optimal_score` instead.
    y: (N,); data: (n,). Returns (N,).
    """
    yy, x, mu, sigma, out_shape = _prepare(y, data, mu, sigma)
    if x.shape[1] != 1:
        raise ValueError("naive_optimal_score is the 1-D formula; data must have shape (n,)")
    diff = mu * x[:, 0][None, :] - yy                                    # (N, n)
    phi = torch.exp(-diff ** 2 / (2 * sigma ** 2))
    return ((diff * phi).sum(1) / (sigma ** 2 * phi.sum(1))).reshape(out_shape)
