r"""The weight ``pi`` and the weighted total variation ``TV_pi(f) = ∫ |f''| pi`` (paper Section 5).

``TV_pi`` is how the paper measures the irregularity of a score: Thm. 4 bounds ``TV_pi(s*)`` from
below, Props. 6 and 7 bound ``TV_pi(s_theta)`` of a network from above (stability) and from below
(small risk); see :mod:`dsmlib.theory` for those bounds and chapter 7 for the argument.

* :func:`tv_weight_pieces`: ``pi_-`` and ``pi_+`` (before the Gaussian smoothing);
* :func:`tv_weight`: the weight ``pi`` itself (exact, piece by piece);
* :func:`weighted_tv`: ``TV_pi`` of a 1-D network (exact kink sum), of ``s*`` or of a callable.

1-D data ``x_1 <= ... <= x_n`` (n >= 2), noise level ``(mu, sigma)``; ``U`` is uniform on the data.
"""

from __future__ import annotations

import math

import torch

from . import _checks

__all__ = ["tv_weight_pieces", "tv_weight", "weighted_tv"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _data_1d(data, min_points=2):
    """Sorted 1-D training points as an (n,) tensor; (n,) and (n, 1) are accepted."""
    return torch.sort(_checks.data_1d(data, min_points=min_points)).values


def _noise(mu, sigma):
    return _checks.positive(mu, "mu"), _checks.positive(sigma, "sigma")



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


def tv_weight_pieces(u, data, mu):
    r"""The two halves of the weight before smoothing: ``(pi_-(u), pi_+(u))`` (Section 5).

        pi_-(u) = P(mu U < u)^2 E[u - mu U | mu U < u] = P(mu U < u) E[(u - mu U)_+],
        pi_+(u) = P(mu U > u)^2 E[mu U - u | mu U > u] = P(mu U > u) E[(mu U - u)_+],

    ``U`` uniform on the data. ``pi_-(u)`` is the share of the (scaled) data left of ``u`` times
    their mean distance to ``u`` (0 left of the data); ``pi_+`` mirrors it. Both are linear between
    consecutive points ``mu x_i``; at a point ``pi_-`` jumps up and ``pi_+`` down (the share
    ``P(mu U < u)`` jumps while ``E[(u - mu U)_+]`` is continuous). :func:`tv_weight` smooths their minimum
    with ``N(0, sigma^2)``. u: tensor of any shape; data: (n,). Returns two tensors shaped like u.
    Cost O(N n).
    """
    mu = _checks.positive(mu, "mu")
    x = _data_1d(data)
    uu = _checks.as_tensor(u, "u", allow_empty=True)
    dtype = torch.promote_types(uu.dtype, x.dtype)
    uu, v = uu.to(dtype), (mu * x).to(dtype=dtype, device=uu.device)
    n = v.numel()
    diff = uu.reshape(-1, 1) - v[None, :]                                    # (N, n)
    left, right = (diff > 0).to(dtype), (diff < 0).to(dtype)
    pi_minus = left.sum(1) / n * (diff * left).sum(1) / n
    pi_plus = right.sum(1) / n * (-diff * right).sum(1) / n
    return pi_minus.reshape(uu.shape), pi_plus.reshape(uu.shape)


def _tv_weight(y, v, sigma):
    """pi at y (any shape) for sorted ``v = mu x``: exact Gaussian expectation of the pieces."""
    breaks, c0, c1 = _min_pieces(v)
    flat = y.reshape(-1, 1)
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
    return torch.where(inside, val.clamp_min(0.0), torch.zeros_like(val)).reshape(y.shape)


def tv_weight(y, data, mu, sigma):
    r"""The weight ``pi(y)`` of the weighted total variation (Section 5, before Thm. 4).

        pi(y) = 1{mu x_1 <= y <= mu x_n} E_{xi ~ N(0, sigma^2)} min{pi_+, pi_-}(y - xi),
        pi_-(u) = P(mu U < u)^2 E[u - mu U | mu U < u] = P(mu U < u) E[(u - mu U)_+],
        pi_+(u) = P(mu U > u)^2 E[mu U - u | mu U > u],       U uniform on the data.

    The convolution acts on ``min{pi_+, pi_-}`` (itself zero outside ``[mu x_1, mu x_n]``) and the
    indicator is applied afterwards, as in the paper's statement. ``pi_-`` and ``pi_+``
    (:func:`tv_weight_pieces`) are linear between data points (``pi_-`` jumps up and ``pi_+`` down
    at each point) and cross once,
    so the Gaussian expectation of their minimum is computed exactly, piece by piece, with
    ``Phi`` and ``phi`` (no quadrature). For ``n = 2`` it is a tent of height ``mu |x_2 - x_1| / 8``
    blurred by ``sigma``.

    y: tensor of any shape (typically (N,)); data: (n,), ``n >= 2``.
    Returns a tensor shaped like ``y`` (dtype: promotion of y's and data's). Cost O(N n).
    """
    mu, sigma = _noise(mu, sigma)
    x = _data_1d(data)
    yy = _checks.as_tensor(y, "y", allow_empty=True)
    dtype = torch.promote_types(yy.dtype, x.dtype)
    yy, x = yy.to(dtype), x.to(dtype=dtype, device=yy.device)
    if yy.numel() == 0:
        return yy.clone()
    return _tv_weight(yy, mu * x, sigma)


def _third_central_moment(y, x, mu, sigma):
    """E[(W - E W)^3] of the posterior W(y) (1-D), via softmax weights. y: (N,); x: (n,)."""
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
    ``d/dy E[f(W)] = (mu / sigma^2) Cov(f(W), W)``)."""
    return mu ** 3 * _third_central_moment(y, x, mu, sigma) / sigma ** 6


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
    y = torch.sort(torch.cat(nodes).clamp(float(v[0]), float(v[-1]))).values
    # merge nodes closer than rounding (interval ends that meet at a data point)
    close = torch.diff(y) <= 1e-12 * float(v[-1] - v[0])
    return y[torch.cat([torch.ones(1, dtype=torch.bool, device=y.device), ~close])]


def _is_score_net(f):
    return all(hasattr(f, k) for k in ("W1", "b", "W2")) and isinstance(getattr(f, "W1"), torch.Tensor)


def _weighted_tv_net(net, v, sigma):
    """Exact ``sum_l |a_l w_l| / m * pi(k_l)`` for a 1-D net (single or ensemble)."""
    W1, b, W2 = net.W1.detach(), net.b.detach(), net.W2.detach()
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
    if _is_score_net(f):
        return _weighted_tv_net(f, mu * x, sigma)
    if isinstance(f, str):
        if f != "optimal":
            raise ValueError(f'f must be a TwoLayerScoreNet, a callable or "optimal", got {f!r}')
        x64 = x.to(torch.float64)
        v = mu * x64
        y = _grid(v, x64, mu, sigma, grid)
        integrand = _optimal_score_second_derivative(y, x64, mu, sigma).abs() * _tv_weight(y, v, sigma)
        return float(torch.trapezoid(integrand, y))
    if not callable(f):
        raise TypeError(f'f must be a TwoLayerScoreNet, a callable or "optimal", got {type(f).__name__}')
    v = mu * x
    y = _grid(v, x, mu, sigma, grid)
    with torch.no_grad():
        values = torch.as_tensor(f(y))
    if values.shape[-1:] != y.shape:
        raise ValueError(f"f(y) must end with the axis of y ({y.numel()} points), got shape "
                         f"{tuple(values.shape)}")
    values = values.to(torch.promote_types(values.dtype, y.dtype))
    yv = y.to(values.dtype)
    slopes = torch.diff(values, dim=-1) / torch.diff(yv)
    jumps = torch.diff(slopes, dim=-1).abs()                                 # at interior nodes
    out = (jumps * _tv_weight(yv[1:-1], v.to(values.dtype), sigma)).sum(-1)
    return float(out) if out.dim() == 0 else out
