"""The book: every chapter listed and executed, and a clean build (zero Sphinx warnings).

Run:  python -m pytest tests/test_book.py -v
The build itself lives in the session fixture ``book_build`` (tests/conftest.py), shared with
tests/test_browser.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from booktoc import ROOT, colab_install_cell, resolve, toc_docnames, toc_notebooks

pytestmark = pytest.mark.book

BOOK = ROOT / "book"
ALL_NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def test_toc_entries_exist():
    missing = [d for d in toc_docnames() if resolve(d) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_every_notebook_is_in_the_toc():
    listed = set(toc_notebooks())
    orphans = [p.name for p in ALL_NOTEBOOKS if p not in listed]
    assert not orphans, f"notebooks in book/ missing from _toc.yml: {orphans}"


def test_toc_chapter_order():
    """Chapters 1-10 appear in number order, then the back matter."""
    names = [Path(d).name for d in toc_docnames()]
    numbered = [n for n in names if re.match(r"\d\d_", n)]
    assert numbered == sorted(numbered)
    assert [int(n[:2]) for n in numbered] == list(range(1, 11))
    assert names[0] == "intro" and names[-4:] == ["conclusion", "notation", "validation", "references"]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed(path):
    """Every code cell ran (execution_count set), in order, and no cell holds an error output.

    Fix with:  python tools/execute_notebooks.py book/<name>.ipynb
    """
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    unexecuted = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were not executed"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), f"{path.name}: cells were run out of order: {counts}"
    errors = [(o.get("ename"), o.get("evalue")) for c in code for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", \
        f"{path.name}: kernelspec must be python3 (Binder/Colab and the executor use it)"


def test_build_has_no_warnings(book_build):
    """``jupyter-book build . -W -n --keep-going`` succeeds with zero warnings."""
    if book_build.returncode is None:
        pytest.skip("DSM_BOOK_HTML is set: reusing an existing build, not building")
    warnings = [line for line in book_build.log.splitlines()
                if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    assert book_build.returncode == 0 and not warnings, (
        f"build failed (exit {book_build.returncode}) or warned:\n" + "\n".join(warnings)
        + "\n--- end of log ---\n" + book_build.log[-4000:]
    )
    print(f"book built in {book_build.seconds:.1f} s")


def test_every_toc_page_is_built(book_html):
    for docname in toc_docnames():
        assert (book_html / f"{docname}.html").exists(), f"{docname}.html was not built"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_dsmlib_only_on_colab(path):
    """Colab has only the notebook: its first code cell installs dsmlib there, from the repository
    of _config.yml (tools/execute_notebooks.py writes it), is hidden in the rendered book (tag
    remove-cell) and prints nothing locally."""
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source == colab_install_cell(), (
        f"{path.name}: the Colab install cell differs from the one of _config.yml's repository "
        "url: run python tools/execute_notebooks.py on it")
    assert "remove-cell" in first.metadata.get("tags", [])
    assert first.outputs == []
