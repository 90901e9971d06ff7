r"""SGD on the denoising score-matching risk, for a whole ensemble at once (chapter 4).

One SGD step on the mini-batch risk (paper Section 4, with the ``m * eta`` scaling)::

    theta <- theta - m * lr * grad R_hat(theta),
    R_hat(theta) = reduce_{j <= B} | s_theta(Y_j) + (Y_j - mu x_{I_j}) / sigma^2 |^2,
    Y_j = mu x_{I_j} + sigma z_j,   I_j ~ Uniform{1..n} (with replacement),   z_j ~ N(0, I_d),

with fresh ``(I_j, z_j)`` at every step. ``reduce`` is the batch **mean** by default (an unbiased
estimate of ``R_n``, as in the authors' code), the batch **sum** (as the paper's text writes it;
the effective step is then ``batch_size`` times larger, chapter 4 shows the consequence) or, in
``d`` dimensions, the mean over the batch *and* the ``d`` coordinates (``"mean_all"``, what
``torch.nn.MSELoss`` computes; its gradient is that of the batch mean divided by ``d``).

Iterate averaging: with ``average_last=N`` the trainer also returns the average of the parameters
after each of the last ``N`` steps (Polyak-Ruppert tail averaging), the estimate of the minimum
around which SGD at a fixed learning rate keeps fluctuating (chapter "What keeps SGD away from s*").

Three exact implementations of the same step, all with hand-written gradients (checked against
autograd in the tests; dsmlib/_steps.py):

* **1-D, compiled** (CPU default for ``dim == 1`` where numba is installed): the sorted step
  below as a numba kernel (dsmlib/_kernel1d.py) that runs whole blocks of 256 steps, member after
  member, on ``torch.get_num_threads()`` threads. It reproduces the pure-torch sorted step bit
  for bit, in float32 and float64, so results do not depend on whether numba is installed.
  ``DSMLIB_NO_NUMBA=1`` switches it off.
* **1-D, sorted** (pure torch; the fallback): no (batch x width) array is ever formed. The batch
  is sorted once; each unit's kink is located among the sorted points by a branch-free binary
  search; the outputs at all points come from a bucketed cumulative sum of the per-unit terms
  ``(a_l w_l, a_l b_l)``, and each unit's gradient from prefix/suffix sums of ``(r_j y_j, r_j)``.
  Cost ``O(m log B + B log B)`` per member and step. Large ensembles run in chunks of members
  below torch's parallel grain.
* **dense** (``dim > 1``, or any dim off the CPU): batched matrix products ``torch.bmm``.

Randomness: member ``k`` draws its batch indices and noise from its own generator, in blocks of
``_BLOCK`` steps (always a full block), so its random stream does not depend on the ensemble
size or on the number of steps: an ensemble trained in one call equals its members trained one
by one with the same generators.
"""

from __future__ import annotations

import math
import numbers
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import _checks
from ._steps import _Sorted1D  # noqa: F401  (the torch 1-D step, as before: training._Sorted1D)
from ._steps import choose_method as _choose_method, make_trainer as _make_trainer
from ._steps import write_back as _write_back
from .networks import TwoLayerScoreNet, _member_generators, make_generators

__all__ = ["train_sgd", "TrainResult"]

_BLOCK = 256               # steps per random draw and per divergence check
_AUTO_PROGRESS = 2_000_000  # show a progress bar by default above this many network-steps


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_sgd` returns.

    net: the trained network (the same object that was passed in, trained in place).
    loss_history: (num_logs, K) mean mini-batch loss over each logging interval, or (num_logs,)
        for a single net; NaN from the interval where a member diverged onwards.
    log_steps: (num_logs,) int64, number of completed steps at the end of each interval.
    diverged: (K,) bool (shape () for a single net): the member was frozen after diverging.
    diverged_step: (K,) int64 (shape () for a single net): index (0-based) of the first step
        whose loss was non-finite, or of the step where a parameter check failed; -1 if none.
    lr: the learning rate(s) as given (float, or (K,) tensor). steps, reduction: as given.
    seconds: wall-clock time of the call.
    averaged: with ``average_last=N``, a new network (same shape as ``net``) holding the average
        of the parameters after each of the last N steps; a diverged member's entry is its frozen
        parameters. ``None`` without averaging. average_last: N as given (0 without averaging).
    """

    net: TwoLayerScoreNet
    loss_history: torch.Tensor
    log_steps: torch.Tensor
    diverged: torch.Tensor
    diverged_step: torch.Tensor
    lr: object
    steps: int
    reduction: str
    seconds: float
    averaged: TwoLayerScoreNet | None = None
    average_last: int = 0


def _lr_vector(lr, K, single):
    """(lr as reported, per-member float64 tensor (K,))."""
    t = _per_member_positive(lr, "lr", K, single)
    if _one_number(lr):
        return float(t[0]), t
    return t.clone(), t


def _training_generators(generator, K, single):
    """One generator per member (see train_sgd's docstring)."""
    if isinstance(generator, (list, tuple)):
        if single and len(generator) != 1:
            raise ValueError("generator is a list, which needs an ensemble net (one per member)")
        return _member_generators(generator, K)
    g = _checks.generator_or_none(generator)
    if single and g is not None:
        return [g]
    seeds = torch.randint(0, 2 ** 62, (K,), generator=g,
                          device="cpu" if g is None else g.device).tolist()
    return make_generators(seeds, device=None if g is None else g.device)


def _draw_block(gens, n, B, d, dtype):
    """Batch indices (K, _BLOCK, B) and noise (K, _BLOCK, B, d) as NumPy arrays; member k draws
    ``randint(0, n, (_BLOCK, B))`` then ``randn(_BLOCK, B, d)`` from generator k."""
    K = len(gens)
    idx = np.empty((K, _BLOCK, B), dtype=np.int64)
    noise = np.empty((K, _BLOCK, B, d), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    for k, g in enumerate(gens):
        if g.device.type == "cpu":                            # straight into the block
            torch.randint(0, n, (_BLOCK, B), generator=g, out=torch.from_numpy(idx[k]))
            torch.randn(_BLOCK, B, d, generator=g, dtype=dtype, out=torch.from_numpy(noise[k]))
        else:
            idx[k] = torch.randint(0, n, (_BLOCK, B), generator=g, device=g.device).cpu()
            noise[k] = torch.randn(_BLOCK, B, d, generator=g, dtype=dtype, device=g.device).cpu()
    return idx, noise


def _block_source(gens, x, mu, sigma, B, dtype):
    """``draw(k0, k1, S)``: the random block of members k0..k1-1 as NumPy arrays, the first S of
    its ``_BLOCK`` steps: chosen points xI and noise z (Kc, S, B, d), mu and sigma (Kc, 1, 1, 1).

    x: shared data (n, d) or per-member data (K, n, d); mu, sigma: (K,) float64 tensors. Member
    k's block comes from generator k alone, whichever members are drawn together.
    """
    n, d = x.shape[-2:]
    x_np = x.cpu().numpy()
    mu, sigma = (v.to(dtype).view(-1, 1, 1, 1).numpy() for v in (mu, sigma))
    shared = x.dim() == 2

    def draw(k0, k1, S):
        I, Z = _draw_block(gens[k0:k1], n, B, d, dtype)
        I = I[:, :S]
        xI = x_np[I] if shared else x_np[np.arange(k0, k1).reshape(-1, 1, 1), I]
        return xI, Z[:, :S], mu[k0:k1], sigma[k0:k1]

    return draw


def train_sgd(net, data, mu, sigma, *, lr, steps, batch_size=50, reduction="mean",
              generator=None, log_every=None, progress=None, diverge_threshold=1e8,
              device=None, average_last=None) -> TrainResult:
    r"""Train ``net`` in place by SGD on the DSM mini-batch risk (all ensemble members at once).

    theta <- theta - m * lr * grad R_hat_j(theta),
    R_hat_j = reduce_j |s(Y_j) + (Y_j - mu x_{I_j}) / sigma^2|^2,  Y_j = mu x_{I_j} + sigma z_j,

    with ``I_j`` uniform on the n data points (with replacement) and fresh noise ``z_j ~ N(0, I_d)``
    for every element of every batch. Theory model (``net.fixed_inner``): only ``(W2, b)`` move and
    ``W2`` is projected (clamped) onto ``[-A, A]`` after every step.

    net: a :class:`TwoLayerScoreNet` (one net or an ensemble of K); trained **in place** and
    returned as ``result.net``.
    data: training points shared by all members, (n,) or (n, d) with d = ``net.dim``; or
    per-member data sets for an ensemble, (K, n) in 1-D or (K, n, d) (member k trains on
    ``data[k]``; 1-D per-member data with a single point must be written (K, 1, 1)).
    mu, sigma: signal and noise scales (``dsm.ou_mu(t)``, ``dsm.ou_sigma(t)``): numbers, or (K,)
    per-member values for an ensemble (e.g. several noise levels trained in one call).
    lr: a number, or a (K,) sequence/tensor with one learning rate per member.
    steps: number of SGD steps (>= 0). batch_size: B, points per batch.
    reduction: ``"mean"`` (default; an unbiased estimate of R_n, as in the authors' code),
    ``"sum"`` (as the paper's text writes; the same as ``"mean"`` with ``lr * batch_size``) or
    ``"mean_all"`` (mean over the batch and the d coordinates, as ``torch.nn.MSELoss``; the same
    as ``"mean"`` with ``lr / d``, and as ``"mean"`` in 1-D). ``loss_history`` is the batch mean
    of the squared norm for ``"mean"`` and ``"mean_all"``, the batch sum for ``"sum"``.
    generator: ``None``, one ``torch.Generator`` or a list of K generators. With a list, member k
    uses generator k, so member k trained inside the ensemble equals a single net trained with
    that generator (bit for bit in practice; the tests allow 1e-12 in float64). A single
    generator with an ensemble seeds K member generators from it; with a single net it is used
    directly. ``None`` seeds the members from torch's default generator. Each member draws, per
    block of 256 steps, ``randint(0, n, (256, B))`` then ``randn(256, B, d)`` from its generator
    (a full block even at the end), so its stream depends neither on K nor on ``steps``.
    log_every: steps per logging interval (default ``ceil(steps / 100)``).
    progress: ``True``/``False``, or ``None`` to show a tqdm bar only for long runs.
    diverge_threshold: a member whose step loss is non-finite, or one of whose parameters is
    non-finite or larger than this in absolute value, is frozen at its parameters of the last
    check (checks run every 256 steps) and flagged in ``result.diverged``; the others go on
    unaffected. The net never holds NaN afterwards.
    device: where to train (default: the net's device); the net is moved there in place.
    average_last: ``None`` or an integer ``N`` with ``0 <= N <= steps``: also return, as
    ``result.averaged``, the average of the parameters after each of the last N steps (``N = 0``
    is no averaging). Polyak-Ruppert tail averaging: at a fixed learning rate SGD does not
    converge, it fluctuates around a minimum, and the average estimates that minimum.

    Returns a :class:`TrainResult`. On KeyboardInterrupt the net keeps the parameters of the last
    completed block of 256 steps in 1-D on the CPU with numba (the compiled kernel runs whole
    blocks), of the last completed step otherwise; SIGINT is held back until then, a member left
    non-finite is restored as for a divergence (the net holds no NaN), and the interrupt is
    re-raised.

    Speed: in 1-D on the CPU an exact O(m log B) step without any (B x m) array (see the module
    docstring), compiled with numba where it is installed and run on ``torch.get_num_threads()``
    threads (torch's own operations run on one thread meanwhile; the setting is restored);
    otherwise batched matrix products. Gradients are written by hand (no autograd).
    See chapter 4, "The model and SGD".
    """
    return _train(net, data, mu, sigma, lr=lr, steps=steps, batch_size=batch_size,
                  reduction=reduction, generator=generator, log_every=log_every,
                  progress=progress, diverge_threshold=diverge_threshold, device=device,
                  method="auto", average_last=average_last)


_REDUCTIONS = ("mean", "sum", "mean_all")


def _step_factor(reduction, lr_vec, B, d):
    """Per-member factor ``f = 2 c lr`` of the packed step (see dsmlib/_steps.py).

    ``c = 1/B`` for the batch mean, ``1`` for the sum; ``"mean_all"`` is the mean at ``lr / d``.
    Returns ``(f, c)``, ``c`` being the factor that turns the squared residual norm into the
    reported loss (the batch mean of ``|r|^2`` for both means).
    """
    c = 1.0 if reduction == "sum" else 1.0 / B
    lr_step = lr_vec / d if reduction == "mean_all" else lr_vec
    return 2.0 * c * lr_step, c


def _validate(net, data, mu, sigma, lr, steps, batch_size, reduction, log_every,
              diverge_threshold, device):
    if not isinstance(net, TwoLayerScoreNet):
        raise TypeError(f"net must be a TwoLayerScoreNet, got {type(net).__name__}")
    steps = _checks.integer(steps, "steps", 0)
    batch_size = _checks.integer(batch_size, "batch_size", 1)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if log_every is None:
        log_every = max(1, math.ceil(steps / 100))
    log_every = _checks.integer(log_every, "log_every", 1)
    diverge_threshold = _checks.positive(diverge_threshold, "diverge_threshold")
    if net.W2.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"train_sgd trains float32 or float64 nets, got {net.W2.dtype}")
    # a net that already holds NaN could only be "frozen" at NaN: refuse it
    _checks.finite_parameters("net", **dict(zip(("W1", "b", "W2"), net._stacked())))
    single = net.ensemble is None
    K = 1 if single else net.ensemble
    mu = _checks.noise_levels(_per_member_positive(mu, "mu", K, single), "mu", net.W2.dtype)
    sigma = _checks.noise_levels(_per_member_positive(sigma, "sigma", K, single), "sigma",
                                 net.W2.dtype)
    dev = net.W2.device if device is None else _checks.device(device)
    x = _training_data(data, net, K, dev)
    lr_out, lr_vec = _lr_vector(lr, K, single)
    return x, mu, sigma, lr_out, lr_vec, steps, batch_size, log_every, diverge_threshold, dev


def _training_data(data, net, K, dev):
    """Shared data as (n, d), or per-member data as (K, n, d)."""
    x = _checks.as_tensor(data, "data", dtype=net.W2.dtype, device=dev).detach()
    d = net.dim
    if x.dim() == 1 or (x.dim() == 2 and (d > 1 or x.shape[1] == 1)):
        x, _ = _checks.data_2d(x, "data")                    # shared: (n,) or (n, d)
        if x.shape[1] != d:
            raise ValueError(f"data has dimension {x.shape[1]} but the net has dim={d}")
        return x
    if d == 1 and x.dim() == 2:
        x = x.unsqueeze(-1)                                  # per-member 1-D: (K, n)
    if x.dim() != 3 or x.shape[2] != d:
        raise ValueError(f"data must have shape (n,) or (n, {d}) (shared), or (K, n) / "
                         f"(K, n, {d}) (per member), for a net of dim={d}; got {tuple(x.shape)}")
    if net.ensemble is None or x.shape[0] != K:
        raise ValueError(f"per-member data needs an ensemble net with K = data.shape[0] members; "
                         f"got data of shape {tuple(x.shape)} for ensemble={net.ensemble}")
    if x.shape[1] < 1:
        raise ValueError("data needs at least 1 point per member")
    return x


def _one_number(v) -> bool:
    """A single number: Python or NumPy scalar, 0-d array or 0-d tensor."""
    return (isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0
            or isinstance(v, (numbers.Real, np.generic)))


def _per_member_positive(v, name, K, single):
    """A positive number or a (K,) sequence of them -> float64 CPU tensor (K,)."""
    if _one_number(v):
        return torch.full((K,), _checks.positive(v, name), dtype=torch.float64)
    if single:
        raise ValueError(f"{name} must be a single number for a single (non-ensemble) net")
    t = _checks.as_tensor(v, name, dtype=torch.float64).detach().cpu()   # lists via float64
    if t.dim() != 1 or t.shape[0] != K:
        raise ValueError(f"{name} must be a number or a 1-D sequence of {K} values "
                         f"(one per member), got shape {tuple(t.shape)}")
    if bool((t <= 0).any()):
        raise ValueError(f"{name} must be positive")
    return t


def _train(net, data, mu, sigma, *, lr, steps, batch_size=50, reduction="mean", generator=None,
           log_every=None, progress=None, diverge_threshold=1e8, device=None, method="auto",
           average_last=None):
    t0 = time.perf_counter()
    (x, mu, sigma, lr_out, lr_vec, steps, B, log_every, thr, dev) = _validate(
        net, data, mu, sigma, lr, steps, batch_size, reduction, log_every, diverge_threshold,
        device)
    n_avg = 0 if average_last is None else _checks.integer(average_last, "average_last", 0)
    if n_avg > steps:
        raise ValueError(f"average_last must be <= steps = {steps}, got {n_avg}")
    single = net.ensemble is None
    K = 1 if single else net.ensemble
    gens = _training_generators(generator, K, single)
    method = _choose_method(method, net.dim, dev)
    if net.W2.device != dev:
        net.to(dev)
    dtype = net.W2.dtype
    f, c = _step_factor(reduction, lr_vec, B, net.dim)
    trainer = _make_trainer(net, f, B, method)
    n, d = x.shape[-2:]
    draw = _block_source(gens, x, mu, sigma, B, dtype)
    diverged = torch.zeros(K, dtype=torch.bool)
    div_step = torch.full((K,), -1, dtype=torch.long)
    snap = trainer.flat().clone()
    avg_from = steps - n_avg                               # average the iterates after steps > avg_from
    avg_sum = torch.zeros(K, snap.shape[1], dtype=torch.float64, device=dev) if n_avg else None
    loss_blk = torch.empty(_BLOCK, K, dtype=dtype, device=dev)
    hist, log_at = [], []
    acc, cnt, next_log = torch.zeros(K, dtype=torch.float64), 0, log_every
    show = (steps * K >= _AUTO_PROGRESS) if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, unit="step", desc=f"SGD x{K}", leave=False)

    done = 0
    threads = torch.get_num_threads()
    try:
        if method in ("numba", "sorted"):
            # the 1-D steps' own torch operations (and the bookkeeping below) are small: on one
            # thread they open no OpenMP region, which stalls on a busy machine (the kernel
            # runs on its own threads, counted before)
            torch.set_num_threads(1)
        with torch.no_grad(), _HoldInterrupts() as hold:
            while done < steps:
                S = min(_BLOCK, steps - done)
                ran = trainer.run_block(draw, S, done - avg_from, loss_blk, avg_sum, hold)
                if ran < S:                                    # interrupted inside the block
                    done += ran
                    raise KeyboardInterrupt
                losses = loss_blk[:S].square().mul_(c).to(device="cpu", dtype=torch.float64)
                _check_divergence(trainer, snap, losses, done, thr, diverged, div_step)
                # per-step losses -> interval means; NaN from the divergence step onwards
                steps_idx = torch.arange(done, done + S).unsqueeze(1)
                dead = diverged & (steps_idx >= div_step)
                losses = losses.masked_fill(dead, math.nan)
                p = 0
                while p < S:
                    take = min(S - p, next_log - (done + p))
                    acc += losses[p:p + take].sum(0)
                    cnt += take
                    p += take
                    if done + p == next_log or done + p == steps:
                        hist.append(acc / cnt)
                        log_at.append(done + p)
                        acc, cnt = torch.zeros(K, dtype=torch.float64), 0
                        next_log = done + p + log_every
                done += S
                if bar is not None:
                    bar.update(S)
                if hold.pending:
                    raise KeyboardInterrupt
    finally:
        trainer.close()
        with torch.no_grad():
            trainer.finish()
            _sanitize(trainer, snap, thr, diverged, div_step, done)
            _write_back(net, trainer)
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()

    loss_history = (torch.stack(hist) if hist else torch.empty(0, K, dtype=torch.float64))
    loss_history = loss_history.to(dtype)
    log_steps = torch.tensor(log_at, dtype=torch.long)
    averaged = None if avg_sum is None else _averaged_net(net, trainer, avg_sum / n_avg, diverged)
    if single:
        loss_history, diverged, div_step = loss_history[:, 0], diverged[0], div_step[0]
    return TrainResult(net=net, loss_history=loss_history, log_steps=log_steps, diverged=diverged,
                       diverged_step=div_step, lr=lr_out, steps=steps, reduction=reduction,
                       seconds=time.perf_counter() - t0, averaged=averaged, average_last=n_avg)


def _averaged_net(net, trainer, mean_flat, diverged):
    """A network like ``net`` holding the averaged packed parameters ``mean_flat`` (K, P) float64;
    diverged members get their (frozen, final) parameters instead."""
    final = trainer.flat()
    keep = diverged.to(final.device).unsqueeze(1)
    flat = torch.where(keep, final.to(torch.float64), mean_flat).to(final.dtype)
    K, d = trainer.K, trainer.d
    P = flat.view(K, 2 * d + 1, trainer.m)
    W1, b, W2 = P[:, :d].transpose(1, 2), P[:, d], P[:, d + 1:]
    if net.fixed_inner:                       # W1 is frozen; the average of clamped values stays
        W1 = trainer.parameters()[0]          # in [-A, A] up to rounding
        W2 = W2.clamp(-net.bound, net.bound)
    if net.ensemble is None:
        W1, b, W2 = W1[0], b[0], W2[0]
    return TwoLayerScoreNet.from_parameters(W1, b, W2, fixed_inner=net.fixed_inner,
                                            bound=net.bound)


class _NoInterrupt:
    pending = False


class _HoldInterrupts:
    """Defer SIGINT (KeyboardInterrupt) to step boundaries; ``pending`` says one arrived.

    Only in the main thread (elsewhere Python delivers no KeyboardInterrupt anyway); the previous
    handler is restored on exit.
    """

    def __enter__(self):
        self.pending, self._installed, self._old = False, False, None
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
            except ValueError:          # e.g. an embedded interpreter without signals
                pass
        return self

    def _handler(self, signum, frame):
        self.pending = True

    def __exit__(self, *exc):
        if self._installed:             # None: a handler not set from Python -> default
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._old is None else self._old)
        return False


def _bad_members(flat, thr):
    """(K,) bool on CPU: some parameter is non-finite or above thr in absolute value."""
    return (~torch.isfinite(flat).all(1) | (flat.abs().amax(1) > thr)).cpu()


def _check_divergence(trainer, snap, losses, done, thr, diverged, div_step):
    """Freeze members that diverged during the last block (losses: (S, K) float64 on CPU)."""
    flat = trainer.flat()
    bad_loss = ~torch.isfinite(losses)                     # (S, K)
    any_loss = bad_loss.any(0)
    new = (any_loss | _bad_members(flat, thr)) & ~diverged
    if bool(new.any()):
        S = losses.shape[0]
        first = torch.where(any_loss, bad_loss.to(torch.int8).argmax(0), S - 1)
        div_step[new] = done + first[new]
        diverged |= new
        trainer.f.mul_((~diverged).to(trainer.f).view(-1, 1, 1))
    _restore(flat, snap, diverged)


def _restore(flat, snap, diverged):
    """Members flagged in ``diverged`` get their snapshot back; the snapshot follows the rest."""
    keep = (~diverged).to(flat.device).unsqueeze(1)
    flat.copy_(torch.where(keep, flat, snap))
    snap.copy_(flat)


def _sanitize(trainer, snap, thr, diverged, div_step, done):
    """Final guarantee (also after an interrupt): no member is left non-finite or too large."""
    flat = trainer.flat()
    new = _bad_members(flat, thr) & ~diverged
    if bool(new.any()):
        div_step[new] = max(done - 1, 0)
        diverged |= new
    _restore(flat, snap, diverged)


def _sgd_step(net, x_batch, noise, mu, sigma, lr, *, reduction="mean", method="auto"):
    """One SGD step with an explicit batch (test hook); updates ``net`` in place.

    x_batch, noise: (K, B, d) chosen data points and Gaussian noise per member ((B, d) for a
    single net). Returns the per-member mini-batch loss (K,) before the step.
    """
    single = net.ensemble is None
    K = 1 if single else net.ensemble
    xb = torch.as_tensor(x_batch, dtype=net.W2.dtype, device=net.W2.device).detach()
    zb = torch.as_tensor(noise, dtype=net.W2.dtype, device=net.W2.device).detach()
    if single:
        xb, zb = xb.unsqueeze(0), zb.unsqueeze(0)
    B = xb.shape[1]
    _, lr_vec = _lr_vector(lr, K, single)
    f, c = _step_factor(reduction, lr_vec, B, net.dim)
    method = _choose_method(method, net.dim, net.W2.device)
    trainer = _make_trainer(net, f, B, method)
    loss = torch.empty(1, K, dtype=net.W2.dtype, device=net.W2.device)
    mu, sigma = (_per_member_positive(v, n, K, single).to(xb.dtype).view(K, 1, 1, 1).numpy()
                 for v, n in ((mu, "mu"), (sigma, "sigma")))
    xb, zb = xb.unsqueeze(1).cpu().numpy(), zb.unsqueeze(1).cpu().numpy()   # (K, 1, B, d)

    def draw(k0, k1, S):
        return xb[k0:k1], zb[k0:k1], mu[k0:k1], sigma[k0:k1]

    try:
        with torch.no_grad():
            trainer.run_block(draw, 1, -1, loss, None, _NoInterrupt)
            trainer.finish()
            _write_back(net, trainer)
    finally:
        trainer.close()
    loss = loss[0].square() * c
    return loss[0] if single else loss
