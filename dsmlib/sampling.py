r"""Sampling by integrating the backward Ornstein–Uhlenbeck SDE with a score function.

The forward SDE ``dX_t = -X_t dt + sqrt(2) dB_t`` has marginals ``p_t``. Writing ``s = T - t``,
the backward SDE

    dY_s = (Y_s + 2 score(Y_s, T - s)) ds + sqrt(2) dB_s,    Y_0 ~ N(0, I) ≈ p_T,

carries ``p_T`` back to ``p_delta`` when ``score = grad log p_t``. With the empirical optimal score
``s*`` it reproduces (Gaussian-blurred) training points: memorization (Li, Chen, Li 2024).
See chapter 1, "Sampling with a known score", and chapter 3, "Memorization".
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from . import _checks
from .schedule import ou_mu, ou_sigma

__all__ = ["reverse_sde_sample", "reverse_time_grid", "optimal_score_fn", "ReversePath"]


class ReversePath(NamedTuple):
    """Output of :func:`reverse_sde_sample` with ``return_path=True``.

    samples: the final states (as without ``return_path``).
    path: ``(steps + 1, *samples.shape)``; ``path[k]`` is the state at forward time ``times[k]``
    (``path[0]`` is the Gaussian start at ``T``, ``path[-1]`` equals ``samples``).
    times: ``(steps + 1,)`` float64 forward times, from ``T`` down to ``delta``.
    """

    samples: torch.Tensor
    path: torch.Tensor
    times: torch.Tensor


def reverse_time_grid(T: float = 1.0, delta: float = 0.01, steps: int = 100) -> torch.Tensor:
    """Forward times ``t_k = T - k (T - delta) / steps``, ``k = 0..steps`` (float64, decreasing).

    This is the grid used by :func:`reverse_sde_sample`: uniform in forward time, from ``T`` to
    ``delta``. Requires ``T > delta > 0`` and ``steps >= 1``.
    """
    T, delta, steps = _check_grid(T, delta, steps)
    return _grid(T, delta, steps)


def _check_grid(T, delta, steps):
    T = _checks.positive(T, "T")
    delta = _checks.positive(delta, "delta")
    if not T > delta:
        raise ValueError(f"T must be larger than delta (sampling runs from T down to delta), "
                         f"got T={T}, delta={delta}")
    steps = _checks.integer(steps, "steps", minimum=1)
    return T, delta, steps


def _check_step(T, delta, steps, dtype):
    """The growth ``e^h`` and noise scale ``sqrt(e^{2h} - 1)`` of one step must be finite numbers
    of ``dtype``; beyond that (``h = (T - delta) / steps`` above ~44 in float32, ~354 in float64)
    the scheme only produces inf and NaN."""
    h = (T - delta) / steps
    limit = 0.5 * math.log(torch.finfo(dtype).max)
    if h > limit:
        need = math.ceil((T - delta) / limit)
        raise ValueError(f"steps={steps} is too few for T={T:g}: each step spans h = {h:.4g} in "
                         f"time and e^(2h) overflows {str(dtype).replace('torch.', '')}; "
                         f"use steps >= {need}")


def _grid(T: float, delta: float, steps: int) -> torch.Tensor:
    k = torch.arange(steps + 1, dtype=torch.float64)
    times = T - k * ((T - delta) / steps)
    times[-1] = delta  # exact endpoint, no rounding drift
    return times


def reverse_sde_sample(score_fn: Callable, num_samples: int, dim: int, *, T: float = 1.0,
                       delta: float = 0.01, steps: int = 100, ensemble: int | None = None,
                       generator=None, dtype: torch.dtype | None = None, device=None,
                       return_path: bool = False, progress: bool = False,
                       check_every: int | None = None, nonfinite: str = "raise"):
    r"""Draw samples by integrating the backward OU SDE from forward time ``T`` down to ``delta``.

    Scheme (exponential integrator): on the uniform forward-time grid
    ``t_k = T - k h``, ``h = (T - delta) / steps``, with ``Y_0 ~ N(0, I)``,

        Y_{k+1} = e^h Y_k + 2 (e^h - 1) score(Y_k, t_k) + sqrt(e^{2h} - 1) xi_k,   xi_k ~ N(0, I).

    It is the exact solution of the backward SDE over one step when the score is frozen at its
    value at the start of the step: the linear drift ``Y`` and the noise are integrated exactly
    (with ``score = 0`` the chain has exactly the law of the OU process at every ``t_k``, for any
    ``h``), so the only discretization error comes from freezing the score. To first order in
    ``h`` it coincides with Euler–Maruyama ``Y_{k+1} = Y_k + h (Y_k + 2 score) + sqrt(2 h) xi``;
    both have weak error ``O(h)`` (checked in the tests on Gaussian data). It is the
    "exponential integrator" of the convergence analyses of diffusion samplers. The start
    ``N(0, I)`` is only close to ``p_T`` (the data's signal ``mu(T) = e^{-T}`` is dropped); the
    paper's Appendix D samples from ``T = 1`` to ``delta = 0.01``, the defaults here.

    score_fn: callable ``score_fn(x, t)``; ``t`` is a Python float (forward time,
        ``delta < t <= T``); ``x`` holds the current states: ``(N,)`` when ``dim == 1`` (so
        one-dimensional callables such as ``s*`` of 1-D data work unchanged), ``(N, dim)``
        otherwise, with a leading ``K`` axis when ``ensemble=K``. It must return a tensor of the
        same shape (``(N, 1)`` is also accepted when ``dim == 1``). It is called under
        ``torch.no_grad()``; a score that needs autograd must re-enable it itself.
        :meth:`TimeScoreNet.score` and :func:`optimal_score_fn` fit this signature.
    num_samples: ``N >= 1``; dim: data dimension ``d >= 1``.
    T, delta: forward start and end times, ``T > delta > 0``; steps: number of steps ``>= 1``.
    ensemble: ``None`` or ``K >= 1``: integrate ``K`` independent sets of ``N`` samples at once;
        the states then carry a leading axis ``K`` (for the score of an ensemble of ``K`` networks,
        member ``k`` drives set ``k``).
    generator: ``torch.Generator`` for the start and the noise (on ``device``); with
        ``ensemble=K`` also a list of ``K`` generators, one per set: set ``k`` is then exactly
        the samples of a single run (``ensemble=None``) with generator ``k``.
    dtype, device: of the samples (default: ``torch.get_default_dtype()``, CPU).
    check_every: the score's output is tested for NaN/inf at every step, on the device; the
        host looks at the result every ``check_every`` steps and at the end (default: every step
        on a CPU, every 100 steps elsewhere, so a GPU is not made to wait at each step).
    nonfinite: ``"raise"`` (default): ``FloatingPointError`` naming the first step and time at
        which the score returned NaN or inf; ``"keep"``: no check, non-finite values stay in the
        samples (for an ensemble whose members are judged one by one afterwards).

    Returns samples of shape ``(N,)`` when ``dim == 1`` and ``(N, dim)`` otherwise (``(K, ...)``
    in front with ``ensemble``), distributed approximately as ``p_delta``. With ``return_path``
    returns a :class:`ReversePath` ``(samples, path, times)`` instead.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    num_samples = _checks.integer(num_samples, "num_samples", minimum=1)
    dim = _checks.integer(dim, "dim", minimum=1)
    T, delta, steps = _check_grid(T, delta, steps)
    if ensemble is not None:
        ensemble = _checks.integer(ensemble, "ensemble", minimum=1)
    dtype = _checks.float_dtype(dtype)
    device = torch.device("cpu") if device is None else _checks.device(device)
    _check_step(T, delta, steps, dtype)
    gens = _sampler_generators(generator, ensemble, device)
    if nonfinite not in ("raise", "keep"):
        raise ValueError(f"nonfinite must be 'raise' or 'keep', got {nonfinite!r}")
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 100
    check_every = _checks.integer(check_every, "check_every", minimum=1)

    lead = () if ensemble is None else (ensemble,)
    shape = lead + ((num_samples,) if dim == 1 else (num_samples, dim))
    times = _grid(T, delta, steps)

    def gaussian():
        if not isinstance(gens, list):
            return torch.randn(shape, generator=gens, dtype=dtype, device=device)
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=device)
                            for g in gens])

    y = gaussian()
    path = None
    if return_path:
        path = torch.empty((steps + 1,) + shape, dtype=dtype, device=device)
        path[0] = y
    # first step at which the score was not finite (-1: none), kept on the device
    bad = torch.full((), -1, dtype=torch.long, device=device) if nonfinite == "raise" else None
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="reverse SDE", leave=False)
    with torch.no_grad():
        for k in iterator:
            t, h = float(times[k]), float(times[k] - times[k + 1])
            s = _call_score(score_fn, y, t, k)
            if bad is not None:
                bad = torch.where((bad < 0) & ~torch.isfinite(s).all(), k, bad)
                if (k + 1) % check_every == 0 or k + 1 == steps:
                    _raise_if_bad(bad, times)
            grow = math.exp(h)
            noise = gaussian()
            y = grow * y + (2.0 * math.expm1(h)) * s + math.sqrt(math.expm1(2.0 * h)) * noise
            if path is not None:
                path[k + 1] = y
    if return_path:
        return ReversePath(y, path, times)
    return y


def _sampler_generators(generator, ensemble, device):
    """None, one torch.Generator, or (with an ensemble of K) a list of K generators."""
    if isinstance(generator, (list, tuple)):
        if ensemble is None:
            raise ValueError("a list of generators needs ensemble=K (one generator per set of "
                             "samples); pass a single torch.Generator otherwise")
        if len(generator) != ensemble:
            raise ValueError(f"generator list has {len(generator)} entries but ensemble = "
                             f"{ensemble}")
        gens = list(generator)
        for g in gens:
            if not isinstance(g, torch.Generator):
                raise TypeError(f"generator list entries must be torch.Generator objects, "
                                f"got {type(g).__name__}")
    else:
        gens = _checks.generator_or_none(generator)
    for g in (gens if isinstance(gens, list) else [gens]):
        if g is not None and g.device.type != device.type:
            raise ValueError(f"generator is on {g.device} but the samples are drawn on {device}")
    return gens


def _raise_if_bad(bad, times):
    k = int(bad)  # the only wait for the device: every check_every steps
    if k >= 0:
        raise FloatingPointError(f"score_fn returned NaN or inf at step {k} (forward time "
                                 f"t = {float(times[k]):.6g}); try a larger delta or check the "
                                 f"score")


def _call_score(score_fn, y, t, k):
    s = _checks.call_user(score_fn, "score_fn", y, t, signature="x, t")
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"score_fn must return a torch.Tensor, got {type(s).__name__} "
                        f"(step {k}, t = {t:.6g})")
    if s.is_complex() or s.dtype == torch.bool:
        raise TypeError(f"score_fn must return real values, got dtype {s.dtype} "
                        f"(step {k}, t = {t:.6g})")
    if s.shape != y.shape:
        if y.dim() >= 1 and s.shape == y.shape + (1,):
            s = s.squeeze(-1)  # (N, 1) for one-dimensional states
        else:
            hint = (" (an ensemble score? pass ensemble=K so the states carry the K axis)"
                    if s.dim() == y.dim() + 1 else "")
            raise ValueError(f"score_fn returned shape {tuple(s.shape)} for states of shape "
                             f"{tuple(y.shape)} (step {k}, t = {t:.6g}); it must return the "
                             f"shape of its input{hint}")
    if s.device.type == "meta" or s.layout != torch.strided:
        raise TypeError(f"score_fn must return a dense tensor with data, got one on "
                        f"{s.device} with layout {s.layout} (step {k}, t = {t:.6g})")
    return s.to(dtype=y.dtype, device=y.device)


def optimal_score_fn(data) -> Callable:
    r"""The empirical optimal score as a time-dependent callable for :func:`reverse_sde_sample`.

    Returns ``f(x, t) = s*(x; data, mu(t), sigma(t))`` (paper eq. 6, :func:`dsmlib.optimal_score`),
    the exact score of ``p_t`` when ``p_0`` is the empirical measure of ``data``.
    data: ``(n,)`` (then ``x`` is ``(N,)``) or ``(n, d)`` (then ``x`` is ``(N, d)``); it is moved to
    the dtype and device of ``x`` at each call. Sampling with it from ``T`` to small ``delta``
    returns points near ``mu(delta) x_i`` (memorization, chapter 3).
    """
    x0, was_1d = _checks.data_2d(data, "data")
    pts = x0[:, 0] if was_1d else x0

    def score(x, t):
        from .optimal import optimal_score
        t = _checks.positive(t, "t")
        x = _checks.as_tensor(x, "x", allow_empty=True)
        _checks.points_like(x, x0.shape[1], "x")
        xd = pts.to(dtype=x.dtype, device=x.device)
        # for large t, mu(t) = e^-t has no normal square in x's dtype (t > 354 in float64, t > 43
        # in float32): it is raised to that floor, which changes s* = (mu E[W] - x) / sigma^2 by
        # less than the dtype's resolution (for data of ordinary size)
        floor = math.sqrt(torch.finfo(torch.promote_types(x.dtype, xd.dtype)).tiny)
        return optimal_score(x, xd, max(ou_mu(t), floor), ou_sigma(t))

    return score
