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

Two exact implementations of the same step, both with hand-written gradients (checked against
autograd in the tests):

* **1-D, sorted** (CPU default for ``dim == 1``): no (batch x width) array is ever formed. The batch
  is sorted once; each unit's kink is located among the sorted points by a branch-free binary
  search; the outputs at all points come from a bucketed cumulative sum of the per-unit terms
  ``(a_l w_l, a_l b_l)``, and each unit's gradient from prefix/suffix sums of ``(r_j y_j, r_j)``.
  Cost ``O(m log B + B log B)`` per member and step.
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


# ---------------------------------------------------------------------------------------------
# The two step implementations. Both keep the parameters of all K members in one packed tensor
#     P: (K, 2d + 1, m),   rows  W1^T (d rows), b (1 row), W2 (d rows)
# (in 1-D: rows w, b, a), updated in place. ``f`` (K,) is the per-member factor 2 c lr with
# c = 1/B (mean) or 1 (sum), so that  theta <- theta - m lr grad R_hat  reads
#     theta <- theta - f sum_j r_j m ds(Y_j)/dtheta,   r_j = s(Y_j) + z_j / sigma.
# A step is several in-place operations: train_sgd holds SIGINT back until a step is complete.
# ---------------------------------------------------------------------------------------------

class _Packed:
    """Packed parameters, per-member step factor and the theory model's projection."""

    def __init__(self, W1, b, W2, *, fixed_inner, bound, f, batch_size):
        K, m, d = W1.shape
        self.K, self.m, self.d, self.B = K, m, d, batch_size
        self.fixed_inner, self.bound = fixed_inner, bound
        self.P = torch.empty(K, 2 * d + 1, m, dtype=b.dtype, device=b.device)
        self.P[:, :d] = W1.transpose(1, 2)
        self.P[:, d] = b
        self.P[:, d + 1:] = W2
        self.f = f.to(dtype=b.dtype, device=b.device).reshape(K, 1, 1).clone()

    def flat(self):
        return self.P.view(self.K, -1)

    def finish(self):
        """Re-apply the projection (idempotent)."""
        if self.fixed_inner:
            self.P[:, 2].clamp_(-self.bound, self.bound)

    def parameters(self):
        """(W1 (K, m, d), b (K, m), W2 (K, d, m)) views of the packed parameters."""
        d = self.d
        return self.P[:, :d].transpose(1, 2), self.P[:, d], self.P[:, d + 1:]


class _Sorted1D(_Packed):
    """Exact SGD step for 1-D nets in O(m log B) per member, without a (B x m) array.

    Points are sorted by ``u = -y`` ascending. Unit l has ``kappa_l = b_l / w_l`` and
    ``c_l = #{j : u_j < kappa_l}``; it is active on the prefix ``j < c_l`` when ``w_l >= 0`` and on
    the suffix ``j >= c_l`` when ``w_l < 0`` (for ``w_l = 0``, kappa = +inf, -inf or NaN puts the
    constant unit ReLU(b_l) on all points when b > 0 and on none otherwise, as it should).
    The search runs in a doubled table (the sorted batch padded with +inf to L >= B + 1 slots,
    twice) from ``L [w_l < 0]``, so ``idx_l = L [w_l < 0] + c_l`` both separates the two kinds of
    units in the forward buckets and addresses, in one gather, prefix sums (w >= 0) or suffix
    sums (w < 0) of the residuals.
    """

    _COPIES = 4   # interleaved bucket copies: breaks scatter_add's add-to-same-address chains

    # Every per-step operation works on (K, m) or smaller tensors: with K * m below PyTorch's
    # parallel grain (32768) no OpenMP region is opened, which keeps the step fast on a busy
    # machine (a parallel region waits for every thread to be scheduled).

    def __init__(self, W1, b, W2, **kw):
        super().__init__(W1, b, W2, **kw)
        K, m, B, P = self.K, self.m, self.B, self.P
        P[:, 0].add_(0.0)     # -0.0 -> +0.0 (an SGD update never creates -0.0 afterwards)
        top = 1
        while 2 * top < B + 1:
            top *= 2
        L = 2 * top
        self.top, self.L = top, L
        e = dict(dtype=P.dtype, device=P.device)
        i32 = dict(dtype=torch.int32, device=P.device)
        new = lambda *shape: torch.empty(*shape, **e)       # noqa: E731
        self.kap, self.gv, self.da = new(K, m), new(K, m), new(K, m)
        self.v0, self.v1, self.S0, self.S1 = new(K, m), new(K, m), new(K, m), new(K, m)
        self.neg = torch.empty(K, m, **i32)
        torch.lt(P[:, 0], 0, out=self.neg)
        self.idx, self.cmp, self.sidx = (torch.empty(K, m, **i32) for _ in range(3))
        C = self._COPIES
        self.offc = ((torch.arange(m, device=P.device) % C) * (2 * L)).to(torch.int32)
        self.Uc = torch.zeros(K, 2, C, 2 * L, **e)
        self.Uh = new(K, 2, C // 2, 2 * L)
        self.U = new(K, 2, 2 * L)
        self.coef = new(K, 2, B)
        self.s = new(K, B)
        self.R = new(K, 2, B)                                 # rows: r y, r
        self.PS = torch.zeros(K, 2, 2 * L, **e)              # f * (prefix | suffix) sums of R
        self.ucur = new(K, 2 * L)
        # persistent views (creating a view costs about as much as a small operation)
        self.w, self.b, self.a = P[:, 0], P[:, 1], P[:, 2]
        self.ulev = [(st, self.ucur[:, st - 1:]) for st in _halvings(top // 2)]
        self.ucol = self.ucur[:, top - 1:top]
        self.Uc0, self.Uc1 = self.Uc[:, 0].view(K, -1), self.Uc[:, 1].view(K, -1)
        self.Uc_lo, self.Uc_hi = self.Uc[:, :, :C // 2], self.Uc[:, :, C // 2:]
        self.U_neg, self.U_pos = self.U[..., L:L + B], self.U[..., :B]
        self.cw, self.cb = self.coef[:, 0], self.coef[:, 1]
        self.r, self.ry = self.R[:, 1], self.R[:, 0]
        self.PS_pre, self.PS_all = self.PS[..., 1:B + 1], self.PS[..., :B + 1]
        self.PS_tot, self.PS_suf = self.PS[..., B:B + 1], self.PS[..., L:L + B + 1]
        self.PS0, self.PS1 = self.PS[:, 0], self.PS[:, 1]

    def load_block(self, xI, z, mu, sigma):
        """NumPy arrays xI, z: (K, S, B, 1) chosen data points and noise for S steps;
        mu, sigma: (K, 1, 1, 1)."""
        xI, z, mu, sigma = xI[..., 0], z[..., 0], mu[..., 0], sigma[..., 0]
        u = -(mu * xI + sigma * z)                            # u = -y, sorted ascending
        perm = np.argsort(u, axis=2)
        u = np.take_along_axis(u, perm, 2)
        tz = np.take_along_axis(z, perm, 2) / sigma          # r = s(y) + z / sigma
        K, S, B = u.shape
        us = np.full((S, K, 2, self.L), np.inf, dtype=u.dtype)
        us[..., :B] = u.transpose(1, 0, 2)[:, :, None, :]
        self.us = _tensor(us.reshape(S, K, 2 * self.L), self.P)
        self.ys = _tensor(-np.ascontiguousarray(u.transpose(1, 0, 2)), self.P)
        self.tz = _tensor(np.ascontiguousarray(tz.transpose(1, 0, 2)), self.P)

    def step(self, i, loss_out):
        """One SGD step with the block's batch i; writes |r|_2 per member into loss_out (K,)."""
        w, b, a, kap, idx, cmp = self.w, self.b, self.a, self.kap, self.idx, self.cmp
        y = self.ys[i]
        self.ucur.copy_(self.us[i])
        if self.fixed_inner:
            torch.mul(b, w, out=kap)                         # b / w for w = ±1
        else:
            torch.lt(w, 0, out=self.neg)
            torch.div(b, w, out=kap)
        # branch-free binary search from L [w < 0]: idx = L [w < 0] + #{j : u_j < kappa}
        torch.lt(self.ucol, kap, out=cmp)
        torch.add(cmp, self.neg, alpha=2, out=idx)
        idx.mul_(self.top)
        for st, u_st in self.ulev:
            torch.gather(u_st, 1, idx, out=self.gv)
            torch.lt(self.gv, kap, out=cmp)
            idx.add_(cmp, alpha=st)
        # forward: bucket v = (a w, a b) by idx, then with cum = cumsum over the table,
        # coef[j] = sum_{w>=0, c>j} v + sum_{w<0, c<=j} v = cum[L + j] - cum[j]
        torch.mul(w, a, out=self.v0)
        torch.mul(b, a, out=self.v1)
        torch.add(idx, self.offc, out=self.sidx)
        self.Uc.zero_()
        self.Uc0.scatter_add_(1, self.sidx, self.v0)
        self.Uc1.scatter_add_(1, self.sidx, self.v1)
        Uh = torch.add(self.Uc_lo, self.Uc_hi, out=self.Uh)
        torch.add(Uh[:, :, 0], Uh[:, :, 1], out=self.U)     # (sum of the 4 copies)
        self.U.cumsum_(2)
        torch.sub(self.U_neg, self.U_pos, out=self.coef)
        torch.addcmul(self.cb, self.cw, y, out=self.s)
        torch.add(self.tz[i], self.s, alpha=1.0 / self.m, out=self.r)   # r = s(y) + z / sigma
        torch.mul(self.r, y, out=self.ry)
        torch.linalg.vector_norm(self.r, dim=1, out=loss_out)
        # backward: S = f * sums of (r y, r) over each unit's active points (prefix or suffix)
        torch.cumsum(self.R, 2, out=self.PS_pre)
        torch.sub(self.PS_tot, self.PS_all, out=self.PS_suf)
        self.PS.mul_(self.f)
        torch.gather(self.PS0, 1, idx, out=self.S0)
        torch.gather(self.PS1, 1, idx, out=self.S1)
        # update (a last, since the others use its old value):
        # a -= f (w S_ry + b S_r);  (w, b) -= f a (S_ry, S_r)  [theory model: b only, a projected]
        torch.mul(w, self.S0, out=self.da)
        self.da.addcmul_(b, self.S1)
        if not self.fixed_inner:
            w.addcmul_(a, self.S0, value=-1)
        b.addcmul_(a, self.S1, value=-1)
        a.sub_(self.da)
        if self.fixed_inner:
            a.clamp_(-self.bound, self.bound)


def _tensor(a, like):
    """A NumPy block as a tensor on ``like``'s device (zero-copy on the CPU)."""
    return torch.from_numpy(a).to(like.device)


def _halvings(st):
    out = []
    while st >= 1:
        out.append(st)
        st //= 2
    return out


class _Dense(_Packed):
    """SGD step with batched matrix products, any dimension; hand-written gradients.

    With Yb = [Y, 1] (K, B, d+1) and V = [W1^T; b] (K, d+1, m):
    H = ReLU(Yb V) (K, B, m);  r = H W2^T / m + z / sigma  (K, B, d);
    W2 <- W2 - f r^T H;   V <- V - f Yb^T ((r W2) * 1[H > 0])   (using the old W2).
    """

    def __init__(self, W1, b, W2, **kw):
        super().__init__(W1, b, W2, **kw)
        K, m, d, B = self.K, self.m, self.d, self.B
        e = dict(dtype=self.P.dtype, device=self.P.device)
        self.H = torch.empty(K, B, m, **e)
        self.RW = torch.empty(K, B, m, **e)
        self.outT = torch.empty(K, d, B, **e)
        self.R = torch.empty(K, B, d, **e)
        self.V, self.W2 = self.P[:, :d + 1], self.P[:, d + 1:]
        self.HT, self.RT, self.outTT = self.H.transpose(1, 2), self.R.transpose(1, 2), \
            self.outT.transpose(1, 2)

    def load_block(self, xI, z, mu, sigma):
        """NumPy arrays xI, z: (K, S, B, d) chosen data points and noise for S steps;
        mu, sigma: (K, 1, 1, 1)."""
        K, S, B, d = z.shape
        Y = np.ones((S, K, B, d + 1), dtype=z.dtype)
        Y[..., :d] = (mu * xI + sigma * z).transpose(1, 0, 2, 3)
        self.Y = _tensor(Y, self.P)
        self.YT = self.Y.transpose(2, 3)
        self.tz = _tensor(np.ascontiguousarray((z / sigma).transpose(1, 0, 2, 3)), self.P)

    def step(self, i, loss_out):
        H, R, W2 = self.H, self.R, self.W2
        Y = self.Y[i]
        torch.bmm(Y, self.V, out=H)
        H.relu_()
        torch.bmm(W2, self.HT, out=self.outT)
        torch.add(self.tz[i], self.outTT, alpha=1.0 / self.m, out=R)
        torch.linalg.vector_norm(R, dim=(1, 2), out=loss_out)
        R.mul_(self.f)
        torch.bmm(R, W2, out=self.RW)                         # before W2 moves
        G = _relu_mask_(self.RW, H)                           # (r W2) * 1[H > 0]
        W2.baddbmm_(self.RT, H, alpha=-1)
        if self.fixed_inner:
            self.P[:, 1:2].baddbmm_(self.YT[i][:, 1:2], G, alpha=-1)   # theory: b only
            W2.clamp_(-self.bound, self.bound)
        else:
            self.V.baddbmm_(self.YT[i], G, alpha=-1)


def _relu_mask_(grad, act):
    """grad * 1[act > 0], in place (one fused pass; ``act`` is the post-ReLU activation)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, act, 0, grad_input=grad)


# ---------------------------------------------------------------------------------------------

def _choose_method(method, dim, device):
    if method == "auto":
        return "sorted" if dim == 1 and device.type == "cpu" else "dense"
    if method not in ("sorted", "dense"):
        raise ValueError(f"method must be 'auto', 'sorted' or 'dense', got {method!r}")
    if method == "sorted" and dim != 1:
        raise ValueError("method='sorted' needs a 1-D net")
    return method


def _make_trainer(net, f, batch_size, method):
    W1, b, W2 = (t.detach() for t in net._stacked())
    cls = _Sorted1D if method == "sorted" else _Dense
    return cls(W1, b, W2, fixed_inner=net.fixed_inner, bound=net.bound, f=f,
               batch_size=batch_size)


def _write_back(net, trainer):
    with torch.no_grad():
        W1, b, W2 = net._stacked()
        nW1, nb, nW2 = trainer.parameters()
        if not net.fixed_inner:
            W1.copy_(nW1)
        b.copy_(nb)
        W2.copy_(nW2)


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
    idx, noise = [], []
    for g in gens:
        idx.append(torch.randint(0, n, (_BLOCK, B), generator=g, device=g.device).cpu().numpy())
        noise.append(torch.randn(_BLOCK, B, d, generator=g, dtype=dtype, device=g.device)
                     .cpu().numpy())
    return np.stack(idx), np.stack(noise)


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
    completed step and the interrupt is re-raised (SIGINT is held back during a step).

    Speed: in 1-D on the CPU an exact O(m log B) step without any (B x m) array (see the module
    docstring); otherwise batched matrix products. Gradients are written by hand (no autograd).
    See chapter 4, "The model and SGD".
    """
    return _train(net, data, mu, sigma, lr=lr, steps=steps, batch_size=batch_size,
                  reduction=reduction, generator=generator, log_every=log_every,
                  progress=progress, diverge_threshold=diverge_threshold, device=device,
                  method="auto", average_last=average_last)


_REDUCTIONS = ("mean", "sum", "mean_all")


def _step_factor(reduction, lr_vec, B, d):
    """Per-member factor ``f = 2 c lr`` of the packed step (see the comment above ``_Packed``).

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
    # the random block is prepared in NumPy (single-threaded, see _Sorted1D) and then moved
    x_np = x.cpu().numpy()
    mu, sigma = (v.to(dtype).view(K, 1, 1, 1).numpy() for v in (mu, sigma))
    member = np.arange(K).reshape(K, 1, 1)
    pick = (lambda I: x_np[I]) if x.dim() == 2 else (lambda I: x_np[member, I])  # (K, S, B, d)

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
    try:
        with torch.no_grad(), _HoldInterrupts() as hold:
            while done < steps:
                S = min(_BLOCK, steps - done)
                I, Z = _draw_block(gens, n, B, d, dtype)
                trainer.load_block(pick(I[:, :S]), Z[:, :S], mu, sigma)
                for i in range(S):
                    trainer.step(i, loss_blk[i])
                    if avg_sum is not None and done + i >= avg_from:
                        avg_sum.add_(trainer.flat())
                    if hold.pending:
                        done += i + 1
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
        with torch.no_grad():
            trainer.finish()
            _sanitize(trainer, snap, thr, diverged, div_step, done)
            _write_back(net, trainer)
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
    loss = torch.empty(K, dtype=net.W2.dtype, device=net.W2.device)
    mu, sigma = (_per_member_positive(v, n, K, single).to(xb.dtype).view(K, 1, 1, 1).numpy()
                 for v, n in ((mu, "mu"), (sigma, "sigma")))
    with torch.no_grad():
        trainer.load_block(xb.unsqueeze(1).cpu().numpy(), zb.unsqueeze(1).cpu().numpy(), mu,
                           sigma)
        trainer.step(0, loss)
        trainer.finish()
        _write_back(net, trainer)
    loss = loss.square() * c
    return loss[0] if single else loss
