"""Speed of dsmlib.train_sgd against a plain one-network-at-a-time PyTorch loop.

Fig. 1 configuration of the paper: n = 20 points from N(0, I_d), width m = 1000, batch 50,
t = 0.05 (mu = exp(-t), sigma = sqrt(1 - exp(-2t))), lr = 0.1 (SGD step m * lr), d = 1 and d = 10.

    python benchmarks/bench_training.py [--device cpu] [--steps 2000] [--members 30] [--threads 1]

Prints network-steps per second (one network-step = one SGD step of one network) of
(a) a plain loop: one network, autograd, torch.optim.SGD(lr = m * lr), timed over a few hundred
steps, and (b) train_sgd on an ensemble of `--members` networks, and the ratio (b) / (a).
Timings: wall clock and CPU time of this process (the second is steadier on a shared machine;
with several threads it counts all of them). Rerun to see the spread.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import dsmlib as dsm
from dsmlib.networks import TwoLayerScoreNet, make_generators
from dsmlib.training import train_sgd


def plain_loop(data, mu, sigma, *, width, lr, steps, batch_size, seed, device):
    """The textbook loop: autograd on the mini-batch mean loss, torch.optim.SGD."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, d = data.shape
    W1 = (torch.randn(width, d, generator=g) / math.sqrt(d)).to(device).requires_grad_()
    b = torch.zeros(width, device=device, requires_grad=True)
    W2 = torch.randn(d, width, generator=g).to(device).requires_grad_()
    opt = torch.optim.SGD([W1, b, W2], lr=width * lr)
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g).to(device)
        z = torch.randn(batch_size, d, generator=g).to(device)
        y = mu * data[idx] + sigma * z
        s = torch.relu(y @ W1.T + b) @ W2.T / width
        loss = ((s + z / sigma) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn):
    """(wall seconds, CPU seconds of this process) spent in fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def bench(d, *, device, steps, plain_steps, members, width=1000, n=20, batch_size=50, t=0.05,
          lr=0.1):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(n, d, generator=g).to(device)
    mu, sigma = dsm.ou_mu(t), dsm.ou_sigma(t)
    # warm-up both (allocator, thread pool), then time
    plain_loop(data, mu, sigma, width=width, lr=lr, steps=20, batch_size=batch_size, seed=1,
               device=device)
    w_plain, c_plain, _ = _timed(lambda: plain_loop(data, mu, sigma, width=width, lr=lr,
                                                    steps=plain_steps, batch_size=batch_size,
                                                    seed=1, device=device))
    xd = data[:, 0] if d == 1 else data
    warm = TwoLayerScoreNet(width, d, ensemble=members, generator=make_generators(range(members)),
                            device=device)
    train_sgd(warm, xd, mu, sigma, lr=lr, steps=_small(steps), batch_size=batch_size,
              generator=make_generators(range(members)), progress=False)
    net = TwoLayerScoreNet(width, d, ensemble=members, generator=make_generators(range(members)),
                           device=device)
    w_fast, c_fast, res = _timed(lambda: train_sgd(
        net, xd, mu, sigma, lr=lr, steps=steps, batch_size=batch_size,
        generator=make_generators(range(100, 100 + members)), progress=False))
    final = res.loss_history[-1]
    r = dict(d=d, plain=plain_steps / w_plain, fast=steps * members / w_fast,
             plain_cpu=plain_steps / c_plain, fast_cpu=steps * members / c_fast,
             diverged=int(res.diverged.sum()), loss=float(final[torch.isfinite(final)].mean()))
    r["ratio"], r["ratio_cpu"] = r["fast"] / r["plain"], r["fast_cpu"] / r["plain_cpu"]
    return r


def _small(steps):
    return min(steps, 256)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2000, help="train_sgd steps per member")
    ap.add_argument("--plain-steps", type=int, default=300, help="steps of the plain loop")
    ap.add_argument("--members", type=int, default=30)
    ap.add_argument("--dims", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for this run (default: torch's choice); on a "
                         "shared machine 1 thread gives steadier numbers")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"ensemble {args.members}, m = 1000, batch 50, n = 20, t = 0.05, lr = 0.1")
    print("network-steps per second of wall time [per CPU-second of this process in brackets]")
    print(f"{'d':>3} | {'plain loop':>20} | {'train_sgd':>22} | {'ratio':>13} | "
          f"{'final loss':>10} | diverged")
    for d in args.dims:
        r = bench(d, device=device, steps=args.steps, plain_steps=args.plain_steps,
                  members=args.members)
        print(f"{r['d']:>3} | {r['plain']:>8,.0f} [{r['plain_cpu']:>8,.0f}] | "
              f"{r['fast']:>9,.0f} [{r['fast_cpu']:>9,.0f}] | "
              f"{r['ratio']:>5.1f} [{r['ratio_cpu']:>5.1f}] | {r['loss']:>10.3f} | {r['diverged']}")


if __name__ == "__main__":
    main()
