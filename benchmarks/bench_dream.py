"""Fused dream versus a per-step NumPy loop, against the machine's matmul roofline.

Measures, in one run, at the paper's sizes (Z 32, LSTM 256, 5 mixtures, linear controller; or C with one hidden
layer of U tanh units with ``--controller-units U``):

* dream-steps/s of one fused CMA-ES generation (P x R x T in one jitted call), compile time apart;
* the same dream stepped one example at a time in NumPy (batch 1, how the original workers
  stepped), one loop per core in separate processes;
* float32 matmul GFLOP/s of this machine (JAX, 2048 x 2048);
* FLOPs per dream step from the shapes, the fused dream's achieved GFLOP/s, its fraction of the
  matmul roofline and its speed-up over the loop.

    uv run python benchmarks/bench_dream.py [--small] [--controller-units U] [--json PATH]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Args:
    population: int = 64
    """Candidates P per generation."""
    rollouts: int = 16
    """Dreams R per candidate."""
    steps: int = 1000
    """Dream length T."""
    loop_rollouts_per_core: int = 4
    """Dreams each NumPy loop process runs (throughput is measured on these)."""
    repeats: int = 3
    """Timed repetitions of the fused generation (the best is reported)."""
    controller_units: int = 0
    """Hidden tanh units of C (0: the paper's linear controller); the NumPy loop steps the same C."""
    small: bool = False
    """A run of under a minute: P 16, R 4, T 200, one loop dream per core."""
    json: Path | None = None
    """Also write the figures to this JSON file."""


def _numpy_params(rnn):
    """The MDN-RNN's arrays as NumPy, for the loop."""
    cell = rnn.cell
    return {
        "w_ih": np.asarray(cell.weight_ih),
        "w_hh": np.asarray(cell.weight_hh),
        "b": np.asarray(cell.bias),
        "w_head": np.asarray(rnn.head.weight),
        "b_head": np.asarray(rnn.head.bias),
    }


def _loop_worker(args):
    """Dreams stepped one example and one step at a time in NumPy; returns steps done and seconds."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    params, ctrl, z0, rollouts, steps, k, zs, seed = args
    rng = np.random.default_rng(seed)
    hidden = params["w_hh"].shape[1]
    t0 = time.perf_counter()
    for _ in range(rollouts):
        z, h, c = z0.copy(), np.zeros(hidden, np.float32), np.zeros(hidden, np.float32)
        total = 0.0
        for _ in range(steps):
            x = np.concatenate([z, h])
            for w, b in ctrl[:-1]:  # the hidden layer, if C has one
                x = np.tanh(w @ x + b)
            o = np.tanh(ctrl[-1][0] @ x + ctrl[-1][1])
            a = np.array([o[0], (o[1] + 1) / 2, min(max(o[2], 0.0), 1.0)], np.float32)
            gates = params["w_ih"] @ np.concatenate([z, a]) + params["w_hh"] @ h + params["b"]
            i, f, g, og = np.split(gates, 4)
            c = 1 / (1 + np.exp(-f)) * c + 1 / (1 + np.exp(-i)) * np.tanh(g)
            h = 1 / (1 + np.exp(-og)) * np.tanh(c)
            out = params["w_head"] @ h + params["b_head"]
            logits = out[:k]
            p = np.exp(logits - logits.max())
            comp = min(int(np.searchsorted(np.cumsum(p), rng.random() * p.sum())), k - 1)
            mu = out[k : k + k * zs].reshape(k, zs)[comp]
            sigma = np.exp(out[k + k * zs : k + 2 * k * zs].reshape(k, zs)[comp])
            z = (mu + sigma * rng.standard_normal(zs)).astype(np.float32)
            total += out[-2]
    return rollouts * steps, time.perf_counter() - t0


def matmul_gflops(n: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """float32 n x n matmul GFLOP/s through JAX (the roofline the dream is compared with).

    The best of ``trials`` timings of ``repeats`` products: a roofline is the peak, so a slow trial on a
    shared machine must not lower it (and so flatter the dream's fraction).
    """
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(repeats):
            r = f(a)
        r.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * repeats / best / 1e9


def main(args: Args) -> dict:
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from worldmodels.dream import DreamStart, dream_flops_per_step, generation_fitness
    from worldmodels.models import MDNRNN
    from worldmodels.models.controller import controller_from_flat, controller_num_params

    if args.small:
        p, r, t, loop_r = 16, 4, 200, 1
    else:
        p, r, t, loop_r = args.population, args.rollouts, args.steps, args.loop_rollouts_per_core
    z, hidden, k = 32, 256, 5
    rnn = MDNRNN(z, 3, hidden, k, key=jr.key(0))
    start = DreamStart(jr.normal(jr.key(1), (16, z)), jnp.full((16, z), -2.0))
    units = args.controller_units
    try:
        n = controller_num_params(z, hidden, units=units)
    except ValueError as e:
        raise SystemExit(f"--controller-units: {e}") from None
    population = jr.normal(jr.key(2), (p, n)) * 0.1
    tau = jnp.float32(1.0)

    # Fused generation
    t0 = time.perf_counter()
    generation_fitness(population, rnn, start, jr.key(3), tau, r, t, 0.5, units=units).block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        generation_fitness(population, rnn, start, jr.key(4 + i), tau, r, t, 0.5, units=units).block_until_ready()
        times.append(time.perf_counter() - t0)
    run_s = min(times)
    fused_steps = p * r * t / run_s

    # Per-step NumPy loop, one process per core
    cores = mp.cpu_count()
    params = _numpy_params(rnn)
    c = controller_from_flat(population[0], z, hidden, units=units)
    layers = [(c.hidden_weight, c.hidden_bias)] if units else []
    ctrl = [(np.asarray(w), np.asarray(b)) for w, b in [*layers, (c.weight, c.bias)]]
    z0 = np.asarray(start.mu[0])
    jobs = [(params, ctrl, z0, loop_r, t, k, z, s) for s in range(cores)]
    with mp.get_context("spawn").Pool(cores) as pool:
        done = pool.map(_loop_worker, jobs)
    # Each process times its own loop (process start-up excluded); the loops run side by side.
    loop_steps = sum(steps / seconds for steps, seconds in done)

    gflops_peak = matmul_gflops()
    flops = dream_flops_per_step(z, hidden, k, controller_units=units)
    achieved = fused_steps * flops / 1e9
    result = {
        "device": str(jax.devices()[0]),
        "cores": cores,
        "controller_units": units,
        "population": p,
        "rollouts": r,
        "steps": t,
        "compile_s": first - run_s,
        "generation_s": run_s,
        "fused_steps_per_s": fused_steps,
        "loop_steps_per_s": loop_steps,
        "speedup_over_loop": fused_steps / loop_steps,
        "flops_per_step": flops,
        "achieved_gflops": achieved,
        "matmul_gflops": gflops_peak,
        "roofline_fraction": achieved / gflops_peak,
    }
    rows = [
        ("device", result["device"]),
        ("controller", f"{units} hidden units, {n:,} parameters" if units else f"linear, {n:,} parameters"),
        ("generation (P x R x T)", f"{p} x {r} x {t} = {p * r * t:,} dream steps"),
        ("compile", f"{result['compile_s']:.2f} s"),
        ("fused generation", f"{run_s:.3f} s, {fused_steps:,.0f} steps/s"),
        (f"NumPy loop, batch 1, {cores} processes", f"{loop_steps:,.0f} steps/s"),
        ("speed-up over the loop", f"{result['speedup_over_loop']:.1f}x"),
        ("FLOPs per dream step", f"{flops:,}"),
        ("achieved", f"{achieved:.1f} GFLOP/s"),
        ("float32 matmul (2048^3)", f"{gflops_peak:.1f} GFLOP/s"),
        ("fraction of the matmul roofline", f"{100 * result['roofline_fraction']:.0f} %"),
    ]
    report(rows, result, args.json)
    return result


def report(rows: list[tuple[str, str]], result: dict, json_path: Path | None) -> None:
    """Print ``rows`` (label, figure) as an aligned table and, with ``json_path``, write ``result`` there as JSON
    (its folder created). Every benchmark ends with this."""
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args, description=__doc__))
