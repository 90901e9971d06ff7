r"""Training of the time-conditioned network :class:`dsmlib.TimeScoreNet` (Fig. 3–4).

:func:`train_time_score_net` runs SGD ``theta <- theta - m * lr * grad L_j`` on the mini-batch
loss ``L_j = c sum_b |r_theta(t_b, x_b) - z_b|^2`` with fresh data indices, times and noise at
every step, for ``K`` networks at once (leading ensemble axis, batched matrix products and
hand-written gradients, or the fused Triton kernel of :mod:`dsmlib._fused_timenet` on a GPU).
:func:`time_grid_weights` gives the training times and their probabilities. The switches
``USE_CUDA_GRAPHS`` and ``USE_FUSED`` of this module set the defaults of ``cuda_graph=None`` and
``fused=None``. See the chapters "Large learning rates memorize less" and "Higher dimension
memorizes less".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import _checks
from . import _fused_timenet as _fused
from .schedule import ou_mu, ou_sigma
from .timenet import TimeScoreNet, _generators

__all__ = ["train_time_score_net", "TimeTrainResult", "time_grid_weights"]

_WEIGHTINGS = ("sigma", "inverse_sigma", "uniform")
_REDUCTIONS = ("mean", "sum", "mean_all")


def time_grid_weights(T: float = 1.0, delta: float = 0.01, num_times: int = 100,
                      time_weighting: str = "sigma"):
    r"""The training times and their sampling probabilities.

    times: ``num_times`` equally spaced points of ``[delta, T]`` (float64);
    probabilities ``∝ sigma(t)`` (``"sigma"``, the paper's text, Appendix D),
    ``∝ 1 / sigma(t)`` (``"inverse_sigma"``, the authors' public code) or uniform (``"uniform"``).
    Returns ``(times, probs)``, both ``(num_times,)`` float64.
    """
    T = _checks.positive(T, "T")
    delta = _checks.positive(delta, "delta")
    if not T > delta:
        raise ValueError(f"T must be larger than delta, got T={T}, delta={delta}")
    num_times = _checks.integer(num_times, "num_times", minimum=1)
    if time_weighting not in _WEIGHTINGS:
        raise ValueError(f"time_weighting must be one of {_WEIGHTINGS}, got {time_weighting!r}")
    times = torch.linspace(delta, T, num_times, dtype=torch.float64)
    sig = ou_sigma(times)
    w = {"sigma": sig, "inverse_sigma": 1.0 / sig, "uniform": torch.ones_like(sig)}[time_weighting]
    return times, w / w.sum()


@dataclass(frozen=True)
class TimeTrainResult:
    """What :func:`train_time_score_net` returns (the network itself is trained in place).

    Field names follow :class:`dsmlib.TrainResult` (the single-noise-level trainer).
    loss_history: ``(num_logs,)`` or ``(num_logs, K)``: mean over each interval of ``log_every``
        steps of the per-sample batch loss ``mean_b |r(t_b, x_b) - z_b|^2`` (whatever the
        ``reduction``), evaluated before each update; NaN from the interval where a member
        diverged onwards. log_steps: ``(num_logs,)`` number of completed steps at the end of
        each interval. final_loss: the last entry of ``loss_history``.
    diverged: bool, ``()`` or ``(K,)``; diverged_step: 0-based index of the step whose loss was
        non-finite or above ``diverge_threshold``, ``-1`` if none. A diverged member is frozen at
        its parameters before that step's update (finite, never NaN).
    lr: as given (a float, or a ``(K,)`` tensor). seconds, steps_per_second: wall-clock training
        time and speed of the loop.
    """

    net: TimeScoreNet
    loss_history: torch.Tensor
    log_steps: torch.Tensor
    final_loss: torch.Tensor
    diverged: torch.Tensor
    diverged_step: torch.Tensor
    lr: object
    steps: int
    batch_size: int
    reduction: str
    time_weighting: str
    T: float
    delta: float
    num_times: int
    seconds: float
    steps_per_second: float


def _learning_rates(lr, K, dtype, device):
    """lr -> ((K,) tensor, value to report: a float, or the (K,) tensor)."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1 or isinstance(lr, (list, tuple)) \
            or (hasattr(lr, "ndim") and getattr(lr, "ndim", 0) > 0):
        t = _checks.as_tensor(lr, "lr", dtype=dtype, device=device).reshape(-1)
        if t.shape[0] != K:
            raise ValueError(f"lr must be a number or have one entry per ensemble member "
                             f"({K}), got {t.shape[0]} entries")
        if bool((t <= 0).any()):
            raise ValueError("lr entries must be positive")
        return t, t.clone()
    v = _checks.positive(lr, "lr")
    if v > torch.finfo(dtype).max:
        raise ValueError(f"lr = {v:g} is beyond the range of the network's dtype {dtype}")
    return torch.full((K,), v, dtype=dtype, device=device), v


def _draw_batch(data, times, mu, sig, probs, K, B, gens, dtype, device):
    """Fresh batch (per-step draws): u = [t, mu(t) x_I + sigma(t) z] (K, B, d+1), z (K, B, d).

    data: (n, d) shared by the members or (K, n, d), one data set per member.
    Each member's draws, in order: data indices (B,), time indices (B,) (``torch.multinomial``),
    noise (B, d). With a list of generators member k uses generator k (so it matches a
    single-network run); with one generator (or None) the K batches are drawn together.
    """
    n, d = data.shape[-2], data.shape[-1]

    def draw(g, k):
        idx = torch.randint(n, (k * B,), generator=g, device=device)
        ti = torch.multinomial(probs, k * B, replacement=True, generator=g)
        z = torch.randn(k * B, d, generator=g, dtype=dtype, device=device)
        return idx, ti, z

    if isinstance(gens, list):
        parts = [draw(g, 1) for g in gens]
        idx, ti, z = (torch.cat(p) for p in zip(*parts))
    else:
        idx, ti, z = draw(gens, K)
    t = times[ti]
    x = data[idx] if data.dim() == 2 else \
        data[torch.arange(K, device=device).repeat_interleave(B), idx]
    xt = mu[ti, None] * x + sig[ti, None] * z
    u = torch.cat([t[:, None], xt], dim=1)
    return u.reshape(K, B, d + 1), z.reshape(K, B, d)


def _draw_block(data, times, mu, sig, cdf, K, S, B, gens, dtype, device):
    """Fresh batches for ``S`` steps at once (block draws, no host synchronisation):
    u (K, S, B, d+1), z (K, S, B, d).

    Each member's draws, in order: data indices (S, B), uniforms (S, B) in float64 turned into
    time indices by the inverse CDF (``searchsorted(cdf, U, right=True)``), noise (S, B, d).
    A list of generators: member k uses generator k; one generator (or None): the K blocks are
    drawn together, each draw with a leading K axis.
    """
    n, d = data.shape[-2], data.shape[-1]

    def draw(g, k):
        idx = torch.randint(n, (k, S, B), generator=g, device=device)
        uni = torch.rand((k, S, B), generator=g, dtype=torch.float64, device=device)
        z = torch.randn((k, S, B, d), generator=g, dtype=dtype, device=device)
        return idx, uni, z

    if isinstance(gens, list):
        idx, uni, z = (torch.cat(p) for p in zip(*[draw(g, 1) for g in gens]))
    else:
        idx, uni, z = draw(gens, K)
    ti = torch.searchsorted(cdf, uni, right=True).clamp_(max=cdf.shape[0] - 1)
    x = data[idx] if data.dim() == 2 else \
        data[torch.arange(K, device=device)[:, None, None], idx]
    xt = mu[ti][..., None] * x + sig[ti][..., None] * z
    return torch.cat([times[ti][..., None], xt], dim=-1), z


USE_CUDA_GRAPHS = True  # default of cuda_graph=None; tools/paper_scale_gpu.py turns it off
                        # if a captured run does not reproduce a plain one on the device
USE_FUSED = True        # default of fused=None (the fused kernel is also checked per run)

_CACHE_BYTES = 1 << 20  # (K, chunk, m) hidden activations kept per batch chunk: fits in L2


def _batch_chunk(K: int, m: int, B: int, device, itemsize: int = 4) -> int:
    """Batch rows per chunk: the whole batch on a GPU, cache-sized blocks on a CPU (measured on a
    2-core machine: ~1 MiB of activations per chunk is 2-3x faster than the whole batch)."""
    if torch.device(device).type != "cpu":
        return B
    return max(16, _CACHE_BYTES // (K * m * itemsize))


def _loss_and_grads(W1, b, W2, u, z, reduction, chunk=None):
    r"""Batch loss and hand-written gradients for K networks (all tensors with leading K).

    W1 (K, m, d+1), b (K, m), W2 (K, d, m), u (K, B, d+1), z (K, B, d).
    L = c sum_b |r(u_b) - z_b|^2 with c = 1/B ("mean"), 1 ("sum") or 1/(B d) ("mean_all"),
    r = (1/m) ReLU(u W1^T + b) W2^T.
    With g = dL/dr (B, d) and a = ReLU(h): dL/dW2 = g^T a / m, dL/dh = (g W2 / m) 1{h > 0},
    dL/dW1 = (dL/dh)^T u, dL/db = sum_b dL/dh. The bias is handled as a weight on a constant
    input 1 (so dL/db comes out of the same product as dL/dW1). Samples are independent, so the
    batch is processed in chunks of ``chunk`` rows whose (K, chunk, m) activations stay in cache
    (a several-fold speed-up on CPUs, where these products are memory bound); gradients are
    accumulated over chunks. Returns (per-sample mean loss (K,), dL/dW1, dL/db, dL/dW2).
    """
    K, B = u.shape[0], u.shape[1]
    m = W1.shape[1]
    if chunk is None:
        chunk = _batch_chunk(K, m, B, u.device, u.element_size())
    c = {"mean": 1.0 / B, "sum": 1.0, "mean_all": 1.0 / (B * z.shape[-1])}[reduction]
    wa_t = torch.cat([b.unsqueeze(-1), W1], dim=-1).transpose(1, 2).contiguous()  # (K, d+2, m)
    ua = torch.cat([torch.ones_like(u[..., :1]), u], dim=-1)                        # (K, B, d+2)
    w2_t = W2.transpose(1, 2)
    g_wa = torch.zeros_like(wa_t)
    gW2 = torch.zeros_like(W2)
    loss = torch.zeros(K, dtype=u.dtype, device=u.device)
    for s in range(0, B, chunk):
        uc, zc = ua[:, s:s + chunk], z[:, s:s + chunk]
        a = torch.bmm(uc, wa_t).clamp_min_(0.0)               # ReLU(h)      (K, c, m)
        res = torch.bmm(a, w2_t).div_(m).sub_(zc)             # r - z        (K, c, d)
        loss += res.square().sum(dim=(1, 2))
        g = res.mul_(2.0 * c / m)                             # dL/dr with the 1/m of r folded in
        gW2.baddbmm_(g.transpose(1, 2), a)                    # (K, d, m)
        gh = torch.ops.aten.threshold_backward(torch.bmm(g, W2), a, 0.0)  # dL/dh = . * 1{a > 0}
        g_wa.baddbmm_(uc.transpose(1, 2), gh)                 # [dL/db; dL/dW1^T]  (K, d+2, m)
    gW1 = g_wa[:, 1:].transpose(1, 2).contiguous()
    return loss / B, gW1, g_wa[:, 0].contiguous(), gW2


def _train_data(data, net, dtype, device):
    """Training points as (n, d) shared by all members or (K, n, d), one set per member."""
    x = _checks.as_tensor(data, "data", dtype=dtype, device=device)
    K = net.ensemble
    if x.dim() == 3:
        if K is None or x.shape[0] != K:
            raise ValueError(f"data of shape {tuple(x.shape)} gives one data set per member; "
                             f"that needs an ensemble of {x.shape[0]} networks, got ensemble={K}")
        if x.shape[1] < 1:
            raise ValueError("data needs at least 1 point per member")
    else:
        x, _ = _checks.data_2d(x, "data")
    if x.shape[-1] != net.dim:
        raise ValueError(f"data has dimension {x.shape[-1]} but the network has dim = {net.dim}")
    return x


class _Loop:
    """The state of one training run and its step, written once for every device.

    One step (:meth:`step`) uses only tensor operations on the device: no ``.item()``, no
    transfer to the host, no Python branch on a tensor value, so a block of steps can be
    captured in a CUDA graph and replayed. The step index lives in a device tensor (``base``,
    set before each block, plus the step's position in the block).
    """

    def __init__(self, W1, b, W2, step_size, threshold, reduction, log_every, num_logs, chunk,
                 fused=False):
        K, dev = W1.shape[0], W1.device
        self.fused = fused
        self.params = (W1, b, W2)
        self.good = [p.clone() for p in self.params]
        self.step_size, self.threshold = step_size, threshold
        self.reduction, self.log_every, self.chunk = reduction, log_every, chunk
        self.hist = torch.zeros(num_logs, K, dtype=torch.float64, device=dev)
        self.diverged = torch.zeros(K, dtype=torch.bool, device=dev)
        self.diverged_at = torch.full((K,), -1, dtype=torch.long, device=dev)
        self.nan = torch.full((K,), math.nan, dtype=W1.dtype, device=dev)
        self.base = torch.zeros((), dtype=torch.long, device=dev)

    def step(self, u, z, s: int):
        """One SGD step of every member on batch ``u`` (K, B, d+1), ``z`` (K, B, d); it is step
        ``base + s`` of the run."""
        W1, b, W2 = self.params
        K = W1.shape[0]
        if self.fused:
            loss, gW1, gb, gW2 = _fused.loss_and_grads(W1, b, W2, u, z, self.reduction)
        else:
            loss, gW1, gb, gW2 = _loss_and_grads(W1, b, W2, u, z, self.reduction, self.chunk)
        j = self.base + s
        ok = torch.isfinite(loss) & (loss <= self.threshold) & ~self.diverged
        newly = ~ok & ~self.diverged
        self.diverged_at.copy_(torch.where(newly, j, self.diverged_at))
        self.diverged |= ~ok
        self.hist.index_add_(0, (j // self.log_every).reshape(1),
                             torch.where(self.diverged, self.nan, loss).to(torch.float64)[None])
        for p, gp, keep in zip(self.params, (gW1, gb, gW2), self.good):
            shape = (K,) + (1,) * (p.dim() - 1)
            okv = ok.reshape(shape)
            # members in trouble go back to their last good parameters and stay there
            p.copy_(torch.where(okv, p, keep))
            keep.copy_(p)
            p.sub_(torch.where(okv, gp * self.step_size.reshape(shape), torch.zeros_like(gp)))

    def block(self, U, Z, count: int):
        """Steps ``base .. base + count - 1`` on the batches ``U[:, s]``, ``Z[:, s]``."""
        for s in range(count):
            self.step(U[:, s], Z[:, s], s)


def _fused_agrees(loop, u, z) -> bool:
    """The fused kernel against the pure-torch path on one batch (no update): every output
    within 1e-4 relative (float32 rounding is about 1e-7). A failure to compile counts as no."""
    W1, b, W2 = loop.params
    try:
        got = _fused.loss_and_grads(W1, b, W2, u, z, loop.reduction)
    except Exception as exc:  # noqa: BLE001 - the torch path is always there
        got, why = None, f"{type(exc).__name__}: {exc}"
    if got is not None:
        want = _loss_and_grads(W1, b, W2, u, z, loop.reduction, loop.chunk)
        err = max(float((g - w).norm() / w.norm().clamp_min(1e-30)) for g, w in zip(got, want))
        if err <= 1e-4:
            return True
        why = f"relative difference {err:.1e}"
    import warnings
    warnings.warn(f"fused kernel not used ({why}); training goes on with the torch path",
                  RuntimeWarning, stacklevel=3)
    return False


def _capture(loop, U, Z, S):
    """A CUDA graph of ``S`` steps of ``loop`` reading ``U``, ``Z`` (static buffers), or None
    with a warning when capture fails (the caller then goes on eagerly, with the same kernels)."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loop.block(U, Z, S)
        return graph
    except Exception as exc:  # capture is an optimisation only: never fail a run for it
        import warnings
        warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); training goes "
                      f"on without graphs", RuntimeWarning, stacklevel=3)
        torch.cuda.synchronize()
        return None


def train_time_score_net(net: TimeScoreNet, data, *, lr, steps: int, batch_size: int = 5000,
                         T: float = 1.0, delta: float = 0.01, num_times: int = 100,
                         time_weighting: str = "sigma", reduction: str = "mean", generator=None,
                         log_every: int | None = None, diverge_threshold: float = 1e8,
                         progress=None, rng_block: int | None = None,
                         cuda_graph: bool | None = None,
                         fused: bool | None = None) -> TimeTrainResult:
    r"""Train a :class:`TimeScoreNet` (or an ensemble) by SGD on the multi-time DSM loss.

    Each step draws, for every member, ``batch_size`` triples with replacement: a training point
    ``x_I`` (uniform), a time ``t`` among ``num_times`` equally spaced points of ``[delta, T]``
    (probability ``∝ sigma(t)`` by default, see :func:`time_grid_weights`), and noise
    ``z ~ N(0, I_d)``; then ``x_t = mu(t) x_I + sigma(t) z`` and

        L = c sum_b |r_theta(t_b, x_t,b) - z_b|^2,   theta <- theta - m * lr * grad L,

    with ``c = 1/B`` (``reduction="mean"``: batch mean of the squared norm, the default),
    ``c = 1`` (``"sum"``: the paper's text; the step then grows with ``B``) or ``c = 1/(B d)``
    (``"mean_all"``: mean over batch *and* coordinates, as ``torch.nn.MSELoss`` computes it).
    The curvature of ``L`` grows like ``E|x_t|^2 ~ d`` for ``"mean"`` but not for ``"mean_all"``,
    so the largest stable ``lr`` shrinks with ``d`` under ``"mean"`` (the chapter "Higher
    dimension memorizes less" discusses this).

    net: trained in place (its dtype and device are used). data: ``(n,)`` or ``(n, d)`` with
    ``d = net.dim``, shared by every member, or ``(K, n, d)``: one data set per member of an
    ensemble of ``K`` (member ``k`` then equals a single network trained on ``data[k]``).
    lr: ``> 0``, a number or one per member ``(K,)``. steps ``>= 1``.
    generator: None, a ``torch.Generator`` (on the net's device), or (ensemble) a list of ``K``
    generators: member ``k`` then sees exactly the batches a single network trained with
    generator ``k`` sees.
    log_every: steps averaged per ``loss_history`` entry (default ``ceil(steps / 100)``).
    diverge_threshold: a member whose per-sample batch loss is NaN/inf or exceeds it (the
    initial loss is about ``d``) is flagged in ``result.diverged`` and frozen at its parameters
    before the last update (checked at every step, on the device); the others go on unaffected.
    The net never holds NaN; the member's ``loss_history`` is NaN from then on.
    progress: ``True``/``False``, or ``None`` for a tqdm bar only when ``steps >= 10000``.
    rng_block: how the random numbers are drawn, which defines the random stream of a seed.
    ``None`` (default) is per-step draws on a CPU (data indices, ``torch.multinomial`` time
    indices, noise, every step: the stream of the book's results) and ``32`` on any other
    device. An integer ``S >= 1`` draws the batches of ``S`` steps at once per member (the last
    block holds the remaining steps; in each block: data indices, then float64 uniforms turned
    into time indices by the inverse CDF, then noise: no host synchronisation, as a GPU needs);
    the result then depends on ``S``, never on the device's speed. Memory:
    ``S * K * batch_size * (2d + 1)`` numbers.
    cuda_graph: replay blocks of ``rng_block`` steps as one captured CUDA graph (the same
    kernels, so the same numbers, with far less launch overhead). ``None``: on CUDA with block
    draws (and ``dsmlib.timenet_training.USE_CUDA_GRAPHS``, a switch for tools that check the
    graphs first); ``False``: never. Capture failure falls back to plain execution with a warning.
    fused: compute the loss and gradients with the fused Triton kernel of
    ``dsmlib._fused_timenet`` (float32, ``d <= 14``: several times less memory traffic on a GPU;
    equal to the torch path up to float32 rounding, not bit for bit). ``None``: on CUDA when
    Triton imports and ``dsmlib.timenet_training.USE_FUSED``, after checking it against the torch
    path on the first batch (a warning and the torch path if they differ); ``True``: always (needs
    Triton; on a CPU only under Triton's interpreter, for tests); ``False``: never.
    Returns a :class:`TimeTrainResult` (``steps_per_second`` measures the run).
    """
    if not isinstance(net, TimeScoreNet):
        raise TypeError(f"net must be a TimeScoreNet, got {type(net).__name__}")
    # a net that already holds NaN could only be "frozen" at NaN: refuse it
    _checks.finite_parameters("net", W1=net.W1, b=net.b, W2=net.W2)
    dtype, device = net.W1.dtype, net.W1.device
    x0 = _train_data(data, net, dtype, device)
    steps = _checks.integer(steps, "steps", minimum=1)
    batch_size = _checks.integer(batch_size, "batch_size", minimum=1)
    if log_every is None:
        log_every = max(1, math.ceil(steps / 100))
    log_every = _checks.integer(log_every, "log_every", minimum=1)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    times64, probs64 = time_grid_weights(T, delta, num_times, time_weighting)
    K = 1 if net.ensemble is None else net.ensemble
    lrs, lr_out = _learning_rates(lr, K, dtype, device)
    gens = _generators(generator, net.ensemble)
    for g in (gens if isinstance(gens, list) else [gens]):
        if g is not None and g.device.type != device.type:
            raise ValueError(f"generator is on {g.device} but the network is on {device}: "
                             f"random numbers are drawn on the network's device")
    threshold = _checks.positive(diverge_threshold, "diverge_threshold")
    if rng_block is None:
        rng_block = 0 if device.type == "cpu" else 32
    else:
        rng_block = _checks.integer(rng_block, "rng_block", minimum=1)
    if cuda_graph is None:
        cuda_graph = USE_CUDA_GRAPHS and device.type == "cuda" and rng_block > 0
    elif not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph must be True, False or None, got {type(cuda_graph).__name__}")
    elif cuda_graph and (device.type != "cuda" or rng_block == 0):
        raise ValueError("cuda_graph=True needs a CUDA network and block draws (rng_block)")
    fits = dtype == torch.float32 and net.dim <= _fused.MAX_DIM
    if fused is None:
        fused = "check" if (USE_FUSED and device.type == "cuda" and rng_block > 0 and fits
                            and _fused.available()) else False
    elif not isinstance(fused, bool):
        raise TypeError(f"fused must be True, False or None, got {type(fused).__name__}")
    elif fused and not (_fused.available() and fits):
        raise ValueError(f"fused=True needs Triton and a float32 net with dim <= "
                         f"{_fused.MAX_DIM}")
    if progress is None:
        progress = steps >= 10_000

    times = times64.to(dtype=dtype, device=device)
    mu = ou_mu(times64).to(dtype=dtype, device=device)
    sig = ou_sigma(times64).to(dtype=dtype, device=device)
    probs = probs64.to(device=device)
    cdf = torch.cumsum(probs64, 0).to(device=device)

    single = net.ensemble is None
    with torch.no_grad():
        W1, b, W2 = (p.detach() for p in (net.W1, net.b, net.W2))
        if single:
            W1, b, W2 = W1.unsqueeze(0), b.unsqueeze(0), W2.unsqueeze(0)
        num_logs = -(-steps // log_every)
        chunk = _batch_chunk(K, net.width, batch_size, device, W1.element_size())
        loop = _Loop(W1, b, W2, net.width * lrs, threshold, reduction, log_every, num_logs,
                     chunk, fused=fused is True)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc="train TimeScoreNet", leave=False)
        start = time.perf_counter()
        if rng_block == 0:                       # per-step draws (CPU default)
            for j in range(steps):
                u, z = _draw_batch(x0, times, mu, sig, probs, K, batch_size, gens, dtype,
                                   device)
                loop.base.fill_(j)
                loop.step(u, z, 0)
                if bar is not None:
                    bar.update(1)
        else:                                    # block draws, optionally a CUDA graph
            S = min(rng_block, steps)
            U = torch.empty((K, S, batch_size, net.dim + 1), dtype=dtype, device=device)
            Z = torch.empty((K, S, batch_size, net.dim), dtype=dtype, device=device)
            graph = None
            for j0 in range(0, steps, S):
                count = min(S, steps - j0)
                u, z = _draw_block(x0, times, mu, sig, cdf, K, count, batch_size, gens, dtype,
                                   device)
                U[:, :count].copy_(u)
                Z[:, :count].copy_(z)
                del u, z
                if fused == "check":
                    fused = loop.fused = _fused_agrees(loop, U[:, 0], Z[:, 0])
                loop.base.fill_(j0)
                if graph is None and cuda_graph and j0 > 0 and count == S:
                    graph = _capture(loop, U, Z, S)   # block 0 ran eagerly: the warm-up
                    cuda_graph = graph is not None
                if graph is not None and count == S:
                    graph.replay()
                elif cuda_graph and j0 == 0:       # warm-up on a side stream, as CUDA
                    side = torch.cuda.Stream(device)  # graph capture asks
                    side.wait_stream(torch.cuda.current_stream(device))
                    with torch.cuda.stream(side):
                        loop.block(U, Z, count)
                    torch.cuda.current_stream(device).wait_stream(side)
                else:
                    loop.block(U, Z, count)
                if bar is not None:
                    bar.update(count)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()

    hist, diverged, diverged_at = loop.hist, loop.diverged, loop.diverged_at
    counts = torch.full((num_logs,), float(log_every), dtype=torch.float64, device=device)
    counts[-1] = steps - (num_logs - 1) * log_every
    hist = (hist / counts[:, None]).to(dtype)
    log_steps = torch.clamp(torch.arange(1, num_logs + 1, device=device) * log_every, max=steps)
    final = hist[-1]
    if single:
        hist, final, diverged, diverged_at = hist[:, 0], final[0], diverged[0], diverged_at[0]
    return TimeTrainResult(net=net, loss_history=hist, log_steps=log_steps, final_loss=final,
                           diverged=diverged, diverged_step=diverged_at, steps=steps, lr=lr_out,
                           batch_size=batch_size, reduction=reduction,
                           time_weighting=time_weighting, T=_checks.positive(T, "T"),
                           delta=_checks.positive(delta, "delta"),
                           num_times=int(num_times), seconds=seconds,
                           steps_per_second=steps / max(seconds, 1e-12))
