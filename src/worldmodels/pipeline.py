"""The whole paper pipeline on one run directory: collect -> vae -> rnn -> dream -> test.

Finished stages are skipped; an interrupted one resumes from its last checkpoint (each stage resumes
by itself). Ends with a table of per-stage wall times and the real-environment score.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from worldmodels import stages
from worldmodels.config import Preset, record_config


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def run_pipeline(run_dir: Path, preset: Preset) -> dict:
    """Run every stage of ``preset`` in order on ``run_dir``.

    Returns:
        dict with ``stages`` (name -> {"status", "seconds"}) and ``score`` (the test summary).
    """
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
            lambda: stages.dream_done(run_dir, preset.dream),
            lambda: stages.run_dream(run_dir, preset.dream, preset.rnn.dataset),
        ),
        ("test", lambda: stages.test_done(run_dir, preset.test), lambda: stages.run_test(run_dir, preset.test)),
    ]
    report: dict = {"preset": preset.name, "stages": {}}
    for name, done, run in plan:
        if done():
            report["stages"][name] = {"status": "skipped (done)", "seconds": 0.0}
            continue
        print(f"== {name} ==")
        t0 = time.perf_counter()
        run()
        report["stages"][name] = {"status": "ran", "seconds": time.perf_counter() - t0}
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    report["score"] = {k: results[k] for k in ("mean", "std", "min", "max", "n")}
    (run_dir / "pipeline.json").write_text(json.dumps(report, indent=2))

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
        f"real CarRacing-v3 score over {s['n']} episodes: {s['mean']:.1f} +- {s['std']:.1f} "
        f"(min {s['min']:.1f}, max {s['max']:.1f})"
    )
    return report
