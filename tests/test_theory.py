"""Tests of dsmlib.theory, dsmlib.posterior_bounds and dsmlib.regularity: spacing, thresholds,
Prop. 2 (the paper's and the book's lemmas), Cor. 3, Prop. 6 on networks, the conditions of
Thm. 8, the weight pi and TV_pi.

Oracles (float64): brute-force pairwise distances; the definitions of pi_+/pi_- evaluated
point by point in NumPy and integrated against the Gaussian with scipy.integrate.quad; the
closed form of pi for two points (a tent blurred by a Gaussian); the posterior moments of
dsmlib.optimal (and s*' from eq. 9) for Prop. 2, the lemmas and Cor. 3, on random data;
autograd of dsmlib.optimal_score_derivative for s*''; a net evaluated as a black-box callable on
a fine grid for the exact kink sum; dsmlib.dsm_risk for eq. 10; for Prop. 6, the exact
sharpness (dsm.sharpness), the Gauss-Newton matrix and the exact TV_pi of random networks.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dsmlib.networks import TwoLayerScoreNet
from dsmlib.optimal import optimal_score, optimal_score_derivative, posterior_moments
from dsmlib.regularity import _optimal_score_second_derivative, tv_weight_pieces
from dsmlib.risk import dsm_risk
from dsmlib.gauss_newton import gauss_newton_sharpness
from dsmlib.stability import relu_net_risk, sharpness
from dsmlib.posterior_bounds import (cor3_derivative_gap, posterior_midpoint_lemma,
                                     posterior_near_data_lemma, prop2_midpoint_bound,
                                     prop2_near_data_bound)
from dsmlib.theory import (min_gap, optimal_risk_bound, prop6_bound_terms, prop6_tv_upper_bound,
                           prop7_conditions, prop7_tv_lower_bound, sigma2_condition,
                           sigma4_condition, theorem_checklist, theorem_excess_bound,
                           theorem_lr_threshold, tv_lower_bound, tv_lower_bound_condition,
                           tv_weight, weighted_tv)

F64 = torch.float64


def _data(n=6, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------------------------------------
# spacing and closed-form constants
# ---------------------------------------------------------------------------------------------

def test_min_gap_one_and_many_dimensions():
    x = torch.tensor([0.3, -1.0, 2.0, 0.1])
    assert min_gap(x) == pytest.approx(0.2, rel=1e-6)
    assert min_gap(x[:, None]) == pytest.approx(0.2, rel=1e-6)
    pts = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    brute = min(float((pts[i] - pts[j]).norm()) for i in range(7) for j in range(7) if i != j)
    assert min_gap(pts) == pytest.approx(brute, rel=1e-12)
    assert min_gap([1.0, 2.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="data"):
        min_gap([1.0])
    with pytest.raises(ValueError, match="data"):
        min_gap([1.0, float("nan")])


def test_theorem_constants():
    x = torch.tensor([-1.0, 0.5, 0.0, 2.0], dtype=F64)      # n = 4, Delta = 0.5, D = 3
    mu, sigma, A = 0.9, 0.2, 3.0
    assert theorem_lr_threshold(x, mu, sigma) == pytest.approx(4096 * 0.04 / (0.9 * 16 * 0.5))
    assert theorem_excess_bound(x, mu, sigma, A) == pytest.approx(
        math.pi * 4 ** 5 * 0.9 ** 3 * 0.125 / (2 ** 36 * math.exp(0.5) * 81 * 0.2 ** 4))
    assert tv_lower_bound(x, mu, sigma) == pytest.approx(0.9 ** 3 * 4 * 0.125 / (4096 * 0.2 ** 4))
    value, holds = tv_lower_bound_condition(x, mu, sigma)
    assert value == pytest.approx(16 * 64 * math.exp(-0.81 * 0.25 / (4 * 0.04)))
    assert holds is (value <= 1)
    assert optimal_risk_bound(x, mu, sigma) == pytest.approx(
        4 * 0.81 * 9 / 0.2 ** 4 * math.exp(-0.81 * 0.25 / (32 * 0.04)))
    assert prop7_tv_lower_bound(x, mu, sigma) == pytest.approx(0.9 * 16 * 0.5 / (2048 * 0.04))
    assert theorem_lr_threshold([0.0, 1.0, 1.0], mu, sigma) == math.inf


def test_tv_lower_bound_condition_switches_on_at_small_sigma():
    x = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    assert tv_lower_bound_condition(x, 1.0, 1.0)[1] is False
    assert tv_lower_bound_condition(x, 1.0, 0.1)[1] is True


@pytest.mark.parametrize("sigma", [0.6, 0.3, 0.1, 0.03])
def test_corollary3_bounds_the_risk_of_the_optimal_score(sigma):
    x = _data(8, seed=2)
    mu = math.sqrt(1 - sigma ** 2)
    risk = float(dsm_risk("optimal", x, mu, sigma, num_nodes=4001))
    assert 0 <= risk <= optimal_risk_bound(x, mu, sigma)


def test_prop6_and_prop7():
    x = _data(5)
    n = 5
    lr, R, mu, sigma, A = 0.1, 0.02, 0.9, 0.3, 2.0
    expected = 1 / (2 * lr) + math.sqrt(R) / 2 + A / (math.sqrt(2 * math.pi) * sigma) * max(
        math.sqrt(2 * n * R), (math.sqrt(2 * math.pi * math.e) * A * sigma * n * R) ** (1 / 3))
    assert prop6_tv_upper_bound(lr, R, x, mu, sigma, A) == pytest.approx(expected, rel=1e-14)
    lrs = torch.tensor([0.5, 0.1, 0.01], dtype=F64)
    risks = torch.tensor([0.0, 0.02, 3.0], dtype=F64)
    got = prop6_tv_upper_bound(lrs, risks, x, mu, sigma, A)
    for k in range(3):
        assert float(got[k]) == pytest.approx(
            prop6_tv_upper_bound(float(lrs[k]), float(risks[k]), x, mu, sigma, A), rel=1e-12)
    # risk 0: only the learning-rate term is left
    assert prop6_tv_upper_bound(0.25, 0.0, x, mu, sigma, A) == pytest.approx(2.0)

    wide = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    assert prop7_conditions(wide, 1.0, 0.1, 0.0) == (True, True)
    assert prop7_conditions(wide, 1.0, 0.2, 0.0) == (False, True)
    assert prop7_conditions(wide, 1.0, 0.1, 1 / (16 * 3 * 0.01) * 1.01) == (True, False)


# ---------------------------------------------------------------------------------------------
# Prop. 2 (the paper's statement), Cor. 3 and the book's lemmas, against the exact posterior
# ---------------------------------------------------------------------------------------------

def _spread_data(n, seed, scale=1.0):
    """Random sorted data with a minimum gap not far below its typical one."""
    g = torch.Generator().manual_seed(seed)
    gaps = scale * (0.5 + torch.rand(n - 1, generator=g, dtype=F64))
    return torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(gaps, 0)]) - 0.3 * n * scale


@pytest.mark.parametrize("seed", range(6))
def test_prop2_midpoint_bound_holds_at_every_noise_level(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(int(torch.randint(2, 12, (1,), generator=g)), generator=g, dtype=F64)
    xs = torch.sort(x).values
    for sigma in (0.9, 0.5, 0.2, 0.05):
        mu = math.sqrt(1 - sigma ** 2)
        b = prop2_midpoint_bound(x, mu)
        torch.testing.assert_close(b.midpoints, mu * (xs[1:] + xs[:-1]) / 2)
        torch.testing.assert_close(b.var_lower, (xs[1:] - xs[:-1]) ** 2 / (2 * x.numel()))
        _, var = posterior_moments(b.midpoints, x, mu, sigma)
        slack = 1e-15 / sigma ** 2                          # rounding of logits ~ 1 / sigma^2
        assert bool((var >= b.var_lower * (1 - 1e-12) - slack).all())


@pytest.mark.parametrize("seed", range(6))
def test_prop2_near_data_bound_holds_where_it_applies(seed):
    g = torch.Generator().manual_seed(100 + seed)
    x = _spread_data(int(torch.randint(2, 12, (1,), generator=g)), seed)
    delta = min_gap(x)
    for ratio in (2.01, 3.0, 5.0, 10.0):                    # mu Delta / sigma
        sigma = delta / math.sqrt(ratio ** 2 + delta ** 2)  # so that mu Delta / sigma = ratio
        mu = math.sqrt(1 - sigma ** 2)
        b = prop2_near_data_bound(x, mu, sigma)
        assert b.applies and b.radius == pytest.approx(mu * delta / 4)
        offsets = b.radius * (2 * torch.rand(31, generator=g, dtype=F64) - 1)
        offsets = torch.cat([offsets, torch.tensor([-b.radius, 0.0, b.radius], dtype=F64)])
        y = (mu * x[:, None] + offsets[None, :]).reshape(-1)
        mean, var = posterior_moments(y, x, mu, sigma)
        err = (mean.reshape(x.numel(), -1) - x[:, None]).abs().max()
        assert float(err) <= b.mean_error * (1 + 1e-9) + 1e-15
        assert float(var.max()) <= b.var_upper * (1 + 1e-9) + 1e-15
        # the lemma of the book is sharper wherever Prop. 2 applies, and holds too
        lemma = posterior_near_data_lemma(x, mu, sigma)
        assert lemma.mean_error <= b.mean_error and lemma.var_upper <= b.var_upper
        assert float(err) <= lemma.mean_error * (1 + 1e-9) + 1e-15
        assert float(var.max()) <= lemma.var_upper * (1 + 1e-9) + 1e-15


def test_prop2_near_data_hypothesis_is_reported_and_matters():
    """Two close points and a far one at a large noise level: Delta < 2 sigma / mu, and the
    'bound' n Delta e is then violated by the real posterior mean."""
    x = torch.tensor([0.0, 0.1, 3.0], dtype=F64)
    sigma = 0.8
    mu = math.sqrt(1 - sigma ** 2)
    b = prop2_near_data_bound(x, mu, sigma)
    assert not b.applies
    mean, _ = posterior_moments(mu * x, x, mu, sigma)
    assert float((mean - x).abs().max()) > b.mean_error
    with pytest.raises(ValueError, match="Delta >= 2 sigma / mu"):
        prop2_near_data_bound(x, mu, sigma, strict=True)
    with pytest.raises(ValueError, match="Delta >= 2 sigma / mu"):
        cor3_derivative_gap(x, mu, sigma, strict=True)
    assert not cor3_derivative_gap(x, mu, sigma).applies
    # coincident points: Delta = 0 never satisfies the hypothesis
    assert not prop2_near_data_bound([0.0, 0.0, 1.0], mu, 0.01).applies


@pytest.mark.parametrize("seed", range(5))
def test_cor3_holds_near_the_noisy_points(seed):
    x = _spread_data(int(torch.randint(2, 12, (1,), generator=torch.Generator().manual_seed(seed))),
                     50 + seed)
    delta = min_gap(x)
    g = torch.Generator().manual_seed(seed)
    for ratio in (2.01, 4.0, 8.0):
        sigma = delta / math.sqrt(ratio ** 2 + delta ** 2)
        mu = math.sqrt(1 - sigma ** 2)
        c = cor3_derivative_gap(x, mu, sigma)
        assert c.applies and c.lower.shape == (x.numel() - 1,)
        d_mid = optimal_score_derivative(c.midpoints, x, mu, sigma)
        off = c.radius * (2 * torch.rand(9, generator=g, dtype=F64) - 1)
        for end in (0, 1):                                   # near mu x_i and near mu x_{i+1}
            y = (mu * x[end:x.numel() - 1 + end, None] + off[None, :])       # (n - 1, 9)
            d_y = optimal_score_derivative(y.reshape(-1), x, mu, sigma).reshape(y.shape)
            gap = (d_y - d_mid[:, None]).abs().min(1).values
            assert bool((gap >= c.lower * (1 - 1e-9) - 1e-9 / sigma ** 4).all())
        # the chain: Cor. 3 = (mu^2 / sigma^4) (Prop. 2 midpoint - Prop. 2 near data)
        want = mu ** 2 / sigma ** 4 * (prop2_midpoint_bound(x, mu).var_lower
                                       - prop2_near_data_bound(x, mu, sigma).var_upper)
        torch.testing.assert_close(c.lower, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("sigma", [0.3, 0.1, 0.03, 0.01])
def test_near_data_lemma_holds(sigma):
    x = _data(7, seed=3)
    mu = math.sqrt(1 - sigma ** 2)
    for radius in (None, 0.0, 0.45 * mu * min_gap(x)):
        bounds = posterior_near_data_lemma(x, mu, sigma, radius=radius)
        offsets = torch.linspace(-bounds.radius, bounds.radius, 41, dtype=F64)
        for xi in x:
            y = mu * xi + offsets
            mean, var = posterior_moments(y, x, mu, sigma)
            assert float((mean - xi).abs().max()) <= bounds.mean_error * (1 + 1e-12) + 1e-15
            assert float(var.max()) <= bounds.var_upper * (1 + 1e-12) + 1e-15


@pytest.mark.parametrize("sigma", [0.3, 0.1, 0.03, 0.01])
def test_midpoint_lemma_holds_is_sharper_than_prop2_and_tight_for_small_noise(sigma):
    x = _data(7, seed=3)
    mu = math.sqrt(1 - sigma ** 2)
    b = posterior_midpoint_lemma(x, mu, sigma)
    xs = torch.sort(x).values
    mean, var = posterior_moments(b.midpoints, x, mu, sigma)
    assert b.midpoints.shape == (6,)
    # rounding: logits of size ~ 1 / sigma^2 carry absolute errors ~ 1e-16 / sigma^2, so the two
    # neighbours' computed weights differ by that much even where they are exactly equal
    slack = 1e-15 / sigma ** 2
    assert bool((var >= b.var_lower * (1 - 1e-12) - slack).all())
    assert bool((var <= b.var_upper * (1 + 1e-12) + slack).all())
    assert bool(((mean - (xs[1:] + xs[:-1]) / 2).abs() <= b.mean_error * (1 + 1e-12) + slack).all())
    assert bool((b.var_lower >= prop2_midpoint_bound(x, mu).var_lower).all())
    if sigma <= 0.01:   # the other points' weight is negligible: Var = g^2 / 4
        torch.testing.assert_close(var, (xs[1:] - xs[:-1]) ** 2 / 4, rtol=1e-6, atol=0)
        torch.testing.assert_close(b.var_lower, var, rtol=1e-6, atol=0)


def test_lemma_validation():
    with pytest.raises(ValueError, match="radius"):
        posterior_near_data_lemma([0.0, 1.0], 1.0, 0.1, radius=0.5)
    with pytest.raises(ValueError, match="Delta"):
        posterior_near_data_lemma([0.0, 1.0, 1.0], 1.0, 0.1)


# ---------------------------------------------------------------------------------------------
# Prop. 6 for every theta, on networks; the conditions of Thm. 8's proof
# ---------------------------------------------------------------------------------------------

def test_prop6_bound_terms_formula_and_stable_version():
    x = _data(5)
    n, m = 5, 40
    lam, R, mu, sigma, A = 0.03, 0.02, 0.9, 0.3, 2.0
    t = prop6_bound_terms(lam, m, R, x, mu, sigma, A)
    assert t.curvature == pytest.approx(lam * m / 4)
    assert t.risk_root == pytest.approx(math.sqrt(R) / 2)
    assert t.risk_A == pytest.approx(A / (math.sqrt(2 * math.pi) * sigma) * max(
        math.sqrt(2 * n * R), (math.sqrt(2 * math.pi * math.e) * A * sigma * n * R) ** (1 / 3)))
    assert t.total == pytest.approx(t.curvature + t.risk_root + t.risk_A)
    # at the edge of stability lambda_max = 2 / (m eta): the stable version
    eta = 2 / (m * lam)
    assert prop6_tv_upper_bound(eta, R, x, mu, sigma, A) == pytest.approx(t.total, rel=1e-14)
    tt = prop6_bound_terms(torch.tensor([lam, -lam], dtype=F64), m, torch.tensor([R, 0.0], dtype=F64),
                           x, mu, sigma, A)
    assert tt.total.shape == (2,) and float(tt.curvature[1]) == pytest.approx(-lam * m / 4)
    with pytest.raises(ValueError, match="risk"):
        prop6_bound_terms(lam, m, -1.0, x, mu, sigma, A)
    with pytest.raises(ValueError, match="width"):
        prop6_bound_terms(lam, 0, R, x, mu, sigma, A)
    with pytest.raises(ValueError, match="sharpness"):
        prop6_bound_terms(float("nan"), m, R, x, mu, sigma, A)


@pytest.mark.parametrize("seed", range(8))
def test_prop6_holds_on_random_theory_networks(seed):
    """Prop. 6 for every theta (exact sharpness, exact risk, exact TV_pi), and the core inequality
    TV_pi(s_theta) <= lambda_max(Gauss-Newton) m / 4 of its proof, on random networks of the
    theory model with kinks inside the data and outer weights up to A."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 12, (1,), generator=g))
    m = int(torch.randint(2, 30, (1,), generator=g))
    x = torch.randn(n, generator=g, dtype=F64) * (0.3 + 2 * float(torch.rand(1, generator=g)))
    sigma = 0.03 + 0.8 * float(torch.rand(1, generator=g))
    mu = math.sqrt(1 - sigma ** 2)
    A = 10 ** (2.5 * float(torch.rand(1, generator=g)))
    net = TwoLayerScoreNet(m, ensemble=4, fixed_inner=True, bound=A, dtype=F64, generator=g)
    with torch.no_grad():
        net.W2.copy_(A * (2 * torch.rand(net.W2.shape, generator=g, dtype=F64) - 1))
        kinks = float(mu * x.min()) + float(mu * (x.max() - x.min())) * torch.rand(
            net.b.shape, generator=g, dtype=F64)
        net.b.copy_(-net.W1[..., 0] * kinks)
    tv = weighted_tv(net, x, mu, sigma)
    assert bool((tv > 0).all())
    lam_gn = gauss_newton_sharpness(net, x, mu, sigma)
    assert bool((tv <= lam_gn * m / 4).all())
    lam = sharpness(net, x, mu, sigma, tol=1e-8, iters=200, generator=g)
    risk = relu_net_risk(net, x, mu, sigma).detach()
    bound = prop6_bound_terms(lam, m, risk, x, mu, sigma, A).total
    assert bool((tv <= bound).all())


def test_sigma_conditions_and_checklist_of_the_theorem_regime():
    """n = 10 equispaced points, Delta = 1, sigma = 0.05 (chapter 7b), against hand computation."""
    x = torch.arange(10, dtype=F64) - 4.5
    sigma = 0.05
    mu = math.sqrt(1 - sigma ** 2)
    lhs, rhs, holds = sigma2_condition(x, mu, sigma, 400.0)
    assert lhs == pytest.approx(math.exp(-mu ** 2 / (32 * sigma ** 2)))
    assert rhs == pytest.approx(math.pi * 1e5 * mu / (2 ** 38 * math.exp(0.5) * 81 * 400.0 ** 4))
    assert holds is False
    assert sigma2_condition(x, math.sqrt(1 - 0.02 ** 2), 0.02, 400.0)[2] is True
    lhs, rhs, holds = sigma4_condition(x, mu, sigma, 2.5)
    assert (lhs, rhs, holds) == (pytest.approx(math.sqrt(2.5) / 2),
                                 pytest.approx(mu * 100 / (2 ** 13 * sigma ** 2)), True)
    rows = theorem_checklist(x, mu, sigma, 400.0, lr=0.2, risk=2.0)
    got = {r["condition"].split(":")[0]: r for r in rows}
    assert len(rows) == 9 and all(set(r) == {"condition", "lhs", "rhs", "holds", "used by"}
                                  for r in rows)
    assert got["sigma <= sigma_1 = mu Delta/8"]["rhs"] == pytest.approx(mu / 8)
    assert got["16 n^3 exp(-mu^2 Delta^2/(4 sigma^2)) <= 1"]["lhs"] == pytest.approx(
        16e3 * math.exp(-mu ** 2 / (4 * sigma ** 2)))
    assert got["eta > 2^12 sigma^2/(mu n^2 Delta)"]["rhs"] == pytest.approx(0.1025, abs=1e-4)
    assert got["R_n(theta) <= 1/(16 n sigma^2)"]["rhs"] == pytest.approx(2.5)
    assert [r["holds"] for r in rows] == [True, True, True, True, False, True, True, True, True]
    assert len(theorem_checklist(x, mu, sigma, 400.0)) == 6
    assert prop7_tv_lower_bound(x, mu, sigma) == pytest.approx(19.5, abs=0.01)
    with pytest.raises(ValueError, match="lr"):
        theorem_checklist(x, mu, sigma, 400.0, lr=0.0)
    with pytest.raises(ValueError, match="risk"):
        sigma4_condition(x, mu, sigma, -1.0)


# ---------------------------------------------------------------------------------------------
# the weight pi
# ---------------------------------------------------------------------------------------------

def _pi_oracle(y, x, mu, sigma):
    """pi(y) from the definitions, point by point (NumPy), and scipy quadrature over xi."""
    v = np.sort(mu * np.asarray(x))
    n = v.size
    if y < v[0] or y > v[-1]:
        return 0.0

    def g(u):
        below, above = v[v < u], v[v > u]
        p_below, p_above = below.size / n, above.size / n
        pi_minus = p_below ** 2 * (u - below).mean() if below.size else 0.0
        pi_plus = p_above ** 2 * (above - u).mean() if above.size else 0.0
        return min(pi_minus, pi_plus)

    def f(xi):
        return g(y - xi) * math.exp(-xi ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)

    lo, hi = -12 * sigma, 12 * sigma
    pts = sorted(p for p in set(y - v) if lo < p < hi)
    return quad(f, lo, hi, points=pts or None, limit=500, epsabs=1e-14, epsrel=1e-12)[0]


@pytest.mark.parametrize("sigma", [0.5, 0.1, 0.02])
def test_tv_weight_matches_its_definition(sigma):
    x = torch.cat([_data(6, seed=4), torch.tensor([0.25, 0.25], dtype=F64)])   # with a duplicate
    mu = 0.9
    v = mu * x
    y = torch.cat([torch.linspace(float(v.min()) - 0.2, float(v.max()) + 0.2, 23, dtype=F64),
                   v, torch.tensor([float(v.min()), float(v.max())], dtype=F64)])
    got = tv_weight(y, x, mu, sigma)
    want = torch.tensor([_pi_oracle(float(t), x.numpy(), mu, sigma) for t in y], dtype=F64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-13)


def test_tv_weight_pieces_match_their_definition():
    x = torch.cat([_data(6, seed=4), torch.tensor([0.25, 0.25], dtype=F64)])   # with a duplicate
    mu = 0.9
    v = np.sort(mu * x.numpy())
    u = torch.cat([torch.linspace(float(v.min()) - 0.3, float(v.max()) + 0.3, 37, dtype=F64),
                   mu * x])
    got_minus, got_plus = tv_weight_pieces(u, x, mu)
    for k, t in enumerate(u.tolist()):
        below, above = v[v < t], v[v > t]
        want_minus = (below.size / v.size) ** 2 * (t - below).mean() if below.size else 0.0
        want_plus = (above.size / v.size) ** 2 * (above - t).mean() if above.size else 0.0
        assert float(got_minus[k]) == pytest.approx(want_minus, rel=1e-12, abs=1e-15)
        assert float(got_plus[k]) == pytest.approx(want_plus, rel=1e-12, abs=1e-15)
    # pi is the Gaussian smoothing of their minimum: at a tiny sigma, the minimum itself (away
    # from the data points, where pi_- and pi_+ jump)
    inside = (u > float(v.min())) & (u < float(v.max()))
    inside[37:] = False
    torch.testing.assert_close(tv_weight(u[inside], x, mu, 1e-7),
                               torch.minimum(got_minus, got_plus)[inside], rtol=1e-5, atol=1e-7)
    assert tv_weight_pieces(torch.zeros(2, 3, dtype=F64), x, mu)[0].shape == (2, 3)
    with pytest.raises(ValueError, match="mu"):
        tv_weight_pieces(u, x, 0.0)
    with pytest.raises(ValueError, match="u"):
        tv_weight_pieces(torch.tensor([float("nan")]), x, mu)


def test_tv_weight_two_points_is_a_blurred_tent():
    """n = 2: min(pi_+, pi_-) = (1/4) min(u - v1, v2 - u)_+ = (1/4)[(u-v1)_+ - 2(u-c)_+ + (u-v2)_+]."""
    x = torch.tensor([-0.4, 1.1], dtype=F64)
    mu, sigma = 0.8, 0.15
    v1, v2 = mu * -0.4, mu * 1.1
    c = (v1 + v2) / 2
    y = torch.linspace(v1, v2, 101, dtype=F64)

    def ramp(a):   # E (y + xi - a)_+ for xi ~ N(0, sigma^2)
        r = (a - y) / sigma
        return sigma * (torch.exp(-r ** 2 / 2) / math.sqrt(2 * math.pi) - r * torch.special.ndtr(-r))

    want = (ramp(v1) - 2 * ramp(c) + ramp(v2)) / 4
    torch.testing.assert_close(tv_weight(y, x, mu, sigma), want, rtol=1e-11, atol=1e-15)
    # small noise: the tent itself, peak mu |x2 - x1| / 8 at the midpoint
    assert float(tv_weight(torch.tensor([c], dtype=F64), x, mu, 1e-6)) == pytest.approx(
        mu * 1.5 / 8, rel=1e-5)


def test_tv_weight_support_shape_and_symmetry():
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0], dtype=F64)
    mu, sigma = 0.9, 0.3
    y = torch.linspace(-3, 3, 601, dtype=F64)
    pi = tv_weight(y, x, mu, sigma)
    assert pi.shape == y.shape and pi.dtype == F64
    assert bool((pi >= 0).all())
    assert bool((pi[(y < -1.8) | (y > 1.8)] == 0).all())
    torch.testing.assert_close(pi, torch.flip(pi, [0]), rtol=1e-10, atol=1e-14)
    assert tv_weight(torch.zeros(2, 3, dtype=F64), x, mu, sigma).shape == (2, 3)
    assert tv_weight(torch.zeros(0), x, mu, sigma).shape == (0,)
    assert tv_weight(torch.zeros(3), x.float(), mu, sigma).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# weighted total variation
# ---------------------------------------------------------------------------------------------

def _net(m, K=None, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    net = TwoLayerScoreNet(m, ensemble=K, dtype=dtype, generator=g)
    with torch.no_grad():
        net.b.copy_(torch.randn(net.b.shape, generator=g, dtype=F64).to(dtype))
    return net


def test_weighted_tv_of_a_net_is_the_kink_sum():
    x = _data(5, seed=5)
    mu, sigma = 0.9, 0.3
    W1 = torch.tensor([[2.0], [-0.5], [0.0], [1.0]], dtype=F64)
    b = torch.tensor([0.2, 0.1, 0.3, 50.0], dtype=F64)      # unit 3: w = 0, unit 4: kink at -50
    W2 = torch.tensor([[1.5, -3.0, 7.0, 2.0]], dtype=F64)
    net = TwoLayerScoreNet.from_parameters(W1, b, W2)
    k = torch.tensor([-0.1, 0.2], dtype=F64)
    want = (3.0 * tv_weight(k[:1], x, mu, sigma) + 1.5 * tv_weight(k[1:], x, mu, sigma)) / 4
    got = weighted_tv(net, x, mu, sigma)
    assert got.shape == ()
    assert float(got) == pytest.approx(float(want), rel=1e-14)


@pytest.mark.parametrize("sigma", [0.4, 0.1])
def test_weighted_tv_of_a_net_matches_the_numerical_method(sigma):
    """Exact kink sum vs the grid method applied to the same net seen as a black-box callable."""
    x = _data(6, seed=6)
    mu = math.sqrt(1 - sigma ** 2)
    net = _net(40, K=3, seed=7)
    exact = weighted_tv(net, x, mu, sigma)
    assert exact.shape == (3,)
    numeric = weighted_tv(lambda y: net(y), x, mu, sigma, grid=3001)
    torch.testing.assert_close(numeric, exact, rtol=1e-5, atol=0)
    for k in range(3):
        single = weighted_tv(net.member(k), x, mu, sigma)
        assert float(single) == pytest.approx(float(exact[k]), rel=1e-12)


def test_second_derivative_of_optimal_score_matches_autograd():
    x = _data(6, seed=8)
    for mu, sigma in ((0.9, 0.4), (0.99, 0.1)):
        y = torch.linspace(-2, 2, 57, dtype=F64, requires_grad=True)
        d1 = optimal_score_derivative(y, x, mu, sigma)
        want = torch.autograd.grad(d1.sum(), y)[0]
        got = _optimal_score_second_derivative(y.detach(), x, mu, sigma)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


@pytest.mark.parametrize("sigma", [0.5, 0.15, 0.05])
def test_weighted_tv_of_optimal_score(sigma):
    x = _data(6, seed=9)
    mu = math.sqrt(1 - sigma ** 2)
    got = weighted_tv("optimal", x, mu, sigma)
    # brute force: a huge uniform grid, trapezoid rule
    v = mu * torch.sort(x).values
    y = torch.linspace(float(v[0]), float(v[-1]), 200001, dtype=F64)
    brute = torch.trapezoid(_optimal_score_second_derivative(y, x, mu, sigma).abs()
                            * tv_weight(y, x, mu, sigma), y)
    assert got == pytest.approx(float(brute), rel=1e-4)
    # the callable route (slopes of s* between nodes) agrees
    numeric = weighted_tv(lambda t: optimal_score(t, x, mu, sigma), x, mu, sigma, grid=8001)
    assert numeric == pytest.approx(got, rel=1e-3)


def test_theorem4_bound_holds_when_its_condition_does():
    x = torch.tensor([-1.3, -0.2, 0.9, 2.1, 3.0], dtype=F64)
    for sigma in (0.1, 0.05, 0.02):
        mu = math.sqrt(1 - sigma ** 2)
        assert tv_lower_bound_condition(x, mu, sigma)[1]
        assert weighted_tv("optimal", x, mu, sigma) >= tv_lower_bound(x, mu, sigma)


def test_weighted_tv_validation():
    x = _data(4)
    with pytest.raises(ValueError, match="f"):
        weighted_tv("learned", x, 0.9, 0.3)
    with pytest.raises(TypeError, match="f"):
        weighted_tv(3.0, x, 0.9, 0.3)
    with pytest.raises(ValueError, match="dim"):
        weighted_tv(TwoLayerScoreNet(3, dim=2), x, 0.9, 0.3)
    with pytest.raises(ValueError, match="f\\(y\\)"):
        weighted_tv(lambda y: y[:3], x, 0.9, 0.3)
    with pytest.raises(TypeError, match="grid"):
        weighted_tv("optimal", x, 0.9, 0.3, grid=10.0)


# ---------------------------------------------------------------------------------------------
# validation shared by every function
# ---------------------------------------------------------------------------------------------

_ONE_D = [
    lambda d, mu, s: theorem_lr_threshold(d, mu, s),
    lambda d, mu, s: theorem_excess_bound(d, mu, s, 1.0),
    lambda d, mu, s: tv_lower_bound(d, mu, s),
    lambda d, mu, s: tv_lower_bound_condition(d, mu, s),
    lambda d, mu, s: optimal_risk_bound(d, mu, s),
    lambda d, mu, s: posterior_near_data_lemma(d, mu, s),
    lambda d, mu, s: posterior_midpoint_lemma(d, mu, s),
    lambda d, mu, s: prop2_near_data_bound(d, mu, s),
    lambda d, mu, s: cor3_derivative_gap(d, mu, s),
    lambda d, mu, s: prop6_tv_upper_bound(0.1, 0.1, d, mu, s, 1.0),
    lambda d, mu, s: prop6_bound_terms(0.1, 10, 0.1, d, mu, s, 1.0),
    lambda d, mu, s: sigma2_condition(d, mu, s, 1.0),
    lambda d, mu, s: sigma4_condition(d, mu, s, 1.0),
    lambda d, mu, s: theorem_checklist(d, mu, s, 1.0),
    lambda d, mu, s: prop7_tv_lower_bound(d, mu, s),
    lambda d, mu, s: prop7_conditions(d, mu, s, 0.1),
    lambda d, mu, s: tv_weight(torch.zeros(3), d, mu, s),
    lambda d, mu, s: weighted_tv("optimal", d, mu, s, grid=11),
]


@pytest.mark.parametrize("fn", _ONE_D)
def test_common_validation(fn):
    x = torch.tensor([0.0, 1.0, 2.5])
    fn(x, 0.9, 0.3)                                        # valid input works
    with pytest.raises(ValueError, match="sigma"):
        fn(x, 0.9, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        fn(x, 0.9, float("inf"))
    with pytest.raises(ValueError, match="mu"):
        fn(x, -0.9, 0.3)
    with pytest.raises(TypeError, match="mu"):
        fn(x, "0.9", 0.3)
    with pytest.raises(ValueError, match="data"):
        fn(torch.tensor([1.0]), 0.9, 0.3)
    with pytest.raises(ValueError, match="data"):
        fn(torch.zeros(4, 2), 0.9, 0.3)
    with pytest.raises(ValueError, match="data"):
        fn(torch.tensor([0.0, float("nan")]), 0.9, 0.3)


def test_specific_argument_validation():
    x = torch.tensor([0.0, 1.0, 2.5])
    with pytest.raises(ValueError, match="mu"):
        prop2_midpoint_bound(x, 0.0)
    with pytest.raises(ValueError, match="data"):
        prop2_midpoint_bound([1.0], 0.9)
    with pytest.raises(ValueError, match="A"):
        theorem_excess_bound(x, 0.9, 0.3, 0.0)
    with pytest.raises(ValueError, match="A"):
        prop6_tv_upper_bound(0.1, 0.1, x, 0.9, 0.3, -1.0)
    with pytest.raises(ValueError, match="lr"):
        prop6_tv_upper_bound(0.0, 0.1, x, 0.9, 0.3, 1.0)
    with pytest.raises(ValueError, match="lr"):
        prop6_tv_upper_bound(torch.tensor([0.1, -0.1]), 0.1, x, 0.9, 0.3, 1.0)
    with pytest.raises(ValueError, match="risk"):
        prop6_tv_upper_bound(0.1, -0.1, x, 0.9, 0.3, 1.0)
    with pytest.raises(ValueError, match="risk"):
        prop7_conditions(x, 0.9, 0.3, float("nan"))
    with pytest.raises(ValueError, match="y"):
        tv_weight(torch.tensor([float("nan")]), x, 0.9, 0.3)
