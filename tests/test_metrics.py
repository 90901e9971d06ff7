"""Tests of dsmlib.metrics: MMD against a naive double loop and the Gaussian closed form,
nearest-neighbour distances against brute force, the fitted Gaussian against NumPy."""

import math

import numpy as np
import pytest
import torch

import dsmlib.metrics as mt


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _naive_mmd(x, y, bw, unbiased=True):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * bw ** 2))

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j or not unbiased)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j or not unbiased)
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    if unbiased:
        return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    return sxx / n ** 2 + syy / m ** 2 - 2 * sxy / (n * m)


def _gaussian_mmd2(s, shift, bw):
    """Population MMD^2 between N(0, s^2 I_d) and N(shift, s^2 I_d), Gaussian kernel of bandwidth
    bw: X - X' ~ N(0, 2 s^2 I) gives E k = (bw^2 / (bw^2 + 2 s^2))^{d/2}; X - Y ~ N(-shift, 2 s^2 I)
    multiplies it by exp(-|shift|^2 / (2 (bw^2 + 2 s^2)))."""
    shift = torch.as_tensor(shift, dtype=torch.float64)
    d = shift.numel()
    same = (bw ** 2 / (bw ** 2 + 2 * s ** 2)) ** (d / 2)
    cross = same * math.exp(-float((shift ** 2).sum()) / (2 * (bw ** 2 + 2 * s ** 2)))
    return 2 * same - 2 * cross


# ----------------------------------------------------------------- MMD

@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("d", [1, 3])
def test_mmd_matches_naive_double_loop(unbiased, d):
    g = _gen(0)
    x = torch.randn(7, d, generator=g, dtype=torch.float64) * 1.5
    y = torch.randn(9, d, generator=g, dtype=torch.float64) + 0.7
    ref = _naive_mmd(x, y, 0.8, unbiased)
    got = mt.mmd(x, y, 0.8, unbiased=unbiased)
    assert got.dtype == torch.float64 and got.shape == ()
    assert float(got) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    # chunked evaluation and 1-D inputs give the same value
    chunked = float(mt.mmd(x, y, 0.8, unbiased=unbiased, chunk_size=2))
    assert chunked == pytest.approx(ref, rel=1e-12, abs=1e-14)
    if d == 1:
        assert float(mt.mmd(x[:, 0], y[:, 0], 0.8, unbiased=unbiased)) == pytest.approx(
            ref, rel=1e-12, abs=1e-14)


def test_mmd_is_symmetric_and_translation_invariant():
    g = _gen(1)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64) * 2
    a = mt.mmd(x, y)
    assert torch.allclose(a, mt.mmd(y, x), rtol=1e-12)
    shift = torch.tensor([100.0, -50.0], dtype=torch.float64)
    assert torch.allclose(a, mt.mmd(x + shift, y + shift), rtol=1e-9)
    # float32 far from the origin stays accurate (inputs are centred before the Gram expansion)
    a32 = mt.mmd((x + shift).float(), (y + shift).float())
    assert abs(float(a32) - float(a)) < 1e-4


def test_mmd_same_distribution_is_unbiased():
    # E[MMD^2_u] = 0 when x and y come from one law; single values fluctuate around 0 (both signs).
    g = _gen(2)
    vals = torch.stack([mt.mmd(torch.randn(300, 2, generator=g, dtype=torch.float64),
                               torch.randn(300, 2, generator=g, dtype=torch.float64))
                        for _ in range(40)])
    mean, sd = float(vals.mean()), float(vals.std())
    assert abs(mean) < 4 * sd / math.sqrt(len(vals))
    assert bool((vals < 0).any()) and bool((vals > 0).any())
    # and the typical size is far below the value for clearly different laws
    shifted = mt.mmd(torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 1.0)
    assert float(vals.abs().max()) < 0.2 * float(shifted)


@pytest.mark.parametrize("s, shift, bw", [
    (1.0, [1.0, 0.5], 1.0),
    (0.7, [0.5, -0.5, 1.0, 0.0, 0.3], 2.0),
    (2.0, [3.0], 1.0),
])
def test_mmd_two_gaussians_closed_form(s, shift, bw):
    g = _gen(3)
    shift_t = torch.tensor(shift, dtype=torch.float64)
    d, n = len(shift), 3000
    x = s * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = s * torch.randn(n, d, generator=g, dtype=torch.float64) + shift_t
    exact = _gaussian_mmd2(s, shift, bw)
    got = float(mt.mmd(x, y, bw))
    # the U-statistic's standard deviation is O(1/sqrt(n)) times kernel-scale quantities (< 1)
    assert abs(got - exact) < 4 / math.sqrt(n) * math.sqrt(exact) + 4 / n


def test_mmd_validation():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="bandwidth"):
        mt.mmd(x, x, 0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mt.mmd(x, x, -1.0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        mt.mmd(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="y"):
        mt.mmd(x, torch.randn(1, 2))
    with pytest.raises(ValueError, match="x"):
        mt.mmd(torch.zeros(0, 2), x)
    with pytest.raises(ValueError, match="x"):
        mt.mmd(torch.zeros(2, 2, 2), x)
    with pytest.raises(TypeError, match="unbiased"):
        mt.mmd(x, x, unbiased=1)
    with pytest.raises(ValueError, match="chunk_size"):
        mt.mmd(x, x, chunk_size=0)


def test_mmd_moderately_large_runs_in_blocks():
    g = _gen(4)
    x = torch.randn(6000, 2, generator=g)
    y = torch.randn(5000, 2, generator=g)
    v = mt.mmd(x, y)
    assert v.dtype == torch.float32 and abs(float(v)) < 2e-3


# ----------------------------------------------------------------- nearest neighbours

def test_nearest_neighbor_distances_brute_force():
    g = _gen(5)
    data = torch.randn(12, 3, generator=g, dtype=torch.float64)
    samples = torch.randn(50, 3, generator=g, dtype=torch.float64)
    d, i = mt.nearest_neighbor_distances(samples, data, k=4, chunk_size=7)
    full = torch.sqrt(((samples[:, None, :] - data[None, :, :]) ** 2).sum(-1))
    ref, order = torch.sort(full, dim=1)
    assert d.shape == (50, 4) and i.shape == (50, 4)
    assert torch.allclose(d, ref[:, :4], rtol=1e-12)
    assert torch.equal(i, order[:, :4])
    assert bool((d[:, 1:] >= d[:, :-1]).all())
    # a sample sitting on a training point has distance exactly 0 to it
    d0, i0 = mt.nearest_neighbor_distances(data[3:4] + 0.0, data, k=1)
    assert float(d0[0, 0]) == 0.0 and int(i0[0, 0]) == 3


def test_nearest_neighbor_one_dimensional_and_validation():
    d, i = mt.nearest_neighbor_distances(torch.tensor([0.1, 2.9]), torch.tensor([0.0, 1.0, 3.0]))
    assert torch.allclose(d, torch.tensor([[0.1, 0.9], [0.1, 1.9]]))
    assert i.tolist() == [[0, 1], [2, 1]]
    with pytest.raises(ValueError, match="k must be <="):
        mt.nearest_neighbor_distances(torch.zeros(2), torch.zeros(2), k=3)
    with pytest.raises(ValueError, match="k"):
        mt.nearest_neighbor_distances(torch.zeros(2), torch.zeros(2), k=0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        mt.nearest_neighbor_distances(torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="samples"):
        mt.nearest_neighbor_distances(torch.zeros(0, 2), torch.zeros(3, 2))


# ----------------------------------------------------------------- memorization fraction

def test_memorization_fraction_hand_example():
    data = torch.tensor([0.0, 1.0, 10.0])
    # nearest / second-nearest distances: 0.1/0.9, 0.4/0.6, 0.2/0.8 and a tie 4.5/4.5
    samples = torch.tensor([0.1, 0.4, 0.8, 5.5])
    assert mt.memorization_fraction(samples, data) == pytest.approx(0.5)
    assert mt.memorization_fraction(samples, data, ratio=0.2) == pytest.approx(0.25)
    assert mt.memorization_fraction(samples, data, ratio=1.0) == pytest.approx(0.75)  # strict <


def test_memorization_fraction_copies_and_fresh_samples():
    g = _gen(6)
    data = 2 * torch.randn(10, 2, generator=g)
    copies = data[torch.randint(10, (500,), generator=g)] + 0.01 * torch.randn(500, 2, generator=g)
    assert mt.memorization_fraction(copies, data) == 1.0
    # midpoints of pairs are never memorized (both distances equal)
    mid = 0.5 * (data[:5] + data[5:])
    assert mt.memorization_fraction(mid, data) == 0.0


def test_memorization_fraction_validation():
    with pytest.raises(ValueError, match="ratio"):
        mt.memorization_fraction(torch.zeros(3), torch.tensor([0.0, 1.0]), ratio=0.0)
    with pytest.raises(ValueError, match="ratio"):
        mt.memorization_fraction(torch.zeros(3), torch.tensor([0.0, 1.0]), ratio=1.5)
    with pytest.raises(ValueError, match="at least 2"):
        mt.memorization_fraction(torch.zeros(3), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="dimension mismatch"):
        mt.memorization_fraction(torch.zeros(3, 2), torch.zeros(4, 3))
    with pytest.raises(TypeError, match="samples"):
        mt.memorization_fraction("abc", torch.zeros(4))


# ----------------------------------------------------------------- fitted Gaussian

def test_fitted_gaussian_matches_numpy_and_samples():
    g = _gen(7)
    data = torch.randn(40, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 2.0]], dtype=torch.float64) + 1.0
    fg = mt.fitted_gaussian(data)
    assert torch.allclose(fg.mean, torch.from_numpy(data.numpy().mean(0)))
    assert torch.allclose(fg.covariance, torch.from_numpy(np.cov(data.numpy().T)))
    n = 30000
    s = fg.sample(n, generator=_gen(8))
    assert s.shape == (n, 3) and s.dtype == torch.float64
    sd = fg.covariance.diagonal().sqrt()
    assert bool(((s.mean(0) - fg.mean).abs() < 5 * sd / math.sqrt(n)).all())
    cov = fg.covariance
    se = torch.sqrt((torch.outer(cov.diagonal(), cov.diagonal()) + cov ** 2) / n)
    assert bool(((torch.cov(s.T) - cov).abs() < 5 * se).all())
    assert torch.equal(s, fg.sample(n, generator=_gen(8)))
    mean, cov = fg  # unpacks as (mean, covariance)
    assert mean is fg.mean and cov is fg.covariance


def test_fitted_gaussian_rank_deficient_and_1d():
    g = _gen(9)
    data = torch.randn(5, 50, generator=g)  # d > n: singular covariance, still samplable
    fg = mt.fitted_gaussian(data)
    s = fg.sample(200, generator=g)
    assert s.shape == (200, 50) and bool(torch.isfinite(s).all())
    # samples live in the affine span of the data: mean + span of centred points (rank n - 1)
    resid = s - fg.mean
    q, _ = torch.linalg.qr(fg.centered.T)
    proj = resid @ q @ q.T
    assert torch.allclose(proj, resid, atol=1e-4)
    f1 = mt.fitted_gaussian(torch.tensor([0.0, 1.0, 2.0, 5.0]))
    assert f1.mean.shape == (1,) and f1.covariance.shape == (1, 1)
    assert float(f1.covariance[0, 0]) == pytest.approx(np.var([0.0, 1.0, 2.0, 5.0], ddof=1))
    assert f1.sample(7, generator=g).shape == (7,)


def test_fitted_gaussian_validation():
    with pytest.raises(ValueError, match="at least 2"):
        mt.fitted_gaussian(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="data"):
        mt.fitted_gaussian(torch.tensor([0.0, float("nan")]))
    fg = mt.fitted_gaussian(torch.randn(4, 2))
    with pytest.raises(ValueError, match="num_samples"):
        fg.sample(0)
    with pytest.raises(TypeError, match="generator"):
        fg.sample(3, generator=1)
