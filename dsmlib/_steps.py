r"""The step implementations of :func:`dsmlib.train_sgd` (see dsmlib/training.py for the step).

All keep the parameters of the K members of an ensemble in one packed tensor
    P: (K, 2d + 1, m),   rows  W1^T (d rows), b (1 row), W2 (d rows)
(in 1-D: rows w, b, a), updated in place. ``f`` (K, 1, 1) is the per-member factor 2 c lr with
c = 1/B (mean) or 1 (sum), so that  theta <- theta - m lr grad R_hat  reads
    theta <- theta - f sum_j r_j m ds(Y_j)/dtheta,   r_j = s(Y_j) + z_j / sigma.

Three exact implementations of the same step, with hand-written gradients (checked against
autograd in the tests):

* ``"numba"`` (:class:`_Kernel1D`, the CPU default for ``dim == 1`` where numba is installed):
  the compiled kernel of dsmlib/_kernel1d.py runs whole blocks of steps, member after member,
  chunks of members on ``torch.get_num_threads()`` threads. Bit for bit the ``"sorted"`` step.
* ``"sorted"`` (:class:`_Sorted1D`, pure torch, the fallback in 1-D): the same O(m log B) step
  as a sequence of small torch operations, one Python call per step.
* ``"dense"`` (:class:`_Dense`, ``dim > 1`` or off the CPU): batched matrix products.

A trainer's ``run_block(draw, S, first, loss_blk, avg, hold)`` runs the S steps of one block of
random draws and returns how many it completed (fewer than S only when an interrupt is pending:
the torch steps stop at a step boundary, the kernel at the end of the block).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["choose_method", "make_trainer", "write_back", "sorted_order", "sorted_batch",
           "kernel_available"]

_GRAIN = 32768       # torch's parallel grain: smaller operations run on the calling thread
_KERNEL_CHUNK = 16   # members per task of the compiled kernel (their block data stays in cache)


class _Packed:
    """Packed parameters P (K, 2d + 1, m) of a net and the per-member step factor f (K, 1, 1)."""

    def __init__(self, net, f, batch_size):
        W1, b, W2 = (t.detach() for t in net._stacked())
        K, m, d = W1.shape
        self.K, self.m, self.d, self.B = K, m, d, batch_size
        self.fixed_inner, self.bound = net.fixed_inner, net.bound
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

    def close(self):
        """Release threads (none here)."""


class _Part:
    """A torch step on ``P`` (Kc, 2d + 1, m) and ``f`` (Kc, 1, 1), views of a chunk of members."""

    def __init__(self, P, f, *, fixed_inner, bound, batch_size):
        self.P, self.f = P, f
        self.K, rows, self.m = P.shape
        self.d = (rows - 1) // 2
        self.B, self.fixed_inner, self.bound = batch_size, fixed_inner, bound


class _StepLoop(_Packed):
    """Torch steps (``part_cls``), one Python call per step and chunk of members.

    Members are split into chunks of ``chunk`` members (all in one by default) so that each
    operation stays below torch's parallel grain: no OpenMP region is opened, which keeps the
    step fast on a busy machine, and large ensembles do not build large per-step tables.
    """

    def __init__(self, net, f, batch_size, part_cls, chunk=None):
        super().__init__(net, f, batch_size)
        chunk = self.K if chunk is None else chunk
        kw = dict(fixed_inner=self.fixed_inner, bound=self.bound, batch_size=batch_size)
        self.parts = [(k0, min(k0 + chunk, self.K)) for k0 in range(0, self.K, chunk)]
        self.parts = [(k0, k1, part_cls(self.P[k0:k1], self.f[k0:k1], **kw))
                      for k0, k1 in self.parts]

    def run_block(self, draw, S, first, loss_blk, avg, hold):
        """Steps ``0..S-1`` of the block; ``loss_blk[i]`` (K,) gets |r|_2 of step i; ``avg`` (K, P)
        float64 or None gets the parameters after step i added when ``first + i >= 0``."""
        for k0, k1, part in self.parts:
            part.load_block(*draw(k0, k1, S))
        flat, whole = self.flat(), len(self.parts) == 1
        for i in range(S):
            row = loss_blk[i]
            for k0, k1, part in self.parts:
                part.step(i, row if whole else row[k0:k1])
            if avg is not None and first + i >= 0:
                avg.add_(flat)
            if hold.pending:
                return i + 1
        return S


def sorted_order(xI, z, mu, sigma):
    """1-D block: xI, z (K, S, B, 1), mu, sigma (K, 1, 1, 1) NumPy arrays -> u = -y (K, S, B),
    its ascending order per step ``perm`` (K, S, B) and z (K, S, B). The one sort of both 1-D
    steps (NumPy's order of ties included)."""
    xI, z, mu, sigma = xI[..., 0], z[..., 0], mu[..., 0], sigma[..., 0]
    u = -(mu * xI + sigma * z)
    return u, np.argsort(u, axis=2), z


def sorted_batch(xI, z, mu, sigma):
    """u = -y sorted ascending per step, and z / sigma in the same order, each (K, S, B)."""
    u, perm, z = sorted_order(xI, z, mu, sigma)
    u = np.take_along_axis(u, perm, 2)
    tz = np.take_along_axis(z, perm, 2) / sigma[..., 0]   # r = s(y) + z / sigma
    return u, tz


def _positive_zero_(w):
    """-0.0 -> +0.0 in place (an SGD update never creates -0.0 afterwards); this matters for
    ``kappa = b / w`` of a unit with ``w == 0``."""
    w.add_(0.0)


class _Sorted1D(_Part):
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

    def __init__(self, P, f, **kw):
        super().__init__(P, f, **kw)
        K, m, B, P = self.K, self.m, self.B, self.P
        _positive_zero_(P[:, 0])
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
        u, tz = sorted_batch(xI, z, mu, sigma)
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



class _Dense(_Part):
    """SGD step with batched matrix products, any dimension; hand-written gradients.

    With Yb = [Y, 1] (K, B, d+1) and V = [W1^T; b] (K, d+1, m):
    H = ReLU(Yb V) (K, B, m);  r = H W2^T / m + z / sigma  (K, B, d);
    W2 <- W2 - f r^T H;   V <- V - f Yb^T ((r W2) * 1[H > 0])   (using the old W2).
    """

    def __init__(self, P, f, **kw):
        super().__init__(P, f, **kw)
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


class _Kernel1D(_Packed):
    """1-D step by the compiled kernel (dsmlib/_kernel1d.py): bit for bit :class:`_Sorted1D`.

    A block is split into tasks of at most ``_KERNEL_CHUNK`` members; a task draws its members'
    random block, orders it (:func:`sorted_order`, as the torch step), runs all its steps in the
    kernel and computes the losses from the residuals with torch's own norm. Tasks run on
    ``threads`` threads, the calling one included (the kernel, NumPy's sort and torch's sampling
    release the GIL); each member is computed by exactly one task, so the result does not depend
    on the threads.
    """

    def __init__(self, net, f, batch_size, threads):
        super().__init__(net, f, batch_size)
        from . import _kernel1d
        _positive_zero_(self.P[:, 0])
        self.kernel = _kernel1d.run_block
        self.Pn, self.fn = self.P.numpy(), self.f.view(-1).numpy()
        dt = self.Pn.dtype
        self.neg = self.Pn[:, 0] < 0                     # read by the theory model only
        self.consts = np.array([1.0 / self.m, self.bound if self.fixed_inner else np.inf], dt)
        self.fused = _kernel1d.torch_fuses(self.P.dtype)
        # tasks: at most _KERNEL_CHUNK members, and about 4 per thread, so that a thread that
        # the OS holds back on a busy machine delays the block by a small task only
        size = max(1, min(_KERNEL_CHUNK, -(-self.K // (4 * max(threads, 1)))))
        self.chunks = [(k0, min(k0 + size, self.K)) for k0 in range(0, self.K, size)]
        self.threads = max(1, min(threads, len(self.chunks)))
        # the calling thread works too: threads - 1 helpers
        self.pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def run_block(self, draw, S, first, loss_blk, avg, hold):
        """As :meth:`_StepLoop.run_block`, but always the whole block (interrupts are handled
        by the caller at the end of the block)."""
        start = S if avg is None else max(0, -first)
        sums = None if avg is None else avg.numpy()
        none = np.empty((1, 1))

        def task(chunk):
            k0, k1 = chunk
            xI, z, mu, sigma = draw(k0, k1, S)
            u, perm, z = sorted_order(xI, z, mu, sigma)
            z = np.ascontiguousarray(z)            # a short last block: one compiled layout
            r = np.empty_like(u)
            self.kernel(self.Pn[k0:k1], self.fn[k0:k1], self.neg[k0:k1], self.fixed_inner,
                        self.fused, self.consts, u, perm, z, sigma.reshape(-1), r,
                        none if sums is None else sums[k0:k1], start)
            loss_blk[:S, k0:k1] = _row_norms(r).T

        todo = iter(self.chunks)
        lock = threading.Lock()

        def drain():                               # take tasks until none is left
            while True:
                with lock:
                    chunk = next(todo, None)
                if chunk is None:
                    return
                task(chunk)

        helpers = [] if self.pool is None else \
            [self.pool.submit(drain) for _ in range(self.threads - 1)]
        try:
            drain()
        finally:
            for h in helpers:
                h.result()
        return S

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _row_norms(r):
    """|r|_2 over the last axis of a NumPy array (K, S, B) -> tensor (K, S): torch's norm, the
    one the torch step uses, in pieces below the parallel grain (no OpenMP region)."""
    K, S, B = r.shape
    flat = torch.from_numpy(r).view(-1, B)
    rows = max(1, _GRAIN // B)
    out = torch.empty(flat.shape[0], dtype=flat.dtype)
    for s in range(0, flat.shape[0], rows):
        torch.linalg.vector_norm(flat[s:s + rows], dim=1, out=out[s:s + rows])
    return out.view(K, S)


# ---------------------------------------------------------------------------------------------

def kernel_available():
    """True when the compiled 1-D kernel can run: numba is importable, ``DSMLIB_NO_NUMBA`` is
    not set to a non-empty value other than ``0``, and torch's elementwise operations are
    reproducible by the kernel on this CPU (see dsmlib/_kernel1d.py)."""
    from . import _kernel1d
    return _kernel1d.available()


def choose_method(method, dim, device):
    """'auto' -> 'numba' (1-D, CPU, kernel available), 'sorted' (1-D, CPU) or 'dense'."""
    if method == "auto":
        if dim == 1 and device.type == "cpu":
            return "numba" if kernel_available() else "sorted"
        return "dense"
    if method not in ("numba", "sorted", "dense"):
        raise ValueError(f"method must be 'auto', 'numba', 'sorted' or 'dense', got {method!r}")
    if method in ("numba", "sorted") and dim != 1:
        raise ValueError(f"method={method!r} needs a 1-D net")
    if method == "numba":
        if device.type != "cpu":
            raise ValueError("method='numba' runs on the CPU only")
        if not kernel_available():
            raise RuntimeError("method='numba' needs numba (pip install numba) and "
                               "DSMLIB_NO_NUMBA unset")
    return method


def make_trainer(net, f, batch_size, method):
    """The trainer of ``method`` for ``net`` (parameters packed, see above)."""
    if method == "numba":
        return _Kernel1D(net, f, batch_size, torch.get_num_threads())
    if method == "sorted":
        return _StepLoop(net, f, batch_size, _Sorted1D, chunk=max(1, _GRAIN // net.width))
    return _StepLoop(net, f, batch_size, _Dense)


def write_back(net, trainer):
    with torch.no_grad():
        W1, b, W2 = net._stacked()
        nW1, nb, nW2 = trainer.parameters()
        if not net.fixed_inner:
            W1.copy_(nW1)
        b.copy_(nb)
        W2.copy_(nW2)
