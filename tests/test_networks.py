import math

import numpy as np
import pytest
import torch

from dsmlib import networks
from dsmlib.networks import TwoLayerScoreNet, make_generators

F64 = torch.float64


def _dense_score(y, W1, b, W2):
    """Oracle: s(y) = (1/m) sum_l W2[:, l] max(0, W1[l] . y + b_l), one point at a time (NumPy)."""
    y, W1, b, W2 = (np.asarray(t.detach(), dtype=np.float64) for t in (y, W1, b, W2))
    m = W1.shape[0]
    out = np.zeros((y.shape[0], W2.shape[0]))
    for i, yi in enumerate(y):
        for l in range(m):
            out[i] += W2[:, l] * max(0.0, float(W1[l] @ yi + b[l]))
    return out / m


@pytest.mark.parametrize("dim, ensemble, y_shape, out_shape", [
    (1, None, (7,), (7,)),
    (1, None, (7, 1), (7, 1)),
    (1, 4, (7,), (4, 7)),
    (3, None, (7, 3), (7, 3)),
    (3, 4, (7, 3), (4, 7, 3)),
    (3, None, (3,), (3,)),
    (1, 2, (0,), (2, 0)),
])
def test_forward_shapes(dim, ensemble, y_shape, out_shape):
    net = TwoLayerScoreNet(16, dim, ensemble=ensemble, generator=torch.Generator().manual_seed(0))
    out = net(torch.randn(y_shape))
    assert out.shape == out_shape
    assert out.dtype == torch.get_default_dtype()


@pytest.mark.parametrize("dim, ensemble", [(1, None), (1, 3), (2, None), (4, 2)])
def test_forward_matches_dense_formula(dim, ensemble):
    g = torch.Generator().manual_seed(1)
    net = TwoLayerScoreNet(9, dim, ensemble=ensemble, generator=g, dtype=F64)
    with torch.no_grad():
        net.b.normal_(generator=g)
    y = torch.randn(11, dim, generator=g, dtype=F64)
    out = net(y if dim > 1 else y[:, 0])
    W1, b, W2 = net._stacked()
    for k in range(W1.shape[0]):
        expect = _dense_score(y, W1[k], b[k], W2[k])
        got = out[k] if ensemble else out
        got = got.detach().reshape(11, dim).numpy()
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


def test_forward_chunking_is_invisible(monkeypatch):
    net = TwoLayerScoreNet(50, 1, ensemble=3, generator=torch.Generator().manual_seed(2), dtype=F64)
    y = torch.linspace(-3, 3, 101, dtype=F64)
    full = net(y)
    monkeypatch.setattr(networks, "_FORWARD_CHUNK_ELEMENTS", 3 * 50 * 7)
    torch.testing.assert_close(net(y), full, rtol=1e-14, atol=1e-14)


def test_forward_is_differentiable_in_y():
    net = TwoLayerScoreNet(20, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        net.b.uniform_(-1, 1)
    y = torch.tensor([0.3, -0.7], dtype=F64, requires_grad=True)
    (ds,) = torch.autograd.grad(net(y).sum(), y)
    w, b, a = net.W1[:, 0], net.b, net.W2[0]
    expect = ((w * y[:, None] + b > 0) * a * w).sum(1) / 20
    torch.testing.assert_close(ds, expect.detach())


def test_float32_cast_of_float64_input():
    net = TwoLayerScoreNet(8, 1, generator=torch.Generator().manual_seed(0))
    assert net(torch.zeros(3, dtype=F64)).dtype == torch.float32


def test_init_statistics():
    m, d = 20000, 4
    net = TwoLayerScoreNet(m, d, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert net.W1.shape == (m, d) and net.b.shape == (m,) and net.W2.shape == (d, m)
    assert abs(net.W1.var().item() - 1 / d) < 0.01
    assert abs(net.W1.mean().item()) < 0.01
    assert abs(net.W2.var().item() - 1) < 0.03
    assert bool((net.b == 0).all())
    assert {n for n, _ in net.named_parameters()} == {"W1", "b", "W2"}


def test_theory_model():
    A = 0.8
    net = TwoLayerScoreNet(2000, ensemble=2, fixed_inner=True, bound=A,
                           generator=torch.Generator().manual_seed(5))
    assert set(net.W1.unique().tolist()) == {-1.0, 1.0}
    frac = (net.W1 > 0).double().mean().item()
    assert 0.45 < frac < 0.55
    assert bool((net.W2.abs() <= A).all()) and bool((net.W2.abs() == A).any())
    assert {n for n, _ in net.named_parameters()} == {"b", "W2"}
    assert "W1" in dict(net.named_buffers())
    W2, b = net.trained_parameters()
    assert W2 is net.W2 and b is net.b
    assert net.fixed_inner and net.bound == A


def test_trained_parameters_full_model():
    net = TwoLayerScoreNet(5, 2)
    assert net.trained_parameters() == (net.W1, net.b, net.W2)


def test_generator_list_members_equal_single_nets():
    gens = make_generators([11, 12, 13])
    ens = TwoLayerScoreNet(30, 2, ensemble=3, generator=gens)
    for k, seed in enumerate([11, 12, 13]):
        single = TwoLayerScoreNet(30, 2, generator=make_generators([seed])[0])
        for name in ("W1", "b", "W2"):
            assert torch.equal(getattr(ens, name)[k], getattr(single, name))


def test_same_seed_same_net_and_float_dtypes_agree():
    a = TwoLayerScoreNet(10, 1, generator=torch.Generator().manual_seed(7))
    b = TwoLayerScoreNet(10, 1, generator=torch.Generator().manual_seed(7))
    c = TwoLayerScoreNet(10, 1, generator=torch.Generator().manual_seed(7), dtype=F64)
    assert torch.equal(a.W1, b.W1) and torch.equal(a.W2, b.W2)
    torch.testing.assert_close(c.W1.float(), a.W1, rtol=0, atol=0)


def test_member_is_a_copy_of_slice_k():
    net = TwoLayerScoreNet(12, 1, ensemble=4, generator=torch.Generator().manual_seed(8), dtype=F64)
    y = torch.linspace(-2, 2, 9, dtype=F64)
    for k in (0, 2, -1):
        mk = net.member(k)
        assert mk.ensemble is None and mk.width == 12
        assert torch.equal(mk.W1, net.W1[k]) and torch.equal(mk.W2, net.W2[k])
        torch.testing.assert_close(mk(y), net(y)[k], rtol=0, atol=0)
    mk = net.member(1)
    with torch.no_grad():
        mk.W2.add_(1.0)
    assert not torch.equal(mk.W2, net.W2[1])          # a copy, not a view
    th = TwoLayerScoreNet(6, ensemble=2, fixed_inner=True, bound=1.0).member(1)
    assert th.fixed_inner and th.bound == 1.0
    single = TwoLayerScoreNet(5)
    assert torch.equal(single.member(0).W2, single.W2)


def test_kinks():
    net = TwoLayerScoreNet(4, 1, ensemble=2, dtype=F64)
    with torch.no_grad():
        net.W1[..., 0] = torch.tensor([[1.0, -2.0, 0.0, 0.5], [2.0, 1.0, 0.0, -1.0]], dtype=F64)
        net.b[:] = torch.tensor([[1.0, 1.0, 3.0, 0.0], [0.5, -1.0, 0.0, 2.0]], dtype=F64)
    k = net.kinks()
    expect = torch.tensor([[-1.0, 0.5, math.inf, 0.0], [-0.25, 1.0, math.inf, 2.0]], dtype=F64)
    assert torch.equal(k, expect)
    assert net.member(0).kinks().shape == (4,)
    with pytest.raises(ValueError, match="1-D"):
        TwoLayerScoreNet(4, 2).kinks()


def test_from_parameters_roundtrip_and_checks():
    net = TwoLayerScoreNet(6, 2, ensemble=3, generator=torch.Generator().manual_seed(9))
    clone = TwoLayerScoreNet.from_parameters(net.W1, net.b, net.W2)
    assert clone.ensemble == 3 and clone.dim == 2
    y = torch.randn(5, 2)
    torch.testing.assert_close(clone(y), net(y))
    with pytest.raises(ValueError, match="b must have shape"):
        TwoLayerScoreNet.from_parameters(net.W1, net.b[:, :2], net.W2)
    with pytest.raises(ValueError, match="W1"):
        TwoLayerScoreNet.from_parameters(0.5 * torch.ones(3, 1), torch.zeros(3), torch.ones(1, 3),
                                         fixed_inner=True, bound=1.0)
    with pytest.raises(ValueError, match="W2"):
        TwoLayerScoreNet.from_parameters(torch.ones(3, 1), torch.zeros(3), 5 * torch.ones(1, 3),
                                         fixed_inner=True, bound=1.0)


def test_make_generators():
    gens = make_generators(range(3))
    assert len(gens) == 3 and all(isinstance(g, torch.Generator) for g in gens)
    a = torch.randn(4, generator=make_generators([5])[0])
    assert torch.equal(a, torch.randn(4, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(TypeError, match="seeds"):
        make_generators(3)
    with pytest.raises(ValueError, match="seeds"):
        make_generators([])
    with pytest.raises(ValueError, match="seeds"):
        make_generators([-1])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(width=0), ValueError, "width"),
    (dict(width=2.5), TypeError, "width"),
    (dict(width=4, dim=0), ValueError, "dim"),
    (dict(width=4, ensemble=0), ValueError, "ensemble"),
    (dict(width=4, ensemble="3"), TypeError, "ensemble"),
    (dict(width=4, fixed_inner=True), ValueError, "bound"),
    (dict(width=4, dim=2, fixed_inner=True, bound=1.0), ValueError, "dim"),
    (dict(width=4, fixed_inner=True, bound=-1.0), ValueError, "bound"),
    (dict(width=4, fixed_inner=True, bound=math.inf), ValueError, "bound"),
    (dict(width=4, fixed_inner=True, bound=math.nan), ValueError, "bound"),
    (dict(width=4, bound=1.0), ValueError, "bound"),
    (dict(width=4, fixed_inner=1), TypeError, "fixed_inner"),
    (dict(width=4, ensemble=2, generator=make_generators([1])), ValueError, "generator"),
    (dict(width=4, generator=make_generators([1])), ValueError, "generator"),
    (dict(width=4, generator=3), TypeError, "generator"),
    (dict(width=4, ensemble=2, generator=[torch.Generator(), 3]), TypeError, "generator"),
    (dict(width=4, dtype=torch.int32), TypeError, "dtype"),
])
def test_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TwoLayerScoreNet(**kwargs)


def test_bad_inputs_to_forward_and_member():
    net = TwoLayerScoreNet(4, 2, ensemble=2)
    with pytest.raises(ValueError, match="y"):
        net(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="y"):
        net(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="k"):
        net.member(2)
    with pytest.raises(TypeError, match="k"):
        net.member(1.0)


def test_forward_members_evaluates_member_k_at_its_points():
    g = torch.Generator().manual_seed(0)
    for d in (1, 3):
        net = TwoLayerScoreNet(20, d, ensemble=4, generator=make_generators(range(4)),
                               dtype=torch.float64)
        y = torch.randn(4, 7, d, generator=g, dtype=torch.float64)
        yy = y[..., 0] if d == 1 else y
        out = net.forward_members(yy)
        assert out.shape == yy.shape
        for k in range(4):
            torch.testing.assert_close(out[k], net.member(k)(yy[k]), rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="ensemble"):
        TwoLayerScoreNet(5).forward_members(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(4, N\)"):
        TwoLayerScoreNet(5, ensemble=4).forward_members(torch.zeros(3, 3))


def test_active_fraction_shared_and_per_member():
    import dsmlib as dsm
    # units: active right of 0.5, active left of -3, never active
    W1 = torch.tensor([[[1.0], [-1.0], [1.0]]] * 2, dtype=torch.float64)
    b = torch.tensor([[-0.5, -3.0, -10.0]] * 2, dtype=torch.float64)
    net = TwoLayerScoreNet.from_parameters(W1, b, torch.ones(2, 1, 3, dtype=torch.float64))
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    assert dsm.active_fraction(net, x, 1.0).tolist() == pytest.approx([1 / 3, 1 / 3])
    assert dsm.active_fraction(net, x, 0.4).tolist() == [0.0, 0.0]   # hull [-0.4, 0.4]
    per = torch.tensor([[-1.0, 1.0], [-4.0, 1.0]], dtype=torch.float64)   # (K, n)
    assert dsm.active_fraction(net, per, [1.0, 1.0]).tolist() == pytest.approx([1 / 3, 2 / 3])
    assert float(dsm.active_fraction(net.member(1), x, 1.0)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="mu"):
        dsm.active_fraction(net, x, [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="net"):
        dsm.active_fraction("net", x, 1.0)
