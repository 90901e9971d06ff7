r"""What keeps SGD away from ``s*``: collapse, SGD noise and stability-selected smoothing (1-D).

The large-learning-rate effect of the paper's Fig. 2 (the excess risk grows with eta) can have three
causes, which this driver measures separately on the networks of the Fig. 2 protocol (30 data sets
of n = 20 points from N(0, 1), two noise levels, width 1000, batch 50, the paper's eta and steps):

* **collapse**: every ReLU unit off on the data hull ``[mu x_(1), mu x_(n)]`` (the score is 0 there,
  trivially flat and trivially far from ``s*``); the fraction of units still active;
* **SGD noise**: at a fixed learning rate SGD does not converge; with fresh noise in every batch the
  DSM risk has no interpolating minimum, so the last iterate fluctuates around a minimum by O(eta).
  Measured by the excess risk of the last iterate against (a) the Polyak-Ruppert average of the last
  ``average_fraction`` of the steps, (b) a learning-rate decay from the last iterate (eta / 10, then
  eta / 100, ``decay_steps`` steps each), and (c) the control for (b): the same gradient-flow time
  ``eta x steps`` at the original eta (``decay_steps (1/10 + 1/100)`` steps), so that the decay and
  its control differ only in the size of the steps, not in how far they train. Whether the decayed
  network is still linearly stable at the original eta (sharpness below ``2/(m eta)``) tells
  whether what the decay gains was forbidden by stability at eta, or only hidden by noise;
* **stability-selected smoothing** (the paper's mechanism): what remains after the decay among live
  networks, with the exact weighted total variation ``TV_pi`` and the number of kinks inside the data
  range, beside ``TV_pi(s*)`` and the sharpness ratio ``lambda_max / (2 / (m eta))``.

Along training (the trajectory) the same quantities are recorded at checkpoints. The checkpoints are
exact points of the Fig. 2 trajectory: the trainer draws its random numbers in blocks of 256 steps,
so a run of k steps ends at the parameters after step k of any longer run with the same generators;
early checkpoints (k < 256) are fresh runs of k steps from the initialisation, later ones are
multiples of 256 reached by continuing in chunks. The final networks are those of :func:`fig2`
with the same seeds.

The same questions for the d = 2 networks of Fig. 3 (:func:`dsmlib.experiments.mechanism2d`) are
in :mod:`dsmlib.experiments.decomposition2d`.
See the chapter "What keeps SGD away from s*".
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..networks import TwoLayerScoreNet, active_fraction
from ..risk import excess_risk
from ..stability import sharpness, stability_threshold
from ..theory import weighted_tv
from ..training import train_sgd
from ._common import (_DATA, _EVAL, _INIT, _SHARPNESS_TOL, _TRAIN, _check_common, _check_lrs,
                      _generator, _progress)
from .sweeps import _schedule

__all__ = ["MechanismConfig", "mechanism", "checkpoint_steps", "control_steps", "decompose",
           "collapse_by_step"]

_BLOCK = 256            # the trainer's random block (see dsmlib.training)
_EARLY = (2, 8, 32, 128)   # checkpoints before the first block ends


@dataclass(frozen=True)
class MechanismConfig:
    """The decomposition experiment (defaults: the paper's Fig. 2 protocol in d = 1, 30 data sets).

    dim, times, lrs, steps, batch_size, width, n, seeds, reduction: as :class:`Fig2Config`
    (simulation s uses the data, initialisation and batches of Fig. 2's simulation s, so the final
    networks coincide). In d > 1 there is no weighted total variation and no exact Hessian: the
    ``tv``, ``kinks`` and ``sharpness`` measurements are NaN, and the excess risk is a Monte-Carlo
    average with ``noise_draws`` draws per training point (Fig. 2 uses 5000).
    average_fraction: the Polyak window, the last fraction of the steps (rounded to whole blocks).
    decay: divisors of eta in the successive decay phases, ``decay_steps`` steps each (the control
    continues at eta for the same gradient-flow time, ``round(decay_steps * sum(1 / decay))``
    steps).
    checkpoints: number of trajectory checkpoints from step 256 to the start of the Polyak window
    (log-spaced, multiples of 256), besides step 0, the early steps 2, 8, 32, 128 and the end.
    trajectory_sharpness: also compute the sharpness at every checkpoint (the costliest part).
    """

    scale: str = "paper"
    dim: int = 1
    n: int = 20
    times: tuple = (0.05, 0.2)
    lrs: tuple = (0.5, 0.1, 0.05, 0.01)
    steps: tuple = (5_000, 25_000, 50_000, 200_000)
    batch_size: int = 50
    width: int = 1000
    reduction: str = "mean_all"
    seeds: tuple = tuple(range(30))
    noise_draws: int = 1000
    average_fraction: float = 0.2
    decay: tuple = (10.0, 100.0)
    decay_steps: int = 10_000
    checkpoints: int = 10
    trajectory_sharpness: bool = True
    quadrature_nodes: int = 1201
    sharpness_iters: int = 100
    tv_grid: int = 1001
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        _check_lrs(self.lrs, self.steps)
        if not 0 < self.average_fraction < 1:
            raise ValueError(f"average_fraction must lie in (0, 1), got {self.average_fraction!r}")
        if not self.decay or any(not f > 1 for f in self.decay):
            raise ValueError(f"decay must be a non-empty tuple of divisors > 1, got {self.decay!r}")
        if int(self.decay_steps) != self.decay_steps or self.decay_steps < 1:
            raise ValueError(f"decay_steps must be a positive integer, got {self.decay_steps!r}")
        if int(self.checkpoints) != self.checkpoints or self.checkpoints < 1:
            raise ValueError(f"checkpoints must be a positive integer, got {self.checkpoints!r}")
        if int(self.dim) != self.dim or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")
        if self.reduction not in ("mean", "mean_all"):
            raise ValueError(f"reduction must be 'mean' or 'mean_all', got {self.reduction!r}")
        if any(s < 2 * _BLOCK for s in self.steps):
            raise ValueError(f"steps must be at least {2 * _BLOCK} (two random blocks), "
                             f"got {self.steps!r}")

    @classmethod
    def preset(cls, scale: str, dim: int = 1) -> "MechanismConfig":
        """The paper's Fig. 2 protocol (``"paper"``) or the book's reduced one (``"book"``: in 1-D
        a quarter of the steps, as the book-scale Fig. 2, and 6 data sets; in d > 1 a
        tenth of the steps and 4 data sets, as its d = 10 run)."""
        if scale == "paper":
            return cls(dim=dim)
        if scale == "book":
            if dim == 1:
                return cls(scale="book", steps=(1_250, 6_250, 12_500, 50_000),
                           seeds=tuple(range(6)), decay_steps=2_500, checkpoints=6,
                           trajectory_sharpness=False, sharpness_iters=60)
            return cls(scale="book", dim=dim, steps=(512, 2_560, 5_120, 20_480),
                       seeds=tuple(range(4)), decay_steps=1_000, checkpoints=5, noise_draws=300)
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")


def checkpoint_steps(steps: int, average_fraction: float, count: int) -> np.ndarray:
    """Trajectory checkpoints of a run of ``steps`` steps (sorted, unique, int64).

    0, the early steps 2, 8, 32, 128, ``count`` log-spaced multiples of 256 from 256 up to the start
    ``b`` of the Polyak window (``b = 256 floor((1 - average_fraction) steps / 256)``, itself a
    checkpoint), and ``steps``. Every checkpoint after 128 is a multiple of 256 except the last.
    """
    b = _BLOCK * int((1.0 - average_fraction) * steps // _BLOCK)
    b = max(b, _BLOCK)
    blocks = np.unique(np.round(np.geomspace(1, b // _BLOCK, count)).astype(np.int64)) * _BLOCK
    return np.unique(np.concatenate([[0], _EARLY, blocks, [b, steps]])).astype(np.int64)


def control_steps(cfg) -> int:
    """Steps of the control branch: the decay's gradient-flow time at the original learning rate."""
    return max(1, round(cfg.decay_steps * sum(1.0 / f for f in cfg.decay)))


def _members(cfg):
    """Member k = (t, s) of every lr group: time index, seed index, mu_k, sigma_k, and the data
    (S, n) in 1-D, (S, n, d) otherwise."""
    mus, sigmas = _schedule(cfg.times)
    T, S = len(mus), len(cfg.seeds)
    t_idx, s_idx = np.repeat(np.arange(T), S), np.tile(np.arange(S), T)
    data = np.stack([torch.randn(cfg.n, cfg.dim, generator=_generator(s, _DATA, cfg.dim),
                                 dtype=torch.float64).numpy() for s in cfg.seeds])
    return t_idx, s_idx, mus, sigmas, data[..., 0] if cfg.dim == 1 else data


def _new_net(cfg, s_idx):
    init = [_generator(cfg.seeds[s], _INIT) for s in s_idx]
    return TwoLayerScoreNet(cfg.width, cfg.dim, ensemble=len(s_idx), generator=init,
                            device=cfg.device)


def _train_gens(cfg, t_idx, s_idx):
    return [_generator(cfg.seeds[s], _TRAIN, t) for t, s in zip(t_idx, s_idx)]


def _float64(net):
    W1, b, W2 = (p.detach().to("cpu", torch.float64) for p in (net.W1, net.b, net.W2))
    return TwoLayerScoreNet.from_parameters(W1, b, W2)


def _step_lr(cfg, lr):
    """The learning rate of the batch-mean loss that takes cfg's steps (``lr / d`` for mean_all)."""
    return float(lr) / cfg.dim if cfg.reduction == "mean_all" else float(lr)


class _Evaluator:
    """Per-member measurements of an ensemble (float64) on its members' data and noise levels."""

    def __init__(self, cfg, x, mu_k, sigma_k, lr):
        self.cfg, self.x, self.mu, self.sigma = cfg, x, mu_k, sigma_k
        self.edge = stability_threshold(cfg.width, _step_lr(cfg, lr))

    def __call__(self, net, *, with_sharpness, seed_keys):
        cfg, x, mu, sigma = self.cfg, self.x, self.mu, self.sigma
        net = _float64(net)
        out = {}
        K = x.shape[0]
        if cfg.dim > 1:       # Monte Carlo; no TV_pi, kinks or exact Hessian in d > 1
            with torch.no_grad():
                out["excess"] = excess_risk(net, x, mu, sigma, num_samples=cfg.noise_draws,
                                            generator=_generator(*seed_keys)).numpy()
                out["active"] = active_fraction(net, x, mu).numpy()
            for q in ("tv", "kinks", "sharpness", "ratio"):
                out[q] = np.full(K, math.nan)
            return out
        with torch.no_grad():
            out["excess"] = excess_risk(net, x, mu, sigma, num_nodes=cfg.quadrature_nodes).numpy()
            out["active"] = active_fraction(net, x, mu).numpy()
            tv, inside = [], []
            for k in range(x.shape[0]):
                one, m_k, s_k = net.member(k), float(mu[k]), float(sigma[k])
                tv.append(float(weighted_tv(one, x[k], m_k, s_k)))
                kinks = one.kinks()
                lo, hi = m_k * x[k].min(), m_k * x[k].max()
                inside.append(int(((kinks > lo) & (kinks < hi)).sum()))
            out["tv"], out["kinks"] = np.array(tv), np.array(inside)
        out["sharpness"] = np.full(x.shape[0], math.nan)
        if with_sharpness and cfg.sharpness_iters > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # Ritz values: lower bounds
                out["sharpness"] = sharpness(net, x, mu, sigma, iters=cfg.sharpness_iters,
                                             tol=_SHARPNESS_TOL,
                                             generator=_generator(*seed_keys)).numpy()
        out["ratio"] = out["sharpness"] / self.edge
        return out


def _continue(net, x, mu_k, sigma_k, lr, steps, gens, cfg, **kw):
    return train_sgd(net, x, mu_k, sigma_k, lr=lr, steps=int(steps), batch_size=cfg.batch_size,
                     reduction=cfg.reduction, generator=gens, device=cfg.device, progress=False,
                     **kw)


def _clone(net):
    W1, b, W2 = (p.detach().clone() for p in (net.W1, net.b, net.W2))
    return TwoLayerScoreNet.from_parameters(W1, b, W2)


def _clone_gens(gens):
    out = []
    for g in gens:
        c = torch.Generator(device=g.device)
        c.set_state(g.get_state())
        out.append(c)
    return out


class _Freezer:
    """Keeps diverged members frozen across successive train_sgd calls.

    train_sgd freezes a member that diverges until the end of *that* call; a later call would train
    it again from its frozen parameters. ``update(net, diverged)`` after each call puts the members
    frozen earlier back to their frozen parameters and records the newly diverged ones, so that
    chunked training ends where one long call would (the Fig. 2 networks, diverged ones included).
    """

    def __init__(self, net, mask=None):
        self.mask = np.zeros(net.ensemble, dtype=bool) if mask is None else mask.copy()
        self.params = [p.detach().clone() for p in (net.W1, net.b, net.W2)]

    def restore(self, net):
        if self.mask.any():
            idx = torch.as_tensor(np.flatnonzero(self.mask))
            with torch.no_grad():
                for p, q in zip((net.W1, net.b, net.W2), self.params):
                    p[idx] = q[idx].to(p)

    def update(self, net, diverged):
        self.restore(net)
        new = np.asarray(diverged, dtype=bool) & ~self.mask
        if new.any():
            idx = torch.as_tensor(np.flatnonzero(new))
            for p, q in zip((net.W1, net.b, net.W2), self.params):
                q[idx] = p.detach()[idx]
        self.mask |= new


def _group(cfg, li, members, progress):
    """Train, branch and measure the ensemble of learning rate ``lrs[li]`` (all (t, s) members)."""
    t_idx, s_idx, mus, sigmas, data = members
    lr, steps = float(cfg.lrs[li]), int(cfg.steps[li])
    K = len(t_idx)
    x = torch.as_tensor(data[s_idx])                                  # (K, n) or (K, n, d) float64
    x32 = x.to(torch.float32)
    mu_k = torch.as_tensor(mus[t_idx])
    sigma_k = torch.as_tensor(sigmas[t_idx])
    evaluate = _Evaluator(cfg, x, mu_k, sigma_k, lr)
    checks = checkpoint_steps(steps, cfg.average_fraction, cfg.checkpoints)
    C = len(checks)
    traj = {k: np.full((C, K), math.nan) for k in ("excess", "active", "tv", "kinks", "ratio")}
    t0 = time.perf_counter()

    def record(c, net):
        ev = evaluate(net, with_sharpness=cfg.trajectory_sharpness, seed_keys=(li, _EVAL, c))
        for k in traj:
            traj[k][c] = ev[k]

    # early checkpoints: fresh runs from the initialisation (exact points of the trajectory)
    for c, k in enumerate(checks):
        if k >= _BLOCK:
            break
        net = _new_net(cfg, s_idx)
        if k:
            _continue(net, x32, mu_k, sigma_k, lr, k, _train_gens(cfg, t_idx, s_idx), cfg)
        record(c, net)
    # the main run, in chunks of whole blocks; the last chunk carries the Polyak average
    net, gens = _new_net(cfg, s_idx), _train_gens(cfg, t_idx, s_idx)
    frozen = _Freezer(net)
    done, res = 0, None
    for c in range(C):
        k = int(checks[c])
        if k < _BLOCK:
            continue
        last = c == C - 1
        res = _continue(net, x32, mu_k, sigma_k, lr, k - done, gens, cfg,
                        average_last=(k - done) if last else None)
        frozen.update(net, res.diverged.numpy())
        done = k
        if not last:
            record(c, net)
    diverged = frozen.mask.copy()
    frozen.restore(res.averaged)
    final = evaluate(net, with_sharpness=True, seed_keys=(li, _EVAL, C))
    for key in traj:
        traj[key][C - 1] = final[key]
    averaged = evaluate(res.averaged, with_sharpness=False, seed_keys=(li, _EVAL, C + 1))
    # branches from the last iterate, with common random numbers: decay vs the same time at eta
    state = _clone_gens(gens)
    decayed = _clone(net)
    frozen_decay = _Freezer(decayed, diverged)
    for f in cfg.decay:
        d = _continue(decayed, x32, mu_k, sigma_k, lr / f, cfg.decay_steps, gens, cfg)
        frozen_decay.update(decayed, d.diverged.numpy())
    diverged = frozen_decay.mask.copy()
    control = _clone(net)
    frozen_control = _Freezer(control, frozen.mask)
    ctrl = _continue(control, x32, mu_k, sigma_k, lr, control_steps(cfg), state, cfg)
    frozen_control.update(control, ctrl.diverged.numpy())
    after = evaluate(decayed, with_sharpness=True, seed_keys=(li, _EVAL, C + 2))
    cont = evaluate(control, with_sharpness=False, seed_keys=(li, _EVAL, C + 3))
    seconds = time.perf_counter() - t0
    return {"final": final, "averaged": averaged, "decayed": after, "continued": cont,
            "diverged": diverged, "control_diverged": frozen_control.mask & ~frozen.mask,
            "traj": traj,
            "checks": checks, "seconds": seconds}


def mechanism(config: MechanismConfig | None = None, *, progress: bool = False) -> dict:
    r"""Collapse, SGD noise and smoothing of the Fig. 2 networks (d = 1), end point and trajectory.

    Returns a dict of NumPy arrays, with L = len(lrs), T = len(times), S = len(seeds) and C the
    number of checkpoints (the same C for every lr; ``checkpoints`` (L, C) gives the steps):

    - at the end of training, ``{q}_{state}`` (L, T, S) for q in ``excess`` (excess risk),
      ``active`` (fraction of units active on the data hull), ``tv`` (``TV_pi``), ``kinks`` (kinks
      inside the data range), ``sharpness`` and ``ratio`` (= sharpness / (2/(m eta))), and state in
      ``last`` (the last iterate, Fig. 2's network), ``avg`` (Polyak average of the last
      ``average_fraction`` of the steps; no sharpness), ``decay`` (after the learning-rate decay)
      and ``cont`` (the control: the decay's gradient-flow time at eta; no sharpness);
    - ``diverged`` (L, T, S): the network diverged during training or the decay (frozen);
      ``control_diverged`` (L, T, S); ``collapsed`` (L, T, S): not diverged and no unit active at
      the end (``active_last == 0``);
    - trajectory ``traj_{q}`` (L, T, S, C) for q in excess, active, tv, kinks, ratio (ratio NaN
      when ``trajectory_sharpness`` is off, except at the end);
    - references ``tv_star`` (T, S) = ``TV_pi(s*)``, ``zero_excess`` (T, S) (the score 0);
      ``lrs``, ``steps``, ``times``, ``mu``, ``sigma``, ``seeds``, ``data`` (S, n),
      ``stability_threshold`` (L,) (``2 / (m eta)``, with eta / d for ``"mean_all"`` in d > 1),
      ``train_seconds`` (L,).
    """
    cfg = MechanismConfig() if config is None else config
    members = _members(cfg)
    t_idx, s_idx, mus, sigmas, data = members
    T, S, L = len(cfg.times), len(cfg.seeds), len(cfg.lrs)
    groups = [_group(cfg, li, members, progress)
              for li in _progress(range(L), progress, "learning rates")]
    C = max(len(g["checks"]) for g in groups)
    out = {}
    states = {"last": "final", "avg": "averaged", "decay": "decayed", "cont": "continued"}
    for short, key in states.items():
        for q in ("excess", "active", "tv", "kinks", "sharpness", "ratio"):
            out[f"{q}_{short}"] = np.stack([g[key][q].reshape(T, S) for g in groups])
    out["diverged"] = np.stack([g["diverged"].reshape(T, S) for g in groups])
    out["control_diverged"] = np.stack([g["control_diverged"].reshape(T, S) for g in groups])
    out["collapsed"] = ~out["diverged"] & (out["active_last"] == 0)
    for q in ("excess", "active", "tv", "kinks", "ratio"):
        arr = np.full((L, T, S, C), math.nan)
        for li, g in enumerate(groups):
            c = g["traj"][q].shape[0]
            arr[li, ..., :c] = g["traj"][q].T.reshape(T, S, c)
        out[f"traj_{q}"] = arr
    checks = np.full((L, C), -1, dtype=np.int64)
    for li, g in enumerate(groups):
        checks[li, :len(g["checks"])] = g["checks"]
    out["checkpoints"] = checks
    tv_star = np.full((T, S), math.nan)
    zero = np.zeros((T, S))
    for t in range(T):
        for s in range(S):
            x = torch.as_tensor(data[s])
            mu, sigma = float(mus[t]), float(sigmas[t])
            if cfg.dim == 1:
                tv_star[t, s] = weighted_tv("optimal", x, mu, sigma, grid=cfg.tv_grid)
                kw = {"num_nodes": cfg.quadrature_nodes}
            else:
                kw = {"num_samples": cfg.noise_draws, "generator": _generator(s, _EVAL, t, 7)}
            zero[t, s] = float(excess_risk(lambda y: torch.zeros_like(y), x, mu, sigma, **kw))
    out.update({
        "tv_star": tv_star, "zero_excess": zero,
        "lrs": np.array(cfg.lrs, dtype=np.float64), "steps": np.array(cfg.steps, dtype=np.int64),
        "times": np.array(cfg.times, dtype=np.float64), "mu": mus, "sigma": sigmas,
        "seeds": np.array(cfg.seeds, dtype=np.int64), "data": data,
        "stability_threshold": np.array([stability_threshold(cfg.width, _step_lr(cfg, lr))
                                         for lr in cfg.lrs]),
        "train_seconds": np.array([g["seconds"] for g in groups]),
    })
    return out


def decompose(res: dict, ti: int, *, reference: int = -1) -> dict:
    r"""Split the mean last-iterate excess risk at each eta into additive, paired parts.

    For simulation s at noise level ``ti``, with ``F_s`` the decayed excess risk at the reference
    learning rate (default: the smallest, ``lrs[-1]``) on the same data set, a live network gives

        E_last = F_s + (E_decay - F_s) + (E_last - E_decay)
                 floor    smoothing        SGD noise

    and a collapsed one (no unit active on the data at the end) ``E_last = F_s + (E_last - F_s)``,
    all of it *collapse*: its excess risk is that of the score 0 (a decay may revive units, which is
    not noise removal). Diverged networks are left out (counted in ``diverged``). The "smoothing"
    part is what remains between eta and the reference once the noise is removed: the room for the
    paper's mechanism (stability-selected regularity). Two checks come with it: ``time`` =
    ``E_last - E_cont``, what the control's extra gradient-flow time at eta changes (about 0 if the
    decay's gain is noise removal and not extra training), and ``stable_after`` = the share of
    decayed live networks whose sharpness is still below ``2/(m eta)`` for the original eta (their
    lower excess risk was not forbidden by stability at eta).

    Returns arrays of length L: ``n`` (simulations used), ``diverged``, ``collapsed``,
    ``stable_after``, and for each part in ``total``, ``floor``, ``collapse``, ``smoothing``,
    ``noise`` and for ``time`` its mean over the simulations with a 95% Student-t interval
    (``{part}_lo``, ``{part}_hi``). The means of floor, collapse, smoothing and noise add up to the
    mean of ``total``.
    """
    from ..plotting import mean_ci

    L = len(res["lrs"])
    ref = res["excess_decay"][reference, ti]
    ok_ref = ~res["diverged"][reference, ti]
    parts = ("total", "floor", "collapse", "smoothing", "noise", "time")
    out = {k: np.zeros(L) for k in ("n", "diverged", "collapsed", "stable_after")}
    for p in parts:
        for suffix in ("", "_lo", "_hi"):
            out[p + suffix] = np.full(L, math.nan)
    for li in range(L):
        div, col = res["diverged"][li, ti], res["collapsed"][li, ti]
        keep = ~div & ok_ref
        last, dec, cont = (res[f"excess_{k}"][li, ti] for k in ("last", "decay", "cont"))
        live = ~col
        values = {"total": last, "floor": ref,
                  "collapse": np.where(col, last - ref, 0.0),
                  "smoothing": np.where(live, dec - ref, 0.0),
                  "noise": np.where(live, last - dec, 0.0),
                  "time": last - cont}
        out["n"][li], out["diverged"][li] = keep.sum(), div.sum()
        out["collapsed"][li] = (col & keep).sum()
        alive = keep & live
        ratio = res["ratio_decay"][li, ti][alive]
        ratio = ratio[np.isfinite(ratio)]                  # no sharpness in d > 1
        out["stable_after"][li] = np.mean(ratio <= 1.0) if ratio.size else math.nan
        for p in parts:
            sel = alive if p == "time" else keep
            m, lo, hi = mean_ci(values[p][sel])
            out[p][li], out[p + "_lo"][li], out[p + "_hi"][li] = m, lo, hi
    return out


def collapse_by_step(dims=(1, 10), lrs=(0.05, 0.1, 0.2, 0.5), *, steps: int = 1024,
                     t: float = 0.05, n: int = 20, width: int = 1000, batch_size: int = 50,
                     seeds=tuple(range(8)), device="cpu") -> dict:
    r"""Collapse and divergence at the same step on the per-sample loss, in d = 1 and d = 10.

    Fig. 2's d = 10 networks are trained on the loss averaged over the batch *and* the d
    coordinates (``"mean_all"``), whose step is that of the per-sample squared norm at ``eta / d``:
    its eta = 0.5 takes the steps of eta = 0.05 in d = 1. This check trains both dimensions with the
    same per-sample loss (``reduction="mean"``) and the same learning rates, with Fig. 2's data,
    initialisations and batches (simulation s, noise level ``t``), for ``steps`` steps.
    Returns ``diverged``, ``collapsed`` (no unit active on the hull of the ``mu x_i``, not
    diverged) and ``active`` (fraction of units active there; NaN when diverged), each
    (D, L, S), and ``dims``, ``lrs``, ``seeds``.
    """
    from ..schedule import ou_mu, ou_sigma

    mu, sigma = ou_mu(t), ou_sigma(t)
    shape = (len(dims), len(lrs), len(seeds))
    out = {"diverged": np.zeros(shape, dtype=bool), "collapsed": np.zeros(shape, dtype=bool),
           "active": np.full(shape, math.nan)}
    for i, d in enumerate(dims):
        data = torch.stack([torch.randn(n, d, generator=_generator(s, _DATA, d),
                                        dtype=torch.float64) for s in seeds]).to(torch.float32)
        for j, lr in enumerate(lrs):
            net = TwoLayerScoreNet(width, d, ensemble=len(seeds), device=device,
                                   generator=[_generator(s, _INIT) for s in seeds])
            res = train_sgd(net, data, mu, sigma, lr=float(lr), steps=int(steps),
                            batch_size=batch_size, reduction="mean", device=device,
                            generator=[_generator(s, _TRAIN, 0) for s in seeds], progress=False)
            div = res.diverged.cpu().numpy()
            act = active_fraction(net, data if d > 1 else data[..., 0], mu).cpu().numpy()
            out["diverged"][i, j] = div
            out["active"][i, j] = np.where(div, math.nan, act)
            out["collapsed"][i, j] = ~div & (act == 0)
    out.update({"dims": np.array(dims), "lrs": np.array(lrs, dtype=np.float64),
                "seeds": np.array(seeds)})
    return out
