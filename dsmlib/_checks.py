"""Input validation shared by every public function of dsmlib.

Each helper raises ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, bad value)
with a message that names the offending argument, so that a student poking at the library gets a
clear answer instead of a NaN.

Dtype convention (documented in the book's notation page): tensors keep their floating dtype;
NumPy arrays keep theirs (float64 stays float64); Python numbers, lists and integer arrays become
``torch.get_default_dtype()`` (float32 unless changed). Half precision (float16, bfloat16: three
significant digits, and float16 overflows at 65504) is too coarse for these formulas and is
computed in float32; NumPy ``longdouble`` arrays are computed in float64; big-endian arrays are
converted to the machine's byte order. Tensors on the ``meta`` device (shapes without data) and
sparse tensors are refused.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "scalar",
    "positive",
    "nonnegative",
    "integer",
    "data_2d",
    "data_1d",
    "points_like",
    "generator_or_none",
    "probability",
    "is_sequence",
    "noise",
    "noise_scale",
    "noise_levels",
    "seed",
    "device",
    "float_dtype",
    "finite_parameters",
    "function_output",
    "call_user",
    "network_output",
    "same_shape",
    "data_center",
]

_HALF = (torch.float16, torch.bfloat16)
_INT64_MAX = 2 ** 63 - 1


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _native_array(x: np.ndarray, name: str) -> np.ndarray:
    """A NumPy array torch can share: real dtype, native byte order, float64 for longdouble,
    contiguous and writable (a read-only array is copied rather than shared)."""
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got a NumPy array of dtype {x.dtype}")
    if x.dtype.kind == "f" and x.dtype.itemsize > 8:          # longdouble: torch has no such type
        x = x.astype(np.float64)
    if not x.dtype.isnative:                                    # big-endian data, e.g. from a file
        x = x.astype(x.dtype.newbyteorder("="))
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()


def as_tensor(x, name: str, *, dtype: torch.dtype | None = None, device=None,
              allow_empty: bool = False) -> torch.Tensor:
    """Convert ``x`` to a floating tensor and check that it is finite.

    Accepts tensors, NumPy arrays, Python numbers and (nested) lists of numbers.
    Raises ``TypeError`` for anything else (strings, None, complex or boolean tensors, sparse
    tensors) and ``ValueError`` for NaN/inf entries, an empty input, a tensor on the ``meta``
    device, or finite values beyond the range of the dtype they are converted to (a list holding
    ``1e300`` made float32). Half-precision input becomes float32 (unless ``dtype`` says
    otherwise).
    """
    target = dtype
    if isinstance(x, torch.Tensor):
        t = x
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense tensor, got layout {t.layout} "
                            f"(convert with .to_dense())")
        if t.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (a tensor without data); "
                             f"dsmlib computes with real tensors")
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(_native_array(x, name))
    elif _is_number(x) or isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x, dtype=float)
        except OverflowError as exc:
            raise ValueError(f"{name} holds a number too large for float64") from exc
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a number, a list of numbers, an array or a tensor; "
                            f"got {type(x).__name__}") from exc
        t = torch.from_numpy(arr)
        target = dtype or torch.get_default_dtype()
    else:
        raise TypeError(f"{name} must be a number, array or torch tensor, got {type(x).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
    if not t.is_floating_point():
        target = target or torch.get_default_dtype()
    elif t.dtype in _HALF and target is None:
        target = torch.float32
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if target is not None or device is not None:
        big = float(t.detach().abs().max()) if t.numel() else 0.0
        t = t.to(dtype=target or t.dtype, device=device if device is not None else t.device)
        if big > torch.finfo(t.dtype).max:               # finite, but beyond the new dtype
            kind = str(t.dtype).replace("torch.", "")
            raise ValueError(f"{name} has values up to {big:.3g}, beyond the range of {kind} "
                             f"(the dtype of this computation)")
    return t


def scalar(x, name: str) -> float:
    """A finite real number given as a Python number, NumPy scalar or one-element array/tensor."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(x.shape)}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got dtype {x.dtype}")
        if x.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (a tensor without data)")
        x = x.item()
    elif isinstance(x, np.ndarray) and x.size == 1 and x.dtype.kind in "fiu":
        x = x.item()
    elif isinstance(x, np.generic) and np.asarray(x).dtype.kind in "fiu":
        x = x.item()
    if not _is_number(x):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        x = float(x)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got a number too large for float64") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def positive(x, name: str) -> float:
    """A finite number ``> 0``."""
    v = scalar(x, name)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {v}")
    return v


def nonnegative(x, name: str) -> float:
    """A finite number ``>= 0``."""
    v = scalar(x, name)
    if v < 0:
        raise ValueError(f"{name} must be non-negative, got {v}")
    return v


def probability(x, name: str) -> float:
    """A number in ``(0, 1]``."""
    v = scalar(x, name)
    if not 0 < v <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {v}")
    return v


def integer(x, name: str, minimum: int = 0, maximum: int = _INT64_MAX) -> int:
    """A Python (or NumPy) integer in ``[minimum, maximum]``; floats such as ``2.0`` are refused.

    The default maximum ``2**63 - 1`` is the largest size or count a torch tensor can have.
    """
    if isinstance(x, bool) or not isinstance(x, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}")
    x = int(x)
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    if x > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {x}")
    return x


def seed(x, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in ``[0, 2**64)``."""
    return integer(x, name, 0, 2 ** 64 - 1)


def data_2d(data, name: str = "data", *, min_points: int = 1, dtype=None, device=None):
    """Training points as an ``(n, d)`` tensor.

    ``data``: ``(n,)`` (one-dimensional points) or ``(n, d)``. Returns ``(data2d, was_1d)``.
    """
    x = as_tensor(data, name, dtype=dtype, device=device)
    if x.dim() == 1:
        x2, was_1d = x[:, None], True
    elif x.dim() == 2:
        x2, was_1d = x, False
    else:
        raise ValueError(f"{name} must have shape (n,) or (n, d), got {tuple(x.shape)}")
    if x2.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} point(s), got {x2.shape[0]}")
    if x2.shape[1] < 1:
        raise ValueError(f"{name} has zero dimensions: shape {tuple(x.shape)}")
    return x2, was_1d


def data_1d(data, name: str = "data", *, min_points: int = 1, dtype=None, device=None):
    """One-dimensional training points as an ``(n,)`` tensor; ``(n,)`` and ``(n, 1)`` are accepted."""
    x, _ = data_2d(data, name, min_points=min_points, dtype=dtype, device=device)
    if x.shape[1] != 1:
        raise ValueError(f"{name} must be one-dimensional, shape (n,), for this result; "
                         f"got dimension {x.shape[1]}")
    return x[:, 0]


def points_like(y, dim: int, name: str = "y", *, dtype=None, device=None):
    """Query points matching data of dimension ``dim``, as an ``(N, dim)`` tensor.

    In 1-D, ``y`` may be ``(N,)`` or a scalar; otherwise it must be ``(N, dim)`` (or ``(dim,)`` for
    one point). Returns ``(y2d, out_shape)`` where ``out_shape`` is the shape a result "shaped
    like y" should take.
    """
    t = as_tensor(y, name, dtype=dtype, device=device, allow_empty=True)
    if dim == 1:
        if t.dim() == 2 and t.shape[1] == 1:
            return t, tuple(t.shape)
        if t.dim() > 1:
            raise ValueError(f"{name} must have shape (N,) for one-dimensional data, "
                             f"got {tuple(t.shape)}")
        return t.reshape(-1, 1), tuple(t.shape)
    if t.dim() == 1 and t.shape[0] == dim:
        return t[None, :], tuple(t.shape)
    if t.dim() != 2 or t.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}) to match data of dimension {dim}, "
                         f"got {tuple(t.shape)}")
    return t, tuple(t.shape)


def generator_or_none(generator, name: str = "generator"):
    """``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def is_sequence(x) -> bool:
    """Whether ``x`` holds several values (a list, tuple, array or tensor with more or fewer than
    one element), as opposed to a single number (a Python number, NumPy scalar, 0-d or
    one-element array or tensor). Used where an argument may be one value or one per member."""
    if isinstance(x, (list, tuple)):
        return True
    if isinstance(x, torch.Tensor):
        return x.numel() != 1
    if isinstance(x, np.ndarray):
        return x.size != 1
    return False


# ----------------------------------------------------------------------------------------------
# noise levels: the formulas divide by sigma^2 (and multiply by mu^2)
# ----------------------------------------------------------------------------------------------

def _normal_range(dtype: torch.dtype):
    """``[lo, hi]`` such that ``v**2`` and ``1 / v**2`` are normal numbers of ``dtype``."""
    lo = math.sqrt(torch.finfo(dtype).tiny)
    return lo, 1.0 / lo


def noise_scale(x, name: str, dtype: torch.dtype = torch.float64) -> float:
    """A positive number whose square and inverse square are normal numbers of ``dtype``.

    The formulas of dsmlib divide by ``sigma**2``: below about ``1.5e-154`` (float64; ``1.1e-19``
    in float32) that square underflows, the division gives ``inf`` or ``0/0 = NaN``, and no
    meaningful result can be returned, so such a value is refused. ``dtype``: the floating dtype
    of the computation (half precision counts as float32).
    """
    v = positive(x, name)
    if dtype in _HALF or not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        dtype = torch.float32
    lo, hi = _normal_range(dtype)
    if not lo <= v <= hi:
        kind = str(dtype).replace("torch.", "")
        raise ValueError(f"{name} must lie in [{lo:.3g}, {hi:.3g}] for {kind} computations "
                         f"({name}^2 must be a normal {kind} number), got {v:g}"
                         + ("; use float64 inputs" if dtype != torch.float64 else ""))
    return v


def noise_levels(t: torch.Tensor, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A tensor of per-member noise levels: each entry as in :func:`noise_scale` (the message
    names ``name`` and the offending value). Returns ``t``."""
    if t.numel():
        for v in (float(t.min()), float(t.max())):
            noise_scale(v, name, dtype)
    return t


def noise(mu, sigma, dtype: torch.dtype = torch.float64):
    """``(mu, sigma)`` as floats, both as in :func:`noise_scale` for ``dtype`` (``mu**2`` enters
    the posterior logits and ``s*'``, ``1 / sigma**2`` every formula)."""
    return noise_scale(mu, "mu", dtype), noise_scale(sigma, "sigma", dtype)


def data_center(x: torch.Tensor):
    """The point ``c`` (d,) to subtract from training points ``x`` (n, d) before computing the
    posterior logits ``mu y.x_j - mu^2 |x_j|^2 / 2`` (or the weight pi), or ``None``.

    Those formulas are translation covariant, but evaluated for points far from the origin
    compared with their spread they subtract large, nearly equal numbers and lose about
    ``log2(|x| / spread)`` bits (data at ``1e8 +- 1`` lose all of them in float64). The midrange
    ``c`` is returned only when it exceeds four times the data's half-range, so data spread
    around the origin keep their exact arithmetic.
    """
    lo, hi = x.detach().amin(0), x.detach().amax(0)
    c = lo / 2 + hi / 2
    half = float((hi / 2 - lo / 2).max())
    if float(c.abs().max()) > 4.0 * half:
        return c
    return None


# ----------------------------------------------------------------------------------------------
# devices, dtypes, seeds
# ----------------------------------------------------------------------------------------------

def device(dev, name: str = "device", *, allow_none: bool = True):
    """A usable ``torch.device`` (``None`` stays ``None`` when ``allow_none``).

    Raises ``ValueError`` naming the argument for a malformed string (``"gpu0"``), the ``meta``
    device, or a device this machine or torch build does not have (``"cuda"`` on a CPU-only
    build, ``"cuda:3"`` with one GPU).
    """
    if dev is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a torch device or a string such as 'cpu', got None")
    if not isinstance(dev, (str, torch.device)) and not (isinstance(dev, numbers.Integral)
                                                        and not isinstance(dev, bool)):
        raise TypeError(f"{name} must be a torch device or a string such as 'cpu', "
                        f"got {type(dev).__name__}")
    try:
        d = torch.device(dev)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"{name}={dev!r} is not a device name (use e.g. 'cpu' or 'cuda'): "
                         f"{_first_line(exc)}") from None
    if d.type == "cpu":
        return d
    if d.type == "meta":
        raise ValueError(f"{name}='meta' holds no data; dsmlib computes on real devices "
                         f"such as 'cpu' or 'cuda'")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise ValueError(f"{name}={dev!r} is not available: {why}; use device='cpu'")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={dev!r} is not available: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
        return d
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={dev!r} is not available on this machine (no Apple GPU backend)")
    try:                                    # xpu, ...: ask the backend itself
        torch.empty(1, device=d)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ValueError(f"{name}={dev!r} is not available: {_first_line(exc)}") from None
    return d


def _first_line(exc) -> str:
    """The first sentence of an exception's message (torch's can run over many lines)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    cut = line.find(". ")
    return line[:cut + 1] if 0 < cut < len(line) - 2 else line


def float_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """``None`` (the default dtype), ``torch.float32`` or ``torch.float64``.

    Half precision is refused: networks and samplers in float16/bfloat16 overflow (65504) or lose
    the digits the formulas need.
    """
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype, got {dtype!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be torch.float32 or torch.float64, got {dtype} (half "
                        f"precision is too coarse for these computations)")
    return dtype


# ----------------------------------------------------------------------------------------------
# what the user hands over: parameters of a network, outputs of a score function
# ----------------------------------------------------------------------------------------------

def finite_parameters(name: str, **tensors) -> None:
    """``ValueError`` if a tensor (a network parameter) holds NaN/inf or lives on ``meta``.

    ``finite_parameters("net", W1=W1, b=b, W2=W2)`` raises e.g.
    ``net.W2 contains NaN or infinite values``.
    """
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.device.type == "meta":
            raise ValueError(f"{name}.{key} is on the meta device (a tensor without data)")
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{name}.{key} contains NaN or infinite values")


def network_output(out: torch.Tensor, net, name: str = "net") -> torch.Tensor:
    """``out`` (a network's output) unless it holds NaN: then ``ValueError`` naming the parameter
    that holds NaN/inf, or ``FloatingPointError`` when finite parameters overflowed
    (``inf - inf``) for these inputs. Returns ``out``."""
    if bool(torch.isnan(out.detach()).any()):
        finite_parameters(name, **dict(net.named_parameters()), **dict(net.named_buffers()))
        raise FloatingPointError(f"{name}'s output overflows to NaN (inf - inf) at these points in "
                                 f"{out.dtype}; use float64 or smaller weights")
    return out


def call_user(fn, name: str, *args, signature: str = "y"):
    """``fn(*args)``; a ``TypeError`` raised by the call (typically a function that takes other
    arguments) is re-raised naming ``name`` and the expected signature."""
    try:
        return fn(*args)
    except TypeError as exc:
        raise TypeError(f"calling {name}({signature}) raised TypeError: {exc} ({name} must take "
                        f"{signature} and return a tensor)") from exc


def function_output(out, name: str):
    """Check what a user's function returned: a real, dense tensor with data (``TypeError``
    otherwise) holding finite values (``FloatingPointError`` otherwise). Integer outputs are
    accepted. Returns ``out``."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch tensor, got {type(out).__name__}")
    if out.is_complex() or out.dtype == torch.bool:
        raise TypeError(f"{name} must return real values, got dtype {out.dtype}")
    if out.device.type == "meta":
        raise TypeError(f"{name} returned a tensor on the meta device (no data)")
    if out.layout != torch.strided:
        raise TypeError(f"{name} must return a dense tensor, got layout {out.layout}")
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"{name} returned NaN or infinite values")
    return out


def same_shape(**tensors) -> None:
    """``ValueError`` naming the arguments when tensors that go together cannot be broadcast.

    ``same_shape(lr=lr, risk=risk)``: non-tensors (floats) are ignored.
    """
    shaped = {k: tuple(v.shape) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    try:
        torch.broadcast_shapes(*shaped.values())
    except RuntimeError:
        desc = ", ".join(f"{k} has shape {v}" for k, v in shaped.items())
        raise ValueError(f"{' and '.join(shaped)} must have the same length (or broadcast): "
                         f"{desc}") from None
