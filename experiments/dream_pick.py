"""Can the newest dream pick among the Sim2Real2Sim loop's controllers, where the loop keeps the last one?

After ``pipeline.py --iterations N`` a run holds the controller of every iteration k (``iterations/K/agent``) and the
test score of each on the same real seeds (1,000,000 on). This script re-scores every controller in the dream of the
last iteration's M (the one trained on the most on-policy data), each on the same ``--rollouts`` dreams (same keys,
same first-frame starts: the episodes that M was trained on), with the run's dream settings (length, temperature,
termination, action noise; ``evolve.dream_fitness``), and picks the iteration with the highest dream score. Real
episodes play no part in the pick: it is a choice by dream fitness alone (issue 13's rule). It then reports the
pick's test score against the last iteration's and the best one's, and Pearson's r between the dream re-scores and
the test scores over the iterations.

The run directory is only read: the latents the dream starts from are encoded into a scratch directory (``--scratch``,
default a temporary one).

    uv run python experiments/dream_pick.py --run-dirs runs/lunar_climb_s1 runs/lunar_units_loop \\
        --out experiments/results/lunar/dream_pick.json
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Args:
    run_dirs: tuple[Path, ...]
    """Run directories after ``pipeline.py --iterations N`` (N >= 1): iterations/K/agent and iterations/scores.json."""
    out: Path | None = None
    """JSON file for the table (default: print only)."""
    rollouts: int = 512
    """Dreams per controller (the same dreams for every controller)."""
    seed: int = 12345
    """Key of the dreams (none of the loop's CMA-ES keys)."""
    scratch: Path | None = None
    """Directory for the encoded latents (default: a temporary directory, removed afterwards)."""


def _test_scores(run_dir: Path) -> dict[int, dict]:
    """Iteration -> its row of ``iterations/scores.json`` (test mean, ci95, n), for the tested iterations."""
    rows = json.loads((run_dir / "iterations" / "scores.json").read_text())
    return {int(r["iteration"]): r for r in rows if r.get("mean") is not None}


def dream_pick(run_dir: Path, rollouts: int, seed: int, scratch: Path) -> dict:
    """One run's table: each iteration's dream re-score in the last M and its test score, and the picks."""
    import dataclasses

    import jax.numpy as jnp
    import jax.random as jr

    from worldmodels.config import DreamConfig, RNNConfig
    from worldmodels.evolve import dream_fitness
    from worldmodels.run_dir import env_spec, load_controller, load_dynamics
    from worldmodels.stages import dream_starts, latents

    test = _test_scores(run_dir)
    # The iterations whose agent (V, M, C) and test score exist, in order.
    ks = sorted(k for k in test if (run_dir / "iterations" / str(k) / "agent" / "controller").is_dir())
    if len(ks) < 2:
        raise SystemExit(f"--run-dirs {run_dir}: fewer than two tested iterations with an agent; nothing to pick")
    last = run_dir / "iterations" / str(ks[-1]) / "agent"
    config = json.loads((last / "config.json").read_text())
    rnn_cfg = RNNConfig(**config["rnn"])
    dream_cfg = DreamConfig(**config["dream"])
    # A scratch run directory on the run's data and V, so the encoded latents are cached there, not in the run.
    work = scratch / run_dir.name
    (work / "rnn").mkdir(parents=True, exist_ok=True)
    for part in ("data", "vae"):
        if not (work / part).exists():
            (work / part).symlink_to((run_dir / part).resolve())
    dynamics, _ = load_dynamics(last)
    flats, hparams = [], None
    for k in ks:
        ctrl, meta = load_controller(run_dir / "iterations" / str(k) / "agent")
        if hparams is not None and meta["hparams"] != hparams:
            raise SystemExit(f"{run_dir}: iteration {k}'s controller has other sizes ({meta['hparams']} vs {hparams})")
        hparams = meta["hparams"]
        flats.append(np.asarray(ctrl.to_flat(), np.float32))
    # The run's dream (length, temperature, termination, action noise) in the last M alone, first-frame starts, for
    # controllers of the checkpoints' inputs and units.
    cfg = dataclasses.replace(
        dream_cfg, rollouts=rollouts, mid_episode_starts=0.0, ensemble=1, pessimism=0.0,
        controller_inputs=hparams.get("inputs", "zh"), controller_units=hparams.get("units", 0),
    )  # fmt: skip
    start = dream_starts(dynamics, latents(work, rnn_cfg), cfg)
    fitness = dream_fitness(dynamics, start, cfg, hparams.get("squash", "carracing"))
    dream = np.asarray(fitness(jnp.asarray(np.stack(flats)), jr.key(seed)), float)
    real = np.array([test[k]["mean"] for k in ks])
    pick = ks[int(np.argmax(dream))]
    best = ks[int(np.argmax(real))]
    return {
        "env": env_spec(run_dir).name,
        "dream_model": f"iteration {ks[-1]}'s M",
        "rollouts": rollouts,
        "seed": seed,
        "rows": [
            {
                "iteration": k,
                "dream": float(d),
                "test": float(test[k]["mean"]),
                "test_ci95": test[k].get("ci95"),
                "test_n": test[k].get("n"),
            }
            for k, d in zip(ks, dream, strict=True)
        ],  # fmt: skip
        "pearson_r": float(np.corrcoef(dream, real)[0, 1]),
        "pick": {"iteration": pick, "test": float(test[pick]["mean"])},
        "last": {"iteration": ks[-1], "test": float(test[ks[-1]]["mean"])},
        "best": {"iteration": best, "test": float(test[best]["mean"])},
    }


def main() -> None:
    import tyro

    args = tyro.cli(Args, description=__doc__)
    for run_dir in args.run_dirs:
        if not (run_dir / "iterations" / "scores.json").is_file():
            raise SystemExit(f"--run-dirs {run_dir}: no iterations/scores.json; run pipeline.py --iterations N first")
    if args.rollouts < 1:
        raise SystemExit(f"--rollouts must be >= 1, got {args.rollouts}")
    from worldmodels.metrics_log import write_json

    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.scratch or Path(tmp)
        table = {str(r): dream_pick(r, args.rollouts, args.seed, scratch) for r in args.run_dirs}
    for run, t in table.items():
        print(f"\n{run} (dreams in {t['dream_model']}, {t['rollouts']} each; r = {t['pearson_r']:.2f})")
        print("| iteration | dream re-score | test score |\n|---:|---:|---:|")
        for row in t["rows"]:
            print(f"| {row['iteration']} | {row['dream']:.1f} | {row['test']:.1f} |")
        print(
            f"dream pick: iteration {t['pick']['iteration']} ({t['pick']['test']:.1f}); last: {t['last']['test']:.1f}; "
            f"best: iteration {t['best']['iteration']} ({t['best']['test']:.1f})"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, table)


if __name__ == "__main__":
    main()
