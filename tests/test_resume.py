"""Kill -9 at a point between checkpoints, run the same command again: the stage ends exactly where an
uninterrupted run ends (same arrays, same CMA-ES state, each metrics row once), for V, M and CMA-ES."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from worldmodels import run_dir

ROOT = Path(__file__).resolve().parents[1]


def script(name, run_dir, *args):
    return [sys.executable, str(ROOT / name), "--preset", "smoke", "--run-dir", str(run_dir), *args]


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


def test_killed_stages_resume_to_the_uninterrupted_result(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ok(script("collect_data.py", a))
    b.mkdir()
    os.symlink(a / "data", b / "data")

    # V (40 updates, a checkpoint every 10), then M on it (40 updates, every 5; b's V is a's to the bit): each
    # killed after its first checkpoint, resumed, and compared with the uninterrupted run.
    for name, every, load in (("vae", 10, run_dir.load_vae), ("rnn", 5, run_dir.load_dynamics)):
        stage = (f"train_{name}.py", "--steps", "40", "--checkpoint-every", str(every))
        ok(script(stage[0], a, *stage[1:]))
        killed_when(script(stage[0], b, *stage[1:]), lambda n=name, e=every: (b / n / "ckpt" / str(e)).is_dir())
        ok(script(stage[0], b, *stage[1:]))
        same_arrays(load, a, b, 40)
        assert rows(b / name / "metrics.jsonl", "step") == rows(a / name / "metrics.jsonl", "step")

    # CMA-ES: 10 generations, state saved every generation; killed after the second.
    def generation(run_dir):
        try:
            with np.load(run_dir / "controller" / "es_state.npz") as f:
                return int(f["generation"])
        except (OSError, KeyError, ValueError):
            return 0

    dream = ("--generations", "10", "--checkpoint-every", "1")
    ok(script("train_dream.py", a, *dream))
    killed_when(script("train_dream.py", b, *dream), lambda: generation(b) >= 2)
    ok(script("train_dream.py", b, *dream))
    with np.load(a / "controller" / "es_state.npz") as fa, np.load(b / "controller" / "es_state.npz") as fb:
        assert set(fa.files) == set(fb.files)
        for k in fa.files:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    ma, mb = (rows(d / "controller" / "metrics.jsonl", "best") for d in (a, b))
    assert rows(b / "controller" / "metrics.jsonl", "generation") == list(range(1, 11)) and ma == mb
