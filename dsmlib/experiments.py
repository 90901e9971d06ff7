r"""The paper's experiments (Appendix D), one function per figure, at book or paper scale.

Each figure has a frozen configuration dataclass whose defaults are the paper's settings
(``scale="paper"``); :meth:`preset` gives the reduced ``"book"`` settings that chapters 8 and 9 run
in minutes on a laptop CPU. Each figure function takes a configuration and returns a dict of NumPy
arrays (axes documented in its docstring), the same dict that :func:`run` saves with
:func:`dsmlib.save_results` and :func:`load` reads back.

=========  ======================================================================================
``fig1``   learned 1-D scores vs ``s*`` for several learning rates and two noise levels
``fig2``   excess risk vs learning rate over many data sets (d = 1 or d = 10), with the sharpness
           at the end of training vs ``2 / (m eta)`` and the fraction of ReLU units still active
``fig3``   d = 2 diffusion with a time-conditioned net: samples and MMDs for a small and a large eta
``fig4``   MMD ratio vs dimension d at eta = 0.5
=========  ======================================================================================

Every sweep of learning rates x seeds (x noise levels) is trained as one ensemble per learning
rate (a group: all its members take the same number of steps). Randomness is derived from the
seeds only (never from global state): member streams are ``numpy.random.SeedSequence`` children
of ``(seed, purpose, ...)``, so a result can be reproduced member by member.

Command line (``--help`` lists the options)::

    python -m dsmlib.experiments fig2 --scale paper --dim 1 --out results/

See chapters 8 ("Large learning rates memorize less") and 9 ("Higher dimension memorizes less").
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .io import ResultsError, config_to_dict, load_results, save_results
from .metrics import fitted_gaussian, memorization_fraction, mmd
from .networks import TwoLayerScoreNet
from .optimal import optimal_score
from .risk import excess_risk
from .sampling import optimal_score_fn, reverse_sde_sample
from .schedule import ou_mu, ou_sigma
from .stability import sharpness, stability_threshold
from .timenet import TimeScoreNet, train_time_score_net
from .training import train_sgd

__all__ = ["Fig1Config", "Fig2Config", "Fig3Config", "Fig4Config", "fig1", "fig2", "fig3",
           "fig4", "reduction_check", "jitter_calibration", "make_config", "deviations",
           "result_path", "run", "load", "FIGURES", "main"]

SCALES = ("book", "paper", "custom")
# purposes of the random streams derived from a seed
_DATA, _INIT, _TRAIN, _EVAL, _SAMPLE = range(5)
_SHARPNESS_TOL = 1e-4   # relative Lanczos residual: ample to compare with 2 / (m eta)


def _stream_seed(*keys) -> int:
    """A 62-bit seed for the stream named by the integer ``keys`` (seed, purpose, ...)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 30) ^ int(state[1])) & ((1 << 62) - 1)


def _generator(*keys, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_stream_seed(*keys))


def _check_common(cfg):
    if cfg.scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {cfg.scale!r}")
    seeds = tuple(cfg.seeds)
    if not seeds or any(isinstance(s, bool) or int(s) != s or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty tuple of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    torch.device(cfg.device)  # raises on a malformed device string


def _check_reduction(reduction, allowed):
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")


def _check_lrs(lrs, steps):
    if len(lrs) == 0 or len(lrs) != len(steps):
        raise ValueError(f"lrs and steps must be non-empty and of equal length, "
                         f"got {lrs!r}, {steps!r}")
    if any(lr <= 0 for lr in lrs) or any(int(s) != s or s < 1 for s in steps):
        raise ValueError(f"lrs must be positive and steps positive integers, "
                         f"got {lrs!r}, {steps!r}")


# ------------------------------------------------------------------------------------------------
# configurations
# ------------------------------------------------------------------------------------------------

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
        """The paper's settings (``"paper"``) or the reduced ones chapter 8 runs (``"book"``)."""
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
    with d and eta = 0.5 diverges in d = 10 (chapter 8 shows it).
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


@dataclass(frozen=True)
class Fig3Config:
    """Fig. 3: d = 2 diffusion with a time-conditioned net, one small and one large lr.

    Data: n points from N(0, data_std^2 I_d) (``data_seed``). Training: :func:`train_time_score_net`
    with ``num_times`` equally spaced times on [delta, T] drawn with probability ∝ sigma(t)
    (the paper's text), batch ``batch_size``; one ensemble over ``seeds`` per learning rate.
    Sampling: backward OU SDE from T to delta (``sampler_steps`` steps), ``num_samples`` points per
    network, compared by MMD (Gaussian kernel, ``bandwidth``) to samples of the SDE driven by
    ``s*`` and to samples of the Gaussian fitted to the data.
    reduction: ``"mean_all"`` averages the squared error over the batch and the d coordinates
    (``torch.nn.MSELoss``); with the batch mean of the squared norm (``"mean"``, i.e. lr x d)
    eta = 2 diverges within a few steps. seeds: the paper shows one run; eta = 2 sits at the
    edge of stability and about half of the initialisations diverge in the first steps, so we
    train six. batch_size: one number, or one per learning rate.
    """

    scale: str = "paper"
    dim: int = 2
    n: int = 10
    data_std: float = 2.0
    width: int = 1000
    lrs: tuple = (2.0, 0.05)
    steps: tuple = (20_000, 1_000_000)
    batch_size: int = 5000
    num_times: int = 100
    T: float = 1.0
    delta: float = 0.01
    time_weighting: str = "sigma"
    reduction: str = "mean_all"
    seeds: tuple = tuple(range(6))
    data_seed: int = 0
    num_samples: int = 2000
    sampler_steps: int = 1000
    bandwidth: float = 1.0
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        _check_lrs(self.lrs, self.steps)
        _check_reduction(self.reduction, ("mean", "sum", "mean_all"))
        sizes = self.batch_size if isinstance(self.batch_size, tuple) else (self.batch_size,)
        if any(isinstance(b, bool) or int(b) != b or b < 1 for b in sizes) or (
                isinstance(self.batch_size, tuple) and len(sizes) != len(self.lrs)):
            raise ValueError(f"batch_size must be a positive integer or one per learning rate, "
                             f"got {self.batch_size!r}")

    def batch_for(self, i: int) -> int:
        """Batch size of learning rate ``lrs[i]``."""
        return int(self.batch_size[i] if isinstance(self.batch_size, tuple) else self.batch_size)

    @classmethod
    def preset(cls, scale: str) -> "Fig3Config":
        if scale == "paper":
            return cls()
        if scale == "book":   # the large lr keeps the paper's batch: with 500, SGD noise makes
            return cls(scale="book", width=250, steps=(2_000, 40_000), batch_size=(5000, 500),
                       num_samples=1000, sampler_steps=200)   # most eta = 2 runs diverge
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")


@dataclass(frozen=True)
class Fig4Config:
    """Fig. 4: MMD ratio vs dimension at a fixed large lr (eta = 0.5, 50k steps).

    For each d and each run (seed): new data (n points, N(0, data_std^2 I_d)), a new network
    trained as in :class:`Fig3Config`; then ``sample_sets`` independent sets of ``num_samples``
    generated points, ``s*`` samples and fitted-Gaussian samples. The ratio is
    ``MMD^2(generated, s*-samples) / MMD^2(s*-samples, fitted Gaussian)``: about 0 when the network
    reproduces the memorizing ``s*`` sampler, about 1 or more when it is as far from it as a plain
    Gaussian fit is. (Our reading of Appendix D; chapter 9 discusses it.) The training points of
    each run are n draws from N(0, data_std^2 I_d) (Appendix D does not say). reduction as in
    :class:`Fig3Config`: with ``"mean"`` eta = 0.5 diverges for d >= 10.
    """

    scale: str = "paper"
    dims: tuple = (2, 5, 10, 50, 80, 100, 200, 400, 1000)
    n: int = 10
    data_std: float = 2.0
    width: int = 1000
    lr: float = 0.5
    steps: int = 50_000
    batch_size: int = 5000
    num_times: int = 100
    T: float = 1.0
    delta: float = 0.01
    time_weighting: str = "sigma"
    reduction: str = "mean_all"
    seeds: tuple = (0, 1, 2)
    sample_sets: int = 5
    num_samples: int = 1000
    sampler_steps: int = 1000
    bandwidth: float = 1.0
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        _check_lrs((self.lr,), (self.steps,))
        _check_reduction(self.reduction, ("mean", "sum", "mean_all"))
        if not self.dims or any(int(d) != d or d < 1 for d in self.dims):
            raise ValueError(f"dims must be positive integers, got {self.dims!r}")

    @classmethod
    def preset(cls, scale: str) -> "Fig4Config":
        if scale == "paper":
            return cls()
        if scale == "book":
            return cls(scale="book", dims=(2, 10, 50, 200), width=250, steps=4_000,
                       batch_size=250, seeds=(0, 1), sample_sets=2, num_samples=500,
                       sampler_steps=200)
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")


# ------------------------------------------------------------------------------------------------
# Fig. 1-2: two-layer nets at fixed noise levels
# ------------------------------------------------------------------------------------------------

def _schedule(times):
    mus = np.array([ou_mu(float(t)) for t in times])
    sigmas = np.array([ou_sigma(float(t)) for t in times])
    return mus, sigmas


def _effective_lr(cfg, lr, dim):
    """The lr of train_sgd's batch-mean loss that gives cfg's step: ``lr / d`` for "mean_all"."""
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
        res = train_sgd(net, member_data, mu_k, sigma_k, lr=_effective_lr(cfg, lr, dim),
                        steps=int(steps), batch_size=cfg.batch_size,
                        reduction="sum" if cfg.reduction == "sum" else "mean", generator=gens,
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


def _active_fraction(net, data, mu):
    """Fraction of hidden units active somewhere on the convex hull of the points mu x_i.

    A ReLU unit ``w.y + b`` is linear, so its maximum over the hull is reached at one of the
    points: unit l is active on the hull iff ``max_i (w_l . mu x_i + b_l) > 0``. In 1-D the hull is
    the data range ``[mu min x, mu max x]``. net: ensemble of L; data: (n, d). Returns (L,).
    """
    W1, b = net.W1.detach(), net.b.detach()                                    # (L, m, d), (L, m)
    pre = torch.einsum("lmd,nd->lnm", W1, mu * data) + b[:, None, :]          # (L, n, m)
    return (pre.amax(1) > 0).to(torch.float64).mean(1)


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
                res["active_fraction"][:, t, s] = _active_fraction(net, x, mu).numpy()
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


# ------------------------------------------------------------------------------------------------
# Fig. 3-4: time-conditioned nets and sampling
# ------------------------------------------------------------------------------------------------

def _train_time_nets(cfg, data, lr, steps, seeds, dim, progress, batch_size=None):
    """One TimeScoreNet ensemble over ``seeds`` trained on ``data``; returns (net, result)."""
    dev = torch.device(cfg.device)
    init = [_generator(s, _INIT, dim, device=dev) for s in seeds]
    net = TimeScoreNet(cfg.width, dim, ensemble=len(seeds), generator=init, device=dev)
    gens = [_generator(s, _TRAIN, dim, device=dev) for s in seeds]
    log_every = max(1, steps // 100)
    res = train_time_score_net(net, data.to(dev, torch.float32), lr=float(lr), steps=int(steps),
                               batch_size=batch_size or cfg.batch_size, T=cfg.T,
                               delta=cfg.delta,
                               num_times=cfg.num_times, time_weighting=cfg.time_weighting,
                               reduction=cfg.reduction, generator=gens, log_every=log_every,
                               progress=progress)
    return net, res


def _sample(score_fn, num, dim, cfg, gen, ensemble=None):
    return reverse_sde_sample(score_fn, num, dim, T=cfg.T, delta=cfg.delta,
                              steps=cfg.sampler_steps, ensemble=ensemble, generator=gen,
                              device=cfg.device)


def _sample_members(net, diverged, num, dim, cfg, *keys):
    """Samples of every member of a TimeScoreNet ensemble: (K, num, dim), NaN where unusable.

    A diverged member (frozen by the trainer) is not sampled; a member whose score turns NaN or
    infinite along the way (the sampler raises FloatingPointError) gets NaN samples too. Member k
    uses the generator of ``(*keys, k)``. Returns the samples and a (K,) bool "failed" flag.
    """
    dev = torch.device(cfg.device)
    K = net.ensemble
    out = torch.full((K, num, dim), math.nan, device=dev)
    failed = np.zeros(K, dtype=bool)
    for k in range(K):
        if bool(diverged.reshape(-1)[k]):
            failed[k] = True
            continue
        try:
            out[k] = _sample(net.member(k).score, num, dim, cfg,
                             _generator(*keys, k, device=dev)).reshape(num, dim)
        except FloatingPointError:
            failed[k] = True
    return out, failed


def _references(data, cfg, num, *keys, second=True):
    """Samples of the s*-driven sampler (a second independent set if ``second``, else None) and
    of the Gaussian fitted to the data."""
    dev = torch.device(cfg.device)
    x = data.to(dev, torch.float32)
    star = _sample(optimal_score_fn(x), num, x.shape[1], cfg, _generator(*keys, 0, device=dev))
    star2 = (_sample(optimal_score_fn(x), num, x.shape[1], cfg, _generator(*keys, 1, device=dev))
             if second else None)
    gauss = fitted_gaussian(x).sample(num, generator=_generator(*keys, 2, device=dev))
    return star, star2, gauss


def fig3(config: Fig3Config | None = None, *, progress: bool = False) -> dict:
    r"""Fig. 3: generated samples of a time-conditioned net for a small and a large lr (d = 2).

    Returns a dict of NumPy arrays (L = len(lrs), S = len(seeds), N = num_samples):

    - ``data`` (n, d); ``samples`` (L, S, N, d): generated by the trained nets;
      ``star_samples``, ``gauss_samples`` (N, d): the ``s*`` sampler and the fitted Gaussian;
    - ``mmd_star`` (L, S) = MMD^2(samples, star_samples), ``mmd_gauss`` (L, S) =
      MMD^2(samples, gauss_samples); references ``mmd_star_gauss`` and ``mmd_star_star`` (two
      independent ``s*`` sample sets: the noise floor), shape ();
    - ``memorization`` (L, S), ``memorization_star``, ``memorization_gauss`` (): fraction of
      samples much closer to one training point than to any other (Gu et al. 2023, ratio 1/3);
    - ``diverged`` (L, S) bool, ``final_loss`` (L, S); ``sampling_failed`` (L, S): no samples
      (diverged, or the score blew up while sampling): samples and metrics are NaN;
      ``lrs``, ``steps``, ``seeds``, ``train_seconds`` (L,).
    """
    cfg = Fig3Config() if config is None else config
    dev = torch.device(cfg.device)
    x = cfg.data_std * torch.randn(cfg.n, cfg.dim, generator=_generator(cfg.data_seed, _DATA),
                                   dtype=torch.float64)
    xf = x.to(dev, torch.float32)
    star, star2, gauss = _references(x, cfg, cfg.num_samples, cfg.data_seed, _SAMPLE)
    out = {k: [] for k in ("samples", "mmd_star", "mmd_gauss", "memorization", "diverged",
                           "sampling_failed", "final_loss")}
    seconds = []
    for li, (lr, steps) in enumerate(_progress(list(zip(cfg.lrs, cfg.steps)), progress,
                                               "learning rates")):
        t0 = time.perf_counter()
        net, res = _train_time_nets(cfg, x, lr, steps, cfg.seeds, cfg.dim, progress,
                                    batch_size=cfg.batch_for(li))
        seconds.append(time.perf_counter() - t0)
        smp, failed = _sample_members(net, res.diverged, cfg.num_samples, cfg.dim, cfg,
                                      cfg.data_seed, _SAMPLE, 10 + li)
        out["samples"].append(smp.cpu().numpy())
        nan = math.nan
        out["mmd_star"].append([nan if f else float(mmd(s, star, cfg.bandwidth))
                                for s, f in zip(smp, failed)])
        out["mmd_gauss"].append([nan if f else float(mmd(s, gauss, cfg.bandwidth))
                                 for s, f in zip(smp, failed)])
        out["memorization"].append([nan if f else memorization_fraction(s, xf)
                                    for s, f in zip(smp, failed)])
        out["sampling_failed"].append(failed)
        out["diverged"].append(res.diverged.cpu().numpy())
        out["final_loss"].append(res.final_loss.cpu().numpy().astype(np.float64))
    arrays = {k: np.asarray(v) for k, v in out.items()}
    arrays.update({
        "data": x.numpy(), "star_samples": star.cpu().numpy(), "gauss_samples": gauss.cpu().numpy(),
        "mmd_star_gauss": np.array(float(mmd(star, gauss, cfg.bandwidth))),
        "mmd_star_star": np.array(float(mmd(star, star2, cfg.bandwidth))),
        "memorization_star": np.array(memorization_fraction(star, xf)),
        "memorization_gauss": np.array(memorization_fraction(gauss, xf)),
        "lrs": np.array(cfg.lrs, dtype=np.float64), "steps": np.array(cfg.steps, dtype=np.int64),
        "seeds": np.array(cfg.seeds, dtype=np.int64), "train_seconds": np.array(seconds),
    })
    return arrays


def _set_metrics(gen, star, gauss, data, bw):
    """Per sample set p: MMDs, V-statistic ratio, memorization fractions (NaN if gen is not finite).

    gen, star, gauss: (P, N, d); data: (n, d).
    """
    out = {k: [] for k in ("mmd_gen_star", "mmd_star_gauss", "mmd_gen_gauss", "ratio_v",
                           "memorization", "memorization_star")}
    for p in range(gen.shape[0]):
        ok = bool(torch.isfinite(gen[p]).all())
        nan = math.nan
        out["mmd_star_gauss"].append(float(mmd(star[p], gauss[p], bw)))
        out["memorization_star"].append(memorization_fraction(star[p], data))
        out["mmd_gen_star"].append(float(mmd(gen[p], star[p], bw)) if ok else nan)
        out["mmd_gen_gauss"].append(float(mmd(gen[p], gauss[p], bw)) if ok else nan)
        out["ratio_v"].append(float(mmd(gen[p], star[p], bw, unbiased=False)
                                    / mmd(star[p], gauss[p], bw, unbiased=False)) if ok else nan)
        out["memorization"].append(memorization_fraction(gen[p], data) if ok else nan)
    return out


def fig4(config: Fig4Config | None = None, *, progress: bool = False) -> dict:
    r"""Fig. 4: memorization vs dimension at a fixed large learning rate.

    Returns a dict of NumPy arrays (D = len(dims), R = len(seeds) runs, P = sample_sets,
    N = num_samples):

    - ``mmd_gen_star`` (D, R, P) = MMD^2(generated, s*-samples); ``mmd_star_gauss`` (D, R, P) =
      MMD^2(s*-samples, fitted-Gaussian samples); ``ratio`` = their quotient (the paper's
      normalisation, our reading); ``mmd_gen_gauss`` (D, R, P) = MMD^2(generated, Gaussian);
      ``ratio_v`` (D, R, P): the same ratio with biased V-statistics (always >= 0);
    - ``memorization`` (D, R, P), ``memorization_star`` (D, R, P): nearest-neighbour
      memorization fractions of generated and ``s*`` samples;
    - ``samples_proj``, ``star_proj`` (D, R, N, 2), ``data_proj`` (D, R, n, 2): the first two
      coordinates of sample set 0, of ``s*`` samples, of the data;
    - ``diverged`` (D, R) bool, ``final_loss`` (D, R); ``dims``, ``seeds``,
      ``train_seconds`` (D,).
    """
    cfg = Fig4Config() if config is None else config
    dev = torch.device(cfg.device)
    keys = ("mmd_gen_star", "mmd_star_gauss", "mmd_gen_gauss", "ratio_v", "memorization",
            "memorization_star", "samples_proj", "star_proj", "data_proj", "diverged",
            "final_loss")
    out = {k: [] for k in keys}
    seconds = []
    P, N = cfg.sample_sets, cfg.num_samples
    for d in _progress(cfg.dims, progress, "dimensions"):
        per_run = {k: [] for k in keys}
        t0 = time.perf_counter()
        for s in cfg.seeds:
            # one run = new data, new network (TimeScoreNet training takes one data set)
            x = cfg.data_std * torch.randn(cfg.n, d, generator=_generator(s, _DATA, d),
                                           dtype=torch.float64)
            xf = x.to(dev, torch.float32)
            net, res = _train_time_nets(cfg, x, cfg.lr, cfg.steps, (s,), d, progress)
            gen, _ = _sample_members(net, res.diverged, P * N, d, cfg, s, _SAMPLE, d, 10)
            gen = gen[0].reshape(P, N, d)
            star, _, gauss = _references(x, cfg, P * N, s, _SAMPLE, d, second=False)
            star, gauss = star.reshape(P, N, d), gauss.reshape(P, N, d)
            for k, v in _set_metrics(gen, star, gauss, xf, cfg.bandwidth).items():
                per_run[k].append(v)
            per_run["samples_proj"].append(gen[0, :, :2].cpu().numpy())
            per_run["star_proj"].append(star[0, :, :2].cpu().numpy())
            per_run["data_proj"].append(x[:, :2].numpy())
            per_run["diverged"].append(bool(res.diverged.reshape(-1)[0]))
            per_run["final_loss"].append(float(res.final_loss.reshape(-1)[0]))
        seconds.append(time.perf_counter() - t0)
        for k in keys:
            out[k].append(np.asarray(per_run[k]))
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["ratio"] = arrays["mmd_gen_star"] / arrays["mmd_star_gauss"]
    arrays.update({"dims": np.array(cfg.dims, dtype=np.int64),
                   "seeds": np.array(cfg.seeds, dtype=np.int64),
                   "train_seconds": np.array(seconds)})
    return arrays


def reduction_check(dims=(2, 10, 50, 200), lrs=(0.5,), reductions=("mean", "mean_all"), *,
                    steps: int = 300, width: int = 250, batch_size: int = 250, n: int = 10,
                    data_std: float = 2.0, seed: int = 0, device="cpu") -> dict:
    r"""Does SGD on the multi-time loss survive ``steps`` steps? One short run per (reduction, d, lr).

    ``"mean"`` averages the squared norm ``|r - z|^2`` over the batch (its curvature grows like d);
    ``"mean_all"`` also averages over the d coordinates (``torch.nn.MSELoss``), which is the same
    as ``"mean"`` with the learning rate divided by d. Data: n points from N(0, data_std^2 I_d).
    Returns ``diverged`` (R, D, L) bool, ``diverged_step`` (R, D, L) (-1: survived) and
    ``final_loss`` (R, D, L) (per-sample loss ``|r - z|^2`` averaged over the last 10% of
    steps, NaN when diverged).
    """
    dev = torch.device(device)
    shape = (len(reductions), len(dims), len(lrs))
    out = {"diverged": np.zeros(shape, dtype=bool), "diverged_step": np.zeros(shape, dtype=np.int64),
           "final_loss": np.zeros(shape)}
    for i, red in enumerate(reductions):
        for j, d in enumerate(dims):
            x = data_std * torch.randn(n, d, generator=_generator(seed, _DATA, d))
            K = len(lrs)
            net = TimeScoreNet(width, d, ensemble=K, device=dev,   # same init for every lr
                               generator=[_generator(seed, _INIT, d, device=dev) for _ in lrs])
            res = train_time_score_net(
                net, x.to(dev), lr=torch.tensor(lrs, dtype=torch.float32), steps=steps,
                batch_size=batch_size, reduction=red, log_every=max(1, steps // 10),
                generator=[_generator(seed, _TRAIN, d, device=dev) for _ in range(K)])
            out["diverged"][i, j] = res.diverged.cpu().numpy()
            out["diverged_step"][i, j] = res.diverged_step.cpu().numpy()
            out["final_loss"][i, j] = res.final_loss.cpu().numpy()
    return out


def jitter_calibration(dims=(2, 10, 50, 200, 1000), jitters=(0.05, 0.1, 0.3), *, n: int = 10,
                       data_std: float = 2.0, num_samples: int = 500, sampler_steps: int = 200,
                       T: float = 1.0, delta: float = 0.01, bandwidth: float = 1.0,
                       seed: int = 0, device="cpu") -> dict:
    r"""What the Fig. 4 ratio says about samples that *do* copy the training points.

    For each d: ``s*`` samples ``Y`` (the memorizing sampler), a second independent set ``Y'``,
    fitted-Gaussian samples ``G``; the "generator" is ``Y' + eps * N(0, I_d)``: copies of the
    training points blurred by ``eps`` per coordinate. Returns ``ratio`` (D, E) =
    ``MMD^2(Y' + eps Z, Y) / MMD^2(Y, G)``, ``memorization`` (D, E) (nearest-neighbour fraction of
    the jittered samples) and ``memorization_star`` (D,), ``dims``, ``jitters``.
    """
    dev = torch.device(device)
    cfg = Fig4Config(scale="custom", T=T, delta=delta, sampler_steps=sampler_steps, device=device)
    ratio = np.zeros((len(dims), len(jitters)))
    mem = np.zeros((len(dims), len(jitters)))
    mem_star = np.zeros(len(dims))
    for i, d in enumerate(dims):
        x = data_std * torch.randn(n, d, generator=_generator(seed, _DATA, d), dtype=torch.float64)
        xf = x.to(dev, torch.float32)
        star, star2, gauss = _references(x, cfg, num_samples, seed, _SAMPLE, d)
        den = float(mmd(star, gauss, bandwidth))
        mem_star[i] = memorization_fraction(star, xf)
        g = _generator(seed, _EVAL, d, device=dev)
        for j, eps in enumerate(jitters):
            fake = star2 + eps * torch.randn(star2.shape, generator=g, device=dev)
            ratio[i, j] = float(mmd(fake, star, bandwidth)) / den
            mem[i, j] = memorization_fraction(fake, xf)
    return {"ratio": ratio, "memorization": mem, "memorization_star": mem_star,
            "dims": np.array(dims), "jitters": np.array(jitters)}


# ------------------------------------------------------------------------------------------------
# running, saving, loading
# ------------------------------------------------------------------------------------------------

FIGURES = {"fig1": (Fig1Config, fig1), "fig2": (Fig2Config, fig2), "fig3": (Fig3Config, fig3),
           "fig4": (Fig4Config, fig4)}


def _progress(iterable, show, desc):
    if not show:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, leave=False)


def make_config(name: str, scale: str = "book", **overrides):
    """The preset configuration of figure ``name`` at ``scale``, with fields replaced by ``overrides``.

    ``make_config("fig2", "paper", dim=10)`` is the paper's d = 10 sweep. For ``fig2`` the
    ``dim`` override selects the book preset of that dimension.
    """
    if name not in FIGURES:
        raise ValueError(f"name must be one of {sorted(FIGURES)}, got {name!r}")
    cls = FIGURES[name][0]
    if name == "fig2":
        cfg = cls.preset(scale, dim=overrides.pop("dim", 1))
    else:
        cfg = cls.preset(scale)
    return replace(cfg, **overrides) if overrides else cfg


def deviations(name: str, scale: str = "book", **overrides) -> list:
    """Settings in which ``make_config(name, scale, **overrides)`` departs from the paper's.

    Returns ``[(field, paper value, this value), ...]`` (``scale`` and ``device`` left out). For
    ``fig2`` the paper configuration of the same ``dim`` is the reference.
    """
    ref = make_config(name, "paper", **({"dim": overrides["dim"]} if "dim" in overrides else {}))
    cfg = make_config(name, scale, **overrides)
    return [(f.name, getattr(ref, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if f.name not in ("scale", "device") and getattr(ref, f.name) != getattr(cfg, f.name)]


def _identity(config) -> dict:
    """The saved configuration: every field except ``device`` (results do not depend on it)."""
    d = config_to_dict(config)
    d.pop("device", None)
    return d


def result_path(name: str, config, out_dir="results", tag: str | None = None) -> Path:
    """Where :func:`run` saves: ``{out_dir}/{name}_{scale}[_d{dim}][_{tag}].npz``."""
    stem = f"{name}_{config.scale}"
    if name == "fig2":
        stem += f"_d{config.dim}"
    if tag:
        stem += f"_{tag}"
    return Path(out_dir) / f"{stem}.npz"


def run(name: str, scale: str = "book", out_dir="results", *, tag: str | None = None,
        overwrite: bool = False, progress: bool = True, **overrides):
    """Run figure ``name`` at ``scale`` and save it atomically; return ``(arrays, meta, path)``.

    The file (see :func:`result_path`) holds the arrays, the configuration (without ``device``),
    the dsmlib version and, in ``meta["extra"]``, the seeds, the device, torch's version and
    thread count, and timings (wall and CPU seconds). If the file already holds this very
    configuration it is loaded and nothing is recomputed (``overwrite=True`` recomputes); if it
    holds another configuration, :class:`ResultsError` is raised *before* computing anything.
    Nothing is written until the computation has finished: Ctrl-C leaves no partial file.
    """
    config = make_config(name, scale, **overrides)
    path = result_path(name, config, out_dir, tag)
    identity = _identity(config)
    if path.exists() and not overwrite:
        try:
            arrays, meta = load_results(path)
        except ResultsError as exc:
            raise ResultsError(f"{path} exists but is unreadable ({exc}); pass overwrite=True "
                               f"(--overwrite) to replace it") from exc
        if meta.get("config") != identity:
            raise ResultsError(f"{path} holds results of a different configuration; pass "
                               f"overwrite=True (--overwrite), or another tag or out_dir")
        return arrays, meta, path
    fn = FIGURES[name][1]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    arrays = fn(config, progress=progress)
    extra = {
        "seeds": list(config.seeds), "device": str(config.device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    save_results(path, arrays, identity, extra=extra, overwrite=overwrite)
    return load_results(path) + (path,)


def load(name: str, scale: str = "paper", out_dir="results", *, tag: str | None = None,
         **overrides):
    """Load saved results of ``make_config(name, scale, **overrides)``; ``(arrays, meta)``.

    Raises ``FileNotFoundError`` when the file is absent and :class:`ResultsError` when it holds
    another configuration (the message names the fields that differ).
    """
    config = make_config(name, scale, **overrides)
    return load_results(result_path(name, config, out_dir, tag), expected_config=_identity(config))


def main(argv=None) -> int:
    """Command line: ``python -m dsmlib.experiments fig2 --scale paper [--dim 10] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m dsmlib.experiments",
        description="Reproduce a figure of Wu, Marion, Biau & Boyer (COLT 2025), Appendix D, and "
                    "save its results (an .npz with the configuration) under --out.")
    parser.add_argument("figure", choices=sorted(FIGURES), help="which figure to compute")
    parser.add_argument("--scale", choices=("book", "paper"), default="book",
                        help="'paper': Appendix D settings; 'book': the reduced ones of the book "
                             "(default)")
    parser.add_argument("--dim", type=int, default=None,
                        help="fig2 only: data dimension (the paper shows 1 and 10; default 1)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="use seeds 0..N-1 instead of the preset's (a partial run; the file "
                             "name gets the tag sN)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute and replace an existing file (by default a file with "
                             "the same configuration is kept, and one with another configuration "
                             "is an error)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the kernels are small and extra "
                             "threads mostly add synchronisation; 2 helps a little for fig2 "
                             "with --dim 10)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    overrides = {"device": args.device}
    if args.dim is not None:
        if args.figure != "fig2":
            parser.error("--dim applies to fig2 only")
        overrides["dim"] = args.dim
    tag = None
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be >= 1")
        overrides["seeds"] = tuple(range(args.seeds))
        tag = f"s{args.seeds}"
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        t0 = time.perf_counter()
        arrays, meta, path = run(args.figure, args.scale, args.out, tag=tag,
                                 overwrite=args.overwrite, progress=not args.quiet, **overrides)
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = meta.get("extra", {})
    print(f"{path}: wall {extra.get('wall_seconds', float('nan')):.1f} s, "
          f"CPU {extra.get('cpu_seconds', float('nan')):.1f} s "
          f"(this call {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
