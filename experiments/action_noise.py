"""The same controller driven with and without action noise, paired on the same real tracks.

A controller's action gets the smooth Ornstein-Uhlenbeck noise of ``test.action_noise`` (the noise the ``controller``
collection policy adds) at each level in ``--levels``; every level drives the same ``--episodes`` tracks (seeds
``--seed`` on), so the difference to level 0 is paired episode by episode. Real episodes do not change the controller:
its parameters are those the dream chose; the level is a property of the policy that drives. Choose a level on seeds
that are not the test seeds (``--seed 2000000``, a validation block), then score it on the test seeds.

Each level's results go to ``OUT/noise_LEVEL/results.json`` (``stages.run_test`` with ``--out``: the run directory is
only read, so a shipped agent can be measured); a level whose results exist is not run again, so the experiment
resumes where it stopped. The table (mean, 95 % interval, paired difference to level 0 with its interval, off-road
share) is printed and written to ``OUT/action_noise.json``.

    uv run python experiments/action_noise.py --run-dir pretrained/carracing --out runs/noise_val \
        --levels 0 0.1 0.2 0.3 --seed 2000000 --episodes 20
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """Run directory with a trained agent (vae/, rnn/, controller/); only read."""
    out: Path
    """Directory that receives noise_LEVEL/results.json per level and action_noise.json."""
    levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    """Standard deviations of the action noise, in action units; 0 (no noise) is the pairing's reference."""
    preset: str = "quick"
    """Preset whose test config (episode length, workers) drives every level."""
    episodes: int = 20
    """Real episodes per level, on the same seeds."""
    seed: int = 2_000_000
    """First reset seed (default: a validation block, far from collection's seeds and from the test seeds)."""
    workers: int = 0
    """Environment worker processes; 0 means one per CPU core."""


def paired(returns: list[float], reference: list[float]) -> dict:
    """Mean of ``returns - reference`` (episode by episode, the same seeds) and the 95 % interval's half-width."""
    import numpy as np

    from worldmodels.evaluate import ci95

    diff = np.asarray(returns) - np.asarray(reference)
    return {"mean": float(diff.mean()), "ci95": ci95(diff)}


def main() -> None:
    import tyro

    from worldmodels.cli import run_main

    args = tyro.cli(Args, description=__doc__)
    if any(level < 0 for level in args.levels):
        raise SystemExit(f"--levels must be >= 0 (standard deviations), got {list(args.levels)}")
    if args.episodes < 1:
        raise SystemExit(f"--episodes must be >= 1, got {args.episodes}")
    if not (args.run_dir / "controller").is_dir():
        raise SystemExit(f"--run-dir {args.run_dir}: no controller/; train an agent there first (pipeline.py)")
    run_main(lambda: run(args))


def run(args: Args) -> dict:
    import numpy as np

    from worldmodels.config import load_preset
    from worldmodels.metrics_log import write_json
    from worldmodels.stages import run_test

    levels = sorted(set(args.levels) | {0.0})
    base = load_preset(args.preset).test
    outs = {level: args.out / f"noise_{level:g}" / "results.json" for level in levels}
    done = {level: json.loads(out.read_text()) for level, out in outs.items() if out.is_file()}
    for level, summary in done.items():  # results of another plan are refused before anything runs
        first = summary["episodes"][0]["seed"]
        if summary["n"] != args.episodes or first != args.seed:
            raise SystemExit(
                f"{outs[level]} holds {summary['n']} episodes from seed {first}, not {args.episodes} from "
                f"{args.seed}; give another --out (nothing was written)"
            )
    table: dict[str, dict] = {}
    for level, out in outs.items():
        if level in done:
            summary = done[level]
            print(f"noise {level:g}: done before ({summary['mean']:.1f} over {summary['n']} episodes)")
        else:
            cfg = dataclasses.replace(
                base, episodes=args.episodes, seed=args.seed, action_noise=level, video=False, workers=args.workers
            )
            summary = run_test(args.run_dir, cfg, out=out)
        returns = [e["return"] for e in summary["episodes"]]
        steps = sum(e["steps"] for e in summary["episodes"])
        table[f"{level:g}"] = {
            "level": level,
            "mean": summary["mean"],
            "ci95": summary["ci95"],
            "std": summary["std"],
            "median": float(np.median(returns)),
            "n": summary["n"],
            "offroad_share": summary["offroad_steps"] / max(steps, 1),
            "returns": returns,
        }
    reference = table["0"]["returns"]
    for row in table.values():
        row["paired_vs_0"] = paired(row["returns"], reference)
    report = {
        "run_dir": str(args.run_dir),
        "seeds": f"{args.seed} to {args.seed + args.episodes - 1}",
        "what": "the same controller with Ornstein-Uhlenbeck action noise (theta 0.5) of each standard deviation",
        "levels": table,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "action_noise.json", report)
    print(f"\n{args.run_dir}, seeds {report['seeds']}")
    print("| noise std | real score (95 % CI) | median | paired vs no noise | off-road steps |")
    print("|---:|---:|---:|---:|---:|")
    for row in table.values():
        d = row["paired_vs_0"]
        print(
            f"| {row['level']:g} | {row['mean']:.1f} +- {row['ci95']:.1f} | {row['median']:.1f} "
            f"| {d['mean']:+.1f} +- {d['ci95']:.1f} | {100 * row['offroad_share']:.0f} % |"
        )
    return report


if __name__ == "__main__":
    main()
