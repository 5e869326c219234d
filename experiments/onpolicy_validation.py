"""Do the Sim2Real2Sim loop's own on-policy episodes rank its controllers as the test does?

Each iteration k of the loop (``pipeline.py --iterations N``) first collects ``iterate.episodes`` real episodes with
the controller of iteration k - 1, with its exploration noise (``controller_noise``, an Ornstein-Uhlenbeck process),
on collection seeds (100,000 on), into ``data/controller``; then it trains M and the controller again and tests the
new controller on the test seeds (1,000,000 on). So every controller but the last already has a second, independent
measurement of its real return, on seeds the test never uses. This script reads both for each iteration and asks
whether the on-policy return could pick the iteration to keep (a validation set) where the loop today keeps the
last one. It reads a finished run and writes nothing into it. (Since 2026-11-29 the loop records these returns and
its choice itself: ``iterations/K/onpolicy.json`` and ``iterations/selection.json``; this script also reads the
runs made before that.)

    uv run python experiments/onpolicy_validation.py --run-dirs runs/lunar_climb runs/lunar_mean \\
        --out experiments/results/lunar/onpolicy_validation.json

Per run: for each controller that has on-policy episodes, their mean return (noisy policy) with its 95 % interval
and the iteration's test score; Pearson's r between the two over the iterations; the iteration the on-policy
returns pick, with its test score, against the last iteration's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Args:
    run_dirs: tuple[Path, ...]
    """Run directories after ``pipeline.py --iterations N`` (N >= 1): iterations/scores.json and data/controller."""
    out: Path | None = None
    """JSON file for the table (default: print only)."""


def validation_table(run_dir: Path) -> dict:
    """One run's controllers: on-policy return against test score per iteration, the correlation and the pick.

    Iteration k's on-policy episodes are those that ``iterations/scores.json`` counts between iterations k and k + 1
    (``onpolicy_episodes`` is cumulative), in seed order, as ``data.load_episodes`` returns them.

    Raises:
        SystemExit: when the run has no iterations or no on-policy data, naming the file.
    """
    from worldmodels.data import load_episodes
    from worldmodels.evaluate import calibration_fit, ci95

    scores_path = run_dir / "iterations" / "scores.json"
    if not scores_path.is_file():
        raise SystemExit(f"{scores_path}: missing; run pipeline.py --iterations N (N >= 1) on {run_dir} first")
    scores = sorted(json.loads(scores_path.read_text()), key=lambda r: r["iteration"])
    if len(scores) < 2:
        raise SystemExit(f"{scores_path}: one iteration only; the loop has collected no on-policy episodes")
    episodes = load_episodes(run_dir / "data" / "controller")
    rows = []
    for before, after in zip(scores[:-1], scores[1:], strict=True):
        chunk = episodes[before["onpolicy_episodes"] : after["onpolicy_episodes"]]
        returns = np.array([float(e.rewards.sum()) for e in chunk])
        rows.append(
            {
                "iteration": before["iteration"],
                "onpolicy_mean": float(returns.mean()),
                "onpolicy_ci95": ci95(returns),  # the Student-t interval the test scores carry
                "onpolicy_n": len(returns),
                "onpolicy_seeds": [chunk[0].seed, chunk[-1].seed],
                "test_mean": before["mean"],
                "test_n": before["n"],
            }
        )
    fit = calibration_fit([r["onpolicy_mean"] for r in rows], [r["test_mean"] for r in rows])
    pick = max(rows, key=lambda row: row["onpolicy_mean"])
    return {
        "rows": rows,
        "pearson_r": None if fit is None else fit["r"],
        "picked_iteration": pick["iteration"],
        "picked_test_mean": pick["test_mean"],
        "last_iteration": scores[-1]["iteration"],
        "last_test_mean": scores[-1]["mean"],
        "best_test_iteration": max(scores, key=lambda s: s["mean"])["iteration"],
    }


def main() -> None:
    import tyro

    args = tyro.cli(Args, description=__doc__)
    table = {}
    for run_dir in args.run_dirs:
        t = table[str(run_dir)] = validation_table(run_dir)
        r = "n/a" if t["pearson_r"] is None else f"{t['pearson_r']:.3f}"
        print(f"{run_dir} (Pearson r {r} over {len(t['rows'])} controllers)")
        for row in t["rows"]:
            print(
                f"  iteration {row['iteration']:>2}: on-policy {row['onpolicy_mean']:8.1f}"
                f" +- {row['onpolicy_ci95']:5.1f} ({row['onpolicy_n']} episodes)   test {row['test_mean']:8.1f}"
            )
        print(
            f"  on-policy returns pick iteration {t['picked_iteration']} (test {t['picked_test_mean']:.1f});"
            f" the last, {t['last_iteration']}, tests {t['last_test_mean']:.1f}"
        )
    if args.out is not None:
        from worldmodels.metrics_log import write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, table, indent=1)


if __name__ == "__main__":
    main()
