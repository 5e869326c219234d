"""A battery of bad inputs, each refused before anything is written, with a message naming the flag or file and
no traceback. All trials run in this one process (each script's ``main`` with its own argv), so the battery
costs seconds, not a process start per trial."""

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import jax.random as jr
import pytest

from worldmodels import checkpoint
from worldmodels.models import MDNRNN, ConvVAE
from worldmodels.models.registry import build_controller, controller_hparams

ROOT = Path(__file__).resolve().parents[1]

# (script, arguments after --run-dir R, a text the message must hold). R is a run with a V, an M and a C but no data.
TRIALS = [
    # collect_data.py
    ("collect_data.py", ["--episodes", "0"], "collect.episodes must be >= 1"),
    ("collect_data.py", ["--episodes", "-3"], "collect.episodes must be >= 1"),
    ("collect_data.py", ["--max-steps", "0"], "collect.max_steps must be >= 1"),
    ("collect_data.py", ["--workers", "-1"], "collect.workers must be >= 0"),
    ("collect_data.py", ["--policy", "nosuch"], "nosuch"),
    ("collect_data.py", ["--mix", "brownian:0"], "positive"),
    ("collect_data.py", ["--mix", "brownian:x"], "not a number"),
    ("collect_data.py", ["--mix", "brownian:2,brownian:3"], "appears twice"),
    ("collect_data.py", ["--mix", "nosuch:3"], "nosuch"),
    ("collect_data.py", ["--mix", "brownian:2.5"], "brownian"),
    ("collect_data.py", ["--policy", "heuristic", "--mix", "brownian:2"], "--policy"),
    ("collect_data.py", ["--brownian-sigma", "-1"], "collect.brownian_sigma"),
    ("collect_data.py", ["--episodes", "abc"], "--episodes"),
    ("collect_data.py", ["--preset", "nosuch"], "unknown preset 'nosuch'"),
    # train_vae.py
    ("train_vae.py", ["--steps", "0"], "vae.steps must be >= 1"),
    ("train_vae.py", ["--steps", "-5"], "vae.steps must be >= 1"),
    ("train_vae.py", ["--batch-size", "0"], "vae.batch_size must be >= 1"),
    ("train_vae.py", ["--learning-rate", "0"], "vae.learning_rate must be > 0"),
    ("train_vae.py", ["--learning-rate", "-1e-3"], "vae.learning_rate must be > 0"),
    ("train_vae.py", ["--z-size", "0"], "vae.z_size must be >= 1"),
    ("train_vae.py", ["--kl-tolerance", "-1"], "vae.kl_tolerance"),
    ("train_vae.py", ["--checkpoint-every", "0"], "vae.checkpoint_every must be >= 1"),
    ("train_vae.py", ["--log-every", "0"], "vae.log_every must be >= 1"),
    ("train_vae.py", ["--z-size", "64"], "data/brownian/metadata.json"),  # inputs first; with data see test_scripts
    ("train_vae.py", ["--dataset", "nosuch"], "data/nosuch/metadata.json"),
    ("train_vae.py", ["--dataset", "brownian:0"], "positive"),
    ("train_vae.py", ["--dataset", ""], "empty dataset recipe"),
    ("train_vae.py", ["--steps", "1.5"], "--steps"),
    # train_rnn.py
    ("train_rnn.py", ["--steps", "0"], "rnn.steps must be >= 1"),
    ("train_rnn.py", ["--batch-size", "0"], "rnn.batch_size must be >= 1"),
    ("train_rnn.py", ["--seq-len", "0"], "rnn.seq_len must be >= 1"),
    ("train_rnn.py", ["--hidden-size", "0"], "rnn.hidden_size must be >= 1"),
    ("train_rnn.py", ["--num-mixtures", "0"], "rnn.num_mixtures must be >= 1"),
    ("train_rnn.py", ["--holdout", "1.5"], "rnn.holdout"),
    ("train_rnn.py", ["--holdout", "-0.1"], "rnn.holdout"),
    ("train_rnn.py", ["--learning-rate", "0"], "rnn.learning_rate must be > 0"),
    ("train_rnn.py", ["--grad-clip", "-1"], "rnn.grad_clip"),
    ("train_rnn.py", ["--reward-weight", "-1"], "rnn.reward_weight"),
    ("train_rnn.py", ["--checkpoint-every", "0"], "rnn.checkpoint_every must be >= 1"),
    ("train_rnn.py", ["--hidden-size", "128"], "data/brownian/metadata.json"),
    ("train_rnn.py", ["--dataset", "nosuch"], "data/nosuch/metadata.json"),
    # train_dream.py
    ("train_dream.py", ["--population", "1"], "dream.population must be >= 2"),
    ("train_dream.py", ["--population", "0"], "dream.population must be >= 2"),
    ("train_dream.py", ["--rollouts", "0"], "dream.rollouts must be >= 1"),
    ("train_dream.py", ["--dream-steps", "0"], "dream.dream_steps must be >= 1"),
    ("train_dream.py", ["--temperature", "0"], "dream.temperature must be > 0"),
    ("train_dream.py", ["--temperature", "-1"], "dream.temperature must be > 0"),
    ("train_dream.py", ["--generations", "0"], "dream.generations must be >= 1"),
    ("train_dream.py", ["--sigma-init", "0"], "dream.sigma_init must be > 0"),
    ("train_dream.py", ["--done-threshold", "0"], "dream.done_threshold"),
    ("train_dream.py", ["--done-threshold", "1.5"], "dream.done_threshold"),
    ("train_dream.py", ["--eval-every", "-1"], "dream.eval_every must be >= 0"),
    ("train_dream.py", ["--eval-episodes", "0"], "dream.eval_episodes must be >= 1"),
    ("train_dream.py", ["--checkpoint-every", "0"], "dream.checkpoint_every must be >= 1"),
    ("train_dream.py", ["--mid-episode-starts", "1.5"], "dream.mid_episode_starts"),
    ("train_dream.py", ["--mid-episode-starts", "-0.5"], "dream.mid_episode_starts"),
    ("train_dream.py", ["--start-pool", "0"], "dream.start_pool must be >= 1"),
    ("train_dream.py", ["--controller-units", "4", "--learner", "actor-critic"], "use --learner cmaes"),
    ("train_dream.py", ["--step-size-adaptation", "foo"], "--step-size-adaptation"),
    ("train_dream.py", ["--population", "many"], "--population"),
    # test_agent.py
    ("test_agent.py", ["--episodes", "0"], "test.episodes must be >= 1"),
    ("test_agent.py", ["--max-steps", "0"], "test.max_steps must be >= 1"),
    ("test_agent.py", ["--workers", "-2"], "test.workers must be >= 0"),
    ("test_agent.py", ["--video-fps", "0"], "test.video_fps must be >= 1"),
    ("test_agent.py", ["--video-episodes", "-1"], "test.video_episodes must be >= 0"),
    ("test_agent.py", ["--action-noise", "-0.1"], "test.action_noise must be >= 0"),
    # pipeline.py
    ("pipeline.py", ["--iterations", "-1"], "--iterations"),
    ("pipeline.py", ["--preset", "nosuch"], "unknown preset 'nosuch'"),
    ("pipeline.py", ["--seed", "-1"], "--seed must be in"),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory with a V (z 32), an M (hidden 96, the smoke preset's) and a C, and no data."""
    run = tmp_path_factory.mktemp("battery") / "run"
    checkpoint.save(run / "vae" / "ckpt", 1, ConvVAE(32, key=jr.key(0)), kind="vae", hparams={"z_size": 32})
    hp = {"z_size": 32, "action_size": 3, "hidden_size": 96, "num_mixtures": 5}
    rnn = MDNRNN(32, 3, 96, 5, key=jr.key(1))
    checkpoint.save(run / "rnn" / "ckpt", 1, rnn, kind="mdnrnn", hparams=hp)
    ctrl = build_controller(**controller_hparams(rnn))
    checkpoint.save(run / "controller" / "ckpt", 1, ctrl, kind="controller", hparams=controller_hparams(rnn))
    (run / "config.json").write_text(json.dumps({"rnn": {"dataset": "brownian"}}))
    return run


def snapshot(root):
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in root.rglob("*") if f.is_file()}


def run_script(script, argv):
    """Run ``script`` in this process with ``argv``; returns (exit code, stdout + stderr)."""
    out = io.StringIO()
    old_argv = sys.argv
    sys.argv = [script, *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):  # sys.exit("message") prints it on the way out
            out.write(exc.code)
    finally:
        sys.argv = old_argv
    return code, out.getvalue()


def test_bad_inputs_are_refused_with_a_named_message_and_nothing_written(trained_run):
    assert len(TRIALS) >= 60
    failures = []
    for script, args, expected in TRIALS:
        before = snapshot(trained_run)
        try:
            code, text = run_script(script, ["--preset", "smoke", "--run-dir", str(trained_run), *args])
        except Exception as err:  # a traceback: the battery's worst outcome
            failures.append(f"{script} {' '.join(args)}: raised {type(err).__name__}: {err}")
            continue
        problems = []
        if code == 0:
            problems.append("exit 0")
        if "Traceback" in text:
            problems.append("traceback")
        if expected not in " ".join(text.split()):  # tyro wraps long messages over lines
            problems.append(f"message lacks {expected!r}")
        if snapshot(trained_run) != before:
            problems.append("the run directory changed")
        if problems:
            failures.append(f"{script} {' '.join(args)}: {', '.join(problems)}; output: {text.strip()[-400:]!r}")
    assert not failures, f"{len(failures)} of {len(TRIALS)} trials failed:\n" + "\n".join(failures)
