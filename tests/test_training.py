import dataclasses
import math
import signal

import numpy as np
import pytest
import torch

from dsmlib import _steps, training
from dsmlib.networks import TwoLayerScoreNet, make_generators
from dsmlib.training import TrainResult, _sgd_step, _train, train_sgd

needs_numba = pytest.mark.skipif(not _steps.kernel_available(),
                                 reason="numba is not installed (the compiled 1-D kernel)")

F64 = torch.float64
MU, SIGMA = 0.9, 0.4


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each test single-threaded (restored afterwards). These tests check correctness; on a
    busy shared CPU, the OpenMP regions torch.bmm opens even for tiny batches can stall for
    milliseconds each and make the dense-path tests minutes long. The 1-D path opens none."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(width=24, dim=1, ensemble=None, seed=0, fixed_inner=False, bound=None, dtype=F64,
         random_bias=True):
    g = torch.Generator().manual_seed(seed)
    net = TwoLayerScoreNet(width, dim, ensemble=ensemble, fixed_inner=fixed_inner, bound=bound,
                           generator=g, dtype=dtype)
    if random_bias:
        with torch.no_grad():
            net.b.copy_(torch.randn(net.b.shape, generator=g, dtype=dtype))
    return net


def _reference_step(net, xb, zb, lr, reduction="mean"):
    """Oracle: one SGD step by autograd of the dense mini-batch loss, float64.

    xb, zb: (K, B, d). Returns the new (W1, b, W2), each (K, ...), and the losses (K,).
    """
    W1, b, W2 = (p.detach().clone().requires_grad_(True) for p in net._stacked())
    m = W1.shape[1]
    y = MU * xb + SIGMA * zb
    h = torch.relu(torch.einsum("kbd,kmd->kbm", y, W1) + b[:, None, :])
    s = torch.einsum("kbm,kdm->kbd", h, W2) / m
    sq = (s + (y - MU * xb) / SIGMA ** 2) ** 2                          # (K, B, d)
    if reduction == "mean_all":                                          # as torch.nn.MSELoss
        loss = sq.mean((1, 2))
    else:
        per_point = sq.sum(-1)
        loss = per_point.mean(1) if reduction == "mean" else per_point.sum(1)
    loss.sum().backward()
    new = [p - m * lr * p.grad for p in (W1, b, W2)]
    if net.fixed_inner:
        new[0] = W1
        new[2] = new[2].clamp(-net.bound, net.bound)
    return [t.detach() for t in new], loss.detach()


def _batch(K, B, d, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(K, B, d, generator=g, dtype=F64),
            torch.randn(K, B, d, generator=g, dtype=F64))


def _params(net):
    return [t.detach().clone() for t in net._stacked()]


@pytest.mark.parametrize("method, dim, fixed_inner, reduction", [
    ("sorted", 1, False, "mean"), ("sorted", 1, True, "mean"), ("sorted", 1, False, "sum"),
    ("dense", 1, False, "mean"), ("dense", 1, True, "mean"), ("dense", 3, False, "mean"),
    ("dense", 3, False, "sum"),
    pytest.param("numba", 1, False, "mean", marks=needs_numba),
    pytest.param("numba", 1, True, "mean", marks=needs_numba),
    pytest.param("numba", 1, False, "sum", marks=needs_numba),
])
def test_one_step_matches_autograd(method, dim, fixed_inner, reduction):
    K, B = 3, 13
    net = _net(37, dim, ensemble=K, seed=1, fixed_inner=fixed_inner,
               bound=0.9 if fixed_inner else None)
    xb, zb = _batch(K, B, dim, seed=2)
    expect, loss_ref = _reference_step(net, xb, zb, 0.07, reduction)
    loss = _sgd_step(net, xb, zb, MU, SIGMA, 0.07, reduction=reduction, method=method)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    for got, ref in zip(_params(net), expect):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_one_step_single_net_and_per_member_lr():
    lrs = [0.01, 0.2]
    net = _net(20, ensemble=2, seed=3)
    xb, zb = _batch(2, 9, 1, seed=4)
    singles = [net.member(k) for k in range(2)]
    _sgd_step(net, xb, zb, MU, SIGMA, torch.tensor(lrs, dtype=F64))
    for k, single in enumerate(singles):
        _sgd_step(single, xb[k], zb[k], MU, SIGMA, lrs[k])
        for got, ref in zip(_params(single), _params(net.member(k))):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("method", ["sorted", pytest.param("numba", marks=needs_numba)])
def test_units_with_zero_inner_weight(method):
    net = _net(8, ensemble=1, seed=5)
    with torch.no_grad():
        net.W1[0, :4, 0] = torch.tensor([0.0, 0.0, 0.0, -0.0], dtype=F64)
        net.b[0, :4] = torch.tensor([1.5, -1.0, 0.0, 0.7], dtype=F64)
    xb, zb = _batch(1, 10, 1, seed=6)
    expect, _ = _reference_step(net, xb, zb, 0.1)
    _sgd_step(net, xb, zb, MU, SIGMA, 0.1, method=method)
    for got, ref in zip(_params(net), expect):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_sum_reduction_is_mean_with_lr_times_batch():
    B = 11
    xb, zb = _batch(2, B, 1, seed=7)
    a, b = _net(16, ensemble=2, seed=8), _net(16, ensemble=2, seed=8)
    _sgd_step(a, xb, zb, MU, SIGMA, 0.003, reduction="sum")
    _sgd_step(b, xb, zb, MU, SIGMA, 0.003 * B, reduction="mean")
    for p, q in zip(_params(a), _params(b)):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    data = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(0))
    a, b = _net(16, seed=9), _net(16, seed=9)
    train_sgd(a, data, MU, SIGMA, lr=0.001, steps=20, batch_size=B, reduction="sum",
              generator=torch.Generator().manual_seed(1))
    train_sgd(b, data, MU, SIGMA, lr=0.001 * B, steps=20, batch_size=B,
              generator=torch.Generator().manual_seed(1))
    for p, q in zip(_params(a), _params(b)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_first_step_uses_the_documented_random_stream():
    # member generator -> randint(n, (256, B)) then randn(256, B, d); step j uses row j
    data = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(10))
    net, B = _net(12, seed=11), 7
    g = torch.Generator().manual_seed(12)
    idx = torch.randint(0, 5, (training._BLOCK, B), generator=g)
    z = torch.randn(training._BLOCK, B, 1, generator=g, dtype=F64)
    _, loss_ref = _reference_step(net, data[idx[0]].reshape(1, B, 1), z[0].unsqueeze(0), 0.05)
    res = train_sgd(net, data, MU, SIGMA, lr=0.05, steps=1, batch_size=B, log_every=1,
                    generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(res.loss_history, loss_ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dim, fixed_inner", [(1, False), (1, True), (3, False)])
def test_ensemble_equals_members_trained_one_by_one(dim, fixed_inner):
    seeds, lrs, steps = [21, 22, 23], [0.02, 0.05, 0.1], 300     # crosses a block boundary
    g = torch.Generator().manual_seed(30)
    data = torch.randn(7, dim, dtype=F64, generator=g)
    data = data[:, 0] if dim == 1 else data
    kw = dict(fixed_inner=fixed_inner, bound=1.5 if fixed_inner else None, dtype=F64)
    ens = TwoLayerScoreNet(20, dim, ensemble=3, generator=make_generators(seeds), **kw)
    res = train_sgd(ens, data, MU, SIGMA, lr=lrs, steps=steps, batch_size=9,
                    generator=make_generators([s + 100 for s in seeds]), log_every=100)
    assert res.loss_history.shape == (3, 3)
    for k, seed in enumerate(seeds):
        one = TwoLayerScoreNet(20, dim, generator=make_generators([seed])[0], **kw)
        r1 = train_sgd(one, data, MU, SIGMA, lr=lrs[k], steps=steps, batch_size=9,
                       generator=make_generators([seed + 100])[0], log_every=100)
        for p, q in zip(_params(one), _params(ens.member(k))):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
        torch.testing.assert_close(r1.loss_history, res.loss_history[:, k], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dim", [1, 3])
def test_per_member_data_and_noise_levels(dim):
    seeds, steps, K = [31, 32, 33], 270, 3
    g = torch.Generator().manual_seed(34)
    data = torch.randn(K, 6, dim, dtype=F64, generator=g)
    data = data[..., 0] if dim == 1 else data
    mus, sigmas = [0.95, 0.8, 0.6], [0.31, 0.6, 0.8]
    ens = TwoLayerScoreNet(16, dim, ensemble=K, generator=make_generators(seeds), dtype=F64)
    res = train_sgd(ens, data, mus, sigmas, lr=0.05, steps=steps, batch_size=8,
                    generator=make_generators(seeds))
    for k in range(K):
        one = TwoLayerScoreNet(16, dim, generator=make_generators([seeds[k]])[0], dtype=F64)
        r1 = train_sgd(one, data[k], mus[k], sigmas[k], lr=0.05, steps=steps, batch_size=8,
                       generator=make_generators([seeds[k]])[0])
        for p, q in zip(_params(one), _params(ens.member(k))):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
        torch.testing.assert_close(r1.loss_history, res.loss_history[:, k], rtol=1e-12, atol=0)


def test_sorted_and_dense_paths_agree_over_training():
    data = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(40))
    a, b = _net(30, ensemble=2, seed=41), _net(30, ensemble=2, seed=41)
    for net, method in ((a, "sorted"), (b, "dense")):
        _train(net, data, MU, SIGMA, lr=0.05, steps=300, batch_size=10,
               generator=make_generators([1, 2]), method=method)
    for p, q in zip(_params(a), _params(b)):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method", ["sorted", "dense"])
def test_theory_model_projection_and_frozen_inner_weights(method):
    A = 0.4
    net = _net(40, ensemble=2, seed=50, fixed_inner=True, bound=A)
    W1 = net.W1.clone()
    data = torch.linspace(-2, 2, 5, dtype=F64)
    _train(net, data, MU, SIGMA, lr=0.2, steps=200, batch_size=8,
           generator=make_generators([1, 2]), method=method)
    assert torch.equal(net.W1, W1)
    assert bool((net.W2.abs() <= A).all())
    assert bool((net.W2.abs() == A).any())          # the projection was active


def test_diverging_member_is_frozen_and_others_unaffected():
    data = torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(60))
    gens = lambda: make_generators([1, 2, 3])           # noqa: E731
    net = TwoLayerScoreNet(32, ensemble=3, generator=make_generators([7, 8, 9]), dtype=F64)
    init = _params(net)
    res = train_sgd(net, data, MU, SIGMA, lr=[0.05, 1e4, 0.05], steps=400, batch_size=10,
                    generator=gens(), log_every=50)
    assert res.diverged.tolist() == [False, True, False]
    assert res.diverged_step[0] == -1 and res.diverged_step[2] == -1
    assert 0 <= res.diverged_step[1] < training._BLOCK
    for p, p0 in zip(_params(net), init):
        assert bool(torch.isfinite(p).all())
        assert torch.equal(p[1], p0[1])                 # frozen at its last checked parameters
    assert bool(torch.isnan(res.loss_history[:, 1]).all())
    assert bool(torch.isfinite(res.loss_history[:, [0, 2]]).all())
    # the healthy members equal a run without the diverging one
    pair = TwoLayerScoreNet(32, ensemble=2, generator=make_generators([7, 9]), dtype=F64)
    g = gens()
    train_sgd(pair, data, MU, SIGMA, lr=[0.05, 0.05], steps=400, batch_size=10,
              generator=[g[0], g[2]])
    for p, q in zip(_params(pair), _params(net)):
        torch.testing.assert_close(p, q[[0, 2]], rtol=0, atol=0)


def test_parameter_threshold_freezes_single_net():
    data = torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(61))
    net = _net(16, seed=62, random_bias=False)
    res = train_sgd(net, data, MU, SIGMA, lr=0.05, steps=300, batch_size=10,
                    diverge_threshold=1e-3, generator=torch.Generator().manual_seed(0))
    assert bool(res.diverged) and int(res.diverged_step) == training._BLOCK - 1
    assert res.diverged.shape == () and res.loss_history.dim() == 1


def _risk_1d(score, data, nodes=80):
    """Oracle: R_n(s) by Gauss-Hermite quadrature over z ~ N(0, 1) (float64, NumPy nodes)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    z, w = torch.tensor(z), torch.tensor(w / w.sum())
    y = (MU * data[:, None] + SIGMA * z[None, :]).reshape(-1)
    with torch.no_grad():
        s = score(y)
    s = s.reshape(*s.shape[:-1], len(data), nodes)
    return ((s + z / SIGMA) ** 2 * w).sum(-1).mean(-1)


def _optimal_score(data):
    """Oracle s*(y) = sum_i softmax_i(-(y - mu x_i)^2 / 2 sigma^2) (mu x_i - y) / sigma^2."""
    def s(y):
        diff = MU * data[None, :] - y[:, None]
        return (torch.softmax(-diff ** 2 / (2 * SIGMA ** 2), 1) * diff).sum(1) / SIGMA ** 2
    return s


def test_training_reduces_the_dsm_risk_1d():
    data = torch.tensor([-1.5, -0.2, 0.4, 1.3], dtype=F64)
    net = _net(64, ensemble=2, seed=70, random_bias=False)
    best = _risk_1d(_optimal_score(data), data)
    before = _risk_1d(net, data)
    res = train_sgd(net, data, MU, SIGMA, lr=0.1, steps=1500, batch_size=20,
                    generator=make_generators([1, 2]))
    after = _risk_1d(net, data)
    assert bool((after >= best - 1e-9).all())            # s* minimises R_n
    assert bool((after - best < 0.25 * (before - best)).all()), (best, before, after)
    assert not bool(res.diverged.any())
    assert bool((res.loss_history[-1] < res.loss_history[0]).all())


def test_training_reduces_the_dsm_risk_3d():
    g = torch.Generator().manual_seed(80)
    data = torch.randn(5, 3, dtype=F64, generator=g)
    z = torch.randn(5, 400, 3, dtype=F64, generator=g)

    def risk(net):
        y = (MU * data[:, None, :] + SIGMA * z).reshape(-1, 3)
        with torch.no_grad():
            s = net(y).reshape(5, 400, 3)
        return ((s + z / SIGMA) ** 2).sum(-1).mean().item()

    net = _net(64, 3, seed=81, random_bias=False)
    before = risk(net)
    train_sgd(net, data, MU, SIGMA, lr=0.02, steps=800, batch_size=20,
              generator=torch.Generator().manual_seed(1))
    assert risk(net) < 0.7 * before


def test_same_seed_bit_identical_and_single_generator_for_ensemble():
    data = torch.randn(6, generator=torch.Generator().manual_seed(90))
    runs = []
    for _ in range(2):
        net = TwoLayerScoreNet(40, ensemble=3, generator=torch.Generator().manual_seed(1))
        res = train_sgd(net, data, MU, SIGMA, lr=0.1, steps=260, batch_size=10,
                        generator=torch.Generator().manual_seed(2))
        runs.append((_params(net), res.loss_history))
    for p, q in zip(runs[0][0], runs[1][0]):
        assert torch.equal(p, q)
    assert torch.equal(runs[0][1], runs[1][1])
    W2 = runs[0][0][2]
    assert not torch.equal(W2[0], W2[1])


def test_result_fields_and_logging():
    data = torch.randn(6, generator=torch.Generator().manual_seed(91))
    net = TwoLayerScoreNet(10, ensemble=2)
    res = train_sgd(net, data, MU, SIGMA, lr=0.05, steps=250, log_every=100,
                    generator=make_generators([1, 2]))
    assert isinstance(res, TrainResult) and res.net is net
    assert res.log_steps.tolist() == [100, 200, 250]
    assert res.loss_history.shape == (3, 2) and res.loss_history.dtype == torch.float32
    assert res.diverged.shape == (2,) and res.diverged_step.tolist() == [-1, -1]
    assert res.steps == 250 and res.reduction == "mean" and res.lr == 0.05 and res.seconds > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.steps = 3
    res0 = train_sgd(net, data, MU, SIGMA, lr=0.05, steps=0)
    assert res0.loss_history.shape == (0, 2) and res0.log_steps.numel() == 0
    res1 = train_sgd(TwoLayerScoreNet(10), data, MU, SIGMA, lr=0.05, steps=30, progress=True,
                     device="cpu")
    assert res1.loss_history.shape == (30,)               # default: ceil(steps / 100) per log


def test_keyboard_interrupt_leaves_the_last_completed_step(monkeypatch):
    monkeypatch.setenv("DSMLIB_NO_NUMBA", "1")            # the torch path stops at a step
    data = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(92))
    original = training._Sorted1D.step
    calls = {"n": 0}

    def step(self, i, loss_out):
        original(self, i, loss_out)
        calls["n"] += 1
        if calls["n"] == 10:
            signal.raise_signal(signal.SIGINT)        # arrives mid-run, handled at the boundary

    monkeypatch.setattr(training._Sorted1D, "step", step)
    handler = signal.getsignal(signal.SIGINT)
    net = _net(16, ensemble=2, seed=93)
    with pytest.raises(KeyboardInterrupt):
        train_sgd(net, data, MU, SIGMA, lr=0.05, steps=100, generator=make_generators([1, 2]))
    monkeypatch.setattr(training._Sorted1D, "step", original)
    ref = _net(16, ensemble=2, seed=93)
    train_sgd(ref, data, MU, SIGMA, lr=0.05, steps=10, generator=make_generators([1, 2]))
    for p, q in zip(_params(net), _params(ref)):
        assert torch.equal(p, q)
    assert signal.getsignal(signal.SIGINT) is handler            # handler restored


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lr=-0.1), ValueError, "lr"),
    (dict(lr=[0.1, 0.2]), ValueError, "lr"),
    (dict(lr=[0.1, 0.2, -1.0]), ValueError, "lr"),
    (dict(steps=-1), ValueError, "steps"),
    (dict(steps=1.5), TypeError, "steps"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(average_last=3), ValueError, "average_last"),
    (dict(average_last=-1), ValueError, "average_last"),
    (dict(average_last=1.0), TypeError, "average_last"),
    (dict(log_every=0), ValueError, "log_every"),
    (dict(diverge_threshold=0.0), ValueError, "diverge_threshold"),
    (dict(generator=make_generators([1, 2])), ValueError, "generator"),
    (dict(generator="seed"), TypeError, "generator"),
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(data=torch.zeros(5, 2)), ValueError, "per-member data"),
    (dict(data=torch.zeros(3, 5, 2)), ValueError, "dim=1"),
    (dict(mu=[0.9, 0.8]), ValueError, "mu"),
    (dict(sigma=[0.3, 0.3, -0.3]), ValueError, "sigma"),
    (dict(data=torch.tensor([0.0, math.nan])), ValueError, "data"),
    (dict(net="net"), TypeError, "net"),
])
def test_validation(kwargs, exc, match):
    args = dict(net=TwoLayerScoreNet(4, ensemble=3), data=torch.zeros(5), mu=MU, sigma=SIGMA,
                lr=0.1, steps=2)
    args.update(kwargs)
    net, data, mu, sigma = (args.pop(k) for k in ("net", "data", "mu", "sigma"))
    with pytest.raises(exc, match=match):
        train_sgd(net, data, mu, sigma, **args)


def test_single_net_needs_scalars_and_shared_data():
    with pytest.raises(ValueError, match="lr"):
        train_sgd(TwoLayerScoreNet(4), torch.zeros(3), MU, SIGMA, lr=[0.1], steps=1)
    with pytest.raises(ValueError, match="sigma"):
        train_sgd(TwoLayerScoreNet(4), torch.zeros(3), MU, [SIGMA], lr=0.1, steps=1)
    with pytest.raises(ValueError, match="per-member"):
        train_sgd(TwoLayerScoreNet(4, 2), torch.zeros(1, 3, 2), MU, SIGMA, lr=0.1, steps=1)


# ---------------------------------------------------------------------------------------------
# reduction="mean_all" and iterate averaging
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dense", "sorted", pytest.param("numba", marks=needs_numba)])
def test_mean_all_step_matches_autograd_of_mse(method):
    dim = 3 if method == "dense" else 1
    net = _net(dim=dim, ensemble=2)
    xb, zb = _batch(2, 7, dim, 5)
    expect, loss_ref = _reference_step(net, xb, zb, 0.07, "mean_all")
    loss = _sgd_step(net, xb, zb, MU, SIGMA, 0.07, reduction="mean_all", method=method)
    for p, q in zip(_params(net), expect):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    # the reported loss is the batch mean of the squared norm, i.e. d times the MSE
    torch.testing.assert_close(loss, loss_ref * dim, rtol=1e-12, atol=1e-12)


def test_mean_all_is_mean_at_lr_over_d_bit_for_bit():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    out = []
    for reduction, lr in [("mean_all", 0.5), ("mean", 0.5 / 3)]:
        net = TwoLayerScoreNet(30, 3, ensemble=2, generator=make_generators([1, 2]))
        res = train_sgd(net, x, MU, SIGMA, lr=lr, steps=300, reduction=reduction,
                        generator=make_generators([3, 4]))
        out.append((_params(net), res.loss_history))
    assert all(torch.equal(p, q) for p, q in zip(out[0][0], out[1][0]))
    assert torch.equal(out[0][1], out[1][1])


def test_mean_all_equals_mean_in_one_dimension():
    x = torch.randn(10, generator=torch.Generator().manual_seed(0))
    nets = []
    for reduction in ("mean_all", "mean"):
        net = TwoLayerScoreNet(16, generator=torch.Generator().manual_seed(1))
        train_sgd(net, x, MU, SIGMA, lr=0.1, steps=100, reduction=reduction,
                  generator=torch.Generator().manual_seed(2))
        nets.append(_params(net))
    assert all(torch.equal(p, q) for p, q in zip(*nets))


@pytest.mark.parametrize("dim, fixed_inner", [(1, False), (1, True), (2, False)])
def test_tail_average_is_the_mean_of_the_last_iterates(dim, fixed_inner):
    """Oracle: a run of T steps ends at the parameters after step T of a longer run (the random
    stream does not depend on the number of steps), so the tail average is the mean of the final
    parameters of runs of S - N + 1, ..., S steps."""
    x = torch.randn(12, dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    S, N = 40, 5
    kw = dict(fixed_inner=fixed_inner, bound=3.0 if fixed_inner else None)

    def trained(steps, **extra):
        net = TwoLayerScoreNet(20, dim, ensemble=2, generator=make_generators([1, 2]), dtype=F64,
                               **kw)
        res = train_sgd(net, x, MU, SIGMA, lr=[0.2, 0.05], steps=steps,
                        generator=make_generators([3, 4]), **extra)
        return net, res

    net, res = trained(S, average_last=N)
    finals = [_params(trained(T)[0]) for T in range(S - N + 1, S + 1)]
    expect = [torch.stack(ps).mean(0) for ps in zip(*finals)]
    for p, q in zip(_params(res.averaged), expect):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    for p, q in zip(_params(net), finals[-1]):                   # the net itself: the last iterate
        assert torch.equal(p, q)
    assert res.average_last == N and res.averaged.ensemble == 2
    assert res.averaged.fixed_inner == fixed_inner


def test_tail_average_of_a_single_net_and_of_none():
    x = torch.randn(10, generator=torch.Generator().manual_seed(0))
    net = TwoLayerScoreNet(8, generator=torch.Generator().manual_seed(1))
    res = train_sgd(net, x, MU, SIGMA, lr=0.1, steps=10, average_last=10,
                    generator=torch.Generator().manual_seed(2))
    assert res.averaged.ensemble is None and res.averaged.W1.shape == (8, 1)
    plain = train_sgd(TwoLayerScoreNet(8), x, MU, SIGMA, lr=0.1, steps=3)
    assert plain.averaged is None and plain.average_last == 0
    zero = train_sgd(TwoLayerScoreNet(8), x, MU, SIGMA, lr=0.1, steps=3, average_last=0)
    assert zero.averaged is None


def test_tail_average_of_a_diverged_member_is_its_frozen_parameters():
    x = torch.randn(20, generator=torch.Generator().manual_seed(0))
    net = TwoLayerScoreNet(50, ensemble=2, generator=make_generators([1, 2]))
    res = train_sgd(net, x, 0.95, 0.31, lr=[20.0, 0.01], steps=600, average_last=300,
                    generator=make_generators([3, 4]))
    assert bool(res.diverged[0]) and not bool(res.diverged[1])
    for p, q in zip(_params(res.averaged), _params(net)):
        assert torch.equal(p[0], q[0])
        assert torch.isfinite(p).all()


# ---------------------------------------------------------------------------------------------
# the compiled 1-D kernel (numba) and the pure-torch fallback
# ---------------------------------------------------------------------------------------------

def _run(monkeypatch, numba, dtype, *, K=37, fixed_inner=False, per_member=False, steps=600,
         average_last=300, lr=None, threads=1):
    """train_sgd on the kernel (numba=True) or the torch path; everything it returns."""
    monkeypatch.setenv("DSMLIB_NO_NUMBA", "0" if numba else "1")
    g = torch.Generator().manual_seed(7)
    data = torch.randn(K, 9, generator=g, dtype=dtype) if per_member else \
        torch.randn(11, generator=g, dtype=dtype)
    lr = [0.02 + 0.3 * k / K for k in range(K)] if lr is None else lr
    mu = [0.9 - 0.3 * k / K for k in range(K)] if per_member else MU
    sigma = [0.3 + 0.4 * k / K for k in range(K)] if per_member else SIGMA
    net = TwoLayerScoreNet(40, ensemble=K, fixed_inner=fixed_inner,
                           bound=0.7 if fixed_inner else None,
                           generator=make_generators(range(K)), dtype=dtype)
    torch.set_num_threads(threads)
    res = train_sgd(net, data, mu, sigma, lr=lr, steps=steps, batch_size=13, log_every=50,
                    average_last=average_last, generator=make_generators(range(50, 50 + K)))
    torch.set_num_threads(1)
    out = _params(net) + [res.loss_history, res.diverged, res.diverged_step]
    return out + (_params(res.averaged) if average_last else [])


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("fixed_inner, per_member", [(False, False), (True, False),
                                                     (False, True)])
def test_kernel_reproduces_the_torch_path_bit_for_bit(monkeypatch, dtype, fixed_inner,
                                                      per_member):
    """The compiled kernel and the torch step agree exactly (tolerance 0), float32 and float64:
    parameters, losses, divergence flags and tail averages, over blocks of a 37-member ensemble
    (several kernel chunks) with one diverging member; and on 2 threads as on 1."""
    K = 37
    lr = [0.02 + 0.3 * k / K for k in range(K)]
    lr[5] = 1e4                                          # diverges in the first block
    kw = dict(K=K, fixed_inner=fixed_inner, per_member=per_member, lr=lr)
    torch_path = _run(monkeypatch, False, dtype, **kw)
    kernel = _run(monkeypatch, True, dtype, **kw)
    if not fixed_inner:
        assert kernel[4].tolist() == [k == 5 for k in range(K)]      # res.diverged
    for got, ref in zip(kernel, torch_path):
        assert _same(got, ref)
    two_threads = _run(monkeypatch, True, dtype, threads=2, **kw)
    for got, ref in zip(two_threads, kernel):
        assert _same(got, ref)


def _same(a, b):
    """Equal dtype and values, NaN equal to NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(torch.isnan(a), torch.isnan(b)) and \
            torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


@needs_numba
@pytest.mark.parametrize("batch_size, width", [(1, 5), (2, 1), (3, 17), (7, 17), (8, 9),
                                               (64, 33), (300, 20)])
def test_kernel_and_torch_path_agree_for_any_batch_and_width(monkeypatch, batch_size, width):
    """Batch sizes around the search's table sizes (B + 1 a power of two or not, one group or
    several) and tiny widths: the kernel equals the torch step exactly."""
    data = torch.randn(6, generator=torch.Generator().manual_seed(3))
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("DSMLIB_NO_NUMBA", flag)
        net = TwoLayerScoreNet(width, ensemble=3, generator=make_generators([1, 2, 3]))
        res = train_sgd(net, data, MU, SIGMA, lr=[0.01, 0.1, 0.3], steps=40,
                        batch_size=batch_size, generator=make_generators([4, 5, 6]))
        out.append(_params(net) + [res.loss_history])
    for got, ref in zip(*out):
        assert _same(got, ref)


def test_torch_path_in_chunks_equals_one_piece(monkeypatch):
    """Large ensembles run the torch step in chunks below torch's parallel grain; the result
    is the same as in one piece."""
    whole = _run(monkeypatch, False, F64, K=7, steps=300, average_last=20)
    monkeypatch.setattr(_steps, "_GRAIN", 2 * 40)            # chunks of 2 members of width 40
    assert len(_steps.make_trainer(TwoLayerScoreNet(40, ensemble=7), torch.ones(7), 13,
                                   "sorted").parts) == 4
    chunked = _run(monkeypatch, False, F64, K=7, steps=300, average_last=20)
    for got, ref in zip(chunked, whole):
        assert torch.equal(got, ref)


def test_method_choice_and_the_no_numba_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("DSMLIB_NO_NUMBA", "1")
    assert _steps.choose_method("auto", 1, cpu) == "sorted"
    assert _steps.choose_method("auto", 3, cpu) == "dense"
    with pytest.raises(RuntimeError, match="numba"):
        _steps.choose_method("numba", 1, cpu)
    with pytest.raises(ValueError, match="1-D"):
        _steps.choose_method("numba", 2, cpu)
    with pytest.raises(ValueError, match="method"):
        _steps.choose_method("fast", 1, cpu)
    monkeypatch.setenv("DSMLIB_NO_NUMBA", "0")
    expect = "numba" if _steps.kernel_available() else "sorted"
    assert _steps.choose_method("auto", 1, cpu) == expect


def _round_once(exact, dtype):
    """Rationals rounded to nearest (ties to even) in dtype, as a tensor."""
    from fractions import Fraction
    np_t = np.float32 if dtype == torch.float32 else np.float64
    out = []
    for e in exact:
        c = np_t(float(e))                  # float(Fraction) is correctly rounded to float64
        cands = [c, np.nextafter(c, np_t(np.inf)), np.nextafter(c, np_t(-np.inf))]
        dist = [abs(Fraction(float(v)) - e) for v in cands]
        best = min(dist)
        ties = [v for v, dv in zip(cands, dist) if dv == best]
        even = [v for v in ties if int(np.array(v).view(np.uint32 if np_t is np.float32
                                                        else np.uint64)) % 2 == 0]
        out.append((even or ties)[0])
    return torch.from_numpy(np.array(out, dtype=np_t))


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_torch_fuses_what_the_kernel_assumes(dtype):
    """The probe says which torch operations round once; check it on other inputs: torch.addcmul
    and torch.add with alpha against x y + z rounded once (exact rationals) or twice."""
    from fractions import Fraction
    from dsmlib import _kernel1d
    add, mul = _kernel1d.torch_fuses(dtype)
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(300, generator=g, dtype=F64).to(dtype) for _ in range(3))
    alpha = torch.full_like(x, 0.7)

    def once(u, v, w):
        return _round_once([Fraction(a) * Fraction(b) + Fraction(c) for a, b, c in
                            zip(u.tolist(), v.tolist(), w.tolist())], dtype)

    assert not torch.equal(once(x, y, z), x * y + z)           # the check tells them apart
    assert torch.equal(torch.addcmul(z, x, y), once(x, y, z) if mul else x * y + z)
    assert torch.equal(torch.add(z, x, alpha=0.7), once(x, alpha, z) if add else x * alpha + z)


@needs_numba
def test_kernel_interrupt_leaves_the_last_completed_block(monkeypatch):
    """The kernel runs whole blocks: SIGINT during block 2 stops the run after block 2."""
    monkeypatch.setenv("DSMLIB_NO_NUMBA", "0")
    data = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(92))
    original = _steps._Kernel1D.run_block
    calls = {"n": 0}

    def run_block(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(_steps._Kernel1D, "run_block", run_block)
    handler = signal.getsignal(signal.SIGINT)
    net = _net(16, ensemble=2, seed=93)
    with pytest.raises(KeyboardInterrupt):
        train_sgd(net, data, MU, SIGMA, lr=0.05, steps=2000, generator=make_generators([1, 2]))
    monkeypatch.setattr(_steps._Kernel1D, "run_block", original)
    assert calls["n"] == 2
    ref = _net(16, ensemble=2, seed=93)
    train_sgd(ref, data, MU, SIGMA, lr=0.05, steps=2 * training._BLOCK,
              generator=make_generators([1, 2]))
    for p, q in zip(_params(net), _params(ref)):
        assert torch.equal(p, q)
    assert signal.getsignal(signal.SIGINT) is handler
