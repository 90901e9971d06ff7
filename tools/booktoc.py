"""Read the book's ``_toc.yml`` and ``_config.yml`` (shared by tools/ scripts and tests/).

The table of contents is the single source of the chapter order: ``toc_files`` returns the
documents it lists, in reading order, as paths relative to the repository root. ``_config.yml``'s
``repository.url`` is the single source of the repository's address: the launch buttons derive
from it, tools/execute_notebooks.py writes it into every notebook's Colab install cell
(:func:`colab_install_cell`), and the publishing workflow checks it. ``BUILD_COMMAND`` is the one
way the site is built (README, CI, the GitHub Pages workflow and the tests use it).
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".ipynb", ".md")

# The site build: warnings are errors (-W), every reference must resolve (-n), and all warnings
# are listed (--keep-going). The tests build into a temporary folder with the same flags.
BUILD_FLAGS = ("-W", "-n", "--keep-going")
BUILD_COMMAND = "jupyter-book build . " + " ".join(BUILD_FLAGS)


def load_yaml(name: str, root: Path = ROOT) -> dict:
    """Parse ``root/name`` (``_toc.yml`` or ``_config.yml``)."""
    with open(root / name, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _entries(node):
    """Yield the ``file`` entries of a jb-book toc node, depth first, in order."""
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                yield from _entries(child)
    elif isinstance(node, list):
        for child in node:
            yield from _entries(child)


def toc_docnames(root: Path = ROOT) -> list[str]:
    """Document names (no suffix) of the toc, root first, in reading order."""
    toc = load_yaml("_toc.yml", root)
    return [toc["root"], *_entries(toc)]


def resolve(docname: str, root: Path = ROOT) -> Path | None:
    """The source file of a toc entry (``.ipynb`` or ``.md``), or None if it does not exist."""
    for suffix in SUFFIXES:
        path = root / f"{docname}{suffix}"
        if path.exists():
            return path
    return None


def toc_files(root: Path = ROOT) -> list[Path]:
    """Existing source files of the toc, in reading order (missing entries are skipped)."""
    return [p for p in (resolve(d, root) for d in toc_docnames(root)) if p is not None]


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The ``.ipynb`` chapters of the toc, in reading order."""
    return [p for p in toc_files(root) if p.suffix == ".ipynb"]


def repository_url(root: Path = ROOT) -> str:
    """``repository.url`` of _config.yml, without a trailing slash."""
    return load_yaml("_config.yml", root)["repository"]["url"].rstrip("/")


def colab_install_cell(url: str | None = None) -> str:
    """The source of every notebook's first code cell: on Colab (which has only the notebook),
    install dsmlib with the ``book`` extra (pandas, myst-nb, ipywidgets) from the repository;
    elsewhere do nothing. Tagged ``remove-cell`` in the book."""
    url = repository_url() if url is None else url
    return (
        "import sys\n"
        'if "google.colab" in sys.modules:  # install the companion library when running on Colab\n'
        "    import subprocess\n"
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
        f'                    "dsmlib[book] @ git+{url}"], check=True)'
    )
