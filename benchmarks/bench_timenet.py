"""Speed of dsmlib.train_time_score_net against a plain one-network PyTorch loop (Fig. 3 setting).

Fig. 3 configuration of the paper (Appendix D): d = 2, n = 10 points from N(0, 2^2 I), the
time-conditioned net r(t, x) of width m = 1000, batch 5000, 100 times on [0.01, 1] drawn with
probability proportional to sigma(t), the loss averaged over batch and coordinates
(reduction="mean_all"), eta = 0.05 (SGD step m * eta).

    python benchmarks/bench_timenet.py [--device cpu|cuda] [--steps 20] [--members 6]

Prints network-steps per second (one network-step = one SGD step of one network) of
(a) a plain loop: one network, autograd, torch.nn.MSELoss, torch.optim.SGD(lr = m * eta);
(b) train_time_score_net on one network; (c) on an ensemble of --members networks (Fig. 3 trains
six seeds as one ensemble); on a GPU also (d) the same without CUDA graphs; and the ratios to
(a), all measured in this one run. Wall clock and CPU time of this process are both given (the
second is steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import dsmlib as dsm
from dsmlib.timenet import TimeScoreNet
from dsmlib.timenet_training import time_grid_weights, train_time_score_net

CFG = dict(dim=2, n=10, width=1000, batch=5000, lr=0.05)


def plain_loop(data, *, steps, seed, device, width, batch, lr):
    """The textbook loop: autograd through r(t, x), MSELoss (mean over batch and coordinates),
    torch.optim.SGD, times drawn with torch.multinomial."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, d = data.shape
    W1 = (torch.randn(width, d + 1, generator=g) / math.sqrt(d + 1)).to(device).requires_grad_()
    b = torch.zeros(width, device=device, requires_grad=True)
    W2 = torch.randn(d, width, generator=g).to(device).requires_grad_()
    times, probs = time_grid_weights()
    times = times.float().to(device)
    mu, sig = dsm.ou_mu(times), dsm.ou_sigma(times)
    opt = torch.optim.SGD([W1, b, W2], lr=width * lr)
    mse = torch.nn.MSELoss()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g).to(device)
        ti = torch.multinomial(probs, batch, replacement=True, generator=g).to(device)
        z = torch.randn(batch, d, generator=g).to(device)
        xt = mu[ti, None] * data[idx] + sig[ti, None] * z
        u = torch.cat([times[ti, None], xt], dim=1)
        r = torch.relu(u @ W1.T + b) @ W2.T / width
        loss = mse(r, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def trainer(data, *, members, steps, device, cuda_graph=None, **kw):
    net = TimeScoreNet(CFG["width"], CFG["dim"], ensemble=members, device=device,
                       generator=[torch.Generator(device=device).manual_seed(k)
                                  for k in range(members)] if members else
                       torch.Generator(device=device).manual_seed(0))
    gens = ([torch.Generator(device=device).manual_seed(100 + k) for k in range(members)]
            if members else torch.Generator(device=device).manual_seed(100))
    train_time_score_net(net, data, lr=CFG["lr"], steps=steps, batch_size=CFG["batch"],
                         reduction="mean_all", generator=gens, progress=False,
                         cuda_graph=cuda_graph, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each variant")
    p.add_argument("--members", type=int, default=6, help="ensemble size of (c) (Fig. 3: 6)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = 2 * torch.randn(CFG["n"], CFG["dim"], generator=torch.Generator().manual_seed(0))
    data = data.to(device)
    kw = dict(width=CFG["width"], batch=CFG["batch"], lr=CFG["lr"])
    # warm-up (allocator, thread pool, CUDA context and graphs), then time
    plain_loop(data, steps=3, seed=1, device=device, **kw)
    trainer(data, members=args.members, steps=max(3, min(args.steps, 70)), device=device)
    rows = []
    w, c = _timed(lambda: plain_loop(data, steps=args.steps, seed=1, device=device, **kw))
    rows.append(("plain loop, 1 network", args.steps / w, args.steps / c))
    w, c = _timed(lambda: trainer(data, members=None, steps=args.steps, device=device))
    rows.append(("train_time_score_net, 1 network", args.steps / w, args.steps / c))
    K = args.members
    w, c = _timed(lambda: trainer(data, members=K, steps=args.steps, device=device))
    rows.append((f"train_time_score_net, ensemble of {K}", K * args.steps / w,
                 K * args.steps / c))
    if device.type == "cuda":
        w, c = _timed(lambda: trainer(data, members=K, steps=args.steps, device=device,
                                      cuda_graph=False))
        rows.append((f"  same, no CUDA graph", K * args.steps / w, K * args.steps / c))
    print(f"Fig. 3 configuration: d = {CFG['dim']}, m = {CFG['width']}, batch {CFG['batch']}, "
          f"eta = {CFG['lr']}, reduction mean_all; device {device}, "
          f"{torch.get_num_threads()} thread(s), {args.steps} steps each")
    base_w, base_c = rows[0][1], rows[0][2]
    print(f"{'variant':<40} {'net-steps/s':>12} {'ratio':>7} {'(CPU time:':>11} {'ratio)':>7}")
    for name, fw, fc in rows:
        print(f"{name:<40} {fw:12.2f} {fw / base_w:6.2f}x {fc:11.2f} {fc / base_c:6.2f}x")
    if device.type == "cuda":
        per = 1.0 / rows[2][1] * K
        print(f"ensemble step: {per * 1e3:.3f} ms -> 1e6 steps (Fig. 3, eta = 0.05): "
              f"{per * 1e6 / 60:.1f} min")


if __name__ == "__main__":
    main()
