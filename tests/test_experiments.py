"""Tests of dsmlib.experiments: tiny versions of every figure, saving/loading, the CLI.

Run:  python -m pytest tests/test_experiments.py -q     (well under a minute)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import dsmlib as dsm
from dsmlib import experiments as ex
from dsmlib.io import ResultsError, load_results
from dsmlib.networks import TwoLayerScoreNet

TINY1 = dict(steps=(30, 30, 30), width=24, grid_points=11, sharpness_iters=5)
TINY2 = dict(steps=(30, 30, 30, 30), width=24, seeds=(0, 1), sharpness_iters=5)
TINY3 = dict(steps=(10, 10), width=16, batch_size=(16, 8), num_samples=40, sampler_steps=5,
             seeds=(0, 1))
TINY4 = dict(dims=(2, 3), steps=10, width=16, batch_size=16, num_samples=30, sampler_steps=5,
             seeds=(0,), sample_sets=2)


@pytest.fixture(scope="module")
def tiny_fig1():
    return ex.fig1(ex.make_config("fig1", "book", **TINY1))


@pytest.fixture(scope="module")
def tiny_fig2():
    return ex.fig2(ex.make_config("fig2", "book", **TINY2))


def test_presets_are_the_paper_settings():
    c = ex.make_config("fig2", "paper")
    assert c.lrs == (0.5, 0.1, 0.05, 0.01) and c.steps == (5000, 25000, 50000, 200000)
    assert len(c.seeds) == 30 and c.width == 1000 and c.batch_size == 50 and c.n == 20
    c3 = ex.make_config("fig3", "paper")
    assert c3.lrs == (2.0, 0.05) and c3.steps == (20000, 1000000) and c3.batch_size == 5000
    c4 = ex.make_config("fig4", "paper")
    assert c4.dims == (2, 5, 10, 50, 80, 100, 200, 400, 1000) and c4.lr == 0.5
    assert len(c4.seeds) == 3 and c4.sample_sets == 5
    assert ex.make_config("fig2", "book", dim=10).dim == 10


def test_config_validation():
    with pytest.raises(ValueError, match="scale"):
        ex.Fig1Config(scale="huge")
    with pytest.raises(ValueError, match="lrs"):
        ex.Fig1Config(lrs=(0.1, 0.2), steps=(10,))
    with pytest.raises(ValueError, match="seeds"):
        ex.Fig2Config(seeds=(1, 1))
    with pytest.raises(ValueError, match="name"):
        ex.make_config("fig9")


def test_fig1_shapes_and_values(tiny_fig1):
    a = tiny_fig1
    L, T, S, G = 3, 2, 1, 11
    assert a["score"].shape == (L, T, S, G) and a["optimal"].shape == (T, G)
    assert a["data"].shape == (20,) and a["grid"].shape == (G,)
    for k in ("excess_risk", "sharpness", "active_fraction", "all_inactive", "diverged"):
        assert a[k].shape == (L, T, S), k
    np.testing.assert_allclose(a["mu"], np.exp(-np.array([0.05, 0.2])))
    np.testing.assert_allclose(a["sigma"], np.sqrt(1 - np.exp(-2 * np.array([0.05, 0.2]))))
    assert np.all(a["excess_risk"] >= 0) and np.all(np.isfinite(a["score"]))
    np.testing.assert_allclose(a["stability_threshold"], 2 / (24 * np.array([0.5, 0.1, 0.05])))
    assert np.array_equal(a["all_inactive"], a["active_fraction"] == 0)


def test_fig2_shapes_new_data_per_seed(tiny_fig2):
    a = tiny_fig2
    assert a["excess_risk"].shape == (4, 2, 2) and a["zero_excess_risk"].shape == (2, 2)
    assert a["data"].shape == (2, 20)
    assert not np.allclose(a["data"][0], a["data"][1])
    assert np.all(np.isfinite(a["sharpness"]))


def test_fig2_member_independent_of_the_ensemble(tiny_fig2):
    """Seed 1 alone gives what seed 1 gave inside the (0, 1) sweep: streams come from the seed."""
    alone = ex.fig2(ex.make_config("fig2", "book", **{**TINY2, "seeds": (1,)}))
    np.testing.assert_array_equal(alone["data"][0], tiny_fig2["data"][1])
    np.testing.assert_allclose(alone["excess_risk"][..., 0], tiny_fig2["excess_risk"][..., 1],
                               rtol=1e-4)


def test_fig2_higher_dimension():
    a = ex.fig2(ex.make_config("fig2", "book", dim=3, **{**TINY2, "seeds": (0,)},
                               noise_draws=20))
    assert a["data"].shape == (1, 20, 3) and a["excess_risk"].shape == (4, 2, 1)
    assert np.all(np.isnan(a["sharpness"]))            # exact sharpness is 1-D only
    assert np.all(np.isfinite(a["excess_risk"]))


def test_active_fraction_counts_units_on_the_hull():
    # units: active right of 0.5 (w=1, b=-0.5), active left of -3 (w=-1, b=-3), always off
    W1 = torch.tensor([[[1.0], [-1.0], [1.0]]], dtype=torch.float64)
    b = torch.tensor([[-0.5, -3.0, -10.0]], dtype=torch.float64)
    net = TwoLayerScoreNet.from_parameters(W1, b, torch.ones(1, 1, 3, dtype=torch.float64))
    x = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    assert float(dsm.active_fraction(net, x, 1.0)[0]) == pytest.approx(1 / 3)
    assert float(dsm.active_fraction(net, x, 0.4)[0]) == 0.0      # hull [-0.4, 0.4]


def test_fig3_and_fig4_shapes():
    a = ex.fig3(ex.make_config("fig3", "book", **TINY3))
    assert a["samples"].shape == (2, 2, 40, 2) and a["mmd_star"].shape == (2, 2)
    assert a["star_samples"].shape == (40, 2) and a["mmd_star_gauss"].shape == ()
    assert 0 <= float(a["memorization_star"]) <= 1
    b = ex.fig4(ex.make_config("fig4", "book", **TINY4))
    assert b["ratio"].shape == (2, 1, 2) and b["samples_proj"].shape == (2, 1, 30, 2)
    assert b["data_proj"].shape == (2, 1, 10, 2)
    ok = np.isfinite(b["mmd_gen_star"])
    np.testing.assert_allclose(b["ratio"][ok], (b["mmd_gen_star"] / b["mmd_star_gauss"])[ok])


def test_run_saves_loads_and_refuses_another_config(tmp_path, monkeypatch):
    arrays, meta, path = ex.run("fig1", "book", tmp_path, progress=False, **TINY1)
    assert path == tmp_path / "fig1_book.npz" and path.exists()
    assert meta["config"]["steps"] == [30, 30, 30] and "device" not in meta["config"]
    assert meta["extra"]["seeds"] == [0] and meta["extra"]["wall_seconds"] > 0
    again, _ = ex.load("fig1", "book", tmp_path, **TINY1)
    for k in arrays:
        np.testing.assert_array_equal(again[k], arrays[k])

    # the same configuration again: loaded, not recomputed
    def boom(*a, **k):
        raise AssertionError("recomputed")
    monkeypatch.setitem(ex.FIGURES, "fig1", (ex.Fig1Config, boom))
    ex.run("fig1", "book", tmp_path, progress=False, **TINY1)
    # another configuration: refused before any computation, the file is untouched
    before = path.read_bytes()
    with pytest.raises(ResultsError, match="different configuration"):
        ex.run("fig1", "book", tmp_path, progress=False, **{**TINY1, "width": 25})
    assert path.read_bytes() == before
    with pytest.raises(ResultsError, match="differs in: width"):
        ex.load("fig1", "book", tmp_path, **{**TINY1, "width": 25})


def test_interrupt_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setitem(ex.FIGURES, "fig1", (ex.Fig1Config, interrupted))
    with pytest.raises(KeyboardInterrupt):
        ex.run("fig1", "book", tmp_path, progress=False, **TINY1)
    assert list(tmp_path.iterdir()) == []
    assert ex.main(["fig1", "--out", str(tmp_path), "--quiet"]) == 130
    assert list(tmp_path.iterdir()) == []


def test_results_file_names():
    c = ex.make_config("fig2", "paper", dim=10)
    assert ex.result_path("fig2", c, "results").name == "fig2_paper_d10.npz"
    assert ex.result_path("fig3", ex.make_config("fig3", "book"), "r", tag="s5").name == \
        "fig3_book_s5.npz"


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "dsmlib.experiments", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "fig2" in out.stdout and "--scale" in out.stdout and "--device" in out.stdout


def test_committed_results_load():
    """Every committed results file is readable and matches its preset configuration."""
    from pathlib import Path
    folder = Path(__file__).resolve().parent.parent / "results"
    for path in sorted(folder.glob("*.npz")):
        arrays, meta = load_results(path)
        name, scale = path.stem.split("_")[:2]
        overrides = {}
        dims = [p for p in path.stem.split("_")[2:] if p[:1] == "d" and p[1:].isdigit()]
        if dims:                                   # fig2_paper_d1, mechanism_book_d10, ...
            overrides["dim"] = int(dims[0][1:])
        tag = path.stem.split("_")[-1] if path.stem.split("_")[-1].startswith("s") else None
        if tag:
            overrides["seeds"] = tuple(range(int(tag[1:])))
        ex.load(name, scale, folder, tag=tag, **overrides)


def test_deviations_and_helpers():
    assert ex.deviations("fig1", "book") == []           # the book runs Fig. 1 at paper settings
    fields = [f for f, _, _ in ex.deviations("fig3", "book")]
    assert "width" in fields and "steps" in fields and "scale" not in fields
    with pytest.raises(ValueError, match="batch_size"):
        ex.Fig3Config(batch_size=(10, 10, 10))
    rc = ex.reduction_check(dims=(2,), lrs=(0.1, 0.2), steps=5, width=8, batch_size=8)
    assert rc["diverged"].shape == (2, 1, 2) and rc["diverged_step"].dtype == np.int64
    cal = ex.jitter_calibration(dims=(2, 3), jitters=(0.1,), num_samples=20, sampler_steps=5)
    assert cal["ratio"].shape == (2, 1) and cal["memorization_star"].shape == (2,)


# ----------------------------------------------------------------- Fig. 3-4 drivers: ensembles

def _same(a, b, skip=("train_seconds",)):
    assert set(a) == set(b)
    for k in a:
        if k not in skip:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_fig4_runs_of_a_dimension_are_one_ensemble_of_independent_members():
    # the runs of a dimension train as one ensemble with one data set per member: run r is
    # exactly what the run of seed r alone gives
    both = ex.fig4(ex.make_config("fig4", "book", **{**TINY4, "seeds": (0, 1)}))
    alone = ex.fig4(ex.make_config("fig4", "book", **{**TINY4, "seeds": (1,)}))
    for k in ("mmd_gen_star", "ratio", "memorization", "samples_proj", "data_proj", "final_loss",
              "diverged"):
        np.testing.assert_array_equal(both[k][:, 1:], alone[k], err_msg=k)


def test_fig4_parts_combine_into_the_full_run():
    cfg = ex.make_config("fig4", "book", **TINY4)
    full = ex.fig4(cfg)
    parts = [ex.fig4(ex.make_config("fig4", "book", **{**TINY4, "dims": (d,)})) for d in cfg.dims]
    _same(ex.fig4_combine(parts), full)
    with pytest.raises(ValueError, match="overlap"):
        ex.fig4_combine([parts[0], parts[0]])
    with pytest.raises(ValueError, match="at least one"):
        ex.fig4_combine([])


def test_fig3_learning_rates_with_equal_steps_and_batch_share_one_ensemble():
    from dsmlib.experiments.diffusion import _lr_groups
    assert _lr_groups(ex.make_config("fig3", "paper")) == [[0], [1]]
    assert _lr_groups(ex.make_config("fig3", "book")) == [[0], [1]]
    kw = {**TINY3, "steps": (10, 10), "batch_size": 16}
    cfg = ex.make_config("fig3", "book", **kw)
    assert _lr_groups(cfg) == [[0, 1]]
    grouped = ex.fig3(cfg)
    first = ex.fig3(ex.make_config("fig3", "book", **{**kw, "lrs": (2.0,), "steps": (10,)}))
    for k in ("samples", "mmd_star", "memorization", "diverged", "final_loss"):
        np.testing.assert_array_equal(grouped[k][:1], first[k], err_msg=k)
