"""Tests of the chapter "The open questions, measured": the two sample distances of dsmlib.metrics
(energy distance, sliced Wasserstein) against scipy, closed forms and exact small cases, and the
drivers of dsmlib.experiments.open_questions (tiny configurations) and their analysis functions."""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

import dsmlib as dsm
from dsmlib import experiments as ex
from dsmlib.experiments import _common as cm
from dsmlib.experiments import open_questions as oq


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _abs_normal_mean(m, s):
    """E|Z| for Z ~ N(m, s^2)."""
    return (s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s))
            + m * (1 - 2 * st.norm.cdf(-m / s)))


# ----------------------------------------------------------------- energy distance

@pytest.mark.parametrize("sizes", [(7, 7), (37, 53), (200, 3)])
def test_energy_distance_is_the_square_of_scipys_in_1d(sizes):
    g = _gen(1)
    x = torch.randn(sizes[0], generator=g, dtype=torch.float64)
    y = 1.3 * torch.randn(sizes[1], generator=g, dtype=torch.float64) + 0.4
    ref = st.energy_distance(x.numpy(), y.numpy()) ** 2
    got = dsm.energy_distance(x, y)
    assert got.dtype == torch.float64 and got.shape == ()
    assert float(got) == pytest.approx(ref, rel=1e-10)
    assert float(dsm.energy_distance(x, y, chunk_size=2)) == pytest.approx(ref, rel=1e-10)
    assert float(dsm.energy_distance(x[:, None], y[:, None])) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_energy_distance_matches_a_double_loop_in_3d(unbiased):
    g = _gen(2)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64) * 2
    xn, yn = x.numpy(), y.numpy()

    def mean_dist(a, b, same):
        tot = sum(np.linalg.norm(a[i] - b[j]) for i in range(len(a)) for j in range(len(b)))
        return tot / (len(a) * (len(a) - 1) if same and unbiased else len(a) * len(b))

    ref = 2 * mean_dist(xn, yn, False) - mean_dist(xn, xn, True) - mean_dist(yn, yn, True)
    got = float(dsm.energy_distance(x, y, unbiased=unbiased, chunk_size=4))
    assert got == pytest.approx(ref, rel=1e-12)


def test_energy_distance_of_two_gaussians_matches_the_closed_form():
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| for N(0, 1) vs N(1, 2^2); U-statistic, 3000 points each
    (standard error about 0.02)."""
    g = _gen(3)
    x = torch.randn(3000, generator=g, dtype=torch.float64)
    y = 1.0 + 2.0 * torch.randn(3000, generator=g, dtype=torch.float64)
    exact = (2 * _abs_normal_mean(1.0, math.sqrt(5)) - _abs_normal_mean(0, math.sqrt(2))
             - _abs_normal_mean(0, math.sqrt(8)))
    assert exact == pytest.approx(0.5341, abs=1e-4)       # hand check of the formula
    assert float(dsm.energy_distance(x, y, unbiased=True)) == pytest.approx(exact, abs=0.06)


def test_energy_distance_identities_and_errors():
    x = torch.randn(50, 2, generator=_gen(4), dtype=torch.float64)
    assert abs(float(dsm.energy_distance(x, x))) < 1e-12                # V-statistic: exactly 0
    assert float(dsm.energy_distance(x, x.flip(0) + 0.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(dsm.energy_distance(x, x + 5.0)) > 1.0
    with pytest.raises(ValueError, match="dimension"):
        dsm.energy_distance(x, x[:, :1])
    with pytest.raises(TypeError, match="unbiased"):
        dsm.energy_distance(x, x, unbiased=1)
    with pytest.raises(ValueError):
        dsm.energy_distance(x[:1], x)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="finite"):
        dsm.energy_distance(bad, x)


# ----------------------------------------------------------------- sliced Wasserstein

@pytest.mark.parametrize("sizes", [(5, 5), (37, 53), (1, 9), (64, 6)])
def test_sliced_wasserstein_in_1d_is_the_exact_wasserstein_distance(sizes):
    g = _gen(5)
    x = torch.randn(sizes[0], generator=g, dtype=torch.float64)
    y = 0.7 * torch.randn(sizes[1], generator=g, dtype=torch.float64) + 0.5
    assert float(dsm.sliced_wasserstein(x, y, p=1)) == pytest.approx(
        st.wasserstein_distance(x.numpy(), y.numpy()), rel=1e-12)
    # p = 2, 3: repeat each point so that both samples have n m equal-weight atoms; then the
    # optimal coupling pairs the sorted values
    n, m = sizes
    xx = np.sort(np.repeat(x.numpy(), m))
    yy = np.sort(np.repeat(y.numpy(), n))
    for p in (2.0, 3.0):
        ref = np.mean(np.abs(xx - yy) ** p) ** (1 / p)
        assert float(dsm.sliced_wasserstein(x, y, p=p)) == pytest.approx(ref, rel=1e-12)
        assert float(dsm.sliced_wasserstein(x[:, None], y[:, None], p=p, chunk_size=1)) == \
            pytest.approx(ref, rel=1e-12)


def _directions(P, d, seed):
    g = torch.randn(P, d, generator=_gen(seed), dtype=torch.float64)
    return g / g.norm(dim=1, keepdim=True)


def test_sliced_wasserstein_of_a_translation_and_of_point_masses_is_exact():
    """A shift c moves every projected point by theta . c, so W_p(theta) = |theta . c| for every
    direction; two point masses a, b give |theta . (a - b)|. With the same directions (same
    generator seed) the estimate is exactly the mean over them."""
    d, P = 3, 50
    theta = _directions(P, d, 7)
    x = torch.randn(40, d, generator=_gen(8), dtype=torch.float64)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    for p in (1.0, 2.0):
        ref = float((theta @ c).abs().pow(p).mean() ** (1 / p))
        got = dsm.sliced_wasserstein(x, x + c, p=p, num_projections=P, generator=_gen(7))
        assert float(got) == pytest.approx(ref, rel=1e-10)
        pm = dsm.sliced_wasserstein(c[None], torch.zeros(1, d, dtype=torch.float64), p=p,
                                    num_projections=P, generator=_gen(7), chunk_size=7)
        assert float(pm) == pytest.approx(ref, rel=1e-12)
    # a permutation of the same points is at distance 0
    assert float(dsm.sliced_wasserstein(x, x[torch.randperm(40, generator=_gen(9))],
                                        generator=_gen(1))) == 0.0


def test_sliced_wasserstein_of_two_isotropic_gaussians_matches_the_closed_form():
    """SW_2^2(N(a, s^2 I_d), N(b, r^2 I_d)) = |a - b|^2 / d + (s - r)^2 (projections are
    N(theta . a, s^2) and N(theta . b, r^2), and E (theta . v)^2 = |v|^2 / d)."""
    d = 3
    g = _gen(10)
    a = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    x = torch.randn(4000, d, generator=g, dtype=torch.float64)
    y = a + 1.5 * torch.randn(4000, d, generator=g, dtype=torch.float64)
    exact = float(a @ a) / d + 0.5 ** 2
    got = float(dsm.sliced_wasserstein(x, y, num_projections=400, generator=_gen(11))) ** 2
    assert got == pytest.approx(exact, rel=0.08)


def test_sliced_wasserstein_errors():
    x = torch.randn(10, 2, generator=_gen(12))
    with pytest.raises(ValueError, match="p must be >= 1"):
        dsm.sliced_wasserstein(x, x, p=0.5)
    with pytest.raises(ValueError, match="num_projections"):
        dsm.sliced_wasserstein(x, x, num_projections=0)
    with pytest.raises(ValueError, match="dimension"):
        dsm.sliced_wasserstein(x, x[:, :1])
    with pytest.raises(TypeError):
        dsm.sliced_wasserstein(x, x, generator=3)
    bad = x.clone()
    bad[1, 1] = math.inf
    with pytest.raises(ValueError, match="finite"):
        dsm.sliced_wasserstein(x, bad)
    assert dsm.sliced_wasserstein(x, x + 1).dtype == torch.float32


# ----------------------------------------------------------------- analysis helpers

def test_crossing_interpolates_in_log_eta():
    lrs = np.array([0.01, 0.1, 1.0])
    # level 0.5 between 0.2 at 0.01 and 0.8 at 0.1: halfway in log -> 10^-1.5
    eta, status = oq.crossing(lrs, [0.2, 0.8, 1.0], 0.5)
    assert status == 0 and eta == pytest.approx(10 ** -1.5, rel=1e-12)
    assert oq.crossing(lrs, [0.6, 0.8, 1.0], 0.5) == (0.01, -1)
    eta, status = oq.crossing(lrs, [0.1, 0.2, 0.3], 0.5)
    assert status == 1 and math.isnan(eta)
    assert oq.crossing(lrs, [0.1, math.inf, 0.3], 0.5) == (0.1, 0)        # diverged: above
    eta, status = oq.crossing(lrs, [0.2, math.nan, 0.8], 0.5)          # NaN skipped
    assert status == 0 and eta == pytest.approx(0.1, rel=1e-12)
    # the first crossing counts, not a later one
    assert oq.crossing(lrs, [0.0, 1.0, 0.0], 0.5)[0] == pytest.approx(10 ** -1.5)


def _synthetic_phase(exponent=2.0, S=5):
    """A results dict whose median relative excess risk crosses 0.25 at eta_c = 0.1 sigma^b / mu
    exactly (q is linear in log eta), with the same curve for every data set."""
    lrs = np.geomspace(1e-3, 10, 13)
    sigma = np.array([0.2, 0.3, 0.45, 0.6])
    mu = np.sqrt(1 - sigma ** 2)
    eta_c = 0.1 * sigma ** exponent / mu
    N, L, T = 2, len(lrs), len(sigma)
    q = 0.25 + 0.1 * (np.log(lrs)[None, :, None] - np.log(eta_c)[None, None, :])
    q = np.broadcast_to(q[..., None], (N, L, T, S)).copy()
    zero = np.full((N, T, S), 2.0)
    false = np.zeros((N, L, T, S), dtype=bool)
    return {"lrs": lrs, "sigma": sigma, "mu": mu, "zero_excess": zero,
            "excess_last": q * 2.0, "excess_avg": q * 2.0, "excess_decay": q * 2.0,
            "collapsed": false, "diverged": false.copy()}, eta_c


def test_phase_boundary_and_exponent_on_a_known_diagram():
    res, eta_c = _synthetic_phase(exponent=2.0)
    eta, status = oq.phase_boundary(res, 0.25)
    assert np.all(status == 0)
    np.testing.assert_allclose(eta, np.broadcast_to(eta_c, eta.shape), rtol=1e-10)
    per, st_ = oq.phase_boundary(res, 0.25, per_set=True)
    np.testing.assert_allclose(per, np.broadcast_to(eta_c[:, None], per.shape), rtol=1e-10)
    fit = oq.bootstrap_exponent(res, 0.25, reps=20)
    np.testing.assert_allclose(fit["slope_theory"], 1.0, rtol=1e-8)   # eta_c ∝ sigma^2 / mu
    assert np.all(fit["points"] == 4)
    assert np.all((fit["lo"] <= fit["slope"] + 1e-9) & (fit["slope"] <= fit["hi"] + 1e-9))
    b, a, k = oq.fit_power(res["sigma"], eta_c * res["mu"])
    assert b == pytest.approx(2.0, rel=1e-10) and a == pytest.approx(math.log(0.1)) and k == 4


def _with_units(res, active=0.8):
    """The synthetic diagram with an active-unit fraction and TV_pi for every run."""
    shape = res["excess_last"].shape
    res["active_last"] = np.full(shape, active)
    res["tv_star"] = np.full(res["zero_excess"].shape, 4.0)
    res["tv_decay"] = np.full(shape, 1.0)
    return res


def test_boundary_cause_on_a_known_diagram():
    res, eta_c = _synthetic_phase(S=4)
    res = _with_units(res)
    eta, status = oq.phase_boundary(res, 0.25)
    k = np.searchsorted(res["lrs"], eta_c)             # first grid rate at or above eta_c
    # (n=0, sigma 0): 2 of 4 runs diverge at k -> median +inf -> divergence
    res["diverged"][0, k[0]:, 0, :2] = True
    # (n=0, sigma 1): 2 of 4 collapsed at k (median finite, q of a collapsed run = its last iterate)
    res["collapsed"][0, k[1], 1, :2] = True
    # (n=0, sigma 2): no dead run, but the live runs keep 0.3 of their units at k (0.8 at the start)
    res["active_last"][0, k[2], 2] = 0.8 * 0.3
    # (n=1, sigma 0): already above the level at the smallest rate
    res["excess_decay"][1, :, 0] = res["excess_last"][1, :, 0] = 1.0
    # (n=1, sigma 1): never above
    res["excess_decay"][1, :, 1] = res["excess_last"][1, :, 1] = 0.1
    out = oq.boundary_cause(res, 0.25)
    names = np.array(oq.CAUSES)[out["cause"]]
    assert names.tolist() == [["divergence", "collapse", "collapse", "live"],
                              ["below grid", "never", "live", "live"]]
    assert out["index"][0].tolist() == k.tolist() and out["index"][1, 0] == 0
    assert out["index"][1, 1] == -1 and math.isnan(out["dead_share"][1, 1])
    assert out["dead_share"][0, 0] == 0.5 and out["dead_share"][0, 1] == 0.5
    assert out["active_ratio"][0, 2] == pytest.approx(0.3)
    assert out["active_ratio"][0, 3] == 1.0
    np.testing.assert_allclose(out["tv_ratio"][0, 1:], 0.25)        # the live runs' TV / TV*
    # at the divergence cell the crossing is the grid point itself, not the interpolated eta_c
    assert eta[0, 0] == pytest.approx(eta_c[0]) and res["lrs"][k[0]] > 1.01 * eta_c[0]
    assert oq.phase_boundary(res, 0.25)[0][0, 0] == res["lrs"][k[0]]
    # one collapsed run of four is below the share: live
    res["collapsed"][0, k[1], 1, 1] = False
    assert oq.CAUSES[oq.boundary_cause(res, 0.25)["cause"][0, 1]] == "live"
    with pytest.raises(ValueError, match="share"):
        oq.boundary_cause(res, 0.25, share=0)


def test_relative_excess_separates_collapsed_and_diverged():
    res, _ = _synthetic_phase()
    res["excess_decay"] = res["excess_decay"] * 0.5
    res["collapsed"][0, 3, 1, 2] = True
    res["diverged"][1, 4, 0, 0] = True
    q = oq.relative_excess(res, "decay")
    assert q[0, 3, 1, 2] == res["excess_last"][0, 3, 1, 2] / 2.0           # last iterate
    assert q[0, 3, 1, 1] == res["excess_decay"][0, 3, 1, 1] / 2.0
    assert q[1, 4, 0, 0] == math.inf
    live = oq.relative_excess(res, "decay", among="live")
    assert math.isnan(live[0, 3, 1, 2]) and math.isnan(live[1, 4, 0, 0])
    with pytest.raises(ValueError, match="state"):
        oq.relative_excess(res, "final")
    with pytest.raises(ValueError, match="among"):
        oq.relative_excess(res, "last", among="some")


# ----------------------------------------------------------------- the phase driver

TINY_PHASE = dict(scale="custom", ns=(5, 8), times=(0.05, 0.5), lrs=(0.1, 0.8), flow_time=40.0,
                  seeds=(0, 1), width=40, decay_steps=60, quadrature_nodes=201, tv_grid=201)


@pytest.fixture(scope="module")
def phase_result():
    torch.set_num_threads(1)
    return oq.phase(oq.PhaseConfig(**TINY_PHASE))


def test_phase_members_are_the_networks_trained_one_by_one(phase_result):
    """Member (n = 8, eta = 0.8, t = 0.5, data set 1) of the ensemble is the single network
    trained on data set 1 at that noise level with the same streams (bit for bit)."""
    cfg = oq.PhaseConfig(**TINY_PHASE)
    res = phase_result
    n, lr, t, s = 8, 0.8, 1, 1
    x = torch.randn(n, generator=cm._generator(s, cm._DATA, 1), dtype=torch.float64)
    np.testing.assert_array_equal(res["data_n8"][s], x.numpy())
    mu, sigma = dsm.ou_mu(0.5), dsm.ou_sigma(0.5)
    net = dsm.TwoLayerScoreNet(cfg.width, generator=cm._generator(s, cm._INIT))
    g = cm._generator(s, cm._TRAIN, t, n)
    steps = cfg.steps_for(lr)
    assert steps == 50 and res["steps"].tolist() == [400, 50]
    dsm.train_sgd(net, x.float(), mu, sigma, lr=lr, steps=steps, generator=g)
    net64 = dsm.TwoLayerScoreNet.from_parameters(*(p.detach().double() for p in
                                                   (net.W1, net.b, net.W2)))
    e = float(dsm.excess_risk(net64, x, mu, sigma, num_nodes=cfg.quadrature_nodes))
    assert res["excess_last"][1, 1, t, s] == pytest.approx(e, rel=1e-10)
    for f in cfg.decay:
        dsm.train_sgd(net, x.float(), mu, sigma, lr=lr / f, steps=cfg.decay_steps, generator=g)
    net64 = dsm.TwoLayerScoreNet.from_parameters(*(p.detach().double() for p in
                                                   (net.W1, net.b, net.W2)))
    e = float(dsm.excess_risk(net64, x, mu, sigma, num_nodes=cfg.quadrature_nodes))
    assert res["excess_decay"][1, 1, t, s] == pytest.approx(e, rel=1e-10)
    tv = float(dsm.weighted_tv(net64, x, mu, sigma))
    assert res["tv_decay"][1, 1, t, s] == pytest.approx(tv, rel=1e-10)


def test_phase_references(phase_result):
    res = phase_result
    x = torch.as_tensor(res["data_n5"][0])
    mu, sigma = float(res["mu"][1]), float(res["sigma"][1])
    zero = float(dsm.excess_risk(lambda y: torch.zeros_like(y), x, mu, sigma, num_nodes=201))
    assert res["zero_excess"][0, 1, 0] == pytest.approx(zero, rel=1e-12)
    assert res["theorem_lr"][0, 1, 0] == pytest.approx(dsm.theorem_lr_threshold(x, mu, sigma))
    assert res["delta"][0, 0] == pytest.approx(dsm.min_gap(x))
    assert res["tv_star"][0, 1, 0] == pytest.approx(dsm.weighted_tv("optimal", x, mu, sigma,
                                                                    grid=201))
    for k in ("excess_last", "excess_avg", "excess_decay", "tv_decay"):
        assert res[k].shape == (2, 2, 2, 2) and np.isfinite(res[k]).all()
    assert np.array_equal(res["collapsed"], ~res["diverged"] & (res["active_last"] == 0))
    # a collapsed network has the excess risk of the score 0 (its score is 0 on the data hull,
    # and nearly so around it)
    col = res["collapsed"]
    if col.any():
        q = oq.relative_excess(res, "last")[col]
        assert np.all(np.abs(q - 1) < 0.05)


def test_phase_config_checks():
    with pytest.raises(ValueError, match="lrs"):
        oq.PhaseConfig(lrs=(0.1, 0.05))
    with pytest.raises(ValueError, match="ns"):
        oq.PhaseConfig(ns=(1,))
    with pytest.raises(ValueError, match="decay"):
        oq.PhaseConfig(decay=(1.0,))
    with pytest.raises(ValueError, match="flow_time"):
        oq.PhaseConfig(flow_time=0)
    with pytest.raises(ValueError, match="scale"):
        oq.PhaseConfig.preset("huge")
    assert oq.PhaseConfig().steps_for(0.01) == 125_000


# ----------------------------------------------------------------- the generation driver

TINY_GEN = dict(scale="custom", ns=(4,), lrs=(0.5, 2.0), batch_size=(64, 64),
                flow_time=(16.0, 8.0),
                checkpoints=3, seeds=(0,), width=30, num_samples=120, reference_samples=150,
                sampler_steps=15, projections=16, activity_samples=500)


@pytest.fixture(scope="module")
def generation_result():
    torch.set_num_threads(1)
    return oq.generation(oq.GenerationConfig(**TINY_GEN))


def test_generation_chunks_are_one_continuous_run(generation_result):
    """The network at the last checkpoint is the one trained in a single run of the same total
    steps with the same streams; its samples and metrics follow."""
    cfg = oq.GenerationConfig(**TINY_GEN)
    res = generation_result
    n, seed, li = 4, 0, 0
    assert res["checkpoint_steps"].tolist() == [[8, 16, 32], [2, 4, -1]]
    assert np.isnan(res["memorization"][0, 1, 0, 2])              # lr 2 stops at flow time 8
    np.testing.assert_allclose(res["flow_times"], [4.0, 8.0, 16.0])
    x = 2.0 * torch.randn(n, 2, generator=cm._generator(seed, cm._DATA, 2, n), dtype=torch.float64)
    xf = x.float()
    net = dsm.TimeScoreNet(cfg.width, 2, generator=cm._generator(seed, cm._INIT, 2, n))
    dsm.train_time_score_net(net, xf, lr=0.5, steps=32, batch_size=64, reduction="mean_all",
                             generator=cm._generator(seed, cm._TRAIN, 2, n, li))
    smp = dsm.reverse_sde_sample(net.score, cfg.num_samples, 2, steps=cfg.sampler_steps,
                                 generator=cm._generator(seed, cm._SAMPLE, n, 10 + li, 2))
    assert res["memorization"][0, li, 0, 2] == dsm.memorization_fraction(smp, xf)
    var = oq.true_variance(2.0, 0.01)
    ref = math.sqrt(var) * torch.randn(cfg.reference_samples, 2,
                                       generator=cm._generator(seed, cm._SAMPLE, n, 0))
    assert res["mmd"][0, li, 0, 2] == pytest.approx(float(dsm.mmd(smp, ref)), rel=1e-5)
    assert res["energy"][0, li, 0, 2] == pytest.approx(
        float(dsm.energy_distance(smp, ref, unbiased=True)), rel=1e-5)


def test_generation_references_and_shapes(generation_result):
    res = generation_result
    assert list(res["reference_names"]) == ["star", "gauss", "true_score", "fresh"]
    for k in ("memorization", "mmd", "energy", "sw", "active"):
        assert res[k].shape == (1, 2, 1, 3)
        ok = res["diverged"][..., None] | res["sampling_failed"] | np.isfinite(res[k])
        assert ok[:, 0].all() and ok[:, 1, :, :2].all()
    # the s* sampler copies the training points far more often than fresh samples of the truth
    mem = res["ref_memorization"][0, 0]
    assert mem[0] > mem[3]
    assert oq.true_variance(2.0, 0.01) == pytest.approx(4 * math.exp(-0.02) + 1 - math.exp(-0.02))
    # fresh true samples are closer to the truth than the s* sampler's copies of 4 points
    for k in ("mmd", "energy", "sw"):
        assert res[f"ref_{k}"][0, 0, 3] < res[f"ref_{k}"][0, 0, 0]


def test_onset_time_on_a_known_curve():
    tau = np.array([1.0, 2.0, 4.0, 8.0])
    mem = np.array([0.1, 0.2, 0.4, 0.8])[None, None, None, :].repeat(3, axis=2)   # (1, 1, 3, 4)
    res = {"memorization": mem, "flow_times": tau, "reference_names": np.array(
        ["star", "gauss", "true_score", "fresh"]),
        "ref_memorization": np.array([[[0.9, 0.1, 0.1, 0.1]] * 3])}
    t, status, lev = oq.onset_time(res)                 # level 0.1 + 0.5 (0.9 - 0.1) = 0.5
    assert lev[0] == pytest.approx(0.5)
    assert status[0, 0] == 0 and t[0, 0] == pytest.approx(4 * 2 ** 0.25, rel=1e-12)
    t, status, _ = oq.onset_time(res, level=0.05)
    assert status[0, 0] == -1


def test_generation_config_checks():
    with pytest.raises(ValueError, match="batch_size"):
        oq.GenerationConfig(batch_size=(500,))
    with pytest.raises(ValueError, match="checkpoints"):
        oq.GenerationConfig(lrs=(4.0,), batch_size=(10,), flow_time=4.0, checkpoints=4)
    with pytest.raises(ValueError, match="one of the checkpoint times"):
        oq.GenerationConfig(lrs=(0.1, 1.0), batch_size=(10, 10), flow_time=(3.0, 8.0),
                            checkpoints=3)
    with pytest.raises(ValueError, match="one per learning rate"):
        oq.GenerationConfig(lrs=(0.1, 1.0), batch_size=(10, 10), flow_time=(8.0,))
    cfg = oq.GenerationConfig(lrs=(0.1, 1.0), batch_size=(10, 10), flow_time=(4.0, 8.0),
                              checkpoints=3)
    assert cfg.checkpoint_steps().tolist() == [[20, 40, -1], [2, 4, 8]]
    with pytest.raises(ValueError, match="T > delta"):
        oq.GenerationConfig(delta=2.0)


# ----------------------------------------------------------------- registration

def test_experiments_are_registered_and_run_from_the_runner(tmp_path):
    for name in ("phase", "generation"):
        assert name in ex.FIGURES
        assert ex.make_config(name, "book").scale == "book"
        assert ex.result_path(name, ex.make_config(name, "paper")).name == f"{name}_paper.npz"
    arrays, meta, path = ex.run("phase", "book", tmp_path, progress=False,
                                **{k: v for k, v in TINY_PHASE.items() if k != "scale"})
    assert path.exists() and meta["config"]["ns"] == [5, 8]
    np.testing.assert_array_equal(arrays["lrs"], [0.1, 0.8])
    fields = [f for f, _, _ in ex.deviations("generation", "book")]
    assert "flow_time" in fields and "ns" in fields
