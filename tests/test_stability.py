"""Tests of dsmlib.stability: the closed-form risk, its derivatives, the sharpness.

Oracles (float64): adaptive quadrature (scipy.integrate.quad, split at the kinks) of the same
integral; central finite differences of the function and of its gradient; the eigenvalues of the
dense ``torch.func.hessian``; members computed one by one.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dsmlib.networks import TwoLayerScoreNet
from dsmlib.risk import noise_nodes
from dsmlib.stability import _lanczos, relu_net_risk, sharpness, stability_threshold

F64 = torch.float64
# torch.func.hessian calls torch.jit.script internally, which warns on this torch version
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _params(m, K=None, seed=0, b_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    lead = () if K is None else (K,)
    W1 = torch.randn(*lead, m, 1, generator=g, dtype=F64)
    b = b_scale * torch.randn(*lead, m, generator=g, dtype=F64)
    W2 = 2.0 * torch.randn(*lead, 1, m, generator=g, dtype=F64)
    return W1, b, W2


def _data(n=5, seed=1):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _quad_risk(W1, b, W2, x, mu, sigma):
    """(1/n) sum_i ∫ (s(y) + (y - mu x_i)/sigma^2)^2 N(y; mu x_i, sigma^2) dy, adaptive quadrature."""
    w, bb, a = W1[:, 0].numpy(), b.numpy(), W2[0].numpy()
    m = w.size

    def s(y):
        return float((a * np.maximum(w * y + bb, 0.0)).sum() / m)

    kinks = [-bj / wj for wj, bj in zip(w, bb) if abs(wj) > 1e-200]
    total = 0.0
    for xi in x.numpy():
        c = mu * xi

        def f(y):
            return (s(y) + (y - c) / sigma ** 2) ** 2 * math.exp(-(y - c) ** 2 / (2 * sigma ** 2)) \
                / (math.sqrt(2 * math.pi) * sigma)

        lo, hi = c - 15 * sigma, c + 15 * sigma
        pts = sorted(k for k in kinks if lo < k < hi)
        total += quad(f, lo, hi, points=pts or None, limit=500, epsabs=1e-13, epsrel=1e-12)[0]
    return total / len(x)


def _flat_fn(m, x, mu, sigma, which=("W1", "b", "W2"), fixed=None):
    """risk as a function of the flattened trained parameters (the layout of sharpness)."""
    def fn(flat):
        parts = dict(fixed or {})
        sizes = {"W1": (m, 1), "b": (m,), "W2": (1, m)}
        i = 0
        for k in which:
            size = math.prod(sizes[k])
            parts[k] = flat[i:i + size].reshape(sizes[k])
            i += size
        return relu_net_risk(parts, x, mu, sigma)
    return fn


# ---------------------------------------------------------------------------------------------
# the closed-form risk
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mu,sigma", [(0.95, 0.31), (0.81, 0.57), (0.999, 0.05)])
def test_risk_matches_quadrature(mu, sigma):
    W1, b, W2 = _params(7)
    x = _data()
    got = relu_net_risk((W1, b, W2), x, mu, sigma)
    assert got.shape == () and got.dtype == F64
    assert float(got) == pytest.approx(_quad_risk(W1, b, W2, x, mu, sigma), rel=1e-10, abs=1e-10)


def test_risk_special_units_zero_weight_and_ties():
    """A unit with w = 0 (a constant), tied kinks and kinks far in the tails."""
    W1, b, W2 = _params(6)
    W1[0, 0] = 0.0
    b[0] = 0.7                                     # constant a_0 * 0.7 / m
    W1[2, 0], b[2] = -W1[1, 0], -b[1]             # same kink as unit 1, opposite side
    W1[3, 0], b[3] = 1e-3, 2.0                    # kink at -2000: far in the left tail
    x, mu, sigma = _data(), 0.9, 0.4
    got = relu_net_risk((W1, b, W2), x, mu, sigma)
    assert float(got) == pytest.approx(_quad_risk(W1, b, W2, x, mu, sigma), rel=1e-10)
    # a denormal w: the kink -b/w overflows, its derivative b/w^2 too; nothing may become NaN
    W1[4, 0] = 1e-310
    assert float(relu_net_risk((W1, b, W2), x, mu, sigma)) == pytest.approx(
        _quad_risk(W1, b, W2, x, mu, sigma), rel=1e-10)
    assert math.isfinite(float(sharpness((W1, b, W2), x, mu, sigma)))


def test_risk_of_zero_net_is_one_over_sigma_squared():
    W1, b, W2 = _params(4)
    assert float(relu_net_risk((W1, b, 0 * W2), _data(), 0.8, 0.6)) == pytest.approx(1 / 0.36, rel=1e-14)


def test_risk_ensemble_matches_members_and_net():
    K, m = 4, 9
    W1, b, W2 = _params(m, K=K)
    x = _data(6)
    batch = relu_net_risk((W1, b, W2), x, 0.9, 0.4)
    assert batch.shape == (K,)
    for k in range(K):
        assert float(batch[k]) == pytest.approx(float(relu_net_risk((W1[k], b[k], W2[k]), x, 0.9, 0.4)),
                                                rel=1e-13)
    net = TwoLayerScoreNet.from_parameters(W1, b, W2)
    torch.testing.assert_close(relu_net_risk(net, x, 0.9, 0.4), batch, rtol=1e-14, atol=0)
    as_dict = relu_net_risk({"W1": W1, "b": b, "W2": W2}, x, 0.9, 0.4)
    torch.testing.assert_close(as_dict, batch, rtol=0, atol=0)


def test_risk_float32_keeps_float32_and_agrees():
    W1, b, W2 = _params(50, K=2)
    x = _data(8)
    r64 = relu_net_risk((W1, b, W2), x, 0.9, 0.3)
    r32 = relu_net_risk(tuple(p.float() for p in (W1, b, W2)), x.float(), 0.9, 0.3)
    assert r32.dtype == torch.float32
    torch.testing.assert_close(r32.double(), r64, rtol=1e-5, atol=0)


def _params_with_flat_units(m):
    """Random units plus two with w = 0 (always on: b > 0; always off: b < 0), where the expected
    risk is still smooth in (w, b)."""
    W1, b, W2 = _params(m)
    W1[0, 0], b[0] = 0.0, 0.7
    W1[1, 0], b[1] = 0.0, -0.3
    return W1, b, W2


def test_gradient_matches_finite_differences():
    m = 6
    W1, b, W2 = _params_with_flat_units(m)
    x, mu, sigma = _data(), 0.9, 0.4
    fn = _flat_fn(m, x, mu, sigma)
    flat = torch.cat([W1.reshape(-1), b, W2.reshape(-1)]).requires_grad_()
    grad = torch.autograd.grad(fn(flat), flat)[0]
    h = 1e-6
    fd = torch.stack([(fn(flat.detach() + h * e) - fn(flat.detach() - h * e)) / (2 * h)
                      for e in torch.eye(flat.numel(), dtype=F64)])
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_hessian_matches_finite_differences_of_gradient():
    m = 6
    W1, b, W2 = _params_with_flat_units(m)
    x, mu, sigma = _data(), 0.9, 0.4
    fn = _flat_fn(m, x, mu, sigma)
    flat = torch.cat([W1.reshape(-1), b, W2.reshape(-1)])
    H = torch.func.hessian(fn)(flat)
    torch.testing.assert_close(H, H.T, rtol=1e-12, atol=1e-12)

    def grad(theta):
        theta = theta.clone().requires_grad_()
        return torch.autograd.grad(fn(theta), theta)[0]

    h = 1e-5
    fd = torch.stack([(grad(flat + h * e) - grad(flat - h * e)) / (2 * h)
                      for e in torch.eye(flat.numel(), dtype=F64)], 1)
    torch.testing.assert_close(H, fd, rtol=1e-6, atol=1e-7)


def test_fixed_node_quadrature_hessian_misses_the_dirac_term():
    """Autograd through quadrature nodes gets the gradient right but drops E[g s''] from the Hessian.

    The missing part of the (b_l, b_l) entry is (2/n) sum_i (a_l / (m |w_l|)) p_i(k_l) g_i(k_l),
    with g_i(y) = s(y) + (y - mu x_i) / sigma^2 and p_i the N(mu x_i, sigma^2) density.
    """
    m = 5
    W1, b, W2 = _params(m, b_scale=0.3)
    x, mu, sigma = _data(4), 0.9, 0.5
    z, wq = noise_nodes(40001, dtype=F64)

    def quad_risk(bb):
        y = mu * x[:, None] + sigma * z[None, :]                               # (n, k)
        s = (W2[0] * torch.relu(W1[:, 0] * y[..., None] + bb)).sum(-1) / m
        return ((s + z / sigma) ** 2 * wq).sum(1).mean()

    def exact_risk(bb):
        return relu_net_risk((W1, bb, W2), x, mu, sigma)

    g_quad = torch.func.grad(quad_risk)(b)
    g_exact = torch.func.grad(exact_risk)(b)
    torch.testing.assert_close(g_quad, g_exact, rtol=1e-3, atol=1e-5)

    H_quad = torch.func.hessian(quad_risk)(b)
    H_exact = torch.func.hessian(exact_risk)(b)
    w, a = W1[:, 0], W2[0]
    k = -b / w
    s_k = (a * torch.relu(w * k[:, None] + b)).sum(-1) / m                     # s at each kink
    dens = torch.exp(-(k[:, None] - mu * x) ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
    g_k = s_k[:, None] + (k[:, None] - mu * x) / sigma ** 2
    dirac = 2 * (a / (m * w.abs()) * (dens * g_k).mean(1))
    assert float(dirac.abs().max()) > 0.1                                      # the term matters
    torch.testing.assert_close(torch.diagonal(H_exact - H_quad), dirac, rtol=2e-3, atol=2e-4)
    off = (H_exact - H_quad) - torch.diag(torch.diagonal(H_exact - H_quad))
    assert float(off.abs().max()) < 2e-4


def test_float32_hessian_vector_products_are_accurate():
    """The kink-by-kink form keeps float32 HVPs to ~1e-6 at m = 300 (no catastrophic cancellation)."""
    W1, b, W2 = _params(300, K=2, b_scale=0.5)
    x = _data(20)
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=F64) for p in (W1, b, W2)]

    def hvp(dtype):
        ps = [p.to(dtype).requires_grad_() for p in (W1, b, W2)]
        grads = torch.autograd.grad(relu_net_risk(tuple(ps), x, 0.95, 0.31).sum(), ps, create_graph=True)
        return torch.autograd.grad(grads, ps, grad_outputs=[u.to(dtype) for u in v])

    for h64, h32 in zip(hvp(F64), hvp(torch.float32)):
        assert float((h64 - h32.double()).norm() / h64.norm()) < 1e-5


def test_risk_validation():
    W1, b, W2 = _params(3)
    x = _data()
    with pytest.raises(ValueError, match="sigma"):
        relu_net_risk((W1, b, W2), x, 0.9, 0.0)
    with pytest.raises(ValueError, match="mu"):
        relu_net_risk((W1, b, W2), x, -1.0, 0.3)
    with pytest.raises(ValueError, match="sigma"):
        relu_net_risk((W1, b, W2), x, 0.9, float("nan"))
    with pytest.raises(ValueError, match="data"):
        relu_net_risk((W1, b, W2), torch.tensor([0.0, float("inf")]), 0.9, 0.3)
    with pytest.raises(ValueError, match="data"):
        relu_net_risk((W1, b, W2), torch.randn(4, 2, dtype=F64), 0.9, 0.3)
    with pytest.raises(ValueError, match="shapes"):
        relu_net_risk((W1, b[:2], W2), x, 0.9, 0.3)
    with pytest.raises(TypeError, match="net_or_params"):
        relu_net_risk("net", x, 0.9, 0.3)
    with pytest.raises(NotImplementedError, match="1-D"):
        relu_net_risk(TwoLayerScoreNet(4, dim=2), torch.randn(5, 2), 0.9, 0.3)


# ---------------------------------------------------------------------------------------------
# sharpness
# ---------------------------------------------------------------------------------------------

def _dense_top_eig(net, x, mu, sigma):
    m = net.width
    if net.fixed_inner:
        which, fixed = ("W2", "b"), {"W1": net.W1.detach()}
        flat = torch.cat([net.W2.detach().reshape(-1), net.b.detach()])
    else:
        which, fixed = ("W1", "b", "W2"), None
        flat = torch.cat([net.W1.detach().reshape(-1), net.b.detach(), net.W2.detach().reshape(-1)])
    H = torch.func.hessian(_flat_fn(m, x, mu, sigma, which, fixed))(flat)
    evals, evecs = torch.linalg.eigh(H)
    return evals[-1], H


def _theory_net(m, K=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = TwoLayerScoreNet(m, ensemble=K, fixed_inner=True, bound=3.0, dtype=F64, generator=g)
    with torch.no_grad():
        net.b.copy_(torch.randn(net.b.shape, generator=g, dtype=F64))
    return net


def _experiment_net(m, K=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = TwoLayerScoreNet(m, ensemble=K, dtype=F64, generator=g)
    with torch.no_grad():
        net.b.copy_(torch.randn(net.b.shape, generator=g, dtype=F64))
    return net


@pytest.mark.parametrize("make", [_theory_net, _experiment_net])
@pytest.mark.parametrize("mu,sigma", [(0.95, 0.31), (0.81, 0.57)])
def test_sharpness_matches_dense_hessian(make, mu, sigma):
    x = _data(6)
    for m in (5, 8):
        net = make(m)
        top, H = _dense_top_eig(net, x, mu, sigma)
        lam, vec = sharpness(net, x, mu, sigma, generator=torch.Generator().manual_seed(0),
                             return_vector=True, tol=1e-10)
        assert lam.shape == () and vec.shape == (H.shape[0],)
        assert float(lam) == pytest.approx(float(top), rel=1e-9)
        torch.testing.assert_close(H @ vec, lam * vec, rtol=0, atol=1e-7 * float(top))


def test_sharpness_ensemble_matches_members():
    K = 4
    x = _data(6)
    for net in (_theory_net(7, K=K, seed=2), _experiment_net(7, K=K, seed=3)):
        lam = sharpness(net, x, 0.9, 0.4, generator=torch.Generator().manual_seed(0))
        assert lam.shape == (K,)
        for k in range(K):
            one = net.member(k)
            assert float(lam[k]) == pytest.approx(float(_dense_top_eig(one, x, 0.9, 0.4)[0]), rel=1e-8)
            assert float(lam[k]) == pytest.approx(float(sharpness(one, x, 0.9, 0.4)), rel=1e-8)


def test_sharpness_wide_ensemble_agrees_with_single_members():
    """Lanczos (not a dense Hessian) at m = 200: ensemble and single runs agree; warm start works."""
    net = _experiment_net(200, K=3, seed=4)
    x = _data(20)
    lam, vec = sharpness(net, x, 0.95, 0.31, return_vector=True,
                         generator=torch.Generator().manual_seed(1))
    for k in (0, 2):
        single = sharpness(net.member(k), x, 0.95, 0.31, generator=torch.Generator().manual_seed(5))
        assert float(single) == pytest.approx(float(lam[k]), rel=1e-6)
    warm = sharpness(net, x, 0.95, 0.31, init=vec, iters=3)
    torch.testing.assert_close(warm, lam, rtol=1e-8, atol=0)
    with pytest.warns(RuntimeWarning, match="iters"):
        cold = sharpness(net, x, 0.95, 0.31, iters=2, generator=torch.Generator().manual_seed(2))
    assert bool((cold <= lam * (1 + 1e-12)).all())             # Ritz values bound from below


def test_sharpness_float32_net():
    net = _experiment_net(60, K=2, seed=5)
    x = _data(10)
    lam64 = sharpness(net, x, 0.9, 0.4)
    net32 = TwoLayerScoreNet.from_parameters(net.W1.float(), net.b.float(), net.W2.float())
    lam32 = sharpness(net32, x.float(), 0.9, 0.4)
    assert lam32.dtype == torch.float32
    torch.testing.assert_close(lam32.double(), lam64, rtol=1e-4, atol=0)


def test_sharpness_wrt_and_tuple_input():
    net = _theory_net(5)
    x = _data(5)
    a = sharpness(net, x, 0.9, 0.4)
    b = sharpness((net.W1, net.b, net.W2), x, 0.9, 0.4, wrt=("W2", "b"))
    assert float(a) == pytest.approx(float(b), rel=1e-10)
    # only the output layer: the risk is quadratic in W2, the Hessian (2/n) sum E[phi phi^T] / m^2
    only_a = sharpness(net, x, 0.9, 0.4, wrt="W2")
    assert 0 < float(only_a) <= float(a) * (1 + 1e-10)


def test_sharpness_does_not_modify_net():
    net = _experiment_net(6)
    before = [p.detach().clone() for p in (net.W1, net.b, net.W2)]
    sharpness(net, _data(), 0.9, 0.4)
    for p, q in zip(before, (net.W1, net.b, net.W2)):
        assert torch.equal(p, q.detach())
    assert all(p.grad is None for p in net.parameters())


def test_lanczos_restarts_after_an_invariant_subspace():
    """Start in span(e1, e2), invariant under diag(1, 2, 3, 10): the fresh direction finds 10."""
    D = torch.tensor([[1.0, 2.0, 3.0, 10.0]], dtype=F64)
    v0 = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=F64)
    theta, y, done = _lanczos(lambda v: D * v, v0, 10, 1e-12, torch.Generator().manual_seed(0))
    assert done
    assert float(theta[0]) == pytest.approx(10.0, rel=1e-12)
    assert float(y[0, 3].abs()) == pytest.approx(1.0, rel=1e-10)


def test_sharpness_validation():
    net = _theory_net(4)
    x = _data()
    with pytest.raises(ValueError, match="sigma"):
        sharpness(net, x, 0.9, -0.1)
    with pytest.raises(ValueError, match="init"):
        sharpness(net, x, 0.9, 0.4, init=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="init"):
        sharpness(net, x, 0.9, 0.4, init=torch.zeros(8, dtype=F64))
    with pytest.raises(ValueError, match="wrt"):
        sharpness(net, x, 0.9, 0.4, wrt=("W3",))
    with pytest.raises(TypeError, match="iters"):
        sharpness(net, x, 0.9, 0.4, iters=2.5)
    with pytest.raises(ValueError, match="tol"):
        sharpness(net, x, 0.9, 0.4, tol=0)
    with pytest.raises(TypeError, match="generator"):
        sharpness(net, x, 0.9, 0.4, generator=0)
    with pytest.raises(NotImplementedError, match="1-D"):
        sharpness(TwoLayerScoreNet(4, dim=3), torch.randn(5, 3), 0.9, 0.4)


def test_stability_threshold():
    assert stability_threshold(1000, 0.05) == pytest.approx(2 / 50)
    lrs = torch.tensor([0.5, 0.1, 0.05, 0.01], dtype=F64)
    torch.testing.assert_close(stability_threshold(1000, lrs), 2 / (1000 * lrs))
    with pytest.raises(ValueError, match="lr"):
        stability_threshold(10, 0.0)
    with pytest.raises(ValueError, match="lr"):
        stability_threshold(10, torch.tensor([0.1, -1.0]))
    with pytest.raises(TypeError, match="width"):
        stability_threshold(10.0, 0.1)
    with pytest.raises(ValueError, match="width"):
        stability_threshold(0, 0.1)


def test_relu_net_risk_and_sharpness_with_per_member_data():
    import dsmlib as dsm
    g = torch.Generator().manual_seed(5)
    X = torch.randn(3, 10, generator=g, dtype=torch.float64)
    net = dsm.TwoLayerScoreNet(25, ensemble=3, generator=dsm.make_generators([1, 2, 3]),
                               dtype=torch.float64)
    with torch.no_grad():
        net.b.normal_(generator=g)
    mus = torch.tensor([0.95, 0.9, 0.8], dtype=torch.float64)
    sig = (1 - mus ** 2).sqrt()
    risk = dsm.relu_net_risk(net, X, mus, sig)
    ref = torch.stack([dsm.relu_net_risk(net.member(k), X[k], float(mus[k]), float(sig[k]))
                       for k in range(3)])
    torch.testing.assert_close(risk, ref, rtol=1e-14, atol=1e-14)
    sharp = dsm.sharpness(net, X, mus, sig, generator=torch.Generator().manual_seed(0))
    for k in range(3):   # oracle: the dense Hessian of member k's exact risk
        one = net.member(k)
        theta = torch.cat([p.detach().reshape(-1) for p in (one.W1, one.b, one.W2)])
        m = one.width

        def f(th):
            return dsm.relu_net_risk((th[:m, None], th[m:2 * m], th[None, 2 * m:]), X[k],
                                     float(mus[k]), float(sig[k]))
        top = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, theta))[-1]
        torch.testing.assert_close(sharp[k], top, rtol=1e-5, atol=1e-10)
    with pytest.raises(ValueError, match="ensemble"):
        dsm.relu_net_risk(net.member(0), X, 0.9, 0.4)
    with pytest.raises(ValueError, match="sigma"):
        dsm.relu_net_risk(net, X, mus, sig[:2])
