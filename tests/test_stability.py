"""Tests of dsmlib.stability (the closed-form risk, its derivatives, the sharpness),
dsmlib.gauss_newton (the Gauss-Newton matrix) and dsmlib.gradient_descent (full-batch GD, the
perturbation test).

Oracles (float64): adaptive quadrature (scipy.integrate.quad, split at the kinks) of the same
integral; central finite differences of the function and of its gradient; the eigenvalues of the
dense ``torch.func.hessian``; members computed one by one. The Gauss-Newton matrix: autograd
Jacobians of the network at Gauss-Legendre nodes on every segment between kinks (a dense float64
quadrature, exact up to rounding for the piecewise-polynomial integrand) and the exact Hessian,
which it must equal outside the within-unit entries that hold the second derivatives of ``s``.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dsmlib.networks import TwoLayerScoreNet
from dsmlib.risk import noise_nodes
from dsmlib.gauss_newton import gauss_newton_matrix, gauss_newton_sharpness
from dsmlib.gradient_descent import full_batch_gd, perturbation_test
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


# ---------------------------------------------------------------------------------------------
# the Gauss-Newton part of the Hessian
# ---------------------------------------------------------------------------------------------

def _gn_quadrature(net, x, mu, sigma, nodes=40):
    """(2/n) sum_i E[J J^T] with J = autograd Jacobian of s_theta(y) in the trained parameters,
    by Gauss-Legendre quadrature on each segment between kinks over mu x_i +- 14 sigma."""
    W1, b, W2 = (p.detach() for p in (net.W1, net.b, net.W2))
    names = ("W2", "b") if net.fixed_inner else ("W1", "b", "W2")
    base = {"W1": W1, "b": b, "W2": W2}
    flat = torch.cat([base[k].reshape(-1) for k in names])
    shapes = [base[k].shape for k in names]

    def s_of(theta, y):
        parts, i = dict(base), 0
        for k, shp in zip(names, shapes):
            size = math.prod(shp)
            parts[k] = theta[i:i + size].reshape(shp)
            i += size
        return (torch.relu(y[:, None] * parts["W1"][:, 0] + parts["b"]) @ parts["W2"][0]) / W1.shape[0]

    z, wz = np.polynomial.legendre.leggauss(nodes)
    kinks = (-b / W1[:, 0]).tolist()
    G = torch.zeros(flat.numel(), flat.numel(), dtype=F64)
    for xi in x.tolist():
        c = mu * xi
        lo, hi = c - 14 * sigma, c + 14 * sigma
        cuts = sorted([lo, hi] + [k for k in kinks if lo < k < hi])
        for a_, b_ in zip(cuts[:-1], cuts[1:]):
            y = torch.tensor((b_ - a_) / 2 * z + (b_ + a_) / 2, dtype=F64)
            wt = torch.tensor(wz * (b_ - a_) / 2, dtype=F64)
            dens = torch.exp(-(y - c) ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
            J = torch.func.jacrev(s_of)(flat, y)                             # (nodes, P)
            G += (J.T * (wt * dens)) @ J
    return 2 * G / len(x)


@pytest.mark.parametrize("make", [_theory_net, _experiment_net])
@pytest.mark.parametrize("mu,sigma", [(0.95, 0.31), (0.999, 0.05)])
def test_gauss_newton_matches_dense_quadrature(make, mu, sigma):
    x = _data(5)
    net = make(7, seed=3)
    G = gauss_newton_matrix(net, x, mu, sigma)
    ref = _gn_quadrature(net, x, mu, sigma)
    assert G.shape == ref.shape == ((14, 14) if net.fixed_inner else (21, 21))
    torch.testing.assert_close(G, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))
    torch.testing.assert_close(G, G.T, rtol=0, atol=0)
    assert float(torch.linalg.eigvalsh(G)[0]) >= -1e-12 * float(torch.linalg.eigvalsh(G)[-1])


@pytest.mark.parametrize("make", [_theory_net, _experiment_net])
def test_gauss_newton_equals_hessian_off_the_within_unit_entries(make):
    """H - G = (2/n) sum_i E[g_i d^2 s / d theta^2]; d^2 s / d theta_p d theta_q is 0 unless p and q
    belong to the same unit, and for the theory model the (a_l, a_l) entry is 0 as well."""
    x, mu, sigma = _data(6), 0.9, 0.4
    m = 6
    net = make(m, seed=4)
    _, H = _dense_top_eig(net, x, mu, sigma)
    G = gauss_newton_matrix(net, x, mu, sigma)
    blocks = 2 if net.fixed_inner else 3
    unit = torch.arange(blocks * m) % m
    same = unit[:, None] == unit[None, :]
    if net.fixed_inner:                                       # order (a, b): (a_l, a_l) agrees too
        same[:m, :m] = False
    scale = float(H.abs().max())
    assert float((H - G)[~same].abs().max()) <= 1e-12 * scale
    assert float((H - G)[same].abs().max()) > 1e-6 * scale    # the residual part is really there


def test_gauss_newton_ensemble_per_member_data_and_sharpness():
    x = _data(5)
    xs = torch.stack([x, x + 0.3, 2 * x])
    mu, sigma = 0.9, 0.3
    ens = _theory_net(6, K=3, seed=5)
    G = gauss_newton_matrix(ens, x, mu, sigma)
    Gs = gauss_newton_matrix(ens, xs, mu, sigma)
    lam = gauss_newton_sharpness(ens, xs, mu, sigma)
    assert G.shape == Gs.shape == (3, 12, 12) and lam.shape == (3,)
    for k in range(3):
        one = ens.member(k)
        torch.testing.assert_close(G[k], gauss_newton_matrix(one, x, mu, sigma), rtol=1e-13, atol=0)
        torch.testing.assert_close(Gs[k], gauss_newton_matrix(one, xs[k], mu, sigma), rtol=1e-13,
                                   atol=0)
        assert float(lam[k]) == pytest.approx(float(torch.linalg.eigvalsh(Gs[k])[-1]), rel=1e-12)
    assert gauss_newton_sharpness(ens.member(0), x, mu, sigma).shape == ()
    # wrt restricts the parameters (outer weights only: (m, m) block of the (a, b) matrix)
    torch.testing.assert_close(gauss_newton_matrix(ens.member(1), x, mu, sigma, wrt=("W2",)),
                               G[1, :6, :6], rtol=0, atol=0)


def test_gauss_newton_special_units():
    """w = 0 units are constant: active everywhere if b > 0, never otherwise (no NaN)."""
    W1 = torch.tensor([[0.0], [0.0], [1.5], [-0.7]], dtype=F64)
    b = torch.tensor([0.8, -0.2, 0.1, 60.0], dtype=F64)
    W2 = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=F64)
    net = TwoLayerScoreNet.from_parameters(W1, b, W2)
    x, mu, sigma = _data(4), 0.9, 0.3
    G = gauss_newton_matrix(net, x, mu, sigma)
    assert bool(torch.isfinite(G).all())
    torch.testing.assert_close(G, _gn_quadrature(net, x, mu, sigma), rtol=1e-10, atol=1e-12)
    m = 4
    dead = [1, m + 1, 2 * m + 1]                              # w, b, a of the dead unit
    assert float(G[dead].abs().max()) == 0.0
    # the always-on unit: d s / d a_0 = b_0 / m everywhere, so G[a_0, a_0] = 2 b_0^2 / m^2
    assert float(G[2 * m, 2 * m]) == pytest.approx(2 * 0.8 ** 2 / m ** 2, rel=1e-12)


def test_gauss_newton_validation():
    x = _data(4)
    with pytest.raises(NotImplementedError, match="1-D"):
        gauss_newton_matrix(TwoLayerScoreNet(3, dim=2), x, 0.9, 0.3)
    with pytest.raises(ValueError, match="sigma"):
        gauss_newton_matrix(_theory_net(3), x, 0.9, 0.0)
    with pytest.raises(ValueError, match="data"):
        gauss_newton_matrix(_theory_net(3, K=2), torch.zeros(3, 4, dtype=F64), 0.9, 0.3)
    with pytest.raises(ValueError, match="data"):
        gauss_newton_matrix(_theory_net(3), torch.tensor([0.0, float("nan")]), 0.9, 0.3)
    with pytest.raises(ValueError, match="wrt"):
        gauss_newton_matrix(_theory_net(3), x, 0.9, 0.3, wrt=("W3",))
    with pytest.raises(TypeError, match="net"):
        gauss_newton_sharpness("net", x, 0.9, 0.3)


# ---------------------------------------------------------------------------------------------
# full-batch gradient descent and the perturbation test
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [_theory_net, _experiment_net])
def test_full_batch_gd_steps_are_exact_gradient_steps(make):
    x, mu, sigma = _data(5), 0.9, 0.4
    net = make(6, K=2, seed=7)
    lr = torch.tensor([0.05, 0.2], dtype=F64)
    names = ("W2", "b") if net.fixed_inner else ("W1", "b", "W2")
    manual = {k: getattr(net, k).detach().clone() for k in ("W1", "b", "W2")}
    for _ in range(3):                                       # three steps by hand, with autograd
        leaves = {k: v.clone().requires_grad_(k in names) for k, v in manual.items()}
        R = relu_net_risk(leaves, x, mu, sigma)
        grads = torch.autograd.grad(R.sum(), [leaves[k] for k in names])
        for k, g in zip(names, grads):
            manual[k] = manual[k] - 6 * lr.view(-1, *([1] * (g.dim() - 1))) * g
        if net.fixed_inner:
            manual["W2"] = manual["W2"].clamp(-net.bound, net.bound)
    res = full_batch_gd(net, x, mu, sigma, lr=lr, steps=3, log_every=1)
    for k in ("W1", "b", "W2"):
        torch.testing.assert_close(getattr(net, k).detach(), manual[k], rtol=1e-12, atol=1e-14)
    assert res.risk_history.shape == (4, 2) and res.log_steps.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(res.risk_history[-1], relu_net_risk(net, x, mu, sigma).detach())
    # an ensemble member is the single net trained alone
    one = make(6, K=2, seed=7).member(1)
    full_batch_gd(one, x, mu, sigma, lr=0.2, steps=3)
    torch.testing.assert_close(one.b.detach(), net.b.detach()[1], rtol=1e-12, atol=1e-14)


def test_full_batch_gd_projection_divergence_and_validation():
    x, mu, sigma = _data(5), 0.9, 0.3
    net = _theory_net(8, K=2, seed=8)
    full_batch_gd(net, x, mu, sigma, lr=torch.tensor([0.01, 50.0], dtype=F64), steps=20)
    assert float(net.W2.detach().abs().max()) == net.bound           # the clamp was active
    exp = _experiment_net(8, K=2, seed=8)
    res = full_batch_gd(exp, x, mu, sigma, lr=torch.tensor([0.01, 1e8], dtype=F64), steps=30)
    assert bool(res.diverged[1]) and not bool(res.diverged[0])
    assert all(bool(torch.isfinite(p).all()) for p in (exp.W1, exp.b, exp.W2))
    assert bool(torch.isnan(res.risk_history[-1, 1])) and bool(torch.isfinite(res.risk_history[:, 0]).all())
    with pytest.raises(ValueError, match="lr"):
        full_batch_gd(net, x, mu, sigma, lr=[0.1, 0.1, 0.1], steps=2)
    with pytest.raises(ValueError, match="lr"):
        full_batch_gd(net, x, mu, sigma, lr=-0.1, steps=2)
    with pytest.raises(TypeError, match="net"):
        full_batch_gd((net.W1, net.b, net.W2), x, mu, sigma, lr=0.1, steps=2)
    with pytest.raises(NotImplementedError, match="1-D"):
        full_batch_gd(TwoLayerScoreNet(3, dim=2), x, mu, sigma, lr=0.1, steps=2)


def test_perturbation_test_separates_stable_from_unstable_learning_rates():
    """At a point GD has converged to, a push decays (or stays) below 2/(m lambda_max) and grows
    geometrically above it; the perturbed and the plain run see the same noise."""
    x, mu, sigma = _data(6), 0.9, 0.4
    m = 6
    start = _theory_net(m, seed=9)
    net = TwoLayerScoreNet.from_parameters(start.W1, start.b, start.W2, fixed_inner=True, bound=1e3)
    full_batch_gd(net, x, mu, sigma, lr=0.1, steps=1000)
    edge = 2 / (m * float(sharpness(net, x, mu, sigma, tol=1e-10, iters=60,
                                        generator=torch.Generator().manual_seed(0))))
    ens = TwoLayerScoreNet.from_parameters(*(p.detach().expand(2, *p.shape).clone()
                                             for p in (net.W1, net.b, net.W2)),
                                           fixed_inner=True, bound=net.bound)
    res = perturbation_test(ens, x, mu, sigma, lr=torch.tensor([0.5 * edge, 1.5 * edge], dtype=F64),
                            steps=200, radius=1e-6, full_batch=True,
                            generator=torch.Generator().manual_seed(1))
    assert res.distance.shape == (21, 2) and res.steps[-1] == 200
    assert float(res.distance[0, 0]) == pytest.approx(1e-6, rel=1e-9)
    ratio = res.distance[-1] / res.distance[0]
    assert float(ratio[0]) <= 1.0 and float(ratio[1]) > 1e3
    # SGD with the same noise for both runs: a push of 1e-12 leaves the two risk paths together
    sgd = perturbation_test(net, x, mu, sigma, lr=0.01, steps=300, radius=1e-12, batch_size=5,
                            generator=torch.Generator().manual_seed(2))
    assert sgd.distance.shape == sgd.risk.shape == (21,)
    torch.testing.assert_close(sgd.risk_perturbed, sgd.risk, rtol=1e-8, atol=0)
    assert float((sgd.risk - sgd.risk[0]).abs().max()) > 0          # the plain run does move
    assert not bool(sgd.diverged) and not bool(res.diverged.any())
    # a run that blows up is flagged, not reported as "did not move"
    exp = TwoLayerScoreNet.from_parameters(net.W1, net.b, net.W2)        # the experiment model
    boom = perturbation_test(exp, x, mu, sigma, lr=1e7, steps=300, radius=1e-3, batch_size=5,
                             generator=torch.Generator().manual_seed(3))
    assert bool(boom.diverged) and boom.distance[-1] == math.inf and bool(torch.isnan(boom.risk[-1]))
    with pytest.raises(ValueError, match="radius"):
        perturbation_test(net, x, mu, sigma, lr=0.01, steps=10, radius=0.0)


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
