#!/usr/bin/env python3
r"""Paper-scale Fig. 3 and Fig. 4 (Appendix D) on one GPU, in resumable parts that fit a budget.

    python3 tools/paper_scale_gpu.py --budget-minutes 8 --export "$OUT"

What it does, in order:

1. checks the device (a CUDA GPU unless ``--device cpu``) and prints what it found;
2. splits the work into parts: Fig. 3 (both learning rates, one result file) and Fig. 4 one
   dimension at a time (each a file of its own under ``--work``; the dimensions are independent,
   so joining them with :func:`dsmlib.experiments.fig4_combine` gives exactly the one-run file);
3. estimates every part from a few timed training and sampling steps of its real shapes on this
   device, beside a roofline floor from its FLOP and byte counts, and prints the plan;
4. runs, in order, the parts that fit in ``--budget-minutes`` (a part whose file already exists is
   skipped: rerunning the same command continues where the last one stopped); refuses to start a
   part that alone exceeds the budget (exit 3) unless ``--force``;
5. writes ``results/fig3_paper.npz`` and, once every dimension is done, ``results/fig4_paper.npz``
   through :func:`dsmlib.experiments.run` / :func:`dsmlib.save_results`, i.e. exactly the files
   ``python -m dsmlib.experiments fig3 --scale paper --device cuda --out results`` writes;
6. with ``--export DIR`` copies the finished files, the unfinished Fig. 4 parts (one tar) and a
   JSON log of estimates and measured times to DIR (a device machine's ``$OUT``).

Every file is written atomically; Ctrl-C leaves no partial file. ``--steps-scale``, ``--scale
book`` and ``--dims`` make small runs for testing (their files get the tag ``reduced``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tarfile
import time
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dsmlib import experiments as ex  # noqa: E402
from dsmlib.experiments import diffusion as dif  # noqa: E402
from dsmlib.experiments.runner import _identity  # noqa: E402
from dsmlib.io import load_results, save_results  # noqa: E402
from dsmlib.sampling import optimal_score_fn, reverse_sde_sample  # noqa: E402
from dsmlib.timenet import TimeScoreNet  # noqa: E402
from dsmlib.timenet_training import train_time_score_net  # noqa: E402

# Roofline ceilings of one H200 (SXM): plain fp32 arithmetic (datasheet) and the device-to-device
# copy bandwidth measured on such a machine (KINDS.md of the device tool); ~2.5 us per kernel
# inside a CUDA graph. Used only for the printed floor, never to decide anything.
FP32_FLOPS, HBM_BYTES, KERNEL_S, KERNELS_PER_STEP = 67e12, 4.3e12, 2.5e-6, 40


def roofline_step_seconds(K: int, B: int, m: int, d: int, fused: bool = False) -> float:
    """Lower bound on one training step of K networks of width m on batches of B in dimension d.

    Torch path: FLOPs of the five matrix products of the forward and backward pass,
    2 K B m (2 (d + 2) + 3 d); bytes: about ten float32 passes over the (K, B, m) hidden
    activations (write, ReLU, read by two products, the masked backward product, its read).
    Fused kernel (d <= 14): the activations never leave registers and are computed twice,
    2 K B m (3 (d + 2) + 3 d) FLOPs (padded to powers of two), and the bytes are the per-block
    partial gradients. Plus a launch floor per kernel of the step."""
    if fused:
        dp, dop = 1 << (d + 1).bit_length(), max(2, 1 << max(0, (d - 1).bit_length()))
        flops = 2.0 * K * B * m * (3 * dp + 3 * dop)
        bytes_ = 2 * 4.0 * K * (-(-B // 32)) * (2 * d + 2) * m
    else:
        flops = 2.0 * K * B * m * (2 * (d + 2) + 3 * d)
        bytes_ = 10 * 4.0 * K * B * m
    return max(flops / FP32_FLOPS, bytes_ / HBM_BYTES) + KERNELS_PER_STEP * KERNEL_S


def _fused_used(d, device) -> bool:
    import dsmlib._fused_timenet as fz
    import dsmlib.timenet_training as tn
    return device.type == "cuda" and tn.USE_FUSED and fz.available() and d <= fz.MAX_DIM


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_training(K, width, dim, batch, lr, reduction, device, probe_blocks, data=None):
    """Seconds per training step of an ensemble of K, from two timed runs (warm-up, graph capture
    and the first eager block cancel in the difference)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = data if data is not None else 2 * torch.randn(10, dim, generator=g, device=device)
    S = 32 if device.type != "cpu" else 1
    times = []
    for blocks in (1 + probe_blocks // 3, 1 + probe_blocks):
        net = TimeScoreNet(width, dim, ensemble=K, generator=torch.Generator(device=device)
                           .manual_seed(1), device=device)
        _sync(device)
        t0 = time.perf_counter()
        train_time_score_net(net, x, lr=lr, steps=blocks * S, batch_size=batch,
                             reduction=reduction, generator=g, progress=False)
        _sync(device)
        times.append((time.perf_counter() - t0, blocks * S))
    (t1, s1), (t2, s2) = times
    return max((t2 - t1) / (s2 - s1), t2 / s2 * 0.5)


def _time_sampling(K, width, dim, num, device, probe=20):
    """Seconds per sampler step of a K-member net on num points, and of the s* sampler."""
    g = torch.Generator(device=device).manual_seed(0)
    net = TimeScoreNet(width, dim, ensemble=K, generator=g, device=device)
    data = 2 * torch.randn(10, dim, generator=g, device=device)
    out = []
    for fn, ens, gen in ((lambda x, t: net.score(x, t, check=False), K,
                          [torch.Generator(device=device).manual_seed(k) for k in range(K)]),
                         (optimal_score_fn(data), None, g)):
        reverse_sde_sample(fn, num, dim, steps=2, ensemble=ens, generator=gen, device=device)
        _sync(device)
        t0 = time.perf_counter()
        reverse_sde_sample(fn, num, dim, steps=probe, ensemble=ens, generator=gen, device=device)
        _sync(device)
        out.append((time.perf_counter() - t0) / probe)
    return out


def preflight(device) -> bool:
    """Check the training path on this device before spending minutes on it.

    1. Two steps of block draws against a float64 autograd reference computed from copies of
       the generators (the same draws, redone): the kernels compute what they should.
    2. On CUDA: a run replayed from a captured CUDA graph against the same run without graphs
       (the same kernels: equal up to rounding). If they differ or capture fails, graphs are
       switched off for the whole run (``dsmlib.timenet_training.USE_CUDA_GRAPHS``).
    Returns False when check 1 fails (the script then stops).
    """
    import dsmlib.timenet_training as tn
    K, m, d, n, B, S = 2, 64, 2, 10, 256, 2
    g0 = torch.Generator(device=device).manual_seed(7)
    data = 2 * torch.randn(n, d, generator=g0, device=device)
    gens = [torch.Generator(device=device).manual_seed(11 + k) for k in range(K)]
    copies = [torch.Generator(device=device).manual_seed(11 + k) for k in range(K)]
    net = TimeScoreNet(m, d, ensemble=K, device=device,
                       generator=[torch.Generator(device=device).manual_seed(k) for k in range(K)])
    start = [p.detach().double().clone() for p in (net.W1, net.b, net.W2)]
    train_time_score_net(net, data, lr=0.05, steps=S, batch_size=B, rng_block=S,
                         reduction="mean_all", generator=gens, progress=False, cuda_graph=False)
    times64, probs64 = tn.time_grid_weights()
    t = times64.to(device)
    idx_t = t.float()   # the trainer's tables are float32; the reference redoes the draws
    u, z = tn._draw_block(data, idx_t, torch.exp(-t).float(),
                          torch.sqrt(-torch.expm1(-2 * t)).float(),
                          torch.cumsum(probs64, 0).to(device), K, S, B, copies, torch.float32,
                          device)
    u, z = u.double(), z.double()
    params = start
    for s in range(S):
        W1, b, W2 = (p.clone().requires_grad_(True) for p in params)
        r = torch.relu(u[:, s] @ W1.transpose(1, 2) + b[:, None]) @ W2.transpose(1, 2) / m
        loss = ((r - z[:, s]) ** 2).mean(dim=(1, 2)).sum()
        grads = torch.autograd.grad(loss, (W1, b, W2))
        params = [p.detach() - m * 0.05 * gp for p, gp in zip((W1, b, W2), grads)]
    err = max(float((p.detach().double() - q).norm() / q.norm())
              for p, q in zip((net.W1, net.b, net.W2), params))
    ok = err < 1e-4
    print(f"preflight: 2 steps on {device} vs float64 autograd: relative error {err:.1e} "
          f"({'ok' if ok else 'FAILED'})", flush=True)
    if not ok or device.type != "cuda":
        return ok
    try:
        nets = []
        for graph in (True, False):
            nt = TimeScoreNet(m, d, ensemble=K, device=device, generator=[
                torch.Generator(device=device).manual_seed(k) for k in range(K)])
            train_time_score_net(nt, data, lr=0.05, steps=5 * 32, batch_size=B,
                                 reduction="mean_all", cuda_graph=graph, progress=False,
                                 generator=[torch.Generator(device=device).manual_seed(11 + k)
                                            for k in range(K)])
            nets.append(nt)
        diff = max(float((p - q).abs().max()) for p, q in zip(nets[0].parameters(),
                                                              nets[1].parameters()))
        same = diff <= 1e-5
    except Exception as exc:  # noqa: BLE001 - any failure of the graph path disables it
        diff, same = repr(exc), False
    tn.USE_CUDA_GRAPHS = same
    print(f"preflight: CUDA-graph replay vs plain run, largest difference {diff}: graphs "
          f"{'on' if same else 'OFF'}", flush=True)
    import dsmlib._fused_timenet as fz
    if not fz.available():
        tn.USE_FUSED = False
        print("preflight: Triton not importable: the fused small-d kernel is off", flush=True)
        return True
    try:   # the fused kernel on the Fig. 3 shapes against the torch path, in float64
        gk = torch.Generator(device=device).manual_seed(3)
        Kf, Bf, mf, df = 6, 5000, 1000, 2
        W1 = torch.randn(Kf, mf, df + 1, generator=gk, device=device) / 3 ** 0.5
        b = 0.1 * torch.randn(Kf, mf, generator=gk, device=device)
        W2 = torch.randn(Kf, df, mf, generator=gk, device=device)
        u = torch.randn(Kf, Bf, df + 1, generator=gk, device=device)
        z = torch.randn(Kf, Bf, df, generator=gk, device=device)
        got = fz.loss_and_grads(W1, b, W2, u, z, "mean_all")
        want = tn._loss_and_grads(*(t.double() for t in (W1, b, W2, u, z)), "mean_all", Bf)
        ferr = max(float((g.double() - w).norm() / w.norm()) for g, w in zip(got, want))
        _sync(device)
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            fz.loss_and_grads(W1, b, W2, u, z, "mean_all")
        _sync(device)
        t_fused = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            tn._loss_and_grads(W1, b, W2, u, z, "mean_all", Bf)
        _sync(device)
        t_torch = (time.perf_counter() - t0) / reps
        use = ferr < 1e-4
    except Exception as exc:  # noqa: BLE001 - the torch path is always there
        ferr, use, t_fused, t_torch = repr(exc), False, math.nan, math.nan
    tn.USE_FUSED = use
    print(f"preflight: fused kernel vs float64 on the Fig. 3 shapes: relative error {ferr}; "
          f"{t_fused * 1e3:.3f} ms vs {t_torch * 1e3:.3f} ms for the torch path: fused kernel "
          f"{'on' if use else 'OFF'}", flush=True)
    return True


def plan(args, device):
    """The parts: [(name, config, where, tag)], Fig. 3 first, then Fig. 4 one dimension each."""
    tag = _base_tag(args)
    parts = []
    if args.only in ("all", "fig3"):
        cfg = _with_settings(ex.make_config("fig3", args.scale, device=str(device)), args.set)
        if args.steps_scale != 1:
            cfg = replace(cfg, steps=tuple(max(1, round(s * args.steps_scale)) for s in cfg.steps))
        tag3 = tag
        if args.fig3_seeds:
            cfg = replace(cfg, seeds=tuple(range(args.fig3_seeds)))
            tag3 = f"s{args.fig3_seeds}" + (f"_{tag}" if tag else "")
        parts.append(("fig3", cfg, Path(args.out), tag3))
    if args.only in ("all", "fig4"):
        full = fig4_full_config(args, device)
        for d in full.dims:
            parts.append((f"fig4 d={d}", replace(full, dims=(d,)), Path(args.work),
                          f"d{d}" + (f"_{tag}" if tag else "")))
    return parts


def _base_tag(args):
    """File tag: 'reduced' for test-sized runs, 'tf32' when TF32 products were allowed."""
    tags = (["reduced"] if args.reduced else []) + (["tf32"] if args.tf32 else [])
    return "_".join(tags) or None


def _field_value(item):
    """'width=16' -> ('width', 16); values are Python literals (numbers, tuples, strings)."""
    import ast
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def _with_settings(cfg, settings):
    names = {f.name for f in fields(cfg)}
    return replace(cfg, **{k: v for k, v in settings.items() if k in names})


def fig4_full_config(args, device):
    cfg = _with_settings(ex.make_config("fig4", args.scale, device=str(device)), args.set)
    if args.dims:
        cfg = replace(cfg, dims=tuple(args.dims))
    if args.steps_scale != 1:
        cfg = replace(cfg, steps=max(1, round(cfg.steps * args.steps_scale)))
    return cfg


def estimate(name, cfg, device, probe_blocks):
    """(measured estimate, roofline floor) in seconds for one part."""
    if name == "fig3":
        train = floor = 0.0
        for group in dif._lr_groups(cfg):
            K, steps = len(cfg.seeds) * len(group), cfg.steps[group[0]]
            B = cfg.batch_for(group[0])
            per = _time_training(K, cfg.width, cfg.dim, B, 0.01, cfg.reduction, device,
                                 probe_blocks)
            train += per * steps
            floor += roofline_step_seconds(K, B, cfg.width, cfg.dim, _fused_used(cfg.dim,
                                                                                   device)) * steps
        net_s, star_s = _time_sampling(len(cfg.seeds), cfg.width, cfg.dim, cfg.num_samples,
                                       device)
        sample = cfg.sampler_steps * (net_s * len(cfg.lrs) + 2 * star_s)
    else:
        d, K = cfg.dims[0], len(cfg.seeds)
        per = _time_training(K, cfg.width, d, cfg.batch_size, 0.01, cfg.reduction, device,
                             probe_blocks)
        train = per * cfg.steps
        floor = roofline_step_seconds(K, cfg.batch_size, cfg.width, d,
                                      _fused_used(d, device)) * cfg.steps
        N = cfg.sample_sets * cfg.num_samples
        net_s, star_s = _time_sampling(K, cfg.width, d, N, device)
        sample = cfg.sampler_steps * (net_s + K * star_s)
    return 1.1 * (train + sample) + 2.0, floor


def _part_path(name, cfg, where, tag):
    return ex.result_path(name.split()[0], cfg, where, tag)


def fig4_final_path(args, device):
    return ex.result_path("fig4", fig4_full_config(args, device), args.out, _base_tag(args))


def combine_fig4(args, device, log):
    """Join the per-dimension parts into the one Fig. 4 file, if every part is there (the path of
    the file, also when it was made before; None while parts are missing)."""
    full = fig4_full_config(args, device)
    tag = _base_tag(args)
    if fig4_final_path(args, device).exists():
        log["fig4_combined"] = str(fig4_final_path(args, device))
        return fig4_final_path(args, device)
    paths = [ex.result_path("fig4", replace(full, dims=(d,)), args.work,
                            f"d{d}" + (f"_{tag}" if tag else "")) for d in full.dims]
    if not all(p.exists() for p in paths):
        return None
    parts, metas = zip(*(load_results(p, expected_config=_identity(replace(full, dims=(d,))))
                         for p, d in zip(paths, full.dims)))
    arrays = ex.fig4_combine(parts)
    extra = dict(metas[-1]["extra"])
    extra.update({
        "seeds": list(full.seeds),
        "wall_seconds": sum(m["extra"]["wall_seconds"] for m in metas),
        "cpu_seconds": sum(m["extra"]["cpu_seconds"] for m in metas),
        "parts": {str(d): m["extra"]["wall_seconds"] for d, m in zip(full.dims, metas)},
        "made_by": "tools/paper_scale_gpu.py (one part per dimension, joined by fig4_combine)",
    })
    path = ex.result_path("fig4", full, args.out, tag)
    save_results(path, arrays, _identity(full), extra=extra, overwrite=True)
    log["fig4_combined"] = str(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    p.add_argument("--work", default=str(ROOT / "build" / "paper_scale"),
                   help="folder of the resumable Fig. 4 parts (git-ignored)")
    p.add_argument("--export", default=None, help="copy finished files and a log here ($OUT)")
    p.add_argument("--budget-minutes", type=float, default=8.0,
                   help="run only the parts whose estimates fit in this many minutes (default 8)")
    p.add_argument("--only", choices=("all", "fig3", "fig4"), default="all")
    p.add_argument("--estimate-only", action="store_true", help="print the plan, run nothing")
    p.add_argument("--force", action="store_true",
                   help="start a part even if its estimate alone exceeds the budget")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 matrix products (faster for large d, ~1e-3 relative "
                        "rounding; the files get the tag tf32). Default: float32, as on a CPU")
    p.add_argument("--fig3-seeds", type=int, default=None, metavar="N",
                   help="train Fig. 3 with seeds 0..N-1 instead of the preset's six (the paper "
                        "shows one run; fewer networks make the million small-eta steps cheaper); "
                        "the file gets the tag sN, as with python -m dsmlib.experiments --seeds N")
    p.add_argument("--scale", choices=("paper", "book"), default="paper",
                   help="testing: 'book' runs the book presets through the same path")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="testing: multiply the training steps (files get the tag 'reduced')")
    p.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="testing: Fig. 4 dimensions, e.g. 2,10 (files get the tag 'reduced')")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="testing: replace a configuration field of both figures where it exists, "
                        "e.g. --set width=16 (files get the tag 'reduced')")
    p.add_argument("--probe-blocks", type=int, default=6,
                   help="timed blocks of 32 steps per part for the estimate (default 6)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    if not (args.steps_scale > 0 and args.budget_minutes > 0 and args.probe_blocks >= 3):
        p.error("--steps-scale and --budget-minutes must be > 0, --probe-blocks >= 3")
    if args.fig3_seeds is not None and args.fig3_seeds < 1:
        p.error("--fig3-seeds must be >= 1")
    try:
        args.set = dict(_field_value(item) for item in args.set)
    except ValueError as exc:
        p.error(str(exc))
    known = {f.name for c in (ex.Fig3Config, ex.Fig4Config) for f in fields(c)}
    if set(args.set) - known:
        p.error(f"--set: unknown configuration field(s) {sorted(set(args.set) - known)}")
    args.reduced = (args.steps_scale != 1 or args.dims is not None or args.scale != "paper"
                    or bool(args.set))
    torch.set_num_threads(args.threads)

    # 1. the device
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        print(f"error: bad --device {args.device!r}: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(f"error: --device {args.device}: this torch ({torch.__version__}) sees no CUDA "
                  f"GPU; run on a GPU machine or pass --device cpu", file=sys.stderr)
            return 2
        props = torch.cuda.get_device_properties(device)
        torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
              f"{props.multi_processor_count} SMs; torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}; float32 matmul precision "
              f"{torch.get_float32_matmul_precision()!r}", flush=True)
    else:
        print(f"device: {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
              flush=True)
    start = time.perf_counter()
    budget = 60.0 * args.budget_minutes
    if not preflight(device):
        print("error: the training path gives wrong numbers on this device; nothing was run",
              file=sys.stderr)
        return 5
    log = {"device": str(device), "torch": torch.__version__, "tf32": bool(args.tf32),
           "budget_s": budget, "parts": []}

    # 2-3. the plan and its estimate
    parts = plan(args, device)
    rows = []
    fig4_done = fig4_final_path(args, device).exists()
    for name, cfg, where, tag in parts:
        if _part_path(name, cfg, where, tag).exists() or (name.startswith("fig4") and fig4_done):
            rows.append((name, cfg, where, tag, 0.0, 0.0, True))
            continue
        est, floor = estimate(name, cfg, device, args.probe_blocks)
        rows.append((name, cfg, where, tag, est, floor, False))
        print(f"  estimate {name:>12}: {est / 60:6.2f} min (roofline floor on an H200 "
              f"{floor / 60:.2f} min)", flush=True)
    todo = [r for r in rows if not r[6]]
    total = sum(r[4] for r in todo)
    probe_s = time.perf_counter() - start
    print(f"plan: {len(todo)} of {len(rows)} parts to run, estimated {total / 60:.1f} min "
          f"(estimating took {probe_s:.0f} s); budget {args.budget_minutes:g} min", flush=True)
    log["estimates_s"] = {r[0]: r[4] for r in todo}
    if args.estimate_only:
        _export(args, log, start)
        return 0

    # 4-5. run what fits
    status, planned = 0, probe_s
    for name, cfg, where, tag, est, _, done in rows:
        if done:
            print(f"  {name}: already done ({_part_path(name, cfg, where, tag)})", flush=True)
            continue
        # time used: what has elapsed, or what the estimates said, whichever is more
        left = budget - max(time.perf_counter() - start, planned)
        if est > budget and not args.force:
            print(f"refused: {name} alone is estimated at {est / 60:.1f} min, more than the "
                  f"budget of {args.budget_minutes:g} min; raise --budget-minutes (one device "
                  f"command may run 10 min), pass --tf32, or --force", file=sys.stderr)
            status = 3
            break
        if est > left:
            print(f"stopping: {name} ({est / 60:.1f} min) does not fit in the "
                  f"{left / 60:.1f} min left; run the same command again to continue",
                  flush=True)
            status = 4
            break
        planned += est
        t0 = time.perf_counter()
        figure = name.split()[0]
        preset = ex.make_config(figure, cfg.scale)
        overrides = {f.name: getattr(cfg, f.name) for f in fields(cfg)
                     if f.name != "scale" and getattr(cfg, f.name) != getattr(preset, f.name)}
        _, _, path = ex.run(figure, cfg.scale, where, tag=tag, progress=False, **overrides)
        took = time.perf_counter() - t0
        log["parts"].append({"part": name, "estimate_s": est, "seconds": took, "file": str(path)})
        print(f"  done {name}: {took / 60:.2f} min (estimated {est / 60:.2f}) -> {path}",
              flush=True)
        _export(args, log, start, [path] if figure == "fig3" else ())  # a kill loses nothing
    finished = [_part_path(*r[:4]) for r in rows if r[0] == "fig3"]
    if args.only in ("all", "fig4"):
        path = combine_fig4(args, device, log)
        if path is not None:
            print(f"  fig4 complete -> {path}", flush=True)
            finished.append(path)
    _export(args, log, start, finished)
    print(f"total {(time.perf_counter() - start) / 60:.2f} min", flush=True)
    return status


def _export(args, log, start, finished=()):
    log["total_s"] = time.perf_counter() - start
    if args.export is None:
        return
    dest = Path(args.export)
    dest.mkdir(parents=True, exist_ok=True)
    for path in finished:
        if Path(path).exists():
            shutil.copy2(path, dest / Path(path).name)
    work = Path(args.work)
    parts = sorted(work.glob("fig4_*.npz")) if work.exists() else []
    archive = dest / "paper_scale_parts.tar"
    if parts and "fig4_combined" not in log:
        with tarfile.open(archive.with_suffix(".tmp"), "w") as tar:
            for f in parts:
                tar.add(f, arcname=f.name)
        archive.with_suffix(".tmp").replace(archive)
    elif archive.exists():   # Fig. 4 is whole: the parts are no longer needed
        archive.unlink()
    (dest / "paper_scale_log.json").write_text(json.dumps(log, indent=1, default=str))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: finished parts are kept, nothing partial was written",
              file=sys.stderr)
        sys.exit(130)
