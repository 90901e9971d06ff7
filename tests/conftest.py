"""Shared fixtures of the test suite.

The book fixtures are lazy: the (slow) Jupyter Book build runs only when a test asks for it, once
per session, and its HTML is shared by tests/test_book.py and tests/test_browser.py.

Environment variables:
  DSM_BOOK_HTML=path/to/_build/html   reuse an existing build instead of building (fast iteration;
                                      the zero-warning test is then skipped)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from booktoc import BUILD_FLAGS  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "book: builds or inspects the Jupyter Book (slow; deselect with -m 'not book')"
    )
    config.addinivalue_line(
        "markers", "browser: drives headless Chromium on the built book"
    )


@dataclass
class BookBuild:
    """Result of one ``jupyter-book build``: where the HTML is and what the build printed."""

    html: Path
    returncode: int | None  # None when an existing build was reused (DSM_BOOK_HTML)
    log: str
    seconds: float


@pytest.fixture(scope="session")
def book_build(tmp_path_factory) -> BookBuild:
    """Build the book once per session, from scratch, with warnings as errors.

    The build is the README's (``booktoc.BUILD_COMMAND``: ``-W -n --keep-going``, so that every
    warning is listed and the HTML is still written for the other tests to inspect), into a fresh
    temporary folder (an incremental build would not re-emit the warnings of unchanged pages).
    """
    reuse = os.environ.get("DSM_BOOK_HTML")
    if reuse:
        html = Path(reuse).resolve()
        if not (html / "index.html").exists():
            pytest.fail(f"DSM_BOOK_HTML={reuse} has no index.html")
        return BookBuild(html=html, returncode=None, log="", seconds=0.0)
    out = tmp_path_factory.mktemp("book")
    # jupyter_book has no __main__; call its CLI entry point with this interpreter.
    cli = "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; main()"
    cmd = [sys.executable, "-c", cli, "build", str(ROOT), "--path-output", str(out),
           *BUILD_FLAGS, "--all"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"})
    seconds = time.perf_counter() - start
    return BookBuild(html=out / "_build" / "html", returncode=proc.returncode,
                     log=proc.stdout + proc.stderr, seconds=seconds)


@pytest.fixture(scope="session")
def book_html(book_build) -> Path:
    """The built HTML folder (skips dependants if the build produced no HTML at all)."""
    if not (book_build.html / "index.html").exists():
        pytest.fail("the book build wrote no HTML:\n" + book_build.log[-5000:])
    return book_build.html
