"""Can the dreams of several M pick, without a real episode, the controller that drives?

Issue 13's seed swap found that M's training seed decides whether iteration 0's controller drives (one M in five),
and that neither M's losses nor its held-out reward delusion tell the driving M apart. This script scores every
given agent's controller in the dream of every given M (the "worlds": M trained with other seeds on the same data
and V), with the agent's own M as its memory, tracking the world on the dreamed frames as it does on real ones
(``dream.ensemble_generation_returns``, the ensemble dream of ``train_dream.py --ensemble``). Each controller gets
the same ``--rollouts`` dreams per world (same keys, first-frame starts of the episodes the worlds were trained on)
and the recorded dream's settings (length, temperature, termination, action noise). Its cross score is the
ensemble's pessimistic fitness over the worlds, mean minus ``--pessimism`` times their standard deviation
(``dream.ensemble_fitness``; MOPO, Yu et al. 2020). The pick is the agent with the highest cross score: a choice
by dream fitness alone (issue 13's rule). Where an agent's run holds ``eval/results.json`` (its real test) the
table shows that score too, and Pearson's r between cross scores and real scores.

Every run directory is only read (the dreams' starts come from the first agent's cached latents,
``rnn/latents``, which its M was trained on; they are encoded there only if that cache is missing).

    uv run python experiments/cross_dream.py --agents runs/swap/m{0,1,2,3}_es0/baseline \\
        --worlds runs/swap/m0 runs/swap/m1 runs/swap/m2 runs/swap/m3 --out cross.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Args:
    agents: tuple[Path, ...]
    """Run directories each with vae/, rnn/ (the agent's M: its memory), controller/ and config.json; all on one V."""
    worlds: tuple[Path, ...]
    """Run directories whose rnn/ckpt is a world M (trained on the agents' data and V); an agent's own M may be one."""
    out: Path | None = None
    """JSON file for the table (default: print only)."""
    rollouts: int = 64
    """Dreams per world and controller (the same dreams for every controller)."""
    pessimism: float = 1.0
    """Cross score = mean over worlds - pessimism x their standard deviation (ddof 0)."""
    seed: int = 12345
    """Key of the dreams (none of the CMA-ES keys)."""


def cross_scores(args: Args) -> dict:
    """Each agent's mean dream return in each world, its cross score and real score, and the pick."""
    import dataclasses

    import jax.numpy as jnp
    import jax.random as jr

    from worldmodels.config import DreamConfig, RNNConfig
    from worldmodels.dream import ensemble_fitness, ensemble_generation_returns
    from worldmodels.run_dir import env_spec, load_controller, load_dynamics, load_vae, same_weights
    from worldmodels.stages import dream_starts, latents

    first = args.agents[0]
    config = json.loads((first / "config.json").read_text())
    rnn_cfg = RNNConfig(**config["rnn"])
    base = DreamConfig(**config["dream"])
    worlds = [load_dynamics(w)[0] for w in args.worlds]
    # Every agent and world reads one V's latents: a world trained on another V would dream other codes.
    vae = load_vae(first)[0]
    for run in dict.fromkeys((*args.agents, *args.worlds)):  # each run once; the first's V is the one loaded above
        if run != first and not same_weights(vae, load_vae(run)[0]):
            raise SystemExit(f"{run}: its V differs from {first}'s; every agent and world must share one V")
    squash = env_spec(first).squash
    data = latents(first, rnn_cfg)  # the episodes every dream starts from, read once
    key = jr.key(args.seed)
    rows = []
    for agent_dir in args.agents:
        memory, _ = load_dynamics(agent_dir)
        ctrl, meta = load_controller(agent_dir)
        hp = meta["hparams"]
        cfg = dataclasses.replace(base, controller_inputs=hp.get("inputs", "zh"), controller_units=hp.get("units", 0))
        start = dream_starts(memory, data, dataclasses.replace(cfg, mid_episode_starts=0.0))
        population = jnp.asarray(np.asarray(ctrl.to_flat(), np.float32))[None]
        returns = []
        for world in worlds:  # world column k: `rollouts` dreams in that world (member 1 of a two-member ensemble)
            both = ensemble_generation_returns(
                population, (memory, world), start, key, jnp.float32(cfg.temperature), 2 * args.rollouts,
                cfg.dream_steps, cfg.done_threshold if cfg.termination == "threshold" else None, squash,
                cfg.controller_inputs, cfg.action_noise, cfg.controller_units,
            )  # fmt: skip
            returns.append(float(both[0, 1]))
        score = float(ensemble_fitness(jnp.asarray(returns)[None], args.pessimism)[0])
        results = agent_dir / "eval" / "results.json"
        real = json.loads(results.read_text()) if results.is_file() else None
        rows.append({
            "agent": str(agent_dir), "world_returns": returns, "cross_score": score, "worst_world": min(returns),
            "real": None if real is None else real["mean"], "real_ci95": None if real is None else real["ci95"],
        })  # fmt: skip
        line = " ".join(f"{r:7.1f}" for r in returns) + f" | cross {score:7.1f} | worst {min(returns):7.1f}"
        print(f"{agent_dir}: {line}" + ("" if real is None else f" | real {real['mean']:.1f}"))
    scored = [r for r in rows if r["real"] is not None]
    pick = max(rows, key=lambda r: r["cross_score"])
    table = {
        "worlds": [str(w) for w in args.worlds],
        "rollouts_per_world": args.rollouts,
        "pessimism": args.pessimism,
        "seed": args.seed,
        "rows": rows,
        "pick": {"agent": pick["agent"], "real": pick["real"]},
    }
    if len(scored) >= 2:
        cross = np.array([r["cross_score"] for r in scored])
        real = np.array([r["real"] for r in scored])
        table["pearson_r"] = float(np.corrcoef(cross, real)[0, 1])
        table["pearson_r_worst_world"] = float(np.corrcoef([r["worst_world"] for r in scored], real)[0, 1])
        table["best"] = max(scored, key=lambda r: r["real"])["agent"]
    return table


def main() -> None:
    import tyro

    args = tyro.cli(Args, description=__doc__)
    for run in (*args.agents, *args.worlds):
        if not (run / "rnn" / "ckpt").is_dir():
            raise SystemExit(f"{run}: no rnn/ckpt; train its M first (train_rnn.py)")
    for run in args.agents:
        if not (run / "controller" / "ckpt").is_dir():
            raise SystemExit(f"--agents {run}: no controller/ckpt; evolve one first (train_dream.py)")
    if args.rollouts < 1:
        raise SystemExit(f"--rollouts must be >= 1, got {args.rollouts}")
    if not args.pessimism >= 0:
        raise SystemExit(f"--pessimism must be >= 0, got {args.pessimism}")
    table = cross_scores(args)
    if "pearson_r" in table:
        print(f"pick: {table['pick']['agent']} (real {table['pick']['real']}); best real: {table['best']}; "
              f"r(cross, real) = {table['pearson_r']:.2f}")  # fmt: skip
    if args.out is not None:
        from worldmodels.metrics_log import write_json

        write_json(args.out, table)


if __name__ == "__main__":
    main()
