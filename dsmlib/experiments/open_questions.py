r"""The paper's open questions, measured on its toy models ("The open questions, measured").

Two experiments of the book's own (not the paper's), each with a driver, a ``"book"`` preset that
the chapter runs live and a ``"paper"`` preset, the full resolution saved in ``results/`` (the name
is the command line's: these are not settings of the paper):

* ``phase`` (d = 1): a phase diagram of the learned score in (eta, sigma), for several sample sizes
  n. Every cell trains, for each data set, the networks of the paper's Fig. 2 (width 1000, batch
  50, all layers trained), with ``eta x steps`` held fixed (the paper scales its steps inversely
  with eta); one ensemble per (n, eta) holds every noise level and data set (per-member data and
  noise levels). Each network is measured at the last iterate, after a learning-rate decay (eta/10
  then eta/100, the SGD-noise removal of the mechanism chapter) and as a Polyak average: excess
  risk, its ratio to the zero score's (the relative excess risk ``q``), the share of active units
  (``collapsed`` = none on the data hull at the end of training) and ``TV_pi``.
  :func:`phase_boundary` turns ``q`` into the learning rate at which the score leaves ``s*``.
* ``generation`` (d = 2, the Fig. 3 setting): time-conditioned networks trained on n points of
  N(0, 4 I), for several n and eta, in chunks; at fixed gradient-flow times ``eta x steps`` the
  same networks are sampled (backward OU sampler from T = 1 to delta = 0.01) and the samples are
  compared with the training set (memorization fraction) and with fresh samples of the *true*
  distribution at time delta (MMD, energy distance, sliced Wasserstein), beside the ``s*`` sampler,
  the Gaussian fitted to the data, the sampler driven by the true score, and fresh true samples
  (the noise floor of each distance).

The analysis of both results (phase boundary, what sets it, exponents, onset of memorization)
lives in :mod:`dsmlib.experiments.open_analysis`; its functions are re-exported here.

Randomness comes from the seeds only (``_common._generator`` streams).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import (energy_distance, fitted_gaussian, memorization_fraction, mmd,
                       sliced_wasserstein)
from ..networks import TwoLayerScoreNet, active_fraction
from ..risk import excess_risk
from ..sampling import optimal_score_fn, reverse_sde_sample
from ..schedule import ou_mu, ou_sigma
from ..regularity import weighted_tv
from ..theory import min_gap, theorem_lr_threshold
from ..timenet import TimeScoreNet
from ..timenet_training import train_time_score_net
from ..training import train_sgd
from ._common import _DATA, _EVAL, _INIT, _SAMPLE, _TRAIN, _check_common, _check_lrs, \
    _generator, _progress
from .decomposition2d import time_net_activity
from .open_analysis import (CAUSES, boundary_cause, bootstrap_exponent, crossing, fit_power,
                            onset_time, phase_boundary, relative_excess)
from .sweeps import _schedule

__all__ = ["PhaseConfig", "phase", "relative_excess", "crossing", "phase_boundary",
           "CAUSES", "boundary_cause", "fit_power", "bootstrap_exponent", "GenerationConfig",
           "generation", "true_variance", "onset_time"]


def _positive_int(v, name):
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


# ------------------------------------------------------------------------------------------------
# d = 1: the phase diagram
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhaseConfig:
    """The (eta, sigma, n) phase diagram in d = 1 (the book's experiment).

    ns: sample sizes (n points from N(0, 1) per data set; data set s of size n = 20 is that of
    Fig. 2's simulation s). times: forward times t, ``sigma = sqrt(1 - e^{-2t})``. lrs: the
    learning-rate grid; each lr trains ``round(flow_time / lr)`` steps (``eta x steps`` fixed:
    the paper's Fig. 2 keeps it at 2000-2500, the book's Fig. 2 at a quarter of that; the full
    resolution here at half). batch_size, width:
    Fig. 2's; the loss is the batch mean. seeds: data sets (each with its own initialisation and
    batches). decay: divisors of eta of the noise-removal phases, ``decay_steps`` steps each, from
    the last iterate; average_fraction: the Polyak window (last fraction of the steps).
    quadrature_nodes: excess-risk quadrature per point; tv_grid: nodes of ``TV_pi(s*)``.
    """

    scale: str = "paper"
    ns: tuple = (5, 10, 20, 40)
    times: tuple = (0.02, 0.05, 0.1, 0.2, 0.5)
    lrs: tuple = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
    flow_time: float = 1250.0
    batch_size: int = 50
    width: int = 1000
    seeds: tuple = tuple(range(8))
    decay: tuple = (10.0, 100.0)
    decay_steps: int = 1000
    average_fraction: float = 0.2
    quadrature_nodes: int = 401
    tv_grid: int = 1001
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        _check_lrs(self.lrs, tuple(1 for _ in self.lrs))
        if list(self.lrs) != sorted(set(self.lrs)):
            raise ValueError(f"lrs must be increasing and distinct, got {self.lrs!r}")
        if not self.ns or any(isinstance(n, bool) or int(n) != n or n < 2 for n in self.ns):
            raise ValueError(f"ns must be integers >= 2, got {self.ns!r}")
        if not self.times or any(not t > 0 for t in self.times):
            raise ValueError(f"times must be positive, got {self.times!r}")
        if not self.flow_time > 0:
            raise ValueError(f"flow_time must be positive, got {self.flow_time!r}")
        for name in ("batch_size", "width", "decay_steps", "quadrature_nodes", "tv_grid"):
            _positive_int(getattr(self, name), name)
        if not self.decay or any(not f > 1 for f in self.decay):
            raise ValueError(f"decay must be a non-empty tuple of divisors > 1, "
                             f"got {self.decay!r}")
        if not 0 < self.average_fraction < 1:
            raise ValueError(f"average_fraction must lie in (0, 1), got {self.average_fraction!r}")

    def steps_for(self, lr: float) -> int:
        """SGD steps of learning rate ``lr``: ``round(flow_time / lr)`` (at least 1)."""
        return max(1, round(self.flow_time / float(lr)))

    @classmethod
    def preset(cls, scale: str) -> "PhaseConfig":
        """``"paper"``: the full-resolution diagram (results/phase_paper.npz); ``"book"``: the
        chapter's live slice (n = 10, three noise levels, four learning rates, three data sets,
        an eighth of the full run's gradient-flow time)."""
        if scale == "paper":
            return cls()
        if scale == "book":
            return cls(scale="book", ns=(10,), times=(0.05, 0.2, 0.5),
                       lrs=(0.02, 0.08, 0.32, 1.28), flow_time=156.25, seeds=(0, 1, 2),
                       decay_steps=500)
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")


def _float64(net):
    W1, b, W2 = (p.detach().to("cpu", torch.float64) for p in (net.W1, net.b, net.W2))
    return TwoLayerScoreNet.from_parameters(W1, b, W2)


def _phase_cell(cfg, x, mu_k, sigma_k, lr, keys):
    """Train one ensemble (all noise levels x data sets of one n) at ``lr``; measure it."""
    init_keys, train_keys = keys
    K = x.shape[0]
    steps = cfg.steps_for(lr)
    x32 = x.to(torch.float32)
    net = TwoLayerScoreNet(cfg.width, 1, ensemble=K, device=cfg.device,
                           generator=[_generator(*k) for k in init_keys])
    gens = [_generator(*k) for k in train_keys]
    kw = dict(batch_size=cfg.batch_size, reduction="mean", generator=gens, device=cfg.device,
              progress=False)
    n_avg = max(1, round(cfg.average_fraction * steps))
    res = train_sgd(net, x32, mu_k, sigma_k, lr=float(lr), steps=steps, average_last=n_avg, **kw)
    diverged = res.diverged.numpy().copy()
    q = dict(num_nodes=cfg.quadrature_nodes)
    out = {}
    with torch.no_grad():
        out["excess_last"] = excess_risk(_float64(net), x, mu_k, sigma_k, **q).numpy()
        out["active_last"] = active_fraction(net, x, mu_k).numpy()
        out["excess_avg"] = excess_risk(_float64(res.averaged), x, mu_k, sigma_k, **q).numpy()
    for f in cfg.decay:
        d = train_sgd(net, x32, mu_k, sigma_k, lr=float(lr) / f, steps=cfg.decay_steps, **kw)
        diverged |= d.diverged.numpy()
    with torch.no_grad():
        dec = _float64(net)
        out["excess_decay"] = excess_risk(dec, x, mu_k, sigma_k, **q).numpy()
        out["active_decay"] = active_fraction(net, x, mu_k).numpy()
        out["tv_decay"] = np.array([float(weighted_tv(dec.member(k), x[k], float(mu_k[k]),
                                                      float(sigma_k[k]))) for k in range(K)])
    out["diverged"] = diverged
    return out


def phase(config: PhaseConfig | None = None, *, progress: bool = False) -> dict:
    r"""The phase diagram: every (n, eta, sigma, data set) network, three states each.

    Returns a dict of NumPy arrays, with N = len(ns), L = len(lrs), T = len(times),
    S = len(seeds):

    - ``excess_{state}`` (N, L, T, S), state in ``last`` (the last iterate), ``avg`` (Polyak
      average), ``decay`` (after the learning-rate decay): the excess risk ``R_n(s) - R_n(s*)``;
      ``active_last``, ``active_decay``: share of units active on the data hull; ``tv_decay``:
      ``TV_pi`` of the decayed network;
    - ``diverged`` (N, L, T, S) bool (during training or the decay; frozen parameters);
      ``collapsed``: not diverged and no unit active on the data hull at the end of training;
    - ``zero_excess`` (N, T, S): excess risk of the score 0; ``tv_star`` (N, T, S):
      ``TV_pi(s*)``; ``theorem_lr`` (N, T, S): Thm. 8's ``2^12 sigma^2 / (mu n^2 Delta)``;
      ``delta`` (N, S): the data sets' minimum spacing;
    - ``ns``, ``lrs``, ``steps`` (L,), ``times``, ``mu``, ``sigma`` (T,), ``seeds``,
      ``flow_time`` (), ``train_seconds`` (N, L); the data sets ``data_n{n}`` (S, n).
    """
    cfg = PhaseConfig() if config is None else config
    mus, sigmas = _schedule(cfg.times)
    N, L, T, S = len(cfg.ns), len(cfg.lrs), len(cfg.times), len(cfg.seeds)
    t_idx, s_idx = np.repeat(np.arange(T), S), np.tile(np.arange(S), T)   # member k = (t, s)
    keys = ("excess_last", "excess_avg", "excess_decay", "active_last", "active_decay",
            "tv_decay")
    out = {k: np.full((N, L, T, S), math.nan) for k in keys}
    out["diverged"] = np.zeros((N, L, T, S), dtype=bool)
    refs = {k: np.full((N, T, S), math.nan) for k in ("zero_excess", "tv_star", "theorem_lr")}
    delta = np.full((N, S), math.nan)
    seconds = np.zeros((N, L))
    cells = [(ni, li) for ni in range(N) for li in range(L)]
    data_sets = {}
    for ni, n in enumerate(cfg.ns):
        data_sets[n] = np.stack([torch.randn(n, generator=_generator(s, _DATA, 1),
                                             dtype=torch.float64).numpy() for s in cfg.seeds])
    for ni, li in _progress(cells, progress, "phase cells"):
        n, lr = cfg.ns[ni], cfg.lrs[li]
        x = torch.as_tensor(data_sets[n][s_idx])
        mu_k, sigma_k = torch.as_tensor(mus[t_idx]), torch.as_tensor(sigmas[t_idx])
        init = [(cfg.seeds[s], _INIT) for s in s_idx]
        train = [(cfg.seeds[s], _TRAIN, int(t), int(n)) for t, s in zip(t_idx, s_idx)]
        t0 = time.perf_counter()
        cell = _phase_cell(cfg, x, mu_k, sigma_k, lr, (init, train))
        seconds[ni, li] = time.perf_counter() - t0
        for k, v in cell.items():
            out[k][ni, li] = v.reshape(T, S)
    for ni, n in enumerate(cfg.ns):
        for s in range(S):
            xs = torch.as_tensor(data_sets[n][s])
            delta[ni, s] = min_gap(xs)
            for t in range(T):
                mu, sigma = float(mus[t]), float(sigmas[t])
                refs["zero_excess"][ni, t, s] = float(excess_risk(
                    lambda y: torch.zeros_like(y), xs, mu, sigma, num_nodes=cfg.quadrature_nodes))
                refs["tv_star"][ni, t, s] = weighted_tv("optimal", xs, mu, sigma, grid=cfg.tv_grid)
                refs["theorem_lr"][ni, t, s] = theorem_lr_threshold(xs, mu, sigma)
    out["collapsed"] = ~out["diverged"] & (out["active_last"] == 0)
    out.update(refs)
    out.update({f"data_n{n}": v for n, v in data_sets.items()})
    out.update({
        "delta": delta, "ns": np.array(cfg.ns, dtype=np.int64),
        "lrs": np.array(cfg.lrs, dtype=np.float64),
        "steps": np.array([cfg.steps_for(lr) for lr in cfg.lrs], dtype=np.int64),
        "times": np.array(cfg.times, dtype=np.float64), "mu": mus, "sigma": sigmas,
        "seeds": np.array(cfg.seeds, dtype=np.int64), "flow_time": np.array(cfg.flow_time),
        "train_seconds": seconds,
    })
    return out


# ------------------------------------------------------------------------------------------------
# d = 2: memorization and quality along training
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationConfig:
    """Time-conditioned networks (Fig. 3 setting) sampled along training, for several n and eta.

    Data: n points from N(0, data_std^2 I_d), one data set per (n, seed); each seed also has its
    own initialisation and batches (one network per (n, eta, seed)). Training as
    :class:`Fig3Config` (``train_time_score_net``, times ∝ sigma(t), ``reduction="mean_all"``);
    lrs[i] trains ``round(flow_time[i] / lrs[i])`` steps with batches of ``batch_size[i]``
    (``flow_time``: one gradient-flow time ``eta x steps`` for every lr, or one per lr).
    checkpoints: ``C`` gradient-flow times ``F * 2^{-(C-1)}, ..., F / 2, F`` with ``F`` the largest
    flow time, the same for every lr (an lr with a shorter flow time, which must be one of them,
    stops there); at each, ``num_samples`` samples of the network
    (``sampler_steps`` steps of the backward OU sampler from T to delta) are compared with the
    training set (memorization fraction, ratio 1/3) and with ``reference_samples`` fresh samples of
    the true distribution at time delta, ``N(0, (data_std^2 mu(delta)^2 + sigma(delta)^2) I)``:
    MMD^2 (Gaussian kernel, ``bandwidth``), energy distance and sliced Wasserstein-2
    (``projections`` directions, the same directions for every comparison).
    """

    scale: str = "paper"
    dim: int = 2
    ns: tuple = (5, 10, 20, 40)
    data_std: float = 2.0
    width: int = 250
    lrs: tuple = (0.05, 0.1, 0.5, 1.0, 2.0)
    batch_size: tuple = (500, 500, 500, 500, 500)
    flow_time: tuple = (2000.0, 4000.0, 16000.0, 16000.0, 16000.0)
    checkpoints: int = 11
    num_times: int = 100
    T: float = 1.0
    delta: float = 0.01
    time_weighting: str = "sigma"
    reduction: str = "mean_all"
    seeds: tuple = (0, 1)
    num_samples: int = 1000
    reference_samples: int = 2000
    sampler_steps: int = 200
    bandwidth: float = 1.0
    projections: int = 128
    activity_samples: int = 20_000
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        _check_lrs(self.lrs, tuple(1 for _ in self.lrs))
        if len(self.batch_size) != len(self.lrs):
            raise ValueError(f"batch_size must give one batch size per learning rate, "
                             f"got {self.batch_size!r} for lrs {self.lrs!r}")
        for b in self.batch_size:
            _positive_int(b, "batch_size")
        if not self.ns or any(isinstance(n, bool) or int(n) != n or n < 2 for n in self.ns):
            raise ValueError(f"ns must be integers >= 2, got {self.ns!r}")
        for name in ("dim", "width", "checkpoints", "num_times", "num_samples",
                     "reference_samples", "sampler_steps", "projections", "activity_samples"):
            _positive_int(getattr(self, name), name)
        if self.num_samples < 2 or self.reference_samples < 2:
            raise ValueError("num_samples and reference_samples must be >= 2")
        flows = self.lr_flow_times()
        if any(not f > 0 for f in flows) or not self.data_std > 0 or not self.bandwidth > 0:
            raise ValueError("flow_time, data_std and bandwidth must be positive")
        tau = self.flow_times()
        for f in flows:
            if not np.any(np.abs(tau - f) <= 1e-9 * f):
                raise ValueError(f"each flow time must be one of the checkpoint times "
                                 f"{tau.tolist()}, got {f}")
        if not self.T > self.delta > 0:
            raise ValueError(f"need T > delta > 0, got T={self.T}, delta={self.delta}")
        for row in self.checkpoint_steps():
            if np.any(np.diff(row[row >= 0]) <= 0):
                raise ValueError("checkpoints too dense for the largest learning rate: two "
                                 "checkpoints fall on the same step; use fewer checkpoints or a "
                                 "longer flow_time")

    def lr_flow_times(self) -> tuple:
        """The gradient-flow time ``eta x steps`` of each learning rate (L,)."""
        f = self.flow_time
        if isinstance(f, (tuple, list)):
            if len(f) != len(self.lrs):
                raise ValueError(f"flow_time must be one number or one per learning rate, got "
                                 f"{f!r} for lrs {self.lrs!r}")
            return tuple(float(v) for v in f)
        return tuple(float(f) for _ in self.lrs)

    def flow_times(self) -> np.ndarray:
        """The checkpoint gradient-flow times (C,): ``F * 2^{-(C-1)} ... F``, F the largest."""
        return max(self.lr_flow_times()) * 2.0 ** np.arange(-(self.checkpoints - 1), 1)

    def checkpoint_steps(self) -> np.ndarray:
        """(L, C) int64: the step counts ``max(1, round(tau_c / lr))`` of every checkpoint, -1
        after the lr's own flow time."""
        tau = self.flow_times()
        return np.array([[max(1, round(t / lr)) if t <= f * (1 + 1e-9) else -1 for t in tau]
                         for lr, f in zip(self.lrs, self.lr_flow_times())], dtype=np.int64)

    @classmethod
    def preset(cls, scale: str) -> "GenerationConfig":
        """``"paper"``: the full-resolution run (results/generation_paper.npz); ``"book"``: the
        chapter's live run (n = 10, two learning rates, one seed, a fifth of the flow time)."""
        if scale == "paper":
            return cls()
        if scale == "book":
            return cls(scale="book", ns=(10,), lrs=(0.1, 1.0), batch_size=(500, 500),
                       flow_time=(400.0, 400.0), checkpoints=4, seeds=(0,), num_samples=500,
                       reference_samples=1000, sampler_steps=100, projections=64,
                       activity_samples=5000)
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")


def true_variance(data_std: float, t: float) -> float:
    r"""Variance per coordinate of the true law at forward time t: ``data_std^2 mu^2 + sigma^2``
    (data from N(0, data_std^2 I), forward OU process)."""
    return data_std ** 2 * ou_mu(t) ** 2 + ou_sigma(t) ** 2


def _true_score(data_std):
    """The exact score of N(0, data_std^2 I) pushed to time t:
    ``-y / (data_std^2 mu^2 + sigma^2)``."""
    def score(y, t):
        return -y / true_variance(data_std, t)
    return score


class _Distances:
    """Distances of sample sets to one reference set of the true law (fixed SW directions)."""

    def __init__(self, cfg, data, reference, key):
        self.cfg, self.data, self.ref, self.key = cfg, data, reference, key

    def __call__(self, s):
        cfg = self.cfg
        sw_gen = _generator(*self.key, device=s.device)            # the same directions each call
        return {"memorization": memorization_fraction(s, self.data),
                "mmd": float(mmd(s, self.ref, cfg.bandwidth)),
                "energy": float(energy_distance(s, self.ref, unbiased=True)),
                "sw": float(sliced_wasserstein(s, self.ref, num_projections=cfg.projections,
                                               generator=sw_gen))}


_METRICS = ("memorization", "mmd", "energy", "sw")
_SAMPLE_BOUND = 1e4     # a sample beyond it (the true law has sd ~2) counts as a failed sampler
_REFERENCES = ("star", "gauss", "true_score", "fresh")


def _sample(cfg, score, key, dev):
    return reverse_sde_sample(score, cfg.num_samples, cfg.dim, T=cfg.T, delta=cfg.delta,
                              steps=cfg.sampler_steps, generator=_generator(*key, device=dev),
                              device=dev)


def generation(config: GenerationConfig | None = None, *, progress: bool = False) -> dict:
    r"""Memorization and distance to the true law along training, for several n and eta (d = 2).

    Returns a dict of NumPy arrays (N = len(ns), L = len(lrs), S = len(seeds),
    C = checkpoints):

    - ``{metric}`` (N, L, S, C) for metric in ``memorization`` (share of generated samples three
      times closer to their nearest training point than to the second), ``mmd`` (MMD^2 to fresh
      true samples), ``energy`` (squared energy distance to them), ``sw`` (sliced
      Wasserstein-2 to them); ``active`` (N, L, S, C): share of hidden units active on some
      training input. NaN after the lr's flow time, from the checkpoint where the network
      diverged, and where its sampler
      failed (a non-finite score, or a sample beyond 1e4 in absolute value: ``sampling_failed``
      (N, L, S, C));
    - ``diverged`` (N, L, S) bool, ``diverged_step`` (N, L, S) (-1: never);
    - references ``ref_{metric}`` (N, S, 4) for the sets ``star`` (the ``s*`` sampler: a kernel
      density estimate of the data), ``gauss`` (the Gaussian fitted to the data), ``true_score``
      (the same sampler driven by the exact score of N(0, data_std^2 I)) and ``fresh`` (fresh
      samples of the true law at delta, as many as generated: each distance's noise floor);
      ``reference_names``;
    - ``flow_times`` (C,), ``checkpoint_steps`` (L, C) (-1 after the lr's flow time),
      ``lr_flow_times`` (L,), ``ns``, ``lrs``, ``batch_size``,
      ``seeds``, ``train_seconds`` (N, L), ``true_variance`` ().
    """
    cfg = GenerationConfig() if config is None else config
    dev = torch.device(cfg.device)
    d, N, L, S, C = cfg.dim, len(cfg.ns), len(cfg.lrs), len(cfg.seeds), cfg.checkpoints
    steps = cfg.checkpoint_steps()
    out = {k: np.full((N, L, S, C), math.nan) for k in _METRICS + ("active",)}
    out["diverged"] = np.zeros((N, L, S), dtype=bool)
    out["diverged_step"] = np.full((N, L, S), -1, dtype=np.int64)
    out["sampling_failed"] = np.zeros((N, L, S, C), dtype=bool)
    refs = {f"ref_{k}": np.full((N, S, len(_REFERENCES)), math.nan) for k in _METRICS}
    seconds = np.zeros((N, L))
    var = true_variance(cfg.data_std, cfg.delta)
    runs = [(ni, si) for ni in range(N) for si in range(S)]
    for ni, si in _progress(runs, progress, "data sets"):
        n, seed = cfg.ns[ni], cfg.seeds[si]
        x = cfg.data_std * torch.randn(n, d, generator=_generator(seed, _DATA, d, n),
                                       dtype=torch.float64)
        xf = x.to(dev, torch.float32)
        g_ref = _generator(seed, _SAMPLE, n, 0, device=dev)
        reference = math.sqrt(var) * torch.randn(cfg.reference_samples, d, generator=g_ref,
                                                 device=dev)
        dist = _Distances(cfg, xf, reference, (seed, _EVAL, n, 0))
        sets = {"star": _sample(cfg, optimal_score_fn(xf), (seed, _SAMPLE, n, 1), dev),
                "gauss": fitted_gaussian(xf).sample(cfg.num_samples, generator=_generator(
                    seed, _SAMPLE, n, 2, device=dev)),
                "true_score": _sample(cfg, _true_score(cfg.data_std), (seed, _SAMPLE, n, 3), dev),
                "fresh": math.sqrt(var) * torch.randn(cfg.num_samples, d, generator=_generator(
                    seed, _SAMPLE, n, 4, device=dev), device=dev)}
        for r, name in enumerate(_REFERENCES):
            for k, v in dist(sets[name]).items():
                refs[f"ref_{k}"][ni, si, r] = v
        for li, (lr, batch) in enumerate(zip(cfg.lrs, cfg.batch_size)):
            t0 = time.perf_counter()
            net = TimeScoreNet(cfg.width, d, generator=_generator(seed, _INIT, d, n, device=dev),
                               device=dev)
            gen = _generator(seed, _TRAIN, d, n, li, device=dev)
            done = 0
            for c in range(C):
                if steps[li, c] < 0:                   # past this lr's flow time
                    break
                chunk = int(steps[li, c]) - done
                res = train_time_score_net(
                    net, xf, lr=float(lr), steps=chunk, batch_size=int(batch), T=cfg.T,
                    delta=cfg.delta, num_times=cfg.num_times, time_weighting=cfg.time_weighting,
                    reduction=cfg.reduction, generator=gen, log_every=chunk, progress=False)
                if bool(res.diverged):
                    out["diverged"][ni, li, si] = True
                    out["diverged_step"][ni, li, si] = done + int(res.diverged_step)
                    break
                done += chunk
                try:
                    smp = _sample(cfg, net.score, (seed, _SAMPLE, n, 10 + li, c), dev)
                except FloatingPointError:
                    smp = None
                if smp is None or not bool((smp.abs() <= _SAMPLE_BOUND).all()):
                    out["sampling_failed"][ni, li, si, c] = True
                    continue
                for k, v in dist(smp.reshape(cfg.num_samples, d)).items():
                    out[k][ni, li, si, c] = v
                ens = TimeScoreNet._from_params(net.W1[None], net.b[None], net.W2[None])
                out["active"][ni, li, si, c] = float(time_net_activity(
                    ens, x, num=cfg.activity_samples, T=cfg.T, delta=cfg.delta,
                    num_times=cfg.num_times, time_weighting=cfg.time_weighting,
                    generator=_generator(seed, _EVAL, n, 1))[0])
            seconds[ni, li] += time.perf_counter() - t0
    out.update(refs)
    out.update({
        "reference_names": np.array(_REFERENCES), "flow_times": cfg.flow_times(),
        "checkpoint_steps": steps, "lr_flow_times": np.array(cfg.lr_flow_times()),
        "ns": np.array(cfg.ns, dtype=np.int64),
        "lrs": np.array(cfg.lrs, dtype=np.float64),
        "batch_size": np.array(cfg.batch_size, dtype=np.int64),
        "seeds": np.array(cfg.seeds, dtype=np.int64), "train_seconds": seconds,
        "true_variance": np.array(var),
    })
    return out
