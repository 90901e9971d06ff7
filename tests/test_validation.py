"""Bad input gets a clear ValueError/TypeError naming the argument, across the public API.

This table is mirrored, row by row, in the book's page "Bad input and edge cases"
(book/validation.md); tests/test_validation.py::test_doc_table_lists_every_case checks they agree.
"""
from pathlib import Path

import pytest
import torch

import dsmlib as dsm

X = torch.tensor([-1.0, 0.0, 1.5])
NET = lambda **kw: dsm.TwoLayerScoreNet(8, **kw)

CASES = [
    # (id, call, exception, word that the message must contain)
    ("sigma <= 0", lambda: dsm.optimal_score(X, X, 0.9, 0.0), ValueError, "sigma"),
    ("negative sigma", lambda: dsm.dsm_risk("optimal", X, 0.9, -0.1), ValueError, "sigma"),
    ("mu <= 0", lambda: dsm.optimal_score(X, X, 0.0, 0.3), ValueError, "mu"),
    ("t < 0", lambda: dsm.ou_sigma(-0.5), ValueError, "t"),
    ("non-finite data", lambda: dsm.optimal_score(X, [0.0, float("nan")], 0.9, 0.3), ValueError, "data"),
    ("non-finite query", lambda: dsm.optimal_score([float("inf")], X, 0.9, 0.3), ValueError, "y"),
    ("non-finite sigma", lambda: dsm.optimal_score(X, X, 0.9, float("nan")), ValueError, "sigma"),
    ("empty data", lambda: dsm.optimal_score(X, [], 0.9, 0.3), ValueError, "data"),
    ("one point where Delta is needed", lambda: dsm.min_gap([1.0]), ValueError, "data"),
    ("one point for the threshold", lambda: dsm.theorem_lr_threshold([1.0], 0.9, 0.3), ValueError, "data"),
    ("y and data dimensions differ", lambda: dsm.optimal_score(torch.zeros(4, 3), torch.zeros(5, 2), 0.9, 0.3), ValueError, "y"),
    ("2-D y for 1-D data", lambda: dsm.optimal_score(torch.zeros(4, 2), X, 0.9, 0.3), ValueError, "y"),
    ("string data", lambda: dsm.optimal_score(X, "abc", 0.9, 0.3), TypeError, "data"),
    ("complex query", lambda: dsm.optimal_score(torch.zeros(2, dtype=torch.complex64), X, 0.9, 0.3), TypeError, "y"),
    ("string sigma", lambda: dsm.optimal_score(X, X, 0.9, "0.3"), TypeError, "sigma"),
    ("width < 1", lambda: dsm.TwoLayerScoreNet(0), ValueError, "width"),
    ("float width", lambda: dsm.TwoLayerScoreNet(10.0), TypeError, "width"),
    ("dim < 1", lambda: dsm.TwoLayerScoreNet(4, dim=0), ValueError, "dim"),
    ("ensemble < 1", lambda: dsm.TwoLayerScoreNet(4, ensemble=0), ValueError, "ensemble"),
    ("theory model without bound", lambda: dsm.TwoLayerScoreNet(4, fixed_inner=True), ValueError, "bound"),
    ("bound <= 0", lambda: dsm.TwoLayerScoreNet(4, fixed_inner=True, bound=0.0), ValueError, "bound"),
    ("steps < 0", lambda: dsm.train_sgd(NET(), X, 0.9, 0.3, lr=0.1, steps=-1), ValueError, "steps"),
    ("batch_size < 1", lambda: dsm.train_sgd(NET(), X, 0.9, 0.3, lr=0.1, steps=1, batch_size=0), ValueError, "batch_size"),
    ("lr <= 0", lambda: dsm.train_sgd(NET(), X, 0.9, 0.3, lr=0.0, steps=1), ValueError, "lr"),
    ("lr vector length != ensemble", lambda: dsm.train_sgd(NET(ensemble=3), X, 0.9, 0.3, lr=[0.1, 0.2], steps=1), ValueError, "lr"),
    ("unknown reduction", lambda: dsm.train_sgd(NET(), X, 0.9, 0.3, lr=0.1, steps=1, reduction="avg"), ValueError, "reduction"),
    ("data dimension != net dimension", lambda: dsm.train_sgd(NET(dim=2), X, 0.9, 0.3, lr=0.1, steps=1), ValueError, "data"),
    ("generator of the wrong type", lambda: dsm.train_sgd(NET(), X, 0.9, 0.3, lr=0.1, steps=1, generator=0), TypeError, "generator"),
    ("ratio outside (0, 1]", lambda: dsm.memorization_fraction(X, X, ratio=1.5), ValueError, "ratio"),
    ("ratio = 0", lambda: dsm.memorization_fraction(X, X, ratio=0.0), ValueError, "ratio"),
    ("bandwidth <= 0", lambda: dsm.mmd(X, X, bandwidth=0.0), ValueError, "bandwidth"),
    ("mmd dimension mismatch", lambda: dsm.mmd(torch.zeros(5, 2), torch.zeros(5, 3)), ValueError, "dim"),
    ("T <= delta", lambda: dsm.reverse_sde_sample(dsm.optimal_score_fn(X), 10, 1, T=0.01, delta=0.01), ValueError, "T"),
    ("delta <= 0", lambda: dsm.reverse_sde_sample(dsm.optimal_score_fn(X), 10, 1, delta=0.0), ValueError, "delta"),
    ("sampler steps < 1", lambda: dsm.reverse_sde_sample(dsm.optimal_score_fn(X), 10, 1, steps=0), ValueError, "steps"),
    ("score returning NaN", lambda: dsm.reverse_sde_sample(lambda x, t: x * float("nan"), 10, 1), FloatingPointError, "step"),
    ("A <= 0", lambda: dsm.theorem_excess_bound(X, 0.9, 0.3, 0.0), ValueError, "A"),
    ("d-dim data where 1-D is needed", lambda: dsm.tv_lower_bound(torch.zeros(4, 2), 0.9, 0.3), ValueError, "data"),
    ("sharpness in d > 1", lambda: dsm.sharpness(NET(dim=2), torch.zeros(4, 2), 0.9, 0.3), NotImplementedError, "1"),
    ("score_fn not callable", lambda: dsm.dsm_risk(3.0, X, 0.9, 0.3), TypeError, "score_fn"),
]


@pytest.mark.parametrize("call, exc, word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(call, exc, word):
    with pytest.raises(exc) as info:
        call()
    assert word in str(info.value), f"message {str(info.value)!r} does not name {word!r}"


def test_duplicate_points_give_zero_gap_and_infinite_threshold():
    data = torch.tensor([0.0, 1.0, 1.0])
    assert dsm.min_gap(data) == 0.0
    assert dsm.theorem_lr_threshold(data, 0.9, 0.3) == float("inf")
    assert dsm.theorem_excess_bound(data, 0.9, 0.3, 1.0) == 0.0


def test_doc_table_lists_every_case():
    page = (Path(__file__).resolve().parents[1] / "book" / "validation.md").read_text()
    missing = [c[0] for c in CASES if f"| {c[0]} |" not in page]
    assert not missing, f"book/validation.md lacks rows for: {missing}"
