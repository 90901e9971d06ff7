r"""The Gauss-Newton part of the Hessian of the exact 1-D risk (closed form) and its top eigenvalue.

The Hessian of the exact DSM risk :func:`dsmlib.relu_net_risk` of a two-layer ReLU net splits into
the Gauss-Newton matrix ``G = (2/n) sum_i E[J J^T]`` (``J = grad_theta s_theta``; positive
semi-definite) and a residual part that holds the Dirac terms of ``ReLU''``.
:func:`gauss_newton_matrix` computes ``G`` exactly from Gaussian moments and
:func:`gauss_newton_sharpness` its top eigenvalue, which the proof of Prop. 6 bounds from below:
``lambda_max(G) >= 4 TV_pi(s_theta) / m`` (chapter 7). The full Hessian and its sharpness live in
:mod:`dsmlib.stability`, whose parameter helpers this module uses.
"""

from __future__ import annotations

import math

import torch

from . import _checks
from .stability import _T_CLIP, _get_params, _layout, _phi, _trained_names

__all__ = ["gauss_newton_matrix", "gauss_newton_sharpness"]


def _member_data(data, K, dtype, device):
    """Shared data (n,) -> (1, n); per-member data (K, n) -> (K, n)."""
    x = _checks.as_tensor(data, "data", dtype=dtype, device=device)
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() == 1:
        return _checks.data_1d(x, "data")[None]
    if x.dim() == 2 and x.shape[0] == K:
        if x.shape[1] < 1:
            raise ValueError("data needs at least 1 point per member")
        return x
    raise ValueError(f"data must have shape (n,) (shared) or (K, n) = ({K}, n) (one data set per "
                     f"member); got {tuple(x.shape)}")


def _truncated_moments(lo, hi, c, sigma):
    """``E[Y^j 1{lo < Y < hi}]``, j = 0, 1, 2, for ``Y ~ N(c, sigma^2)`` (broadcast shapes).

    With ``alpha, beta = (lo - c)/sigma, (hi - c)/sigma`` (clipped to +-40, where the Gaussian
    mass is exactly 0 in floating point) and ``T = (Y - c)/sigma``:
    ``E[1] = Phi(beta) - Phi(alpha)``, ``E[T] = phi(alpha) - phi(beta)``,
    ``E[T^2] = E[1] + alpha phi(alpha) - beta phi(beta)``; empty intervals give 0.
    """
    al = ((lo - c) / sigma).clamp(-_T_CLIP, _T_CLIP)
    be = ((hi - c) / sigma).clamp(-_T_CLIP, _T_CLIP)
    be = torch.maximum(al, be)                                           # empty -> zero width
    # Phi(be) - Phi(al) from the upper tails when al > 0 (no 1 - 1 cancellation)
    e0 = torch.where(al > 0, torch.special.ndtr(-al) - torch.special.ndtr(-be),
                     torch.special.ndtr(be) - torch.special.ndtr(al))
    pa, pb = _phi(al), _phi(be)
    e1 = pa - pb
    e2 = e0 + al * pa - be * pb
    return e0, c * e0 + sigma * e1, c * c * e0 + 2.0 * c * sigma * e1 + sigma * sigma * e2


def gauss_newton_matrix(net, data, mu, sigma, *, wrt=None):
    r"""The Gauss-Newton part of the Hessian of the exact risk, ``G = (2/n) sum_i E[J J^T]`` (1-D).

    ``J(y) = grad_theta s_theta(y)`` and ``Y ~ N(mu x_i, sigma^2)``; the Hessian of
    :func:`dsmlib.relu_net_risk` is ``G`` plus the residual part
    ``(2/n) sum_i E[g_i(Y) d^2 s/d theta^2]`` (which holds the Dirac terms of ``ReLU''``, see
    :func:`dsmlib.relu_net_risk`). ``G`` is the Hessian of
    the risk with ``s_theta`` replaced by its linearisation in ``theta``: positive semi-definite,
    independent of the residual, the matrix whose top eigenvalue the proof of Prop. 6 bounds from
    below by ``TV_pi`` (chapter 7).

    Closed form: every entry of ``J`` is ``(c0 + c1 y) 1{unit l active at y}`` (``d s/d a_l =
    (w_l y + b_l)/m``, ``d s/d b_l = a_l/m``, ``d s/d w_l = a_l y/m``), a unit is active on a
    half-line, two half-lines meet in an interval, and the Gaussian moments
    ``E[Y^j 1{lo < Y < hi}]`` (j <= 2) are explicit in ``Phi`` and ``phi``. Float64 is
    recommended. Cost ``O(K n m^2)`` time and ``O(K m^2)`` memory.

    net: a 1-D TwoLayerScoreNet or ``(W1, b, W2)``; the parameter order is that of
    :func:`dsmlib.sharpness` (``wrt``; theory model: ``W2`` then ``b``, i.e. ``(a, b)``).
    data: (n,) or per-member (K, n). Returns ``(P, P)`` or ``(K, P, P)``.
    """
    params = _get_params(net, "net")
    ensemble, m, d = _layout(params, "net")
    if d != 1:
        raise NotImplementedError(f"gauss_newton_matrix has a closed form for 1-D nets only; "
                                  f"got dim = {d}")
    _checks.positive(mu, "mu")
    _checks.positive(sigma, "sigma")
    names = _trained_names(net, wrt)
    W1, b, W2 = (p.detach() for p in params)
    if ensemble is None:
        W1, b, W2 = W1[None], b[None], W2[None]
    K = W1.shape[0]
    dtype = torch.promote_types(torch.promote_types(W1.dtype, b.dtype), W2.dtype)
    mu, sigma = _checks.noise(mu, sigma, dtype)
    w, b, a = W1[..., 0].to(dtype), b.to(dtype), W2[..., 0, :].to(dtype)        # (K, m)
    x = _member_data(data, K, dtype, w.device)                                   # (1 or K, n)
    inf = torch.full_like(w, math.inf)
    kink = -b / torch.where(w == 0, torch.ones_like(w), w)
    live = (w != 0) | (b > 0)                       # w = 0: active everywhere if b > 0, else never
    lo = torch.where(w > 0, kink, torch.where(live, -inf, inf))                  # active on (lo, hi)
    hi = torch.where(w < 0, kink, torch.where(live, inf, -inf))
    lo2 = torch.maximum(lo[:, :, None], lo[:, None, :])                          # (K, m, m)
    hi2 = torch.minimum(hi[:, :, None], hi[:, None, :])
    S0 = torch.zeros(K, m, m, dtype=dtype, device=w.device)
    S1, S2 = torch.zeros_like(S0), torch.zeros_like(S0)
    centers = mu * x                                                             # (1 or K, n)
    for i in range(x.shape[1]):
        c = centers[:, i].reshape(-1, 1, 1)
        e0, e1, e2 = _truncated_moments(lo2, hi2, c, sigma)
        S0 += e0
        S1 += e1
        S2 += e2
    scale = 2.0 / (x.shape[1] * m * m)
    zero = torch.zeros_like(w)
    coef = {"W1": (zero, a), "b": (a, zero), "W2": (b, w)}                       # (c0, c1) per unit
    rows = []
    for p in names:
        p0, p1 = coef[p]
        row = []
        for q in names:
            q0, q1 = coef[q]
            block = (p0[:, :, None] * q0[:, None, :] * S0
                     + (p0[:, :, None] * q1[:, None, :] + p1[:, :, None] * q0[:, None, :]) * S1
                     + p1[:, :, None] * q1[:, None, :] * S2)
            row.append(block)
        rows.append(torch.cat(row, 2))
    G = torch.cat(rows, 1) * scale
    if bool(torch.isnan(G).any()):
        raise FloatingPointError(f"gauss_newton_matrix overflows in {dtype} (inf * 0) for these "
                                 f"parameters and data; use float64")
    return G[0] if ensemble is None else G


def gauss_newton_sharpness(net, data, mu, sigma, *, wrt=None):
    r"""Top eigenvalue of the Gauss-Newton matrix :func:`gauss_newton_matrix`, per member.

    It is at most the sharpness of the exact Hessian plus the norm of its residual part, and it
    is the quantity the proof of Prop. 6 compares with ``TV_pi(s_theta)``:
    ``TV_pi(s_theta) <= lambda_max(G) m / 4`` (chapter 7 checks this). Dense eigenvalues
    (``torch.linalg.eigvalsh``), one member at a time: ``O(K P^3)``.
    Returns a 0-d tensor or ``(K,)``.
    """
    params = _get_params(net, "net")
    ensemble, _, _ = _layout(params, "net")
    G = gauss_newton_matrix(net, data, mu, sigma, wrt=wrt)
    if not bool(torch.isfinite(G).all()):
        raise FloatingPointError(f"gauss_newton_sharpness: the Gauss-Newton matrix overflows in "
                                 f"{G.dtype} for these parameters and data; use float64")
    if ensemble is None:
        return torch.linalg.eigvalsh(G)[-1]
    return torch.stack([torch.linalg.eigvalsh(Gk)[-1] for Gk in G])
