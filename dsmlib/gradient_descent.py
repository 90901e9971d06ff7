r"""Full-batch gradient descent on the exact 1-D risk and the perturbation test of linear stability.

:func:`full_batch_gd` takes the step of :func:`dsmlib.train_sgd` (``theta <- theta - m eta grad``)
with the exact gradient of :func:`dsmlib.relu_net_risk` (no SGD noise), so near a minimum it
diverges exactly when ``lambda_max > 2 / (m eta)`` (:func:`dsmlib.sharpness`,
:func:`dsmlib.stability_threshold`). :func:`perturbation_test` is the empirical side of linear
stability: it trains ``theta`` and a pushed copy side by side with the same batches and records
their distance. See chapter 5, "Linear stability".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _checks
from .stability import _PARAM_NAMES, _trained_names, relu_net_risk

__all__ = ["full_batch_gd", "GDResult", "perturbation_test", "PerturbationResult"]


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
    :func:`dsmlib.relu_net_risk` instead of a mini-batch estimate: no SGD noise, so near a minimum
    the linearised iteration is the quadratic example of chapter 5 and diverges exactly when
    ``lambda_max > 2 / (m eta)``. Theory model (``net.fixed_inner``): only ``(W2, b)`` move and
    ``W2`` is clamped to ``[-A, A]`` after each step. A member whose risk becomes non-finite is
    frozen at its last finite parameters and flagged. net: a 1-D TwoLayerScoreNet (one or an
    ensemble of K), trained in place. data, mu, sigma: as in :func:`dsmlib.relu_net_risk` (shared,
    or per member for an ensemble). lr: a number or (K,).
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
