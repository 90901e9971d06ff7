r"""A time-conditioned two-layer ReLU network for the multi-time experiments (Fig. 3–4).

The network predicts the noise from the pair ``u = (t, x) ∈ R^{d+1}``:

    r_theta(t, x) = (1/m) W2 ReLU(W1 u + b),    W1: (m, d+1),  b: (m,),  W2: (d, m),

with the paper's scaling and initialisation ``W1 ~ N(0, 1/(d+1))``, ``W2 ~ N(0, 1)``, ``b = 0``
(Appendix D). Since ``x_t = mu(t) x_0 + sigma(t) z`` has score ``-(x_t - mu x_0) / sigma^2 =
-z / sigma`` given ``x_0``, the score model is ``s_theta(x, t) = -r_theta(t, x) / sigma(t)``.

This module holds the network (:class:`TimeScoreNet`, one net or an ensemble of ``K``); its
trainer, :func:`dsmlib.train_time_score_net`, lives in :mod:`dsmlib.timenet_training`. See the
chapters "Large learning rates memorize less" and "Higher dimension memorizes less".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks

__all__ = ["TimeScoreNet"]


def _generators(generator, ensemble):
    """None, one torch.Generator, or a list of K (= ensemble) generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        if ensemble is None:
            raise ValueError("a list of generators needs an ensemble (one generator per member); "
                             "pass a single torch.Generator for one network")
        if len(generator) != ensemble:
            raise ValueError(f"generator list has {len(generator)} entries but the ensemble has "
                             f"{ensemble} members")
        for g in generator:
            _checks.generator_or_none(g, "generator[k]")
            if g is None:
                raise TypeError("generator list entries must be torch.Generator objects, got None")
        return list(generator)
    raise TypeError(f"generator must be None, a torch.Generator or a list of them, "
                    f"got {type(generator).__name__}")


def _init_weights(width, dim, members, dtype, device):
    """(K, m, d+1) and (K, d, m) initial weights, member by member (W1 then W2 from each
    generator), drawn in float64 on the generator's device, scaled, then cast and moved: a float32
    and a float64 net built from the same seed agree to rounding, and member k of an ensemble
    built with a list of generators equals a single net built with generator k."""
    w1s, w2s = [], []
    for g in members:
        kw = dict(generator=g, dtype=torch.float64,
                  device=torch.device("cpu") if g is None else g.device)
        w1s.append(torch.randn(width, dim + 1, **kw) / math.sqrt(dim + 1))
        w2s.append(torch.randn(dim, width, **kw))
    dev = torch.device("cpu") if device is None else torch.device(device)
    return (torch.stack(w1s).to(dtype=dtype, device=dev),
            torch.stack(w2s).to(dtype=dtype, device=dev))


class TimeScoreNet(nn.Module):
    r"""Time-conditioned two-layer ReLU noise predictor ``r_theta(t, x)``, optionally an ensemble.

    ``r_theta(t, x) = (1/m) W2 ReLU(W1 [t, x] + b)`` (``[t, x]`` is the time followed by the
    point: column 0 of ``W1`` multiplies ``t``);
    score ``s_theta(x, t) = -r_theta(t, x) / sigma(t)``.

    width: ``m >= 1``; dim: ``d >= 1``.
    ensemble: ``None`` (one network) or ``K >= 1``: parameters get a leading axis ``K``.
    generator: a ``torch.Generator`` (members drawn one after the other from it), or a list of
        ``K`` generators (member ``k`` is then drawn from generator ``k`` exactly as a single
        network built with that generator), or ``None`` (torch's default generator).
    Init: ``W1 ~ N(0, 1/(d+1))`` then ``W2 ~ N(0, 1)`` per member (drawn in float64, then cast to
    ``dtype``), ``b = 0``.

    Parameters: ``W1`` ``(m, d+1)``, ``b`` ``(m,)``, ``W2`` ``(d, m)``; with an ensemble
    ``(K, m, d+1)``, ``(K, m)``, ``(K, d, m)``.
    """

    def __init__(self, width: int, dim: int, *, ensemble: int | None = None, generator=None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        width = _checks.integer(width, "width", minimum=1)
        dim = _checks.integer(dim, "dim", minimum=1)
        if ensemble is not None:
            ensemble = _checks.integer(ensemble, "ensemble", minimum=1)
        gens = _generators(generator, ensemble)
        dtype = _checks.float_dtype(dtype)
        device = _checks.device(device)
        self.width, self.dim, self.ensemble = width, dim, ensemble
        members = gens if isinstance(gens, list) else [gens] * (ensemble or 1)
        w1, w2 = _init_weights(width, dim, members, dtype, device)
        if ensemble is None:
            w1, w2 = w1[0], w2[0]
        self.W1 = nn.Parameter(w1)
        self.b = nn.Parameter(torch.zeros(w1.shape[:-1], dtype=dtype, device=w1.device))
        self.W2 = nn.Parameter(w2)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def _from_params(cls, W1, b, W2):
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net.width, net.dim = W1.shape[-2], W1.shape[-1] - 1
        net.ensemble = W1.shape[0] if W1.dim() == 3 else None
        net.W1, net.b, net.W2 = (nn.Parameter(p.detach().clone()) for p in (W1, b, W2))
        return net

    def member(self, k: int) -> "TimeScoreNet":
        """A single (non-ensemble) copy of member ``k``."""
        if self.ensemble is None:
            raise ValueError("member(k) needs an ensemble; this is a single network")
        k = _checks.integer(k, "k")
        if k >= self.ensemble:
            raise ValueError(f"k must be < ensemble = {self.ensemble}, got {k}")
        return TimeScoreNet._from_params(self.W1[k], self.b[k], self.W2[k])

    def extra_repr(self) -> str:
        return f"width={self.width}, dim={self.dim}, ensemble={self.ensemble}"

    # ------------------------------------------------------------------ evaluation
    def _points(self, x, check=True):
        """x -> (X, out_shape): X (N, d) shared or (K, N, d) per member."""
        if check or not isinstance(x, torch.Tensor) or not x.is_floating_point():
            x = _checks.as_tensor(x, "x", dtype=self.W1.dtype, allow_empty=True)
        d, K = self.dim, self.ensemble
        if d == 1:
            if x.dim() == 1 or (x.dim() == 2 and K is not None and x.shape[0] == K):
                X = x[..., None]
            else:
                raise ValueError(f"x must have shape (N,) (or (K, N) = ({K}, N) per member of an "
                                 f"ensemble) for dim = 1, got {tuple(x.shape)}")
        else:
            if (x.dim() == 2 and x.shape[1] == d) or \
                    (x.dim() == 3 and K is not None and x.shape[0] == K and x.shape[2] == d):
                X = x
            else:
                want = f"(N, {d})" + (f" or ({K}, N, {d})" if K is not None else "")
                raise ValueError(f"x must have shape {want}, got {tuple(x.shape)}")
        lead = (K,) if (K is not None) else ()
        n = X.shape[-2]
        out_shape = lead + ((n,) if d == 1 else (n, d))
        return X.to(dtype=self.W1.dtype, device=self.W1.device), out_shape

    def _inputs(self, t, x, check=True):
        """(t, x) -> (u, tt, out_shape): u = [t, x] with t broadcast, (N, d+1) or (K, N, d+1)."""
        X, out_shape = self._points(x, check)
        if isinstance(t, torch.Tensor) and t.numel() != 1 or isinstance(t, (list, tuple)) \
                or (hasattr(t, "ndim") and getattr(t, "ndim", 0) > 0):
            tt = _checks.as_tensor(t, "t", dtype=X.dtype, device=X.device, allow_empty=True)
            n, K = X.shape[-2], self.ensemble
            allowed = [(n,)] + ([(K, n)] if K is not None else [])
            if tuple(tt.shape) not in allowed:
                shapes = " or ".join(map(str, allowed))
                raise ValueError(f"t must be a number or have shape {shapes}, "
                                 f"got {tuple(tt.shape)}")
        else:
            tv = _checks.scalar(t, "t")
            if abs(tv) > torch.finfo(X.dtype).max:
                raise ValueError(f"t = {tv:g} is beyond the range of {X.dtype}")
            tt = torch.full((), tv, dtype=X.dtype, device=X.device)
        lead = torch.broadcast_shapes(X.shape[:-1], tt.shape)
        tt = tt.expand(lead)
        u = torch.cat([tt[..., None], X.expand(lead + X.shape[-1:])], dim=-1)
        return u, tt, out_shape

    def forward(self, t, x, *, check: bool = True):
        r"""Noise prediction ``r_theta(t, x) = (1/m) W2 ReLU(W1 [t, x] + b)``.

        t: a number, ``(N,)`` (one time per point) or, for an ensemble, ``(K, N)``.
        x: ``(N,)`` when ``dim == 1``, else ``(N, d)``; for an ensemble also ``(K, N)`` /
        ``(K, N, d)`` (member ``k`` evaluated on ``x[k]``).
        check: ``False`` skips the tests that a tensor ``x`` is finite and that the output holds
        no NaN (each waits for the device; shapes are still checked): for inner loops such as the
        sampler's, where NaN is allowed to propagate and is looked for at the end.
        Returns ``(N,)`` / ``(N, d)``, with a leading ``K`` for an ensemble.
        """
        u, _, out_shape = self._inputs(t, x, check)
        out = _forward(self.W1, self.b, self.W2, u).reshape(out_shape)
        return _checks.network_output(out, self) if check else out

    def score(self, x, t, *, check: bool = True):
        r"""Score ``s_theta(x, t) = -r_theta(t, x) / sigma(t)``, ``sigma(t) = sqrt(1 - e^{-2t})``.

        Signature ``(x, t)`` as expected by :func:`dsmlib.reverse_sde_sample`; ``t > 0``
        (a number or a tensor of times as in :meth:`forward`). Shapes and ``check`` as in
        :meth:`forward` (a number ``t`` is always checked, on the host).
        """
        if not isinstance(t, torch.Tensor) and not _checks.is_sequence(t) \
                and not (hasattr(t, "ndim") and getattr(t, "ndim", 0) > 0):
            if _checks.scalar(t, "t") <= 0:
                raise ValueError("t must be > 0 for the score (sigma(0) = 0)")
            check_t = False
        else:
            check_t = check
        u, tt, out_shape = self._inputs(t, x, check)
        if check_t and bool((tt <= 0).any()):
            raise ValueError("t must be > 0 for the score (sigma(0) = 0)")
        r = _forward(self.W1, self.b, self.W2, u)
        if check:
            _checks.network_output(r, self)
        sig = torch.sqrt(-torch.expm1(-2.0 * tt))
        return (-r / sig[..., None]).reshape(out_shape)


def _forward(W1, b, W2, u):
    """(1/m) ReLU(u W1^T + b) W2^T with broadcasting over a leading ensemble axis.

    Rows of ``u`` (axis -2) are processed in blocks so the hidden activations never exceed about
    ``2^22`` entries (many sample points, wide nets, ensembles)."""
    K = W1.shape[0] if W1.dim() == 3 else 1
    rows = max(1, (1 << 22) // (K * W1.shape[-2]))

    def block(uc):
        return torch.relu(uc @ W1.transpose(-1, -2) + b.unsqueeze(-2)) @ W2.transpose(-1, -2)

    N = u.shape[-2]
    if N <= rows:
        return block(u) / W1.shape[-2]
    # many points: blocks written into one preallocated output (no list of pieces to join)
    lead = torch.broadcast_shapes(u.shape[:-2], W1.shape[:-2])
    out = u.new_empty(*lead, N, W2.shape[-2])
    for s in range(0, N, rows):
        out[..., s:s + rows, :] = block(u[..., s:s + rows, :])
    return out / W1.shape[-2]
