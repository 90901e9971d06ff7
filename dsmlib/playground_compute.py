r"""The computation behind the playground's grid: training and summarizing one setting.

For each cell ``(t, n, width, data seed)`` one ensemble of two-layer nets is trained by
:func:`dsmlib.train_sgd` at the single noise level ``(mu, sigma) = (e^{-t}, sqrt(1 - e^{-2t}))``,
one member per learning rate with the same initialisation and the same stream of SGD batches and
noise, every learning rate for the same training time ``eta * steps`` (:func:`steps_for`), and
summarized by what the playground draws (:class:`View`): the learned score next to ``s*``,
Langevin samples of ``p_t`` and their denoised versions, the excess risk, the sharpness next to
``2 / (m eta)``, Thm. 8's threshold, the memorization fraction and the active-unit fraction.

:func:`compute_cell` and :func:`compute_grid` give the arrays of the grid file (configured by
:class:`PlaygroundConfig`); :func:`train_view` trains one setting off the grid. The grid file
itself (loading, checking, regenerating, the command line) is :mod:`dsmlib.playground`, whose
docstring describes the protocol and its reproducibility in full; every public name here is also
importable from there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import _checks
from .metrics import memorization_fraction
from .networks import TwoLayerScoreNet, active_fraction, make_generators
from .optimal import optimal_score
from .risk import excess_risk
from .schedule import ou_mu, ou_sigma
from .stability import sharpness, stability_threshold
from .theory import theorem_lr_threshold
from .training import train_sgd

__all__ = ["PlaygroundConfig", "View", "compute_grid", "compute_cell", "train_view",
           "training_data", "steps_for"]

_BLOCK = 256      # train_sgd draws its random numbers in blocks of 256 steps
_CHUNK = 1024     # steps per train_sgd call (progress updates in between; a multiple of _BLOCK)


@dataclass(frozen=True)
class PlaygroundConfig:
    """Everything that determines the grid file (stored in it and checked on loading).

    times, ns, widths, lrs, seeds: the grid axes (forward time t, number of training points n,
    width m, learning rate eta, data seed). train_time: ``eta * steps`` for every learning rate.
    batch_size, reduction: as in :func:`dsmlib.train_sgd`. plot_lim, plot_points: the plot grid
    ``linspace(-plot_lim, plot_lim, plot_points)``. langevin_*: the Langevin sampler (chains,
    step ``h = langevin_step * sigma^2``, total time ``h * steps = langevin_time``, score read on a
    grid of ``langevin_points`` points on ``[-langevin_lim, langevin_lim]``). hist_bins: bins of
    the histograms on ``[-plot_lim, plot_lim]``. excess_nodes: quadrature nodes of the excess risk.
    sharpness_iters, sharpness_tol: Lanczos settings. format: bumped when the file layout changes
    (2: the active-unit fraction ``active`` was added).
    """

    times: tuple = (0.02, 0.05, 0.2)
    ns: tuple = (5, 10, 20)
    widths: tuple = (100, 1000)
    lrs: tuple = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    seeds: tuple = (0, 1, 2)
    train_time: float = 1000.0
    batch_size: int = 50
    reduction: str = "mean"
    plot_lim: float = 3.0
    plot_points: int = 481
    langevin_chains: int = 4000
    langevin_step: float = 0.1
    langevin_time: float = 4.0
    langevin_lim: float = 6.0
    langevin_points: int = 4801
    hist_bins: int = 64
    excess_nodes: int = 401
    sharpness_iters: int = 60
    sharpness_tol: float = 1e-3
    format: int = 2

    def __post_init__(self):
        for name in ("times", "ns", "widths", "lrs", "seeds"):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"{name} is empty")
            if len(set(values)) != len(values) or list(values) != sorted(values):
                raise ValueError(f"{name} must be strictly increasing, got {values}")
            object.__setattr__(self, name, values)
        for t in self.times:
            _checks.positive(t, "times[i]")
        for lr in self.lrs:
            _checks.positive(lr, "lrs[i]")
        for n in self.ns:
            _checks.integer(n, "ns[i]", 2)
        for m in self.widths:
            _checks.integer(m, "widths[i]", 1)
        for s in self.seeds:
            _checks.integer(s, "seeds[i]", 0)

    @property
    def y(self) -> np.ndarray:
        """The plot grid (plot_points,), float64."""
        return np.linspace(-self.plot_lim, self.plot_lim, self.plot_points)

    @property
    def hist_edges(self) -> np.ndarray:
        """Histogram bin edges (hist_bins + 1,), float64."""
        return np.linspace(-self.plot_lim, self.plot_lim, self.hist_bins + 1)


@dataclass(frozen=True)
class View:
    """Everything the playground draws for one setting (NumPy arrays, float64; NaN = not drawn).

    lr, t, n, width, seed: the setting; mu, sigma: its noise scales; steps: SGD steps taken.
    data: (n,) training points. y: (G,) plot grid; score, optimal: (G,) learned score and s*.
    hist_edges: (B+1,). noisy, noisy_opt: (B,) densities of the Langevin samples of p_t with the
    learned score and with s*. denoised, denoised_opt: (B,) densities of the denoised samples.
    excess: excess risk; sharp: sharpness lambda_max; stab: 2/(m eta); theorem_lr: Thm. 8's
    threshold; memo, memo_opt: memorization fractions (learned, s*); active: fraction of hidden
    units active on the data range (0: collapsed). diverged: SGD diverged (the learned quantities
    are then NaN). source: "grid" or "trained now (<seconds> s)".
    noisy_top, denoised_top: largest histogram density over s* and every learning rate of the
    grid cell (a common vertical scale while the learning rate moves).
    """

    lr: float
    t: float
    n: int
    width: int
    seed: int
    mu: float
    sigma: float
    steps: int
    data: np.ndarray
    y: np.ndarray
    score: np.ndarray
    optimal: np.ndarray
    hist_edges: np.ndarray
    noisy: np.ndarray
    noisy_opt: np.ndarray
    denoised: np.ndarray
    denoised_opt: np.ndarray
    excess: float
    sharp: float
    stab: float
    theorem_lr: float
    memo: float
    memo_opt: float
    active: float
    diverged: bool
    source: str = "grid"
    noisy_top: float = math.nan
    denoised_top: float = math.nan


# --------------------------------------------------------------------------------- training

def steps_for(lr, train_time) -> int:
    """SGD steps giving training time ``eta * steps >= train_time``, in whole blocks of 256."""
    lr = _checks.positive(lr, "lr")
    train_time = _checks.positive(train_time, "train_time")
    return max(_BLOCK, _BLOCK * math.ceil(train_time / lr / _BLOCK))


def training_data(n, seed) -> torch.Tensor:
    """The playground's training set: ``n`` points drawn from N(0, 1) with ``seed``. Returns (n,)
    float32 (drawn in float64, then rounded)."""
    n = _checks.integer(n, "n", 2)
    seed = _checks.integer(seed, "seed", 0)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64).to(torch.float32)


def _seeds(seed):
    """(initialisation seed, SGD seed, Langevin seed) of data seed ``seed``."""
    return 1000 + seed, 2000 + seed, 3000 + seed


def _train_ensemble(data, t, width, lrs, seed, config, progress=None):
    """Train one member per learning rate (same init, same SGD stream) for ``steps_for(lr)`` steps.

    Members leave the ensemble when their step count is reached (or when they diverge), so the
    cost is ``sum_k steps_k`` network-steps. ``progress(done, total)`` is called after every chunk
    of 1024 steps with network-steps done and in total. Returns ``(net, diverged, steps)``.
    """
    mu, sigma = float(ou_mu(t)), float(ou_sigma(t))
    K = len(lrs)
    init_seed, sgd_seed, _ = _seeds(seed)
    net = TwoLayerScoreNet(width, ensemble=K, generator=make_generators([init_seed] * K))
    gens = make_generators([sgd_seed] * K)
    steps = [steps_for(lr, config.train_time) for lr in lrs]
    lr_t = torch.tensor(lrs, dtype=torch.float64)
    diverged = torch.zeros(K, dtype=torch.bool)
    total, work, done = sum(steps), 0, 0
    while True:
        active = [k for k in range(K) if steps[k] > done and not bool(diverged[k])]
        if not active:
            break
        S = min(min(steps[k] for k in active) - done, _CHUNK)
        idx = torch.tensor(active)
        with torch.no_grad():
            sub = TwoLayerScoreNet.from_parameters(net.W1[idx], net.b[idx], net.W2[idx])
        res = train_sgd(sub, data, mu, sigma, lr=lr_t[idx], steps=S,
                        batch_size=config.batch_size, reduction=config.reduction,
                        generator=[gens[k] for k in active], progress=False)
        with torch.no_grad():
            net.W1[idx], net.b[idx], net.W2[idx] = sub.W1, sub.b, sub.W2
        diverged[idx] |= res.diverged
        done += S
        work += S * len(active)
        if progress is not None:
            progress(work, total)
    if progress is not None:
        progress(total, total)
    return net, diverged, steps


# --------------------------------------------------------------------------------- summaries

def _interp(y, lim, values):
    """Piecewise-linear interpolation of ``values`` (R, G) given on linspace(-lim, lim, G), at
    ``y`` (R, N); linear extrapolation outside. A ReLU net is piecewise linear, so on a fine grid
    this is its exact value except within one grid step of a kink."""
    G = values.shape[-1]
    h = 2.0 * lim / (G - 1)
    pos = (y + lim) / h
    i = pos.floor().clamp(0, G - 2)
    frac = pos - i
    i = i.long()
    left = torch.gather(values, 1, i)
    right = torch.gather(values, 1, i + 1)
    return left + frac * (right - left)


def _langevin(scores, data, mu, sigma, config, seed):
    """Langevin samples of p_t and their denoised versions, one row per score.

    scores: (R, G_l) score values on the Langevin grid. All rows share the start and the noise.
    Returns ``(y, x_hat)``, each (R, N) float64.
    """
    lim = config.langevin_lim
    g = torch.Generator().manual_seed(seed)
    x = data.to(torch.float64)
    N = config.langevin_chains
    h = config.langevin_step * sigma ** 2
    steps = max(1, math.ceil(config.langevin_time / h))
    m_t = mu * float(x.mean())
    sd_t = math.sqrt(mu ** 2 * float(x.var()) + sigma ** 2)
    y = (m_t + sd_t * torch.randn(N, generator=g, dtype=torch.float64)).expand(scores.shape[0], N)
    y = y.clone()
    noise_scale = math.sqrt(2.0 * h)
    for _ in range(steps):
        xi = torch.randn(N, generator=g, dtype=torch.float64)
        y = y + h * _interp(y, lim, scores) + noise_scale * xi
        y.clamp_(-lim, lim)  # a badly fitted score may push chains outwards: keep them on the grid
    x_hat = (y + sigma ** 2 * _interp(y, lim, scores)) / mu
    return y, x_hat


def _density(samples, edges):
    """Histogram densities (R, B) of the rows of ``samples`` (R, N); mass outside is dropped."""
    out = np.empty((samples.shape[0], len(edges) - 1))
    width = edges[1] - edges[0]
    for r, row in enumerate(samples):
        counts, _ = np.histogram(row, bins=edges)
        out[r] = counts / (len(row) * width)
    return out


def _summarize(net, diverged, data, t, lrs, seed, config):
    """The stored arrays of one cell: learned (K rows) and s* (last row) quantities."""
    mu, sigma = float(ou_mu(t)), float(ou_sigma(t))
    K = len(lrs)
    x64 = data.to(torch.float64)
    y = torch.tensor(config.y, dtype=torch.float32)
    yl = torch.linspace(-config.langevin_lim, config.langevin_lim, config.langevin_points,
                        dtype=torch.float64)
    with torch.no_grad():
        score = net(y).to(torch.float64)                                   # (K, G)
        s_lang = net(yl.to(torch.float32)).to(torch.float64)               # (K, G_l)
    opt = optimal_score(torch.tensor(config.y), x64, mu, sigma)            # (G,)
    opt_lang = optimal_score(yl, x64, mu, sigma)
    _, _, lseed = _seeds(seed)
    ys, xs = _langevin(torch.cat([s_lang, opt_lang[None]]), data, mu, sigma, config, lseed)
    dead = diverged.numpy()
    skip = np.append(dead, False)                                          # (K+1,): s* never
    memo = np.array([math.nan if bad else memorization_fraction(row, x64)
                     for row, bad in zip(xs, skip)])                       # (K+1,)
    edges = config.hist_edges
    noisy, denoised = _density(ys.numpy(), edges), _density(xs.numpy(), edges)
    ex = excess_risk(net, data, mu, sigma, num_nodes=config.excess_nodes).to(torch.float64)
    sh = sharpness(net, data, mu, sigma, iters=config.sharpness_iters, tol=config.sharpness_tol,
                   generator=torch.Generator().manual_seed(lseed)).to(torch.float64)
    active = active_fraction(net, data, mu).numpy()
    score = score.numpy()
    score[dead] = np.nan
    noisy[skip] = np.nan
    denoised[skip] = np.nan
    ex, sh = ex.numpy(), sh.numpy()
    ex[dead] = np.nan
    sh[dead] = np.nan
    active[dead] = np.nan
    return dict(score=score, optimal=opt.numpy(), noisy=noisy[:K], noisy_opt=noisy[K],
                denoised=denoised[:K], denoised_opt=denoised[K], memo=memo[:K], memo_opt=memo[K],
                excess=ex, sharp=sh, active=active, diverged=dead)


# --------------------------------------------------------------------------------- the grid

_NET_KEYS = ("score", "noisy", "denoised", "memo", "excess", "sharp", "active", "diverged")
_OPT_KEYS = ("optimal", "noisy_opt", "denoised_opt", "memo_opt")


def compute_cell(config: PlaygroundConfig = PlaygroundConfig(), *, t, n, width, seed) -> dict:
    """Train and summarize one cell ``(t, n, width, seed)`` of the grid (all learning rates).

    Returns the arrays that :func:`compute_grid` stores for that cell: ``score`` (L, G);
    ``noisy``, ``denoised`` (L, B); ``memo``, ``excess``, ``sharp``, ``active``, ``diverged``
    (L,); ``optimal`` (G,); ``noisy_opt``, ``denoised_opt`` (B,); ``memo_opt``, ``theorem_lr``
    (scalars); ``data`` (n,); ``seconds`` (the time it took; not stored in the grid). The
    values need not lie on ``config``'s axes.
    """
    if not isinstance(config, PlaygroundConfig):
        raise TypeError(f"config must be a PlaygroundConfig, got {type(config).__name__}")
    t = _checks.positive(t, "t")
    n = _checks.integer(n, "n", 2)
    width = _checks.integer(width, "width", 1)
    seed = _checks.integer(seed, "seed", 0)
    t0 = time.perf_counter()
    mu, sigma = float(ou_mu(t)), float(ou_sigma(t))
    data = training_data(n, seed)
    net, div, _ = _train_ensemble(data, t, width, config.lrs, seed, config)
    out = _summarize(net, div, data, t, config.lrs, seed, config)
    out["theorem_lr"] = theorem_lr_threshold(data.to(torch.float64), mu, sigma)
    out["data"] = data.numpy()
    out["seconds"] = time.perf_counter() - t0
    return out


def compute_grid(config: PlaygroundConfig = PlaygroundConfig(), *, verbose=False) -> dict:
    """Train and summarize every cell of the grid. Returns the arrays of the grid file.

    Shapes, with (T, N, W, S, L) the numbers of times, sizes n, widths, seeds and learning rates,
    G plot points and B histogram bins: score (T, N, W, S, L, G); noisy, denoised
    (T, N, W, S, L, B); memo, excess, sharp, active, diverged (T, N, W, S, L); optimal
    (T, N, S, G); noisy_opt, denoised_opt (T, N, S, B); memo_opt, theorem_lr (T, N, S); data
    (N, S, max n) NaN-padded; steps (L,). No timings: the arrays depend only on the code, the
    configuration and the machine's floating-point kernels (see :mod:`dsmlib.playground`), so a
    regeneration reproduces them bit for bit. verbose: print one line per cell as it goes.
    """
    if not isinstance(config, PlaygroundConfig):
        raise TypeError(f"config must be a PlaygroundConfig, got {type(config).__name__}")
    T, N, W, S, L = (len(config.times), len(config.ns), len(config.widths), len(config.seeds),
                     len(config.lrs))
    G, B = config.plot_points, config.hist_bins
    out = dict(
        score=np.full((T, N, W, S, L, G), np.nan, np.float32),
        noisy=np.full((T, N, W, S, L, B), np.nan, np.float32),
        denoised=np.full((T, N, W, S, L, B), np.nan, np.float32),
        memo=np.full((T, N, W, S, L), np.nan), excess=np.full((T, N, W, S, L), np.nan),
        sharp=np.full((T, N, W, S, L), np.nan), active=np.full((T, N, W, S, L), np.nan),
        diverged=np.zeros((T, N, W, S, L), bool),
        optimal=np.full((T, N, S, G), np.nan, np.float32),
        noisy_opt=np.full((T, N, S, B), np.nan, np.float32),
        denoised_opt=np.full((T, N, S, B), np.nan, np.float32),
        memo_opt=np.full((T, N, S), np.nan), theorem_lr=np.full((T, N, S), np.nan),
        data=np.full((N, S, max(config.ns)), np.nan),
        steps=np.array([steps_for(lr, config.train_time) for lr in config.lrs]),
    )
    cells = T * N * W * S
    count, start = 0, time.perf_counter()
    for a, t in enumerate(config.times):
        for b, n in enumerate(config.ns):
            for d, seed in enumerate(config.seeds):
                for c, width in enumerate(config.widths):
                    cell = compute_cell(config, t=t, n=n, width=width, seed=seed)
                    for k in _NET_KEYS:
                        out[k][a, b, c, d] = cell[k]
                    for k in _OPT_KEYS:
                        out[k][a, b, d] = cell[k]
                    out["theorem_lr"][a, b, d] = cell["theorem_lr"]
                    out["data"][b, d, :n] = cell["data"]
                    count += 1
                    if verbose:
                        elapsed = time.perf_counter() - start
                        print(f"[{count}/{cells}] t={t} n={n} m={width} seed={seed}: "
                              f"{cell['seconds']:.1f} s (total {elapsed:.0f} s, about "
                              f"{elapsed / count * (cells - count):.0f} s to go)", flush=True)
    return out


def _top(*arrays) -> float:
    """Largest finite value of the arrays (0 if none)."""
    tops = [float(np.nanmax(a)) for a in arrays if np.isfinite(a).any()]
    return max(tops) if tops else 0.0


# --------------------------------------------------------------------------------- off the grid

def train_view(*, lr, t, n, width, seed, config: PlaygroundConfig = PlaygroundConfig(),
               progress=None) -> View:
    """Train one setting now (any values) and return its :class:`View`, as the grid would store it.

    lr > 0, t > 0, n >= 2, width >= 1, seed >= 0 (integers where stated). The net is trained for
    ``steps_for(lr, config.train_time)`` steps; ``progress(done, total)`` is called as it goes.
    On a grid setting the result equals the stored cell (same seeds and streams) up to the
    tolerance of the sharpness solver.
    """
    lr = _checks.positive(lr, "lr")
    t = _checks.positive(t, "t")
    n = _checks.integer(n, "n", 2)
    width = _checks.integer(width, "width", 1)
    seed = _checks.integer(seed, "seed", 0)
    if not isinstance(config, PlaygroundConfig):
        raise TypeError(f"config must be a PlaygroundConfig, got {type(config).__name__}")
    start = time.perf_counter()
    data = training_data(n, seed)
    mu, sigma = float(ou_mu(t)), float(ou_sigma(t))
    net, div, steps = _train_ensemble(data, t, width, (lr,), seed, config, progress)
    s = _summarize(net, div, data, t, (lr,), seed, config)
    return View(
        lr=lr, t=t, n=n, width=width, seed=seed, mu=mu, sigma=sigma, steps=steps[0],
        data=data.numpy().astype(np.float64), y=config.y, score=s["score"][0],
        optimal=s["optimal"], hist_edges=config.hist_edges, noisy=s["noisy"][0],
        noisy_opt=s["noisy_opt"], denoised=s["denoised"][0], denoised_opt=s["denoised_opt"],
        excess=float(s["excess"][0]), sharp=float(s["sharp"][0]),
        stab=stability_threshold(width, lr),
        theorem_lr=theorem_lr_threshold(data.to(torch.float64), mu, sigma),
        memo=float(s["memo"][0]), memo_opt=float(s["memo_opt"]), active=float(s["active"][0]),
        diverged=bool(s["diverged"][0]),
        source=f"trained now ({time.perf_counter() - start:.1f} s)",
        noisy_top=_top(s["noisy"][0], s["noisy_opt"]),
        denoised_top=_top(s["denoised"][0], s["denoised_opt"]),
    )
