"""One recipe, several seeds: the table and plot the README reports for ``pipeline.py --seed S`` runs of a preset.

Each run directory is a finished ``pipeline.py --preset P --run-dir DIR --seed S --iterations N``. For each run it
reads ``pipeline.json`` (stage wall times, iteration-0's 100-episode test), ``iterations/scores.json`` (each
iteration's real score on the first ``iterate.test_episodes`` test tracks) and, where given, the final controller's
own 100-episode test (``test_agent.py --run-dir DIR --episodes 100 --out FILE``: the loop tests only iteration 0 on
100 episodes). It reads the runs and writes only ``--out`` and ``--plot``.

    uv run python experiments/recipe_seeds.py --run-dirs runs/qdn_s0 runs/qdn_s1 \\
        --final-tests runs/qdn_s0_final100/results.json runs/qdn_s1_final100/results.json \\
        --out experiments/results/carracing_levers/quick_dream_noise_seeds.json --plot docs/quick_dream_noise_seeds.png
    uv run python experiments/recipe_seeds.py --run-dirs runs/qdn_s2 --final-tests runs/qdn_s2_final100/results.json \\
        --previous experiments/results/carracing_levers/quick_dream_noise_seeds.json --out ... --plot ...

Printed: one row per run (seed, minutes per stage and in all, real score per iteration with its 95 % interval, the
final 100-episode score), then the mean over runs of the final scores with the 95 % interval over runs
(``evaluate.ci95`` of the per-run means; with fewer than two runs there is no interval).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from worldmodels.config import recorded_seeds
from worldmodels.evaluate import ci95
from worldmodels.run_dir import results_plan


@dataclass(frozen=True)
class Args:
    run_dirs: tuple[Path, ...]
    """Finished ``pipeline.py --iterations N`` run directories (pipeline.json, iterations/scores.json, config.json)."""
    final_tests: tuple[Path, ...] = ()
    """Per run, in the same order, the results.json of the last controller's 100-episode test (none: not reported)."""
    out: Path | None = None
    """JSON file for the table (default: print only)."""
    plot: Path | None = None
    """PNG of the real score per iteration, one line per run (default: no plot)."""
    previous: Path | None = None
    """An earlier ``--out`` of this script whose runs join the table first (their run directories may be gone); a
    run directory named both there and in ``--run-dirs`` is read again from its directory."""


def run_row(run_dir: Path, final_test: Path | None) -> dict:
    """One run's seed, stage minutes, per-iteration scores and final test, from the files named in the module doc.

    Raises:
        FileNotFoundError: a run has no pipeline.json or iterations/scores.json (it has not finished its loop).
        ValueError: the final test scored another number of episodes than its ``n`` says.
    """
    for name in ("pipeline.json", "iterations/scores.json", "config.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing: run pipeline.py --iterations N on {run_dir} first")
    pipeline = json.loads((run_dir / "pipeline.json").read_text())
    stages = {name: s["seconds"] / 60.0 for name, s in pipeline["stages"].items()}
    seeds = recorded_seeds(run_dir)
    row = {
        "run_dir": str(run_dir),
        "preset": pipeline.get("preset"),
        "seed": seeds.get("dream"),
        "minutes": stages,
        "minutes_total": sum(stages.values()),
        "skipped": [name for name, s in pipeline["stages"].items() if s["status"].startswith("skipped")],
        "iteration0_100": pipeline.get("score"),
        "collect_seed": seeds.get("collect"),
        "iterations": json.loads((run_dir / "iterations" / "scores.json").read_text()),
    }
    if final_test is not None:
        res = json.loads(final_test.read_text())
        rets = np.array([e["return"] for e in res["episodes"]])
        if len(rets) != res["n"]:
            raise ValueError(f"{final_test}: {len(rets)} episodes, but n says {res['n']}")
        row["final_test"] = {
            "path": str(final_test),
            **results_plan(res),
            **{k: res[k] for k in ("mean", "ci95", "min", "max")},
            "median": float(np.median(rets)),
            "above_800": int((rets > 800).sum()),
            "seeds": [int(e["seed"]) for e in res["episodes"]],
        }
    return row


def summary(rows: list[dict]) -> dict:
    """Mean over runs of each run's final 100-episode mean, with the 95 % interval over runs (None below two)."""
    finals = np.array([r["final_test"]["mean"] for r in rows if "final_test" in r])
    if len(finals) == 0:
        return {"runs": 0}
    return {
        "runs": len(finals),
        "mean_of_means": float(finals.mean()),
        "ci95_over_runs": ci95(finals) if len(finals) > 1 else None,
        "min": float(finals.min()),
        "max": float(finals.max()),
    }


def plot(rows: list[dict], path: Path) -> None:
    """Real score (mean +- 95 % interval) per iteration, one line per run, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for r in rows:
        its = r["iterations"]
        x = [i["iteration"] for i in its]
        ax.errorbar(
            x,
            [i["mean"] for i in its],
            yerr=[i["ci95"] or 0.0 for i in its],
            marker="o",
            capsize=3,
            label=f"seed {r['seed']}",
        )
        if "final_test" in r:
            ft = r["final_test"]
            ax.errorbar([x[-1] + 0.15], [ft["mean"]], yerr=[ft["ci95"]], marker="s", color="k", capsize=3)
    ax.set_xlabel("Sim2Real2Sim iteration (squares: the last controller on 100 tracks)")
    ax.set_ylabel("real score")
    ax.set_xticks(sorted({i["iteration"] for r in rows for i in r["iterations"]}))
    ax.axhline(900, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(args: Args) -> dict:
    if args.final_tests and len(args.final_tests) != len(args.run_dirs):
        raise SystemExit(
            f"--final-tests has {len(args.final_tests)} files for {len(args.run_dirs)} --run-dirs: give one per run"
        )
    if args.previous is not None and not args.previous.is_file():
        raise SystemExit(f"--previous {args.previous} does not exist: give an earlier --out of this script")
    finals: list[Path | None] = list(args.final_tests) or [None] * len(args.run_dirs)
    rows = [run_row(d, f) for d, f in zip(args.run_dirs, finals, strict=True)]
    if args.previous is not None:
        fresh = {r["run_dir"] for r in rows}
        old = [r for r in json.loads(args.previous.read_text())["runs"] if r["run_dir"] not in fresh]
        rows = old + rows
    report = {"runs": rows, "summary": summary(rows)}
    for r in rows:
        its = "  ".join(f"it{i['iteration']} {i['mean']:.1f}+-{i['ci95'] or 0:.1f}" for i in r["iterations"])
        ft = r.get("final_test")
        final = f"  final {ft['mean']:.1f}+-{ft['ci95']:.1f} (n {ft['n']})" if ft else ""
        print(f"seed {r['seed']}: {r['minutes_total']:.1f} min (skipped: {r['skipped'] or 'none'})  {its}{final}")
    print("summary:", report["summary"])
    if args.out is not None:
        from worldmodels.metrics_log import write_json

        write_json(args.out, report)
        print(f"-> {args.out}")
    if args.plot is not None:
        plot(rows, args.plot)
        print(f"-> {args.plot}")
    return report


if __name__ == "__main__":
    main(tyro.cli(Args))
