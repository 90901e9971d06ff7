r"""Two-layer ReLU score networks, one at a time or as an ensemble (chapter 4, "The model and SGD").

    s_theta(y) = (1/m) W2 ReLU(W1 y + b),     W1: (m, d),  b: (m,),  W2: (d, m).

In 1-D this is ``s(y) = (1/m) sum_l a_l ReLU(w_l y + b_l)`` with ``w = W1[:, 0]`` and ``a = W2[0]``.

Two variants, both from the paper:

* **experiment model** (Appendix D, the default): all of ``W1, b, W2`` are trained; initialisation
  ``W1 ~ N(0, 1/d)``, ``W2 ~ N(0, 1)``, ``b = 0``.
* **theory model** (Section 4, ``fixed_inner=True, bound=A``, 1-D only): ``w_l`` are random signs
  ``±1``, frozen; ``a_l`` is kept in ``[-A, A]`` (initialised ``N(0, 1)`` clipped, and projected
  after every SGD step by :func:`dsmlib.train_sgd`); the trained parameters are
  ``theta = (a, b)``.

An ensemble of ``K`` independent networks carries a leading axis ``K`` on every parameter:
``W1: (K, m, d)``, ``b: (K, m)``, ``W2: (K, d, m)``, and the outputs gain a leading ``K`` axis.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from . import _checks

__all__ = ["TwoLayerScoreNet", "make_generators", "active_fraction"]

# Largest (members x points x width) hidden activation built at once by ``forward``.
_FORWARD_CHUNK_ELEMENTS = 1 << 22


def make_generators(seeds, device=None) -> list:
    """One seeded ``torch.Generator`` per seed.

    seeds: a sequence of integers in ``[0, 2**64)`` (e.g. ``range(30)``). device: where the generators
    live (default CPU). Returns a list of ``len(seeds)`` generators; generator ``k`` is seeded with
    ``seeds[k]``, so member ``k`` of an ensemble built or trained with this list is reproducible on
    its own with ``make_generators([seeds[k]])[0]``.
    """
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a sequence of integers, got {type(seeds).__name__}")
    seeds = [_checks.seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]
    if not seeds:
        raise ValueError("seeds is empty")
    dev = torch.device("cpu") if device is None else _checks.device(device)
    return [torch.Generator(device=dev).manual_seed(s) for s in seeds]


def _member_generators(generator, count: int, name: str = "generator"):
    """``count`` generators (or ``None`` entries) from one generator, a list, or ``None``.

    A single generator is used for all members one after the other (member k's draws follow
    member k-1's), which is what a list of one shared generator would do.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != count:
            raise ValueError(f"{name} is a list of {len(generator)} generators but the ensemble "
                             f"has {count} members")
        for g in generator:
            if not isinstance(g, torch.Generator):
                raise TypeError(f"{name} must hold torch.Generator objects, got {type(g).__name__}")
        return list(generator)
    return [_checks.generator_or_none(generator, name)] * count


def _gen_device(g):
    return torch.device("cpu") if g is None else g.device


def _init_member(width, dim, fixed_inner, bound, g):
    """Draw one network's (W1, W2) in float64 on the generator's device (b starts at 0).

    Drawing in float64 and casting afterwards makes a float32 and a float64 net built from the
    same seed agree to float32 rounding.
    """
    kw = dict(generator=g, device=_gen_device(g))
    if fixed_inner:
        W1 = torch.randint(0, 2, (width, 1), **kw).to(torch.float64).mul_(2).sub_(1)
        W2 = torch.randn(1, width, dtype=torch.float64, **kw).clamp_(-bound, bound)
    else:
        W1 = torch.randn(width, dim, dtype=torch.float64, **kw).div_(math.sqrt(dim))
        W2 = torch.randn(dim, width, dtype=torch.float64, **kw)
    return W1, W2


class TwoLayerScoreNet(nn.Module):
    r"""Two-layer ReLU score network ``s(y) = (1/m) W2 ReLU(W1 y + b)`` (paper Section 4 / App. D).

    TwoLayerScoreNet(width, dim=1, *, ensemble=None, fixed_inner=False, bound=None,
                     generator=None, dtype=None, device=None)

    width: number of hidden units m (>= 1). dim: data dimension d (>= 1).
    ensemble: ``None`` for one network, or ``K >= 1`` for K independent networks stacked on a
    leading axis. Parameters: ``W1`` (m, d), ``b`` (m,), ``W2`` (d, m); with an ensemble
    (K, m, d), (K, m), (K, d, m).
    fixed_inner: the theory model (requires ``dim == 1`` and ``bound``): ``W1`` entries are random
    signs ±1, stored as a frozen buffer; ``W2`` is initialised ``N(0,1)`` clipped to
    ``[-bound, bound]``; the trained parameters are ``(W2, b)``.
    Default init (experiment model): ``W1 ~ N(0, 1/d)``, ``W2 ~ N(0, 1)``, ``b = 0``.
    generator: ``None``, one ``torch.Generator`` or a list of K generators; member k of an
    ensemble built from a list is exactly the single net built from generator k (see
    :func:`make_generators`). Draws are made in float64 on the generator's device, then cast.
    dtype: floating dtype (default ``torch.get_default_dtype()``).
    device: where the parameters live.

    Calling the net on ``y`` of shape (N,) [d = 1] or (N, d) returns a tensor shaped like ``y``,
    with a leading K axis for an ensemble. See chapter 4, "The model and SGD".
    """

    def __init__(self, width, dim=1, *, ensemble=None, fixed_inner=False, bound=None,
                 generator=None, dtype=None, device=None):
        super().__init__()
        width = _checks.integer(width, "width", 1)
        dim = _checks.integer(dim, "dim", 1)
        if ensemble is not None:
            ensemble = _checks.integer(ensemble, "ensemble", 1)
        if not isinstance(fixed_inner, bool):
            raise TypeError(f"fixed_inner must be True or False, got {type(fixed_inner).__name__}")
        if bound is not None:
            bound = _checks.positive(bound, "bound")
        if fixed_inner and dim != 1:
            raise ValueError(f"fixed_inner=True (the theory model) requires dim=1, got dim={dim}")
        if fixed_inner and bound is None:
            raise ValueError("fixed_inner=True (the theory model) requires a bound A > 0 on W2")
        if bound is not None and not fixed_inner:
            raise ValueError("bound is only used by the theory model: pass fixed_inner=True too")
        dtype = _float_dtype(dtype)
        if isinstance(generator, (list, tuple)) and ensemble is None:
            raise ValueError("generator is a list, which needs ensemble=K "
                             "(one generator per member)")
        count = 1 if ensemble is None else ensemble
        gens = _member_generators(generator, count)

        dev = torch.empty(0).device if device is None else _checks.device(device)
        draws = [_init_member(width, dim, fixed_inner, bound, g) for g in gens]
        W1 = torch.stack([w1.to(device=dev) for w1, _ in draws]).to(dtype)
        W2 = torch.stack([w2.to(device=dev) for _, w2 in draws]).to(dtype)
        b = torch.zeros(count, width, dtype=dtype, device=dev)
        if ensemble is None:
            W1, b, W2 = W1[0], b[0], W2[0]
        self._setup(W1, b, W2, fixed_inner, bound)

    # ------------------------------------------------------------------ construction helpers
    def _setup(self, W1, b, W2, fixed_inner, bound):
        self.width = W1.shape[-2]
        self.dim = W1.shape[-1]
        self.ensemble = W1.shape[0] if W1.dim() == 3 else None
        self.fixed_inner = fixed_inner
        self.bound = bound
        if fixed_inner:
            self.register_buffer("W1", W1.contiguous())
        else:
            self.W1 = nn.Parameter(W1.contiguous())
        self.b = nn.Parameter(b.contiguous())
        self.W2 = nn.Parameter(W2.contiguous())

    @classmethod
    def from_parameters(cls, W1, b, W2, *, fixed_inner=False, bound=None) -> "TwoLayerScoreNet":
        """A net holding copies of the given tensors.

        W1: (m, d), b: (m,), W2: (d, m) for one net, or (K, m, d), (K, m), (K, d, m) for an
        ensemble. The theory model (``fixed_inner=True``) needs ``d == 1``, ``W1`` in {±1} and
        ``|W2| <= bound``. Used by :meth:`member` and to rebuild saved networks.
        """
        W1 = _checks.as_tensor(W1, "W1")
        b = _checks.as_tensor(b, "b", dtype=W1.dtype, device=W1.device)
        W2 = _checks.as_tensor(W2, "W2", dtype=W1.dtype, device=W1.device)
        if W1.dim() not in (2, 3):
            raise ValueError(f"W1 must have shape (m, d) or (K, m, d), got {tuple(W1.shape)}")
        lead = W1.shape[:-2]
        m, d = W1.shape[-2:]
        if tuple(b.shape) != (*lead, m):
            raise ValueError(f"b must have shape {(*lead, m)} to match W1, got {tuple(b.shape)}")
        if tuple(W2.shape) != (*lead, d, m):
            raise ValueError(f"W2 must have shape {(*lead, d, m)} to match W1, "
                             f"got {tuple(W2.shape)}")
        if not isinstance(fixed_inner, bool):
            raise TypeError(f"fixed_inner must be True or False, got {type(fixed_inner).__name__}")
        if fixed_inner:
            if bound is None:
                raise ValueError("fixed_inner=True (the theory model) requires a bound A > 0 on W2")
            bound = _checks.positive(bound, "bound")
            if d != 1:
                raise ValueError(f"fixed_inner=True (the theory model) requires dim=1, got dim={d}")
            if not bool((W1.abs() == 1).all()):
                raise ValueError("W1 of the theory model must have entries in {-1, +1}")
            if bool((W2.abs() > bound).any()):
                raise ValueError(f"W2 of the theory model must satisfy |W2| <= bound = {bound}")
        elif bound is not None:
            raise ValueError("bound is only used by the theory model: pass fixed_inner=True too")
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._setup(W1.detach().clone(), b.detach().clone(), W2.detach().clone(), fixed_inner, bound)
        return net

    # ------------------------------------------------------------------ evaluation
    def _stacked(self):
        """Parameters with an explicit member axis: (K, m, d), (K, m), (K, d, m)."""
        if self.ensemble is None:
            return self.W1.unsqueeze(0), self.b.unsqueeze(0), self.W2.unsqueeze(0)
        return self.W1, self.b, self.W2

    def forward(self, y):
        """Score at ``y``: (N,) [d = 1] or (N, d) -> shaped like ``y``; (K, *y.shape) for an
        ensemble.

        ``s(y) = (1/m) W2 ReLU(W1 y + b)``. ``y`` is cast to the parameters' dtype and device
        (differentiably, so ``torch.autograd`` through ``y`` works).
        """
        y2, out_shape = _checks.points_like(y, self.dim, "y", dtype=self.W2.dtype,
                                            device=self.W2.device)
        W1, b, W2 = self._stacked()
        K, m = W1.shape[0], self.width
        N = y2.shape[0]
        chunk = max(1, _FORWARD_CHUNK_ELEMENTS // (K * m))

        def block(yc):                                                  # (n_c, d) -> (K, n_c, d)
            h = torch.baddbmm(b.unsqueeze(1), yc.expand(K, -1, -1), W1.transpose(1, 2))
            return torch.bmm(h.relu_(), W2.transpose(1, 2))             # h: (K, n_c, m)

        if N <= chunk:
            out = block(y2)
        else:   # many points: blocks written into one preallocated output (bounded memory)
            out = y2.new_empty(K, N, self.dim)
            for start in range(0, N, chunk):
                out[:, start:start + chunk] = block(y2[start:start + chunk])
        out = _checks.network_output((out / m).reshape(K, *out_shape), self)
        return out[0] if self.ensemble is None else out

    def forward_members(self, y):
        """Member ``k`` of an ensemble evaluated at its own points ``y[k]``.

        y: (K, N) for a 1-D net or (K, N, d). Returns a tensor of the same shape:
        ``out[k] = member_k(y[k])``. (``forward`` evaluates every member at the same points.)
        Used for per-member data sets, e.g. :func:`dsmlib.excess_risk` with data (K, n).
        """
        if self.ensemble is None:
            raise ValueError("forward_members needs an ensemble net (ensemble=K)")
        K, d = self.ensemble, self.dim
        yy = _checks.as_tensor(y, "y", dtype=self.W2.dtype, device=self.W2.device,
                               allow_empty=True)
        shape = tuple(yy.shape)
        if d == 1 and yy.dim() == 2 and shape[0] == K:
            yy = yy.unsqueeze(-1)
        if yy.dim() != 3 or yy.shape[0] != K or yy.shape[2] != d:
            want = f"({K}, N)" if d == 1 else f"({K}, N, {d})"
            raise ValueError(f"y must have shape {want} (one row of points per member), "
                             f"got {shape}")
        W1, b, W2 = self._stacked()
        m, N = self.width, yy.shape[1]
        out = yy.new_empty(K, N, d)
        chunk = max(1, _FORWARD_CHUNK_ELEMENTS // (K * m))
        for start in range(0, N, chunk):
            yc = yy[:, start:start + chunk]                              # (K, n_c, d)
            if d == 1:   # an outer product: a broadcast multiply-add beats a matmul of depth 1
                h = torch.addcmul(b.unsqueeze(1), yc, W1.transpose(1, 2))
            else:
                h = torch.baddbmm(b.unsqueeze(1), yc, W1.transpose(1, 2))    # (K, n_c, m)
            out[:, start:start + chunk] = torch.bmm(h.relu_(), W2.transpose(1, 2))
        return _checks.network_output((out / m).reshape(shape), self)

    # ------------------------------------------------------------------ inspection
    def kinks(self) -> torch.Tensor:
        """Kink locations ``-b_l / w_l`` of a 1-D net: (m,), or (K, m) for an ensemble.

        At a kink ``s'`` jumps by ``a_l |w_l| / m``. Units with ``w_l = 0`` are constant
        (``ReLU(b_l)``) and have no kink: they are reported as ``+inf``.
        """
        if self.dim != 1:
            raise ValueError(f"kinks() is defined for 1-D nets only, this net has dim={self.dim}")
        with torch.no_grad():
            w, b = self.W1[..., 0], self.b
            k = -b / torch.where(w == 0, torch.ones_like(w), w)
            return torch.where(w == 0, torch.full_like(k, math.inf), k)

    def member(self, k) -> "TwoLayerScoreNet":
        """A single (non-ensemble) copy of member ``k`` (negative ``k`` counts from the end).

        For a single net, ``member(0)`` returns a copy of it.
        """
        K = 1 if self.ensemble is None else self.ensemble
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        if not -K <= k < K:
            raise ValueError(f"k must lie in [{-K}, {K - 1}] for an ensemble of {K}, got {k}")
        W1, b, W2 = self._stacked()
        return TwoLayerScoreNet.from_parameters(W1[k], b[k], W2[k], fixed_inner=self.fixed_inner,
                                                bound=self.bound)

    def trained_parameters(self) -> tuple:
        """The tensors SGD moves: ``(W2, b)`` for the theory model, else ``(W1, b, W2)``.

        These are the module's own ``nn.Parameter`` objects (the theory model's ``W1`` is a
        buffer), in the order used by the stability code to build Hessians.
        """
        if self.fixed_inner:
            return (self.W2, self.b)
        return (self.W1, self.b, self.W2)

    def extra_repr(self) -> str:
        s = f"width={self.width}, dim={self.dim}"
        if self.ensemble is not None:
            s += f", ensemble={self.ensemble}"
        if self.fixed_inner:
            s += f", fixed_inner=True, bound={self.bound}"
        return s + f", dtype={self.W2.dtype}"


def _float_dtype(dtype):
    return _checks.float_dtype(dtype)


def active_fraction(net, data, mu):
    r"""Fraction of hidden units active somewhere on the convex hull of the noisy data centres.

    A ReLU unit ``w_l . y + b_l`` is linear in ``y``, so its maximum over the hull of the points
    ``mu x_i`` is reached at one of them: unit l is active on the hull iff
    ``max_i (w_l . mu x_i + b_l) > 0``. In 1-D the hull is the data range ``[mu x_(1), mu x_(n)]``.
    A network whose fraction is 0 is *collapsed*: its score is 0 on the whole data range.

    net: a TwoLayerScoreNet (one net or an ensemble of K). data: (n,) or (n, d) shared, or
    per-member data sets (K, n) [1-D] / (K, n, d) for an ensemble. mu: a number, or (K,) per
    member. Returns a 0-d tensor (single net) or (K,), in float64.
    """
    if not isinstance(net, TwoLayerScoreNet):
        raise TypeError(f"net must be a TwoLayerScoreNet, got {type(net).__name__}")
    _checks.finite_parameters("net", **dict(zip(("W1", "b", "W2"), net._stacked())))
    W1, b, _ = (p.detach().to(torch.float64) for p in net._stacked())   # (K, m, d), (K, m)
    K, d = W1.shape[0], net.dim
    x = _checks.as_tensor(data, "data", dtype=torch.float64, device=W1.device)
    if d == 1 and x.dim() == 2 and x.shape[1] != 1:
        x = x.unsqueeze(-1)                                              # per member (K, n, 1)
    if x.dim() <= 2:
        x = _checks.data_2d(x, "data")[0].expand(K, -1, -1)
    if x.dim() != 3 or x.shape[0] != K or x.shape[2] != d:
        raise ValueError(f"data must be (n,) or (n, {d}) shared, or per member ({K}, n)"
                         f"{'' if d == 1 else f' / ({K}, n, {d})'}; got {tuple(x.shape)}")
    mu_t = _checks.as_tensor(mu, "mu", dtype=torch.float64, device=W1.device).reshape(-1)
    if mu_t.numel() not in (1, K) or bool((mu_t <= 0).any()):
        raise ValueError(f"mu must be a positive number or {K} positive numbers, got {mu!r}")
    pre = torch.einsum("kmd,knd->knm", W1, mu_t.view(-1, 1, 1) * x) + b[:, None, :]  # (K, n, m)
    frac = (pre.amax(1) > 0).to(torch.float64).mean(1)
    return frac[0] if net.ensemble is None else frac
