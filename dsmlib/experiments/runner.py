"""Running, saving and loading the figures: presets, deviations from the paper, result files."""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import _checks
from ..io import ResultsError, check_writable, config_to_dict, load_results, save_results
from .diffusion import Fig3Config, Fig4Config, fig3, fig4
from .decomposition import MechanismConfig, mechanism
from .decomposition2d import Mechanism2dConfig, mechanism2d
from .open_questions import GenerationConfig, PhaseConfig, generation, phase
from .sweeps import Fig1Config, Fig2Config, fig1, fig2

__all__ = ["FIGURES", "make_config", "deviations", "result_path", "run", "load"]

FIGURES = {"fig1": (Fig1Config, fig1), "fig2": (Fig2Config, fig2), "fig3": (Fig3Config, fig3),
           "fig4": (Fig4Config, fig4), "mechanism": (MechanismConfig, mechanism),
           "mechanism2d": (Mechanism2dConfig, mechanism2d), "phase": (PhaseConfig, phase),
           "generation": (GenerationConfig, generation)}



def make_config(name: str, scale: str = "book", **overrides):
    """The preset configuration of figure ``name`` at ``scale``, with fields replaced by ``overrides``.

    ``make_config("fig2", "paper", dim=10)`` is the paper's d = 10 sweep. For ``fig2`` and
    ``mechanism`` the ``dim`` override selects the book preset of that dimension.
    """
    if name not in FIGURES:
        raise ValueError(f"name must be one of {sorted(FIGURES)}, got {name!r}")
    cls = FIGURES[name][0]
    if name in ("fig2", "mechanism"):
        cfg = cls.preset(scale, dim=overrides.pop("dim", 1))
    else:
        cfg = cls.preset(scale)
    return replace(cfg, **overrides) if overrides else cfg


def deviations(name: str, scale: str = "book", **overrides) -> list:
    """Settings in which ``make_config(name, scale, **overrides)`` departs from the paper's.

    Returns ``[(field, paper value, this value), ...]`` (``scale`` and ``device`` left out). For
    ``fig2`` the paper configuration of the same ``dim`` is the reference.
    """
    ref = make_config(name, "paper", **({"dim": overrides["dim"]} if "dim" in overrides else {}))
    cfg = make_config(name, scale, **overrides)
    return [(f.name, getattr(ref, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if f.name not in ("scale", "device") and getattr(ref, f.name) != getattr(cfg, f.name)]


def _identity(config) -> dict:
    """The saved configuration: every field except ``device`` (results do not depend on it)."""
    d = config_to_dict(config)
    d.pop("device", None)
    return d


def result_path(name: str, config, out_dir="results", tag: str | None = None) -> Path:
    """Where :func:`run` saves: ``{out_dir}/{name}_{scale}[_d{dim}][_{tag}].npz`` (``_d{dim}``
    always for fig2, for mechanism when ``dim != 1``)."""
    stem = f"{name}_{config.scale}"
    if name == "fig2" or name == "mechanism" and config.dim != 1:
        stem += f"_d{config.dim}"
    if tag:
        stem += f"_{tag}"
    return Path(out_dir) / f"{stem}.npz"


def run(name: str, scale: str = "book", out_dir="results", *, tag: str | None = None,
        overwrite: bool = False, progress: bool = True, **overrides):
    """Run figure ``name`` at ``scale`` and save it atomically; return ``(arrays, meta, path)``.

    The file (see :func:`result_path`) holds the arrays, the configuration (without ``device``),
    the dsmlib version and, in ``meta["extra"]``, the seeds, the device, torch's version and
    thread count, and timings (wall and CPU seconds). If the file already holds this very
    configuration it is loaded and nothing is recomputed (``overwrite=True`` recomputes); if it
    holds another configuration, :class:`ResultsError` is raised *before* computing anything.
    Nothing is written until the computation has finished: Ctrl-C leaves no partial file.
    """
    config = make_config(name, scale, **overrides)
    path = result_path(name, config, out_dir, tag)
    identity = _identity(config)
    if path.exists() and not overwrite:
        try:
            arrays, meta = load_results(path)
        except ResultsError as exc:
            raise ResultsError(f"{path} exists but is unreadable ({exc}); pass overwrite=True "
                               f"(--overwrite) to replace it") from exc
        if meta.get("config") != identity:
            raise ResultsError(f"{path} holds results of a different configuration; pass "
                               f"overwrite=True (--overwrite), or another tag or out_dir")
        return arrays, meta, path
    # before hours of computing: the device exists and the file can be written (else one clear
    # ValueError / ResultsError now, not a traceback at the end)
    _checks.device(config.device)
    check_writable(path)
    fn = FIGURES[name][1]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    arrays = fn(config, progress=progress)
    extra = {
        "seeds": list(config.seeds), "device": str(config.device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        save_results(path, arrays, identity, extra=extra, overwrite=overwrite)
    except OSError as exc:       # e.g. the disk filled up while computing: keep the work anyway
        rescue = Path(tempfile.gettempdir()) / path.name
        try:
            save_results(rescue, arrays, identity, extra=extra, overwrite=True)
        except OSError:
            raise ResultsError(f"could not write {path} ({exc.strerror or exc}); the results "
                               f"are lost") from exc
        raise ResultsError(f"could not write {path} ({exc.strerror or exc}); the results were "
                           f"saved to {rescue} instead") from exc
    return load_results(path) + (path,)


def load(name: str, scale: str = "paper", out_dir="results", *, tag: str | None = None,
         **overrides):
    """Load saved results of ``make_config(name, scale, **overrides)``; ``(arrays, meta)``.

    Raises ``FileNotFoundError`` when the file is absent and :class:`ResultsError` when it holds
    another configuration (the message names the fields that differ).
    """
    config = make_config(name, scale, **overrides)
    return load_results(result_path(name, config, out_dir, tag), expected_config=_identity(config))
