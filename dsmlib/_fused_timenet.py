r"""A fused GPU kernel (Triton) for the loss and gradients of small time-conditioned nets.

For a data dimension ``d <= 14`` the training step of :func:`dsmlib.train_time_score_net` is a
handful of matrix products with an inner dimension of ``d + 2``: on a GPU they are bound by
memory traffic over the ``(K, B, m)`` hidden activations (about ten passes a step). This kernel
keeps the activations in registers: each program takes ``BLOCK_B`` batch rows of one member,
computes ``r = (1/m) ReLU(u W^T) W2^T`` over tiles of hidden units, then, in a second sweep
that recomputes the activations, the per-block partial gradients, which a fixed-order sum over
blocks turns into the gradients (deterministic: no atomics).

Same quantities as :func:`dsmlib.timenet_training._loss_and_grads` (its docstring has the
formulas); the summation order differs, so the results agree to float32 rounding, not bit for bit. Used only on
CUDA, only when Triton imports, and only after a check against the pure-torch path on the run's
first batch (see ``train_time_score_net(fused=...)``). Runs on a CPU under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how tests/test_timenet.py checks it where Triton is installed.
"""

from __future__ import annotations

import torch

MAX_DIM = 14  # d + 2 <= 16 inputs (bias, time, x)

try:  # optional: the pure-torch path is always there
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None


def available() -> bool:
    return triton is not None


def _pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


if triton is not None:
    @triton.jit
    def _kernel(ua_ptr, wa_ptr, w2_ptr, z_ptr, gwa_ptr, gw2_ptr, loss_ptr,
                B, NB, inv_m, coef, m: tl.constexpr,
                D1: tl.constexpr, DP: tl.constexpr, DO: tl.constexpr, DOP: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr):
        pb = tl.program_id(0)
        kk = tl.program_id(1)
        rows = pb * BLOCK_B + tl.arange(0, BLOCK_B)
        rmask = rows < B
        ki = tl.arange(0, DP)
        ji = tl.arange(0, DOP)
        U = tl.load(ua_ptr + kk * B * D1 + rows[:, None] * D1 + ki[None, :],
                    mask=rmask[:, None] & (ki[None, :] < D1), other=0.0)      # (BLOCK_B, DP)
        Zb = tl.load(z_ptr + kk * B * DO + rows[:, None] * DO + ji[None, :],
                     mask=rmask[:, None] & (ji[None, :] < DO), other=0.0)     # (BLOCK_B, DOP)
        acc = tl.zeros((BLOCK_B, DOP), dtype=tl.float32)
        for l0 in range(0, m, BLOCK_M):
            cols = l0 + tl.arange(0, BLOCK_M)
            cmask = cols < m
            WA = tl.load(wa_ptr + kk * D1 * m + ki[:, None] * m + cols[None, :],
                         mask=(ki[:, None] < D1) & cmask[None, :], other=0.0)  # (DP, BLOCK_M)
            W2 = tl.load(w2_ptr + kk * DO * m + ji[:, None] * m + cols[None, :],
                         mask=(ji[:, None] < DO) & cmask[None, :], other=0.0)  # (DOP, BLOCK_M)
            h = tl.sum(U[:, :, None] * WA[None, :, :], axis=1)                # (BLOCK_B, BLOCK_M)
            a = tl.maximum(h, 0.0)
            acc += tl.sum(a[:, None, :] * W2[None, :, :], axis=2)              # (BLOCK_B, DOP)
        res = acc * inv_m - Zb                                                 # r - z
        tl.store(loss_ptr + kk * NB + pb, tl.sum(tl.sum(res * res, axis=1), axis=0))
        g = res * coef                                                         # dL/dr, 1/m folded
        for l0 in range(0, m, BLOCK_M):
            cols = l0 + tl.arange(0, BLOCK_M)
            cmask = cols < m
            WA = tl.load(wa_ptr + kk * D1 * m + ki[:, None] * m + cols[None, :],
                         mask=(ki[:, None] < D1) & cmask[None, :], other=0.0)
            W2 = tl.load(w2_ptr + kk * DO * m + ji[:, None] * m + cols[None, :],
                         mask=(ji[:, None] < DO) & cmask[None, :], other=0.0)
            h = tl.sum(U[:, :, None] * WA[None, :, :], axis=1)
            a = tl.maximum(h, 0.0)
            gw2 = tl.sum(g[:, :, None] * a[:, None, :], axis=0)                # (DOP, BLOCK_M)
            t = tl.sum(g[:, :, None] * W2[None, :, :], axis=1)                 # (BLOCK_B, BLOCK_M)
            gh = tl.where(h > 0.0, t, 0.0)
            gwa = tl.sum(U[:, :, None] * gh[:, None, :], axis=0)               # (DP, BLOCK_M)
            base = kk * NB + pb
            tl.store(gw2_ptr + base * DO * m + ji[:, None] * m + cols[None, :], gw2,
                     mask=(ji[:, None] < DO) & cmask[None, :])
            tl.store(gwa_ptr + base * D1 * m + ki[:, None] * m + cols[None, :], gwa,
                     mask=(ki[:, None] < D1) & cmask[None, :])


def loss_and_grads(W1, b, W2, u, z, reduction, block_b: int = 32):
    """Fused version of :func:`dsmlib.timenet_training._loss_and_grads` (float32, ``d <= MAX_DIM``).

    W1 (K, m, d+1), b (K, m), W2 (K, d, m), u (K, B, d+1), z (K, B, d). Returns
    (per-sample mean loss (K,), dL/dW1, dL/db, dL/dW2)."""
    K, B, d = z.shape
    m = W1.shape[1]
    if d > MAX_DIM or W1.dtype != torch.float32:
        raise ValueError(f"the fused kernel takes float32 nets with d <= {MAX_DIM}")
    c = {"mean": 1.0 / B, "sum": 1.0, "mean_all": 1.0 / (B * d)}[reduction]
    D1 = d + 2
    ua = torch.cat([torch.ones_like(u[..., :1]), u], dim=-1).contiguous()   # (K, B, d+2)
    wa = torch.cat([b.unsqueeze(-1), W1], dim=-1).transpose(1, 2).contiguous()  # (K, d+2, m)
    w2 = W2.contiguous()
    zz = z.contiguous()
    DP, DOP = _pow2(D1), max(2, _pow2(d))
    block_m = max(16, 256 // DP)
    NB = -(-B // block_b)
    gwa = torch.empty((K, NB, D1, m), dtype=u.dtype, device=u.device)
    gw2 = torch.empty((K, NB, d, m), dtype=u.dtype, device=u.device)
    loss = torch.empty((K, NB), dtype=u.dtype, device=u.device)
    _kernel[(NB, K)](ua, wa, w2, zz, gwa, gw2, loss, B, NB, 1.0 / m, 2.0 * c / m, m=m,
                     D1=D1, DP=DP, DO=d, DOP=DOP, BLOCK_B=block_b, BLOCK_M=block_m,
                     num_warps=4)
    g_wa = gwa.sum(1)
    return (loss.sum(1) / B, g_wa[:, 1:].transpose(1, 2).contiguous(), g_wa[:, 0].contiguous(),
            gw2.sum(1))
