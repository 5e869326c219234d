"""The shipped agent in pretrained/carracing loads, drives a short real episode, and is never written to."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained" / "carracing"


def test_pretrained_agent_drives_a_short_real_episode_read_only(tmp_path):
    def snapshot():
        return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in PRETRAINED.rglob("*") if f.is_file()}

    record = json.loads((PRETRAINED / "pretrained.json").read_text())
    assert set(record["parts"]) == {"vae", "rnn", "controller"} and record["score_command"]
    before = snapshot()
    out = tmp_path / "eval" / "results.json"
    cmd = [sys.executable, "test_agent.py", "--run-dir", str(PRETRAINED), "--episodes", "1", "--max-steps", "120"]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["n"] == 1 and results["episodes"][0]["steps"] == 120
    # A good driver collects tiles from the start: 120 steps of a policy that sat still or left the road
    # would score about -12 (0.1 per frame) or less.
    assert results["episodes"][0]["return"] > 0
    assert snapshot() == before
