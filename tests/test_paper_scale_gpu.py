"""End-to-end test of tools/paper_scale_gpu.py on the CPU, at a tiny size (a few seconds).

The script's GPU-specific parts (CUDA graphs, block draws) are the library's and are tested in
test_timenet.py and test_sampling.py with device="cpu"; here: the plan, the estimate, the budget,
the resumable Fig. 4 parts and the result files, which must be those of dsmlib.experiments.run.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dsmlib import experiments as ex
from dsmlib.io import load_results

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "paper_scale_gpu.py"
TINY = ["--scale", "book", "--dims", "2,3", "--steps-scale", "0.005", "--probe-blocks", "3",
        "--set", "width=16", "--set", "batch_size=16", "--set", "num_samples=30",
        "--set", "sampler_steps=4", "--set", "seeds=(0, 1)", "--set", "sample_sets=2"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("paper_scale_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(tmp, *extra):
    return ["--device", "cpu", "--out", str(tmp / "results"), "--work", str(tmp / "work"),
            "--export", str(tmp / "export"), *TINY, *extra]


def test_end_to_end_writes_the_files_of_the_library_runner(script, tmp_path, capsys):
    assert script.main(_args(tmp_path, "--budget-minutes", "5")) == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "plan: 3 of 3 parts" in out and "fig4 complete" in out
    # the files are those that dsmlib.experiments.run writes for the same configurations
    over3 = dict(width=16, batch_size=16, num_samples=30, sampler_steps=4, seeds=(0, 1),
                 steps=(10, 200))
    got3, meta3 = ex.load("fig3", "book", tmp_path / "results", tag="reduced", **over3)
    want3, _, _ = ex.run("fig3", "book", tmp_path / "direct", progress=False, **over3)
    over4 = dict(width=16, batch_size=16, num_samples=30, sampler_steps=4, seeds=(0, 1),
                 sample_sets=2, dims=(2, 3), steps=20)
    got4, meta4 = ex.load("fig4", "book", tmp_path / "results", tag="reduced", **over4)
    want4, _, _ = ex.run("fig4", "book", tmp_path / "direct", progress=False, **over4)
    for got, want in ((got3, want3), (got4, want4)):
        assert set(got) == set(want)
        for k in want:
            if k != "train_seconds":
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert meta4["extra"]["seeds"] == [0, 1] and set(meta4["extra"]["parts"]) == {"2", "3"}
    assert meta3["extra"]["device"] == "cpu"
    exported = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert exported == ["fig3_book_reduced.npz", "fig4_book_reduced.npz", "paper_scale_log.json"]
    log = json.loads((tmp_path / "export" / "paper_scale_log.json").read_text())
    assert [p["part"] for p in log["parts"]] == ["fig3", "fig4 d=2", "fig4 d=3"]
    # the same command again: every part is done, nothing is recomputed
    assert script.main(_args(tmp_path, "--budget-minutes", "5")) == 0
    assert "plan: 0 of 3 parts" in capsys.readouterr().out


def test_budget_stops_between_parts_and_the_next_command_resumes(script, tmp_path, capsys,
                                                                 monkeypatch):
    # fake estimates: fig3 3 min, each dimension 2 min; a 6-minute budget runs fig3 and d = 2
    monkeypatch.setattr(script, "estimate",
                        lambda name, cfg, device, blocks: (180.0 if name == "fig3" else 120.0, 1.0))
    assert script.main(_args(tmp_path, "--budget-minutes", "6")) == 4
    out = capsys.readouterr().out
    assert "stopping: fig4 d=3" in out and "run the same command again" in out
    assert (tmp_path / "results" / "fig3_book_reduced.npz").exists()
    assert not (tmp_path / "results" / "fig4_book_reduced.npz").exists()
    with tarfile.open(tmp_path / "export" / "paper_scale_parts.tar") as tar:
        assert tar.getnames() == ["fig4_book_d2_reduced.npz"]
    # the next command finds fig3 and d = 2 done and finishes d = 3, then joins Fig. 4
    assert script.main(_args(tmp_path, "--budget-minutes", "6")) == 0
    out = capsys.readouterr().out
    assert "plan: 1 of 3 parts" in out and "fig4 complete" in out
    arrays, _ = load_results(tmp_path / "results" / "fig4_book_reduced.npz")
    assert arrays["dims"].tolist() == [2, 3]


def test_refusals(script, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(script, "estimate", lambda name, cfg, device, blocks: (600.0, 1.0))
    assert script.main(_args(tmp_path, "--budget-minutes", "5", "--only", "fig3")) == 3
    assert "refused: fig3 alone" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    assert script.main(_args(tmp_path, "--estimate-only")) == 0
    assert "plan: 3 of 3 parts to run, estimated 30.0 min" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert script.main(["--device", "cuda", *TINY]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(_args(tmp_path, "--set", "colour=3"))


def test_roofline_floor_counts():
    spec = importlib.util.spec_from_file_location("paper_scale_gpu_r", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # Fig. 3, eta = 0.05 (6 seeds): memory bound, ~0.28 ms a step; Fig. 4 d = 1000: FLOP bound
    small = mod.roofline_step_seconds(6, 5000, 1000, 2)
    big = mod.roofline_step_seconds(3, 5000, 1000, 1000)
    assert small == pytest.approx(10 * 4 * 6 * 5000 * 1000 / 4.3e12 + 40 * 2.5e-6)
    assert big == pytest.approx(2 * 3 * 5000 * 1000 * (2 * 1002 + 3000) / 67e12 + 1e-4)


def test_fewer_fig3_seeds_get_the_cli_tag(script, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(script, "estimate", lambda name, cfg, device, blocks: (1.0, 1.0))
    assert script.main(_args(tmp_path, "--only", "fig3", "--fig3-seeds", "1")) == 0
    arrays, meta = load_results(tmp_path / "results" / "fig3_book_s1_reduced.npz")
    names = [p[3] for p in script.plan(script.argparse.Namespace(
        only="all", scale="book", set={}, steps_scale=1.0, fig3_seeds=1, dims=[2], reduced=True,
        tf32=True, out=str(tmp_path), work=str(tmp_path)), torch.device("cpu"))]
    assert names == ["s1_reduced_tf32", "d2_reduced_tf32"]
    assert arrays["seeds"].tolist() == [0] and meta["config"]["seeds"] == [0]
    assert (tmp_path / "export" / "fig3_book_s1_reduced.npz").exists()


def test_preflight_stops_a_wrong_training_path(script, tmp_path, capsys, monkeypatch):
    import dsmlib.timenet_training as tn
    real = tn._loss_and_grads

    def wrong(*a, **k):
        loss, gW1, gb, gW2 = real(*a, **k)
        return loss, gW1, gb, 2 * gW2
    monkeypatch.setattr(tn, "_loss_and_grads", wrong)
    assert script.main(_args(tmp_path, "--estimate-only")) == 5
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "nothing was run" in captured.err
    assert not (tmp_path / "results").exists()


def test_fused_roofline_is_far_below_the_torch_path_for_fig3():
    spec = importlib.util.spec_from_file_location("paper_scale_gpu_f", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch_path = mod.roofline_step_seconds(6, 5000, 1000, 2)
    fused = mod.roofline_step_seconds(6, 5000, 1000, 2, fused=True)
    assert fused < torch_path / 2
    # 2 K B m (3 * 4 + 3 * 2) FLOPs at 67 TFLOP/s, plus the launch floor
    assert fused == pytest.approx(2 * 6 * 5000 * 1000 * 18 / 67e12 + 1e-4)
