"""Peak memory of every function that pairs queries with n = 1e5 training points (or many points
with a wide network), each measured in a fresh process, over several runs.

One helper process imports torch and dsmlib and builds the shared inputs once; for each case it
forks a child, a fresh process of its own (copy-on-write), which reads its resident set size
(RSS), makes the call ``RUNS`` times, resetting the kernel's peak-RSS counter (``VmHWM``, via
``/proc/self/clear_refs``) before each run, and reports ``peak - RSS before the first run`` for
every run. The test asserts each is below ``LIMIT_MIB``. Without chunking, each case needs
between 1 and 3 GB (the (queries x points) arrays of its formula); with chunks written into
preallocated outputs they stay near 100 MB, and repeating the call must not make the heap grow
(which a loop that keeps per-chunk pieces in a list does, as they interleave with the
chunk-sized temporaries). Sizes are chosen so that every case crosses several chunks yet takes
well under a second. Linux only (fork, /proc).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 300
RUNS = 3

CASES = {
    # name: (extra setup, the call); n = 1e5 training points unless stated
    "optimal_score": ("", "dsm.optimal_score(queries, data, 0.95, 0.05)"),
    "posterior_moments": ("", "dsm.posterior_moments(queries, data, 0.95, 0.05)"),
    "optimal_score_derivative": ("", "dsm.optimal_score_derivative(queries, data, 0.95, 0.05)"),
    "log_mixture_density": ("", "dsm.log_mixture_density(queries, data, 0.95, 0.05)"),
    "naive_optimal_score": ("", "dsm.naive_optimal_score(queries, data, 0.95, 0.5)"),
    "tv_weight": ("", "dsm.tv_weight(queries[:50], data, 0.95, 0.05)"),
    "tv_weight_pieces": ("", "dsm.tv_weight_pieces(queries, data, 0.95)"),
    "weighted_tv of a net": (
        "net = dsm.TwoLayerScoreNet(30, ensemble=2, generator=dsm.make_generators([1, 2]))",
        "dsm.weighted_tv(net, data, 0.95, 0.05)"),
    "nearest_neighbor_distances": ("", "dsm.nearest_neighbor_distances(queries, data)"),
    "memorization_fraction": ("", "dsm.memorization_fraction(queries, data)"),
    "mmd (3000 x 3000 points)": ("x = torch.randn(3000, generator=g)",
                                 "dsm.mmd(x, data[:3000])"),
    "relu_net_risk": (
        "net = dsm.TwoLayerScoreNet(40, ensemble=2, generator=dsm.make_generators([1, 2]))",
        "dsm.relu_net_risk(net, data, 0.95, 0.05)"),
    "TwoLayerScoreNet forward (width 1000, 3e5 points)": (
        "net = dsm.TwoLayerScoreNet(1000, generator=torch.Generator().manual_seed(1))\n"
        "points = torch.randn(300_000, generator=g)", "net(points)"),
    "TimeScoreNet forward (width 1000, 3e5 points)": (
        "net = dsm.TimeScoreNet(1000, 1, generator=torch.Generator().manual_seed(1))\n"
        "points = torch.randn(300_000, generator=g)", "net(0.5, points)"),
    "min_gap in d = 2 (8000 points)": ("pts = torch.randn(8000, 2, generator=g)",
                                       "dsm.min_gap(pts)"),
}

DRIVER = r'''
import json, os, sys, torch
torch.set_num_threads(1)
import dsmlib as dsm
g = torch.Generator().manual_seed(0)
data = torch.randn(100_000, generator=g)
queries = torch.randn(300, generator=g)
cases, runs = json.loads(sys.argv[1]), int(sys.argv[2])

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024

results = {}
for name, (extra, call) in cases.items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: a fresh process for this case
        os.close(r)
        try:
            scope = dict(globals())
            exec(extra, scope)
            fn = eval("lambda: " + call, scope)
            base, peaks = status("VmRSS"), []
            with torch.no_grad():
                for _ in range(runs):
                    with open("/proc/self/clear_refs", "w") as fh:
                        fh.write("5")              # peak RSS := current RSS
                    out = fn()
                    peaks.append(status("VmHWM") - base)
                    del out
            msg = json.dumps(peaks)
        except BaseException as exc:
            msg = json.dumps(f"{type(exc).__name__}: {exc}")
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    results[name] = json.loads(b"".join(chunks).decode() or '"no result"')
print(json.dumps(results))
'''


def _can_measure() -> bool:
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def peaks():
    if not _can_measure():
        pytest.skip("needs Linux /proc/self/clear_refs and fork")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(CASES), str(RUNS)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_pairing_functions_stay_in_bounded_memory(peaks, name):
    result = peaks[name]
    assert isinstance(result, list), f"{name} failed in the child process: {result}"
    assert len(result) == RUNS
    assert max(result) < LIMIT_MIB, f"{name}: peak extra memory of each run {result} MiB"
