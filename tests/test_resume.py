"""Kill -9 in the middle of a stage, run the same command again: it ends exactly where an uninterrupted run
ends (same episodes, same arrays, same CMA-ES state, each metrics row once), for collection, V, M, CMA-ES and
a Sim2Real2Sim iteration, each at the smoke preset's own sizes. (Kills at random instants inside the
dataset's writes: tests/test_data.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worldmodels import run_dir
from worldmodels.data import open_dataset

ROOT = Path(__file__).resolve().parents[1]


def script(name, *args):
    """The command line of a project script at the smoke preset: ``script(NAME, [FLAGS...,] RUN_DIR)``."""
    *flags, run_dir = args
    return [sys.executable, str(ROOT / name), "--preset", "smoke", "--run-dir", str(run_dir), *flags]


def ok(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def killed_when(cmd, ready):
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds, and check that it was still running then."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"{cmd[1]} finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def same_arrays(load, a, b, step):
    """The modules that ``load`` (a ``run_dir`` loader) restores from runs ``a`` and ``b`` are equal to the bit,
    both at checkpoint ``step``."""
    import jax

    (ma, meta_a), (mb, meta_b) = load(a), load(b)
    assert meta_a["step"] == meta_b["step"] == step
    for x, y in zip(jax.tree.leaves(ma), jax.tree.leaves(mb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def rows(path, key):
    return [json.loads(line)[key] for line in path.read_text().splitlines()]


def es_state(run_dir):
    with np.load(run_dir / "controller" / "es_state.npz") as f:
        return {k: f[k] for k in f.files}


def generation(run_dir):
    """The CMA-ES state's generation, 0 while there is none (or it is being written)."""
    try:
        return int(es_state(run_dir)["generation"])
    except (OSError, KeyError, ValueError):
        return 0


def same_es_state(a, b):
    sa, sb = es_state(a), es_state(b)
    assert set(sa) == set(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def counted_episodes(path):
    try:
        return json.loads((path / "metadata.json").read_text())["total_episodes"]
    except (OSError, KeyError, ValueError):
        return 0


@pytest.mark.heavy(seconds=385)
def test_killed_stages_resume_to_the_uninterrupted_result(tmp_path):
    from worldmodels.data import load_episodes

    a, b = tmp_path / "a", tmp_path / "b"

    # Collection (4 episodes, 2 workers), killed once the first episode is stored.
    ok(script("collect_data.py", a))
    killed_when(script("collect_data.py", b), lambda: counted_episodes(b / "data" / "brownian") >= 1)
    ok(script("collect_data.py", b))
    for ea, eb in zip(load_episodes(a / "data" / "brownian"), load_episodes(b / "data" / "brownian"), strict=True):
        assert ea.seed == eb.seed
        np.testing.assert_array_equal(ea.observations, eb.observations)
        np.testing.assert_array_equal(ea.actions, eb.actions)

    # V (20 updates, a checkpoint every 10), then M on it (10 updates, every 5): each killed after its first
    # checkpoint, resumed, and compared with the uninterrupted run.
    for name, every, steps, load in (("vae", 10, 20, run_dir.load_vae), ("rnn", 5, 10, run_dir.load_dynamics)):
        ok(script(f"train_{name}.py", a))
        killed_when(script(f"train_{name}.py", b), lambda n=name, e=every: (b / n / "ckpt" / str(e)).is_dir())
        ok(script(f"train_{name}.py", b))
        same_arrays(load, a, b, steps)
        assert rows(b / name / "metrics.jsonl", "step") == rows(a / name / "metrics.jsonl", "step")

    # CMA-ES: 3 generations, the state saved every generation; killed after the first.
    ok(script("train_dream.py", a))
    killed_when(script("train_dream.py", b), lambda: generation(b) >= 1)
    ok(script("train_dream.py", b))
    same_es_state(a, b)
    assert rows(b / "controller" / "metrics.jsonl", "generation") == [1, 2, 3]
    assert rows(b / "controller" / "metrics.jsonl", "best") == rows(a / "controller" / "metrics.jsonl", "best")

    # The pipeline with one Sim2Real2Sim iteration (real test; on-policy data from the controller; M fine-tuned to
    # 15 updates on the recipe plus that data; CMA-ES continued to generation 5; real test), killed between the
    # new generations, after the on-policy collection and the fine-tuning (a killed collection: above). The smoke
    # controller has (32 + 96) x 3 + 3 = 387 parameters, above pycma's TPA switch at 300: the path that crashed
    # the README's command when CMA-ES resumed at the first iteration.
    loop = ("pipeline.py", "--iterations", "1")
    ok(script(*loop, a))
    scores = json.loads((a / "iterations" / "scores.json").read_text())
    assert [r["iteration"] for r in scores] == [0, 1] and scores[1]["onpolicy_episodes"] == 2
    assert (a / "iterations" / "scores.png").is_file()
    # Each iteration's agent is kept (M and C copied at that iteration's steps, V linked) and loads as a run
    # directory; iteration 1's is the run's own agent now, iteration 0's the one the loop began from.
    kept = {k: a / "iterations" / str(k) / "agent" for k in (0, 1)}
    same_arrays(run_dir.load_controller, a, kept[1], 5)
    same_arrays(run_dir.load_dynamics, a, kept[1], 15)
    parts = json.loads((kept[0] / "pretrained.json").read_text())["parts"]
    assert parts["controller"]["step"] == 3 and parts["rnn"]["step"] < 15 and (kept[0] / "vae").is_symlink()
    assert run_dir.frozen(kept[0]) and run_dir.load_agent(kept[0]).controller is not None
    # ... and the controller to keep is chosen by its own on-policy episodes: iteration 1's collected iteration 0's,
    # and the loop ended by collecting iteration 1's (iterate.validate_last), 2 each.
    choice = json.loads((a / "iterations" / "selection.json").read_text())
    own = [scores[k]["onpolicy"]["mean"] for k in (0, 1)]
    assert [c["iteration"] for c in choice["candidates"]] == [0, 1] and choice["agent_kept"]
    assert choice["iteration"] == int(np.argmax(own)) and choice["onpolicy"]["n"] == 2
    assert open_dataset(a / "data" / "controller").total_episodes == 4
    assert json.loads((a / "config.json").read_text())["rnn"]["dataset"].endswith("controller:1")
    state = es_state(a)
    assert str(state["adaptation"]) == "tpa" and state["mean"].shape == (387,)
    # The loop's on-policy episodes as a validation set (experiments/onpolicy_validation.py): iteration 0's controller
    # collected iteration 1's 2 episodes on collection seeds; the run is only read.
    cmd = [sys.executable, str(ROOT / "experiments" / "onpolicy_validation.py"), "--run-dirs", str(a)]
    table_path = tmp_path / "validation.json"
    ok([*cmd, "--out", str(table_path)])
    table = json.loads(table_path.read_text())[str(a)]
    assert [r["iteration"] for r in table["rows"]] == [0] and table["rows"][0]["onpolicy_n"] == 2
    assert table["rows"][0]["test_mean"] == scores[0]["mean"] and table["picked_iteration"] == 0
    assert table["rows"][0]["onpolicy_mean"] == pytest.approx(own[0])
    # Each iteration's controller re-scored in the last M's dream (experiments/dream_pick.py), the run only read.
    before = sorted(str(f.relative_to(a)) for f in a.rglob("*"))
    cmd = [sys.executable, str(ROOT / "experiments" / "dream_pick.py"), "--run-dirs", str(a), "--rollouts", "4"]
    ok([*cmd, "--out", str(tmp_path / "pick.json"), "--scratch", str(tmp_path / "scratch")])
    pick = json.loads((tmp_path / "pick.json").read_text())[str(a)]
    assert [r["iteration"] for r in pick["rows"]] == [0, 1] and pick["last"]["iteration"] == 1
    assert pick["pick"]["iteration"] == int(np.argmax([r["dream"] for r in pick["rows"]]))
    assert [r["test"] for r in pick["rows"]] == [scores[k]["mean"] for k in (0, 1)]
    assert sorted(str(f.relative_to(a)) for f in a.rglob("*")) == before
    # The seeds report (experiments/recipe_seeds.py) reads the run's stage times and scores; here the last
    # iteration's own test stands in for the final 100-episode test.
    final = a / "iterations" / "1" / "results.json"
    cmd = [sys.executable, str(ROOT / "experiments" / "recipe_seeds.py"), "--run-dirs", str(a)]
    report_path, plot_path = tmp_path / "seeds.json", tmp_path / "seeds.png"
    ok([*cmd, "--final-tests", str(final), "--out", str(report_path), "--plot", str(plot_path)])
    report = json.loads(report_path.read_text())
    (row,) = report["runs"]
    assert row["seed"] == 0 and [r["iteration"] for r in row["iterations"]] == [0, 1]
    assert row["final_test"]["mean"] == pytest.approx(json.loads(final.read_text())["mean"])
    assert report["summary"]["runs"] == 1 and plot_path.is_file()
    # An earlier report's runs (directories gone) join a new one's table; a run read again replaces its old row.
    gone = {**row, "run_dir": "runs/gone", "seed": 7, "final_test": {**row["final_test"], "mean": 100.0}}
    (tmp_path / "old.json").write_text(json.dumps({"runs": [gone, row], "summary": {}}))
    ok([*cmd, "--final-tests", str(final), "--previous", str(tmp_path / "old.json"), "--out", str(report_path)])
    joined = json.loads(report_path.read_text())
    assert [r["seed"] for r in joined["runs"]] == [7, 0] and joined["summary"]["runs"] == 2
    assert 100.0 in (joined["summary"]["min"], joined["summary"]["max"])
    killed_when(script(*loop, b), lambda: generation(b) >= 4)
    ok(script(*loop, b))
    same_arrays(run_dir.load_dynamics, a, b, 15)
    same_es_state(a, b)
    assert rows(b / "controller" / "metrics.jsonl", "generation") == [1, 2, 3, 4, 5]
    assert rows(b / "rnn" / "metrics.jsonl", "step") == rows(a / "rnn" / "metrics.jsonl", "step")
    for k in (0, 1):  # the resumed loop kept the same agents
        same_arrays(run_dir.load_controller, kept[k], b / "iterations" / str(k) / "agent", 3 if k == 0 else 5)
    ra, rb = (json.loads((d / "iterations" / "1" / "results.json").read_text()) for d in (a, b))
    assert [e["return"] for e in ra["episodes"]] == [e["return"] for e in rb["episodes"]]
