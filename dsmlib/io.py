"""Saving and loading experiment results safely.

A result file is a NumPy ``.npz`` archive holding named arrays plus one JSON metadata entry: the
configuration that produced it, the dsmlib version, the names of its arrays, free-form extras
(seeds, timings) and a SHA-256 checksum of the arrays.

Writing goes to a hidden temporary file in the same folder (``.NAME.HOST.PID.RANDOM.tmp``)
followed by an atomic ``os.replace``, so the result file is always either the old one or the
complete new one. Ctrl-C and SIGTERM during a save remove the temporary file; after a SIGKILL or
a power cut it can remain, and the next save to the same folder deletes the temporary files whose
writing process no longer exists (whichever file they were for). Loading verifies the checksum, the metadata, the version (same
``major.minor`` as this dsmlib) and, when asked, the configuration and the arrays present.
:func:`check_writable` checks a destination *before* a long computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["save_results", "load_results", "ResultsError", "MissingArrayError", "config_to_dict",
           "check_writable"]

_META_KEY = "__meta__"
_MIN_FREE_BYTES = 32 << 20   # check_writable wants this much free space (results are MBs)
_LEGACY_TMP_AGE = 600.0      # seconds: unowned temporary files older than this are stale


class ResultsError(ValueError):
    """A results file is unreadable, corrupted, from another dsmlib version or configuration,
    or cannot be written where asked."""


class MissingArrayError(ResultsError, KeyError):
    """An array asked of a loaded results file is not in it (a ``KeyError`` too)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class ResultArrays(dict):
    """The arrays of a results file (a dict); asking for an absent name raises
    :class:`MissingArrayError` naming the file, instead of a bare ``KeyError`` later on."""

    def __init__(self, arrays, path):
        super().__init__(arrays)
        self.path = Path(path)

    def __missing__(self, key):
        raise MissingArrayError(f"{self.path} has no array {key!r} (it holds {sorted(self)}): it "
                                f"was written by other code than this dsmlib's, or is incomplete; "
                                f"regenerate it")


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


def _as_numpy(value, key):
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.dtype == torch_bfloat16():                  # no NumPy dtype: float32 is exact
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "biufcSUM":
        raise TypeError(f"arrays[{key!r}] must be numeric, not Python objects (dtype {arr.dtype})")
    return arr


def torch_bfloat16():
    import torch
    return torch.bfloat16


def _major_minor(version) -> tuple:
    return tuple(str(version).split(".")[:2])


# ---------------------------------------------------------------------------------------------
# temporary files
# ---------------------------------------------------------------------------------------------

def _host() -> str:
    return "".join(c for c in socket.gethostname() if c.isalnum() or c in "-_") or "host"


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True              # exists (another user's), or we cannot tell: keep its file
    return True


def _remove_stale_temps(path: Path) -> None:
    """Delete the temporary files, in ``path``'s folder, of saves whose writer is gone (killed,
    crashed), whatever file they were writing.

    Ours are ``.NAME.HOST.PID.RANDOM.tmp``: removed when HOST is this machine and PID is not a
    running process. Files named ``NAME.XXXXXXXX.tmp`` for this very ``NAME`` (older dsmlib
    versions) carry no owner and are removed once older than ten minutes.
    """
    folder, name = path.parent, path.name
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    host, now = _host(), time.time()
    for e in entries:
        fname = e.name
        if not fname.endswith(".tmp"):
            continue
        try:
            if fname.startswith("."):
                parts = fname[1:-len(".tmp")].rsplit(".", 3)
                if len(parts) == 4 and parts[1] == host and parts[2].isdigit() \
                        and not _alive(int(parts[2])):
                    os.unlink(e.path)
            elif fname.startswith(f"{name}.") and now - e.stat().st_mtime > _LEGACY_TMP_AGE:
                os.unlink(e.path)
        except OSError:
            pass


@contextlib.contextmanager
def _sigterm_as_exit():
    """Within the block, SIGTERM raises ``SystemExit(143)`` (so ``finally`` clauses remove the
    temporary file) instead of killing the process on the spot. Only in the main thread and only
    where SIGTERM still has its default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        old = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        yield
        return
    if old not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


# ---------------------------------------------------------------------------------------------
# checking a destination
# ---------------------------------------------------------------------------------------------

def check_writable(path, *, min_free_bytes: int = _MIN_FREE_BYTES) -> Path:
    """Check that a results file can be written at ``path``, before computing it.

    Creates the folder if needed, then writes and deletes a small probe file in it. Raises
    :class:`ResultsError` with a one-line reason when ``path`` is a folder, when a regular file
    stands where a folder must be, when the folder is read-only or not permitted, or when less than
    ``min_free_bytes`` (32 MiB) are free. Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    if path.is_dir():
        raise ResultsError(f"cannot write results to {path}: it is a folder (give a file name)")
    folder = path.parent
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ResultsError(f"cannot write results under {folder}: {parent} is a file, "
                                   f"not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"cannot create the folder {folder}: {exc.strerror or exc}") from None
    probe = _temp_path(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"dsmlib write test")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ResultsError(f"cannot write to the folder {folder}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < min_free_bytes:
        raise ResultsError(f"cannot write results to {folder}: only {free / 2**20:.1f} MiB free "
                           f"on its disk (need {min_free_bytes / 2**20:.0f} MiB)")
    return path


# ---------------------------------------------------------------------------------------------
# save and load
# ---------------------------------------------------------------------------------------------

def save_results(path, arrays: dict, config, *, extra: dict | None = None, overwrite: bool = False):
    """Atomically write ``arrays`` (name -> array/tensor) with ``config`` to ``path`` (.npz).

    Refuses (``ResultsError``) to replace an existing file produced by a *different* config unless
    ``overwrite=True``; a file with the same config (from any dsmlib version) is replaced.
    Returns the path. See the module docstring for what an interrupted save leaves behind.
    """
    from . import __version__

    path = Path(path)
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError("arrays must be a non-empty dict of name -> array")
    if _META_KEY in arrays:
        raise ValueError(f"{_META_KEY!r} is reserved")
    cfg = config_to_dict(config)
    np_arrays = {str(k): _as_numpy(v, k) for k, v in arrays.items()}
    if path.exists() and not overwrite:
        try:
            _, old_meta = load_results(path, allow_other_version=True)
            same = old_meta.get("config") == cfg
        except ResultsError:
            same = False
        if not same:
            raise ResultsError(f"{path} holds results of a different configuration (or is "
                               f"unreadable); pass overwrite=True or choose another path")
    meta = {"config": cfg, "version": __version__, "extra": extra or {},
            "arrays": sorted(np_arrays), "checksum": _checksum(np_arrays)}
    meta_json = json.dumps(meta, sort_keys=True, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = _temp_path(path)
    with _sigterm_as_exit():
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, **np_arrays, **{_META_KEY: np.array(meta_json)})
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


def _check_meta(meta, path):
    if not isinstance(meta, dict):
        raise ResultsError(f"{path} is not a dsmlib results file: its {_META_KEY} entry is a JSON "
                           f"{type(meta).__name__}, not an object")
    for key, kind in (("config", dict), ("version", str), ("checksum", str)):
        if not isinstance(meta.get(key), kind):
            raise ResultsError(f"{path} is not a dsmlib results file: {_META_KEY} lacks a valid "
                               f"{key!r} entry")
    if not isinstance(meta.get("extra", {}), dict):
        raise ResultsError(f"{path} is not a dsmlib results file: its 'extra' entry is not an object")


def load_results(path, *, expected_config=None, expected_arrays=None,
                 allow_other_version: bool = False):
    """Read a file written by :func:`save_results`. Returns ``(arrays, meta)``.

    Raises ``FileNotFoundError`` if absent and ``ResultsError`` if it is corrupted (unreadable,
    malformed metadata, checksum mismatch), if it was written by a dsmlib whose ``major.minor``
    version differs from this one (unless ``allow_other_version=True``; regenerate it instead),
    if ``expected_config`` is given and differs from the stored config, or if an array named in
    ``expected_arrays`` (an iterable of names) is missing. The arrays come as a dict in which an
    absent name raises :class:`MissingArrayError` (a ``ResultsError`` and ``KeyError``) naming the
    file.
    """
    from . import __version__

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}")
    if path.is_dir():
        raise ResultsError(f"{path} is a folder, not a results file")
    if not zipfile.is_zipfile(path):
        raise ResultsError(f"{path} is not a readable results file (not an .npz archive: empty, "
                           f"truncated or in another format)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != _META_KEY}
            meta = json.loads(str(z[_META_KEY]))
    except Exception as exc:  # zipfile.BadZipFile, KeyError, ValueError, json errors...
        raise ResultsError(f"{path} is not a readable results file: "
                           f"{str(exc).rstrip('.') or type(exc).__name__}") from exc
    _check_meta(meta, path)
    if _checksum(arrays) != meta.get("checksum"):
        raise ResultsError(f"{path} is corrupted: its arrays do not match the stored checksum")
    names = meta.get("arrays")
    if isinstance(names, list) and sorted(names) != sorted(arrays):
        raise ResultsError(f"{path} is corrupted: it should hold the arrays {sorted(names)}, "
                           f"it holds {sorted(arrays)}")
    if not allow_other_version and _major_minor(meta["version"]) != _major_minor(__version__):
        raise ResultsError(f"{path} was written by dsmlib {meta['version']}, this is dsmlib "
                           f"{__version__}: regenerate it (or load it with "
                           f"allow_other_version=True)")
    if expected_config is not None:
        want = config_to_dict(expected_config)
        if meta.get("config") != want:
            diff = sorted(k for k in set(want) | set(meta.get("config", {}))
                          if want.get(k) != meta.get("config", {}).get(k))
            raise ResultsError(f"{path} was produced by a different configuration "
                               f"(differs in: {', '.join(diff)})")
    if expected_arrays is not None:
        missing = sorted(set(expected_arrays) - set(arrays))
        if missing:
            raise ResultsError(f"{path} lacks the arrays {missing}: it was written by other code "
                               f"than this dsmlib's; regenerate it")
    return ResultArrays(arrays, path), meta
