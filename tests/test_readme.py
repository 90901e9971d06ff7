"""The README's commands work as written, and the publishing workflow builds what CI builds.

Run:  python -m pytest tests/test_readme.py -q       (about a minute on 2 CPU cores)

Every command of the README's "Use" section (inline code that starts with ``python``,
``python3``, ``jupyter`` or ``bash``) must have an entry in ``USE_COMMANDS``: how this file runs it (at a reduced size
where the real command takes minutes) or which test runs it. A command added to the README
without a test fails ``test_every_use_command_is_tested``. The library example is run verbatim.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

from booktoc import BUILD_COMMAND, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
       "MPLBACKEND": "Agg"}


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _inline_commands(text: str) -> list[str]:
    spans = re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    spans = [" ".join(s.split()) for s in spans]
    return [s for s in spans if s.split()[0] in ("python", "python3", "jupyter", "bash")]


def _run(cmd, timeout=600, **kw):
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


# README command -> the test that runs it (a test function of this file or another test file)
USE_COMMANDS = {
    "jupyter lab book/": "test_jupyterlab_is_installed",
    "python tools/execute_notebooks.py book/01_diffusion.ipynb":
        "test_executor_leaves_an_unchanged_notebook_unchanged",
    "python benchmarks/bench_training.py": "test_benchmarks_run",
    "python benchmarks/bench_playground.py": "test_benchmarks_run",
    "python benchmarks/bench_timenet.py": "test_benchmarks_run",
    "python benchmarks/bench_memory.py": "test_benchmarks_run",
    "python -m dsmlib.experiments fig1 --scale paper": "test_fig1_paper_scale_reproduces_results",
    "python -m dsmlib.playground --regenerate":
        "tests/test_widgets.py::test_packaged_grid_regenerates_bit_for_bit",
    "python -m dsmlib.playground --check": "test_playground_check",
    "python3 tools/paper_scale_gpu.py --budget-minutes 8 --export DIR":
        "tests/test_paper_scale_gpu.py::test_end_to_end_writes_the_files_of_the_library_runner",
}


def test_every_use_command_is_tested():
    commands = _inline_commands(_section("Use"))
    assert len(commands) >= len(USE_COMMANDS) - 1, commands
    untested = [c for c in commands if c not in USE_COMMANDS]
    assert not untested, f"README commands without a test (add them to USE_COMMANDS): {untested}"
    for target in set(USE_COMMANDS.values()):
        path, _, name = target.rpartition("::")
        source = (ROOT / path).read_text() if path else Path(__file__).read_text()
        assert f"def {name}(" in source, f"{target} does not exist"


def test_setup_commands_are_the_ones_ci_runs():
    """The README's set-up line installs requirements.txt, runs npm ci and builds with the one
    build command; the test command is tools/test.sh, which .ci/run calls after .ci/setup."""
    blocks = re.findall(r"```bash\n(.*?)```", _section("Set up (fresh machine)"), re.S)
    assert len(blocks) == 2, blocks
    setup, test = (b.strip() for b in blocks)
    steps = [s.strip() for s in setup.split("&&")]
    assert steps == ["python3 -m venv .venv", ". .venv/bin/activate",
                     "pip install -r requirements.txt", "npm ci", BUILD_COMMAND], steps
    assert test == "bash tools/test.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/setup" in ci and "bash tools/test.sh" in ci
    ci_setup = (ROOT / ".ci" / "setup").read_text()
    for step in ("python3 -m venv .venv", "pip install -q -r requirements.txt", "npm ci"):
        assert step in ci_setup, step


def test_pages_workflow_builds_like_ci_and_deploys():
    """.github/workflows/book.yml parses, sets up with .ci/setup, builds with BUILD_COMMAND and
    deploys _build/html with Jupyter Book's documented GitHub Pages actions."""
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    on = wf.get("on", wf.get(True))                    # YAML 1.1 reads the key `on` as True
    assert "main" in on["push"]["branches"]
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    build = wf["jobs"]["build"]["steps"]
    runs = [s.get("run", "") for s in build]
    uses = [s.get("uses", "") for s in build]
    assert any("bash .ci/setup" in r for r in runs), runs
    lines = [line.strip() for r in runs for line in r.splitlines()]
    assert BUILD_COMMAND in lines, f"the workflow does not run {BUILD_COMMAND!r}: {lines}"
    assert any(u.startswith("actions/setup-python") for u in uses)
    assert any(u.startswith("actions/setup-node") for u in uses)
    upload = next(s for s in build if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])
    assert any("repository_url" in r for r in runs), "the workflow does not check _config.yml's url"


def test_jupyterlab_is_installed():
    assert (ROOT / "book").is_dir()
    out = _run(["jupyter", "lab", "--version"], timeout=120)
    assert re.match(r"\d+\.\d+", out.strip()), out


def test_library_example_runs():
    example = re.search(r"```python\n(.*?)```", _section("Use"), re.S).group(1)
    example = "\n".join(line[2:] if line.startswith("  ") else line for line in example.splitlines())
    out = _run([PY, "-c", example], timeout=600)
    assert "tensor(" in out, out


def test_benchmarks_run():
    out = _run([PY, "benchmarks/bench_training.py", "--steps", "40", "--plain-steps", "5",
                "--members", "2", "--dims", "1", "--threads", "1"])
    assert "network-steps per second" in out
    out = _run([PY, "benchmarks/bench_timenet.py", "--steps", "2", "--members", "2"])
    assert "ratio" in out
    out = _run([PY, "benchmarks/bench_playground.py", "--moves", "2"])
    assert "learning-rate slider" in out
    out = _run([PY, "benchmarks/bench_memory.py", "--queries", "20000", "--points", "2000",
                "--blocks", "2"])
    assert "finite: True" in out
    assert "--quick" in _run([PY, "benchmarks/bench_memory.py", "--help"])


def test_fig1_paper_scale_reproduces_results(tmp_path):
    """The README's paper-scale command, into a temporary folder: the arrays equal those of the
    committed results/fig1_paper.npz bit for bit (timings aside)."""
    _run([PY, "-m", "dsmlib.experiments", "fig1", "--scale", "paper", "--out", str(tmp_path),
          "--quiet"], timeout=900)
    import dsmlib as dsm

    fresh, _ = dsm.load_results(tmp_path / "fig1_paper.npz")
    committed, _ = dsm.load_results(ROOT / "results" / "fig1_paper.npz")
    assert sorted(fresh) == sorted(committed)
    for key in committed:
        if "seconds" in key:
            continue
        np.testing.assert_array_equal(fresh[key], committed[key], err_msg=key)


def test_playground_check():
    assert "ok:" in _run([PY, "-m", "dsmlib.playground", "--check"])


def test_executor_leaves_an_unchanged_notebook_unchanged(tmp_path):
    """tools/execute_notebooks.py on a notebook with split output streams, a widget and a
    to_jshtml animation: executing it twice gives the same file (the README's promise)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "import time\nprint('one')\ntime.sleep(0.3)\nprint('two')",
        "import ipywidgets as W\nW.VBox([W.IntSlider(3), W.HBox([W.Button(description='b'), "
        "W.HTML('x')])])",
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "from matplotlib.animation import FuncAnimation\nfrom IPython.display import HTML\n"
        "fig, ax = plt.subplots(figsize=(2, 1))\n(line,) = ax.plot([0, 1], [0, 1])\n"
        "anim = FuncAnimation(fig, lambda i: line.set_ydata([0, i]), frames=2)\n"
        "HTML(anim.to_jshtml())",
    )]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    script = [PY, str(ROOT / "tools" / "execute_notebooks.py")]
    _run([*script, str(path)], timeout=300)
    first = path.read_text()
    _run([*script, str(path)], timeout=300)
    assert path.read_text() == first, "re-executing an unchanged notebook changed it"
    done = nbformat.read(path, as_version=4)
    streams = [o for o in done.cells[0].outputs if o.output_type == "stream"]
    assert len(streams) == 1 and streams[0].text == "one\ntwo\n"
    assert "_anim_img" in first and "widget-state+json" in first
    assert "FAIL" not in _run([*script, "--check", str(ROOT / "book" / "01_diffusion.ipynb")])
