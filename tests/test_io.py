import dataclasses
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import dsmlib as dsm
from dsmlib.io import ResultsError, load_results, save_results


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    seeds: tuple = (0, 1)


def test_roundtrip_with_config_and_version(tmp_path):
    p = tmp_path / "r.npz"
    save_results(p, {"risk": torch.arange(4.0), "lr": np.array([0.1, 0.5])}, Cfg(), extra={"seconds": 1.5})
    arrays, meta = load_results(p, expected_config=Cfg())
    assert np.array_equal(arrays["risk"], np.arange(4.0))
    assert meta["version"] == dsm.__version__
    assert meta["config"] == {"lr": 0.1, "seeds": [0, 1]}
    assert meta["extra"]["seconds"] == 1.5
    assert list(tmp_path.iterdir()) == [p]          # no temporary file left


def test_mismatched_config_is_reported(tmp_path):
    p = tmp_path / "r.npz"
    save_results(p, {"a": np.ones(2)}, Cfg())
    with pytest.raises(ResultsError, match="lr"):
        load_results(p, expected_config=Cfg(lr=0.5))
    with pytest.raises(ResultsError, match="different configuration"):
        save_results(p, {"a": np.zeros(2)}, Cfg(lr=0.5))
    save_results(p, {"a": np.zeros(2)}, Cfg())      # same config: replaced
    save_results(p, {"a": np.zeros(3)}, Cfg(lr=0.5), overwrite=True)
    assert load_results(p)[1]["config"]["lr"] == 0.5


def test_corrupted_files_are_reported(tmp_path):
    p = tmp_path / "r.npz"
    save_results(p, {"a": np.arange(1000.0)}, Cfg())
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ResultsError, match="not a readable"):
        load_results(p)
    # arrays swapped under a valid archive: checksum catches it
    q = tmp_path / "q.npz"
    save_results(q, {"a": np.arange(3.0)}, Cfg())
    with np.load(q) as z:
        meta = str(z["__meta__"])
    np.savez(q, a=np.arange(3.0) + 1, __meta__=np.array(meta))
    with pytest.raises(ResultsError, match="checksum"):
        load_results(q)
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing.npz")


def test_interrupt_leaves_no_partial_file(tmp_path):
    # A child process is killed with SIGINT (Ctrl-C) while writing a large file repeatedly;
    # afterwards the target is either absent or a complete, valid results file.
    target = tmp_path / "big.npz"
    code = (
        "import numpy as np, sys\n"
        "from dsmlib.io import save_results\n"
        "print('ready', flush=True)\n"
        "a = np.random.default_rng(0).standard_normal(4_000_000)\n"
        "for i in range(1000):\n"
        f"    save_results({str(target)!r}, {{'a': a}}, {{'i': 0}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    import time
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert leftovers == []
    if target.exists():
        arrays, _ = load_results(target)
        assert arrays["a"].shape == (4_000_000,)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="arrays"):
        save_results(tmp_path / "x.npz", {}, Cfg())
    with pytest.raises(TypeError, match="config"):
        save_results(tmp_path / "x.npz", {"a": np.ones(1)}, "lr=0.1")


def test_saved_file_has_default_permissions(tmp_path):
    p = save_results(tmp_path / "r.npz", {"a": np.ones(1)}, Cfg())
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
