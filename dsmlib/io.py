"""Saving and loading experiment results safely.

A result file is a NumPy ``.npz`` archive holding named arrays plus one JSON metadata entry: the
configuration that produced it, the dsmlib version, free-form extras (seeds, timings) and a SHA-256
checksum of the arrays. Writing goes to a temporary file in the same folder followed by an atomic
``os.replace``, so an interrupted run (Ctrl-C, crash) never leaves a half-written file behind.
Loading verifies the checksum and, when asked, that the stored configuration is the expected one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["save_results", "load_results", "ResultsError", "config_to_dict"]

_META_KEY = "__meta__"


class ResultsError(ValueError):
    """A results file is unreadable, corrupted, or was produced by a different configuration."""


def config_to_dict(config) -> dict:
    """A JSON-ready dict from a dataclass instance or a mapping (tuples become lists)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dataclass instance or a dict, got {type(config).__name__}")
    return json.loads(json.dumps(config, sort_keys=True, default=_json_default))


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _as_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError("result arrays must be numeric, not Python objects")
    return arr


def save_results(path, arrays: dict, config, *, extra: dict | None = None, overwrite: bool = False):
    """Atomically write ``arrays`` (name -> array/tensor) with ``config`` to ``path`` (.npz).

    Refuses (``ResultsError``) to replace an existing file produced by a *different* config unless
    ``overwrite=True``; a file with the same config is replaced. Returns the path.
    """
    from . import __version__

    path = Path(path)
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError("arrays must be a non-empty dict of name -> array")
    if _META_KEY in arrays:
        raise ValueError(f"{_META_KEY!r} is reserved")
    cfg = config_to_dict(config)
    np_arrays = {str(k): _as_numpy(v) for k, v in arrays.items()}
    if path.exists() and not overwrite:
        try:
            _, old_meta = load_results(path)
            same = old_meta.get("config") == cfg
        except ResultsError:
            same = False
        if not same:
            raise ResultsError(f"{path} holds results of a different configuration (or is "
                               f"unreadable); pass overwrite=True or choose another path")
    meta = {"config": cfg, "version": __version__, "extra": extra or {},
            "checksum": _checksum(np_arrays)}
    meta_json = json.dumps(meta, sort_keys=True, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())       # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **np_arrays, **{_META_KEY: np.array(meta_json)})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_results(path, *, expected_config=None):
    """Read a file written by :func:`save_results`. Returns ``(arrays, meta)``.

    Raises ``FileNotFoundError`` if absent, ``ResultsError`` if it is corrupted (unreadable or
    checksum mismatch) or if ``expected_config`` is given and differs from the stored config.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != _META_KEY}
            meta = json.loads(str(z[_META_KEY]))
    except Exception as exc:  # zipfile.BadZipFile, KeyError, ValueError, json errors...
        raise ResultsError(f"{path} is not a readable results file: {exc}") from exc
    if _checksum(arrays) != meta.get("checksum"):
        raise ResultsError(f"{path} is corrupted: its arrays do not match the stored checksum")
    if expected_config is not None:
        want = config_to_dict(expected_config)
        if meta.get("config") != want:
            diff = sorted(k for k in set(want) | set(meta.get("config", {}))
                          if want.get(k) != meta.get("config", {}).get(k))
            raise ResultsError(f"{path} was produced by a different configuration "
                               f"(differs in: {', '.join(diff)})")
    return arrays, meta
