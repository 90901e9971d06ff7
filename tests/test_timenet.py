"""Tests of dsmlib.timenet and dsmlib.timenet_training: the time-conditioned net against dense float64 formulas, one SGD step
against autograd, the batched trainer against separate runs, and learning a Gaussian score."""

import math

import numpy as np
import pytest
import torch

import dsmlib.timenet as tn
import dsmlib.timenet_training as tt
from dsmlib.sampling import reverse_sde_sample
from dsmlib.schedule import ou_mu, ou_sigma


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gens(seeds):
    return [_gen(s) for s in seeds]


def _dense_r(W1, b, W2, t, x):
    """r(t, x) = (1/m) sum_l W2[:, l] max(0, W1[l, 0] t + sum_j W1[l, j+1] x_j + b_l), in NumPy."""
    W1, b, W2 = (np.asarray(p.detach(), dtype=np.float64) for p in (W1, b, W2))
    m = W1.shape[0]
    out = np.zeros((len(x), W2.shape[0]))
    for i, (ti, xi) in enumerate(zip(t, x)):
        u = np.concatenate([[ti], np.atleast_1d(xi)])
        for l in range(m):
            out[i] += W2[:, l] * max(0.0, float(W1[l] @ u + b[l]))
    return out / m


# ----------------------------------------------------------------- the network

def test_init_shapes_and_statistics():
    net = tn.TimeScoreNet(3000, 4, generator=_gen(0), dtype=torch.float64)
    assert net.W1.shape == (3000, 5) and net.b.shape == (3000,) and net.W2.shape == (4, 3000)
    assert float(net.W1.detach().var()) == pytest.approx(1 / 5, rel=0.05)
    assert float(net.W2.detach().var()) == pytest.approx(1.0, rel=0.05)
    assert bool((net.b == 0).all())
    ens = tn.TimeScoreNet(7, 2, ensemble=3, generator=_gen(0))
    assert ens.W1.shape == (3, 7, 3) and ens.b.shape == (3, 7) and ens.W2.shape == (3, 2, 7)
    assert ens.W1.dtype == torch.get_default_dtype()
    assert "ensemble=3" in repr(ens)


def test_float32_and_float64_nets_from_one_seed_agree():
    a = tn.TimeScoreNet(30, 3, ensemble=2, generator=_gen(3), dtype=torch.float64)
    b = tn.TimeScoreNet(30, 3, ensemble=2, generator=_gen(3), dtype=torch.float32)
    assert torch.allclose(a.W1.float(), b.W1) and torch.allclose(a.W2.float(), b.W2)
    # one generator for an ensemble: members drawn one after the other
    g = _gen(3)
    first = tn.TimeScoreNet(30, 3, generator=g, dtype=torch.float64)
    second = tn.TimeScoreNet(30, 3, generator=g, dtype=torch.float64)
    assert torch.equal(a.W1[0], first.W1) and torch.equal(a.W2[1], second.W2)


def test_generator_list_members_equal_single_nets():
    ens = tn.TimeScoreNet(9, 2, ensemble=3, generator=_gens([4, 5, 6]))
    for k, s in enumerate([4, 5, 6]):
        single = tn.TimeScoreNet(9, 2, generator=_gen(s))
        m = ens.member(k)
        assert m.ensemble is None
        for p, q in zip((m.W1, m.b, m.W2), (single.W1, single.b, single.W2)):
            assert torch.equal(p, q)


@pytest.mark.parametrize("dim", [1, 3])
def test_forward_and_score_match_dense_formula(dim):
    net = tn.TimeScoreNet(13, dim, generator=_gen(1), dtype=torch.float64)
    with torch.no_grad():
        net.b.normal_(generator=_gen(2))
    g = _gen(3)
    n = 6
    x = torch.randn(n, generator=g, dtype=torch.float64) if dim == 1 else \
        torch.randn(n, dim, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) + 0.05
    ref = _dense_r(net.W1, net.b, net.W2, t.numpy(), x.numpy())
    ref = ref[:, 0] if dim == 1 else ref
    got = net(t, x)
    assert got.shape == x.shape
    assert np.allclose(got.detach().numpy(), ref, rtol=1e-12, atol=1e-14)
    # scalar time
    ref07 = _dense_r(net.W1, net.b, net.W2, [0.7] * n, x.numpy())
    ref07 = ref07[:, 0] if dim == 1 else ref07
    assert np.allclose(net(0.7, x).detach().numpy(), ref07, rtol=1e-12, atol=1e-14)
    # score = -r / sigma(t)
    sig = ou_sigma(t)
    expect = -got / (sig if dim == 1 else sig[:, None])
    assert torch.allclose(net.score(x, t), expect, rtol=1e-12)
    assert torch.allclose(net.score(x, 0.7), -net(0.7, x) / ou_sigma(0.7), rtol=1e-12)


def test_ensemble_forward_shapes_and_members():
    K, n, d = 3, 5, 2
    ens = tn.TimeScoreNet(8, d, ensemble=K, generator=_gen(7), dtype=torch.float64)
    g = _gen(8)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    xk = torch.randn(K, n, d, generator=g, dtype=torch.float64)
    tk = torch.rand(K, n, generator=g, dtype=torch.float64) + 0.1
    shared = ens(0.4, x)
    per = ens(tk, xk)
    assert shared.shape == (K, n, d) and per.shape == (K, n, d)
    for k in range(K):
        m = ens.member(k)
        assert torch.allclose(shared[k], m(0.4, x), rtol=1e-12)
        assert torch.allclose(per[k], m(tk[k], xk[k]), rtol=1e-12)
    assert ens.score(x, 0.4).shape == (K, n, d)
    e1 = tn.TimeScoreNet(8, 1, ensemble=2, generator=_gen(9))
    assert e1(0.3, torch.zeros(n)).shape == (2, n) and e1(0.3, torch.zeros(2, n)).shape == (2, n)


def test_score_drives_the_sampler():
    net = tn.TimeScoreNet(16, 2, generator=_gen(10))
    y = reverse_sde_sample(net.score, 20, 2, steps=5, generator=_gen(11))
    assert y.shape == (20, 2) and bool(torch.isfinite(y).all())
    ens = tn.TimeScoreNet(16, 2, ensemble=3, generator=_gen(10))
    y3 = reverse_sde_sample(ens.score, 20, 2, steps=5, ensemble=3, generator=_gen(11))
    assert y3.shape == (3, 20, 2)
    net1 = tn.TimeScoreNet(16, 1, generator=_gen(10))
    assert reverse_sde_sample(net1.score, 20, 1, steps=5, generator=_gen(11)).shape == (20,)


def test_network_validation():
    with pytest.raises(ValueError, match="width"):
        tn.TimeScoreNet(0, 2)
    with pytest.raises(TypeError, match="dim"):
        tn.TimeScoreNet(4, 2.0)
    with pytest.raises(ValueError, match="ensemble"):
        tn.TimeScoreNet(4, 2, ensemble=0)
    with pytest.raises(ValueError, match="2 entries"):
        tn.TimeScoreNet(4, 2, ensemble=3, generator=_gens([1, 2]))
    with pytest.raises(ValueError, match="needs an ensemble"):
        tn.TimeScoreNet(4, 2, generator=_gens([1]))
    with pytest.raises(TypeError, match="generator"):
        tn.TimeScoreNet(4, 2, generator=5)
    with pytest.raises(TypeError, match="dtype"):
        tn.TimeScoreNet(4, 2, dtype=torch.int32)
    net = tn.TimeScoreNet(4, 2, generator=_gen(0))
    with pytest.raises(ValueError, match="x must have shape"):
        net(0.5, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="t must be"):
        net(torch.zeros(4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="t must be > 0"):
        net.score(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="x"):
        net(0.5, torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="needs an ensemble"):
        net.member(0)
    with pytest.raises(ValueError, match="k must be <"):
        tn.TimeScoreNet(4, 2, ensemble=2, generator=_gen(0)).member(2)


# ----------------------------------------------------------------- gradients and one SGD step

@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_all"])
@pytest.mark.parametrize("chunk", [4, 7, 1000])
def test_loss_and_grads_match_autograd(reduction, chunk):
    g = _gen(12)
    K, B, m, d = 3, 23, 11, 2
    W1 = torch.randn(K, m, d + 1, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(K, m, generator=g, dtype=torch.float64, requires_grad=True)
    W2 = torch.randn(K, d, m, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(K, B, d + 1, generator=g, dtype=torch.float64)
    z = torch.randn(K, B, d, generator=g, dtype=torch.float64)
    r = torch.relu(u @ W1.transpose(1, 2) + b[:, None, :]) @ W2.transpose(1, 2) / m
    sq = ((r - z) ** 2).sum(dim=(1, 2))
    scale = {"mean": 1 / B, "sum": 1.0, "mean_all": 1 / (B * d)}[reduction]
    ref = torch.autograd.grad((scale * sq).sum(), (W1, b, W2))
    loss, *grads = tt._loss_and_grads(W1.detach(), b.detach(), W2.detach(), u, z, reduction,
                                      chunk=chunk)
    assert torch.allclose(loss, sq.detach() / B, rtol=1e-12)
    for got, want in zip(grads, ref):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_one_training_step_matches_autograd_reference(reduction):
    # Reproduce the first batch independently from a copy of each member's generator
    # (order: data indices, time indices, noise) and take one float64 autograd SGD step.
    K, m, d, n, B = 2, 12, 2, 5, 17
    T, delta, num_times = 1.0, 0.01, 100
    lr = torch.tensor([0.3, 0.05], dtype=torch.float64)
    if reduction == "sum":
        lr = lr / B
    data = torch.randn(n, d, generator=_gen(13), dtype=torch.float64)
    net = tn.TimeScoreNet(m, d, ensemble=K, generator=_gens([1, 2]), dtype=torch.float64)
    start = [p.detach().clone() for p in (net.W1, net.b, net.W2)]
    seeds = [21, 22]
    times = torch.linspace(delta, T, num_times, dtype=torch.float64)
    sig = torch.sqrt(1 - torch.exp(-2 * times))
    probs = sig / sig.sum()
    new_params = []
    for k in range(K):
        g = _gen(seeds[k])
        idx = torch.randint(n, (B,), generator=g)
        ti = torch.multinomial(probs, B, replacement=True, generator=g)
        z = torch.randn(B, d, generator=g, dtype=torch.float64)
        t = times[ti]
        xt = torch.exp(-t)[:, None] * data[idx] + torch.sqrt(1 - torch.exp(-2 * t))[:, None] * z
        W1, b, W2 = (p[k].clone().requires_grad_(True) for p in start)
        r = torch.relu(torch.cat([t[:, None], xt], 1) @ W1.T + b) @ W2.T / m
        loss = ((r - z) ** 2).sum()
        if reduction == "mean":
            loss = loss / B
        grads = torch.autograd.grad(loss, (W1, b, W2))
        new_params.append([p.detach() - m * lr[k] * gp for p, gp in zip((W1, b, W2), grads)])
    res = tt.train_time_score_net(net, data, lr=lr, steps=1, batch_size=B, reduction=reduction,
                                  generator=_gens(seeds))
    for k in range(K):
        for got, want in zip((net.W1[k], net.b[k], net.W2[k]), new_params[k]):
            assert torch.allclose(got, want, rtol=1e-11, atol=1e-13)
    assert res.loss_history.shape == (1, K) and not bool(res.diverged.any())


# ----------------------------------------------------------------- the trainer

def test_ensemble_equals_members_trained_separately():
    data = torch.randn(6, 2, generator=_gen(14), dtype=torch.float64)
    lrs = [0.4, 0.1, 0.02]
    kw = dict(steps=25, batch_size=40, time_weighting="inverse_sigma")
    ens = tn.TimeScoreNet(20, 2, ensemble=3, generator=_gens([1, 2, 3]), dtype=torch.float64)
    res = tt.train_time_score_net(ens, data, lr=torch.tensor(lrs, dtype=torch.float64),
                                  generator=_gens([7, 8, 9]), log_every=1, **kw)
    assert res.loss_history.shape == (25, 3)
    for k in range(3):
        single = tn.TimeScoreNet(20, 2, generator=_gen(k + 1), dtype=torch.float64)
        r1 = tt.train_time_score_net(single, data, lr=lrs[k], generator=_gen(7 + k), log_every=1,
                                     **kw)
        for p, q in zip((ens.W1[k], ens.b[k], ens.W2[k]), (single.W1, single.b, single.W2)):
            assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)
        assert torch.allclose(res.loss_history[:, k], r1.loss_history, rtol=1e-10)
        assert r1.loss_history.shape == (25,) and r1.diverged.shape == ()
        assert r1.lr == lrs[k] and isinstance(r1.lr, float)
    assert torch.equal(res.lr, torch.tensor(lrs, dtype=torch.float64))


def test_reduction_sum_is_mean_with_batch_times_larger_lr():
    data = torch.randn(4, 1, generator=_gen(15), dtype=torch.float64)
    a = tn.TimeScoreNet(10, 1, generator=_gen(1), dtype=torch.float64)
    b = tn.TimeScoreNet(10, 1, generator=_gen(1), dtype=torch.float64)
    tt.train_time_score_net(a, data, lr=0.2, steps=10, batch_size=8, generator=_gen(2))
    tt.train_time_score_net(b, data, lr=0.2 / 8, steps=10, batch_size=8, reduction="sum",
                            generator=_gen(2))
    assert torch.allclose(a.W2, b.W2, rtol=1e-10) and torch.allclose(a.W1, b.W1, rtol=1e-10)


def test_log_every_averages_windows():
    data = torch.randn(5, 2, generator=_gen(16))
    a = tn.TimeScoreNet(10, 2, generator=_gen(1))
    b = tn.TimeScoreNet(10, 2, generator=_gen(1))
    ra = tt.train_time_score_net(a, data, lr=0.1, steps=11, batch_size=16, generator=_gen(2),
                                 log_every=1)
    rb = tt.train_time_score_net(b, data, lr=0.1, steps=11, batch_size=16, generator=_gen(2),
                                 log_every=4)
    h = ra.loss_history
    want = torch.stack([h[:4].mean(), h[4:8].mean(), h[8:].mean()])
    assert torch.allclose(rb.loss_history, want, rtol=1e-5)
    assert rb.log_steps.tolist() == [4, 8, 11]
    assert torch.allclose(rb.final_loss, want[-1], rtol=1e-5)
    assert rb.steps == 11 and rb.steps_per_second > 0


def test_divergence_is_flagged_and_frozen():
    data = 3 * torch.randn(8, 2, generator=_gen(17))
    ens = tn.TimeScoreNet(50, 2, ensemble=2, generator=_gens([1, 2]))
    res = tt.train_time_score_net(ens, data, lr=torch.tensor([50.0, 0.05]), steps=30,
                                  batch_size=64, generator=_gens([3, 4]), log_every=1)
    assert res.diverged.tolist() == [True, False]
    at = int(res.diverged_step[0])
    assert 0 < at < 30 and int(res.diverged_step[1]) == -1
    for p in (ens.W1, ens.b, ens.W2):
        assert bool(torch.isfinite(p).all())
    # history: finite before the divergence step, NaN from it on; the healthy member finite
    h = res.loss_history
    assert bool(torch.isfinite(h[:at, 0]).all()) and bool(torch.isnan(h[at:, 0]).all())
    assert bool(torch.isfinite(h[:, 1]).all())
    # the member is frozen at its parameters before the update that broke it: finite outputs
    frozen = ens.member(0)
    t = torch.full((64,), 0.5)
    assert bool(torch.isfinite(frozen(t, data[:1].expand(64, 2))).all())
    # the healthy member is untouched by its neighbour's divergence
    single = tn.TimeScoreNet(50, 2, generator=_gen(2))
    tt.train_time_score_net(single, data, lr=0.05, steps=30, batch_size=64, generator=_gen(4))
    assert torch.allclose(ens.W2[1], single.W2, rtol=1e-5, atol=1e-6)
    # a low threshold flags a member whose loss exceeds it
    net = tn.TimeScoreNet(20, 2, generator=_gen(5))
    r = tt.train_time_score_net(net, data, lr=0.01, steps=3, batch_size=8, generator=_gen(6),
                                diverge_threshold=1e-3)
    assert bool(r.diverged) and int(r.diverged_step) == 0


def test_time_grid_weights_and_batch_time_frequencies():
    times, probs = tt.time_grid_weights(1.0, 0.01, 100, "sigma")
    assert torch.allclose(times[1:] - times[:-1], torch.full((99,), 0.01, dtype=torch.float64))
    assert float(times[0]) == 0.01 and float(times[-1]) == 1.0
    assert torch.allclose(probs, ou_sigma(times) / ou_sigma(times).sum())
    _, pinv = tt.time_grid_weights(1.0, 0.01, 100, "inverse_sigma")
    assert torch.allclose(pinv, (1 / ou_sigma(times)) / (1 / ou_sigma(times)).sum())
    _, pu = tt.time_grid_weights(2.0, 0.5, 4, "uniform")
    assert torch.allclose(pu, torch.full((4,), 0.25, dtype=torch.float64))
    # the batch draws times with these probabilities and builds x_t = mu x_I + sigma z
    data = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    t5, p5 = tt.time_grid_weights(1.0, 0.2, 5, "sigma")
    mu, sig = ou_mu(t5), ou_sigma(t5)
    u, z = tt._draw_batch(data, t5, mu, sig, p5, 1, 20000, _gen(18), torch.float64,
                          torch.device("cpu"))
    counts = torch.stack([(u[0, :, 0] == t).sum() for t in t5]).double()
    se = torch.sqrt(20000 * p5 * (1 - p5))
    assert bool(((counts - 20000 * p5).abs() < 5 * se).all())
    i = torch.searchsorted(t5, u[0, :, 0].contiguous())
    x0 = (u[0, :, 1] - sig[i] * z[0, :, 0]) / mu[i]
    assert bool((torch.isclose(x0, data[0]) | torch.isclose(x0, data[1])).all())


def test_training_learns_the_gaussian_score():
    # 1-D Gaussian data N(0, v0) (many points): the learned score approaches the exact score
    # -y / (mu^2 v0 + sigma^2) of p_t, measured in relative L2(p_t) at moderate t, and the loss
    # approaches its minimum sum_t p(t) E|z - E[z | x_t]|^2 = sum_t p(t) v mu^2 / (v mu^2 + sig^2).
    v0 = 0.25
    data = math.sqrt(v0) * torch.randn(2000, generator=_gen(19))
    net = tn.TimeScoreNet(128, 1, generator=_gen(20))
    res = tt.train_time_score_net(net, data, lr=0.5, steps=800, batch_size=256, generator=_gen(21),
                                  log_every=1)
    h = res.loss_history
    times, probs = tt.time_grid_weights()
    v, mu, sig = float(data.double().var()), ou_mu(times), ou_sigma(times)
    floor = float((probs * v * mu ** 2 / (v * mu ** 2 + sig ** 2)).sum())
    assert float(h[0]) > 0.5  # about E|z|^2 = 1 at initialisation
    assert abs(float(h[-300:].mean()) - floor) < 0.015
    g = _gen(22)
    for t in (0.5, 1.0):
        var = ou_mu(t) ** 2 * v0 + ou_sigma(t) ** 2
        y = math.sqrt(var) * torch.randn(20000, generator=g)
        with torch.no_grad():
            s = net.score(y, t)
        exact = -y / var
        rel = float(((s - exact) ** 2).mean() / (exact ** 2).mean())
        assert rel < 0.02, (t, rel)


def test_trainer_validation():
    net = tn.TimeScoreNet(5, 2, generator=_gen(0))
    data = torch.randn(4, 2)
    ok = dict(lr=0.1, steps=2, batch_size=4)
    bad = [
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=[0.1, 0.2]), ValueError, "lr"),
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(T=0.01, delta=0.01), ValueError, "T must be larger"),
        (dict(delta=-0.1), ValueError, "delta"),
        (dict(num_times=0), ValueError, "num_times"),
        (dict(time_weighting="sqrt"), ValueError, "time_weighting"),
        (dict(reduction="max"), ValueError, "reduction"),
        (dict(log_every=0), ValueError, "log_every"),
        (dict(diverge_threshold=-1.0), ValueError, "diverge_threshold"),
        (dict(generator=_gens([1, 2])), ValueError, "needs an ensemble"),
    ]
    for kw, err, match in bad:
        args = dict(ok)
        args.update(kw)
        with pytest.raises(err, match=match):
            tt.train_time_score_net(net, data, **args)
    with pytest.raises(ValueError, match="dimension"):
        tt.train_time_score_net(net, torch.randn(4, 3), **ok)
    with pytest.raises(TypeError, match="net"):
        tt.train_time_score_net("net", data, **ok)
    ens = tn.TimeScoreNet(5, 2, ensemble=2, generator=_gen(0))
    with pytest.raises(ValueError, match="one entry per ensemble member"):
        tt.train_time_score_net(ens, data, lr=[0.1, 0.2, 0.3], steps=1)
    with pytest.raises(ValueError, match="lr entries"):
        tt.train_time_score_net(ens, data, lr=[0.1, -0.2], steps=1)


# ----------------------------------------------------------------- device-ready paths (run on CPU)

def _block_reference(net, data, lr, seeds, B, S, reduction="mean"):
    """``S`` SGD steps with block draws (rng_block >= S, steps = S: one block), reproduced from
    copies of the generators: per member data indices (S, B), then float64 uniforms turned into
    time indices by the inverse CDF, then noise (S, B, d); step s uses row s. Float64 autograd."""
    K, m, d = net.ensemble, net.width, net.dim
    times = torch.linspace(0.01, 1.0, 100, dtype=torch.float64)
    sig = torch.sqrt(1 - torch.exp(-2 * times))
    cdf = torch.cumsum(sig / sig.sum(), 0)
    out = []
    for k in range(K):
        g = _gen(seeds[k])
        x = data[k] if data.dim() == 3 else data
        idx = torch.randint(x.shape[0], (1, S, B), generator=g)[0]
        uni = torch.rand((1, S, B), generator=g, dtype=torch.float64)[0]
        z = torch.randn((1, S, B, d), generator=g, dtype=torch.float64)[0]
        ti = torch.searchsorted(cdf, uni, right=True).clamp(max=99)
        params = [p[k].detach().clone() for p in (net.W1, net.b, net.W2)]
        for s in range(S):
            t = times[ti[s]]
            xt = (torch.exp(-t)[:, None] * x[idx[s]]
                  + torch.sqrt(1 - torch.exp(-2 * t))[:, None] * z[s])
            W1, b, W2 = (p.requires_grad_(True) for p in params)
            r = torch.relu(torch.cat([t[:, None], xt], 1) @ W1.T + b) @ W2.T / m
            loss = ((r - z[s]) ** 2).sum() / (B * (d if reduction == "mean_all" else 1))
            grads = torch.autograd.grad(loss, (W1, b, W2))
            params = [p.detach() - m * lr[k] * gp for p, gp in zip((W1, b, W2), grads)]
        out.append(params)
    return out


@pytest.mark.parametrize("per_member_data", [False, True])
def test_block_draws_match_autograd_reference(per_member_data):
    K, m, d, n, B, S = 2, 12, 3, 5, 17, 4
    data = torch.randn((K, n, d) if per_member_data else (n, d), generator=_gen(30),
                       dtype=torch.float64)
    lr = torch.tensor([0.3, 0.05], dtype=torch.float64)
    net = tn.TimeScoreNet(m, d, ensemble=K, generator=_gens([1, 2]), dtype=torch.float64)
    want = _block_reference(net, data, lr, [31, 32], B, S, "mean_all")
    res = tt.train_time_score_net(net, data, lr=lr, steps=S, batch_size=B, rng_block=S,
                                  reduction="mean_all", generator=_gens([31, 32]))
    for k in range(K):
        for got, ref in zip((net.W1[k], net.b[k], net.W2[k]), want[k]):
            assert torch.allclose(got, ref, rtol=1e-11, atol=1e-13)
    assert not bool(res.diverged.any())


def test_block_draws_time_frequencies_follow_the_weights():
    data = torch.zeros(3, 1, dtype=torch.float64)
    t5, p5 = tt.time_grid_weights(1.0, 0.2, 5, "sigma")
    u, z = tt._draw_block(data, t5, ou_mu(t5), ou_sigma(t5), torch.cumsum(p5, 0), 1, 4, 5000,
                          _gen(33), torch.float64, torch.device("cpu"))
    assert u.shape == (1, 4, 5000, 2) and z.shape == (1, 4, 5000, 1)
    counts = torch.stack([(u[..., 0] == t).sum() for t in t5]).double()
    se = torch.sqrt(20000 * p5 * (1 - p5))
    assert bool(((counts - 20000 * p5).abs() < 5 * se).all())


@pytest.mark.parametrize("rng_block", [None, 4])
def test_ensemble_with_per_member_data_equals_single_runs(rng_block):
    # member k of an ensemble with data[k] and generator k is bit for bit the single network
    # trained on data[k] with generator k, for per-step and block draws; steps (10) is not a
    # multiple of the block (4), so the last, shorter block is covered too
    data = torch.randn(3, 6, 2, generator=_gen(34))
    lrs = [0.5, 0.5, 0.1]
    ens = tn.TimeScoreNet(20, 2, ensemble=3, generator=_gens([1, 2, 3]))
    res = tt.train_time_score_net(ens, data, lr=torch.tensor(lrs), steps=10, batch_size=30,
                                  generator=_gens([7, 8, 9]), log_every=3, rng_block=rng_block,
                                  reduction="mean_all")
    for k in range(3):
        single = tn.TimeScoreNet(20, 2, generator=_gen(k + 1))
        r1 = tt.train_time_score_net(single, data[k], lr=lrs[k], steps=10, batch_size=30,
                                     generator=_gen(7 + k), log_every=3, rng_block=rng_block,
                                     reduction="mean_all")
        for p, q in zip((ens.W1[k], ens.b[k], ens.W2[k]), (single.W1, single.b, single.W2)):
            assert torch.equal(p, q)
        assert torch.equal(res.loss_history[:, k], r1.loss_history)
    assert res.loss_history.shape == (4, 3) and res.log_steps.tolist() == [3, 6, 9, 10]


def test_block_draws_log_and_divergence_like_per_step_draws():
    # the bookkeeping (loss windows, divergence step, freezing) is the same code in both modes
    data = 3 * torch.randn(8, 2, generator=_gen(17))
    ens = tn.TimeScoreNet(50, 2, ensemble=2, generator=_gens([1, 2]))
    res = tt.train_time_score_net(ens, data, lr=torch.tensor([50.0, 0.05]), steps=30,
                                  batch_size=64, generator=_gens([3, 4]), log_every=1,
                                  rng_block=7)
    assert res.diverged.tolist() == [True, False]
    at = int(res.diverged_step[0])
    assert 0 < at < 30 and int(res.diverged_step[1]) == -1
    h = res.loss_history
    assert bool(torch.isfinite(h[:at, 0]).all()) and bool(torch.isnan(h[at:, 0]).all())
    for p in (ens.W1, ens.b, ens.W2):
        assert bool(torch.isfinite(p).all())
    # loss windows: log_every=4 averages the per-step losses of log_every=1
    a = tn.TimeScoreNet(10, 2, generator=_gen(1))
    b = tn.TimeScoreNet(10, 2, generator=_gen(1))
    kw = dict(lr=0.1, steps=11, batch_size=16, rng_block=3)
    ra = tt.train_time_score_net(a, data, generator=_gen(2), log_every=1, **kw)
    rb = tt.train_time_score_net(b, data, generator=_gen(2), log_every=4, **kw)
    h = ra.loss_history
    want = torch.stack([h[:4].mean(), h[4:8].mean(), h[8:].mean()])
    assert torch.allclose(rb.loss_history, want, rtol=1e-5)
    assert torch.equal(a.W1, b.W1)


def test_block_draws_learn_the_gaussian_score():
    # the block stream is another stream of the same law: training still learns the score
    v0 = 0.25
    data = math.sqrt(v0) * torch.randn(2000, generator=_gen(19))
    net = tn.TimeScoreNet(128, 1, generator=_gen(20))
    tt.train_time_score_net(net, data, lr=0.5, steps=800, batch_size=256, generator=_gen(21),
                            rng_block=32)
    g = _gen(22)
    for t in (0.5, 1.0):
        var = ou_mu(t) ** 2 * v0 + ou_sigma(t) ** 2
        y = math.sqrt(var) * torch.randn(20000, generator=g)
        with torch.no_grad():
            s = net.score(y, t)
        rel = float(((s + y / var) ** 2).mean() / ((y / var) ** 2).mean())
        assert rel < 0.02, (t, rel)


def test_device_options_validation():
    net = tn.TimeScoreNet(5, 2, generator=_gen(0))
    data = torch.randn(4, 2)
    ok = dict(lr=0.1, steps=2, batch_size=4)
    with pytest.raises(ValueError, match="rng_block"):
        tt.train_time_score_net(net, data, rng_block=0, **ok)
    with pytest.raises(ValueError, match="cuda_graph=True needs"):
        tt.train_time_score_net(net, data, rng_block=2, cuda_graph=True, **ok)
    with pytest.raises(TypeError, match="cuda_graph"):
        tt.train_time_score_net(net, data, cuda_graph="yes", **ok)
    with pytest.raises(ValueError, match="one data set per member"):
        tt.train_time_score_net(net, torch.randn(2, 4, 2), **ok)
    ens = tn.TimeScoreNet(5, 2, ensemble=2, generator=_gen(0))
    with pytest.raises(ValueError, match="one data set per member"):
        tt.train_time_score_net(ens, torch.randn(3, 4, 2), **ok)
    with pytest.raises(ValueError, match="dimension"):
        tt.train_time_score_net(ens, torch.randn(2, 4, 3), **ok)


def test_unchecked_score_lets_nan_through():
    net = tn.TimeScoreNet(6, 2, generator=_gen(0))
    x = torch.full((3, 2), float("nan"))
    with pytest.raises(ValueError, match="x"):
        net.score(x, 0.5)
    assert bool(torch.isnan(net.score(x, 0.5, check=False)).all())
    ok = torch.randn(3, 2, generator=_gen(1))
    assert torch.equal(net.score(ok, 0.5, check=False), net.score(ok, 0.5))
    with pytest.raises(ValueError, match="t must be > 0"):
        net.score(ok, 0.0, check=False)


def test_fused_kernel_matches_the_torch_path_under_the_interpreter():
    # The optional Triton kernel (used on CUDA) run by Triton's CPU interpreter: gradients
    # against the float64 torch path, and a few training steps against the torch path. Skipped
    # where Triton is not installed (the device check of tools/paper_scale_gpu.py and the
    # trainer's first-batch check cover the GPU itself).
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    code = r"""
import torch
import dsmlib.timenet as tn
import dsmlib.timenet_training as tt
import dsmlib._fused_timenet as fz
assert fz.available()
g = torch.Generator().manual_seed(0)
for K, B, m, d in [(2, 70, 50, 2), (3, 45, 33, 5), (1, 40, 20, 10), (2, 33, 17, 1)]:
    W1, b, W2 = (torch.randn(K, m, d + 1, generator=g), torch.randn(K, m, generator=g),
                 torch.randn(K, d, m, generator=g))
    u, z = torch.randn(K, B, d + 1, generator=g), torch.randn(K, B, d, generator=g)
    for red in ("mean", "sum", "mean_all"):
        want = tt._loss_and_grads(W1.double(), b.double(), W2.double(), u.double(), z.double(),
                                  red, chunk=1000)
        got = fz.loss_and_grads(W1, b, W2, u, z, red)
        for x, y in zip(got, want):
            assert x.shape == y.shape and x.dtype == torch.float32
            assert float((x.double() - y).norm() / y.norm()) < 1e-6
data = 2 * torch.randn(6, 2, generator=g)
nets = []
for fused in (True, False):
    net = tn.TimeScoreNet(24, 2, ensemble=2,
                          generator=[torch.Generator().manual_seed(k) for k in (1, 2)])
    tt.train_time_score_net(net, data, lr=0.5, steps=6, batch_size=40, rng_block=4,
                            reduction="mean_all", fused=fused,
                            generator=[torch.Generator().manual_seed(k) for k in (3, 4)])
    nets.append(net)
for p, q in zip(nets[0].parameters(), nets[1].parameters()):
    assert float((p - q).norm() / q.norm()) < 1e-5
print("ok")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_fused_option_validation():
    import dsmlib._fused_timenet as fz
    net = tn.TimeScoreNet(5, 2, generator=_gen(0), dtype=torch.float64)
    data = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="fused"):
        tt.train_time_score_net(net, data, lr=0.1, steps=1, fused="auto")
    with pytest.raises(ValueError, match="fused=True needs"):   # float64, or no Triton
        tt.train_time_score_net(net, data, lr=0.1, steps=1, fused=True)
    assert fz.MAX_DIM == 14
