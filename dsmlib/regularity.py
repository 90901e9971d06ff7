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
_PAIR_BLOCK_ELEMENTS = 1 << 22   # entries of a (rows, n) block of a pairwise computation
_CUBE_LIMIT = 1e100              # |x| whose cubed posterior deviations stay finite in float64


def _data_1d(data, min_points=2):
    """Sorted 1-D training points as an (n,) tensor; (n,) and (n, 1) are accepted."""
    return torch.sort(_checks.data_1d(data, min_points=min_points)).values


def _noise(mu, sigma, dtype=torch.float64):
    """``(mu, sigma)`` as floats, checked by :func:`dsmlib._checks.noise` for ``dtype``."""
    _checks.positive(mu, "mu")
    _checks.positive(sigma, "sigma")
    return _checks.noise(mu, sigma, dtype)


def _check_magnitude(v, dtype, name="data"):
    """The weight pi sums ``n`` values of ``mu x``: refuse data so large that the sums overflow."""
    top = float(v.abs().max()) * v.numel()
    limit = torch.finfo(dtype).max / 16.0
    if not top <= limit:
        kind = str(dtype).replace("torch.", "")
        raise ValueError(f"{name} is too large for this computation in {kind}: n mu max(abs(x)) = "
                         f"{top:.3g} exceeds {limit:.3g} (its sums would overflow); rescale the "
                         f"data")



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
    _checks.positive(mu, "mu")
    x = _data_1d(data)
    uu = _checks.as_tensor(u, "u", allow_empty=True)
    dtype = torch.promote_types(uu.dtype, x.dtype)
    mu = _checks.noise_scale(mu, "mu", dtype)
    uu, v = uu.to(dtype), (mu * x).to(dtype=dtype, device=uu.device)
    _check_magnitude(v, dtype)
    n = v.numel()
    flat = uu.reshape(-1, 1)
    pi_minus = torch.empty(flat.shape[0], dtype=dtype, device=flat.device)
    pi_plus = torch.empty_like(pi_minus)
    rows = max(1, (_PAIR_BLOCK_ELEMENTS // 4) // n)         # (rows, n) blocks, preallocated outputs
    for start in range(0, flat.shape[0], rows):
        diff = flat[start:start + rows] - v[None, :]                         # (rows, n)
        left, right = (diff > 0).to(dtype), (diff < 0).to(dtype)
        below, above = diff * left, -diff * right
        if not bool(torch.isfinite(diff).all()):     # u - mu x overflows: no inf * 0 = NaN
            below = torch.where(diff > 0, diff, torch.zeros_like(diff))
            above = torch.where(diff < 0, -diff, torch.zeros_like(diff))
        pi_minus[start:start + rows] = left.sum(1) / n * below.sum(1) / n
        pi_plus[start:start + rows] = right.sum(1) / n * above.sum(1) / n
    return pi_minus.reshape(uu.shape), pi_plus.reshape(uu.shape)


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
    indicator is applied afterwards, as in the paper's statement. ``pi_-`` and ``pi_+``
    (:func:`tv_weight_pieces`) are linear between data points (``pi_-`` jumps up and ``pi_+`` down
    at each point) and cross once,
    so the Gaussian expectation of their minimum is computed exactly, piece by piece, with
    ``Phi`` and ``phi`` (no quadrature). For ``n = 2`` it is a tent of height ``mu |x_2 - x_1| / 8``
    blurred by ``sigma``.

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
