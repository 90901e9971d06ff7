import dataclasses
import json
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
        "import numpy as np, signal, sys\n"
        # a shell without job control starts background jobs with SIGINT ignored, and Python
        # then installs no KeyboardInterrupt handler: restore it, as in an interactive session
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
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


def _writer(target, tmp_path):
    """A child process saving a large results file over and over (started, and ready)."""
    code = (
        "import numpy as np, sys\n"
        "from dsmlib.io import save_results\n"
        "a = np.random.default_rng(0).standard_normal(2_000_000)\n"
        "print('ready', flush=True)\n"
        "for i in range(1000):\n"
        f"    save_results({str(target)!r}, {{'a': a}}, {{'i': 0}})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc


def _temporaries(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_save_leaves_only_complete_files(tmp_path, sig):
    # SIGTERM: the save removes its temporary file before the process ends. SIGKILL cannot be
    # caught: a hidden temporary file may remain, the result file is complete or absent, and the
    # next save to the folder removes the dead writer's temporary file.
    target = tmp_path / "big.npz"
    proc = _writer(target, tmp_path)
    import time
    time.sleep(1.2)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    visible = [f for f in os.listdir(tmp_path) if not f.startswith(".")]
    assert visible in ([], ["big.npz"])
    if target.exists():
        arrays, _ = load_results(target)
        assert arrays["a"].shape == (2_000_000,)
    if sig == signal.SIGTERM:
        assert _temporaries(tmp_path) == []
        assert proc.returncode in (143, -signal.SIGTERM)
    save_results(tmp_path / "other.npz", {"b": np.ones(3)}, {"j": 1})   # another file, same folder
    assert _temporaries(tmp_path) == []


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    from dsmlib import io as dio
    live = tmp_path / f".r.npz.{dio._host()}.{os.getpid()}.abcd.tmp"       # this process: alive
    dead = tmp_path / f".r.npz.{dio._host()}.999999999.abcd.tmp"
    other_host = tmp_path / ".r.npz.elsewhere.1.abcd.tmp"
    legacy_old, legacy_new = tmp_path / "r.npz.x1y2z3.tmp", tmp_path / "r.npz.q9w8e7.tmp"
    for f in (live, dead, other_host, legacy_old, legacy_new):
        f.write_bytes(b"partial")
    old = os.path.getmtime(legacy_old) - 3600
    os.utime(legacy_old, (old, old))
    save_results(tmp_path / "r.npz", {"a": np.ones(2)}, Cfg())
    left = sorted(_temporaries(tmp_path))
    assert left == sorted([live.name, other_host.name, legacy_new.name])


def test_metadata_version_and_arrays_are_checked(tmp_path):
    p = save_results(tmp_path / "r.npz", {"a": np.ones(2), "b": np.zeros(3)}, Cfg())
    arrays, meta = load_results(p, expected_arrays=["a", "b"])
    assert meta["arrays"] == ["a", "b"]
    with pytest.raises(ResultsError, match="'c'") as info:
        arrays["c"]
    assert isinstance(info.value, KeyError)                 # code catching KeyError still works
    with pytest.raises(ResultsError, match="lacks the arrays"):
        load_results(p, expected_arrays=["a", "c"])
    # the same file as written by another version of dsmlib
    with np.load(p) as z:
        data = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(str(z["__meta__"]))
    for version, ok in (("0.1.7", True), ("0.2.0", False), ("1.1.0", False)):
        meta["version"] = version
        np.savez(p, **data, __meta__=np.array(json.dumps(meta)))
        if ok:
            load_results(p)
        else:
            with pytest.raises(ResultsError, match=f"dsmlib {version}"):
                load_results(p)
            assert load_results(p, allow_other_version=True)[1]["version"] == version
    save_results(p, {"a": np.ones(2), "b": np.zeros(3)}, Cfg())   # same config: replaced
    assert load_results(p)[1]["version"] == dsm.__version__
    # an array removed from the archive (checksum recomputed by hand): the list in __meta__ tells
    meta["version"], meta["checksum"] = dsm.__version__, dsm.io._checksum({"a": data["a"]})
    np.savez(p, a=data["a"], __meta__=np.array(json.dumps(meta)))
    with pytest.raises(ResultsError, match="should hold"):
        load_results(p)


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "3", "{", '{"config": {}}',
                                  '{"config": [], "version": "0.1.0", "checksum": "x"}',
                                  '{"config": {}, "version": 1, "checksum": "x"}'])
def test_malformed_metadata_is_a_results_error(tmp_path, meta):
    p = tmp_path / "m.npz"
    np.savez(p, a=np.ones(2), __meta__=np.array(meta))
    with pytest.raises(ResultsError):
        load_results(p)


def test_check_writable(tmp_path, monkeypatch):
    from dsmlib.io import check_writable
    assert check_writable(tmp_path / "new" / "deeper" / "r.npz") == tmp_path / "new" / "deeper" / "r.npz"
    assert (tmp_path / "new" / "deeper").is_dir() and _temporaries(tmp_path / "new" / "deeper") == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="is a file"):
        check_writable(tmp_path / "file" / "r.npz")
    with pytest.raises(ResultsError, match="folder"):
        check_writable(tmp_path)
    monkeypatch.setattr(dsm.io.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(ResultsError, match="MiB free"):
        check_writable(tmp_path / "r.npz")


def test_odd_arrays_are_saved_or_refused_by_name(tmp_path):
    p = save_results(tmp_path / "r.npz", {"g": torch.ones(2, requires_grad=True),
                                          "h": torch.ones(2, dtype=torch.bfloat16),
                                          "be": np.ones(2, dtype=">f8")}, Cfg())
    arrays, _ = load_results(p)
    assert arrays["h"].dtype == np.float32 and np.array_equal(arrays["be"], np.ones(2))
    with pytest.raises(TypeError, match="arrays\\['o'\\]"):
        save_results(tmp_path / "o.npz", {"o": np.array([1, "x"], dtype=object)}, Cfg())
