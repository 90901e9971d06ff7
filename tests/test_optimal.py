"""s* against independent oracles: autograd of the log mixture density, finite differences."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import dsmlib as dsm

F64 = torch.float64


def _oracle_score(y, data, mu, sigma):
    """Autograd of a float64 log mixture density written independently of dsmlib."""
    y = y.detach().clone().to(F64).requires_grad_(True)
    x = torch.as_tensor(data, dtype=F64)
    yy = y if y.dim() == 2 else y[:, None]
    xx = x if x.dim() == 2 else x[:, None]
    sq = ((yy[:, None, :] - mu * xx[None]) ** 2).sum(-1)
    logp = torch.logsumexp(-sq / (2 * sigma ** 2), 1)
    (g,) = torch.autograd.grad(logp.sum(), y)
    return g


@pytest.mark.parametrize("sigma", [1e-2, 0.1, 0.31, 1.0, 3.0])
def test_score_is_gradient_of_log_density_1d(sigma):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(7, generator=g, dtype=F64)
    mu = 0.9
    y = torch.linspace(-3, 3, 301, dtype=F64)
    s = dsm.optimal_score(y, data, mu, sigma)
    assert s.shape == y.shape and s.dtype == F64
    ref = _oracle_score(y, data, mu, sigma)
    assert torch.allclose(s, ref, rtol=1e-9, atol=1e-9 / sigma ** 2)
    # and it is the gradient of the library's own log density too
    yy = y.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(dsm.log_mixture_density(yy, data, mu, sigma).sum(), yy)
    assert torch.allclose(s, g2, rtol=1e-9, atol=1e-9 / sigma ** 2)


@pytest.mark.parametrize("d", [2, 5, 50])
def test_score_is_gradient_of_log_density_nd(d):
    g = torch.Generator().manual_seed(1)
    data = torch.randn(9, d, generator=g, dtype=F64)
    y = 0.8 * data[torch.arange(40) % 9] + 0.4 * torch.randn(40, d, generator=g, dtype=F64)
    s = dsm.optimal_score(y, data, 0.8, 0.4)
    assert s.shape == (40, d)
    assert torch.allclose(s, _oracle_score(y, data, 0.8, 0.4), rtol=1e-9, atol=1e-8)


def test_derivative_matches_finite_differences():
    data = torch.tensor([-1.3, -0.2, 0.1, 0.9, 2.0], dtype=F64)
    mu, sigma = 0.95, 0.2
    y = torch.linspace(-2, 2.5, 200, dtype=F64)
    h = 1e-5
    fd = (dsm.optimal_score(y + h, data, mu, sigma) - dsm.optimal_score(y - h, data, mu, sigma)) / (2 * h)
    d = dsm.optimal_score_derivative(y, data, mu, sigma)
    assert torch.allclose(d, fd, rtol=1e-6, atol=1e-4)


def test_posterior_form_matches_eq6():
    data = torch.tensor([-1.0, 0.5, 2.0], dtype=F64)
    mu, sigma = 0.8, 0.5
    y = torch.linspace(-3, 3, 50, dtype=F64)
    mean, var = dsm.posterior_moments(y, data, mu, sigma)
    phi = torch.exp(-(y[:, None] - mu * data) ** 2 / (2 * sigma ** 2))
    alpha = phi / phi.sum(1, keepdim=True)
    assert torch.allclose(mean, alpha @ data)
    assert torch.allclose(var, alpha @ data ** 2 - (alpha @ data) ** 2, atol=1e-12)
    assert torch.allclose(dsm.optimal_score(y, data, mu, sigma), (mu * mean - y) / sigma ** 2)


def test_single_point_is_gaussian_score():
    y = torch.linspace(-5, 5, 11, dtype=F64)
    assert torch.allclose(dsm.optimal_score(y, [1.5], 0.7, 0.3), (0.7 * 1.5 - y) / 0.09)
    assert torch.allclose(dsm.optimal_score_derivative(y, [1.5], 0.7, 0.3),
                          torch.full_like(y, -1 / 0.09))


def test_naive_formula_breaks_stable_does_not():
    data = torch.tensor([0.0, 1.0])
    y = torch.tensor([5.0])
    assert torch.isnan(dsm.naive_optimal_score(y, data, 0.95, 0.05)).all()
    s = dsm.optimal_score(y, data, 0.95, 0.05)
    assert torch.isfinite(s).all()
    assert s.item() == pytest.approx((0.95 - 5.0) / 0.05 ** 2, rel=1e-5)


@pytest.mark.parametrize("sigma", [1e-4, 1e-3, 10.0])
@pytest.mark.parametrize("ymax", [1.0, 1e3, 1e4])
def test_extreme_sigma_and_y_float64(sigma, ymax):
    data = torch.tensor([-1.0, -0.3, 0.4, 2.0], dtype=F64)
    y = torch.linspace(-ymax, ymax, 1001, dtype=F64)
    s = dsm.optimal_score(y, data, 0.9, sigma)
    d = dsm.optimal_score_derivative(y, data, 0.9, sigma)
    assert torch.isfinite(s).all() and torch.isfinite(d).all()
    # oracle: the nearest component dominates away from midpoints; use the autograd oracle
    ref = _oracle_score(y, data, 0.9, sigma)
    assert torch.allclose(s, ref, rtol=1e-9, atol=1e-9 * (1 + ymax) / sigma ** 2)


def test_float32_close_to_float64_oracle():
    data = torch.randn(50, generator=torch.Generator().manual_seed(3))
    y = torch.linspace(-4, 4, 500)
    s32 = dsm.optimal_score(y, data, 0.95, 0.31)
    assert s32.dtype == torch.float32
    s64 = dsm.optimal_score(y.double(), data.double(), 0.95, 0.31)
    assert torch.allclose(s32.double(), s64, rtol=1e-4, atol=1e-3)


def test_chunking_equals_one_block():
    g = torch.Generator().manual_seed(4)
    data = torch.randn(300, 3, generator=g, dtype=F64)
    y = torch.randn(1000, 3, generator=g, dtype=F64)
    a = dsm.optimal_score(y, data, 0.9, 0.2)
    b = dsm.optimal_score(y, data, 0.9, 0.2, chunk_size=7)
    assert torch.equal(a, b) or torch.allclose(a, b, rtol=1e-13, atol=1e-12)


def test_large_problem_runs_in_bounded_memory():
    # 2e4 queries x 1e5 points is an 8 GB float32 weight matrix as one block; chunks must keep the
    # peak resident memory of a fresh process under 2 GiB. (benchmarks/bench_memory.py runs the
    # full 1e6 x 1e5 case and prints its time and peak memory.)
    code = (
        "import resource, torch, dsmlib as dsm\n"
        "g = torch.Generator().manual_seed(5)\n"
        "data = torch.randn(100_000, generator=g); y = torch.randn(20_000, generator=g)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "s = dsm.optimal_score(y, data, 0.95, 0.05)\n"
        "assert torch.isfinite(s).all()\n"
        "ref = dsm.optimal_score(y[:50].double(), data.double(), 0.95, 0.05)\n"
        "assert torch.allclose(s[:50].double(), ref, rtol=1e-3, atol=1e-1)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    extra_kib = int(out.stdout.split()[-1])
    assert extra_kib < 2 * 1024 ** 2


def test_high_dimension_and_many_points():
    g = torch.Generator().manual_seed(6)
    data = torch.randn(200, 1000, generator=g, dtype=F64)
    y = 0.9 * data[:20] + 0.1 * torch.randn(20, 1000, generator=g, dtype=F64)
    s = dsm.optimal_score(y, data, 0.9, 0.1)
    assert torch.allclose(s, _oracle_score(y, data, 0.9, 0.1), rtol=1e-8, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=8),
       st.floats(0.01, 3.0), st.floats(0.05, 1.0), st.floats(-10, 10))
def test_score_bounded_by_extreme_components(points, sigma, mu, y0):
    # s*(y) is a convex combination of (mu x_i - y)/sigma^2, so it lies between the extremes.
    data = torch.tensor(points, dtype=F64)
    y = torch.tensor([y0], dtype=F64)
    s = dsm.optimal_score(y, data, mu, sigma).item()
    lo = (mu * data.min().item() - y0) / sigma ** 2
    hi = (mu * data.max().item() - y0) / sigma ** 2
    tol = 1e-9 * (abs(lo) + abs(hi) + 1)
    assert lo - tol <= s <= hi + tol
    assert dsm.optimal_score_derivative(y, data, mu, sigma).item() >= -1 / sigma ** 2 - tol


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(sigma=-1.0), ValueError, "sigma"),
    (dict(mu=0.0), ValueError, "mu"),
    (dict(mu=float("inf")), ValueError, "mu"),
    (dict(data=[]), ValueError, "data"),
    (dict(data=[0.0, float("nan")]), ValueError, "data"),
    (dict(data="abc"), TypeError, "data"),
    (dict(y=torch.zeros(3, 2)), ValueError, "y"),
    (dict(y=torch.tensor([1, 2], dtype=torch.complex64)), TypeError, "y"),
])
def test_bad_input(kwargs, exc, word):
    args = dict(y=torch.zeros(3), data=[0.0, 1.0], mu=0.9, sigma=0.3)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        dsm.optimal_score(**args)


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="y"):
        dsm.optimal_score(torch.zeros(4, 3), torch.zeros(5, 2), 0.9, 0.3)
    with pytest.raises(ValueError, match="one-dimensional"):
        dsm.optimal_score_derivative(torch.zeros(4, 2), torch.zeros(5, 2), 0.9, 0.3)
