"""Dream-side levers against one baseline: each arm evolves a fresh controller in the same trained world model.

The VAE, the MDN-RNN and the data of ``--source`` are shared by every arm; only the dream changes
(temperature, dreams that start mid-episode, dream length, an ensemble of M and pessimism, ...). Each arm is a run
directory ``OUT/ARM`` holding copies of the source's ``vae/`` and ``rnn/`` and its ``config.json``, with a link to
its ``data/``; CMA-ES runs there (``stages.run_dream``, resumable) and the controller is scored on
``--episodes`` real episodes from seed 1,000,000 on (``stages.run_test``). Real episodes never select
a controller: they only score the one CMA-ES kept. An arm whose results exist is not run again, so
the experiment resumes where it stopped. The table (mean, 95 % interval, dream fitness, wall time)
is printed and written to ``OUT/levers.json``.

    uv run python experiments/dream_levers.py --source runs/quick --out runs/levers \
        --arms baseline temperature_1.25 mid_0.5 mid_1.0_T300

Arms are ``NAME`` from ``ARMS`` below; ``--generations`` sets every arm's CMA-ES budget.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

ARMS: dict[str, dict] = {
    "baseline": {},
    "temperature_1.25": {"temperature": 1.25},
    "temperature_0.75": {"temperature": 0.75},
    "mid_0.5": {"mid_episode_starts": 0.5},
    "mid_1.0": {"mid_episode_starts": 1.0},
    "mid_1.0_T300": {"mid_episode_starts": 1.0, "dream_steps": 300},
    "mid_0.5_temperature_1.25": {"mid_episode_starts": 0.5, "temperature": 1.25},
    # Ensembles of M (the source trained with train_rnn.py --ensemble K): dreams dealt over K members, and the
    # fitness their mean minus beta x their spread.
    "ensemble2": {"ensemble": 2},
    "ensemble2_pessimism1": {"ensemble": 2, "pessimism": 1.0},
    "ensemble3": {"ensemble": 3},
    "ensemble3_pessimism1": {"ensemble": 3, "pessimism": 1.0},
    "ensemble4_pessimism1": {"ensemble": 4, "pessimism": 1.0},
    # The dream weights each reward by M's probability that the episode is still running instead of ending at the
    # done threshold (dream.termination).
    "expected_termination": {"termination": "expected"},
    # The controller: one hidden layer of U tanh units (dream.controller_units; the paper's Table 1 variant), on
    # [z, h] or on z alone (the "V model only" agent).
    "units_8": {"controller_units": 8},
    "units_32": {"controller_units": 32},
    "z_only": {"controller_inputs": "z"},
    "z_only_units_16": {"controller_inputs": "z", "controller_units": 16},
}
"""Each arm's changes to the source preset's dream config."""


@dataclass(frozen=True)
class Args:
    source: Path
    """Run directory with a trained vae/ and rnn/ (and the data/ they were trained on)."""
    out: Path
    """Directory that receives one run directory per arm and levers.json."""
    arms: tuple[str, ...] = ("baseline", "temperature_1.25", "mid_0.5", "mid_1.0_T300")
    """Arms to run, in order (names from ARMS)."""
    preset: str = "quick"
    """Preset whose dream config is the baseline and whose test config (episode length, workers) scores each arm."""
    generations: int = 150
    """CMA-ES generations of every arm."""
    episodes: int = 20
    """Real test episodes per arm (seeds 1,000,000 on)."""
    seed: int = 0
    """CMA-ES and dream seed of every arm."""


def main() -> None:
    import tyro

    args = tyro.cli(Args, description=__doc__)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    for name in ("vae", "rnn", "data", "config.json"):
        if not (args.source / name).exists():
            raise SystemExit(f"--source {args.source}: no {name}; train the world model there first (pipeline.py)")

    from worldmodels.config import load_preset
    from worldmodels.metrics_log import write_json
    from worldmodels.run_dir import copy_world_model
    from worldmodels.stages import run_dream, run_test

    preset = load_preset(args.preset)
    base = preset.dream
    args.out.mkdir(parents=True, exist_ok=True)
    table_path = args.out / "levers.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {}
    for arm in args.arms:
        if arm in table:
            print(f"{arm}: done before ({_num(table[arm]['mean'])} +- {_num(table[arm]['ci95'])})")
            continue
        arm_dir = args.out / arm
        copy_world_model(args.source, arm_dir, link_data=True)
        cfg = dataclasses.replace(base, generations=args.generations, seed=args.seed, **ARMS[arm])
        t0 = time.perf_counter()
        run_dream(arm_dir, cfg)
        t_dream = time.perf_counter() - t0
        rows = [json.loads(line) for line in (arm_dir / "controller" / "metrics.jsonl").read_text().splitlines()]
        test = dataclasses.replace(preset.test, episodes=args.episodes, seed=1_000_000, video=False)
        summary = run_test(arm_dir, test, out=arm_dir / "eval" / "results.json")
        table[arm] = {
            "changes": ARMS[arm],
            "mean": summary["mean"],
            "ci95": summary["ci95"],
            "std": summary["std"],
            "n": summary["n"],
            "reward_delusion": summary["reward_delusion"],
            "dream_kept_score": rows[-1].get("kept_score"),
            "dream_best": rows[-1].get("best"),
            "generations": args.generations,
            "dream_seconds": t_dream,
            "total_seconds": time.perf_counter() - t0,
        }
        write_json(table_path, table)  # atomic; a NaN (an interval of one episode) is stored as null
    print("\n| arm | real score (n, 95 % CI) | dream fitness kept | wall |\n|---|---:|---:|---:|")
    for arm, r in table.items():
        print(
            f"| {arm} | {_num(r['mean'])} +- {_num(r['ci95'])} ({r['n']}) | {_num(r['dream_kept_score'])} "
            f"| {r['total_seconds'] / 60:.1f} min |"
        )


def _num(x) -> str:
    """A stored number with one decimal, or "n/a" where it was not finite (stored as null)."""
    return "n/a" if x is None else f"{x:.1f}"


if __name__ == "__main__":
    main()
