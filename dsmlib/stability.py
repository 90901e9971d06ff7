r"""Linear stability of SGD on the DSM risk: the exact 1-D risk of a ReLU net, its Hessian, sharpness.

Paper Section 4: SGD ``theta <- theta - m eta grad R_hat(theta)`` can only settle at a minimum
``theta*`` that is linearly stable, and then (eq. 8, Mulayoff, Michaeli & Soudry 2021, Lemma 1)

    lambda_max(Hessian R_n(theta*)) <= 2 / (m eta).

To measure ``lambda_max`` we need the Hessian of the *expected* risk (the expectation over the noise
kept, as in the paper). For a two-layer ReLU net in 1-D this expectation has a closed form
(:func:`relu_net_risk`), so the Hessian obtained by autograd is exact; :func:`sharpness` runs a
batched Lanczos iteration on Hessian-vector products of it. See chapter 5, "Linear stability".

This module holds the exact risk, the sharpness and the threshold ``2 / (m eta)``, and the
parameter helpers they share with :mod:`dsmlib.gauss_newton` (the Gauss-Newton part of the
Hessian) and :mod:`dsmlib.gradient_descent` (full-batch GD on the exact risk, the perturbation
test).
"""

from __future__ import annotations

import math
import warnings

import torch

from . import _checks

__all__ = ["relu_net_risk", "sharpness", "stability_threshold"]

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
