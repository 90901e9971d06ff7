#!/usr/bin/env python
"""Execute the book's notebooks in place, storing their outputs and widget state.

The book is built with ``execute_notebooks: "off"``: it renders what is committed. This script is
the one documented way to (re)compute those outputs:

    python tools/execute_notebooks.py                  # every notebook of _toc.yml, in order
    python tools/execute_notebooks.py book/03_memorization.ipynb book/10_playground.ipynb
    python tools/execute_notebooks.py --check          # execute nothing; fail if a code cell
                                                       # has no execution_count or an error output

Each notebook runs in a fresh ``python3`` kernel of the *current* interpreter (``sys.executable``,
whatever kernelspecs are installed), with the notebook's folder (``book/``) as working directory.
Outputs are made reproducible: ``PYTHONHASHSEED=0``, the inline matplotlib backend, progress bars
off (``TQDM_DISABLE=1``, unless ``--keep-progress``), no execution timestamps in the metadata, and
the random ids that ipywidgets and matplotlib's ``to_jshtml`` put in their outputs are renamed to
ids derived from the notebook's path (in an order that does not depend on the random ids), and
consecutive stream outputs of a cell are merged (how the kernel splits a cell's printing into
messages depends on timing), so that re-running an unchanged notebook gives no diff. The first
code cell (the Colab install cell) is rewritten from ``repository.url`` of _config.yml, the one
place where the repository's address is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from booktoc import ROOT, colab_install_cell, toc_notebooks  # noqa: E402

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# Environment of the kernel: stable hashes, inline figures, no progress bars, deterministic cuBLAS.
DETERMINISTIC_ENV = {
    "PYTHONHASHSEED": "0",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


class _CurrentPythonSpecs(KernelSpecManager):
    """Kernelspecs where ``python3`` always means this interpreter (not a user-level kernel)."""

    def get_kernel_spec(self, kernel_name):
        if kernel_name in ("python3", "python"):
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                      "--IPKernelApp.log_level=ERROR"],
                display_name="Python 3 (ipykernel)",
                language="python",
                metadata={"debugger": False},
            )
        try:
            return super().get_kernel_spec(kernel_name)
        except NoSuchKernel:
            raise NoSuchKernel(f"kernel {kernel_name!r}: the book's notebooks must use python3")


# --------------------------------------------------------------------------- normalisation


def _merge_streams(outputs) -> list:
    """Consecutive stream outputs of the same stream (stdout, stderr) as one output."""
    merged = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged
                and merged[-1].get("output_type") == "stream" and merged[-1].name == out.name):
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def _strip_volatile(nb) -> None:
    """Drop execution timestamps and other per-run metadata, merge split streams, in place."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = _merge_streams(cell.outputs)
    nb.metadata.pop("papermill", None)
    widgets = nb.metadata.get("widgets", {})
    if widgets and not widgets.get(WIDGET_STATE, {}).get("state"):
        nb.metadata.pop("widgets", None)


_HEX32 = r"[0-9a-f]{32}"


def _canonical_order(nb, wanted: set[str], widget_state: dict) -> list[str]:
    """The random ids in an order that does not depend on their values.

    Ids referenced by the cell outputs come first, in cell order; each widget model is followed
    by the models its state references (depth first, in the order of its state's sorted JSON);
    models referenced by nothing come last, sorted by their state with every id masked.
    """
    order: list[str] = []
    seen: set[str] = set()

    def visit(h):
        stack = [h]
        while stack:
            h = stack.pop()
            if h in seen or h not in wanted:
                continue
            seen.add(h)
            order.append(h)
            refs = re.findall(_HEX32, json.dumps(widget_state.get(h, {}), sort_keys=True))
            stack.extend(reversed(refs))

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for h in re.findall(_HEX32, json.dumps(out, sort_keys=True)):
                visit(h)
    rest = sorted(wanted - seen, key=lambda h: re.sub(
        _HEX32, "ID", json.dumps(widget_state.get(h, {}), sort_keys=True)))
    for h in rest:
        visit(h)
    return order


def _stable_ids(nb, key: str):
    """Rename random 32-hex ids (widget model ids, ``to_jshtml`` ids) to ids derived from ``key``.

    The ids are numbered in :func:`_canonical_order`, so re-running an unchanged notebook yields
    the same text. Returns a new notebook node.
    """
    text = nbformat.writes(nb)
    candidates: list[str] = []
    widget_state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    candidates += [k for k in widget_state if re.fullmatch(_HEX32, k)]
    candidates += re.findall(rf"_anim_img({_HEX32})", text)
    if not candidates:
        return nb
    order = _canonical_order(nb, set(candidates), widget_state)
    mapping = {
        old: hashlib.sha256(f"{key}:{i}".encode()).hexdigest()[:32] for i, old in enumerate(order)
    }
    text = re.sub(_HEX32, lambda m: mapping.get(m.group(0), m.group(0)), text)
    return nbformat.reads(text, as_version=4)


# --------------------------------------------------------------------------- execute / check


def _sync_colab_cell(nb) -> None:
    """Rewrite the Colab install cell (the first code cell) from _config.yml's repository url."""
    first = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first is not None and '"google.colab" in sys.modules' in first.source:
        first.source = colab_install_cell()


def execute(path: Path, timeout: int, kernel: str) -> None:
    """Execute one notebook in place (raises on a cell error or timeout)."""
    nb = nbformat.read(path, as_version=4)
    _sync_colab_cell(nb)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
        record_timing=False,
        allow_errors=False,
    )
    client.km = client.create_kernel_manager()
    client.km.kernel_spec_manager = _CurrentPythonSpecs()
    client.execute()
    _strip_volatile(nb)
    nb = _stable_ids(nb, path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name)
    nbformat.validate(nb)
    nbformat.write(nb, path)


def problems(path: Path) -> list[str]:
    """What --check reports for one notebook: unexecuted code cells and error outputs."""
    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if cell.get("execution_count") is None:
            found.append(f"cell {i}: not executed (execution_count is null)")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: error output {out.get('ename')}: {out.get('evalue')}")
    return found


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to execute (default: every notebook of _toc.yml, in order)")
    parser.add_argument("--check", action="store_true",
                        help="execute nothing; fail if a code cell lacks an execution_count or "
                             "holds an error output")
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds allowed per cell (default: 1800)")
    parser.add_argument("--kernel", default="python3", help="kernel name (default: python3)")
    parser.add_argument("--keep-progress", action="store_true",
                        help="keep tqdm progress bars in the outputs (default: TQDM_DISABLE=1)")
    args = parser.parse_args(argv)

    paths = [p.resolve() for p in args.notebooks] or toc_notebooks()
    missing = [p for p in paths if not p.exists()]
    if missing:
        print("missing: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 2

    if args.check:
        bad = 0
        for path in paths:
            found = problems(path)
            bad += bool(found)
            print(f"{'FAIL' if found else 'ok  '} {_rel(path)}")
            for line in found:
                print(f"     {line}")
        print(f"{len(paths) - bad}/{len(paths)} notebooks fully executed")
        return 1 if bad else 0

    os.environ.update(DETERMINISTIC_ENV)
    if not args.keep_progress:
        os.environ["TQDM_DISABLE"] = "1"
    start_all = time.perf_counter()
    failed = []
    for k, path in enumerate(paths, 1):
        start = time.perf_counter()
        print(f"[{k}/{len(paths)}] {_rel(path)} ...", end=" ", flush=True)
        try:
            execute(path, args.timeout, args.kernel)
        except (CellExecutionError, CellTimeoutError) as exc:
            failed.append(path)
            print(f"FAILED after {time.perf_counter() - start:.1f} s (notebook left unchanged)")
            print(str(exc)[-3000:], file=sys.stderr)
            continue
        print(f"ok ({time.perf_counter() - start:.1f} s)", flush=True)
    total = time.perf_counter() - start_all
    print(f"executed {len(paths) - len(failed)}/{len(paths)} notebooks in {total:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
