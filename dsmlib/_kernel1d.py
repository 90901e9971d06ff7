r"""Compiled (numba) kernel of the exact 1-D SGD step: whole blocks of steps, member by member.

The same arithmetic as the pure-torch step ``dsmlib._steps._Sorted1D`` (see its docstring),
written as scalar loops that numba compiles. It reproduces that step bit for bit on the CPU, in
float32 and float64, because every operation is the same IEEE operation in the same order:

* torch fuses some of its elementwise operations on the CPU: ``torch.add(x, y, alpha=c)`` is
  ``fma(y, c, x)`` and ``torch.addcmul(x, y, z, value=v)`` is ``fma(v y, z, x)`` wherever the
  CPU has FMA (its vectorised and scalar loops alike). :func:`torch_fuses` measures this once per
  dtype, and the kernel fuses exactly those operations (LLVM's ``llvm.fma``); numba itself never
  contracts ``a * b + c`` (no fastmath). Where torch fuses some elements and not others the
  kernel is not used (:func:`available`);
* ``torch.cumsum`` accumulates float32 in float64 and rounds each prefix, as the cumulative sums
  below do (their accumulator is float64 for both dtypes);
* the forward buckets are summed in the torch step's order: four interleaved copies (unit ``l``
  into copy ``l % 4``, units in increasing order), combined as ``(c0 + c2) + (c1 + c3)``;
  empty buckets, which only add +0.0, are left out;
* the batch is sorted by the same NumPy call (``perm``, which fixes the order of ties), and the
  residual norm (the loss) computed by the same torch call, outside the kernel (``rbuf`` hands
  the residuals back).

One call runs ``S`` steps of every member of a chunk, one member after the other (its parameters
stay in the core's cache), and adds the iterates to the tail-average sums. It holds no GIL
(``nogil``), so threads run chunks in parallel. Compiled on first use (a few seconds) and cached
on disk by numba (``cache=True``).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

try:                                    # numba is optional: the pure-torch step is the fallback
    import numba
    from numba.extending import intrinsic as _intrinsic
except ImportError:                     # pragma: no cover - exercised where numba is absent
    numba = None

__all__ = ["available", "torch_fuses", "run_block"]


def available():
    """True when numba is importable, ``DSMLIB_NO_NUMBA`` is unset (or ``0``), and torch's fused
    operations are reproducible here (:func:`torch_fuses` is not None for both dtypes)."""
    if numba is None or os.environ.get("DSMLIB_NO_NUMBA", "") not in ("", "0"):
        return False
    return all(torch_fuses(dt) is not None for dt in (torch.float32, torch.float64))


@functools.lru_cache(maxsize=None)
def torch_fuses(dtype):
    """(add, addcmul): whether ``torch.add(x, y, alpha=c)`` and ``torch.addcmul(x, y, z, value=v)``
    round once (fused multiply-add) on this CPU for ``dtype``; None if only some elements are.

    Probed on inputs where the two differ: (1 + e)(1 - e) - 1 = -e^2 exactly, while the rounded
    product is 1. 37 elements cover torch's vectorised loop and its scalar tail.
    """
    e = 2.0 ** -13 if dtype == torch.float32 else 2.0 ** -30
    one = torch.ones(37, dtype=dtype)
    x, y = one + e, one - e
    outs = (torch.add(-one, x, alpha=float(y[0])),
            torch.addcmul(-one, x, y), torch.addcmul(-one, -x, y, value=-1))
    flags = []
    for out in outs:
        fused = out == -(e * e)
        if bool(fused.all()):
            flags.append(True)
        elif bool((out == 0).all()):
            flags.append(False)
        else:
            return None
    if flags[1] != flags[2]:
        return None
    return flags[0], flags[1]


if numba is not None:

    @_intrinsic
    def _fma(typingctx, x, y, z):
        """x * y + z with one rounding (LLVM's llvm.fma), for three floats of one type."""
        if not (isinstance(x, numba.types.Float) and x == y == z):
            return None

        def codegen(context, builder, signature, args):
            return builder.fma(*args)

        return x(x, y, z), codegen

    @numba.njit(inline="always")
    def _madd(x, y, z, fused):
        """x * y + z, fused (one rounding) or not (two), as torch computes it."""
        if fused:
            return _fma(x, y, z)
        return x * y + z

    @numba.njit(nogil=True, cache=True, error_model="numpy")   # IEEE division: b / 0 = inf
    def run_block(P, f, neg_fixed, fixed_inner, fused, consts, u, perm, z, sigma, rbuf, avg,
                  avg_start):
        """Run ``S`` SGD steps of ``Kc`` members in place.

        P: (Kc, 3, m) parameters (rows w, b, a), float32 or float64, updated in place.
        f: (Kc,) step factors ``2 c lr`` (dtype of P). neg_fixed: (Kc, m) bool, ``w < 0`` (read
        only for the theory model, whose w is frozen). fixed_inner: the theory model (b and a
        move, a is clamped to [-A, A]). fused: (add, addcmul) from :func:`torch_fuses`.
        consts: (2,) [1/m, A] in P's dtype.
        u: (Kc, S, B) u = -y of every step (S steps), perm: (Kc, S, B) its ascending order
        (``np.argsort(u, axis=2)``), z: (Kc, >= S, B) the noise, sigma: (Kc,) (dtype of P).
        rbuf: (Kc, S, B) output, the residuals r = s(y) + z / sigma of every step, in the sorted
        order.
        avg: (Kc, 3 m) float64 tail-average sums; the parameters after step i are added for
        i >= avg_start (pass avg_start >= S, and any 2-D float64 array, for none).
        """
        fuse_add, fuse_mul = fused
        Kc, _, m = P.shape
        S, B = u.shape[1], u.shape[2]
        top = 1
        while 2 * top < B + 1:
            top *= 2
        L, H = 2 * top, B + 1              # padded table: u then +inf (L >= B + 1 slots)
        G = min(max(8, L // 16), L)         # search: count over pivots, then groups of G
        NP = L // G - 1                     # pivots table[G - 1], table[2 G - 1], ... (not +inf)
        inv_m, A = consts[0], consts[1]
        table = np.empty(L, dtype=P.dtype)
        table[B:] = np.inf
        piv = np.empty(max(NP, 1), dtype=P.dtype)
        # indices are unsigned: numba then skips its negative-index wraparound code
        cnt = np.empty(m, dtype=np.uint32)  # c = #{j : u_j < kappa} (while searched)
        idx = np.empty(m, dtype=np.uint32)  # c + H [w < 0]
        zero, one, Gu, Hu = np.uint32(0), np.uint32(1), np.uint32(G), np.uint32(H)
        kap = np.empty(m, dtype=P.dtype)
        H2u = np.uint32(2 * H)
        Uw = np.zeros(8 * H, dtype=P.dtype)    # buckets of a w: 4 copies of 2 H (see above)
        Uv = np.zeros(8 * H, dtype=P.dtype)    # buckets of a b
        cum = np.empty((2, 2 * H), dtype=P.dtype)
        PS0 = np.empty(2 * H, dtype=P.dtype)   # f (prefix | total - prefix) of r y, of r
        PS1 = np.empty(2 * H, dtype=P.dtype)
        pre = np.empty((2, H), dtype=P.dtype)
        ry = np.empty(B, dtype=P.dtype)
        t = np.empty(B, dtype=P.dtype)          # z / sigma in the sorted order
        for k in range(Kc):
            w, b, a = P[k, 0], P[k, 1], P[k, 2]
            fk, sg = f[k], sigma[k]
            for i in range(S):
                uk, pk, zk, r = u[k, i], perm[k, i], z[k, i], rbuf[k, i]
                for j in range(B):                      # the batch, sorted
                    p = np.uint64(pk[j])
                    table[j] = uk[p]
                    t[j] = zk[p] / sg
                piv[0] = np.inf                         # (no pivot when G == L)
                for q in range(NP):
                    piv[q] = table[(q + 1) * G - 1]
                Uw[:] = 0
                Uv[:] = 0
                # per unit: the kink's position c = #{j : u_j < kappa_l} in the sorted batch, by
                # a count over the pivots (G per pivot below kappa; vectorised over units), then
                # a branch-free binary search inside the group of G, the last level fused with
                # the buckets: (a w, a b) of unit l go to idx = c + H [w < 0], in copy l % 4
                p0 = piv[0]
                for l in range(m):
                    if fixed_inner:
                        kl = b[l] * w[l]                 # b / w for w = +-1
                    else:
                        kl = b[l] / w[l]
                    kap[l] = kl
                    cnt[l] = Gu if p0 < kl else zero
                for q in range(1, NP):
                    pq = piv[q]
                    for l in range(m):
                        cnt[l] += Gu if pq < kap[l] else zero
                st = G >> 1
                while st > 1:
                    tab, su = table[st - 1:], np.uint32(st)
                    for l in range(m):
                        c = cnt[l]
                        cnt[l] = c + (su if tab[c] < kap[l] else zero)
                    st >>= 1
                for l in range(m):
                    c = cnt[l]
                    c = c + (one if table[c] < kap[l] else zero)
                    wl, al = w[l], a[l]
                    ng = neg_fixed[k, l] if fixed_inner else wl < 0
                    q = c + (Hu if ng else zero)
                    idx[l] = q
                    o = q + H2u * np.uint32(l & 3)
                    Uw[o] += wl * al
                    Uv[o] += b[l] * al
                H2 = 2 * H
                acc = 0.0                               # float64 (torch's cumsum of float32)
                for q in range(H2):
                    acc += (Uw[q] + Uw[2 * H2 + q]) + (Uw[H2 + q] + Uw[3 * H2 + q])
                    cum[0, q] = acc
                acc = 0.0
                for q in range(H2):
                    acc += (Uv[q] + Uv[2 * H2 + q]) + (Uv[H2 + q] + Uv[3 * H2 + q])
                    cum[1, q] = acc
                # outputs s_j = cw_j y_j + cb_j, coef = cum[negative half] - cum[positive half]
                for j in range(B):
                    cw = cum[0, H + j] - cum[0, j]
                    cb = cum[1, H + j] - cum[1, j]
                    yj = -table[j]
                    rj = _madd(_madd(cw, yj, cb, fuse_mul), inv_m, t[j], fuse_add)
                    r[j] = rj
                    ry[j] = rj * yj
                acc0 = 0.0
                acc1 = 0.0
                pre[0, 0] = 0
                pre[1, 0] = 0
                for j in range(B):
                    acc0 += ry[j]
                    acc1 += r[j]
                    pre[0, j + 1] = acc0
                    pre[1, j + 1] = acc1
                for j in range(H):
                    PS0[j] = pre[0, j] * fk
                    PS0[H + j] = (pre[0, B] - pre[0, j]) * fk
                    PS1[j] = pre[1, j] * fk
                    PS1[H + j] = (pre[1, B] - pre[1, j]) * fk
                # update (a last: the others use its old value)
                for l in range(m):
                    q = idx[l]
                    s0, s1 = PS0[q], PS1[q]
                    wl, bl, al = w[l], b[l], a[l]
                    da = _madd(bl, s1, wl * s0, fuse_mul)
                    if not fixed_inner:
                        w[l] = _madd(-al, s0, wl, fuse_mul)
                    b[l] = _madd(-al, s1, bl, fuse_mul)
                    an = al - da
                    if fixed_inner:                      # clamp to [-A, A], NaN stays NaN
                        if an < -A:
                            an = -A
                        elif an > A:
                            an = A
                    a[l] = an
                if i >= avg_start:
                    for l in range(m):
                        avg[k, l] += w[l]
                        avg[k, m + l] += b[l]
                        avg[k, 2 * m + l] += a[l]

else:                                    # pragma: no cover
    run_block = None
