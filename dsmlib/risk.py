r"""Denoising score matching risk ``R_n`` and excess risk (paper Section 3).

    R_n(s) = (1/n) sum_i E_{Y ~ N(mu x_i, sigma^2 I)} |s(Y) + (Y - mu x_i) / sigma^2|^2
           = (1/n) sum_i E_{z ~ N(0, I)} |s(mu x_i + sigma z) + z / sigma|^2.

The expectation over the noise is kept (SGD sees fresh noise at every step). Its minimiser is the
empirical optimal score ``s*`` and

    R_n(s) - R_n(s*) = (1/n) sum_i E |s(Y) - s*(Y)|^2           (the excess risk).

In 1-D the expectation over ``z`` is a deterministic quadrature (trapezoid rule on a uniform grid of
``num_nodes`` points on ``[-9, 9]`` against the Gaussian density; the mass outside is ~2e-19).
In ``d > 1`` it is a Monte-Carlo average over ``num_samples`` draws per training point, drawn from
``generator``. See chapter 2.

Per-member data: an ensemble of K networks trained on K data sets (``train_sgd`` with data
``(K, n)``) is evaluated member by member with data ``(K, n)`` (1-D nets) or ``(K, n, d)``, and
``mu``, ``sigma`` may then be ``(K,)`` (one noise level per member).
"""

from __future__ import annotations


import torch

from . import _checks
from .networks import TwoLayerScoreNet
from .optimal import optimal_score

__all__ = ["dsm_risk", "excess_risk", "noise_nodes"]

_Z_MAX = 9.0


def noise_nodes(num_nodes: int = 1201, *, dtype=torch.float64, device=None):
    r"""Quadrature nodes ``z_k`` and weights ``w_k`` with ``sum_k w_k f(z_k) ≈ E f(Z)``, ``Z ~ N(0,1)``.

    Trapezoid rule on ``num_nodes`` equally spaced points of ``[-9, 9]`` times the Gaussian density,
    renormalised so the weights sum to one. Returns ``(z, w)``, each ``(num_nodes,)``.
    """
    num_nodes = _checks.integer(num_nodes, "num_nodes", minimum=3)
    dtype = _checks.float_dtype(dtype)
    device = _checks.device(device)
    z = torch.linspace(-_Z_MAX, _Z_MAX, num_nodes, dtype=torch.float64)
    w = torch.exp(-0.5 * z ** 2)
    w[0] *= 0.5
    w[-1] *= 0.5
    w = w / w.sum()
    return z.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device)


def _resolve_score(score_fn, data, mu, sigma):
    if isinstance(score_fn, str):
        if score_fn != "optimal":
            raise ValueError(f'score_fn must be a callable or the string "optimal", got {score_fn!r}')
        return lambda y: optimal_score(y, data, mu, sigma)
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (y -> score), got {type(score_fn).__name__}")
    _check_net(score_fn)
    return score_fn


def _check_net(score_fn):
    """A network handed over as the score must hold finite parameters (ValueError otherwise)."""
    if isinstance(score_fn, torch.nn.Module):
        _checks.finite_parameters("score_fn", **dict(score_fn.named_parameters()),
                                  **dict(score_fn.named_buffers()))


def _noise_draws(x, *, num_nodes, num_samples, generator):
    """The noise ``z`` (n, k, d) of every training point and the weights ``w`` (n*k,), summing
    to 1: quadrature nodes in 1-D, ``randn(n, k, d)`` from ``generator`` in d > 1."""
    n, d = x.shape
    if d == 1:
        if num_samples is not None:
            raise ValueError("num_samples is for d > 1 (Monte Carlo); in 1-D set num_nodes instead")
        z, w = noise_nodes(1201 if num_nodes is None else num_nodes, dtype=x.dtype, device=x.device)
        z = z[None, :, None].expand(n, -1, 1)                                  # (n, k, 1)
        w = (w / n).repeat(n)
    else:
        if num_nodes is not None:
            raise ValueError("num_nodes is the 1-D quadrature size; in d > 1 set num_samples instead")
        k = _checks.integer(5000 if num_samples is None else num_samples, "num_samples", minimum=1)
        z = torch.randn(n, k, d, generator=generator, dtype=x.dtype, device=x.device)
        w = torch.full((n * k,), 1.0 / (n * k), dtype=x.dtype, device=x.device)
    return z, w


_RESIDUAL_ELEMENTS = 1 << 22   # entries of the (points, k, n) logit block of _optimal_risk


def _optimal_risk(x, z, w, mu, sigma):
    r"""``R_n(s*)`` from the residual written without cancellation.

    For ``Y = mu x_i + sigma z``, ``s*(Y) + z / sigma = (mu / sigma^2) sum_j alpha_j (x_j - x_i)``
    with ``alpha = softmax_j((mu / sigma) z.D_j - (mu^2 / (2 sigma^2)) |D_j|^2)``, ``D_j = x_j - x_i``:
    the logit of ``j = i`` is exactly 0 and the others are at most ``|z|^2 / 2``, so nothing
    overflows, and the residual is a sum of small terms instead of the difference of two numbers
    of size ``|z| / sigma`` (which in float32 at ``sigma = 1e-4`` leaves an error of order 1).
    x: (n, d); z: (n, k, d); w: (n*k,). Returns a 0-d tensor in x's dtype (summed in float64).
    """
    n, k, d = z.shape
    lin, quad, out = mu / sigma, mu * mu / (2.0 * sigma * sigma), mu / (sigma * sigma)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    block = max(1, _RESIDUAL_ELEMENTS // (k * n * max(d, 1)))
    for start in range(0, n, block):
        D = x[None, :, :] - x[start:start + block, None, :]                  # (B, n, d)
        sq = (D * D).sum(-1)                                                  # (B, n)
        pen = torch.where(sq == 0, torch.zeros_like(sq), sq * quad)          # 0 * inf guarded
        logits = torch.bmm(z[start:start + block], D.transpose(1, 2)) * lin - pen[:, None, :]
        r = torch.bmm(torch.softmax(logits, dim=-1), D) * out               # (B, k, d)
        wb = w[start * k:(start + block) * k]
        total += ((r * r).sum(-1).reshape(-1) * wb).sum(dtype=torch.float64)
    if not bool(torch.isfinite(total)):
        raise FloatingPointError("R_n(s*) overflowed: the data are too large for this noise level "
                                 "in this dtype (use float64 or rescale the data)")
    return total.to(x.dtype)


def _noisy_points(data, mu, sigma, *, num_nodes, num_samples, generator):
    """Points ``Y = mu x_i + sigma z`` with their weights and the noise ``z``.

    Returns ``(y, target, weights, was_1d, n)`` where ``y`` is ``(n*k,)`` in 1-D or ``(n*k, d)``,
    ``target = -z / sigma`` has the shape of ``y`` and ``weights`` is ``(n*k,)`` (summing to 1).
    """
    _checks.positive(mu, "mu")
    _checks.positive(sigma, "sigma")
    x, was_1d = _checks.data_2d(data, "data")
    mu, sigma = _checks.noise(mu, sigma, x.dtype)
    _checks.generator_or_none(generator)
    n, d = x.shape
    z, w = _noise_draws(x, num_nodes=num_nodes, num_samples=num_samples, generator=generator)
    y = (mu * x[:, None, :] + sigma * z).reshape(-1, d)
    target = (-z / sigma).reshape(-1, d)
    if was_1d:
        y, target = y[:, 0], target[:, 0]
    return y, target, w, was_1d, n


def _weighted_mean_sq(diff, weights, was_1d):
    """``sum_k w_k |diff_k|^2`` over the point axis, keeping any leading (ensemble) axes."""
    sq = diff ** 2 if was_1d else (diff ** 2).sum(-1)
    if not bool(torch.isfinite(sq).all()):
        raise FloatingPointError("the score function returned NaN or infinite values")
    return (sq * weights).sum(-1)


def _evaluate(fn, y, name):
    out = _checks.function_output(_checks.call_user(fn, name, y), name)
    if tuple(out.shape[out.dim() - y.dim():]) != tuple(y.shape):
        raise ValueError(f"{name} returned shape {tuple(out.shape)}; expected {tuple(y.shape)} "
                         f"(optionally with leading ensemble axes)")
    return out.to(y.dtype)


def _per_member(score_fn, data, mu, sigma):
    """The per-member layout, or None for shared data and scalar noise levels.

    Per member when ``mu`` or ``sigma`` is a sequence, or ``data`` is (K, n, d), or (K, n) for an
    ensemble of 1-D TwoLayerScoreNets (for a 1-D net, 2-D data is per-member unless it is (n, 1)).
    Returns ``(x (K, n, d), mu (K,), sigma (K,), was_1d)``; ``was_1d``: the points handed to the
    score have no trailing d axis (a 1-D net, or a callable given 1-D data (n,)).
    """
    net = score_fn if isinstance(score_fn, TwoLayerScoreNet) else None
    raw = _checks.as_tensor(data, "data")
    x = raw.unsqueeze(-1) if net is not None and net.dim == 1 and raw.dim() == 2 \
        and raw.shape[1] != 1 else raw
    vector = [v for v in (mu, sigma) if _checks.is_sequence(v)]
    if x.dim() < 3 and not vector:
        return None
    if net is not None and net.ensemble is None:
        raise ValueError("per-member data or noise levels need an ensemble net (ensemble=K)")
    if x.dim() < 3:                                   # shared data, per-member noise levels
        x = _checks.data_2d(x, "data")[0]
        K = net.ensemble if net is not None else max(
            _checks.as_tensor(v, "mu or sigma").numel() for v in vector)
        x = x.expand(K, -1, -1)
    if x.dim() != 3 or min(x.shape) < 1:
        raise ValueError(f"per-member data must have shape (K, n) (1-D nets) or (K, n, d), "
                         f"got {tuple(raw.shape)}")
    K = x.shape[0]
    if net is not None and K != net.ensemble:
        raise ValueError(f"data holds {K} data sets but the net has ensemble={net.ensemble}")

    def per(v, name):
        t = _checks.as_tensor(v, name, dtype=torch.float64).cpu().reshape(-1)
        if t.numel() == 1:
            t = t.expand(K)
        if t.numel() != K:
            raise ValueError(f"{name} must be a number or {K} values (one per member), "
                             f"got {t.numel()}")
        if bool((t <= 0).any()):
            raise ValueError(f"{name} must be positive")
        return _checks.noise_levels(t, name, x.dtype)

    was_1d = net.dim == 1 if net is not None else raw.dim() == 1
    return x, per(mu, "mu"), per(sigma, "sigma"), was_1d


def _member_points(x, mus, sigmas, *, num_nodes, num_samples, generator):
    """Per-member noisy points: y, target (K, N) or (K, N, d) and shared weights (N,)."""
    _checks.generator_or_none(generator)
    K, n, d = x.shape
    mu = mus.to(x.dtype).view(K, 1, 1, 1)
    sigma = sigmas.to(x.dtype).view(K, 1, 1, 1)
    if d == 1:
        if num_samples is not None:
            raise ValueError("num_samples is for d > 1 (Monte Carlo); in 1-D set num_nodes instead")
        z, w = noise_nodes(1201 if num_nodes is None else num_nodes, dtype=x.dtype, device=x.device)
        z = z[None, None, :, None].expand(K, n, -1, 1)                        # (K, n, k, 1)
        w = (w / n).repeat(n)
    else:
        if num_nodes is not None:
            raise ValueError("num_nodes is the 1-D quadrature size; in d > 1 set num_samples instead")
        k = _checks.integer(5000 if num_samples is None else num_samples, "num_samples", minimum=1)
        z = torch.randn(K, n, k, d, generator=generator, dtype=x.dtype, device=x.device)
        w = torch.full((n * k,), 1.0 / (n * k), dtype=x.dtype, device=x.device)
    y = (mu * x[:, :, None, :] + sigma * z).reshape(K, -1, d)
    target = (-z / sigma).reshape(K, -1, d)
    return y, target, w, z


def _member_scores(score_fn, y, x, mus, sigmas, was_1d):
    """s(y) per member, (K, N, d): member k of a net at y[k], a callable on (K, N[, d]), or s*."""
    K = y.shape[0]
    if isinstance(score_fn, str):
        if score_fn != "optimal":
            raise ValueError(f'score_fn must be a callable or the string "optimal", got {score_fn!r}')
        return _member_optimal(y, x, mus, sigmas)
    if isinstance(score_fn, TwoLayerScoreNet):
        _check_net(score_fn)
        return score_fn.forward_members(y).to(y.dtype)
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (y -> score), got {type(score_fn).__name__}")
    yy = y[..., 0] if was_1d else y
    out = _evaluate(score_fn, yy, "score_fn")
    if tuple(out.shape) != tuple(yy.shape):
        raise ValueError(f"score_fn returned shape {tuple(out.shape)}; with per-member data it must "
                         f"return {tuple(yy.shape)} (member k's score at y[k])")
    return out.reshape(K, -1, y.shape[2])


def _member_optimal(y, x, mus, sigmas):
    out = torch.empty_like(y)
    for k in range(y.shape[0]):
        out[k] = optimal_score(y[k], x[k], float(mus[k]), float(sigmas[k])).to(y.dtype)
    return out


def _member_risk(score_fn, data, members, *, optimal_reference, num_nodes, num_samples,
                 generator):
    x, mus, sigmas, was_1d = members
    y, target, w, z = _member_points(x, mus, sigmas, num_nodes=num_nodes, num_samples=num_samples,
                                     generator=generator)
    if score_fn == "optimal" and not optimal_reference:   # R_n(s*): residual without cancellation
        with torch.no_grad():
            return torch.stack([_optimal_risk(x[k], z[k], w, float(mus[k]), float(sigmas[k]))
                                for k in range(x.shape[0])])
    with torch.no_grad():
        s = _member_scores(score_fn, y, x, mus, sigmas, was_1d)
        ref = _member_optimal(y, x, mus, sigmas) if optimal_reference else target
        sq = ((s - ref) ** 2).sum(-1)
        if not bool(torch.isfinite(sq).all()):
            raise FloatingPointError("the score function returned NaN or infinite values")
        return (sq * w).sum(-1)


def dsm_risk(score_fn, data, mu, sigma, *, num_nodes=None, num_samples=None, generator=None):
    r"""Denoising score matching risk ``R_n(s)`` at one noise level.

    ``R_n(s) = (1/n) sum_i E_z |s(mu x_i + sigma z) + z / sigma|^2``.

    score_fn: callable ``y -> s(y)`` taking ``(N,)`` (1-D data) or ``(N, d)`` and returning the same
    shape, optionally with leading ensemble axes ``(K, ...)``; or the string ``"optimal"`` for ``s*``.
    data: (n,) or (n, d). 1-D: quadrature with ``num_nodes`` (default 1201), deterministic.
    d > 1: Monte Carlo with ``num_samples`` (default 5000) draws per point from ``generator``.
    Per-member data (see the module docstring): data ``(K, n)`` for an ensemble of 1-D nets, or
    ``(K, n, d)``; ``mu``, ``sigma`` numbers or ``(K,)``; member k is evaluated on data set k
    (a callable then receives ``(K, N)`` or ``(K, N, d)`` and returns member k's score at row k).
    Returns a tensor of shape ``()`` or ``(K,)``.
    """
    members = _per_member(score_fn, data, mu, sigma)
    if members is not None:
        return _member_risk(score_fn, data, members, optimal_reference=False,
                            num_nodes=num_nodes, num_samples=num_samples, generator=generator)
    fn = _resolve_score(score_fn, data, mu, sigma)
    if isinstance(score_fn, str):                    # s*: the residual without cancellation
        _checks.positive(mu, "mu")
        _checks.positive(sigma, "sigma")
        x, _ = _checks.data_2d(data, "data")
        mu, sigma = _checks.noise(mu, sigma, x.dtype)
        _checks.generator_or_none(generator)
        z, w = _noise_draws(x, num_nodes=num_nodes, num_samples=num_samples, generator=generator)
        with torch.no_grad():
            return _optimal_risk(x, z, w, mu, sigma)
    y, target, w, was_1d, _ = _noisy_points(data, mu, sigma, num_nodes=num_nodes,
                                            num_samples=num_samples, generator=generator)
    with torch.no_grad():
        s = _evaluate(fn, y, "score_fn")
        return _weighted_mean_sq(s - target, w, was_1d)


def excess_risk(score_fn, data, mu, sigma, *, num_nodes=None, num_samples=None, generator=None):
    r"""Excess risk ``R_n(s) - R_n(s*) = (1/n) sum_i E_{Y ~ N(mu x_i, sigma^2 I)} |s(Y) - s*(Y)|^2``.

    Same arguments, shapes and conventions as :func:`dsm_risk` (the paper's Fig. 2 uses 5000 noise
    draws per training point), including per-member data. Returns a tensor of shape ``()`` or
    ``(K,)``.
    """
    members = _per_member(score_fn, data, mu, sigma)
    if members is not None:
        return _member_risk(score_fn, data, members, optimal_reference=True,
                            num_nodes=num_nodes, num_samples=num_samples, generator=generator)
    fn = _resolve_score(score_fn, data, mu, sigma)
    y, _, w, was_1d, _ = _noisy_points(data, mu, sigma, num_nodes=num_nodes,
                                       num_samples=num_samples, generator=generator)
    with torch.no_grad():
        s = _evaluate(fn, y, "score_fn")
        s_opt = optimal_score(y, data, mu, sigma).to(y.dtype)
        return _weighted_mean_sq(s - s_opt, w, was_1d)
