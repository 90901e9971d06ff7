"""DSM risk and excess risk against closed forms (Gaussian integrals) and Monte Carlo."""
import math

import pytest
import torch

import dsmlib as dsm

F64 = torch.float64
DATA = torch.tensor([-1.2, -0.1, 0.7, 1.9], dtype=F64)


def test_quadrature_nodes_integrate_moments():
    z, w = dsm.noise_nodes(801)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-14)
    assert (w * z ** 2).sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (w * z ** 4).sum().item() == pytest.approx(3.0, abs=1e-10)


def test_risk_of_linear_score_closed_form():
    # s(y) = a y + c: R = (1/n) sum_i E (a(mu x_i + sigma z) + c + z/sigma)^2
    #                   = (1/n) sum_i (a mu x_i + c)^2 + (a sigma + 1/sigma)^2
    mu, sigma, a, c = 0.9, 0.4, -2.0, 0.3
    r = dsm.dsm_risk(lambda y: a * y + c, DATA, mu, sigma)
    exact = ((a * mu * DATA + c) ** 2).mean() + (a * sigma + 1 / sigma) ** 2
    assert r.item() == pytest.approx(exact.item(), rel=1e-12)


def test_risk_of_ramp_closed_form():
    # s(y) = relu(y): E relu(m + s z)^2 = (m^2 + s^2) Phi(m/s) + m s phi(m/s); E z relu(m+sz) = s Phi(m/s)
    mu, sigma = 0.9, 0.4
    m = mu * DATA
    Phi = 0.5 * (1 + torch.erf(m / sigma / math.sqrt(2)))
    phi = torch.exp(-0.5 * (m / sigma) ** 2) / math.sqrt(2 * math.pi)
    e_s2 = (m ** 2 + sigma ** 2) * Phi + m * sigma * phi
    e_zs = sigma * Phi
    exact = (e_s2 + 2 * e_zs / sigma).mean() + 1 / sigma ** 2
    r = dsm.dsm_risk(torch.relu, DATA, mu, sigma, num_nodes=4001)
    assert r.item() == pytest.approx(exact.item(), rel=1e-6)


@pytest.mark.parametrize("sigma", [0.05, 0.31, 0.57, 2.0])
def test_optimal_is_minimal_and_excess_identity(sigma):
    mu = 0.95
    r_opt = dsm.dsm_risk("optimal", DATA, mu, sigma)
    others = [lambda y: -y / sigma ** 2, lambda y: torch.zeros_like(y),
              lambda y: dsm.optimal_score(y, DATA, mu, 1.3 * sigma),
              lambda y: torch.tanh(y) - y]
    for s in others:
        r = dsm.dsm_risk(s, DATA, mu, sigma)
        ex = dsm.excess_risk(s, DATA, mu, sigma)
        assert r.item() >= r_opt.item()
        assert (r - r_opt).item() == pytest.approx(ex.item(), rel=1e-6, abs=1e-8 / sigma ** 2)
    assert dsm.excess_risk("optimal", DATA, mu, sigma).item() == 0.0


def test_optimal_risk_vanishes_for_small_noise():
    # Cor. 3: R_n(s*) -> 0 as sigma -> 0 for separated data
    r = [dsm.dsm_risk("optimal", DATA, 0.95, s).item() for s in (0.3, 0.1, 0.05)]
    assert r[0] > r[1] > r[2] and r[2] < 1e-6


def test_ensemble_axis():
    f = lambda y: torch.stack([y, 2 * y, -y])
    r = dsm.dsm_risk(f, DATA, 0.9, 0.4)
    assert r.shape == (3,)
    assert r[1].item() == pytest.approx(dsm.dsm_risk(lambda y: 2 * y, DATA, 0.9, 0.4).item())


def test_monte_carlo_nd_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(5, 3, generator=g, dtype=F64)
    mu, sigma, a = 0.8, 0.5, -1.5
    r = dsm.dsm_risk(lambda y: a * y, data, mu, sigma, num_samples=20000,
                     generator=torch.Generator().manual_seed(1))
    exact = (a * mu) ** 2 * (data ** 2).sum(1).mean() + 3 * (a * sigma + 1 / sigma) ** 2
    assert r.item() == pytest.approx(exact.item(), rel=5e-3)
    # deterministic with the same generator
    r2 = dsm.dsm_risk(lambda y: a * y, data, mu, sigma, num_samples=20000,
                      generator=torch.Generator().manual_seed(1))
    assert torch.equal(r, r2)


def test_monte_carlo_excess_identity_nd():
    g = torch.Generator().manual_seed(2)
    data = torch.randn(6, 2, generator=g, dtype=F64)
    mu, sigma = 0.9, 0.3
    f = lambda y: -y / sigma ** 2
    gen = lambda: torch.Generator().manual_seed(7)
    diff = dsm.dsm_risk(f, data, mu, sigma, generator=gen()) - dsm.dsm_risk("optimal", data, mu, sigma, generator=gen())
    ex = dsm.excess_risk(f, data, mu, sigma, generator=gen())
    assert diff.item() == pytest.approx(ex.item(), rel=0.05)


def test_bad_inputs():
    with pytest.raises(TypeError, match="score_fn"):
        dsm.dsm_risk(3.0, DATA, 0.9, 0.3)
    with pytest.raises(ValueError, match="score_fn"):
        dsm.dsm_risk("best", DATA, 0.9, 0.3)
    with pytest.raises(ValueError, match="shape"):
        dsm.dsm_risk(lambda y: y[:3], DATA, 0.9, 0.3)
    with pytest.raises(ValueError, match="sigma"):
        dsm.dsm_risk("optimal", DATA, 0.9, 0.0)
    with pytest.raises(ValueError, match="num_samples"):
        dsm.dsm_risk("optimal", DATA, 0.9, 0.3, num_samples=10)
    with pytest.raises(ValueError, match="num_nodes"):
        dsm.dsm_risk("optimal", DATA, 0.9, 0.3, num_nodes=1)
    with pytest.raises(FloatingPointError, match="NaN"):
        dsm.dsm_risk(lambda y: y * float("nan"), DATA, 0.9, 0.3)
    with pytest.raises(TypeError, match="generator"):
        dsm.dsm_risk("optimal", torch.zeros(3, 2), 0.9, 0.3, generator=1)


@pytest.mark.parametrize("sigma", [1e-4, 1e-2, 10.0])
def test_risks_finite_and_accurate_at_extreme_noise(sigma):
    # float64 oracle: for the score -y/sigma^2 + c the risk is closed form, at any sigma
    c = 0.7
    f = lambda y: -y / sigma ** 2 + c
    exact = ((-0.95 * DATA / sigma ** 2 + c) ** 2).mean()       # (a sigma + 1/sigma)^2 = 0 here
    r = dsm.dsm_risk(f, DATA, 0.95, sigma)
    assert r.item() == pytest.approx(exact.item(), rel=1e-9)
    ex = dsm.excess_risk(f, DATA, 0.95, sigma)
    r_opt = dsm.dsm_risk("optimal", DATA, 0.95, sigma)
    assert torch.isfinite(ex) and torch.isfinite(r_opt)
    assert (r - r_opt).item() == pytest.approx(ex.item(), rel=1e-6)


def test_excess_risk_in_high_dimension():
    g = torch.Generator().manual_seed(3)
    data = torch.randn(10, 1000, generator=g, dtype=F64)
    ex = dsm.excess_risk(lambda y: torch.zeros_like(y), data, 0.9, 0.5, num_samples=50,
                         generator=torch.Generator().manual_seed(4))
    # the zero score's excess risk is E|s*|^2 <= E|(mu E[W] - Y)/sigma^2|^2, finite and positive
    assert torch.isfinite(ex) and ex.item() > 0


# ---------------------------------------------------------------------------------------------
# per-member data and noise levels (an ensemble trained on K data sets)
# ---------------------------------------------------------------------------------------------

def _member_setup(d=1):
    import dsmlib as dsm
    g = torch.Generator().manual_seed(3)
    X = torch.randn(3, 12, d, generator=g, dtype=torch.float64)
    net = dsm.TwoLayerScoreNet(30, d, ensemble=3, generator=dsm.make_generators([1, 2, 3]),
                               dtype=torch.float64)
    with torch.no_grad():
        net.b.normal_(generator=g)
    mus = torch.tensor([0.95, 0.9, 0.8], dtype=torch.float64)
    return dsm, X, net, mus, (1 - mus ** 2).sqrt()


@pytest.mark.parametrize("fn_name", ["excess_risk", "dsm_risk"])
def test_per_member_risk_equals_member_by_member(fn_name):
    dsm, X, net, mus, sig = _member_setup()
    fn = getattr(dsm, fn_name)
    got = fn(net, X[..., 0], mus, sig)                      # data (K, n) for 1-D nets
    expect = torch.stack([fn(net.member(k), X[k, :, 0], float(mus[k]), float(sig[k]))
                          for k in range(3)])
    torch.testing.assert_close(got, expect, rtol=1e-13, atol=1e-13)
    # a callable gets (K, N, 1) for data (K, n, 1), and s* per member
    zero = fn(lambda y: torch.zeros_like(y), X, mus, sig)
    ref = torch.stack([fn(lambda y: torch.zeros_like(y), X[k, :, 0], float(mus[k]), float(sig[k]))
                       for k in range(3)])
    torch.testing.assert_close(zero, ref, rtol=1e-13, atol=1e-13)


def test_per_member_optimal_and_shared_data_with_member_noise_levels():
    dsm, X, net, mus, sig = _member_setup()
    opt = dsm.dsm_risk("optimal", X, mus, sig)
    ref = [float(dsm.dsm_risk("optimal", X[k, :, 0], float(mus[k]), float(sig[k])))
           for k in range(3)]
    torch.testing.assert_close(opt, torch.tensor(ref, dtype=torch.float64), rtol=1e-13, atol=0)
    assert float(dsm.excess_risk("optimal", X, mus, sig).abs().max()) == 0.0
    shared = dsm.excess_risk(net, X[0, :, 0], mus, sig)     # one data set, K noise levels
    ref = torch.stack([dsm.excess_risk(net.member(k), X[0, :, 0], float(mus[k]), float(sig[k]))
                       for k in range(3)])
    torch.testing.assert_close(shared, ref, rtol=1e-13, atol=1e-13)


def test_per_member_monte_carlo_in_two_dimensions():
    dsm, X, net, mus, sig = _member_setup(d=2)
    got = dsm.excess_risk(net, X, mus, sig, num_samples=200,
                          generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, 12, 200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expect = []
    for k in range(3):                     # oracle: the same draws, evaluated by hand
        y = (mus[k] * X[k][:, None, :] + sig[k] * z[k]).reshape(-1, 2)
        diff = net.member(k)(y) - dsm.optimal_score(y, X[k], float(mus[k]), float(sig[k]))
        expect.append((diff ** 2).sum(-1).mean())
    torch.testing.assert_close(got, torch.stack(expect).detach(), rtol=1e-12, atol=1e-12)


def test_per_member_refusals():
    dsm, X, net, mus, sig = _member_setup()
    with pytest.raises(ValueError, match="ensemble"):
        dsm.excess_risk(net.member(0), X[..., 0], 0.9, 0.4)
    with pytest.raises(ValueError, match="data sets"):
        dsm.excess_risk(net, X[:2, :, 0], 0.9, 0.4)
    with pytest.raises(ValueError, match="mu"):
        dsm.excess_risk(net, X[..., 0], mus[:2], sig)
    with pytest.raises(ValueError, match="sigma"):
        dsm.excess_risk(net, X[..., 0], mus, -sig)
    with pytest.raises(ValueError, match="score_fn returned shape"):   # (K, N, 1) in, (K, N) out
        dsm.excess_risk(lambda y: y.sum(-1), X, mus, sig)
