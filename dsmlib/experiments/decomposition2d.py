r"""The Fig. 3 networks (d = 2, time-conditioned) under the questions of ``mechanism`` (d = 1).

The 1-D experiment (:mod:`dsmlib.experiments.decomposition`) separates collapse, SGD noise and
stability-selected smoothing on the Fig. 2 networks. Here the same questions are put to the
networks of Fig. 3 (d = 2, :class:`dsmlib.TimeScoreNet`), where there is no exact risk or Hessian:
unit death (the fraction of hidden units active on some training input, :func:`time_net_activity`),
survivor selection and the batch-size confound (control arms), and SGD noise (a learning-rate decay
of the large rate's survivors), each measured by the memorization fraction and MMDs of the
generated samples (:func:`mechanism2d`, configured by :class:`Mechanism2dConfig`).

See the chapter "What keeps SGD away from s*".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._common import (_DATA, _EVAL, _INIT, _SAMPLE, _TRAIN, _check_common, _check_lrs,
                      _generator, _progress)

__all__ = ["Mechanism2dConfig", "mechanism2d", "time_net_activity"]


@dataclass(frozen=True)
class Mechanism2dConfig:
    """The Fig. 3 networks (d = 2, time-conditioned) under the same three questions, plus controls.

    Arms (one ensemble over ``seeds`` each; ``name``: lr, steps, batch size):
    ``arms`` pairs a learning rate with steps and a batch size; the first two are Fig. 3's (at book
    scale the book's Fig. 3: eta = 2 with batch 5000, eta = 0.05 with batch 500), then controls: a
    smaller large rate that should not diverge (does surviving eta = 2 select special networks?)
    and the small rate with the large rate's batch (the batch-size confound). ``decay``: the large
    rate's survivors continue at ``lr / decay_factor`` for ``decay_steps`` steps (noise removal:
    do they memorize once the noise is gone?). The data, initialisations and batches of the first
    two arms are those of :func:`fig3` with the same seeds and scale, so the networks coincide. At
    book scale the batch-size control compares the small rate with batches of 5000 and of 500 at
    the same number of steps (the last two arms; the last is the first quarter of Fig. 3's small-rate
    arm, the trainer's random stream being the same prefix).
    """

    scale: str = "paper"
    dim: int = 2
    n: int = 10
    data_std: float = 2.0
    width: int = 1000
    arms: tuple = ((2.0, 20_000, 5000), (0.05, 1_000_000, 5000), (1.0, 40_000, 5000))
    decay_factor: float = 10.0
    decay_steps: int = 20_000
    num_times: int = 100
    T: float = 1.0
    delta: float = 0.01
    time_weighting: str = "sigma"
    reduction: str = "mean_all"
    seeds: tuple = tuple(range(6))
    data_seed: int = 0
    num_samples: int = 2000
    sampler_steps: int = 1000
    activity_samples: int = 20_000
    bandwidth: float = 1.0
    device: str = "cpu"

    def __post_init__(self):
        _check_common(self)
        if len(self.arms) < 2 or any(len(a) != 3 for a in self.arms):
            raise ValueError(f"arms must hold at least two (lr, steps, batch_size) triples, "
                             f"got {self.arms!r}")
        _check_lrs(tuple(a[0] for a in self.arms), tuple(a[1] for a in self.arms))
        if not self.decay_factor > 1 or int(self.decay_steps) != self.decay_steps \
                or self.decay_steps < 1:
            raise ValueError("decay_factor must be > 1 and decay_steps a positive integer")

    @classmethod
    def preset(cls, scale: str) -> "Mechanism2dConfig":
        """Paper settings (GPU hours) or the book's Fig. 3 scale (about ten CPU minutes)."""
        if scale == "paper":
            return cls()
        if scale == "book":
            return cls(scale="book", width=250, num_samples=1000, sampler_steps=200,
                       arms=((2.0, 2_000, 5000), (0.05, 40_000, 500), (1.0, 4_000, 5000),
                             (0.05, 10_000, 5000), (0.05, 10_000, 500)),
                       decay_steps=2_000)
        raise ValueError(f"scale must be 'book' or 'paper', got {scale!r}")


def time_net_activity(net, data, *, num: int, T: float, delta: float, num_times: int,
                      time_weighting: str, generator) -> np.ndarray:
    """Fraction of hidden units of a TimeScoreNet (ensemble) active on at least one of ``num``
    training inputs ``[t, mu(t) x_I + sigma(t) z]`` drawn as in training. Returns (K,)."""
    from ..schedule import ou_mu, ou_sigma
    from ..timenet_training import time_grid_weights

    times, probs = time_grid_weights(T, delta, num_times, time_weighting)
    dev = net.W1.device
    ti = torch.multinomial(probs, num, replacement=True, generator=generator)
    idx = torch.randint(data.shape[0], (num,), generator=generator)
    z = torch.randn(num, data.shape[1], generator=generator, dtype=torch.float64)
    t = times[ti]
    xt = ou_mu(t)[:, None] * data[idx].to(torch.float64) + ou_sigma(t)[:, None] * z
    u = torch.cat([t[:, None], xt], 1).to(dev, net.W1.dtype)                  # (num, d + 1)
    W1, b = net.W1.detach(), net.b.detach()                                   # (K, m, d+1), (K, m)
    active = torch.zeros(W1.shape[:2], dtype=torch.bool, device=dev)
    for start in range(0, num, 2048):
        pre = torch.einsum("kmj,nj->knm", W1, u[start:start + 2048]) + b[:, None, :]
        active |= (pre > 0).any(1)
    return active.to(torch.float64).mean(1).cpu().numpy()


def mechanism2d(config: Mechanism2dConfig | None = None, *, progress: bool = False) -> dict:
    r"""Unit death, survivor selection, batch size and SGD noise for the Fig. 3 networks (d = 2).

    Returns a dict of NumPy arrays (A = number of arms, S = len(seeds)):

    - ``arm_lrs``, ``arm_steps``, ``arm_batch`` (A,);
    - per arm and seed (A, S): ``diverged``, ``active`` (fraction of units active on some training
      input), ``memorization`` (nearest-neighbour fraction of the generated samples, Gu et al.
      2023), ``mmd_star``, ``mmd_gauss`` (MMD^2 to ``s*``-sampler and fitted-Gaussian samples);
      NaN where the network diverged or its sampler failed;
    - the decay of the first arm's survivors: ``decay_diverged``, ``decay_active``,
      ``decay_memorization``, ``decay_mmd_star``, ``decay_mmd_gauss`` (S,);
    - references: ``memorization_star``, ``memorization_gauss``, ``mmd_star_gauss``; ``data``.
    """
    from ..metrics import fitted_gaussian, memorization_fraction, mmd
    from ..sampling import optimal_score_fn, reverse_sde_sample
    from ..timenet import TimeScoreNet
    from ..timenet_training import train_time_score_net

    cfg = Mechanism2dConfig() if config is None else config
    dev = torch.device(cfg.device)
    d, S = cfg.dim, len(cfg.seeds)
    x = cfg.data_std * torch.randn(cfg.n, d, generator=_generator(cfg.data_seed, _DATA),
                                   dtype=torch.float64)
    xf = x.to(dev, torch.float32)

    def sample(score, key):
        return reverse_sde_sample(score, cfg.num_samples, d, T=cfg.T, delta=cfg.delta,
                                  steps=cfg.sampler_steps, generator=_generator(*key, device=dev),
                                  device=dev)

    star = sample(optimal_score_fn(xf), (cfg.data_seed, _SAMPLE, 0))
    gauss = fitted_gaussian(xf).sample(cfg.num_samples, generator=_generator(
        cfg.data_seed, _SAMPLE, 2, device=dev))

    def train(net, lr, steps, batch, gens):
        return train_time_score_net(net, xf, lr=float(lr), steps=int(steps), batch_size=int(batch),
                                    T=cfg.T, delta=cfg.delta, num_times=cfg.num_times,
                                    time_weighting=cfg.time_weighting, reduction=cfg.reduction,
                                    generator=gens, log_every=max(1, int(steps) // 100),
                                    progress=progress)

    def measure(net, diverged, arm):
        # samples of member k use the stream of fig3's (data_seed, _SAMPLE, 10 + arm, k)
        act = time_net_activity(net, x, num=cfg.activity_samples, T=cfg.T, delta=cfg.delta,
                                num_times=cfg.num_times, time_weighting=cfg.time_weighting,
                                generator=_generator(cfg.data_seed, _EVAL, arm))
        row = {k: np.full(S, math.nan) for k in ("memorization", "mmd_star", "mmd_gauss")}
        row["active"] = act
        for k in range(S):
            if diverged[k]:
                row["active"][k] = math.nan
                continue
            try:
                smp = sample(net.member(k).score, (cfg.data_seed, _SAMPLE, 10 + arm, k))
                smp = smp.reshape(cfg.num_samples, d)
            except FloatingPointError:
                continue
            row["memorization"][k] = memorization_fraction(smp, xf)
            row["mmd_star"][k] = float(mmd(smp, star, cfg.bandwidth))
            row["mmd_gauss"][k] = float(mmd(smp, gauss, cfg.bandwidth))
        return row

    out = {k: [] for k in ("diverged", "active", "memorization", "mmd_star", "mmd_gauss")}
    first = None
    for a, (lr, steps, batch) in enumerate(_progress(cfg.arms, progress, "arms")):
        init = [_generator(s, _INIT, d, device=dev) for s in cfg.seeds]
        net = TimeScoreNet(cfg.width, d, ensemble=S, generator=init, device=dev)
        gens = [_generator(s, _TRAIN, d, device=dev) for s in cfg.seeds]
        res = train(net, lr, steps, batch, gens)
        div = res.diverged.cpu().numpy().copy()
        row = measure(net, div, a)
        out["diverged"].append(div)
        for k in ("active", "memorization", "mmd_star", "mmd_gauss"):
            out[k].append(row[k])
        if a == 0:
            first = (net, gens, div, lr, batch)
    net, gens, div, lr, batch = first
    dres = train(net, lr / cfg.decay_factor, cfg.decay_steps, batch, gens)
    ddiv = div | dres.diverged.cpu().numpy()
    drow = measure(net, ddiv, 20)
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays.update({f"decay_{k}": v for k, v in drow.items()})
    arrays["decay_diverged"] = ddiv
    arrays.update({
        "arm_lrs": np.array([a[0] for a in cfg.arms], dtype=np.float64),
        "arm_steps": np.array([a[1] for a in cfg.arms], dtype=np.int64),
        "arm_batch": np.array([a[2] for a in cfg.arms], dtype=np.int64),
        "memorization_star": np.array(memorization_fraction(star, xf)),
        "memorization_gauss": np.array(memorization_fraction(gauss, xf)),
        "mmd_star_gauss": np.array(float(mmd(star, gauss, cfg.bandwidth))),
        "seeds": np.array(cfg.seeds, dtype=np.int64), "data": x.numpy(),
    })
    return arrays
