"""Is the controller search the bottleneck once the dream is honest? CMA-ES again in a late Sim2Real2Sim world model.

After five iterations of the `quick` loop (``pretrained/carracing``: V, the M of iteration 5 and the controller CMA-ES
kept there) the dream and the road agree (dream 440, real 370 over 100 episodes), but the loop has stopped
improving, with CMA-ES's step size down to 0.08. This experiment asks whether more search in that same dream finds
a better driver, and how much the kept controller's dream score is inflated by being the best of many noisy
re-scores (a winner's curse: ``evolve`` keeps the controller whose 16-rollout re-score was the highest of up to
2 x generations of them).

Arms (each evolves in the source's M, from first frames, the source preset's dream otherwise):

- ``continue``: CMA-ES restarted from the source controller with a fresh step size (``--sigma``) and covariance.
- ``fresh``: CMA-ES from zero, as the pipeline's first CMA-ES stage does.

For every arm two controllers are scored: the one ``evolve`` kept (the highest single re-score) and CMA-ES's final
mean. Each, and the source controller, is re-scored on ``--rescore-rollouts`` dreams (the same keys for all:
common random numbers) and driven on ``--episodes`` real episodes from seed 1,000,000 on. Real episodes never
select anything. Dream starts are the first frames of ``--start-episodes`` short brownian episodes collected into
``OUT/starts`` (training seeds; a first frame does not depend on the policy).

    uv run python experiments/honest_dream_search.py --source pretrained/carracing --out runs/search5

Writes ``OUT/search.json`` (resumes: a finished arm, controller or test is not redone) and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Args:
    source: Path
    """Run directory (or shipped agent) with vae/, rnn/ and controller/ checkpoints and its config.json."""
    out: Path
    """Directory for the starts, one run directory per arm and controller, and search.json."""
    arms: tuple[str, ...] = ("continue", "fresh")
    """Arms to run, in order: ``continue`` and/or ``fresh``."""
    preset: str = "quick"
    """Preset whose dream config (population, rollouts, dream length, temperature) every arm uses."""
    generations: int = 150
    """CMA-ES generations of every arm."""
    sigma: float = 0.1
    """Initial CMA-ES step size of every arm."""
    seed: int = 0
    """CMA-ES and dream seed of every arm."""
    episodes: int = 20
    """Real test episodes per controller (seeds 1,000,000 on)."""
    max_steps: int = 1000
    """Step cap of each real test episode (CarRacing-v3's own is 1,000)."""
    rescore_rollouts: int = 512
    """Dreams per controller for the final dream scores (the same keys for every controller)."""
    start_episodes: int = 64
    """Brownian episodes (50 steps each) whose first frames start the dreams."""
    action_noise: float = 0.0
    """Standard deviation of the Ornstein-Uhlenbeck action noise of the policy: added in every dream (CMA-ES and
    the re-scores, ``dream.action_noise``) and on the road (``test.action_noise``), for every controller."""


def _save_controller(run_dir: Path, source: Path, flat: np.ndarray, hparams: dict, step: int) -> None:
    """Make ``run_dir`` an agent: copies of the source's V and M and a controller checkpoint holding ``flat``."""
    import jax.numpy as jnp

    from worldmodels import checkpoint
    from worldmodels.models.controller import controller_from_flat
    from worldmodels.run_dir import copy_world_model

    copy_world_model(source, run_dir, latents=False)
    if checkpoint.latest_step(run_dir / "controller" / "ckpt") is None:
        ctrl = controller_from_flat(jnp.asarray(flat, jnp.float32), **hparams)
        checkpoint.save(run_dir / "controller" / "ckpt", step, ctrl, kind="controller", hparams=hparams)


def main() -> None:
    import tyro

    args = tyro.cli(Args, description=__doc__)
    unknown = [a for a in args.arms if a not in ("continue", "fresh")]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; known: continue, fresh")
    if args.action_noise < 0:
        raise SystemExit(f"--action-noise must be >= 0 (a standard deviation), got {args.action_noise}")
    for name in ("vae", "rnn", "controller", "config.json"):
        if not (args.source / name).exists():
            raise SystemExit(f"--source {args.source}: no {name}; point it at a run with a trained controller")

    import jax.random as jr

    from worldmodels.config import CollectConfig, TestConfig, load_preset
    from worldmodels.data import collect
    from worldmodels.dream import DreamStart
    from worldmodels.evolve import dream_fitness, evolve, write_restart_state
    from worldmodels.metrics_log import write_json
    from worldmodels.models.registry import controller_hparams
    from worldmodels.run_dir import copy_world_model, env_spec, load_controller, load_dynamics
    from worldmodels.stages import latents, recorded_rnn_config, run_test

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "search.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {}
    if table and table.get("action_noise", 0.0) != args.action_noise:  # (a table without the key: measured at 0)
        raise SystemExit(f"{table_path} was measured with --action-noise {table.get('action_noise', 0.0)}; "
                         "give another --out")  # fmt: skip
    table["action_noise"] = args.action_noise

    def save_table() -> None:
        write_json(table_path, table)

    dynamics, _ = load_dynamics(args.source)
    spec = env_spec(args.source)
    cfg = dataclasses.replace(load_preset(args.preset).dream, generations=args.generations, seed=args.seed,
                              sigma_init=args.sigma, action_noise=args.action_noise)  # fmt: skip
    hparams = controller_hparams(dynamics, spec.squash, cfg.controller_inputs, cfg.controller_units)
    source_ctrl, _ = load_controller(args.source)
    source_flat = np.asarray(source_ctrl.to_flat())

    # Dream starts: first frames of short brownian episodes, encoded by the source's V (mirrored like M's data).
    starts = out / "starts"
    if not (starts / "vae").exists():
        shutil.copytree(args.source / "vae", starts / "vae", ignore=shutil.ignore_patterns("metrics.jsonl", "tb"))
    collect(starts, CollectConfig(policy="brownian", episodes=args.start_episodes, max_steps=50, seed=0, workers=2))
    rnn_cfg = dataclasses.replace(recorded_rnn_config(args.source), dataset="brownian", holdout=0.0)
    mu, logvar = latents(starts, rnn_cfg).initial()
    import jax.numpy as jnp

    start = DreamStart(jnp.asarray(mu), jnp.asarray(logvar))
    print(f"{len(mu)} dream starts (first frames) from {starts / 'data' / 'brownian'}")

    controllers: dict[str, np.ndarray] = {"source": source_flat}
    for arm in args.arms:
        arm_dir = out / arm
        state_path = arm_dir / "controller" / "es_state.npz"
        if arm == "continue" and not state_path.exists():
            # CMA-ES restarted at the source controller: its mean, a fresh sigma and covariance, no kept best.
            state_path.parent.mkdir(parents=True, exist_ok=True)
            write_restart_state(state_path, source_flat, args.sigma, 0, cfg.step_size_adaptation)
        copy_world_model(args.source, arm_dir, latents=False)
        t0 = time.perf_counter()
        from_start = not state_path.exists() or int(np.load(state_path)["generation"]) == 0
        fitness = dream_fitness(dynamics, start, cfg, spec.squash)
        kept = evolve(arm_dir / "controller", fitness, hparams, cfg)
        state = np.load(state_path)
        if "cmaes_seconds" not in table.get(arm, {}):
            # Wall time of the whole search, or None when this process only finished an interrupted one.
            table.setdefault(arm, {})["cmaes_seconds"] = time.perf_counter() - t0 if from_start else None
        table[arm]["kept_dream_score_at_selection"] = float(state["best_score"])
        table[arm]["final_sigma"] = float(state["sigma"])
        save_table()
        controllers[f"{arm}_kept"] = np.asarray(kept, np.float32)
        controllers[f"{arm}_mean"] = np.asarray(state["mean"], np.float32)
        _save_controller(out / f"{arm}_mean", args.source, controllers[f"{arm}_mean"], hparams, args.generations)

    # Dream scores on many dreams, the same keys for every controller.
    if "rescored" not in table or set(table["rescored"]) != set(controllers):
        big = dataclasses.replace(cfg, rollouts=args.rescore_rollouts)
        score = dream_fitness(dynamics, start, big, spec.squash)
        names = list(controllers)
        values = np.asarray(score(jnp.asarray(np.stack([controllers[n] for n in names])), jr.key(12345)))
        table["rescored"] = {n: float(v) for n, v in zip(names, values, strict=True)}
        table["rescore_rollouts"] = args.rescore_rollouts
        save_table()

    test = TestConfig(
        episodes=args.episodes, seed=1_000_000, workers=2, max_steps=args.max_steps, action_noise=args.action_noise
    )
    dirs = {"source": args.source}
    dirs |= {f"{a}_kept": out / a for a in args.arms} | {f"{a}_mean": out / f"{a}_mean" for a in args.arms}
    real = table.setdefault("real", {})
    for name, run in dirs.items():
        if name in real:
            continue
        res = run_test(run, test, out=out / "eval" / name / "results.json")
        real[name] = {k: res.get(k) for k in ("mean", "ci95", "std", "n", "min", "max", "model_return")}
        save_table()

    print("\n| controller | dream score (kept's own re-score) | dream score, "
          f"{args.rescore_rollouts} dreams | real score ({args.episodes} episodes, 95 % CI) |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for name in dirs:
        arm = table.get(name.removesuffix("_kept"), {}) if name.endswith("_kept") else {}
        at_sel = arm.get("kept_dream_score_at_selection")
        r = real[name]
        sel = f"{at_sel:.1f}" if at_sel is not None else ""
        print(f"| {name} | {sel} | {table['rescored'][name]:.1f} | {r['mean']:.1f} +- {r['ci95']:.1f} |")


if __name__ == "__main__":
    main()
