import math

import numpy as np
import pytest
import torch

import dsmlib as dsm


@pytest.mark.parametrize("t", [0.0, 1e-8, 0.05, 0.2, 1.0, 30.0])
def test_mu_sigma_closed_forms(t):
    assert dsm.ou_mu(t) == pytest.approx(math.exp(-t), rel=1e-15)
    assert dsm.ou_sigma(t) == pytest.approx(math.sqrt(1 - math.exp(-2 * t)), rel=1e-9, abs=1e-300)
    assert dsm.ou_mu(t) ** 2 + dsm.ou_sigma(t) ** 2 == pytest.approx(1.0, rel=1e-14)


def test_small_t_sigma_is_accurate():
    # 1 - exp(-2t) cancels catastrophically; expm1 keeps sigma ~ sqrt(2t)
    assert dsm.ou_sigma(1e-12) == pytest.approx(math.sqrt(2e-12), rel=1e-9)


def test_paper_noise_levels():
    assert (round(dsm.ou_mu(0.05), 2), round(dsm.ou_sigma(0.05), 2)) == (0.95, 0.31)
    assert (round(dsm.ou_mu(0.2), 2), round(dsm.ou_sigma(0.2), 2)) == (0.82, 0.57)


def test_tensor_input_and_inverse():
    t = torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64)
    assert torch.allclose(dsm.ou_mu(t), torch.exp(-t))
    s = dsm.ou_sigma(np.array([0.01, 0.1, 1.0]))
    assert s.shape == (3,)
    for tt in [0.01, 0.1, 1.0]:
        assert dsm.time_from_sigma(dsm.ou_sigma(tt)) == pytest.approx(tt, rel=1e-12)


@pytest.mark.parametrize("bad, exc", [(-0.1, ValueError), (float("nan"), ValueError),
                                      ("0.1", TypeError), (None, TypeError),
                                      (torch.tensor([0.1, -1.0]), ValueError)])
def test_bad_times(bad, exc):
    with pytest.raises(exc, match="t"):
        dsm.ou_mu(bad)
    with pytest.raises(exc, match="t"):
        dsm.ou_sigma(bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_time_from_sigma_range(bad):
    with pytest.raises(ValueError, match="sigma"):
        dsm.time_from_sigma(bad)
