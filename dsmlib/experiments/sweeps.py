r"""Fig. 1-2 of the paper (Appendix D): two-layer nets trained at fixed noise levels, in 1-D or d = 10.

``fig1``: learned 1-D scores vs ``s*`` for several learning rates and two noise levels.
``fig2``: excess risk vs learning rate over many data sets (d = 1 or d = 10), with the sharpness at
the end of training vs ``2 / (m eta)`` and the fraction of ReLU units still active.

Every sweep of learning rates x seeds (x noise levels) is trained as one ensemble per learning
rate (a group: all its members take the same number of steps). See the chapter "Large learning
rates memorize less".
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..networks import TwoLayerScoreNet, active_fraction
from ..optimal import optimal_score
from ..risk import excess_risk
from ..schedule import ou_mu, ou_sigma
from ..stability import sharpness, stability_threshold
from ..training import train_sgd
from ._common import (_DATA, _EVAL, _INIT, _SHARPNESS_TOL, _TRAIN, _check_common, _check_lrs,
                      _check_reduction, _generator, _progress)

__all__ = ["Fig1Config", "Fig2Config", "fig1", "fig2"]


@dataclass(frozen=True)
class Fig1Config:
    """Fig. 1: one data set, learned score on a grid vs ``s*`` (paper defaults, Appendix D).

    times: forward times t; each gives ``(mu, sigma) = (e^{-t}, sqrt(1 - e^{-2t}))``:
    t = 0.05 -> (0.951, 0.308), t = 0.2 -> (0.819, 0.573). lrs[i] is trained for steps[i] SGD
    steps on batches of ``batch_size`` (``reduction="mean"``: the batch mean, see chapter 4).
    seeds: network initialisation and SGD noise (the same for every lr: common random numbers);
    the data come from ``data_seed`` (one data set for all lrs, noise levels and seeds).
    """

    scale: str = "paper"
    n: int = 20
    times: tuple = (0.05, 0.2)
    lrs: tuple = (0.5, 0.1, 0.05)
    steps: tuple = (5_000, 25_000, 50_000)
    batch_size: int = 50
    width: int = 1000
    reduction: str = "mean"
    seeds: tuple = (0,)
    data_seed: int = 0
    grid_points: int = 801
    grid_margin: float = 0.5
    sharpness_iters: int = 100
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        _check_lrs(self.lrs, self.steps)
        _check_reduction(self.reduction, ("mean", "sum"))

    @classmethod
    def preset(cls, scale: str) -> "Fig1Config":
        """The paper's settings (``"paper"``) or the reduced ones the book runs (``"book"``)."""
        if scale == "paper":
            return cls()
        if scale == "book":
            return cls(scale="book")   # cheap enough: the book runs the paper's settings
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")


@dataclass(frozen=True)
class Fig2Config:
    """Fig. 2: excess risk vs learning rate over ``len(seeds)`` simulations (new data each).

    dim: data dimension (the paper shows d = 1 and d = 10, one file each). Simulation ``s`` draws
    its own n points from N(0, I_d), its own initialisation and SGD noise (the same for all lrs).
    Excess risk: in 1-D the deterministic quadrature of :func:`dsmlib.excess_risk`
    (``quadrature_nodes`` per point, more accurate than the paper's 5000 draws); for d > 1 Monte
    Carlo with ``noise_draws`` draws per training point, as in the paper. In 1-D also the sharpness
    at the end of training (``sharpness_iters`` Lanczos steps on the exact Hessian).
    reduction: ``"mean_all"`` (default) averages the squared error over the batch *and* the d
    coordinates (as ``torch.nn.MSELoss``); it is ``"mean"`` (batch mean of the squared norm) at
    learning rate ``lr / d``, and the same as ``"mean"`` in 1-D. With ``"mean"`` the curvature grows
    with d and eta = 0.5 diverges in d = 10 (shown in the chapter "Large learning rates memorize
    less").
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
    noise_draws: int = 5000
    quadrature_nodes: int = 1201
    sharpness_iters: int = 100
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        _check_lrs(self.lrs, self.steps)
        _check_reduction(self.reduction, ("mean", "sum", "mean_all"))
        if int(self.dim) != self.dim or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")

    @classmethod
    def preset(cls, scale: str, dim: int = 1) -> "Fig2Config":
        """Paper settings, or the reduced book settings, for data dimension ``dim``."""
        if scale == "paper":
            return cls(dim=dim)
        if scale == "book":
            if dim == 1:   # a quarter of the steps (eta x steps stays constant), 10 data sets
                return cls(scale="book", dim=1, steps=(1_250, 6_250, 12_500, 50_000),
                           seeds=tuple(range(10)))
            return cls(scale="book", dim=dim, steps=(500, 2_500, 5_000, 20_000),
                       seeds=tuple(range(4)), noise_draws=500)
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")



def _schedule(times):
    mus = np.array([ou_mu(float(t)) for t in times])
    sigmas = np.array([ou_sigma(float(t)) for t in times])
    return mus, sigmas


def _effective_lr(cfg, lr, dim):
    """The lr of the batch-mean loss that gives cfg's step: ``lr / d`` for "mean_all" (reported
    in the results, and the lr that enters the stability threshold ``2 / (m lr)``)."""
    return float(lr) / dim if cfg.reduction == "mean_all" else float(lr)


def _train_sweep(cfg, data_sets, progress):
    """Train one ensemble per learning rate over (noise level, seed) members.

    data_sets: (S, n, d) float64 (one data set per seed). Returns parameters stacked as
    W1 (L, T, S, m, d), b (L, T, S, m), W2 (L, T, S, d, m) (float64 numpy), plus per-member
    diverged / final_loss (L, T, S) and per-group train_seconds (L,).
    """
    mus, sigmas = _schedule(cfg.times)
    T, S = len(mus), len(cfg.seeds)
    dim = data_sets.shape[-1]
    t_idx = np.repeat(np.arange(T), S)                # member k = (t, s) with k = t * S + s
    s_idx = np.tile(np.arange(S), T)
    member_data = torch.as_tensor(data_sets[s_idx], dtype=torch.float32)       # (K, n, d)
    mu_k = torch.as_tensor(mus[t_idx], dtype=torch.float64)
    sigma_k = torch.as_tensor(sigmas[t_idx], dtype=torch.float64)
    out = {k: [] for k in ("W1", "b", "W2", "diverged", "final_loss")}
    seconds = []
    for li, (lr, steps) in enumerate(_progress(list(zip(cfg.lrs, cfg.steps)), progress,
                                               "learning rates")):
        init = [_generator(cfg.seeds[s], _INIT) for s in s_idx]
        net = TwoLayerScoreNet(cfg.width, dim, ensemble=T * S, generator=init,
                               device=cfg.device)
        gens = [_generator(cfg.seeds[s], _TRAIN, t) for t, s in zip(t_idx, s_idx)]
        t0 = time.perf_counter()
        res = train_sgd(net, member_data, mu_k, sigma_k, lr=float(lr), steps=int(steps),
                        batch_size=cfg.batch_size, reduction=cfg.reduction, generator=gens,
                        device=cfg.device, progress=progress)
        seconds.append(time.perf_counter() - t0)
        with torch.no_grad():
            for name in ("W1", "b", "W2"):
                p = getattr(net, name).detach().to("cpu", torch.float64).numpy()
                out[name].append(p.reshape(T, S, *p.shape[1:]))
        out["diverged"].append(res.diverged.cpu().numpy().reshape(T, S))
        last = res.loss_history[-1] if len(res.loss_history) else torch.full((T * S,), math.nan)
        out["final_loss"].append(last.cpu().numpy().astype(np.float64).reshape(T, S))
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["train_seconds"] = np.array(seconds)
    return arrays, mus, sigmas


def _group_net(params, t, s):
    """The L nets (all learning rates) of noise level t and seed s, as one float64 ensemble."""
    W1, b, W2 = (torch.as_tensor(params[k][:, t, s], dtype=torch.float64)
                 for k in ("W1", "b", "W2"))
    return TwoLayerScoreNet.from_parameters(W1, b, W2)


def _risk_kw(cfg, dim, s, t):
    """Quadrature nodes (1-D) or Monte-Carlo draws and their generator (d > 1) for excess_risk."""
    if dim == 1:
        return {"num_nodes": getattr(cfg, "quadrature_nodes", 1201)}
    return {"num_samples": getattr(cfg, "noise_draws", 5000),
            "generator": _generator(cfg.seeds[s], _EVAL, t)}


def _evaluate_sweep(cfg, params, data_sets, mus, sigmas, *, grid=None, progress=False):
    """Excess risk, sharpness (1-D), active fraction of every member, grouped by (t, s)."""
    L, T, S = params["diverged"].shape
    dim = data_sets.shape[-1]
    res = {k: np.full((L, T, S), math.nan) for k in ("excess_risk", "sharpness", "active_fraction")}
    res["zero_excess_risk"] = np.full((T, S), math.nan)
    res["sharpness_converged"] = np.zeros((T, S), dtype=bool)
    if grid is not None:
        res["score"] = np.full((L, T, S, grid.shape[0]), math.nan)
    for t in range(T):
        for s in _progress(range(S), progress and T * S > 4, f"evaluate t={cfg.times[t]}"):
            x = torch.as_tensor(data_sets[s], dtype=torch.float64)                # (n, d)
            xd = x[:, 0] if dim == 1 else x
            mu, sigma = float(mus[t]), float(sigmas[t])
            net = _group_net(params, t, s)
            with torch.no_grad():
                res["excess_risk"][:, t, s] = excess_risk(net, xd, mu, sigma,
                                                          **_risk_kw(cfg, dim, s, t)).numpy()
                res["zero_excess_risk"][t, s] = float(excess_risk(     # same noise draws
                    lambda y: torch.zeros_like(y), xd, mu, sigma, **_risk_kw(cfg, dim, s, t)))
                res["active_fraction"][:, t, s] = active_fraction(net, x, mu).numpy()
                if grid is not None:
                    res["score"][:, t, s] = net(torch.as_tensor(grid)).numpy()
            if dim == 1 and cfg.sharpness_iters > 0:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    res["sharpness"][:, t, s] = sharpness(
                        net, xd, mu, sigma, iters=cfg.sharpness_iters, tol=_SHARPNESS_TOL,
                        generator=_generator(cfg.seeds[s], _EVAL, t, 1)).numpy()
                res["sharpness_converged"][t, s] = not any("Lanczos" in str(w.message)
                                                           for w in caught)
    res["all_inactive"] = res["active_fraction"] == 0
    return res


def _sweep_arrays(cfg, data_sets, progress, grid=None):
    params, mus, sigmas = _train_sweep(cfg, data_sets, progress)
    ev = _evaluate_sweep(cfg, params, data_sets, mus, sigmas, grid=grid, progress=progress)
    arrays = {
        "lrs": np.array(cfg.lrs, dtype=np.float64),
        "steps": np.array(cfg.steps, dtype=np.int64),
        "times": np.array(cfg.times, dtype=np.float64),
        "mu": mus, "sigma": sigmas,
        "seeds": np.array(cfg.seeds, dtype=np.int64),
        "effective_lrs": np.array([_effective_lr(cfg, lr, data_sets.shape[-1]) for lr in cfg.lrs]),
        "stability_threshold": np.array([stability_threshold(cfg.width, _effective_lr(
            cfg, lr, data_sets.shape[-1])) for lr in cfg.lrs]),
        "diverged": params["diverged"], "final_loss": params["final_loss"],
        "train_seconds": params["train_seconds"],
        **ev,
    }
    return arrays


def fig1(config: Fig1Config | None = None, *, progress: bool = False) -> dict:
    r"""Fig. 1: learned scores vs the empirical optimal score ``s*`` on one 1-D data set.

    Trains, for every learning rate (one ensemble each), ``len(times) x len(seeds)`` networks on
    the same ``n`` points from N(0, 1). Returns a dict of NumPy arrays, with
    L = len(lrs), T = len(times), S = len(seeds), G = grid_points:

    - ``data`` (n,), ``grid`` (G,): the training points and the evaluation grid
      ``[min x - margin, max x + margin]``;
    - ``score`` (L, T, S, G): learned scores on the grid; ``optimal`` (T, G): ``s*``;
    - ``excess_risk``, ``sharpness``, ``active_fraction``, ``all_inactive``, ``diverged``,
      ``final_loss`` (L, T, S); ``zero_excess_risk`` (T, S): excess risk of the score ``s = 0``;
    - ``lrs``, ``steps``, ``effective_lrs``, ``stability_threshold`` (L,) ``= 2 / (m eta)``,
      ``times``, ``mu``, ``sigma`` (T,), ``seeds`` (S,), ``train_seconds`` (L,);
      ``sharpness_converged`` (T, S): Lanczos met its tolerance for the L nets of (t, s).
    """
    cfg = Fig1Config() if config is None else config
    x = torch.randn(cfg.n, 1, generator=_generator(cfg.data_seed, _DATA), dtype=torch.float64)
    data_sets = np.broadcast_to(x.numpy(), (len(cfg.seeds), cfg.n, 1)).copy()
    lo, hi = float(x.min()) - cfg.grid_margin, float(x.max()) + cfg.grid_margin
    grid = np.linspace(lo, hi, cfg.grid_points)
    arrays = _sweep_arrays(cfg, data_sets, progress, grid=grid)
    mus, sigmas = arrays["mu"], arrays["sigma"]
    g = torch.as_tensor(grid)
    arrays["optimal"] = np.stack([optimal_score(g, x[:, 0], float(m), float(s)).numpy()
                                  for m, s in zip(mus, sigmas)])
    arrays["data"] = x[:, 0].numpy()
    arrays["grid"] = grid
    return arrays


def fig2(config: Fig2Config | None = None, *, progress: bool = False) -> dict:
    r"""Fig. 2: excess risk vs learning rate, one new data set per seed (simulation).

    Returns a dict of NumPy arrays (L = len(lrs), T = len(times), S = len(seeds)):

    - ``excess_risk`` (L, T, S): ``R_n(s_theta) - R_n(s*)`` at the end of training;
    - ``sharpness`` (L, T, S): top Hessian eigenvalue of the exact risk (1-D; NaN for d > 1),
      to compare with ``stability_threshold`` (L,) ``= 2 / (m eta)``; ``sharpness_converged``
      (T, S); ``effective_lrs`` (L,): the lr of the batch-mean loss (``lr / d`` for "mean_all");
    - ``active_fraction`` (L, T, S): fraction of hidden units active somewhere on the convex hull
      of the ``mu x_i`` (in 1-D the data range); ``all_inactive``: no unit is (the score is 0
      there: the trivially smooth, trivially non-memorizing network);
    - ``diverged`` (bool), ``final_loss`` (L, T, S); ``zero_excess_risk`` (T, S): excess risk of
      ``s = 0``; ``data`` (S, n) or (S, n, d);
    - ``lrs``, ``steps``, ``times``, ``mu``, ``sigma``, ``seeds``, ``train_seconds``.
    """
    cfg = Fig2Config() if config is None else config
    data_sets = np.stack([torch.randn(cfg.n, cfg.dim, generator=_generator(s, _DATA, cfg.dim),
                                      dtype=torch.float64).numpy() for s in cfg.seeds])
    arrays = _sweep_arrays(cfg, data_sets, progress)
    arrays["data"] = data_sets[..., 0] if cfg.dim == 1 else data_sets
    return arrays

