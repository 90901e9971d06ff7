"""Tests of dsmlib.sampling: the backward-SDE sampler against exact Gaussian marginals."""

# Sample sizes keep every state tensor under 32768 entries (torch's intra-op grain size): on a
# busy shared CPU, multi-threaded element-wise ops can be orders of magnitude slower.

import math

import pytest
import torch

import dsmlib.sampling as smp
from dsmlib.schedule import ou_mu, ou_sigma


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gaussian_score(m0, c0):
    """Exact score of p_t when p_0 = N(m0, C0): -(Sigma_t)^{-1} (y - mu m0),
    Sigma_t = mu^2 C0 + sigma^2 I."""
    m0 = torch.as_tensor(m0, dtype=torch.float64)
    c0 = torch.as_tensor(c0, dtype=torch.float64)
    one_d = m0.dim() == 0

    def score(y, t):
        mu, sig = ou_mu(t), ou_sigma(t)
        if one_d:
            return -(y - mu * m0) / (mu ** 2 * c0 + sig ** 2)
        prec = torch.linalg.inv(mu ** 2 * c0 + sig ** 2 * torch.eye(len(m0), dtype=torch.float64))
        return -(y - mu * m0) @ prec  # prec symmetric

    return score


def _chain_moments(m0, c0, T, delta, steps):
    """Exact mean and covariance of the exponential-integrator chain driven by the exact
    Gaussian score (a linear Gaussian recursion), from Y_0 ~ N(0, I)."""
    m0 = torch.atleast_1d(torch.as_tensor(m0, dtype=torch.float64))
    c0 = torch.atleast_2d(torch.as_tensor(c0, dtype=torch.float64))
    d = m0.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    mean, cov = torch.zeros(d, dtype=torch.float64), eye.clone()
    times = smp.reverse_time_grid(T, delta, steps)
    for k in range(steps):
        t, h = float(times[k]), float(times[k] - times[k + 1])
        mu, sig = ou_mu(t), ou_sigma(t)
        prec = torch.linalg.inv(mu ** 2 * c0 + sig ** 2 * eye)
        a = math.exp(h) * eye - 2 * math.expm1(h) * prec
        mean = a @ mean + 2 * math.expm1(h) * prec @ (mu * m0)
        cov = a @ cov @ a.T + math.expm1(2 * h) * eye
    return mean, cov


def _target(m0, c0, delta):
    m0 = torch.atleast_1d(torch.as_tensor(m0, dtype=torch.float64))
    c0 = torch.atleast_2d(torch.as_tensor(c0, dtype=torch.float64))
    mu, sig = ou_mu(delta), ou_sigma(delta)
    return mu * m0, mu ** 2 * c0 + sig ** 2 * torch.eye(len(m0), dtype=torch.float64)


# ----------------------------------------------------------------- the numerical scheme

def test_zero_score_is_exact_ou_for_any_step():
    # With score = 0, Y_{k+1} = e^h Y_k + sqrt(e^{2h}-1) xi integrates dY = Y ds + sqrt(2) dB
    # exactly: Var = 2 e^{2(T - delta)} - 1 whatever the number of steps.
    T, delta = 1.0, 0.1
    exact = 2 * math.exp(2 * (T - delta)) - 1
    for steps in (1, 3, 50):
        y = smp.reverse_sde_sample(lambda x, t: torch.zeros_like(x), 40000, 1, T=T, delta=delta,
                                   steps=steps, generator=_gen(steps), dtype=torch.float64)
        se = exact * math.sqrt(2 / 30000)
        assert abs(float(y.var()) - exact) < 5 * se
        assert abs(float(y.mean())) < 5 * math.sqrt(exact / 30000)


def test_chain_matches_its_exact_law_1d():
    # Gaussian data N(m0, v0): the chain with the exact score is linear-Gaussian; its law after
    # `steps` steps is known exactly (recursion), whatever the start mismatch at T = 1.
    m0, v0, T, delta, steps, n = 1.5, 0.25, 1.0, 0.01, 100, 30000
    y = smp.reverse_sde_sample(_gaussian_score(m0, v0), n, 1, T=T, delta=delta, steps=steps,
                               generator=_gen(0), dtype=torch.float64)
    assert y.shape == (n,)
    mean, cov = _chain_moments(m0, v0, T, delta, steps)
    var = float(cov[0, 0])
    assert abs(float(y.mean()) - float(mean[0])) < 5 * math.sqrt(var / n)
    assert abs(float(y.var()) - var) < 5 * var * math.sqrt(2 / n)


def test_chain_converges_to_the_true_marginal_first_order():
    # Starting at large T (p_T ≈ N(0, 1)), the chain's law tends to p_delta with error O(h).
    m0, v0, T, delta = 1.5, 0.25, 8.0, 0.01
    tm, tc = _target(m0, v0, delta)
    errs = []
    for steps in (400, 800, 1600):
        mean, cov = _chain_moments(m0, v0, T, delta, steps)
        errs.append(float((mean - tm).abs().max() + (cov - tc).abs().max()))
    assert errs[2] < 6e-3  # about h = (T - delta) / steps
    assert 1.6 < errs[0] / errs[1] < 2.4 and 1.6 < errs[1] / errs[2] < 2.4


def test_gaussian_marginal_1d():
    # Monte Carlo against the continuous-time target N(mu m0, mu^2 v0 + sigma^2) at delta.
    m0, v0, T, delta, steps, n = -1.0, 0.5, 8.0, 0.05, 1600, 20000
    y = smp.reverse_sde_sample(_gaussian_score(m0, v0), n, 1, T=T, delta=delta, steps=steps,
                               generator=_gen(1), dtype=torch.float64)
    tm, tc = _target(m0, v0, delta)
    bias = 6e-3  # discretization error bound, see the previous test
    var = float(tc[0, 0])
    assert abs(float(y.mean()) - float(tm[0])) < 5 * math.sqrt(var / n) + bias
    assert abs(float(y.var()) - var) < 5 * var * math.sqrt(2 / n) + bias


def test_gaussian_marginal_3d_full_covariance():
    m0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.7, 0.0], [-0.3, 0.2, 0.4]], dtype=torch.float64)
    c0 = a @ a.T
    T, delta, steps, n = 1.0, 0.02, 100, 10000
    y = smp.reverse_sde_sample(_gaussian_score(m0, c0), n, 3, T=T, delta=delta, steps=steps,
                               generator=_gen(2), dtype=torch.float64)
    assert y.shape == (n, 3)
    mean, cov = _chain_moments(m0, c0, T, delta, steps)
    emp_mean, emp_cov = y.mean(0), torch.cov(y.T)
    sd = cov.diagonal().sqrt()
    assert bool(((emp_mean - mean).abs() < 5 * sd / math.sqrt(n)).all())
    # entrywise standard error of a sample covariance: sqrt((C_ii C_jj + C_ij^2) / n)
    se = torch.sqrt((torch.outer(cov.diagonal(), cov.diagonal()) + cov ** 2) / n)
    assert bool(((emp_cov - cov).abs() < 5 * se).all())
    # and from a large T the chain's law is the true marginal p_delta
    mean8, cov8 = _chain_moments(m0, c0, 8.0, delta, 1600)
    tm, tc = _target(m0, c0, delta)
    assert float((mean8 - tm).abs().max()) < 1e-2 and float((cov8 - tc).abs().max()) < 1e-2


# ----------------------------------------------------------------- memorization with s*

@pytest.mark.parametrize("dim", [1, 2])
def test_optimal_score_memorizes(dim):
    g = _gen(3)
    data = torch.tensor([-3.0, -0.5, 2.0, 4.5], dtype=torch.float64)
    if dim == 2:
        data = torch.stack([data, torch.tensor([1.0, -2.0, 2.5, 0.0], dtype=torch.float64)], 1)
    delta, n = 0.01, 2000
    y = smp.reverse_sde_sample(smp.optimal_score_fn(data), n, dim, T=1.0, delta=delta, steps=100,
                               generator=g, dtype=torch.float64)
    y2 = y.reshape(n, dim)
    centres = ou_mu(delta) * data.reshape(len(data), dim)
    dist = torch.cdist(y2, centres)
    nearest, which = dist.min(1)
    # every sample is a Gaussian blur (scale ~ sigma(delta) = 0.14) of some mu(delta) x_i ...
    assert float((nearest < 5 * ou_sigma(delta)).to(torch.float64).mean()) > 0.99
    # ... and every training point is reproduced
    counts = torch.bincount(which, minlength=len(data))
    assert bool((counts > 0.1 * n).all())


def test_optimal_score_fn_matches_optimal_score():
    from dsmlib.optimal import optimal_score
    data = torch.tensor([[0.0, 1.0], [2.0, -1.0], [1.0, 1.0]])
    x = torch.randn(7, 2, generator=_gen(4))
    f = smp.optimal_score_fn(data)
    assert torch.allclose(f(x, 0.3), optimal_score(x, data, ou_mu(0.3), ou_sigma(0.3)))
    with pytest.raises(ValueError, match="t"):
        f(x, 0.0)


# ----------------------------------------------------------------- interface

def test_determinism_and_generator():
    f = _gaussian_score(0.0, 1.0)
    a = smp.reverse_sde_sample(f, 50, 2, generator=_gen(5))
    b = smp.reverse_sde_sample(f, 50, 2, generator=_gen(5))
    c = smp.reverse_sde_sample(f, 50, 2, generator=_gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.get_default_dtype()


def test_one_dimensional_score_receives_vector():
    seen = []

    def score(x, t):
        seen.append((tuple(x.shape), type(t)))
        return -x[:, None]  # (N, 1) is accepted in 1-D

    y = smp.reverse_sde_sample(score, 11, 1, steps=4, generator=_gen(7))
    assert y.shape == (11,)
    assert seen == [((11,), float)] * 4


def test_time_grid_and_path():
    seen = []

    def score(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    out = smp.reverse_sde_sample(score, 5, 2, T=2.0, delta=0.5, steps=3, return_path=True,
                                 generator=_gen(8), dtype=torch.float64)
    assert isinstance(out, smp.ReversePath)
    assert out.path.shape == (4, 5, 2) and out.samples.shape == (5, 2)
    assert torch.equal(out.path[-1], out.samples)
    assert torch.allclose(out.times, torch.tensor([2.0, 1.5, 1.0, 0.5], dtype=torch.float64))
    assert seen == pytest.approx([2.0, 1.5, 1.0])  # score at the start of each step
    # same generator, no path: same samples
    y = smp.reverse_sde_sample(score, 5, 2, T=2.0, delta=0.5, steps=3, generator=_gen(8),
                               dtype=torch.float64)
    assert torch.equal(y, out.samples)


def test_ensemble_states():
    shapes = []

    def score(x, t):
        shapes.append(tuple(x.shape))
        return -x

    y = smp.reverse_sde_sample(score, 6, 3, steps=2, ensemble=4, generator=_gen(9))
    assert y.shape == (4, 6, 3) and shapes == [(4, 6, 3)] * 2
    y1 = smp.reverse_sde_sample(score, 6, 1, steps=2, ensemble=2, generator=_gen(9))
    assert y1.shape == (2, 6)


def test_bad_score_outputs():
    def nan_score(x, t):
        return torch.full_like(x, float("nan")) if t < 0.5 else torch.zeros_like(x)

    with pytest.raises(FloatingPointError, match=r"step \d+.*t = 0\.4"):
        smp.reverse_sde_sample(nan_score, 3, 2, T=1.0, delta=0.1, steps=9, generator=_gen(0))
    with pytest.raises(ValueError, match="shape"):
        smp.reverse_sde_sample(lambda x, t: x[:, :1], 3, 2, generator=_gen(0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        smp.reverse_sde_sample(lambda x, t: 0.0, 3, 2, generator=_gen(0))


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(T=0.5, delta=0.5), ValueError, "T must be larger than delta"),
    (dict(T=0.1, delta=0.5), ValueError, "T must be larger than delta"),
    (dict(delta=0.0), ValueError, "delta"),
    (dict(T=-1.0), ValueError, "T"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.0), TypeError, "steps"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(dim=0), ValueError, "dim"),
    (dict(ensemble=0), ValueError, "ensemble"),
    (dict(generator=3), TypeError, "generator"),
    (dict(dtype=torch.int64), TypeError, "dtype"),
    (dict(score_fn=3), TypeError, "score_fn"),
])
def test_validation(kwargs, err, match):
    args = dict(score_fn=lambda x, t: -x, num_samples=4, dim=2)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        smp.reverse_sde_sample(args.pop("score_fn"), args.pop("num_samples"), args.pop("dim"),
                               **args)


def test_reverse_time_grid_validation():
    with pytest.raises(ValueError, match="T must be larger"):
        smp.reverse_time_grid(1.0, 1.0, 10)
    g = smp.reverse_time_grid(1.0, 0.01, 99)
    assert g[0] == 1.0 and g[-1] == 0.01 and len(g) == 100
    assert torch.allclose(g[:-1] - g[1:], torch.full((99,), 0.01, dtype=torch.float64))


# ----------------------------------------------------------------- device-ready paths (run on CPU)

def test_generator_list_sets_equal_single_runs():
    from dsmlib.timenet import TimeScoreNet
    ens = TimeScoreNet(16, 2, ensemble=3, generator=[_gen(1), _gen(2), _gen(3)])
    y = smp.reverse_sde_sample(lambda x, t: ens.score(x, t, check=False), 20, 2, steps=6,
                               ensemble=3, generator=[_gen(11), _gen(12), _gen(13)])
    for k in range(3):
        yk = smp.reverse_sde_sample(ens.member(k).score, 20, 2, steps=6, generator=_gen(11 + k))
        assert torch.equal(y[k], yk)
    y1 = smp.reverse_sde_sample(lambda x, t: -x, 5, 1, steps=3, ensemble=2,
                                generator=[_gen(4), _gen(5)])
    assert torch.equal(y1[1], smp.reverse_sde_sample(lambda x, t: -x, 5, 1, steps=3,
                                                     generator=_gen(5)))


def test_batched_finiteness_check_names_the_first_bad_step():
    def nan_score(x, t):
        return torch.full_like(x, float("nan")) if t < 0.5 else -x

    times = smp.reverse_time_grid(1.0, 0.1, 9)
    first = int((times[:-1] < 0.5).nonzero()[0])
    for every in (1, 4, 100):
        with pytest.raises(FloatingPointError, match=rf"step {first} \(forward time t = 0\.4"):
            smp.reverse_sde_sample(nan_score, 3, 2, T=1.0, delta=0.1, steps=9,
                                   generator=_gen(0), check_every=every)
    y = smp.reverse_sde_sample(nan_score, 3, 2, T=1.0, delta=0.1, steps=9, generator=_gen(0),
                               nonfinite="keep")
    assert bool(torch.isnan(y).all())


def test_device_options_validation():
    score = lambda x, t: -x  # noqa: E731
    with pytest.raises(ValueError, match="needs ensemble"):
        smp.reverse_sde_sample(score, 4, 2, generator=[_gen(0)])
    with pytest.raises(ValueError, match="2 entries"):
        smp.reverse_sde_sample(score, 4, 2, ensemble=3, generator=[_gen(0), _gen(1)])
    with pytest.raises(TypeError, match="entries"):
        smp.reverse_sde_sample(score, 4, 2, ensemble=2, generator=[_gen(0), 1])
    with pytest.raises(ValueError, match="nonfinite"):
        smp.reverse_sde_sample(score, 4, 2, nonfinite="ignore")
    with pytest.raises(ValueError, match="check_every"):
        smp.reverse_sde_sample(score, 4, 2, check_every=0)
