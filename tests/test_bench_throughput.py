"""Subprocess smoke test of ``benchmarks/bench_throughput.py --small``: it runs and writes every figure."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FIGURES = [
    "vae_train_images_per_s",
    "vae_step_s",
    "vae_compile_s",
    "rnn_train_seq_steps_per_s",
    "rnn_step_s",
    "rnn_compile_s",
    "rnn_ensemble_step_s",
    "rnn_ensemble_seq_steps_per_s",
    "rnn_ensemble_speedup",
    "encode_frames_per_s",
    "eval_env_steps_per_s_1_worker",
    "eval_env_steps_per_s_all_workers",
    "eval_env_steps_per_s_excl_startup_1_worker",
    "eval_env_steps_per_s_excl_startup_all_workers",
    "eval_speedup_all_over_1",
    "eval_speedup_excl_startup_all_over_1",
    "eval_cpu_ms_per_step_1_worker",
    "eval_cpu_ms_per_step_all_workers",
    "eval_cpu_bound_speedup_all_over_1",
    "env_only_env_steps_per_s_1_worker",
    "env_only_env_steps_per_s_all_workers",
    "env_only_speedup_all_over_1",
    "collect_env_steps_per_s_1_worker",
    "collect_env_steps_per_s_all_workers",
    "collect_speedup_all_over_1",
    "eval_env_steps_1_worker",
    "eval_env_steps_all_workers",
    "collect_env_steps_1_worker",
    "collect_env_steps_all_workers",
    "total_s",
]


@pytest.mark.heavy(seconds=105)
def test_small_run_writes_every_figure(tmp_path):
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_throughput.py"), "--small", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["small"] is True
    assert result["cpu_count"] >= 1 and result["jax_backend"] and result["device"]
    missing = [k for k in FIGURES if k not in result]
    assert not missing, f"missing figures {missing}"
    # Every rate, time and ratio the benchmark reports is a positive finite number (no speed targets here).
    measured = [
        k for k in result if k.endswith(("_per_s", "_s", "_over_1")) or k.startswith(("eval_env", "collect_env"))
    ]
    bad = {k: result[k] for k in measured if not (isinstance(result[k], int | float) and math.isfinite(result[k]))}
    bad.update({k: result[k] for k in measured if k not in bad and result[k] <= 0})
    assert not bad, f"non-positive or non-finite figures: {bad}"
    # The table names each unit.
    for unit in ("images/s", "sequence-steps/s", "frames/s", "env steps/s"):
        assert unit in proc.stdout
    assert result["rnn_ensemble_speedup"] > 0 and "4 such M updated at once" in proc.stdout
