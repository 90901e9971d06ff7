r"""Small display helpers for the chapters: matplotlib panels and formatted tables.

Each plotting helper draws on a given ``ax`` and returns it, so a notebook cell stays one call per
panel. Inputs are NumPy arrays as returned by :mod:`dsmlib.experiments` (or loaded from
``results/``). :func:`table` turns rows of numbers into a pandas DataFrame of formatted strings,
which the book renders as an HTML table that fits the column (no hand-aligned f-strings).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["glue", "table", "Table", "fmt", "decomposition_table", "plot_decomposition", "mean_ci", "plot_scores", "plot_over_lrs", "plot_samples_2d", "plot_over_dims"]


def fmt(value, spec: str = ".3g") -> str:
    """One cell of a table: ``format(value, spec)``; NaN as an en dash, bools and strings as is.

    Integers (Python or NumPy) are printed in full whatever ``spec`` is; a ``spec`` that ends in
    ``%`` formats a fraction as a percentage (e.g. ``".0%"``).
    """
    if isinstance(value, (str, bool, np.bool_)):
        return str(bool(value)) if isinstance(value, np.bool_) else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if not np.isfinite(v):
        return "–" if np.isnan(v) else ("∞" if v > 0 else "−∞")
    return format(v, spec)


class Table:
    """A formatted table: ``df`` (a DataFrame of strings) shown as HTML in a notebook.

    The HTML leaves out the row index unless one was chosen (``index=`` of :func:`table`), so no
    empty first column takes space; ``repr`` gives the same table as plain text.
    """

    def __init__(self, df, show_index: bool):
        self.df, self.show_index = df, show_index

    def _repr_html_(self) -> str:
        return self.df.to_html(index=self.show_index, border=0, classes="dataframe dsm-table")

    def __repr__(self) -> str:
        return self.df.to_string(index=self.show_index)


def table(rows, columns=None, *, formats=None, default: str = ".3g", index=None) -> Table:
    """Rows of numbers as a :class:`Table` of formatted strings, for display in a notebook.

    rows: a list of dicts (column -> value), a list of sequences (then ``columns`` names them), or
    a DataFrame. formats: column -> format spec (e.g. ``{"excess": ".2e", "share": ".0%"}``); other
    numeric cells use ``default`` (3 significant digits). index: a column to show as the row index
    (in bold on the page), or None. Cells are formatted by :func:`fmt`, so the text does not depend
    on pandas' display options and is identical from run to run. Keep tables to about 7 columns so
    they fit the book's column; transpose or split wider ones. The DataFrame is ``result.df``.
    """
    import pandas as pd

    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=columns)
    formats = dict(formats or {})
    unknown = sorted(set(formats) - set(map(str, df.columns)))
    if unknown:
        raise ValueError(f"formats names columns that the table does not have: {unknown}")
    out = pd.DataFrame({c: [fmt(v, formats.get(str(c), default)) for v in df[c]]
                        for c in df.columns})
    if index is None:
        return Table(out, show_index=False)
    if index not in out.columns:
        raise ValueError(f"index must be one of the columns {list(out.columns)}, got {index!r}")
    return Table(out.set_index(index), show_index=True)


def mean_ci(values, axis=-1, level=0.95):
    r"""Mean and a Student-t confidence interval of the mean along ``axis``.

    ``mean ± t_{(1+level)/2, S-1} sd / sqrt(S)`` with ``S`` the number of finite values (NaNs are
    ignored). Returns ``(mean, lo, hi)``, each with ``axis`` removed; with one value the interval
    is that value; with none, NaN.
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    count = np.sum(np.isfinite(v), axis=axis)
    with warnings.catch_warnings():   # all-NaN slices give NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(v, axis=axis)
        sd = np.nanstd(v, axis=axis, ddof=1) if v.shape[axis] > 1 else np.zeros_like(mean)
    sd = np.where(count > 1, sd, 0.0)
    q = stats.t.ppf(0.5 + level / 2, np.maximum(count - 1, 1))
    half = q * sd / np.sqrt(np.maximum(count, 1))
    return mean, mean - half, mean + half


def plot_scores(ax, grid, scores, optimal, data, mu, labels, *, title=None, ylim=None):
    """Learned scores (L, G) and ``s*`` (G,) on ``grid``; training points ``mu x_i`` marked."""
    for s, lab in zip(scores, labels):
        ax.plot(grid, s, lw=1.5, label=lab)
    ax.plot(grid, optimal, "k--", lw=1.2, label=r"$s^*$")
    ax.plot(mu * np.asarray(data), np.zeros(len(data)), "k|", ms=12, mew=1.5,
            label=r"$\mu x_i$")
    ax.set_xlabel("$y$")
    ax.set_ylabel("score")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    return ax


def plot_over_lrs(ax, lrs, values, *, label=None, color=None, points=True, logy=False,
                  level=0.95, seed=0):
    """Mean over seeds with a confidence interval, against the learning rate (log x axis).

    values: (L, S). With ``points`` every seed is drawn as a faint dot (jittered sideways), so
    that outliers (e.g. networks whose units all died) stay visible.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    mean, lo, hi = mean_ci(values, axis=1, level=level)
    line = ax.errorbar(lrs, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=4,
                       label=label, color=color)
    if points:
        rng = np.random.default_rng(seed)
        v = np.asarray(values, dtype=np.float64)
        jitter = np.exp(rng.uniform(-0.08, 0.08, v.shape))
        ax.scatter((lrs[:, None] * jitter).ravel(), v.ravel(), s=9, alpha=0.35,
                   color=line[0].get_color())
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(r"learning rate $\eta$")
    return ax


def plot_samples_2d(ax, samples, data, *, title=None, lim=None, color="C0"):
    """Scatter of 2-D samples (N, 2) with the training points (n, 2) as black crosses."""
    s = np.asarray(samples)
    ax.scatter(s[:, 0], s[:, 1], s=3, alpha=0.4, color=color)
    x = np.asarray(data)
    ax.scatter(x[:, 0], x[:, 1], marker="x", s=40, color="k", label="training points")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("coordinate 1")
    ax.set_ylabel("coordinate 2")
    if title:
        ax.set_title(title)
    return ax


def plot_over_dims(ax, dims, values, *, label=None, color=None, level=0.95):
    """Mean and confidence interval over runs and sample sets against the dimension (log x).

    values: (D, R, P) or (D, S); all axes after the first are pooled.
    """
    v = np.asarray(values, dtype=np.float64).reshape(len(dims), -1)
    mean, lo, hi = mean_ci(v, axis=1, level=level)
    ax.errorbar(dims, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=4, label=label,
                color=color)
    ax.set_xscale("log")
    ax.set_xlabel("dimension $d$")
    return ax


# parts of :func:`dsmlib.experiments.decompose`, in stacking order, with their colours
DECOMPOSITION_PARTS = (("floor", "0.75", "floor (the smallest $\\eta$, decayed)"),
                       ("collapse", "C3", "collapse (every unit off)"),
                       ("smoothing", "C2", "smoothing (live, after the decay)"),
                       ("noise", "C0", "SGD noise (removed by the decay)"))


def _short(v, spec: str = ".2g") -> str:
    """``spec`` (two significant digits), in fixed point below 1e-4 too (``-7.7e-05`` ->
    ``-0.0001``: no e-notation in the tables)."""
    return fmt(v, ".4f") if np.isfinite(v) and 0 < abs(v) < 1e-4 else fmt(v, spec)


def _halfwidth(v) -> str:
    """An interval's half-width to one significant digit (``0.00058`` -> ``0.0006``; from 10 on,
    whole numbers: ``14.5`` -> ``14``)."""
    return f"{v:.0f}" if np.isfinite(v) and abs(v) >= 10 else _short(v, ".1g")


def decomposition_table(parts, lrs):
    """The decomposition of :func:`dsmlib.experiments.decompose` as a :class:`Table`.

    One row per learning rate: the mean total and the mean of each part (floor, collapse,
    smoothing, SGD noise: they add up to the total), each but the floor ``± the half-width`` of
    its 95% interval (one significant digit; Student t, symmetric; the floor's interval is that of
    the smallest learning rate's row), and the number of collapsed and diverged networks out of
    those run.
    """
    def pm(p, i):
        m, hi = parts[p][i], parts[p + "_hi"][i]
        return f"{_short(m)} \u00b1 {_halfwidth(hi - m)}" if np.isfinite(m) else fmt(m)

    rows = []
    for i, lr in enumerate(lrs):
        n, div = int(parts["n"][i]), int(parts["diverged"][i])
        rows.append({"eta": fmt(lr), "total": pm("total", i), "floor": _short(parts["floor"][i]),
                     "collapse": pm("collapse", i),
                     "smoothing": pm("smoothing", i), "SGD noise": pm("noise", i),
                     "collapsed, diverged": f"{int(parts['collapsed'][i])}, {div} of {n + div}"})
    return table(rows, index="eta")


def plot_decomposition(ax, parts, lrs, *, title=None, legend=True):
    """Stacked bars of the decomposition at each learning rate (negative parts drawn below 0),
    with the mean total and its 95% interval as a black dot."""
    x = np.arange(len(lrs))
    pos, neg = np.zeros(len(lrs)), np.zeros(len(lrs))
    for key, color, label in DECOMPOSITION_PARTS:
        v = np.nan_to_num(np.asarray(parts[key], dtype=np.float64))
        bottom = np.where(v >= 0, pos, neg)
        ax.bar(x, v, bottom=bottom, color=color, width=0.6, label=label)
        pos, neg = pos + np.maximum(v, 0), neg + np.minimum(v, 0)
    tot = np.asarray(parts["total"], dtype=np.float64)
    ax.errorbar(x, tot, yerr=[tot - parts["total_lo"], parts["total_hi"] - tot], fmt="ko",
                capsize=4, ms=4, label="total (mean, 95% interval)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [fmt(lr) for lr in lrs])
    ax.set_xlabel(r"learning rate $\eta$")
    ax.set_ylabel("excess risk")
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    return ax


def glue(name: str, value):
    """``myst_nb.glue(name, value, display=False)`` with NumPy and torch scalars turned into Python
    numbers first, so that ``{glue:text}`name:.3g``` can format them (NumPy 2 writes a float64 as
    ``np.float64(0.5)``, which a format spec cannot read)."""
    from myst_nb import glue as _glue

    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        value = bool(value)
    elif isinstance(value, (int, np.integer)):
        value = int(value)
    elif isinstance(value, (float, np.floating)):
        value = float(value)
    _glue(name, value, display=False)
