r"""Fig. 3-4 of the paper (Appendix D): time-conditioned nets, the reverse-SDE sampler and MMDs.

``fig3``: d = 2 diffusion with a time-conditioned net: samples and MMDs for a small and a large eta.
``fig4``: MMD ratio vs dimension d at eta = 0.5.
``reduction_check`` and ``jitter_calibration``: the two side experiments of the
experiment chapters.
See the chapters "Large learning rates memorize less" and "Higher dimension memorizes less".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import fitted_gaussian, memorization_fraction, mmd
from ..sampling import optimal_score_fn, reverse_sde_sample
from ..timenet import TimeScoreNet
from ..timenet_training import train_time_score_net
from ._common import (_DATA, _EVAL, _INIT, _SAMPLE, _TRAIN, _check_common, _check_lrs,
                      _check_reduction, _generator, _progress)

__all__ = ["Fig3Config", "Fig4Config", "fig3", "fig4", "fig4_combine", "reduction_check",
           "jitter_calibration"]


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
    Gaussian fit is. (Our reading of Appendix D; the dimension chapter discusses it.) The
    training points of each run are n draws from N(0, data_std^2 I_d) (Appendix D does not say).
    reduction as in :class:`Fig3Config`: with ``"mean"`` eta = 0.5 diverges for d >= 10.
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


def _train_time_nets(cfg, data, lrs, steps, seeds, dim, progress, batch_size=None):
    """One TimeScoreNet ensemble trained on ``data``; returns (net, result).

    Members: ``seeds`` (one member each, same ``lr``: ``lrs`` a number), or the pairs
    ``(lr, seed)`` with ``lrs`` and ``seeds`` of equal length. Member k is initialised and fed by
    the generators of ``(seeds[k], purpose, dim)`` on the device, so it is the network a single
    run with that seed gives. data: (n, d) shared, or (K, n, d) one data set per member.
    """
    dev = torch.device(cfg.device)
    init = [_generator(s, _INIT, dim, device=dev) for s in seeds]
    net = TimeScoreNet(cfg.width, dim, ensemble=len(seeds), generator=init, device=dev)
    gens = [_generator(s, _TRAIN, dim, device=dev) for s in seeds]
    lr = (torch.tensor([float(v) for v in lrs], device=dev)
          if isinstance(lrs, (list, tuple)) else float(lrs))
    log_every = max(1, steps // 100)
    res = train_time_score_net(net, data.to(dev, torch.float32), lr=lr, steps=int(steps),
                               batch_size=batch_size or cfg.batch_size, T=cfg.T,
                               delta=cfg.delta,
                               num_times=cfg.num_times, time_weighting=cfg.time_weighting,
                               reduction=cfg.reduction, generator=gens, log_every=log_every,
                               progress=progress)
    return net, res


def _sample(score_fn, num, dim, cfg, gen, ensemble=None, nonfinite="raise"):
    return reverse_sde_sample(score_fn, num, dim, T=cfg.T, delta=cfg.delta,
                              steps=cfg.sampler_steps, ensemble=ensemble, generator=gen,
                              device=cfg.device, nonfinite=nonfinite)


def _sample_members(net, diverged, num, dim, cfg, member_keys):
    """Samples of every member of a TimeScoreNet ensemble: (K, num, dim), NaN where unusable.

    All members are sampled at once (one ensemble run of the sampler); member k uses the
    generator of ``member_keys[k]``, so its samples are those of a run of member k alone. A
    diverged member (frozen by the trainer), and a member whose samples turn NaN or infinite
    (its score blew up), get NaN samples. Returns the samples and a (K,) bool "failed" flag.
    """
    dev = torch.device(cfg.device)
    K = net.ensemble
    gens = [_generator(*keys, device=dev) for keys in member_keys]
    out = _sample(lambda x, t: net.score(x, t, check=False), num, dim, cfg, gens, ensemble=K,
                  nonfinite="keep").reshape(K, num, dim)
    bad = diverged.reshape(-1).to(dev) | ~torch.isfinite(out).flatten(1).all(dim=1)
    out[bad] = math.nan
    return out, bad.cpu().numpy()


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


def _lr_groups(cfg) -> list:
    """Indices of the learning rates trained together as one ensemble: those with the same
    number of steps and the same batch size (in the paper's and the book's presets every
    learning rate has its own step count, so each is its own group of ``len(seeds)`` members)."""
    groups = {}
    for li, steps in enumerate(cfg.steps):
        groups.setdefault((int(steps), cfg.batch_for(li)), []).append(li)
    return list(groups.values())


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
      ``lrs``, ``steps``, ``seeds``, ``train_seconds`` (L,) (training time of the ensemble that
      holds the learning rate, see :func:`_lr_groups`).
    """
    cfg = Fig3Config() if config is None else config
    dev = torch.device(cfg.device)
    x = cfg.data_std * torch.randn(cfg.n, cfg.dim, generator=_generator(cfg.data_seed, _DATA),
                                   dtype=torch.float64)
    xf = x.to(dev, torch.float32)
    star, star2, gauss = _references(x, cfg, cfg.num_samples, cfg.data_seed, _SAMPLE)
    L, S = len(cfg.lrs), len(cfg.seeds)
    out = {k: [None] * L for k in ("samples", "mmd_star", "mmd_gauss", "memorization",
                                   "diverged", "sampling_failed", "final_loss")}
    seconds = [0.0] * L
    for group in _progress(_lr_groups(cfg), progress, "learning rates"):
        t0 = time.perf_counter()
        steps = cfg.steps[group[0]]
        lrs = float(cfg.lrs[group[0]]) if len(group) == 1 else \
            [cfg.lrs[li] for li in group for _ in cfg.seeds]
        net, res = _train_time_nets(cfg, x, lrs, steps, cfg.seeds * len(group), cfg.dim,
                                    progress, batch_size=cfg.batch_for(group[0]))
        train_seconds = time.perf_counter() - t0
        keys = [(cfg.data_seed, _SAMPLE, 10 + li, k) for li in group for k in range(S)]
        smp, failed = _sample_members(net, res.diverged, cfg.num_samples, cfg.dim, cfg, keys)
        for gi, li in enumerate(group):
            rows = slice(gi * S, (gi + 1) * S)
            seconds[li] = train_seconds
            out["samples"][li] = smp[rows].cpu().numpy()
            nan = math.nan
            out["mmd_star"][li] = [nan if f else float(mmd(s, star, cfg.bandwidth))
                                   for s, f in zip(smp[rows], failed[rows])]
            out["mmd_gauss"][li] = [nan if f else float(mmd(s, gauss, cfg.bandwidth))
                                    for s, f in zip(smp[rows], failed[rows])]
            out["memorization"][li] = [nan if f else memorization_fraction(s, xf)
                                       for s, f in zip(smp[rows], failed[rows])]
            out["sampling_failed"][li] = failed[rows]
            out["diverged"][li] = res.diverged[rows].cpu().numpy()
            out["final_loss"][li] = res.final_loss[rows].cpu().numpy().astype(np.float64)
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
        # one run = new data, new network: the runs of a dimension are one ensemble with one
        # data set per member, member k fed by the random streams of seed k
        xs = torch.stack([cfg.data_std * torch.randn(cfg.n, d, generator=_generator(s, _DATA, d),
                                                     dtype=torch.float64) for s in cfg.seeds])
        net, res = _train_time_nets(cfg, xs, cfg.lr, cfg.steps, cfg.seeds, d, progress)
        gens, _ = _sample_members(net, res.diverged, P * N, d, cfg,
                                  [(s, _SAMPLE, d, 10, 0) for s in cfg.seeds])
        for r, s in enumerate(cfg.seeds):
            x, gen = xs[r], gens[r].reshape(P, N, d)
            star, _, gauss = _references(x, cfg, P * N, s, _SAMPLE, d, second=False)
            star, gauss = star.reshape(P, N, d), gauss.reshape(P, N, d)
            for k, v in _set_metrics(gen, star, gauss, x.to(dev, torch.float32),
                                     cfg.bandwidth).items():
                per_run[k].append(v)
            per_run["samples_proj"].append(gen[0, :, :2].cpu().numpy())
            per_run["star_proj"].append(star[0, :, :2].cpu().numpy())
            per_run["data_proj"].append(x[:, :2].numpy())
            per_run["diverged"].append(bool(res.diverged.reshape(-1)[r]))
            per_run["final_loss"].append(float(res.final_loss.reshape(-1)[r]))
        seconds.append(time.perf_counter() - t0)
        for k in keys:
            out[k].append(np.asarray(per_run[k]))
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["ratio"] = arrays["mmd_gen_star"] / arrays["mmd_star_gauss"]
    arrays.update({"dims": np.array(cfg.dims, dtype=np.int64),
                   "seeds": np.array(cfg.seeds, dtype=np.int64),
                   "train_seconds": np.array(seconds)})
    return arrays


def fig4_combine(parts) -> dict:
    """Join :func:`fig4` results of single dimensions (or of any disjoint dimension lists) into
    the result of one run over all their dimensions, in the order given.

    Every dimension is computed independently (its random streams are keyed by the seed, the
    purpose and ``d``), so ``fig4_combine([fig4(cfg_d) for d in dims])`` equals ``fig4(cfg)``
    with ``cfg.dims = dims`` array for array: this is how a long paper-scale run is split into
    resumable parts (``tools/paper_scale_gpu.py``). parts: a list of such dicts, same seeds.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("parts must hold at least one fig4 result")
    seeds = parts[0]["seeds"]
    for p in parts[1:]:
        if not np.array_equal(p["seeds"], seeds):
            raise ValueError("fig4 parts must have the same seeds")
    out = {k: np.concatenate([np.asarray(p[k]) for p in parts])
           for k in parts[0] if k != "seeds"}
    if len(set(out["dims"].tolist())) != len(out["dims"]):
        raise ValueError(f"fig4 parts overlap: dimensions {out['dims'].tolist()}")
    out["seeds"] = np.asarray(seeds)
    return out


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
