r"""Memorization metrics: MMD, nearest-neighbour distances and ratio, the fitted Gaussian.

- :func:`mmd`: how far generated samples are from a reference sample (Fig. 3–4 of the paper use a
  Gaussian kernel of bandwidth 1).
- :func:`memorization_fraction`: fraction of samples much closer to their nearest training point
  than to the second nearest (Gu et al. 2023, "On memorization in diffusion models").
- :func:`fitted_gaussian`: the Gaussian with the data's mean and covariance, the distribution that
  large-learning-rate samples resemble in Fig. 3.

All pairwise computations are done in row blocks, so ``N, M`` of a few ``10^4`` fit in memory.
See chapter 3, "Measuring memorization", and the experiment chapters ("Large learning rates
memorize less", "Higher dimension memorizes less").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _checks

__all__ = ["mmd", "nearest_neighbor_distances", "memorization_fraction", "fitted_gaussian",
           "FittedGaussian"]

_BLOCK_ELEMENTS = 1 << 22  # entries of one pairwise block (16 MiB in float32)


def _points(x, name, *, min_points=1):
    """``(N,)`` or ``(N, d)`` -> ``(N, d)`` tensor, with ``was_1d``."""
    t, was_1d = _checks.data_2d(x, name, min_points=min_points)
    return t, was_1d


def _common(x, y, xname, yname):
    """Bring two point sets to a common floating dtype; check device and dimension."""
    if x.device != y.device:
        raise ValueError(f"{xname} is on {x.device} but {yname} is on {y.device}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {xname} has dimension {x.shape[1]}, "
                         f"{yname} has dimension {y.shape[1]}")
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(dt)


def _row_block(n_cols: int, chunk_size) -> int:
    if chunk_size is not None:
        return _checks.integer(chunk_size, "chunk_size", minimum=1)
    return max(1, _BLOCK_ELEMENTS // max(n_cols, 1))


def _sq_dists(a, b):
    """``|a_i - b_j|^2`` for ``a`` (p, d), ``b`` (q, d), via the Gram expansion, clamped at 0.

    Where the squares overflow (points beyond ~1e19 in float32), the block is recomputed in
    float64 from the points divided by their largest magnitude ``c`` and multiplied back by
    ``c^2``: a distance beyond the dtype's range is then ``inf`` (kernel value 0), never NaN."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    d2 = d2.clamp_min_(0.0)
    if not bool(torch.isfinite(d2).all()):
        d2 = _sq_dists_direct(a, b)
    return d2


def _sq_dists_direct(a, b):
    """``|a_i - b_j|^2`` from the differences (``inf`` where it overflows, never NaN), in
    sub-blocks of rows so the (p, q, d) differences stay about ``_BLOCK_ELEMENTS`` entries."""
    out = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype, device=a.device)
    rows = max(1, _BLOCK_ELEMENTS // max(b.shape[0] * a.shape[1], 1))
    for start in range(0, a.shape[0], rows):
        diff = a[start:start + rows, None, :] - b[None, :, :]
        out[start:start + rows] = (diff * diff).sum(-1)
    return out


def _kernel_sum(a, b, bandwidth, chunk_size, same: bool):
    """``sum_{i, j} k(a_i, b_j)`` in float64, with the diagonal ``i = j`` left out if ``same``."""
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    scale = -0.5 / bandwidth ** 2
    rows = _row_block(b.shape[0], chunk_size)
    for start in range(0, a.shape[0], rows):
        blk = a[start:start + rows]
        k = torch.exp(_sq_dists(blk, b) * scale)
        total += k.sum(dtype=torch.float64)
        if same:  # remove the computed diagonal entries k(a_i, a_i) of this block
            idx = torch.arange(blk.shape[0], device=a.device)
            total -= k[idx, idx + start].sum(dtype=torch.float64)
    return total


def mmd(x, y, bandwidth: float = 1.0, *, unbiased: bool = True, chunk_size: int | None = None):
    r"""Squared maximum mean discrepancy between two samples, Gaussian kernel.

    Kernel ``k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))`` (so ``bandwidth`` is the standard
    deviation of the Gaussian; the paper uses ``bandwidth = 1``). Unbiased U-statistic

        MMD^2_u = 1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(N M) sum_{i, j} k(x_i, y_j),

    which can be slightly negative when both samples come from the same law. ``unbiased=False``
    gives the V-statistic (diagonal terms included, divided by ``N^2`` and ``M^2``), always
    ``>= 0``.

    x: ``(N,)`` or ``(N, d)``; y: ``(M,)`` or ``(M, d)`` with the same ``d``; ``N, M >= 2``.
    chunk_size: rows per pairwise block (default: blocks of about 4M kernel entries).
    Returns a 0-d tensor in the common dtype of ``x`` and ``y`` (sums accumulated in float64).
    """
    bandwidth = _checks.positive(bandwidth, "bandwidth")
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be True or False, got {type(unbiased).__name__}")
    xs, _ = _points(x, "x", min_points=2)
    ys, _ = _points(y, "y", min_points=2)
    xs, ys = _common(xs, ys, "x", "y")
    bandwidth = _checks.noise_scale(bandwidth, "bandwidth", xs.dtype)   # 1/bandwidth^2 finite
    both = torch.cat([xs, ys])
    centre = both.mean(0)                 # the kernel is translation invariant; centring keeps
    if not bool(torch.isfinite(centre).all()):      # (the sum overflows for points near the
        centre = (both / both.shape[0]).sum(0)      # dtype's largest value)
    xs, ys = xs - centre, ys - centre     # the Gram expansion accurate for data far from 0
    n, m = xs.shape[0], ys.shape[0]
    kxx = _kernel_sum(xs, xs, bandwidth, chunk_size, same=unbiased)
    kyy = _kernel_sum(ys, ys, bandwidth, chunk_size, same=unbiased)
    kxy = _kernel_sum(xs, ys, bandwidth, chunk_size, same=False)
    if unbiased:
        val = kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)
    else:
        val = kxx / n ** 2 + kyy / m ** 2 - 2.0 * kxy / (n * m)
    return val.to(xs.dtype)


def nearest_neighbor_distances(samples, data, k: int = 2, *, chunk_size: int | None = None):
    r"""Euclidean distances from each sample to its ``k`` nearest training points.

    samples: ``(N,)`` or ``(N, d)``; data: ``(n,)`` or ``(n, d)`` (same ``d``), ``1 <= k <= n``.
    Returns ``(distances, indices)``, both ``(N, k)``, sorted by increasing distance;
    ``indices[i, j]`` indexes ``data``. Distances are computed from the differences
    ``|x_i - x_j|`` (no Gram expansion), so they stay accurate for samples that sit on a
    training point; row blocks keep memory bounded.
    """
    xs, _ = _points(samples, "samples")
    xd, _ = _points(data, "data")
    xs, xd = _common(xs, xd, "samples", "data")
    k = _checks.integer(k, "k", minimum=1)
    if k > xd.shape[0]:
        raise ValueError(f"k must be <= the number of training points ({xd.shape[0]}), got {k}")
    rows = _row_block(xd.shape[0] * xd.shape[1], chunk_size)
    N = xs.shape[0]
    if N <= rows:
        d = torch.cdist(xs, xd, compute_mode="donot_use_mm_for_euclid_dist")
        return torch.topk(d, k, dim=1, largest=False, sorted=True)[:2]
    # blocks of rows written into preallocated outputs (no list of pieces: bounded, steady memory)
    dists = torch.empty(N, k, dtype=xs.dtype, device=xs.device)
    idx = torch.empty(N, k, dtype=torch.long, device=xs.device)
    for start in range(0, N, rows):
        d = torch.cdist(xs[start:start + rows], xd, compute_mode="donot_use_mm_for_euclid_dist")
        torch.topk(d, k, dim=1, largest=False, sorted=True,
                   out=(dists[start:start + rows], idx[start:start + rows]))
        del d
    return dists, idx


def memorization_fraction(samples, data, ratio: float = 1 / 3, *,
                          chunk_size: int | None = None) -> float:
    r"""Fraction of samples that copy a training point (Gu et al. 2023).

    A sample ``y`` counts as memorized when ``|y - x_(1)| < ratio * |y - x_(2)|``, with ``x_(1)``,
    ``x_(2)`` its nearest and second-nearest training points (Euclidean distance).
    samples: ``(N,)`` or ``(N, d)``; data: ``(n,)`` or ``(n, d)`` with ``n >= 2``;
    ratio in ``(0, 1]`` (Gu et al. use ``1/3``). Returns a Python float in ``[0, 1]``.
    """
    ratio = _checks.probability(ratio, "ratio")
    xd, _ = _points(data, "data", min_points=2)
    dist, _ = nearest_neighbor_distances(samples, xd, k=2, chunk_size=chunk_size)
    return float((dist[:, 0] < ratio * dist[:, 1]).to(torch.float64).mean())


@dataclass(frozen=True)
class FittedGaussian:
    """The Gaussian ``N(mean, covariance)`` fitted to training points by :func:`fitted_gaussian`.

    mean: ``(d,)``; covariance: ``(d, d)``, the unbiased sample covariance
    ``Xc^T Xc / (n - 1)`` with ``Xc`` the centred data; ``centered``: ``Xc`` ``(n, d)``;
    ``was_1d``: the data were given as ``(n,)`` (samples are then ``(N,)``).
    Unpacks as ``mean, covariance = fitted_gaussian(data)``.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    centered: torch.Tensor
    was_1d: bool

    def __iter__(self):
        return iter((self.mean, self.covariance))

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None):
        r"""Draw ``num_samples`` points: ``mean + Xc^T g / sqrt(n - 1)`` with ``g ~ N(0, I_n)``.

        This is exactly ``N(mean, covariance)`` and needs no Cholesky factor, so it also works
        when ``d >= n`` (singular covariance, as in Fig. 4 with few points in high dimension).
        Returns ``(N, d)``, or ``(N,)`` for one-dimensional data.
        """
        num_samples = _checks.integer(num_samples, "num_samples", minimum=1)
        generator = _checks.generator_or_none(generator)
        n = self.centered.shape[0]
        g = torch.randn(num_samples, n, generator=generator, dtype=self.mean.dtype,
                        device=self.mean.device)
        out = self.mean + (g @ self.centered) / (n - 1) ** 0.5
        return out[:, 0] if self.was_1d else out


def fitted_gaussian(data) -> FittedGaussian:
    r"""Fit ``N(mean, covariance)`` to training points (sample mean, unbiased covariance).

    data: ``(n,)`` or ``(n, d)`` with ``n >= 2``. Returns a :class:`FittedGaussian` with
    ``mean`` ``(d,)``, ``covariance`` ``(d, d)`` and a ``sample(num_samples, generator=...)``
    method.
    Large-learning-rate samples of Fig. 3 land close to this distribution.
    """
    x, was_1d = _points(data, "data", min_points=2)
    mean = x.mean(0)
    if not bool(torch.isfinite(mean).all()):        # the sum overflows near the dtype's maximum
        mean = (x / x.shape[0]).sum(0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    if not bool(torch.isfinite(cov).all()):
        # entries beyond the dtype's range: +-inf, not the NaN of inf - inf in the product
        c = float(xc.abs().max())
        if not math.isfinite(c):
            raise ValueError("data spans more than the dtype's range (x - mean overflows); "
                             "rescale the data")
        u = xc.to(torch.float64) / c
        g = u.T @ u / (x.shape[0] - 1)
        cov = torch.where(g == 0, torch.zeros_like(g), g * c * c).to(x.dtype)
    return FittedGaussian(mean, cov, xc, was_1d)


# ---------------------------------------------------------------------------------------------
# Distances between two samples that need no kernel bandwidth (chapter "The open questions,
# measured"): the energy distance and the sliced Wasserstein distance.
# ---------------------------------------------------------------------------------------------

__all__ += ["energy_distance", "sliced_wasserstein"]


def _distance_sum(a, b, chunk_size):
    """``sum_{i, j} |a_i - b_j|`` (Euclidean) in float64, in row blocks of about 4M distances.

    The distances come from the differences (``cdist`` without the Gram expansion), so pairs of
    nearly equal points contribute their true small distance, not a rounding error's square root.
    """
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    rows = _row_block(b.shape[0], chunk_size)
    for start in range(0, a.shape[0], rows):
        d = torch.cdist(a[start:start + rows], b, compute_mode="donot_use_mm_for_euclid_dist")
        total += d.sum(dtype=torch.float64)
    return total


def energy_distance(x, y, *, unbiased: bool = False, chunk_size: int | None = None):
    r"""Squared energy distance between two samples (Székely and Rizzo).

        D^2(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,   X, X' ~ P,  Y, Y' ~ Q  independent,

    with Euclidean norms. It is ``>= 0`` and ``0`` only when ``P = Q``; it needs no bandwidth, and
    in 1-D it equals ``2 int (F_P - F_Q)^2``. The default is the V-statistic (the within-sample
    means divided by ``N^2`` and ``M^2``, diagonal zeros included), which is the square of
    ``scipy.stats.energy_distance`` in 1-D and is always ``>= 0``; ``unbiased=True`` divides them
    by ``N (N - 1)`` and ``M (M - 1)`` instead (U-statistics: unbiased for ``D^2``, can be
    slightly negative when ``P = Q``).

    x: ``(N,)`` or ``(N, d)``; y: ``(M,)`` or ``(M, d)`` with the same ``d``; ``N, M >= 2``.
    chunk_size: rows per pairwise block (default: blocks of about 4M distances, so ``N = M = 1e5``
    needs no more memory than ``N = 100``). Returns a 0-d tensor in the common dtype of ``x`` and
    ``y`` (computed in float64).
    """
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be True or False, got {type(unbiased).__name__}")
    xs, _ = _points(x, "x", min_points=2)
    ys, _ = _points(y, "y", min_points=2)
    xs, ys = _common(xs, ys, "x", "y")
    out_dtype = xs.dtype
    xs, ys = xs.to(torch.float64), ys.to(torch.float64)   # no overflow of |x - y|^2 in float32
    n, m = xs.shape[0], ys.shape[0]
    sxy = _distance_sum(xs, ys, chunk_size)
    sxx = _distance_sum(xs, xs, chunk_size)
    syy = _distance_sum(ys, ys, chunk_size)
    nx, ny = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    val = 2.0 * sxy / (n * m) - sxx / nx - syy / ny
    if not bool(torch.isfinite(val)):
        raise ValueError("x and y must hold finite values (the energy distance is not finite)")
    return val.to(out_dtype)


def _quantile_pairs(n: int, m: int, device):
    """Exact coupling of the quantile functions of two uniform empirical measures of sizes n, m.

    The quantile functions are step functions with jumps at ``i/n`` and ``j/m``; on each interval
    between consecutive jumps both are constant. Breakpoints are handled as integers on the grid
    ``1/(n m)`` (no rounding). Returns ``(i, j, w)``: for each interval the 0-based ranks ``i`` of
    the n-sample and ``j`` of the m-sample and its length ``w`` (float64, sums to 1).
    """
    cuts = torch.unique(torch.cat([torch.arange(0, n + 1, device=device) * m,
                                   torch.arange(0, m + 1, device=device) * n]))   # sorted
    lo, hi = cuts[:-1], cuts[1:]
    mid2 = lo + hi                                # twice the midpoint, on the 1/(n m) grid
    i = torch.div(mid2, 2 * m, rounding_mode="floor")   # floor(midpoint * n)
    j = torch.div(mid2, 2 * n, rounding_mode="floor")   # floor(midpoint * m)
    w = (hi - lo).to(torch.float64) / (n * m)
    return i, j, w


def sliced_wasserstein(x, y, *, p: float = 2.0, num_projections: int = 256, generator=None,
                       chunk_size: int | None = None):
    r"""Sliced Wasserstein distance ``SW_p`` between two samples.

        SW_p(P, Q) = ( E_theta W_p^p(theta . X, theta . Y) )^{1/p},   theta uniform on the sphere,

    estimated with ``num_projections`` random directions (``theta = g / |g|``, ``g ~ N(0, I_d)``
    from ``generator``, drawn in float64); for each direction the one-dimensional ``W_p`` between
    the two projected empirical measures is exact, for any sample sizes ``N`` and ``M`` (the
    quantile functions are matched on the ``N + M - 1`` intervals between their jumps). In 1-D
    there is nothing to slice: the result is the exact ``W_p`` (no randomness, ``generator``
    unused), equal to ``scipy.stats.wasserstein_distance`` for ``p = 1``. For two Gaussians
    ``N(a, s^2 I_d)``, ``N(b, r^2 I_d)``: ``SW_2^2 = |a - b|^2 / d + (s - r)^2``.

    x: ``(N,)`` or ``(N, d)``; y: ``(M,)`` or ``(M, d)``, same ``d``; ``p >= 1``;
    num_projections ``>= 1``; chunk_size: directions per block (default: blocks of about 4M
    entries of the (directions x (N + M)) arrays). Returns a 0-d tensor in the common dtype of
    ``x`` and ``y`` (computed in float64).
    """
    p = _checks.positive(p, "p")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    num_projections = _checks.integer(num_projections, "num_projections", minimum=1)
    generator = _checks.generator_or_none(generator)
    xs, _ = _points(x, "x")
    ys, _ = _points(y, "y")
    xs, ys = _common(xs, ys, "x", "y")
    out_dtype = xs.dtype
    xs, ys = xs.to(torch.float64), ys.to(torch.float64)
    if not (bool(torch.isfinite(xs).all()) and bool(torch.isfinite(ys).all())):
        raise ValueError("x and y must hold finite values")
    n, m, d = xs.shape[0], ys.shape[0], xs.shape[1]
    if d == 1:
        theta = torch.ones(1, 1, dtype=torch.float64, device=xs.device)
    else:
        g = torch.randn(num_projections, d, generator=generator, dtype=torch.float64,
                        device=xs.device if generator is None else generator.device)
        theta = (g / g.norm(dim=1, keepdim=True)).to(xs.device)
    i, j, w = _quantile_pairs(n, m, xs.device)
    P = theta.shape[0]
    per = torch.empty(P, dtype=torch.float64, device=xs.device)    # W_p^p of each direction
    block = (chunk_size if chunk_size is not None
             else max(1, _BLOCK_ELEMENTS // (n + m + i.numel())))
    block = _checks.integer(block, "chunk_size", minimum=1)
    for start in range(0, P, block):
        th = theta[start:start + block]                              # (b, d)
        px = torch.sort(xs @ th.T, dim=0).values                     # (n, b), sorted per column
        py = torch.sort(ys @ th.T, dim=0).values
        diff = (px[i] - py[j]).abs_()                                # (intervals, b)
        per[start:start + block] = (diff.pow_(p) * w[:, None]).sum(0)
    return per.mean().pow(1.0 / p).to(out_dtype)
