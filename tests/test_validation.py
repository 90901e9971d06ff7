"""Bad input gets a clear ValueError/TypeError naming the argument, across the public API.

This table is mirrored, row by row, in the book's page "Bad input and edge cases"
(book/validation.md); tests/test_validation.py::test_doc_table_lists_every_case checks they agree
(every case has a row, and the row's message is the one the library gives). The second half of
the file checks what is *not* an error: odd but valid inputs, and extreme values that give
+-inf rather than NaN; the last part checks the command lines.
"""
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dsmlib as dsm
from dsmlib import io as dsm_io

X = torch.tensor([-1.0, 0.0, 1.5])
X64 = X.double()
NET = lambda **kw: dsm.TwoLayerScoreNet(8, **kw)
TMP = Path(tempfile.mkdtemp(prefix="dsm_validation_"))     # results files of the table's cases


def _net_with(name, value, *, cls=dsm.TwoLayerScoreNet, **kw):
    net = cls(8, **kw) if cls is dsm.TwoLayerScoreNet else cls(8, 1)
    with torch.no_grad():
        getattr(net, name).view(-1)[0] = value
    return net


def _npz(name, **entries):
    """A results-like file in TMP holding ``entries`` (``__meta__`` as given)."""
    path = TMP / name
    np.savez(path, **{k: np.array(v) for k, v in entries.items()})
    return path


def _saved(name, version=None, arrays=None):
    path = TMP / name
    dsm.save_results(path, arrays or {"a": np.ones(2)}, {"x": 1}, overwrite=True)
    if version is not None:                  # the same file, as written by another version
        with np.load(path) as z:
            meta, data = json.loads(str(z["__meta__"])), {k: z[k] for k in z.files if k != "__meta__"}
        meta["version"] = version
        np.savez(path, **data, __meta__=np.array(json.dumps(meta)))
    return path


def score(y, t):                              # a sampler's score handed to a risk
    return -y


def _ones_net(W2):
    return dsm.TwoLayerScoreNet.from_parameters(torch.ones(3, 1), torch.zeros(3), W2)

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
    # --- NaN in, NaN out (issue 10): refused where it enters
    ("net holding NaN (relu_net_risk)", lambda: dsm.relu_net_risk(_net_with("W2", math.nan), X, 0.9, 0.3), ValueError, "W2"),
    ("net holding inf (sharpness)", lambda: dsm.sharpness(_net_with("b", math.inf), X, 0.9, 0.3), ValueError, "net.b"),
    ("net holding NaN (weighted_tv)", lambda: dsm.weighted_tv(_net_with("W1", math.nan), X, 0.9, 0.3), ValueError, "f.W1"),
    ("net holding NaN (excess_risk)", lambda: dsm.excess_risk(_net_with("W2", math.nan), X, 0.9, 0.3), ValueError, "score_fn.W2"),
    ("net holding NaN (train_sgd)", lambda: dsm.train_sgd(_net_with("W2", math.nan), X, 0.9, 0.3, lr=0.1, steps=1), ValueError, "net.W2"),
    ("TimeScoreNet holding NaN (train_time_score_net)", lambda: dsm.train_time_score_net(_net_with("W2", math.nan, cls=dsm.TimeScoreNet), X, lr=0.1, steps=1, batch_size=4), ValueError, "net.W2"),
    ("f returning NaN (weighted_tv)", lambda: dsm.weighted_tv(lambda y: y * math.nan, X, 0.9, 0.3), FloatingPointError, "f"),
    ("complex score (excess_risk)", lambda: dsm.excess_risk(lambda y: y.to(torch.complex64), X, 0.9, 0.3), TypeError, "score_fn"),
    ("complex score (reverse_sde_sample)", lambda: dsm.reverse_sde_sample(lambda x, t: x.to(torch.complex64), 4, 1, steps=2), TypeError, "score_fn"),
    ("complex f (weighted_tv)", lambda: dsm.weighted_tv(lambda y: y.to(torch.complex64), X, 0.9, 0.3), TypeError, "f"),
    ("score taking other arguments", lambda: dsm.dsm_risk(score, X, 0.9, 0.3), TypeError, "score_fn"),
    # --- numerics at the edges
    ("sigma^2 underflows (float64)", lambda: dsm.optimal_score(X64, X64, 0.9, 1e-160), ValueError, "sigma"),
    ("sigma^2 underflows (float32)", lambda: dsm.optimal_score(X, X, 0.9, 1e-20), ValueError, "sigma"),
    ("sigma^2 overflows", lambda: dsm.tv_lower_bound(X, 0.9, 1e200), ValueError, "sigma"),
    ("mu^2 underflows", lambda: dsm.theorem_lr_threshold(X, 1e-300, 0.3), ValueError, "mu"),
    ("an integer too large for float64", lambda: dsm.optimal_score(X, X, 10 ** 400, 0.3), ValueError, "mu"),
    ("values beyond the computation's dtype", lambda: dsm.optimal_score([1e300], X, 0.9, 0.3), ValueError, "y"),
    ("points beyond a float32 network's range", lambda: NET()(torch.tensor([1e200], dtype=torch.float64)), ValueError, "y"),
    ("transitions below float64's resolution (weighted_tv)", lambda: dsm.weighted_tv("optimal", torch.tensor([-1e8, 3e7, 1e8], dtype=torch.float64), 0.9, 0.3), ValueError, "sigma"),
    ("data whose sums overflow (tv_weight)", lambda: dsm.tv_weight(X64, torch.tensor([0.0, 1e308], dtype=torch.float64), 0.9, 0.3), ValueError, "data"),
    ("half-precision network", lambda: dsm.TwoLayerScoreNet(4, dtype=torch.float16), TypeError, "dtype"),
    ("half-precision parameters (relu_net_risk)", lambda: dsm.relu_net_risk(NET().half(), X, 0.9, 0.3), TypeError, "dtype"),
    ("half-precision samples", lambda: dsm.reverse_sde_sample(lambda x, t: -x, 4, 1, dtype=torch.float16), TypeError, "dtype"),
    ("sampler step too long for the dtype", lambda: dsm.reverse_sde_sample(lambda x, t: -x, 4, 1, T=800.0, steps=1), ValueError, "steps"),
    ("overflowing float32 risk (sharpness)", lambda: dsm.sharpness(_ones_net(torch.full((1, 3), 3e37)), X, 0.9, 1e-18), FloatingPointError, "overflow"),
    ("integer dtype for the nodes", lambda: dsm.noise_nodes(11, dtype=torch.int32), TypeError, "dtype"),
    ("width beyond int64", lambda: dsm.TwoLayerScoreNet(2 ** 63), ValueError, "width"),
    # --- odd inputs: devices, seeds, layouts, lengths
    ("seed >= 2^64", lambda: dsm.make_generators([0, 2 ** 64]), ValueError, "seeds[1]"),
    ("negative seed", lambda: dsm.make_generators([-1]), ValueError, "seeds[0]"),
    ("tensor on the meta device", lambda: dsm.optimal_score(torch.zeros(3, device="meta"), X, 0.9, 0.3), ValueError, "y"),
    ("meta device for a network", lambda: dsm.TwoLayerScoreNet(4, device="meta"), ValueError, "device"),
    ("malformed device", lambda: dsm.reverse_sde_sample(lambda x, t: -x, 4, 1, device="gpu0"), ValueError, "device"),
    ("unavailable device", lambda: dsm.train_sgd(NET(), X, 0.9, 0.3, lr=0.1, steps=1, device="cuda:99"), ValueError, "device"),
    ("sparse tensor", lambda: dsm.optimal_score(X.to_sparse(), X, 0.9, 0.3), TypeError, "y"),
    ("lr and risk of different lengths", lambda: dsm.prop6_tv_upper_bound(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.6, 0.7]), X, 0.9, 0.3, 1.0), ValueError, "lr"),
    # --- results files
    ("not an .npz file", lambda: dsm.load_results(TMP.joinpath("text.npz").write_text("hello") and TMP / "text.npz"), dsm.ResultsError, "readable"),
    ("__meta__ not a JSON object", lambda: dsm.load_results(_npz("list.npz", a=[1.0], __meta__="[1, 2]")), dsm.ResultsError, "__meta__"),
    ("__meta__ without a config", lambda: dsm.load_results(_npz("noconf.npz", a=[1.0], __meta__='{"version": "0.1.0", "checksum": ""}')), dsm.ResultsError, "config"),
    ("file from another dsmlib version", lambda: dsm.load_results(_saved("old.npz", version="0.0.1")), dsm.ResultsError, "dsmlib 0.0.1"),
    ("array missing from a file", lambda: dsm.load_results(_saved("few.npz"), expected_arrays=["a", "b"]), dsm.ResultsError, "'b'"),
    ("asking a loaded file for an absent array", lambda: dsm.load_results(_saved("few.npz"))[0]["b"], dsm.ResultsError, "'b'"),
    ("results folder is a file", lambda: dsm_io.check_writable(TMP.joinpath("afile").write_text("x") and TMP / "afile" / "r.npz"), dsm.ResultsError, "is a file"),
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


MACHINE_DEPENDENT = {"unavailable device"}   # the message says what this machine has


def _message(case):
    with pytest.raises(case[2]) as info:
        case[1]()
    return str(info.value).replace(str(TMP) + os.sep, "")


def _unescape(cell):
    """Markdown cell text as displayed: backslash escapes (\\_, \\*, \\|) removed."""
    return re.sub(r"\\([\\`*_|<>\[\]])", r"\1", cell)


def test_doc_table_lists_every_case():
    page = (Path(__file__).resolve().parents[1] / "book" / "validation.md").read_text()
    rows = {_unescape(m.group(1)): (m.group(2), _unescape(m.group(3))) for m in
            re.finditer(r"^\| (.+?) \| `(\w+)` \| (.+?) \|$", page, re.M)}
    missing = [c[0] for c in CASES if c[0] not in rows]
    assert not missing, f"book/validation.md lacks rows for: {missing}"
    wrong = [(c[0], rows[c[0]], (c[2].__name__, _message(c))) for c in CASES
             if rows[c[0]][0] != c[2].__name__
             or c[0] not in MACHINE_DEPENDENT and rows[c[0]][1] != _message(c)]
    assert not wrong, "book/validation.md rows differ from the library's messages:\n" + \
        "\n".join(f"{k}: page {p!r}, library {q!r}" for k, p, q in wrong)


# ---------------------------------------------------------------------------------------------
# what is not an error: odd but valid inputs, extreme values (+-inf or 0, never NaN)
# ---------------------------------------------------------------------------------------------

def _finite_or_inf(v):
    return not bool(torch.isnan(torch.as_tensor(v)).any())


def test_zero_d_arrays_and_requires_grad_inputs_train():
    net = NET(generator=torch.Generator().manual_seed(0))
    data = X.clone().requires_grad_()
    res = dsm.train_sgd(net, data, np.array(0.9), torch.tensor(0.3, requires_grad=True),
                        lr=np.array(0.1), steps=20, generator=torch.Generator().manual_seed(1))
    assert res.lr == pytest.approx(0.1) and isinstance(res.lr, float)
    ref = NET(generator=torch.Generator().manual_seed(0))
    dsm.train_sgd(ref, X, 0.9, 0.3, lr=0.1, steps=20, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref.parameters()))
    ens = NET(ensemble=2, generator=dsm.make_generators([0, 1]))
    dsm.train_sgd(ens, X, torch.tensor([0.9, 0.8], requires_grad=True), 0.3,
                  lr=torch.tensor([0.1, 0.2], requires_grad=True), steps=5)
    assert all(bool(torch.isfinite(p).all()) for p in ens.parameters())


def test_big_endian_longdouble_and_half_inputs():
    ref = dsm.optimal_score(X64, X64, 0.9, 0.3)
    big = np.array([-1.0, 0.0, 1.5], dtype=">f8")
    assert torch.equal(dsm.optimal_score(big, big, 0.9, 0.3), ref)
    ld = np.array([-1.0, 0.0, 1.5], dtype=np.longdouble)       # computed in float64
    assert torch.equal(dsm.optimal_score(ld, X64, 0.9, 0.3), ref)
    ro = np.array([-1.0, 0.0, 1.5])
    ro.flags.writeable = False                                  # no "not writable" warning
    assert torch.equal(dsm.optimal_score(ro, ro, 0.9, 0.3), ref)
    half = X.half()                                             # computed in float32
    out = dsm.optimal_score(half, half, 0.9, 0.01)
    assert out.dtype == torch.float32
    assert torch.equal(out, dsm.optimal_score(half.float(), half.float(), 0.9, 0.01))
    assert dsm.nearest_neighbor_distances(half, X)[0].dtype == torch.float32


def test_seeds_up_to_2_64_are_accepted():
    g = dsm.make_generators([0, 2 ** 64 - 1, np.uint64(2 ** 63 + 5)])
    assert g[1].initial_seed() == 2 ** 64 - 1 and g[2].initial_seed() == 2 ** 63 + 5


def test_optimal_score_at_extreme_but_legal_inputs_is_never_nan():
    # float32 queries at |y| ~ 1e27 with sigma = 1e-6: the true s* (~ -1e39 y/|y|) is beyond float32
    s = dsm.optimal_score(torch.tensor([1e27, -1e27, 0.5]), X, 0.9, 1e-6)
    assert s[0] == -math.inf and s[1] == math.inf and torch.isfinite(s[2])
    # data at +-1e20 queried midway: the logits overflow float32, the answer is exactly 0
    assert float(dsm.optimal_score(torch.tensor([0.0]), torch.tensor([-1e20, 1e20]), 0.9, 0.3)) == 0.0
    mean, var = dsm.posterior_moments(torch.tensor([0.0]), torch.tensor([-1e20, 1e20]), 0.9, 0.3)
    assert float(mean) == 0.0 and float(var) == math.inf     # 1e40 > float32's range
    big = torch.tensor([-1e200, 1e200], dtype=torch.float64)
    assert float(dsm.optimal_score(torch.tensor([0.0], dtype=torch.float64), big, 0.9, 0.3)) == 0.0
    d = dsm.optimal_score_derivative(torch.tensor([0.0, 1e19]), torch.tensor([-1e20, 1e20]), 0.9, 0.3)
    assert _finite_or_inf(d)
    # the smallest legal sigma in float64 still gives numbers, and in float32 (1.1e-19) too
    assert _finite_or_inf(dsm.optimal_score(X64, X64, 0.9, 1.5e-154))
    assert _finite_or_inf(dsm.optimal_score(X, X, 0.9, 1.1e-19))


def test_optimal_risk_has_no_cancellation():
    # R_n(s*) -> 0 as sigma -> 0 (Cor. 3) in float32 too: the residual is computed as
    # (mu / sigma^2) sum_j alpha_j (x_j - x_i), not as s*(Y) + z / sigma
    for sigma in (1e-4, 1e-3, 1e-2):
        r32, r64 = float(dsm.dsm_risk("optimal", X, 0.9, sigma)), float(dsm.dsm_risk("optimal", X64, 0.9, sigma))
        assert r32 <= 1e-6 and r64 <= 1e-12
    for sigma in (0.1, 0.5, 2.0):                 # where both forms are accurate, they agree
        new = dsm.dsm_risk("optimal", X64, 0.9, sigma)
        old = dsm.dsm_risk(lambda y: dsm.optimal_score(y, X64, 0.9, sigma), X64, 0.9, sigma)
        assert torch.allclose(new, old, rtol=1e-12, atol=1e-14)
        assert torch.allclose(dsm.dsm_risk("optimal", X, 0.9, sigma).double(), new, rtol=2e-6)
    x2 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    new = dsm.dsm_risk("optimal", x2, 0.9, 0.4, num_samples=500, generator=torch.Generator().manual_seed(1))
    old = dsm.dsm_risk(lambda y: dsm.optimal_score(y, x2, 0.9, 0.4), x2, 0.9, 0.4, num_samples=500,
                       generator=torch.Generator().manual_seed(1))   # the same Monte-Carlo draws
    assert torch.allclose(new, old, rtol=1e-12)
    per = dsm.dsm_risk("optimal", torch.stack([X64, X64 + 1])[..., None], [0.9, 0.8], [0.3, 0.4])
    assert torch.allclose(per[0], dsm.dsm_risk("optimal", X64, 0.9, 0.3), rtol=1e-14)
    assert torch.allclose(per[1], dsm.dsm_risk("optimal", X64 + 1, 0.8, 0.4), rtol=1e-14)


def test_data_far_from_the_origin_keep_their_digits():
    # the posterior logits mu y.x - mu^2 |x|^2 / 2 cancel for data far from 0 compared with their
    # spread: such data are shifted by their midrange first (translation covariance)
    near = torch.tensor([-1.0, 0.5, 1.0], dtype=torch.float64)
    for shift in (1e3, 1e8):
        far = near + shift
        assert dsm.weighted_tv("optimal", far, 0.9, 0.3, grid=201) == pytest.approx(
            dsm.weighted_tv("optimal", near, 0.9, 0.3, grid=201), rel=1e-6)
        y = 0.9 * torch.linspace(-1.2, 1.2, 9, dtype=torch.float64)
        assert torch.allclose(dsm.tv_weight(y + 0.9 * shift, far, 0.9, 0.3),
                              dsm.tv_weight(y, near, 0.9, 0.3), rtol=1e-6, atol=1e-9)
        s_far = dsm.optimal_score(y + 0.9 * shift, far, 0.9, 0.3)
        assert torch.allclose(s_far, dsm.optimal_score(y, near, 0.9, 0.3), rtol=1e-6, atol=1e-6)
    # float32 data at 1000 +- 1, queried midway (exactly representable): s* is 0, not -90
    x32 = torch.tensor([999.0, 1001.0])
    mid = 0.9 * x32.double().mean()
    ref = dsm.optimal_score(mid.reshape(1), x32.double(), 0.9, 0.1)
    assert abs(float(dsm.optimal_score(mid.float().reshape(1), x32, 0.9, 0.1)) - float(ref)) < 1.0
    mean, var = dsm.posterior_moments(torch.tensor([0.9 * 999.5]), x32, 0.9, 0.1)
    assert float(var) == pytest.approx(float(dsm.posterior_moments(
        torch.tensor([0.9 * 999.5], dtype=torch.float64), x32.double(), 0.9, 0.1)[1]), rel=1e-3)


def test_bounds_at_extreme_noise_levels_are_numbers():
    # sigma^4, A^4 or Delta^3 under- or overflow although the bound is a float64 number (or its
    # true value is beyond float64: then inf or 0.0, never ZeroDivisionError/OverflowError)
    assert dsm.tv_lower_bound(X, 0.9, 1e-100) == math.inf
    assert dsm.tv_lower_bound(X, 0.9, 1e-60) == pytest.approx(0.9 ** 3 * 3 * 1.0 / (2 ** 12 * 1e-240))
    assert dsm.theorem_excess_bound(X, 0.9, 0.3, 1e-100) == math.inf
    assert dsm.theorem_excess_bound(X, 0.9, 0.3, 1e100) == 0.0
    assert dsm.theorem_excess_bound(X, 0.9, 1e-80, 1.0) > 1e300
    assert dsm.optimal_risk_bound(X, 0.9, 1e-100) == 0.0                       # exp(-huge) wins
    assert dsm.tv_lower_bound_condition(X, 0.9, 1e-100) == (0.0, True)
    assert dsm.theorem_lr_threshold(X, 1.5e-154, 1.5e-154) == pytest.approx(
        2 ** 12 * 1.5e-154 / (9 * 1.0), rel=1e-12)
    assert dsm.prop7_conditions(X, 0.9, 1e-150, 0.0) == (True, True)
    assert _finite_or_inf(dsm.posterior_near_data_lemma(X64, 0.9, 1e-150).var_upper)
    assert dsm.prop2_near_data_bound(torch.tensor([0.0, 1e200], dtype=torch.float64), 0.9, 0.3).var_upper == 0.0
    assert _finite_or_inf(dsm.cor3_derivative_gap(X, 0.9, 1e-100).lower)
    assert dsm.sigma2_condition(X, 0.9, 0.3, 1e-100)[1] == math.inf
    assert dsm.sigma2_condition(X, 0.9, 0.3, 1e100)[1] == 0.0
    big = torch.tensor([-1e200, 0.0, 1e200], dtype=torch.float64)
    assert _finite_or_inf(dsm.posterior_midpoint_lemma(big, 0.9, 0.3).var_upper)
    assert _finite_or_inf(dsm.posterior_near_data_lemma(big, 0.9, 0.3).var_upper)
    with pytest.raises(ValueError, match="sharpness"):
        dsm.prop6_bound_terms(torch.ones(2), 10, torch.ones(3), X, 0.9, 0.3, 1.0)
    assert _finite_or_inf(dsm.prop6_tv_upper_bound(1e-300, 0.0, X, 0.9, 1e-150, 1e300))
    # ordinary values are exactly the formulas'
    assert dsm.tv_lower_bound(X, 0.9, 0.3) == 0.9 ** 3 * 3 * 1.0 ** 3 / (2.0 ** 12 * 0.3 ** 4)


def test_weighted_tv_and_pi_at_extremes_are_never_nan():
    assert _finite_or_inf(dsm.weighted_tv("optimal", X64, 0.9, 1e-6, grid=51))
    with pytest.raises(ValueError, match="sigma"):        # s* jumps within 1e-118: unresolvable
        dsm.weighted_tv("optimal", X64, 0.9, 1e-60, grid=51)
    assert _finite_or_inf(dsm.tv_weight(torch.tensor([1e300], dtype=torch.float64), X64, 0.9, 0.3))
    net = dsm.TwoLayerScoreNet.from_parameters(torch.tensor([[1e-30], [1.0]]), torch.ones(2),
                                               torch.ones(1, 2))   # a kink at -1e30
    assert _finite_or_inf(dsm.weighted_tv(net, X, 0.9, 0.3))


def test_metrics_at_extremes_are_never_nan():
    far = torch.tensor([1e30, -1e30, 2e30])          # squares overflow float32
    assert _finite_or_inf(dsm.mmd(far, far + 1e25))
    huge = torch.tensor([[1.7e308, 0.0], [-1.7e308, 1.0], [1.0, 1.7e308]], dtype=torch.float64)
    fit = dsm.fitted_gaussian(huge)
    assert _finite_or_inf(fit.mean) and _finite_or_inf(fit.covariance)
    assert fit.covariance[0, 0] == math.inf
    d, _ = dsm.nearest_neighbor_distances(torch.tensor([3e38]), torch.tensor([-3e38, 0.0]))
    assert _finite_or_inf(d)


def test_min_gap_in_d_dimensions_is_accurate():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64) * 10 + 100
    x[1] = x[0] + torch.tensor([1e-9, 0.0], dtype=torch.float64)
    assert dsm.min_gap(x) == pytest.approx(1e-9, rel=1e-6)    # the Gram expansion gave 1.3e-6
    assert dsm.min_gap(torch.tensor([3e38, -3e38])) == pytest.approx(6e38)   # float32 overflow


def test_sampler_at_large_times_and_optimal_score_fn():
    f = dsm.optimal_score_fn(X64)
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    sigma = dsm.ou_sigma(400.0)
    assert torch.allclose(f(x, 400.0), -x / sigma ** 2)        # mu(400) = e^-400 < 1.5e-154
    out = dsm.reverse_sde_sample(dsm.optimal_score_fn(X), 20, 1, T=60.0, steps=200,
                                 generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out).all())


def test_network_output_nan_is_refused():
    net = _net_with("W2", math.nan)
    with pytest.raises(ValueError, match="net.W2"):
        net(X)
    t = _net_with("W1", math.nan, cls=dsm.TimeScoreNet)
    with pytest.raises(ValueError, match="net.W1"):
        t.score(X, 0.5)
    huge = _ones_net(torch.tensor([[3e38, -3e38, 1.0]]))           # inf - inf in float32
    with pytest.raises(FloatingPointError, match="overflows"):
        huge(torch.tensor([2.0]))


# ---------------------------------------------------------------------------------------------
# the command lines: one line on stderr, a non-zero exit status, a traceback only with --debug
# ---------------------------------------------------------------------------------------------

def _cli(module, argv, capsys):
    from dsmlib.experiments.__main__ import main as ex_main
    from dsmlib.playground import main as pg_main
    main = ex_main if module == "experiments" else pg_main
    try:
        rc = main(argv)
    except SystemExit as exc:                 # argparse errors exit
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def _cli_cases(tmp):
    afile = tmp / "afile"
    afile.write_text("x")
    garbage = tmp / "garbage.npz"
    garbage.write_bytes(b"\x00garbage")
    return [
        ("experiments", ["fig1", "--device", "cuda:99"], "device"),
        ("experiments", ["fig1", "--device", "gpu0"], "device"),
        ("experiments", ["fig1", "--device", "meta"], "device"),
        ("experiments", ["fig2", "--dim", "0"], "--dim"),
        ("experiments", ["fig1", "--out", str(afile)], "file"),
        ("experiments", ["fig1", "--out", str(afile / "sub")], "file"),
        ("experiments", ["fig1", "--threads", "-1"], "--threads"),
        ("experiments", ["fig1", "--seeds", "0"], "--seeds"),
        ("experiments", ["fig1", "--seeds", "10000000000"], "--seeds"),
        ("experiments", ["fig9"], "figure"),
        ("experiments", ["fig1", "--scale", "huge"], "--scale"),
        ("playground", ["--check", "--out", str(tmp / "missing.npz")], "missing.npz"),
        ("playground", ["--check", "--out", str(garbage)], "readable"),
        ("playground", ["--check", "--out", str(tmp)], "folder"),
        ("playground", ["--check", "--out", str(afile)], "readable"),
        ("playground", ["--regenerate", "--out", str(afile / "grid.npz")], "file"),
        ("playground", ["--threads", "-1", "--regenerate"], "--threads"),
        ("playground", ["--check", "--regenerate"], "--check"),
    ]


def test_cli_failures_are_one_line(tmp_path, capsys):
    for module, argv, word in _cli_cases(tmp_path):
        rc, err = _cli(module, argv, capsys)
        assert rc not in (0, None), (module, argv)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (module, argv, err)
        assert word in lines[0], (module, argv, lines[0])


def test_cli_read_only_and_full_output_folders(tmp_path, capsys, monkeypatch):
    # (as root, chmod cannot make a folder read-only: the probe write is made to fail instead)
    real_open = os.open

    def refuse(path, flags, *args):
        if str(path).endswith(".tmp") and flags & os.O_CREAT:
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(dsm_io.os, "open", refuse)
    rc, err = _cli("experiments", ["fig1", "--out", str(tmp_path / "ro")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Read-only file system" in err
    monkeypatch.setattr(dsm_io.os, "open", real_open)
    monkeypatch.setattr(dsm_io.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    rc, err = _cli("experiments", ["fig1", "--out", str(tmp_path / "full")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "MiB free" in err
    rc, err = _cli("playground", ["--regenerate", "--out", str(tmp_path / "full" / "g.npz")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "MiB free" in err


def test_cli_debug_shows_the_traceback(capsys):
    from dsmlib.experiments.__main__ import main
    with pytest.raises(ValueError, match="device"):
        main(["fig1", "--device", "gpu0", "--debug"])


def test_cli_in_a_real_process_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "dsmlib.experiments", "fig1", "--device", "cuda:99",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "device" in out.stderr
    assert list(tmp_path.iterdir()) == []                 # nothing computed, nothing written
