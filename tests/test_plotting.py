"""Tests of dsmlib.plotting's table helpers (the plotting helpers are exercised by the chapters)."""

import math

import numpy as np
import pytest

from dsmlib import plotting as dplt


def test_fmt_numbers_and_specials():
    assert dplt.fmt(2.19344) == "2.19"
    assert dplt.fmt(0.25, ".0%") == "25%"
    assert dplt.fmt(30) == "30" and dplt.fmt(np.int64(123456789)) == "123456789"
    assert dplt.fmt(math.nan) == "\u2013"
    assert dplt.fmt(math.inf) == "\u221e" and dplt.fmt(-math.inf) == "\u2212\u221e"
    assert dplt.fmt(True) == "True" and dplt.fmt(np.bool_(False)) == "False"
    assert dplt.fmt("a") == "a"


def test_table_html_has_no_empty_index_column():
    t = dplt.table([{"eta": 0.5, "excess": 2.1934}, {"eta": 0.1, "excess": 0.0123}])
    html = t._repr_html_()
    assert "<th></th>" not in html and "2.19" in html and "0.0123" in html
    assert repr(t).split("\n")[0].split() == ["eta", "excess"]


def test_table_index_and_formats():
    t = dplt.table([[0.1, 3.3e-5]], columns=["eta", "x"], index="eta", formats={"x": ".1e"})
    assert t.df.index.tolist() == ["0.1"] and t.df["x"].tolist() == ["3.3e-05"]
    assert "<th>0.1</th>" in t._repr_html_()


def test_table_rejects_unknown_names():
    with pytest.raises(ValueError, match="formats"):
        dplt.table([{"a": 1.0}], formats={"b": ".2f"})
    with pytest.raises(ValueError, match="index"):
        dplt.table([{"a": 1.0}], index="b")


def test_decomposition_table_and_plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {"n": np.array([5.0, 6.0]), "diverged": np.array([1.0, 0.0]),
             "collapsed": np.array([3.0, 0.0])}
    for p, v in [("total", [2.0, 0.5]), ("floor", [0.3, 0.3]), ("collapse", [1.5, 0.0]),
                 ("smoothing", [-0.1, 0.05]), ("noise", [0.3, 0.15])]:
        parts[p] = np.array(v)
        parts[p + "_lo"], parts[p + "_hi"] = np.array(v) - 0.1, np.array(v) + 0.1
    t = dplt.decomposition_table(parts, [0.5, 0.1])
    assert t.df.loc["0.5", "total"] == "2 \u00b1 0.1"
    assert t.df.loc["0.5", "collapsed, diverged"] == "3, 1 of 6"
    assert t.df.loc["0.1", "floor"] == "0.3"
    parts["collapse_hi"] = parts["collapse"].copy()                  # a zero-width interval
    assert dplt.decomposition_table(parts, [0.5, 0.1]).df.loc["0.1", "collapse"] == "0 \u00b1 0"
    tiny = dict(parts, smoothing=np.array([-7.7e-05, 0.05]))        # no e-notation for tiny parts
    assert dplt.decomposition_table(tiny, [0.5, 0.1]).df.loc["0.5", "smoothing"].startswith("-0.0001")
    fig, ax = plt.subplots()
    dplt.plot_decomposition(ax, parts, [0.5, 0.1])
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights[0] == -0.1 and 1.5 in heights          # a negative part is drawn below 0
    plt.close(fig)


def test_glue_turns_numpy_scalars_into_python_numbers(monkeypatch):
    import myst_nb
    import torch

    seen = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.update(
        {name: (value, display)}))
    dplt.glue("a", np.float64(0.5))
    dplt.glue("b", np.int64(3))
    dplt.glue("c", torch.tensor(2.5))
    dplt.glue("d", np.bool_(True))
    dplt.glue("e", "text")
    assert seen == {"a": (0.5, False), "b": (3, False), "c": (2.5, False), "d": (True, False),
                    "e": ("text", False)}
    assert type(seen["a"][0]) is float and type(seen["b"][0]) is int
