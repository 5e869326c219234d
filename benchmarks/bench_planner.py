"""CEM planning in the MDN-RNN's dream (``worldmodels.planners``), against the fused CMA-ES dream and the
matmul roofline.

Measures, in one run, at the paper's M sizes (Z 32, LSTM 256, 5 mixtures, 3 actions):

* one jitted planning call, ``planners.plan_batch`` (``cem_plan`` vmapped over W environments), at PlaNet's
  settings (H 12, N 1000, k 100, I 10; Hafner et al. 2019, Sec. 3) and at a CPU setting (N 200, k 20, I 4),
  for W = 1 and W = 8 by default: planning calls/s, actions planned per second (W x calls/s) and dream steps/s
  (N x H x I x W per call), compile time apart;
* the dream steps/s of one fused CMA-ES generation (``dream.generation_fitness``, P x R x T in one call) on the
  same model, and each planner figure as a ratio to it;
* float32 matmul GFLOP/s of this machine (``bench_dream.matmul_gflops``), the planner's achieved GFLOP/s from
  the FLOPs of one dream step (LSTM and MDN head; no controller) and its fraction of that roofline.

Every timing is the best of ``--repeats`` calls after a compiling call (``block_until_ready`` closes each), from one
run on a machine that may be busy: the 1-minute load average is printed with them.

    uv run python benchmarks/bench_planner.py [--small] [--json PATH]
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_dream, also when imported from elsewhere


@dataclass(frozen=True)
class Args:
    envs: tuple[int, ...] = (1, 8)
    """Environments W planned for in one call (one figure per W)."""
    population: int = 64
    """CMA-ES reference: candidates P per generation."""
    rollouts: int = 16
    """CMA-ES reference: dreams R per candidate."""
    steps: int = 200
    """CMA-ES reference: dream length T."""
    repeats: int = 3
    """Timed calls after the compiling one (the best is reported)."""
    small: bool = False
    """A run of under a minute on 2 CPU cores: W 1 and 2, PlaNet's setting with N 500, CMA-ES P 16, R 4."""
    json: Path | None = None
    """Also write the figures to this JSON file."""


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first, compiling call; best seconds of ``repeats`` further calls) of ``fn(i)``."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(0))
    first = time.perf_counter() - t0
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(i + 1))
        best = min(best, time.perf_counter() - t0)
    return first, best


def main(args: Args) -> dict:
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from bench_dream import matmul_gflops, report

    from worldmodels.dream import DreamStart, dream_flops_per_step, generation_fitness
    from worldmodels.env import ACTION_HIGH, ACTION_LOW
    from worldmodels.models import MDNRNN, LinearController
    from worldmodels.models.dynamics import batched_initial_state
    from worldmodels.planners import CEMConfig, initial_mean, plan_batch

    z_size, hidden, k, n_act = 32, 256, 5, 3
    rnn = MDNRNN(z_size, n_act, hidden, k, key=jr.key(0))
    low, high = jnp.asarray(ACTION_LOW), jnp.asarray(ACTION_HIGH)
    if args.small:
        envs, (p, r, t) = (1, 2), (16, 4, 200)
        settings = {
            "planet": CEMConfig(candidates=500, top_k=50),
            "cpu": CEMConfig(candidates=200, top_k=20, iterations=4),
        }
    else:
        envs, (p, r, t) = args.envs, (args.population, args.rollouts, args.steps)
        settings = {"planet": CEMConfig(), "cpu": CEMConfig(candidates=200, top_k=20, iterations=4)}
    flops = dream_flops_per_step(z_size, hidden, k, n_act) - 2 * n_act * (z_size + hidden)  # no controller

    # The fused CMA-ES generation on the same model (bench_dream's reference figure).
    start = DreamStart(jr.normal(jr.key(1), (16, z_size)), jnp.full((16, z_size), -2.0))
    population = jr.normal(jr.key(2), (p, LinearController.num_params(z_size, hidden))) * 0.1
    tau = jnp.float32(1.0)
    gen = lambda i: generation_fitness(population, rnn, start, jr.key(3 + i), tau, r, t, 0.5)
    gen_first, gen_s = best_time(gen, args.repeats)
    gen_steps = p * r * t / gen_s

    # The roofline is a peak: measured before and after the planner timings, the higher one counts (a busy moment on a
    # shared machine must not lower it and so flatter the planner's fraction).
    roofline = (lambda: matmul_gflops(repeats=5, trials=3)) if args.small else matmul_gflops
    gflops_first = roofline()
    result: dict = {
        "device": str(jax.devices()[0]),
        "cores": os.cpu_count(),
        "sizes": {"z": z_size, "hidden": hidden, "mixtures": k, "actions": n_act},
        "flops_per_step": flops,
        "cmaes": {
            "population": p,
            "rollouts": r,
            "steps": t,
            "compile_s": gen_first - gen_s,
            "generation_s": gen_s,
            "dream_steps_per_s": gen_steps,
        },
        "planner": {},
    }
    rows = [
        ("device", f"{result['device']} ({result['cores']} cores)"),
        ("M sizes", f"Z {z_size}, LSTM {hidden}, K {k}; {flops:,} FLOPs per dream step"),
        (f"CMA-ES generation {p} x {r} x {t}", f"{gen_s:.3f} s, {gen_steps:,.0f} dream steps/s"),
    ]
    for name, cfg in settings.items():
        for w in envs:
            z = jr.normal(jr.key(4), (w, z_size))
            state = batched_initial_state(rnn, w)
            mean = jnp.broadcast_to(initial_mean(cfg.horizon, low, high), (w, cfg.horizon, n_act))
            call = lambda i, z=z, state=state, mean=mean, cfg=cfg: plan_batch(
                rnn, z, state, mean, jr.key(10 + i), cfg, low, high
            )
            first, call_s = best_time(call, args.repeats)
            steps = cfg.candidates * cfg.horizon * cfg.iterations * w
            fig = {
                "horizon": cfg.horizon, "candidates": cfg.candidates, "top_k": cfg.top_k,
                "iterations": cfg.iterations, "envs": w, "compile_s": first - call_s, "call_s": call_s,
                "calls_per_s": 1 / call_s, "actions_per_s": w / call_s, "dream_steps_per_s": steps / call_s,
                "over_cmaes": steps / call_s / gen_steps, "achieved_gflops": steps / call_s * flops / 1e9,
            }  # fmt: skip
            result["planner"][f"{name}_w{w}"] = fig
    gflops_peak = max(gflops_first, roofline())
    result["matmul_gflops"] = gflops_peak
    rows.append(("float32 matmul (2048^3, best of before and after)", f"{gflops_peak:.1f} GFLOP/s"))
    for key, fig in result["planner"].items():
        fig["roofline_fraction"] = fig["achieved_gflops"] / gflops_peak
        rows.append(
            (
                f"CEM {key.rsplit('_', 1)[0]} (N {fig['candidates']}, k {fig['top_k']}, I {fig['iterations']}, "
                f"H {fig['horizon']}), W {fig['envs']}",
                f"{fig['call_s'] * 1e3:8.1f} ms/call, {fig['calls_per_s']:7.1f} calls/s, "
                f"{fig['actions_per_s']:7.1f} actions/s, {fig['dream_steps_per_s']:12,.0f} dream steps/s = "
                f"{fig['over_cmaes']:.2f}x CMA-ES, {100 * fig['roofline_fraction']:.0f} % of matmul "
                f"(compile {fig['compile_s']:.1f} s)",
            )
        )
    result["load_avg_1min"] = os.getloadavg()[0]
    rows.append(("1-minute load average", f"{result['load_avg_1min']:.2f}"))
    report(rows, result, args.json)
    return result


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args, description=__doc__))
