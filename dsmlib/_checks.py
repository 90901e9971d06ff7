"""Input validation shared by every public function of dsmlib.

Each helper raises ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, bad value)
with a message that names the offending argument, so that a student poking at the library gets a
clear answer instead of a NaN.

Dtype convention (documented in the book's notation page): tensors keep their floating dtype;
NumPy arrays keep theirs (float64 stays float64); Python numbers, lists and integer arrays become
``torch.get_default_dtype()`` (float32 unless changed).
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
]


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def as_tensor(x, name: str, *, dtype: torch.dtype | None = None, device=None,
              allow_empty: bool = False) -> torch.Tensor:
    """Convert ``x`` to a floating tensor and check that it is finite.

    Accepts tensors, NumPy arrays, Python numbers and (nested) lists of numbers.
    Raises ``TypeError`` for anything else (strings, None, complex or boolean tensors) and
    ``ValueError`` for NaN/inf entries or an empty input.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got a NumPy array of dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif _is_number(x) or isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x, dtype=float)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a number, a list of numbers, an array or a tensor; "
                            f"got {type(x).__name__}") from exc
        t = torch.as_tensor(arr, dtype=dtype or torch.get_default_dtype())
    else:
        raise TypeError(f"{name} must be a number, array or torch tensor, got {type(x).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device if device is not None else t.device)
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def scalar(x, name: str) -> float:
    """A finite real number given as a Python number, NumPy scalar or one-element tensor."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(x.shape)}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got dtype {x.dtype}")
        x = x.item()
    elif isinstance(x, np.ndarray) and x.size == 1 and x.dtype.kind in "fiu":
        x = x.item()
    elif isinstance(x, np.generic) and np.asarray(x).dtype.kind in "fiu":
        x = x.item()
    if not _is_number(x):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
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


def integer(x, name: str, minimum: int = 0) -> int:
    """A Python (or NumPy) integer ``>= minimum``; floats such as ``2.0`` are refused."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}")
    x = int(x)
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x


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
