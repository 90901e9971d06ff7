r"""Analysis of the results of the ``phase`` and ``generation`` experiments ("The open questions,
measured"): pure NumPy functions of the saved result dicts, no training.

* d = 1: :func:`relative_excess` (the relative excess risk ``q`` of every network),
  :func:`crossing` (first crossing of a level on a grid, interpolated in log x),
  :func:`phase_boundary` (the learning rate at which the score leaves ``s*``),
  :func:`boundary_cause` (what sets that boundary: live networks, collapse or divergence),
  :func:`fit_power` and :func:`bootstrap_exponent` (the exponent of sigma);
* d = 2: :func:`onset_time` (when memorization starts along training).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["relative_excess", "crossing", "phase_boundary", "CAUSES", "boundary_cause",
           "fit_power", "bootstrap_exponent", "onset_time"]


_STATES = ("last", "avg", "decay")
_AMONG = ("all", "live")


def relative_excess(res: dict, state: str = "decay", among: str = "all") -> np.ndarray:
    r"""Relative excess risk ``q = (R_n(s) - R_n(s*)) / (R_n(0) - R_n(s*))`` of every network.

    ``q = 0`` is ``s*`` itself, ``q = 1`` the score 0 (a collapsed network has ``q ≈ 1``).
    ``state``: which network of a live run is measured (``"last"``, ``"avg"`` or ``"decay"``, the
    one after the learning-rate decay); a *collapsed* run (no unit active on the data at the end
    of training) always counts with its last iterate (reviving units in the decay is not noise
    removal). ``among="all"``: diverged runs get ``q = +inf`` (they do not fit ``s*``);
    ``among="live"``: collapsed and diverged runs are NaN (left out of medians).
    Returns (N, L, T, S).
    """
    if state not in _STATES:
        raise ValueError(f"state must be one of {_STATES}, got {state!r}")
    if among not in _AMONG:
        raise ValueError(f"among must be one of {_AMONG}, got {among!r}")
    zero = res["zero_excess"][:, None]
    q = np.where(res["collapsed"], res["excess_last"], res[f"excess_{state}"]) / zero
    if among == "live":
        return np.where(res["collapsed"] | res["diverged"], math.nan, q)
    return np.where(res["diverged"], math.inf, q)


def crossing(x, values, level: float):
    r"""The first ``x`` at which ``values`` reaches ``level``, interpolated in ``log x``.

    x: increasing positive grid (L,); values: (L,) (NaN entries are skipped, ``+inf`` counts as
    above). With ``k`` the first index where ``values[k] >= level``, the crossing is interpolated
    linearly in ``log x`` between ``x[k-1]`` and ``x[k]`` (linear in the values; ``x[k]`` itself
    when ``values[k]`` is infinite). Returns ``(x_c, status)``: status ``0`` inside the grid,
    ``-1`` already at or above ``level`` at the first valid point (``x_c`` = that point: an upper
    bound), ``+1`` never reached (``x_c = nan``).
    """
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    x, v = x[ok], v[ok]
    above = np.flatnonzero(v >= level)
    if above.size == 0:
        return math.nan, 1
    k = int(above[0])
    if k == 0:
        return float(x[0]), -1
    if not np.isfinite(v[k]):
        return float(x[k]), 0
    frac = (level - v[k - 1]) / (v[k] - v[k - 1])
    return float(np.exp(np.log(x[k - 1]) + frac * (np.log(x[k]) - np.log(x[k - 1])))), 0


def _median(q, axis):
    """nanmedian that keeps +inf (diverged runs count as 'above') and is NaN for empty slices."""
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(q, axis=axis)


def phase_boundary(res: dict, level: float = 0.25, *, state: str = "decay", among: str = "all",
                   per_set: bool = False, seeds=None):
    r"""The learning rate at which the learned score leaves ``s*``, per (n, sigma).

    The criterion: the median over the data sets of the relative excess risk
    :func:`relative_excess` (``state``, ``among``) reaches ``level`` (the fraction of the zero
    score's excess risk), first crossing on the lr grid, interpolated in log eta
    (:func:`crossing`). ``per_set=True``: the crossing of each data set's own curve instead of the
    median. seeds: indices of the data sets to use (default all; repeated indices allowed, for the
    bootstrap). Returns ``(eta_c, status)`` of shape (N, T), or (N, T, S) with ``per_set``.
    """
    q = relative_excess(res, state, among)
    if seeds is not None:
        q = q[..., np.asarray(seeds)]
    lrs = res["lrs"]
    N, L, T, S = q.shape
    if per_set:
        eta = np.full((N, T, S), math.nan)
        status = np.zeros((N, T, S), dtype=np.int64)
        for i in np.ndindex(N, T, S):
            eta[i], status[i] = crossing(lrs, q[i[0], :, i[1], i[2]], level)
        return eta, status
    med = _median(q, axis=-1)                                              # (N, L, T)
    eta = np.full((N, T), math.nan)
    status = np.zeros((N, T), dtype=np.int64)
    for i in np.ndindex(N, T):
        eta[i], status[i] = crossing(lrs, med[i[0], :, i[1]], level)
    return eta, status


CAUSES = ("live", "collapse", "divergence", "below grid", "never")


def boundary_cause(res: dict, level: float = 0.25, *, state: str = "decay", share: float = 0.5):
    r"""What sets the boundary of :func:`phase_boundary` in each (n, sigma) cell.

    At the first grid learning rate ``k`` where the median relative excess risk (``state``, all
    runs) reaches ``level``, the cell's cause is (codes index :data:`CAUSES`):

    - ``2`` *divergence*: the median at ``k`` is ``+inf`` (half of the runs or more diverged; a
      median of an even count averages the two middle runs), so the crossing is put at
      ``lrs[k]`` itself: the boundary lies somewhere between ``lrs[k-1]`` and ``lrs[k]``;
    - ``1`` *collapse*: otherwise, if at least ``share`` of the runs at ``k`` are collapsed or
      diverged, or if the live runs there keep less than ``share`` of the active-unit fraction
      that the live runs have at the smallest rate (median over runs: partially collapsed);
    - ``0`` *live*: otherwise (live networks that settle away from ``s*``);
    - ``3`` *below grid*: the level is already reached at the smallest rate; ``4`` *never*.

    Returns a dict of (N, T) arrays: ``cause`` (int), ``index`` (``k``, -1 when never),
    ``dead_share`` (collapsed or diverged share at ``k``), ``active_ratio`` (the live runs'
    median active fraction at ``k`` over that at the smallest rate; NaN without live runs) and
    ``tv_ratio`` (the live runs' median ``TV_pi`` of the decayed network over ``TV_pi(s*)`` at
    ``k``; NaN without live runs or without ``tv_decay`` in ``res``).
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must lie in (0, 1], got {share!r}")
    q = relative_excess(res, state, "all")
    N, L, T, S = q.shape
    med = _median(q, axis=-1)                                              # (N, L, T)
    dead = res["collapsed"] | res["diverged"]
    active = np.where(dead, math.nan, res["active_last"])
    act_med = _median(active, axis=-1)                                     # (N, L, T)
    tv = res.get("tv_decay")
    tv_rel = (np.where(dead, math.nan, tv / res["tv_star"][:, None]) if tv is not None
              else np.full(q.shape, math.nan))
    out = {"cause": np.full((N, T), 4, dtype=np.int64), "index": np.full((N, T), -1, np.int64),
           "dead_share": np.full((N, T), math.nan), "active_ratio": np.full((N, T), math.nan),
           "tv_ratio": np.full((N, T), math.nan)}
    for ni, ti in np.ndindex(N, T):
        above = np.flatnonzero(med[ni, :, ti] >= level)                   # NaN compares False
        if above.size == 0:
            continue
        k = int(above[0])
        out["index"][ni, ti] = k
        out["dead_share"][ni, ti] = dead[ni, k, ti].mean()
        with np.errstate(all="ignore"):
            out["active_ratio"][ni, ti] = act_med[ni, k, ti] / act_med[ni, 0, ti]
        out["tv_ratio"][ni, ti] = _median(tv_rel[ni, k, ti], axis=-1)
        if k == 0:
            out["cause"][ni, ti] = 3
        elif np.isinf(med[ni, k, ti]):
            out["cause"][ni, ti] = 2
        elif out["dead_share"][ni, ti] >= share or out["active_ratio"][ni, ti] < share:
            out["cause"][ni, ti] = 1
        else:
            out["cause"][ni, ti] = 0
    return out


def fit_power(x, y, mask=None):
    r"""Least-squares fit ``log y = a + b log x`` over the finite, positive entries (and ``mask``).

    Returns ``(b, a, count)``; ``b = a = nan`` with fewer than two points.
    """
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool).ravel()
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return math.nan, math.nan, int(ok.sum())
    b, a = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(b), float(a), int(ok.sum())


def bootstrap_exponent(res: dict, level: float = 0.25, *, state: str = "decay",
                       among: str = "all", reps: int = 1000, seed: int = 0, ci: float = 0.95):
    r"""The sigma exponent of the boundary, per n, with a bootstrap interval over the data sets.

    For each n: the slope ``b`` of ``log eta_c = a + b log sigma`` over the noise levels whose
    crossing lies inside the grid (:func:`phase_boundary`); then ``reps`` resamples of the data
    sets (with replacement, the same resample for every n and sigma) give the percentile interval.
    Also the slope against ``sigma^2 / mu`` (the theory's combination; 1 if the boundary follows
    it). Returns a dict of (N,) arrays: ``slope``, ``lo``, ``hi``, ``points`` (cells used),
    ``slope_theory``, ``lo_theory``, ``hi_theory``.
    """
    sig, mu = res["sigma"], res["mu"]
    N, S = res["zero_excess"].shape[0], res["zero_excess"].shape[-1]
    rng = np.random.default_rng(seed)

    def slopes(seeds):
        eta, status = phase_boundary(res, level, state=state, among=among, seeds=seeds)
        inside = status == 0
        a = [fit_power(sig, eta[i], inside[i])[0] for i in range(N)]
        b = [fit_power(sig ** 2 / mu, eta[i], inside[i])[0] for i in range(N)]
        return np.array(a), np.array(b), inside.sum(1)

    b0, t0, points = slopes(None)
    boot = [slopes(rng.integers(0, S, S)) for _ in range(int(reps))]
    ba = np.array([b[0] for b in boot])
    bt = np.array([b[1] for b in boot])
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = {"slope": b0, "lo": np.nanpercentile(ba, lo_q, 0),
                   "hi": np.nanpercentile(ba, hi_q, 0), "points": points,
                   "slope_theory": t0, "lo_theory": np.nanpercentile(bt, lo_q, 0),
                   "hi_theory": np.nanpercentile(bt, hi_q, 0)}
    return out


# ------------------------------------------------------------------------------------------------
# d = 2
# ------------------------------------------------------------------------------------------------

def onset_time(res: dict, level=None, *, fraction: float = 0.5):
    r"""When memorization starts: the first checkpoint flow time at which the median (over the
    seeds) memorization fraction reaches ``level``, interpolated in log time (:func:`crossing`).

    level: a number, or None for the book's relative level per n: the Gaussian fit's median
    memorization plus ``fraction`` of the way to the ``s*`` sampler's,
    ``m_gauss + fraction (m_star - m_gauss)``. Returns ``(tau, status, level)`` with tau and
    status (N, L) (status as in :func:`crossing`) and the level used (N,).
    """
    names = list(res["reference_names"])
    mem = res["memorization"]
    N, L = mem.shape[:2]
    if level is None:
        ref = _median(res["ref_memorization"], axis=1)                     # (N, 4)
        m_star, m_gauss = ref[:, names.index("star")], ref[:, names.index("gauss")]
        lev = m_gauss + fraction * (m_star - m_gauss)
    else:
        lev = np.full(N, float(level))
    med = _median(mem, axis=2)                                             # (N, L, C)
    tau = np.full((N, L), math.nan)
    status = np.zeros((N, L), dtype=np.int64)
    for ni, li in np.ndindex(N, L):
        tau[ni, li], status[ni, li] = crossing(res["flow_times"], med[ni, li], lev[ni])
    return tau, status, lev
