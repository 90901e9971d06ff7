"""Property tests: every public function of dsmlib, fed NaN, inf, extreme values and odd types.

For each public callable (``dsmlib.__all__``, plus the methods of its classes) and each of its
arguments, hypothesis draws odd values for that one argument (NaN, +-inf, subnormal and huge
numbers, empty and oddly shaped arrays, half precision, longdouble, big-endian, integer, boolean,
complex and object arrays, tensors on the meta device or with requires_grad, 0-d arrays, strings,
None, callables returning NaN, complex or wrongly shaped values, networks holding NaN, unusable
devices and dtypes) while the other arguments keep valid values. Each call must either

* return a result without any NaN (an honest overflow to +-inf is allowed), or
* raise ``ValueError`` / ``TypeError`` whose message names the argument, or
  ``FloatingPointError`` (a user's score that produces NaN, an overflow the dtype cannot hold), or
  ``NotImplementedError`` (the documented 1-D-only closed forms).

Anything else (a NaN, ``ZeroDivisionError``, ``RuntimeError`` from deep inside torch,
``AttributeError``, ...) fails. Arguments are recognised by name, so a new public function with
the usual argument names (data, mu, sigma, y, lr, ...) is covered automatically;
``test_every_public_function_is_covered`` fails if one has an argument this file does not know.
Deterministic (derandomized, no example database), a few seconds in all.
"""

from __future__ import annotations

import dataclasses
import decimal
import fractions
import inspect
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsmlib as dsm

SETTINGS = settings(max_examples=int(os.environ.get("DSM_PROPERTY_EXAMPLES", "12")), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
nan, inf = math.nan, math.inf
X = [-1.0, 0.0, 1.5, 2.0]                     # valid 1-D data
Y = [-0.5, 0.25, 1.0]                         # valid queries
DTYPE = [torch.float32]                       # dtype of the valid tensors of the current example


def _valid(values):
    return torch.tensor(values, dtype=DTYPE[0])

# ---------------------------------------------------------------------------------------------
# odd values
# ---------------------------------------------------------------------------------------------

SPECIAL = [nan, inf, -inf, 0.0, -0.0, 5e-324, 1e-310, 1e-40, 1e-20, 1e20, 1e30, -1e30, 3e38,
           1e154, 1e200, -1e300, 1.7e308]
FLOAT_TORCH = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
NP_FLOAT = [np.float16, np.float32, np.float64, np.longdouble, np.dtype(">f8"), np.dtype(">f4")]


def _meta(shape=(3,)):
    return torch.zeros(shape, device="meta")


@st.composite
def points(draw):
    """Arrays, tensors and lists of odd shapes, dtypes and values."""
    n = draw(st.integers(0, 5))
    shape = draw(st.sampled_from([(n,), (n, 1), (n, 2), ()]))
    size = int(np.prod(shape)) if shape else 1
    vals = draw(st.lists(st.one_of(st.sampled_from(SPECIAL), st.floats(-3.0, 3.0)),
                         min_size=size, max_size=size))
    arr = np.array(vals, dtype=np.float64).reshape(shape)
    kind = draw(st.sampled_from(["torch", "numpy", "list", "int", "bool", "complex", "object",
                                 "meta", "grad", "sparse"]))
    if kind == "torch":
        dt = draw(st.sampled_from(FLOAT_TORCH))
        with np.errstate(over="ignore"):
            return torch.as_tensor(arr).to(dt)
    if kind == "numpy":
        with np.errstate(over="ignore", invalid="ignore"):
            return arr.astype(draw(st.sampled_from(NP_FLOAT)))
    if kind == "list":
        return arr.tolist()
    if kind == "int":
        return torch.as_tensor(np.nan_to_num(arr).clip(-100, 100)).to(torch.int64)
    if kind == "bool":
        return np.asarray(arr > 0)
    if kind == "complex":
        return torch.as_tensor(np.nan_to_num(arr)).to(torch.complex64)
    if kind == "object":
        return np.array(vals + ["a"], dtype=object)
    if kind == "meta":
        return _meta(shape)
    if kind == "grad":
        return torch.as_tensor(np.nan_to_num(arr, posinf=1.0, neginf=-1.0)).requires_grad_()
    return torch.as_tensor(np.nan_to_num(arr)).reshape(-1).to_sparse()


SCALARS = SPECIAL + [-1.0, 0.3, 0.9, 2.0, True, "0.3", None, 10 ** 400, 1j, np.float32("nan"),
                     np.float64(0.3), np.array(0.3), np.array([0.3]), np.longdouble(0.3),
                     np.float16(0.3), fractions.Fraction(1, 3), decimal.Decimal("0.3"), [0.3],
                     (0.3, 0.4)]


def _scalar_tensors():
    return [torch.tensor(0.3), torch.tensor(nan), torch.tensor([0.3, 0.5]),
            torch.tensor(0.3, dtype=torch.float16), torch.tensor(0.3, requires_grad=True),
            torch.tensor(0.3, device="meta"), torch.tensor(2 + 1j), torch.tensor(True)]


scalars = st.one_of(st.sampled_from(SCALARS), st.sampled_from(range(8)).map(
    lambda i: _scalar_tensors()[i]), st.floats(allow_nan=True, allow_infinity=True))
INTS = [-1, 0, 1, 2, 3, 3.0, True, 2 ** 63, 2 ** 64, np.int64(3), np.uint8(2), "3", None, 1.5]
ints = st.one_of(st.sampled_from(INTS), st.sampled_from([0, 1]).map(
    lambda i: [torch.tensor(3), torch.tensor([2, 3])][i]))


def _net(kind):
    if kind == "nan":
        net = dsm.TwoLayerScoreNet(6, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            net.W2[0, 1] = nan
        return net
    if kind == "inf":
        net = dsm.TwoLayerScoreNet(6, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            net.b[2] = -inf
        return net
    if kind == "huge":
        return dsm.TwoLayerScoreNet.from_parameters(torch.ones(3, 1), torch.zeros(3),
                                                    torch.full((1, 3), 3e38))
    if kind == "dim2":
        return dsm.TwoLayerScoreNet(6, dim=2, generator=torch.Generator().manual_seed(0))
    if kind == "ensemble":
        return dsm.TwoLayerScoreNet(6, ensemble=2, generator=dsm.make_generators([0, 1]))
    if kind == "half":
        return dsm.TwoLayerScoreNet(6, generator=torch.Generator().manual_seed(0)).half()
    if kind == "meta":
        return dsm.TwoLayerScoreNet(6, generator=torch.Generator().manual_seed(0)).to("meta")
    if kind == "time":
        return dsm.TimeScoreNet(6, 1, generator=torch.Generator().manual_seed(0))
    if kind == "tuple_nan":
        return (torch.ones(3, 1), torch.full((3,), nan), torch.ones(1, 3))
    return {"number": 3.0, "none": None, "string": "net"}[kind]


NET_KINDS = ["nan", "inf", "huge", "dim2", "ensemble", "half", "meta", "time", "tuple_nan",
             "number", "none", "string"]
nets = st.sampled_from(NET_KINDS).map(_net)

SCORES_1 = [lambda y: y * nan, lambda y: y * inf, lambda y: y.to(torch.complex64),
            lambda y: y.long(), lambda y: y.numpy(), lambda y: None, lambda y: y[:1],
            lambda y: -y, lambda y: (-y).half(), lambda y: torch.zeros_like(y).to_sparse(),
            lambda y: torch.zeros(y.shape, device="meta"), lambda y: y > 0, "optimal", "bogus",
            3.0, None]
scores = st.one_of(st.sampled_from(SCORES_1), nets)
SCORES_2 = [lambda x, t: x * nan, lambda x, t: x.to(torch.complex64), lambda x, t: -x * 1e30,
            lambda x, t: x[:1], lambda x, t: x.numpy(), lambda x, t: None, lambda x, t: x > 0,
            lambda x, t: (-x).long(), lambda x, t: -x, 3.0, None]
scores_xt = st.sampled_from(SCORES_2)
GENERATORS = [None, 0, "seed", torch.Generator(), [torch.Generator(), torch.Generator()],
              [0, 1], [None, None]]
generators = st.sampled_from(GENERATORS)
DTYPES = [None, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32,
          "float32", np.float32, torch.complex64]
dtypes = st.sampled_from(DTYPES)
DEVICES = [None, "cpu", "cuda", "cuda:7", "gpu0", "meta", 3, -1, torch.device("cpu"), 1.5]
devices = st.sampled_from(DEVICES)
STRINGS = ["mean", "sum", "bogus", "", None, 3, "MEAN", "sigma", "uniform"]
strings = st.sampled_from(STRINGS)
flags = st.sampled_from([True, False, None, 0, 1, "yes", np.bool_(True)])

# argument name -> (strategy of odd values, factory of a valid value)
ARGS = {
    "y": (points(), lambda: _valid(Y)),
    "x": (points(), lambda: _valid(Y)),
    "samples": (points(), lambda: _valid(Y)),
    "data": (points(), lambda: _valid(X)),
    "t": (scalars, lambda: 0.3),
    "mu": (scalars, lambda: 0.9),
    "sigma": (scalars, lambda: 0.3),
    "lr": (scalars, lambda: 0.1),
    "risk": (scalars, lambda: 0.5),
    "A": (scalars, lambda: 1.0),
    "radius": (scalars, lambda: None),
    "bandwidth": (scalars, lambda: 1.0),
    "ratio": (scalars, lambda: 1 / 3),
    "tol": (scalars, lambda: 1e-3),
    "T": (scalars, lambda: 1.0),
    "delta": (scalars, lambda: 0.01),
    "bound": (scalars, lambda: None),
    "diverge_threshold": (scalars, lambda: 1e8),
    "width": (ints, lambda: 6),
    "dim": (ints, lambda: 1),
    "ensemble": (ints, lambda: None),
    "steps": (ints, lambda: 2),
    "batch_size": (ints, lambda: 8),
    "num_nodes": (ints, lambda: None),
    "num_samples": (ints, lambda: 4),
    "num_times": (ints, lambda: 10),
    "chunk_size": (ints, lambda: None),
    "iters": (ints, lambda: 3),
    "grid": (ints, lambda: 21),
    "k": (ints, lambda: 2),
    "log_every": (ints, lambda: None),
    "average_last": (ints, lambda: None),
    "seeds": (st.sampled_from([[0, 1], [-1], [2 ** 64], [1.5], "01", 3, [], [True], None,
                               np.array([2 ** 63], dtype=np.uint64), [np.int64(2)]]),
              lambda: [0, 1]),
    "score_fn": (scores, lambda: (lambda y: -y)),
    "f": (scores, lambda: (lambda y: -y)),
    "net": (nets, lambda: dsm.TwoLayerScoreNet(6, generator=torch.Generator().manual_seed(0))),
    "net_or_params": (nets, lambda: dsm.TwoLayerScoreNet(6, generator=torch.Generator()
                                                         .manual_seed(0))),
    "generator": (generators, lambda: None),
    "dtype": (dtypes, lambda: None),
    "device": (devices, lambda: None),
    "reduction": (strings, lambda: "mean"),
    "time_weighting": (strings, lambda: "sigma"),
    "fixed_inner": (flags, lambda: False),
    "unbiased": (flags, lambda: True),
    "overwrite": (flags, lambda: False),
    "return_vector": (flags, lambda: False),
    "init": (points(), lambda: None),
    "wrt": (st.sampled_from([("W1",), ("W9",), (), "b", 3, ("b", "b")]), lambda: None),
    "extra": (st.sampled_from([None, {"a": 1}, {"x": np.float32(1)}, 3]), lambda: None),
    "expected_config": (st.sampled_from([None, {"a": 1}, 3, "cfg"]), lambda: None),
    "expected_arrays": (st.sampled_from([None, ["a"], ["zz"], []]), lambda: None),
    "allow_other_version": (flags, lambda: False),
    "check_every": (ints, lambda: None),
    "nonfinite": (st.sampled_from(["raise", "keep", "bogus", None, 3]), lambda: "raise"),
    "check": (flags, lambda: True),
    "rng_block": (ints, lambda: None),
    "u": (points(), lambda: _valid(Y)),
    "strict": (flags, lambda: False),
    "full_batch": (flags, lambda: False),
    "record_every": (ints, lambda: None),
    "sharpness": (scalars, lambda: 1.0),
    "cuda_graph": (st.sampled_from([None, True, False, "yes", 1]), lambda: None),
    "fused": (st.sampled_from([None, True, False, "yes", 1]), lambda: None),
}
SKIP = {"progress", "return_path"}      # display options, not data

# per function: valid values that differ from the defaults above, and argument overrides
SPECIFIC = {
    "reverse_sde_sample": {"score_fn": (scores_xt, lambda: (lambda x, t: -x)),
                           "num_samples": (ints, lambda: 5), "steps": (ints, lambda: 3)},
    "sharpness": {"iters": (ints, lambda: 3)},
    "train_time_score_net": {"net": (nets, lambda: dsm.TimeScoreNet(
        6, 1, generator=torch.Generator().manual_seed(0))), "lr": (scalars, lambda: 0.01)},
    "TimeScoreNet": {"dim": (ints, lambda: 1)},
    "stability_threshold": {"width": (ints, lambda: 10)},
    "memorization_fraction": {"samples": (points(), lambda: _valid(Y))},
    "dsm_risk": {"num_samples": (ints, lambda: None)},
    "excess_risk": {"num_samples": (ints, lambda: None)},
    "noise_nodes": {"num_nodes": (ints, lambda: 11)},
    "perturbation_test": {"radius": (scalars, lambda: 0.01), "steps": (ints, lambda: 2)},
    "full_batch_gd": {"steps": (ints, lambda: 2)},
    "sliced_wasserstein": {"p": (scalars, lambda: 2.0), "num_projections": (ints, lambda: 8)},
}

# ---------------------------------------------------------------------------------------------
# the callables: public functions, plus the methods of the public classes
# ---------------------------------------------------------------------------------------------


def _public_callables():
    out = {}
    for name in dsm.__all__:
        if name in ("experiments", "plotting", "playground", "widgets"):
            continue
        obj = getattr(dsm, name)
        if inspect.isclass(obj) and (issubclass(obj, BaseException)
                                     or dataclasses.is_dataclass(obj)):
            continue                                       # exceptions, result records
        out[name] = obj
    return out


def _forward(y):
    return dsm.TwoLayerScoreNet(6, ensemble=2, generator=dsm.make_generators([0, 1]))(y)


def _member(k):
    return dsm.TwoLayerScoreNet(6, ensemble=2, generator=dsm.make_generators([0, 1])).member(k)


def _from_parameters(W1, b, W2):
    return dsm.TwoLayerScoreNet.from_parameters(W1, b, W2)


def _fitted_sample(num_samples, generator):
    return dsm.fitted_gaussian(torch.tensor(X)).sample(num_samples, generator=generator)


def _time_forward(t, x):
    return dsm.TimeScoreNet(6, 1, ensemble=2, generator=dsm.make_generators([0, 1]))(t, x)


def _time_score(x, t):
    return dsm.TimeScoreNet(6, 1, generator=torch.Generator().manual_seed(0)).score(x, t)


def _optimal_score_fn_call(data, x, t):
    return dsm.optimal_score_fn(data)(x, t)


METHODS = {"TwoLayerScoreNet.forward": _forward, "TwoLayerScoreNet.member": _member,
           "TwoLayerScoreNet.from_parameters": _from_parameters,
           "FittedGaussian.sample": _fitted_sample, "TimeScoreNet.forward": _time_forward,
           "TimeScoreNet.score": _time_score, "optimal_score_fn(data)(x, t)": _optimal_score_fn_call}
VALID_OVERRIDES = {
    "TwoLayerScoreNet.member": {"k": (ints, lambda: 1)},
    "TwoLayerScoreNet.from_parameters": {
        "W1": (points(), lambda: torch.ones(3, 1)), "b": (points(), lambda: torch.zeros(3)),
        "W2": (points(), lambda: torch.ones(1, 3))},
    "FittedGaussian.sample": {"num_samples": (ints, lambda: 3)},
    "optimal_score_fn(data)(x, t)": {"x": (points(), lambda: _valid(Y))},
}
ALLOW_NAN = {"naive_optimal_score"}    # eq. 6 evaluated literally: NaN by design (chapter 2)
# result fields that mark a diverged member with NaN on purpose (documented in their classes)
NAN_MARKERS = {"loss_history", "final_loss", "risk_history", "risk", "risk_perturbed"}


CALLABLES = {**_public_callables(), **METHODS}


def _params(name, fn):
    sig = inspect.signature(fn)
    return [p for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in SKIP]


def _spec(fname, pname):
    return {**SPECIFIC.get(fname, {}), **VALID_OVERRIDES.get(fname, {})}.get(pname, ARGS.get(pname))


CASES = [(fname, p.name) for fname, fn in CALLABLES.items() if fname not in ("save_results",
                                                                            "load_results")
         for p in _params(fname, fn)]


def _has_nan(v, depth=0) -> bool:
    if depth > 4:
        return False
    if isinstance(v, torch.Tensor):
        return (v.is_floating_point() or v.is_complex()) and v.device.type != "meta" \
            and bool(torch.isnan(v.detach()).any())
    if isinstance(v, torch.nn.Module):
        return any(_has_nan(p, depth + 1) for p in v.parameters())
    if isinstance(v, float):
        return math.isnan(v)
    if isinstance(v, np.ndarray):
        return v.dtype.kind in "fc" and bool(np.isnan(v).any())
    if hasattr(v, "_fields"):             # NamedTuple results
        return any(_has_nan(getattr(v, f), depth + 1) for f in v._fields if f not in NAN_MARKERS)
    if isinstance(v, (tuple, list)):
        return any(_has_nan(u, depth + 1) for u in v)
    if dataclasses.is_dataclass(v):
        # loss histories mark a diverged member with NaN on purpose (documented)
        return any(_has_nan(getattr(v, f.name), depth + 1) for f in dataclasses.fields(v)
                   if f.name not in NAN_MARKERS)
    return False


def _outcome(call, pname, names, allow_nan=False):
    """``names``: the call's arguments; a refusal must name ``pname`` or, for a mismatch between
    two arguments (shapes, dimensions), another of them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert pname in msg or any(n in msg for n in names), \
            f"{type(exc).__name__} names no argument ({pname!r} was odd): {msg}"
        return
    except (FloatingPointError, NotImplementedError) as exc:
        assert str(exc)
        return
    assert allow_nan or not _has_nan(out), f"NaN in the result: {out!r}"[:500]


@pytest.mark.parametrize("fname, pname", CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_odd_values_give_a_result_or_a_clear_error(fname, pname):
    fn = CALLABLES[fname]
    params = _params(fname, fn)
    strategy = _spec(fname, pname)[0]

    @SETTINGS
    @given(value=strategy, dtype=st.sampled_from([torch.float32, torch.float64]))
    def check(value, dtype):
        DTYPE[0] = dtype
        args, kwargs = [], {}
        for p in params:
            v = value if p.name == pname else _spec(fname, p.name)[1]()
            if p.kind == p.KEYWORD_ONLY:
                kwargs[p.name] = v
            else:
                args.append(v)
        _outcome(lambda: fn(*args, **kwargs), pname, [p.name for p in params],
                 allow_nan=fname in ALLOW_NAN)

    check()


def test_every_public_function_is_covered():
    unknown = sorted({f"{fname}({p.name})" for fname, fn in CALLABLES.items()
                      for p in _params(fname, fn) if _spec(fname, p.name) is None
                      and p.name not in ("path", "arrays", "config")})
    assert not unknown, f"add odd values for these arguments to ARGS: {unknown}"


# ---------------------------------------------------------------------------------------------
# results files
# ---------------------------------------------------------------------------------------------

ARRAYS = st.one_of(
    st.sampled_from([{}, None, 3, {"a": [1, 2]}, {"__meta__": [1]}, {"a": np.array(["x"], dtype=object)},
                     {"a": np.array([nan, inf])}, {"a": torch.ones(2, requires_grad=True)},
                     {"a": np.ones(3, dtype=">f8")}, {"a": torch.zeros(2, dtype=torch.bfloat16)}]),
    st.dictionaries(st.text("abc_", min_size=1, max_size=3),
                    st.sampled_from([np.arange(3.0), np.zeros((0, 2)), np.float32(2), True]),
                    min_size=1, max_size=3))
CONFIGS = st.sampled_from([{"a": 1}, {"t": (1, 2)}, {"x": np.float64(0.5)}, "cfg", None, 3,
                           {"f": float("nan")}, {"nested": {"k": [1, 2]}}])


@SETTINGS
@given(arrays=ARRAYS, config=CONFIGS)
def test_save_results_odd_inputs(tmp_path_factory, arrays, config):
    path = tmp_path_factory.mktemp("save") / "r.npz"
    try:
        dsm.save_results(path, arrays, config)
    except (ValueError, TypeError) as exc:
        assert any(w in str(exc) for w in ("arrays", "config", "__meta__", "numeric")), str(exc)
        return
    arrays_back, meta = dsm.load_results(path, expected_config=config)
    assert sorted(arrays_back) == sorted(str(k) for k in arrays)
    assert [f for f in path.parent.iterdir() if f.name != "r.npz"] == []


@SETTINGS
@given(blob=st.one_of(st.binary(max_size=64), st.sampled_from(["meta_list", "meta_str",
                                                                "no_meta", "bad_json",
                                                                "meta_no_config"])))
def test_load_results_of_garbage_is_a_results_error(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("load") / "r.npz"
    metas = {"meta_list": "[1, 2]", "meta_str": '"x"', "bad_json": "{", "meta_no_config":
             '{"version": "0.1.0", "checksum": "x"}'}
    if isinstance(blob, bytes):
        path.write_bytes(blob)
    elif blob == "no_meta":
        np.savez(path, a=np.ones(2))
    else:
        np.savez(path, a=np.ones(2), __meta__=np.array(metas[blob]))
    with pytest.raises(dsm.ResultsError):
        dsm.load_results(path)
