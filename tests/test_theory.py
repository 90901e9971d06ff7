"""Tests of dsmlib.theory: spacing, thresholds, Prop. 2 bounds, the weight pi and TV_pi.

Oracles (float64): brute-force pairwise distances; the definitions of pi_+/pi_- evaluated
point by point in NumPy and integrated against the Gaussian with scipy.integrate.quad; the
closed form of pi for two points (a tent blurred by a Gaussian); the posterior moments of
dsmlib.optimal for the Prop. 2 bounds; autograd of dsmlib.optimal_score_derivative for s*'';
a net evaluated as a black-box callable on a fine grid for the exact kink sum; dsmlib.dsm_risk
for Cor. 3.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dsmlib.networks import TwoLayerScoreNet
from dsmlib.optimal import optimal_score, optimal_score_derivative, posterior_moments
from dsmlib.risk import dsm_risk
from dsmlib.theory import (_optimal_score_second_derivative, min_gap, optimal_risk_bound,
                           prop2_midpoint_bounds, prop2_near_data_bounds, prop6_tv_upper_bound,
                           prop7_conditions, prop7_tv_lower_bound, theorem_excess_bound,
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
# Prop. 2 (derived constants) against the exact posterior moments
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.3, 0.1, 0.03, 0.01])
def test_prop2_near_data_bounds_hold(sigma):
    x = _data(7, seed=3)
    mu = math.sqrt(1 - sigma ** 2)
    for radius in (None, 0.0, 0.45 * mu * min_gap(x)):
        bounds = prop2_near_data_bounds(x, mu, sigma, radius=radius)
        offsets = torch.linspace(-bounds.radius, bounds.radius, 41, dtype=F64)
        for xi in x:
            y = mu * xi + offsets
            mean, var = posterior_moments(y, x, mu, sigma)
            assert float((mean - xi).abs().max()) <= bounds.mean_error * (1 + 1e-12) + 1e-15
            assert float(var.max()) <= bounds.var_upper * (1 + 1e-12) + 1e-15


@pytest.mark.parametrize("sigma", [0.3, 0.1, 0.03, 0.01])
def test_prop2_midpoint_bounds_hold_and_are_tight_for_small_noise(sigma):
    x = _data(7, seed=3)
    mu = math.sqrt(1 - sigma ** 2)
    b = prop2_midpoint_bounds(x, mu, sigma)
    xs = torch.sort(x).values
    mean, var = posterior_moments(b.midpoints, x, mu, sigma)
    assert b.midpoints.shape == (6,)
    # rounding: logits of size ~ 1 / sigma^2 carry absolute errors ~ 1e-16 / sigma^2, so the two
    # neighbours' computed weights differ by that much even where they are exactly equal
    slack = 1e-15 / sigma ** 2
    assert bool((var >= b.var_lower * (1 - 1e-12) - slack).all())
    assert bool((var <= b.var_upper * (1 + 1e-12) + slack).all())
    assert bool(((mean - (xs[1:] + xs[:-1]) / 2).abs() <= b.mean_error * (1 + 1e-12) + slack).all())
    if sigma <= 0.01:   # the other points' weight is negligible: Var = g^2 / 4
        torch.testing.assert_close(var, (xs[1:] - xs[:-1]) ** 2 / 4, rtol=1e-6, atol=0)


def test_prop2_validation():
    with pytest.raises(ValueError, match="radius"):
        prop2_near_data_bounds([0.0, 1.0], 1.0, 0.1, radius=0.5)
    with pytest.raises(ValueError, match="Delta"):
        prop2_near_data_bounds([0.0, 1.0, 1.0], 1.0, 0.1)


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
    lambda d, mu, s: prop2_near_data_bounds(d, mu, s),
    lambda d, mu, s: prop2_midpoint_bounds(d, mu, s),
    lambda d, mu, s: prop6_tv_upper_bound(0.1, 0.1, d, mu, s, 1.0),
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
