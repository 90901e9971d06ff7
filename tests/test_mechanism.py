"""Tests of the decomposition driver dsmlib.experiments.mechanism (tiny configurations)."""

import numpy as np
import pytest
import torch

import dsmlib as dsm
from dsmlib import experiments as ex
from dsmlib.experiments import decomposition as mech
from dsmlib.experiments import decomposition2d as mech2d

TINY = dict(seeds=(0, 1), lrs=(0.5, 0.1), steps=(600, 1000), width=60, decay_steps=300,
            checkpoints=3, sharpness_iters=20, tv_grid=201)


@pytest.fixture(scope="module")
def result():
    torch.set_num_threads(1)
    return ex.mechanism(ex.make_config("mechanism", "book", **TINY))


def test_final_networks_are_those_of_fig2(result):
    f2 = ex.fig2(ex.make_config("fig2", "book", dim=1, seeds=TINY["seeds"], lrs=TINY["lrs"],
                                steps=TINY["steps"], width=TINY["width"], sharpness_iters=0))
    # the same networks (the evaluation groups members differently: rounding only)
    np.testing.assert_allclose(result["excess_last"], f2["excess_risk"], rtol=1e-12, atol=0)
    assert np.array_equal(result["active_last"], f2["active_fraction"])
    assert not (f2["diverged"] & ~result["diverged"]).any()


def test_checkpoints_are_points_of_the_trajectory(result):
    cfg = ex.make_config("mechanism", "book", **TINY)
    steps = mech.checkpoint_steps(1000, 0.2, 3)
    assert steps.tolist() == [0, 2, 8, 32, 128, 256, 512, 768, 1000]
    assert all(k % 256 == 0 for k in steps if 128 < k < 1000)
    # checkpoint 8 of lr 0.1, member (t=0, s=1): a fresh 8-step run from the same initialisation
    members = mech._members(cfg)
    t_idx, s_idx, mus, sigmas, data = members
    k = 1                                                   # member (t = 0, s = 1)
    net = dsm.TwoLayerScoreNet(cfg.width, generator=ex._common._generator(cfg.seeds[1],
                                                                          ex._common._INIT))
    g = ex._common._generator(cfg.seeds[1], ex._common._TRAIN, 0)
    x = torch.as_tensor(data[1])
    dsm.train_sgd(net, x.float(), float(mus[0]), float(sigmas[0]), lr=0.1, steps=8, generator=g)
    net64 = dsm.TwoLayerScoreNet.from_parameters(*(p.detach().double() for p in
                                                   (net.W1, net.b, net.W2)))
    e = float(dsm.excess_risk(net64, x, float(mus[0]), float(sigmas[0])))
    assert result["checkpoints"][1, 2] == 8
    assert result["traj_excess"][1, 0, 1, 2] == pytest.approx(e, rel=1e-12)
    # the last checkpoint is the end of training
    assert np.array_equal(result["traj_excess"][1, ..., -1], result["excess_last"][1])
    assert k == 1


def test_collapsed_networks_have_the_excess_risk_of_the_zero_score(result):
    col = result["collapsed"]
    assert col.any()                                        # eta = 0.5 at t = 0.05 collapses
    gap = np.abs(result["excess_last"] - result["zero_excess"][None])[col]
    assert gap.max() < 1e-3
    assert np.all(result["tv_last"][col] == 0) and np.all(result["kinks_last"][col] == 0)


def test_decomposition_parts_add_up(result):
    for ti in range(2):
        d = ex.decompose(result, ti)
        parts = d["floor"] + d["collapse"] + d["smoothing"] + d["noise"]
        np.testing.assert_allclose(parts, d["total"], rtol=1e-12, atol=1e-12)
        assert d["smoothing"][-1] == 0.0 and np.all(d["n"] + d["diverged"] == 2)
        live = ~result["collapsed"][:, ti] & ~result["diverged"][:, ti]
        assert np.allclose(d["noise"] * d["n"],
                           np.where(live, result["excess_last"][:, ti]
                                    - result["excess_decay"][:, ti], 0).sum(1))


def test_config_checks():
    with pytest.raises(ValueError, match="average_fraction"):
        ex.make_config("mechanism", "book", average_fraction=1.0)
    with pytest.raises(ValueError, match="decay"):
        ex.make_config("mechanism", "book", decay=(0.5,))
    with pytest.raises(ValueError, match="steps"):
        ex.make_config("mechanism", "book", lrs=(0.1,), steps=(100,))
    assert mech.control_steps(ex.make_config("mechanism", "paper")) == 1100


def test_mechanism2d_first_arms_are_the_fig3_networks():
    kw = dict(width=40, arms=((2.0, 60, 500), (0.05, 200, 100), (1.0, 60, 500)), decay_steps=50,
              num_samples=200, sampler_steps=30, seeds=(0, 1, 2), activity_samples=2000)
    r = ex.mechanism2d(ex.make_config("mechanism2d", "book", **kw))
    f3 = ex.fig3(ex.make_config("fig3", "book", width=40, lrs=(2.0, 0.05), steps=(60, 200),
                                batch_size=(500, 100), num_samples=200, sampler_steps=30,
                                seeds=(0, 1, 2)))
    assert np.array_equal(r["diverged"][:2], f3["diverged"])
    np.testing.assert_array_equal(r["memorization"][:2], f3["memorization"])
    np.testing.assert_array_equal(r["mmd_star"][:2], f3["mmd_star"])
    assert float(r["memorization_star"]) == float(f3["memorization_star"])
    # diverged networks have no measurements, and stay diverged through the decay
    assert np.all(np.isnan(r["active"][r["diverged"]]))
    assert np.all(r["decay_diverged"][r["diverged"][0]])
    ok = ~r["decay_diverged"]
    assert np.all((r["decay_active"][ok] > 0) & (r["decay_active"][ok] <= 1))
    assert r["arm_batch"].tolist() == [500, 100, 500]


def test_time_net_activity_counts_units():
    net = dsm.TimeScoreNet(3, 1, ensemble=1, generator=[torch.Generator().manual_seed(0)])
    with torch.no_grad():
        net.W1.zero_()
        net.b.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
    act = mech2d.time_net_activity(net, torch.zeros(4, 1), num=100, T=1.0, delta=0.01,
                                   num_times=10, time_weighting="sigma",
                                   generator=torch.Generator().manual_seed(1))
    assert act.tolist() == [pytest.approx(2 / 3)]


def test_collapse_by_step_shapes_and_consistency():
    r = ex.collapse_by_step(dims=(1, 2), lrs=(0.05, 5.0), steps=300, width=30, seeds=(0, 1))
    assert r["diverged"].shape == (2, 2, 2)
    assert not (r["collapsed"] & r["diverged"]).any()
    assert np.all(np.isnan(r["active"][r["diverged"]]))
    ok = ~r["diverged"]
    assert np.array_equal(r["collapsed"][ok], r["active"][ok] == 0)


def test_mechanism_in_ten_dimensions():
    cfg = ex.make_config("mechanism", "book", dim=10, seeds=(0, 1), lrs=(0.5, 0.1),
                         steps=(512, 768), width=40, decay_steps=100, checkpoints=2,
                         noise_draws=50)
    r = ex.mechanism(cfg)
    assert r["excess_last"].shape == (2, 2, 2) and np.all(np.isnan(r["tv_last"]))
    assert np.all(np.isfinite(r["excess_decay"])) and np.all(np.isnan(r["tv_star"]))
    d = ex.decompose(r, 0)
    assert np.all(np.isnan(d["stable_after"]))
    np.testing.assert_allclose(d["floor"] + d["collapse"] + d["smoothing"] + d["noise"],
                               d["total"], rtol=1e-12)
    assert ex.result_path("mechanism", cfg).name == "mechanism_book_d10.npz"
    assert ex.result_path("mechanism", ex.make_config("mechanism", "paper")).name == \
        "mechanism_paper.npz"


def test_diverged_members_stay_frozen_as_in_fig2():
    """A member that diverges in an early chunk must end frozen, as in Fig. 2's single call."""
    kw = dict(seeds=(0, 1, 2), lrs=(1.5,), steps=(1024,), width=60)
    r = ex.mechanism(ex.make_config("mechanism", "book", decay_steps=100, sharpness_iters=0,
                                    tv_grid=101, checkpoints=3, **kw))
    f2 = ex.fig2(ex.make_config("fig2", "book", dim=1, sharpness_iters=0, **kw))
    assert f2["diverged"].any()
    assert np.array_equal(f2["diverged"], r["diverged"] & f2["diverged"])   # flagged here too
    np.testing.assert_allclose(r["excess_last"], f2["excess_risk"], rtol=1e-12, atol=0)
