"""Speed of dsmlib.train_sgd against one-network loops (PyTorch, JAX) and a JAX ensemble.

Fig. 1 configuration of the paper: n = 20 points from N(0, I_d), width m = 1000, batch 50,
t = 0.05 (mu = exp(-t), sigma = sqrt(1 - exp(-2t))), lr = 0.1 (SGD step m * lr), float32.

    python benchmarks/bench_training.py [--members 30 480] [--repeats 3] [--seconds 1.0]
                                        [--threads N] [--loop-threads 1] [--dims 1] [--no-jax]
                                        [--torch-path-all] [--steps S --plain-steps P]

Contenders, all in this one process and interleaved (repeat r runs every contender once, then
repeat r + 1; the table shows medians over the repeats). Each is warmed up (compiled) and its
work per timing calibrated to about ``--seconds`` (long enough that a contender's share of a
shared CPU evens out), so the run takes about the same time on a busy machine as on an idle one
(under two minutes by default):

* torch loop: one network, autograd, torch.optim.SGD(lr = m * lr), a Python loop over steps
  (on one thread by default, see ``--loop-threads``);
* JAX loop: one network, the authors' style: a jitted step (jax.grad of the mini-batch loss, SGD
  update), a Python loop over steps splitting the PRNG key;
* JAX ensemble: the same step vmapped over K networks, lax.scan over 64 steps per jitted call
  (16 for K > 64);
* train_sgd: dsmlib's trainer on an ensemble of K (compiled 1-D kernel where numba is installed),
  and its pure-torch path (``DSMLIB_NO_NUMBA=1``) for comparison, d = 1 only, for the first K
  (``--torch-path-all``: every K).

Unit: network-steps per second of wall time (one network-step = one SGD step of one network),
and in brackets per CPU-second of this process (all its threads: the cost per core, steadier
when other processes share the cores). The machine's load average is printed before and after:
the ratios are measured in one run and are the numbers to quote; the absolute numbers fall when
other processes share the cores, and multi-threaded contenders gain little then.

JAX is a benchmark-only dependency: ``pip install jax==0.10.2 jaxlib==0.10.2`` (CPU); without it
the JAX rows are skipped with a message. XLA uses all cores; train_sgd uses
``torch.get_num_threads()`` threads (``--threads``).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time

import torch

import dsmlib as dsm
from dsmlib.networks import TwoLayerScoreNet, make_generators
from dsmlib.training import train_sgd

WIDTH, N_DATA, BATCH, T, LR = 1000, 20, 50, 0.05, 0.1


def _load():
    try:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:                         # pragma: no cover - platforms without getloadavg
        return "load average unknown"


# --------------------------------------------------------------------------------- contenders
def torch_loop(data, mu, sigma, steps, seed=1):
    """The textbook loop: autograd on the mini-batch mean loss, torch.optim.SGD."""
    g = torch.Generator().manual_seed(seed)
    n, d = data.shape
    W1 = (torch.randn(WIDTH, d, generator=g) / math.sqrt(d)).requires_grad_()
    b = torch.zeros(WIDTH, requires_grad=True)
    W2 = torch.randn(d, WIDTH, generator=g).requires_grad_()
    opt = torch.optim.SGD([W1, b, W2], lr=WIDTH * LR)
    for _ in range(steps):
        idx = torch.randint(0, n, (BATCH,), generator=g)
        z = torch.randn(BATCH, d, generator=g)
        y = mu * data[idx] + sigma * z
        s = torch.relu(y @ W1.T + b) @ W2.T / WIDTH
        loss = ((s + z / sigma) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps


class Jax:
    """The two JAX contenders (float32, CPU), built once per data set."""

    SCAN = 64

    def __init__(self, data, mu, sigma):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        x = jnp.asarray(data.numpy())
        n, d = data.shape
        self.d = d

        def loss(params, xb, z):
            W1, b, W2 = params
            y = mu * xb + sigma * z
            s = jax.nn.relu(y @ W1.T + b) @ W2.T / WIDTH
            return jnp.mean(jnp.sum((s + z / sigma) ** 2, axis=1))

        def step(params, key):
            k_idx, k_z = jax.random.split(key)
            idx = jax.random.randint(k_idx, (BATCH,), 0, n)
            z = jax.random.normal(k_z, (BATCH, d))
            grads = jax.grad(loss)(params, x[idx], z)
            return jax.tree_util.tree_map(lambda p, g: p - WIDTH * LR * g, params, grads)

        def scan_block(params, keys, length):
            def body(carry, _):
                p, k = carry
                both = jax.vmap(jax.random.split)(k)          # (K, 2, 2)
                return (jax.vmap(step)(p, both[:, 1]), both[:, 0]), None
            (params, keys), _ = jax.lax.scan(body, (params, keys), None, length=length)
            return params, keys

        self.step = jax.jit(step)
        self.scan_block = jax.jit(scan_block, static_argnums=2)

    def params(self, K=None, seed=0):
        jax, jnp = self.jax, self.jnp
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        lead = () if K is None else (K,)
        W1 = jax.random.normal(k1, lead + (WIDTH, self.d)) / math.sqrt(self.d)
        W2 = jax.random.normal(k2, lead + (self.d, WIDTH))
        return (W1, jnp.zeros(lead + (WIDTH,)), W2)

    def loop(self, steps, seed=1):
        jax = self.jax
        params, key = self.params(seed=seed), jax.random.PRNGKey(seed)
        for _ in range(steps):
            key, sub = jax.random.split(key)
            params = self.step(params, sub)
        jax.block_until_ready(params)
        return steps

    def scan_length(self, K):
        return self.SCAN if K <= 64 else self.SCAN // 4

    def ensemble(self, K, blocks, seed=2):
        jax = self.jax
        length = self.scan_length(K)
        params = self.params(K, seed)
        keys = jax.random.split(jax.random.PRNGKey(seed), K)
        for _ in range(blocks):
            params, keys = self.scan_block(params, keys, length)
        jax.block_until_ready(params)
        return K * blocks * length


def dsm_train(data, mu, sigma, K, steps, torch_path=False, seed=3):
    xd = data[:, 0] if data.shape[1] == 1 else data
    net = TwoLayerScoreNet(WIDTH, data.shape[1], ensemble=K,
                           generator=make_generators(range(seed, seed + K)))
    old = os.environ.get("DSMLIB_NO_NUMBA")
    if torch_path:
        os.environ["DSMLIB_NO_NUMBA"] = "1"
    try:
        res = train_sgd(net, xd, mu, sigma, lr=LR, steps=steps, batch_size=BATCH,
                        generator=make_generators(range(seed + 1000, seed + 1000 + K)),
                        progress=False)
    finally:
        if old is None:
            os.environ.pop("DSMLIB_NO_NUMBA", None)
        else:
            os.environ["DSMLIB_NO_NUMBA"] = old
    if bool(res.diverged.any()):
        raise RuntimeError("a member diverged in the benchmark configuration")
    return K * steps


# --------------------------------------------------------------------------------- harness
class Contender:
    """A timed workload: ``run(units)`` does ``units`` units of work and returns the number of
    network-steps done; ``threads``: torch threads while it runs (None: leave as set)."""

    def __init__(self, label, K, run, threads=None):
        self.label, self.K, self.run, self.threads = label, K, run, threads
        self.units, self.fixed = 1, False

    def __call__(self):
        old = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            work = self.run(self.units)
            return work, time.perf_counter() - t0, time.process_time() - c0
        finally:
            torch.set_num_threads(old)

    def calibrate(self, seconds):
        """Warm up (compile, allocate), then choose the work of one timing: about ``seconds``."""
        self()
        if self.fixed:                          # fixed work per timing (--steps, --plain-steps)
            return
        _, dt, _ = self()
        self.units = max(1, int(seconds / max(dt, 1e-6)))


def contenders(d, members, jax_ok, loop_threads, torch_path_all=False, steps=None,
               plain_steps=None):
    """The contenders for dimension d (see the module docstring). ``steps`` / ``plain_steps``:
    fixed work per timing (train_sgd and the JAX ensemble / the one-network loops) instead of
    the calibrated work."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(N_DATA, d, generator=g)
    mu, sigma = dsm.ou_mu(T), dsm.ou_sigma(T)
    loop_unit = 50 if plain_steps is None else plain_steps
    fixed = steps is not None or plain_steps is not None
    out = [Contender("torch loop (1 net, autograd)", None,
                     lambda u: torch_loop(data, mu, sigma, loop_unit * u), threads=loop_threads)]
    jx = Jax(data, mu, sigma) if jax_ok else None
    if jx is not None:
        jax_unit = 100 if plain_steps is None else plain_steps
        out.append(Contender("JAX loop (1 net, jit step)", None,
                             lambda u: jx.loop(jax_unit * u)))
    sgd_unit = 256 if steps is None else steps
    for K in members:
        if jx is not None:
            blocks = 1 if steps is None else max(1, round(steps / jx.scan_length(K)))
            out.append(Contender("JAX ensemble (vmap + scan)", K, functools.partial(
                lambda K, b, u: jx.ensemble(K, b * u), K, blocks)))
        out.append(Contender("train_sgd", K, functools.partial(
            lambda K, u: dsm_train(data, mu, sigma, K, sgd_unit * u), K)))
        if d == 1 and (torch_path_all or K == members[0]):
            out.append(Contender("train_sgd, torch path", K, functools.partial(
                lambda K, u: dsm_train(data, mu, sigma, K, sgd_unit * u, torch_path=True), K)))
    for c in out:
        c.fixed = fixed
    return out


def measure(entries, repeats, seconds):
    """Median network-steps per second of wall time and per CPU-second of this process (all its
    threads) of each entry, entries interleaved within each repeat."""
    for c in entries:
        c.calibrate(seconds)
    wall, cpu = [[] for _ in entries], [[] for _ in entries]
    for _ in range(repeats):
        for j, c in enumerate(entries):
            work, dt, dc = c()
            wall[j].append(work / dt)
            cpu[j].append(work / max(dc, 1e-9))
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def report(d, entries, rates):
    print(f"\nd = {d}: network-steps per second, median [per CPU-second of the process]; "
          f"cores used = CPU time / wall time")
    width = max(len(c.label) for c in entries) + 8
    base = {}
    for c, (rate, crate) in zip(entries, rates):
        name = c.label if c.K is None else f"{c.label}, K = {c.K}"
        print(f"  {name:<{width}} {rate:>10,.0f}  [{crate:>10,.0f}]  cores {rate / crate:.2f}")
        base[(c.label, c.K)] = (rate, crate)

    def ratio(a, b):
        return f"{a[0] / b[0]:.1f}x [{a[1] / b[1]:.1f}x]"

    loop = base.get(("JAX loop (1 net, jit step)", None))
    tloop = base[("torch loop (1 net, autograd)", None)]
    print("  ratios of wall-time rates [of CPU-time rates]:")
    for (label, K), rate in base.items():
        if label != "train_sgd":
            continue
        parts = [f"torch loop {ratio(rate, tloop)}"]
        if loop is not None:                   # the targets of issue 11 are for d = 1
            parts.append(f"JAX loop {ratio(rate, loop)}" + (" (target >= 20x)" if d == 1 else ""))
            parts.append(f"JAX ensemble {ratio(rate, base[('JAX ensemble (vmap + scan)', K)])}"
                         + (" (target >= 5x)" if d == 1 else ""))
        fallback = base.get(("train_sgd, torch path", K))
        if fallback is not None:
            parts.append(f"its torch path {ratio(rate, fallback)}")
        print(f"  train_sgd, K = {K} vs " + ", ".join(parts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[30, 480],
                    help="ensemble sizes K (default 30 480)")
    ap.add_argument("--dims", type=int, nargs="+", default=[1],
                    help="data dimensions (default 1; d > 1 uses the batched-matmul step)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="about how long one timing of one contender runs (default 1.0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for this run (train_sgd's thread count)")
    ap.add_argument("--loop-threads", type=int, default=1,
                    help="torch threads of the one-network torch loop (default 1: its operations "
                         "are too small to gain from threads, and stall on a busy machine)")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX contenders")
    ap.add_argument("--steps", type=int, default=None,
                    help="fixed steps per timing of train_sgd and the JAX ensemble (default: "
                         "calibrated to --seconds); with --plain-steps, a quick check")
    ap.add_argument("--plain-steps", type=int, default=None,
                    help="fixed steps per timing of the one-network loops")
    ap.add_argument("--torch-path-all", action="store_true",
                    help="time train_sgd's pure-torch path for every K (default: the first only)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    jax_ok, jax_version = not args.no_jax, "JAX skipped"
    if jax_ok:
        try:
            import jax
            jax.config.update("jax_platforms", "cpu")
            jax_version = f"jax {jax.__version__}"
        except ImportError:
            jax_ok, jax_version = False, "JAX not installed"
            print("JAX is not installed: the JAX rows are skipped "
                  "(pip install jax==0.10.2 jaxlib==0.10.2 to include them)")
    from dsmlib import _steps
    kernel = "compiled 1-D kernel (numba)" if _steps.kernel_available() else "pure-torch step"
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{jax_version}, {os.cpu_count()} CPUs; "
          f"train_sgd in 1-D: {kernel}")
    print(f"m = {WIDTH}, batch {BATCH}, n = {N_DATA}, t = {T}, lr = {LR}, float32; "
          f"{args.repeats} interleaved repeats")
    print("before:", _load())
    t0 = time.perf_counter()
    for d in args.dims:
        entries = contenders(d, args.members, jax_ok, args.loop_threads, args.torch_path_all,
                             args.steps, args.plain_steps)
        report(d, entries, measure(entries, args.repeats, args.seconds))
    print(f"\nafter: {_load()}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
