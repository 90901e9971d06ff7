r"""Linear stability of SGD on the DSM risk: the exact 1-D risk of a ReLU net, its Hessian, sharpness.

Paper Section 4: SGD ``theta <- theta - m eta grad R_hat(theta)`` can only settle at a minimum
``theta*`` that is linearly stable, and then (eq. 8, Mulayoff, Michaeli & Soudry 2021, Lemma 1)

    lambda_max(Hessian R_n(theta*)) <= 2 / (m eta).

To measure ``lambda_max`` we need the Hessian of the *expected* risk (the expectation over the noise
kept, as in the paper). For a two-layer ReLU net in 1-D this expectation has a closed form
(:func:`relu_net_risk`), so the Hessian obtained by autograd is exact; :func:`sharpness` runs a
batched Lanczos iteration on Hessian-vector products of it. See chapter 5, "Linear stability".
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from . import _checks

__all__ = ["relu_net_risk", "sharpness", "stability_threshold", "gauss_newton_matrix",
           "gauss_newton_sharpness", "full_batch_gd", "GDResult", "perturbation_test",
           "PerturbationResult"]

_PARAM_NAMES = ("W1", "b", "W2")
# Standardised kink positions are clipped to [-_T_CLIP, _T_CLIP]. The Gaussian mass beyond 40
# standard deviations (~1e-350) underflows to 0 in float64 and float32, so the clip changes no
# computed value; it only keeps inf * 0 = NaN out of the tails.
_T_CLIP = 40.0
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_RISK_BLOCK_ELEMENTS = 1 << 22   # entries of the (K, points, m) terms of relu_net_risk at once


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------

def _get_params(net_or_params, name="net_or_params"):
    """``(W1, b, W2)`` from a TwoLayerScoreNet-like object, a tuple/list or a dict."""
    if isinstance(net_or_params, dict):
        missing = [k for k in _PARAM_NAMES if k not in net_or_params]
        if missing:
            raise ValueError(f"{name} is missing the entries {missing} (need W1, b, W2)")
        params = tuple(net_or_params[k] for k in _PARAM_NAMES)
    elif isinstance(net_or_params, (tuple, list)):
        if len(net_or_params) != 3:
            raise ValueError(f"{name} must be (W1, b, W2), got a sequence of length "
                             f"{len(net_or_params)}")
        params = tuple(net_or_params)
    elif all(hasattr(net_or_params, k) for k in _PARAM_NAMES):
        params = tuple(getattr(net_or_params, k) for k in _PARAM_NAMES)
    else:
        raise TypeError(f"{name} must be a TwoLayerScoreNet or a tuple (W1, b, W2), "
                        f"got {type(net_or_params).__name__}")
    for k, p in zip(_PARAM_NAMES, params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name}.{k} must be a torch tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"{name}.{k} must be a floating tensor, got dtype {p.dtype}")
        _checks.float_dtype(p.dtype, f"{name}.{k}.dtype")
    _checks.finite_parameters(name, **dict(zip(_PARAM_NAMES, params)))
    return params


def _layout(params, name="net_or_params"):
    """Check the shapes of ``(W1, b, W2)``; return ``(ensemble, m, d)`` (ensemble: None or K)."""
    W1, b, W2 = params
    if W1.dim() == 2 and b.dim() == 1 and W2.dim() == 2:
        ensemble = None
        (m, d), lead = W1.shape, ()
    elif W1.dim() == 3 and b.dim() == 2 and W2.dim() == 3:
        K, m, d = W1.shape
        ensemble, lead = K, (K,)
    else:
        raise ValueError(f"{name}: expected W1 (m, d), b (m,), W2 (d, m) or with a leading ensemble "
                         f"axis K; got shapes {tuple(W1.shape)}, {tuple(b.shape)}, {tuple(W2.shape)}")
    if tuple(b.shape) != lead + (m,) or tuple(W2.shape) != lead + (d, m):
        raise ValueError(f"{name}: inconsistent shapes W1 {tuple(W1.shape)}, b {tuple(b.shape)}, "
                         f"W2 {tuple(W2.shape)}")
    return ensemble, m, d


# ----------------------------------------------------------------------------------------------
# the exact risk
# ----------------------------------------------------------------------------------------------

def _phi(t):
    return torch.exp(-0.5 * t * t) * _INV_SQRT_2PI


def _segments(w, b, a, m, limit):
    """Sorted kinks, the line ``s = alpha y + beta`` on each segment, and the units' sorted order.

    w, b, a: (K, m). Kinks ``-b/w`` beyond ``[-limit, limit]`` are placed at ``+-limit`` (without
    gradient, avoiding ``b / w^2`` overflow for tiny ``w``; they contribute 0 anyway). Units with
    ``w = 0`` have no kink: with ``b > 0`` they are active everywhere (slope ``a w / m = 0`` but
    with its gradient), else inactive. Returns ``kinks`` (K, m) sorted, ``alpha``, ``beta``
    (K, m + 1) with ``s(y) = alpha_j y + beta_j`` for ``kinks[j-1] < y < kinks[j]``, and ``order``
    (K, m): the unit sitting at each sorted kink.
    """
    nonzero = w != 0
    near = nonzero & (b.abs() <= limit * w.abs())
    kink = torch.where(near, -b / torch.where(near, w, torch.ones_like(w)),
                       -torch.sign(b) * torch.sign(w) * limit)
    kinks, order = torch.sort(kink, dim=-1)
    pos = (w > 0).to(w.dtype)
    neg = (w < 0).to(w.dtype)
    always = ((w == 0) & (b > 0)).to(w.dtype)

    def prefix_suffix(c):
        # segment j: units sorted before j with w > 0 (active right of their kink) plus units
        # sorted at or after j with w < 0 (active left of their kink), plus the always-on units.
        cp = torch.gather(c * pos, -1, order)
        cn = torch.gather(c * neg, -1, order)
        zero = torch.zeros_like(cp[..., :1])
        prefix = torch.cat([zero, torch.cumsum(cp, -1)], -1)
        suffix = torch.cat([torch.flip(torch.cumsum(torch.flip(cn, [-1]), -1), [-1]), zero], -1)
        return prefix + suffix + (c * always).sum(-1, keepdim=True)

    return kinks, prefix_suffix(a * w / m), prefix_suffix(a * b / m), order


def _risk_inputs(data, mu, sigma, ensemble, dtype, device):
    """Data and noise levels of :func:`relu_net_risk`: shared ``(x (n,), mu, sigma)`` with float
    noise levels, or per member ``(x (K, n), mu (K, 1), sigma (K, 1))`` tensors in ``dtype``.

    Per member when data is (K, n) [(K, n, 1) also accepted] or mu / sigma are (K,) sequences;
    only for an ensemble of K nets. Keeping floats on the shared path keeps its arithmetic (and
    its results) exactly what they were before per-member data existed.
    """
    raw = _checks.as_tensor(data, "data", dtype=dtype, device=device)
    vector = _checks.is_sequence(mu) or _checks.is_sequence(sigma)
    per = (raw.dim() == 2 and raw.shape[1] != 1) or raw.dim() == 3 or vector
    if not per:
        _checks.positive(mu, "mu")
        _checks.positive(sigma, "sigma")
        return (_checks.data_1d(raw, dtype=dtype, device=device), *_checks.noise(mu, sigma, dtype))
    if ensemble is None:
        raise ValueError("per-member data or noise levels need an ensemble of nets (K members)")
    K = ensemble
    x = raw[..., 0] if raw.dim() == 3 and raw.shape[2] == 1 else raw
    if x.dim() == 1:
        x = x.expand(K, -1)
    if x.dim() != 2 or x.shape[0] != K or x.shape[1] < 1:
        raise ValueError(f"data must be (n,) shared or ({K}, n) per member for an ensemble of "
                         f"{K} one-dimensional nets, got {tuple(raw.shape)}")

    def levels(v, name):
        t = _checks.as_tensor(v, name, dtype=dtype, device=device).reshape(-1)
        t = t.expand(K) if t.numel() == 1 else t
        if t.numel() != K:
            raise ValueError(f"{name} must be a number or {K} values (one per member), "
                             f"got {t.numel()}")
        if bool((t <= 0).any()):
            raise ValueError(f"{name} must be positive")
        _checks.noise_levels(t, name, dtype)
        return t.reshape(K, 1)

    return x, levels(mu, "mu"), levels(sigma, "sigma")


def relu_net_risk(net_or_params, data, mu, sigma):
    r"""Exact DSM risk ``R_n(theta)`` of a 1-D two-layer ReLU net, in closed form (paper Sections 3-4).

        R_n(theta) = (1/n) sum_i E_{z ~ N(0,1)} g_i(z)^2,   g_i(z) = s(mu x_i + sigma z) + z / sigma,
        s(y) = (1/m) sum_l a_l ReLU(w_l y + b_l)      (w = W1[..., 0], a = W2[..., 0, :]).

    ``s`` is linear between its sorted kinks ``k_l = -b_l / w_l``: on segment j,
    ``s(y) = alpha_j y + beta_j`` where ``alpha_j``, ``beta_j`` are prefix sums (units with
    ``w_l > 0`` whose kink lies left of the segment) plus suffix sums (units with ``w_l < 0`` whose
    kink lies right of it) of ``a_l w_l / m`` and ``a_l b_l / m``; a unit with ``w_l = 0`` is
    active everywhere if ``b_l > 0`` (else nowhere). In ``z``, ``g_i = p_j + q_j z`` on segment j with
    ``p_j = alpha_j mu x_i + beta_j``, ``q_j = alpha_j sigma + 1/sigma``, and kink l sits at
    ``t_l = (k_l - mu x_i) / sigma``. Start from the segment J that contains ``z = 0`` and correct
    the integrand kink by kink, outwards: crossing kink l changes ``g`` by
    ``-(a_l |w_l| sigma / m) (z - t_l)``, so that

        E g_i^2 = p_J^2 + q_J^2 + sum_l (a_l |w_l| sigma / m) [2 G_l psi1(|t_l|) +- Q_l psi2(|t_l|)]

    (``+`` for kinks right of 0, ``-`` left of it), with ``G_l = g_i(t_l)``, ``Q_l`` the sum of the
    slopes ``q`` on both sides of the kink, ``psi1(r) = E(Z - r)_+ = phi(r) - r Phi(-r)`` and
    ``psi2(r) = E(Z - r)_+^2 = (1 + r^2) Phi(-r) - r phi(r)``. Each correction is one unit's jump
    times a Gaussian tail moment, so nothing cancels: in float32, autograd gradients and
    Hessian-vector products keep about 7 digits (summing per-segment integrals
    ``Phi(t_hi) - Phi(t_lo)`` instead loses 4-6 digits in Hessian-vector products at m = 1000).
    Cost ``O(K n m + K m log m)``.

    net_or_params: a TwoLayerScoreNet with ``dim == 1`` or a tuple/dict ``(W1, b, W2)`` of shapes
    ``(m, 1), (m,), (1, m)`` or ``(K, m, 1), (K, m), (K, 1, m)``. data: (n,) or (n, 1), or, for
    an ensemble, per-member data sets (K, n); mu, sigma: numbers, or (K,) per member.
    Returns a 0-d tensor, or ``(K,)`` for an ensemble (member k's risk), differentiable (twice) in
    the parameters.

    Why closed form: the derivative of ``ReLU`` is a step and its second derivative a Dirac mass at
    the kink. The Hessian of the expected risk therefore contains, besides the Gauss-Newton part
    ``(2/n) sum_i E[grad s grad s^T]``, the term ``(2/n) sum_i E[g_i(z) d^2 s / d theta^2]`` whose
    Dirac part is, e.g. in the ``(b_l, b_l)`` entry,
    ``(2/n) sum_i (a_l / (m |w_l|)) p_i(k_l) g_i(t_l)`` with ``p_i`` the density of
    ``N(mu x_i, sigma^2)``. Autograd through Monte-Carlo noise samples or fixed quadrature nodes
    differentiates the integrand pointwise, where ``ReLU'' = 0`` almost everywhere: it silently
    drops that term and returns a wrong Hessian (the gradient is still right). Here the kinks enter
    through ``Phi`` and ``phi`` of ``t_l``, smooth functions of ``theta``; sorting only orders the
    summation, so the value is the exact expectation for every ``theta`` and autograd's Hessian is
    the exact Hessian (wherever the expected risk is twice differentiable, i.e. unless some unit
    has ``w_l = b_l = 0``). Kinks further than 40 standard deviations from every ``mu x_i`` are
    clipped there: their Gaussian weight (< 1e-340) is exactly 0 in floating point.
    """
    params = _get_params(net_or_params)
    ensemble, m, d = _layout(params)
    if d != 1:
        raise NotImplementedError(f"relu_net_risk has a closed form for 1-D nets only; got dim = {d}. "
                                  "Use dsm.dsm_risk (quadrature / Monte Carlo) for d > 1.")
    W1, b, W2 = params
    if ensemble is None:
        W1, b, W2 = W1[None], b[None], W2[None]
    dtype = torch.promote_types(torch.promote_types(W1.dtype, b.dtype), W2.dtype)
    x, mu, sigma = _risk_inputs(data, mu, sigma, ensemble, dtype, W1.device)
    w, a, b = W1[..., 0].to(dtype), W2[..., 0, :].to(dtype), b.to(dtype)    # (K, m)
    # shared data: x (n,), mu, sigma floats; per member: x (K, n), mu, sigma (K, 1) tensors
    center = (mu * x).reshape(-1, x.shape[-1])                              # (1 or K, n)
    sig3 = sigma if isinstance(sigma, float) else sigma[:, :, None]         # float or (K, 1, 1)
    # kinks beyond 41 sigma of every mu x_i contribute exactly 0 (see _T_CLIP)
    limit = float(center.abs().max()) + (_T_CLIP + 1.0) * float(torch.as_tensor(sigma).max())
    kinks, alpha, beta, order = _segments(w, b, a, m, limit)               # (K, m), (K, m+1) x2
    # |w| as w sign(w) and |t| by torch.where: the double backward of abs() imports torch._dynamo
    # (seconds, once per process); both forms also give |w| zero slope at w = 0, as abs() does
    jump = torch.gather(a * w * torch.sign(w), -1, order) * (sigma / m)    # (K, m), kink order
    K, n = kinks.shape[0], center.shape[-1]

    def point_terms(c):
        """E g_i^2 for the data points of the block ``c`` (1 or K, n_b): (K, n_b). (The order of
        the operations is kept as it was before blocks existed: autograd sums the gradient
        contributions in creation order, so it fixes the last bits of Hessian-vector products.)"""
        t = ((kinks[:, None, :] - c[:, :, None]) / sig3).clamp(-_T_CLIP, _T_CLIP)  # (K, n_b, m)
        left = t <= 0
        J = left.sum(-1)                                                    # segment holding z = 0
        alpha_J, beta_J = torch.gather(alpha, -1, J), torch.gather(beta, -1, J)   # (K, n_b)
        base = (alpha_J * c + beta_J) ** 2 + (alpha_J * sigma + 1.0 / sigma) ** 2
        s_kink = alpha[:, 1:] * kinks + beta[:, 1:]                         # s at each kink (K, m)
        G = s_kink[:, None, :] + t / sig3                                   # g_i at each kink
        Q = ((alpha[:, :-1] + alpha[:, 1:]) * sigma + 2.0 / sigma)[:, None, :]  # (K, 1, m)
        r = torch.where(left, -t, t)
        phi_r, tail = _phi(r), torch.special.ndtr(-r)
        psi1 = phi_r - r * tail
        Qpsi2 = Q * ((1.0 + r * r) * tail - r * phi_r)
        return base + (jump[:, None, :] * (2.0 * G * psi1 + torch.where(left, -Qpsi2, Qpsi2))).sum(-1)

    # the (K, n, m) terms are built for a block of data points at a time, so memory stays bounded;
    # each point's sum over the m kinks does not depend on the block. With autograd recording,
    # the graph keeps every block anyway: blocks are then large (one block in all the book's uses,
    # which keeps the Hessian-vector products of sharpness exactly as they were)
    recording = torch.is_grad_enabled() and any(p.requires_grad for p in (w, a, b))
    block = max(1, (_RISK_BLOCK_ELEMENTS if recording else _RISK_BLOCK_ELEMENTS // 4) // (K * m))
    if n <= block:
        per_point = point_terms(center)
    else:
        per_point = torch.empty(K, n, dtype=dtype, device=kinks.device)
        for start in range(0, n, block):
            per_point[:, start:start + block] = point_terms(center[:, start:start + block])
    risk = per_point.mean(-1)
    if bool(torch.isnan(risk.detach()).any()):
        raise FloatingPointError(f"relu_net_risk: the risk overflows in {dtype} (a NaN from inf - "
                                 f"inf): the parameters or 1/sigma are too large for this dtype; "
                                 f"use float64")
    return risk[0] if ensemble is None else risk


# ----------------------------------------------------------------------------------------------
# sharpness
# ----------------------------------------------------------------------------------------------

def stability_threshold(width, lr):
    r"""Largest sharpness compatible with linear stability of SGD: ``2 / (m eta)`` (eq. 8).

    From Mulayoff, Michaeli & Soudry (2021, Lemma 1) applied to ``theta <- theta - m eta grad R``.
    width: the number ``m`` of hidden units (int >= 1); lr: ``eta > 0``, a number (returns a float)
    or a tensor/array of learning rates (returns a tensor of the same shape).
    """
    m = _checks.integer(width, "width", minimum=1)
    if isinstance(lr, (torch.Tensor,)) and lr.numel() != 1 or isinstance(lr, (list, tuple)) \
            or (hasattr(lr, "ndim") and getattr(lr, "ndim", 0) > 0):
        eta = _checks.as_tensor(lr, "lr")
        if bool((eta <= 0).any()):
            raise ValueError("lr must be positive")
        return 2.0 / (m * eta)
    return 2.0 / (m * _checks.positive(lr, "lr"))


def _trained_names(net, wrt):
    """Names of the parameters the Hessian is taken in, in the order of the flattened vector."""
    if wrt is None:
        fixed = bool(getattr(net, "fixed_inner", False))
        return ("W2", "b") if fixed else _PARAM_NAMES
    if isinstance(wrt, str):
        wrt = (wrt,)
    if not isinstance(wrt, (tuple, list)):
        raise TypeError(f"wrt must be a sequence of parameter names, got {type(wrt).__name__}")
    wrt = tuple(wrt)
    bad = [k for k in wrt if k not in _PARAM_NAMES]
    if bad or not wrt or len(set(wrt)) != len(wrt):
        raise ValueError(f"wrt must be a non-empty subset of {_PARAM_NAMES} without repeats, got {wrt}")
    return wrt


def _orthogonalize(Q, v):
    """Remove from v (K, P) its components along the orthonormal basis Q (j, K, P), twice."""
    for _ in range(2):
        v = v - torch.einsum("jk,jkp->kp", torch.einsum("jkp,kp->jk", Q, v), Q)
    return v


def _random_vectors(K, P, generator, like):
    g_device = generator.device if generator is not None else "cpu"
    v = torch.randn(K, P, generator=generator, dtype=torch.float64, device=g_device)
    return v.to(dtype=like.dtype, device=like.device)


def _lanczos(hvp, v0, iters, tol, generator):
    """Batched Lanczos with full reorthogonalisation for the top eigenpair of K symmetric blocks.

    hvp: (K, P) -> (K, P). v0: (K, P) start vectors. Stops when every member's Ritz residual
    ``beta_j |s_j|`` (the exact norm of ``H y - theta y``) is ``<= tol * max|Ritz value|``, or
    after ``min(iters, P)`` products.
    Returns ``(theta, y, done)``: (K,) top Ritz values, (K, P) unit Ritz vectors and whether
    every member met the tolerance.
    """
    K, P = v0.shape
    eps, tiny = torch.finfo(v0.dtype).eps, torch.finfo(v0.dtype).tiny
    q = v0 / v0.norm(dim=1, keepdim=True)
    basis, alphas, betas = [], [], []
    q_prev, beta_prev = torch.zeros_like(q), torch.zeros_like(q[:, 0])
    for j in range(min(iters, P)):
        basis.append(q)
        w = hvp(q)
        alpha = (w * q).sum(1)
        Q = torch.stack(basis)                                              # (j+1, K, P)
        w = _orthogonalize(Q, w - alpha[:, None] * q - beta_prev[:, None] * q_prev)
        beta = w.norm(dim=1)
        alphas.append(alpha)
        T = torch.diag_embed(torch.stack(alphas, 1))
        if betas:
            off = torch.stack(betas, 1)
            T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        evals, evecs = torch.linalg.eigh(T)
        scale = evals.abs().amax(1).clamp_min(tiny)
        resid = beta * evecs[:, -1, -1].abs()
        # beta ~ 0: the Krylov space is (almost) invariant. Its Ritz pairs are exact, but the top
        # eigenvector may be orthogonal to it, so such a member is not done: it continues with a
        # fresh random direction orthogonal to the basis.
        broke = beta <= 1e3 * eps * scale
        done = bool(((resid <= tol * scale) & ~broke).all()) or j + 1 == P
        if done or j + 1 == iters:
            break
        if bool(broke.any()):
            fresh = _orthogonalize(Q, _random_vectors(K, P, generator, q))
            fresh = fresh / fresh.norm(dim=1, keepdim=True)
            beta = torch.where(broke, torch.zeros_like(beta), beta)
            q_next = torch.where(broke[:, None], fresh, w / beta.clamp_min(tiny)[:, None])
        else:
            q_next = w / beta[:, None]
        betas.append(beta)
        q_prev, q, beta_prev = q, q_next, beta
    y = torch.einsum("jkp,kj->kp", torch.stack(basis), evecs[:, :, -1])
    return evals[:, -1], y / y.norm(dim=1, keepdim=True), done


def sharpness(net, data, mu, sigma, *, iters=100, tol=1e-6, init=None, generator=None,
              return_vector=False, wrt=None):
    r"""Top Hessian eigenvalue ``lambda_max(Hessian R_n(theta))`` per ensemble member (Section 4, eq. 8).

    The Hessian is that of the exact expected risk :func:`relu_net_risk` (a mean over the data),
    taken with respect to the *trained* parameters: ``(W2, b)`` for the theory model
    (``net.fixed_inner``), ``(W1, b, W2)`` for the experiment model (the order of
    ``net.trained_parameters()``), or the names listed in ``wrt``, in that order.
    Hessian-vector products come from double backward on the summed risk of all members: the
    members are independent, so the Hessian is block diagonal and one product serves them all.
    A batched Lanczos iteration (full reorthogonalisation) returns the largest algebraic
    eigenvalue; it stops when every member's Ritz residual ``|H y - lambda y|`` is below
    ``tol * |lambda|`` (tol is raised to 10 machine epsilons of the dtype), or after ``iters``
    products with a ``RuntimeWarning`` (the values are then Ritz values, lower bounds of
    ``lambda_max``). Compare with :func:`stability_threshold`.

    net: a 1-D TwoLayerScoreNet (or tuple ``(W1, b, W2)``, then ``wrt`` defaults to all three).
    data: (n,), or (K, n) per member for an ensemble; mu, sigma: numbers or (K,) per member (as
    in :func:`relu_net_risk`). init: warm-start vector, ``(P,)`` or ``(K, P)`` in the layout of the returned
    vector: for each member the trained parameters flattened and concatenated in the order above
    (e.g. ``W2`` then ``b`` for the theory model, ``P = 2m``). generator: draws the random start
    vector (and fresh directions if the Krylov space becomes invariant).
    Returns a 0-d tensor (single net) or ``(K,)``; with ``return_vector=True`` also the unit
    eigenvector, ``(P,)`` or ``(K, P)``. The net is not modified.
    Only 1-D nets: ``d > 1`` raises ``NotImplementedError`` (no closed form, and a Monte-Carlo
    Hessian would drop the Dirac part of ``ReLU''``, see :func:`relu_net_risk`).
    """
    params = _get_params(net, "net")
    ensemble, m, d = _layout(params, "net")
    if d != 1:
        raise NotImplementedError("sharpness is exact only for 1-D nets (closed-form risk); "
                                  f"got dim = {d}")
    iters = _checks.integer(iters, "iters", minimum=1)
    tol = _checks.positive(tol, "tol")
    _checks.generator_or_none(generator)
    names = _trained_names(net, wrt)
    if ensemble is None:
        params = tuple(p[None] for p in params)
    K = params[0].shape[0]
    leaves = {k: p.detach().clone().requires_grad_(k in names) for k, p in zip(_PARAM_NAMES, params)}
    trained = [leaves[k] for k in names]
    sizes = [p[0].numel() for p in trained]
    P = sum(sizes)
    dtype, device = trained[0].dtype, trained[0].device

    with torch.enable_grad():
        risk = relu_net_risk(leaves, data, mu, sigma)
        grads = torch.autograd.grad(risk.sum(), trained, create_graph=True)
    if not (bool(torch.isfinite(risk.detach()).all())
            and all(bool(torch.isfinite(g.detach()).all()) for g in grads)):
        raise FloatingPointError(f"sharpness: the risk or its gradient overflows in {dtype} at "
                                 f"these parameters and noise level; use float64")

    def hvp(v):
        chunks = torch.split(v, sizes, dim=1)
        outs = [c.reshape(p.shape) for c, p in zip(chunks, trained)]
        hv = torch.autograd.grad(grads, trained, grad_outputs=outs, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(p) if h is None else h for h, p in zip(hv, trained)]
        out = torch.cat([h.reshape(K, -1) for h in hv], 1).detach()
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"sharpness: a Hessian-vector product overflows in {dtype}; "
                                     f"use float64")
        return out

    if init is None:
        v0 = _random_vectors(K, P, generator, trained[0])
    else:
        v0 = _checks.as_tensor(init, "init", dtype=dtype, device=device)
        expected = (P,) if ensemble is None else (K, P)
        if tuple(v0.shape) != expected:
            raise ValueError(f"init must have shape {expected}, got {tuple(v0.shape)}")
        v0 = v0.reshape(K, P)
        if bool((v0.norm(dim=1) == 0).any()):
            raise ValueError("init must be non-zero for every member")
    tol = max(tol, 10 * torch.finfo(dtype).eps)      # Hessian-vector products are only this exact
    theta, vec, done = _lanczos(hvp, v0, iters, tol, generator)
    if not done:
        warnings.warn(f"sharpness: Lanczos did not reach tol={tol:g} in iters={iters} steps for every "
                      "member; the values returned are Ritz values, lower bounds of lambda_max "
                      "(raise iters, or pass the returned vector as init)", RuntimeWarning, stacklevel=2)
    if ensemble is None:
        theta, vec = theta[0], vec[0]
    return (theta, vec) if return_vector else theta


# ----------------------------------------------------------------------------------------------
# the Gauss-Newton part of the Hessian
# ----------------------------------------------------------------------------------------------

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
    :func:`relu_net_risk` is ``G`` plus the residual part ``(2/n) sum_i E[g_i(Y) d^2 s/d theta^2]``
    (which holds the Dirac terms of ``ReLU''``, see :func:`relu_net_risk`). ``G`` is the Hessian of
    the risk with ``s_theta`` replaced by its linearisation in ``theta``: positive semi-definite,
    independent of the residual, the matrix whose top eigenvalue the proof of Prop. 6 bounds from
    below by ``TV_pi`` (chapter 7).

    Closed form: every entry of ``J`` is ``(c0 + c1 y) 1{unit l active at y}`` (``d s/d a_l =
    (w_l y + b_l)/m``, ``d s/d b_l = a_l/m``, ``d s/d w_l = a_l y/m``), a unit is active on a
    half-line, two half-lines meet in an interval, and the Gaussian moments
    ``E[Y^j 1{lo < Y < hi}]`` (j <= 2) are explicit in ``Phi`` and ``phi``. Float64 is
    recommended. Cost ``O(K n m^2)`` time and ``O(K m^2)`` memory.

    net: a 1-D TwoLayerScoreNet or ``(W1, b, W2)``; the parameter order is that of
    :func:`sharpness` (``wrt``; theory model: ``W2`` then ``b``, i.e. ``(a, b)``). data: (n,) or
    per-member (K, n). Returns ``(P, P)`` or ``(K, P, P)``.
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


# ----------------------------------------------------------------------------------------------
# full-batch gradient descent on the exact risk, and the perturbation test of linear stability
# ----------------------------------------------------------------------------------------------

class GDResult(NamedTuple):
    """What :func:`full_batch_gd` returns."""

    risk_history: torch.Tensor   #: (num_logs, K) exact risk R_n at each logged step ((num_logs,) single)
    log_steps: torch.Tensor      #: (num_logs,) int64: steps completed at each log (0 = the start)
    diverged: torch.Tensor       #: (K,) bool (shape () single): frozen after a non-finite risk


def _lr_per_member(lr, K, single):
    eta = _checks.as_tensor(lr, "lr", dtype=torch.float64)
    if eta.dim() == 0 or eta.numel() == 1:
        eta = eta.reshape(1).expand(K)
    elif single or eta.dim() != 1 or eta.shape[0] != K:
        raise ValueError(f"lr must be a number or a (K,) = ({K},) sequence for an ensemble of K, "
                         f"got shape {tuple(eta.shape)}")
    if bool((eta <= 0).any()):
        raise ValueError("lr must be positive")
    return eta


def full_batch_gd(net, data, mu, sigma, *, lr, steps, log_every=None) -> GDResult:
    r"""Full-batch gradient descent on the exact risk: ``theta <- theta - m eta grad R_n(theta)``.

    The same step as :func:`dsmlib.train_sgd` (the ``m eta`` scaling) with the exact gradient of
    :func:`relu_net_risk` instead of a mini-batch estimate: no SGD noise, so near a minimum the
    linearised iteration is the quadratic example of chapter 5 and diverges exactly when
    ``lambda_max > 2 / (m eta)``. Theory model (``net.fixed_inner``): only ``(W2, b)`` move and
    ``W2`` is clamped to ``[-A, A]`` after each step. A member whose risk becomes non-finite is
    frozen at its last finite parameters and flagged. net: a 1-D TwoLayerScoreNet (one or an
    ensemble of K), trained in place. data, mu, sigma: as in :func:`relu_net_risk` (shared, or per
    member for an ensemble). lr: a number or (K,).
    log_every: default ``ceil(steps / 100)``. Cost per step ``O(K n m + K m log m)``.
    Returns :class:`GDResult`.
    """
    from .networks import TwoLayerScoreNet
    if not isinstance(net, TwoLayerScoreNet):
        raise TypeError(f"net must be a TwoLayerScoreNet, got {type(net).__name__}")
    if net.dim != 1:
        raise NotImplementedError(f"full_batch_gd uses the closed-form 1-D risk; got dim = {net.dim}")
    steps = _checks.integer(steps, "steps", minimum=0)
    log_every = max(1, math.ceil(steps / 100)) if log_every is None else \
        _checks.integer(log_every, "log_every", minimum=1)
    single = net.ensemble is None
    K = 1 if single else net.ensemble
    eta = _lr_per_member(lr, K, single)
    leaves = dict(zip(_PARAM_NAMES, (p.detach().clone() for p in net._stacked())))
    names = _trained_names(net, None)
    trained = [leaves[k].requires_grad_() for k in names]
    shape = lambda p: (-1,) + (1,) * (p.dim() - 1)                          # noqa: E731
    factors = [(net.width * eta).to(p).reshape(shape(p)) for p in trained]
    diverged = torch.zeros(K, dtype=torch.bool, device=leaves["W2"].device)
    snapshot = [p.detach().clone() for p in trained]
    hist, at = [], []

    def risk():                 # (K,); per-member data and noise levels as in relu_net_risk
        return relu_net_risk(leaves, data, mu, sigma)

    for j in range(steps + 1):
        with torch.enable_grad():
            R = risk()
        new = ~torch.isfinite(R.detach()) & ~diverged
        if bool(new.any()):                  # freeze at the last finite parameters
            diverged |= new
            with torch.no_grad():
                for p, old in zip(trained, snapshot):
                    p.copy_(torch.where(new.reshape(shape(p)), old, p))
            with torch.enable_grad():
                R = risk()
        if j % log_every == 0 or j == steps:
            hist.append(torch.where(diverged, torch.full_like(R, math.nan), R.detach()))
            at.append(j)
        if j == steps:
            break
        live = torch.where(diverged, torch.zeros_like(R), R)
        grads = torch.autograd.grad(live.sum(), trained, allow_unused=True)
        with torch.no_grad():
            for p, old, g, f in zip(trained, snapshot, grads, factors):
                old.copy_(p)
                if g is not None:
                    p -= f * g
            if net.fixed_inner:
                leaves["W2"].clamp_(-net.bound, net.bound)
    with torch.no_grad():
        for k in names:
            getattr(net, k).copy_(leaves[k][0] if single else leaves[k])
    hist = torch.stack(hist)
    return GDResult(hist[:, 0] if single else hist, torch.tensor(at, dtype=torch.long),
                    diverged[0].cpu() if single else diverged.cpu())


class PerturbationResult(NamedTuple):
    """What :func:`perturbation_test` returns ((T,) or (T, K) tensors, T recorded times)."""

    steps: torch.Tensor       #: (T,) steps completed (0 = just after the perturbation)
    distance: torch.Tensor    #: (T, K) ||theta'_j - theta_j||; inf once either run diverged
    risk: torch.Tensor        #: (T, K) exact risk of the plain run (NaN once it diverged)
    risk_perturbed: torch.Tensor  #: (T, K) exact risk of the perturbed run (NaN once it diverged)
    diverged: torch.Tensor    #: (K,) bool: the plain or the perturbed run diverged


def perturbation_test(net, data, mu, sigma, *, lr, steps, radius, record_every=None,
                      full_batch=False, batch_size=50, generator=None) -> PerturbationResult:
    r"""Does SGD (or GD) come back after a small push? The empirical side of linear stability.

    Runs the training from ``theta`` (the net's parameters, not modified) and from
    ``theta + radius u`` (``u`` a random unit vector in the trained parameters, per member) side
    by side, with the **same** mini-batches and noise (an ensemble of 2K members whose generators
    are pairwise equal), and records ``||theta'_j - theta_j||``. For SGD their difference follows
    ``(I - m eta H_j)`` products of the mini-batch Hessians (to first order): it shrinks or stays
    (flat directions, dead units) near a linearly stable point and grows geometrically near an
    unstable one. ``full_batch=True`` uses :func:`full_batch_gd` (no noise, so ``generator`` only
    draws ``u``). A run that diverges (a non-finite loss or parameters beyond ``train_sgd``'s
    threshold) is frozen by the trainer; it is flagged in ``diverged``, its distance is reported
    as ``inf`` and its risk as NaN from then on. The theory model's perturbed start is clamped
    to ``|a_l| <= A`` (so the initial distance, ``distance[0]``, can be below ``radius`` at the
    bound). net: a 1-D TwoLayerScoreNet (K members, or one). data: (n,). lr: a number or (K,).
    steps, record_every (default ``ceil(steps / 20)``), batch_size: as in ``train_sgd``.
    generator: draws ``u`` and the K noise seeds. Returns :class:`PerturbationResult`.
    """
    from .networks import TwoLayerScoreNet, make_generators
    from .training import train_sgd
    if not isinstance(net, TwoLayerScoreNet):
        raise TypeError(f"net must be a TwoLayerScoreNet, got {type(net).__name__}")
    _checks.finite_parameters("net", **dict(zip(_PARAM_NAMES, net._stacked())))
    radius = _checks.positive(radius, "radius")
    steps = _checks.integer(steps, "steps", minimum=1)
    every = max(1, math.ceil(steps / 20)) if record_every is None else \
        _checks.integer(record_every, "record_every", minimum=1)
    _checks.generator_or_none(generator)
    single = net.ensemble is None
    K = 1 if single else net.ensemble
    eta = _lr_per_member(lr, K, single)
    start = dict(zip(_PARAM_NAMES, (p.detach() for p in net._stacked())))
    names = _trained_names(net, None)
    g_dev = "cpu" if generator is None else generator.device
    u = {k: torch.randn(start[k].shape, generator=generator, dtype=torch.float64,
                        device=g_dev).to(start[k]) for k in names}
    norm = torch.sqrt(sum((u[k].reshape(K, -1) ** 2).sum(1) for k in names))      # (K,)
    both = {k: torch.cat([p, p]).clone() for k, p in start.items()}
    for k in names:
        both[k][K:] += radius * u[k] / norm.reshape((-1,) + (1,) * (u[k].dim() - 1))
    if net.fixed_inner:
        both["W2"].clamp_(-net.bound, net.bound)
    if not all(bool(torch.isfinite(t).all()) for t in both.values()):
        raise ValueError(f"radius = {radius:g} pushes the parameters beyond the range of "
                         f"{start['W2'].dtype}")
    pair = TwoLayerScoreNet.from_parameters(both["W1"], both["b"], both["W2"],
                                            fixed_inner=net.fixed_inner, bound=net.bound)
    seeds = torch.randint(0, 2 ** 62, (K,), generator=generator, device=g_dev).tolist()
    gens = make_generators(seeds + seeds)
    lr2 = torch.cat([eta, eta])
    done, rec_steps, dist, r0, r1 = 0, [], [], [], []
    gone = torch.zeros(2 * K, dtype=torch.bool)

    def record():
        P = [getattr(pair, k).detach().reshape(2 * K, -1) for k in names]
        diff = torch.cat([p[K:] - p[:K] for p in P], 1).norm(dim=1)
        R = relu_net_risk(pair, data, mu, sigma).detach()
        R = torch.where(gone.to(R.device), torch.full_like(R, math.nan), R)
        either = (gone[:K] | gone[K:]).to(diff.device)
        rec_steps.append(done)
        dist.append(torch.where(either, torch.full_like(diff, math.inf), diff))
        r0.append(R[:K])
        r1.append(R[K:])

    record()
    while done < steps:
        chunk = min(every, steps - done)
        if full_batch:
            res = full_batch_gd(pair, data, mu, sigma, lr=lr2, steps=chunk, log_every=chunk)
        else:
            res = train_sgd(pair, data, mu, sigma, lr=lr2, steps=chunk, batch_size=batch_size,
                            generator=gens, progress=False)
        gone |= res.diverged.cpu()
        done += chunk
        record()
    dist, r0, r1 = (torch.stack(v) for v in (dist, r0, r1))
    diverged = gone[:K] | gone[K:]
    if single:
        dist, r0, r1, diverged = dist[:, 0], r0[:, 0], r1[:, 0], diverged[0]
    return PerturbationResult(torch.tensor(rec_steps, dtype=torch.long), dist, r0, r1, diverged)

