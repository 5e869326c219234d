"""The whole paper pipeline on one run directory: collect -> vae -> rnn -> dream -> test.

Finished stages are skipped; an interrupted one resumes from its last checkpoint (each stage resumes
by itself). Ends with a table of per-stage wall times and the real-environment score.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from worldmodels import stages
from worldmodels.config import Preset, record_config
from worldmodels.diagnostics import delusion_text
from worldmodels.evaluate import ci95
from worldmodels.metrics_log import write_json
from worldmodels.run_dir import env_spec


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _earlier_seconds(run_dir: Path, preset_name: str) -> dict[str, float]:
    """Stage name -> wall seconds (> 0) of an earlier ``pipeline.json`` of the same preset in ``run_dir`` ({} when
    there is none, or it is another preset's), so a resumed run reports what its finished stages took then.

    An interrupted invocation has written the stages it finished (the file is rewritten after every stage); the
    seconds of a stage it was interrupted in are not counted (that stage's rerun counts its own part only). A file
    that is not such a report (not JSON, or edited into another shape) is named in one line and not used: the
    stages it would have timed are reported "skipped (done)", and the run's report replaces it."""
    path = run_dir / "pipeline.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = None
    stages = old.get("stages") if isinstance(old, dict) else None
    if not isinstance(stages, dict):
        print(f"{path} is not a pipeline report (JSON with a 'stages' object): its stage times are not reused, and "
              "this run's report replaces it")  # fmt: skip
        return {}
    if old.get("preset") != preset_name:
        return {}
    return {
        name: float(row["seconds"])
        for name, row in stages.items()
        if isinstance(row, dict) and isinstance(row.get("seconds"), int | float) and row["seconds"] > 0
    }


def run_pipeline(run_dir: Path, preset: Preset, iterations: int | None = None) -> dict:
    """Run every stage of ``preset`` in order on ``run_dir``, then ``iterations`` rounds of the Sim2Real2Sim
    loop (``stages.run_iteration``; default ``preset.iterate.iterations``).

    Returns:
        dict with ``stages`` (name -> {"status", "seconds"}), ``score`` (the test summary) and, with
        iterations, ``iterations`` (per-iteration real scores; see ``plot_iterations``). Also written to
        ``RUN_DIR/pipeline.json``, after every stage: a stage finished by an earlier invocation of the same preset is
        "done before" with the wall seconds it took then ("skipped (done)", 0 s, when no earlier invocation timed
        it, e.g. data copied in), so a run resumed across sessions still reports its stage times.
    """
    iterations = preset.iterate.iterations if iterations is None else iterations
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_config(run_dir, "preset", preset.name)
    plan = [
        (
            "collect",
            lambda: stages.collect_done(run_dir, preset.collect),
            lambda: stages.run_collect(run_dir, preset.collect),
        ),
        ("vae", lambda: stages.vae_done(run_dir, preset.vae), lambda: stages.run_vae(run_dir, preset.vae)),
        ("rnn", lambda: stages.rnn_done(run_dir, preset.rnn), lambda: stages.run_rnn(run_dir, preset.rnn)),
        (
            "dream",
            lambda: stages.dream_done(run_dir, preset.dream, preset.actor_critic),
            lambda: stages.run_dream(run_dir, preset.dream, preset.actor_critic),
        ),
        ("test", lambda: stages.test_done(run_dir, preset.test), lambda: stages.run_test(run_dir, preset.test)),
    ]
    earlier = _earlier_seconds(run_dir, preset.name)
    report: dict = {"preset": preset.name, "stages": {}}
    for name, done, run in plan:
        if done():
            before = earlier.get(name, 0.0)
            status = "done before" if before > 0 else "skipped (done)"
            report["stages"][name] = {"status": status, "seconds": before}
            continue
        print(f"== {name} ==")
        t0 = time.perf_counter()
        run()
        report["stages"][name] = {"status": "ran", "seconds": time.perf_counter() - t0}
        write_json(run_dir / "pipeline.json", report)  # a later resume keeps this stage's time
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    report["score"] = {k: results.get(k) for k in ("mean", "ci95", "std", "min", "max", "n", "reward_delusion")}
    if report["score"]["ci95"] is None:  # a results.json written before the interval was recorded
        report["score"]["ci95"] = ci95(np.array([ep["return"] for ep in results["episodes"]]))
    if iterations:
        t0 = time.perf_counter()
        before = sum((run_dir / "iterations" / str(k) / "results.json").is_file() for k in range(1, iterations + 1))
        report["iterations"] = _iterate(run_dir, preset, iterations, results)
        status = f"{iterations - before} ran" + (f", {before} done before" if before else "")
        seconds = time.perf_counter() - t0 + (earlier.get("iterations", 0.0) if before else 0.0)
        report["stages"]["iterations"] = {"status": status, "seconds": seconds}
    write_json(run_dir / "pipeline.json", report)

    table = Table(title=f"World Models pipeline, preset {preset.name!r}, {run_dir}")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("wall time", justify="right")
    for name, row in report["stages"].items():
        table.add_row(name, row["status"], _duration(row["seconds"]))
    total = sum(r["seconds"] for r in report["stages"].values())
    table.add_row("total", "", _duration(total))
    s = report["score"]
    Console().print(table)
    print(
        f"real {env_spec(run_dir).gym_id} score over {s['n']} episodes: {s['mean']:.1f} +- {s['std']:.1f} "
        f"(std; 95 % CI of the mean +- {s['ci95']:.1f}; min {s['min']:.1f}, max {s['max']:.1f})"
    )
    if iterations:
        table = Table(title="Sim2Real2Sim iterations (same first test seeds)")
        cols = ("iteration", "episodes", "real score", "reward delusion", "on-policy episodes", "its on-policy return")
        for col in cols:
            table.add_column(col, justify="right")
        for row in report["iterations"]:
            own = row.get("onpolicy")
            table.add_row(
                str(row["iteration"]),
                str(row["n"]),
                f"{row['mean']:.1f} +- {row['std']:.1f}",
                delusion_text(row["reward_delusion"]),
                str(row["onpolicy_episodes"]),
                "-" if not own or own["mean"] is None else f"{own['mean']:.1f} +- {own['ci95'] or 0:.1f} ({own['n']})",
            )
        Console().print(table)
        print(f"-> {run_dir / 'iterations' / 'scores.png'}")
        chosen = json.loads((run_dir / "iterations" / "selection.json").read_text())
        if chosen["iteration"] is not None:
            print(
                f"kept by its own on-policy episodes: iteration {chosen['iteration']} (mean "
                f"{chosen['onpolicy']['mean']:.1f} over {chosen['onpolicy']['n']} episodes, of iterations "
                f"{', '.join(str(c['iteration']) for c in chosen['candidates'])}); test it: {chosen['command']}"
                + ("" if chosen["agent_kept"] else " (its agent was not kept: the loop began before snapshots)")
            )
    return report


def _iterate(run_dir: Path, preset: Preset, iterations: int, first: dict) -> list[dict]:
    """Run the loop's iterations; returns one row per iteration (0 = the pipeline's own test, restricted to
    the same first ``iterate.test_episodes`` seeds) and writes ``iterations/scores.json`` and ``scores.png``."""
    n = preset.iterate.test_episodes
    rets = np.array([e["return"] for e in first["episodes"][:n]])
    rows = [
        {
            "iteration": 0,
            "n": len(rets),
            "mean": float(rets.mean()),
            "ci95": ci95(rets),
            "std": float(rets.std()),
            "reward_delusion": first.get("reward_delusion"),
            "onpolicy_episodes": 0,
        }
    ]
    out = run_dir / "iterations"
    for k in range(1, iterations + 1):
        res = stages.run_iteration(run_dir, preset, k)
        rows[k - 1]["onpolicy"] = _own_entry(stages.onpolicy_returns(run_dir, preset, k))  # iteration k - 1's
        rows.append(
            {
                "iteration": k,
                "n": res["n"],
                "mean": res["mean"],
                "ci95": res.get("ci95"),
                "std": res["std"],
                "reward_delusion": res.get("reward_delusion"),
                "onpolicy_episodes": k * preset.iterate.episodes,
            }
        )
        write_json(out / "scores.json", rows)
        plot_iterations(rows, out / "scores.png")
    if preset.iterate.validate_last:  # the last controller's own episodes: iteration N + 1's first step
        print(f"== the last controller's own episodes (validate_last): iteration {iterations + 1}'s first step ==")
        rows[-1]["onpolicy"] = _own_entry(stages.collect_onpolicy(run_dir, preset, iterations + 1))
        write_json(out / "scores.json", rows)
        plot_iterations(rows, out / "scores.png")
    write_json(run_dir / "iterations" / "selection.json", select_iteration(run_dir, rows))
    return rows


def _own_entry(onpolicy: dict) -> dict:
    """A row's ``onpolicy`` entry: the summary of ``stages.onpolicy_returns`` without its per-episode lists."""
    return {key: onpolicy[key] for key in ("n", "mean", "ci95", "exploration")}


def _with_own_episodes(rows: list[dict]) -> list[dict]:
    """The rows whose controller has a mean return on its own on-policy episodes."""
    return [r for r in rows if r.get("onpolicy") and r["onpolicy"]["mean"] is not None]


def select_iteration(run_dir: Path, rows: list[dict]) -> dict:
    """The loop's controller to keep, chosen by the mean return of its own on-policy episodes (the next
    iteration's collection: ``stages.onpolicy_returns``), not by a test score; the last iteration's controller
    is a candidate only when ``iterate.validate_last`` collected its episodes.

    Args:
        run_dir: the run directory (for the command that tests the choice).
        rows: ``_iterate``'s rows; those with an ``onpolicy`` entry are the candidates.

    Returns:
        dict with ``iteration`` (None without candidates), ``onpolicy`` (its entry), ``test`` (its real test
        score on the loop's test seeds, for reference: not used to choose), ``agent`` (the kept agent's
        directory, ``stages.agent_snapshot_dir``), ``command`` (a full test of it) and ``candidates``.
    """
    candidates = _with_own_episodes(rows)
    if not candidates:
        return {"iteration": None, "candidates": []}
    best = max(candidates, key=lambda r: r["onpolicy"]["mean"])
    agent = stages.agent_snapshot_dir(run_dir, best["iteration"])
    return {
        "iteration": best["iteration"],
        "by": "mean return of the controller's own on-policy episodes (collection seeds; exploration: "
        f"{best['onpolicy'].get('exploration', 'not recorded')})",
        "onpolicy": best["onpolicy"],
        "test": {"n": best["n"], "mean": best["mean"], "ci95": best["ci95"]},
        "agent": str(agent),
        "agent_kept": agent.is_dir(),
        "command": f"uv run test_agent.py --run-dir {agent} --out {agent.parent / 'test' / 'results.json'}",
        "candidates": [{"iteration": r["iteration"], **r["onpolicy"]} for r in candidates],
    }


def plot_iterations(rows: list[dict], path: Path) -> None:
    """Real score (mean +- std) per Sim2Real2Sim iteration beside the mean return of each controller's own
    on-policy episodes (+- the 95 % interval; ``select_iteration`` keeps the highest), and the reward delusion,
    as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].errorbar(it, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o", capsize=3,
                     label="real test (+- std)")  # fmt: skip
    own = _with_own_episodes(rows)
    if own:
        axes[0].errorbar([r["iteration"] for r in own], [r["onpolicy"]["mean"] for r in own],
                         yerr=[r["onpolicy"]["ci95"] or 0.0 for r in own], marker="s", capsize=3, linestyle="--",
                         label="its on-policy episodes (+- 95 % CI)")  # fmt: skip
        axes[0].legend(fontsize=7)
    axes[0].set_title("real score")
    axes[1].plot(it, [np.nan if r["reward_delusion"] is None else r["reward_delusion"] for r in rows], marker="o")
    axes[1].set_title("reward delusion")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.set_xticks(it)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
