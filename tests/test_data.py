"""Collection into Minari: real CarRacing-v3 episodes, resume, interruption keeps finished episodes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worldmodels.config import CollectConfig
from worldmodels.data import DatasetError, collect, dataset_dir, load_episodes, open_dataset
from worldmodels.policies import BrownianPolicy, make_policy

ROOT = Path(__file__).resolve().parents[1]


def test_brownian_actions_stay_in_bounds_and_are_smooth():
    policy = BrownianPolicy()
    policy.reset(0)
    actions = np.stack([policy.act() for _ in range(2000)])
    assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1
    assert actions[:, 1:].min() >= 0 and actions[:, 1:].max() <= 1
    # smooth: consecutive actions are strongly correlated, unlike white noise
    assert np.corrcoef(actions[:-1, 0], actions[1:, 0])[0, 1] > 0.3
    with pytest.raises(ValueError, match="unknown collection policy"):
        make_policy(CollectConfig(policy="nope"))


def test_collect_resumes_with_missing_seeds(tmp_path):
    cfg = CollectConfig(episodes=2, max_steps=25, workers=2, seed=7)
    path = collect(tmp_path, cfg)
    first = {ep.seed: ep for ep in load_episodes(path)}
    assert set(first) == {7, 8}
    ep = first[7]
    assert ep.observations.shape == (26, 64, 64, 3) and ep.observations.dtype == np.uint8
    assert ep.actions.shape == (25, 3) and ep.rewards.shape == (25,)
    assert ep.truncations[-1] and not ep.terminations.any()
    collect(tmp_path, CollectConfig(episodes=3, max_steps=25, workers=2, seed=7))
    again = {ep.seed: ep for ep in load_episodes(path)}
    assert set(again) == {7, 8, 9}
    np.testing.assert_array_equal(again[7].observations, first[7].observations)
    # Same seed, same policy noise: a re-collected episode is identical.
    other = collect(tmp_path / "b", CollectConfig(episodes=1, max_steps=25, workers=1, seed=7))
    np.testing.assert_array_equal(load_episodes(other)[0].actions, first[7].actions)


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(DatasetError, match="no dataset at .*data/brownian"):
        open_dataset(dataset_dir(tmp_path))


def test_interrupted_collection_keeps_finished_episodes(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "collect_data.py"),
        "--preset",
        "smoke",
        "--run-dir",
        str(run),
        "--episodes",
        "150",
        "--max-steps",
        "40",
        "--workers",
        "2",
    ]
    import minari  # noqa: F401  (imported before the collection starts: on a loaded machine the import is slow)

    def stored() -> int:
        """Episodes the collection has written so far (0 while the dataset is being created or rewritten)."""
        try:
            return int(json.loads((dataset_dir(run) / "metadata.json").read_text())["total_episodes"])
        except (OSError, ValueError, KeyError):
            return 0

    # Ctrl-C's default action in the child even when this process was started with SIGINT ignored (a background
    # job of a non-interactive shell, e.g. `nohup ... &`): a child that inherits SIG_IGN would never be interrupted.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if stored() >= 2:
            break
        assert not (dataset_dir(run) / "metadata.json").exists() or (dataset_dir(run) / "main_data.hdf5").exists()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err.decode()
    kept = open_dataset(dataset_dir(run)).total_episodes
    assert 2 <= kept < 150
    episodes = load_episodes(dataset_dir(run))  # readable after the interruption
    assert all(ep.length == 40 for ep in episodes)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    seeds = sorted(ep.seed for ep in load_episodes(dataset_dir(run)))
    assert seeds == list(range(150))


@pytest.mark.parametrize("name", ["brownian", "random_controller", "heuristic", "recovery", "aggressive"])
def test_policy_actions_stay_in_the_box_on_the_real_env(name):
    from worldmodels.env import make_env

    env = make_env(150)
    policy = make_policy(CollectConfig(policy=name, recovery_every=20.0))
    obs, _ = env.reset(seed=3)
    policy.reset(3, env)
    actions = []
    for _ in range(150):
        a = policy.act(obs)
        assert a.shape == (3,) and a.dtype == np.float32
        actions.append(a)
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            break
    env.close()
    actions = np.stack(actions)
    assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1
    assert actions[:, 1:].min() >= 0 and actions[:, 1:].max() <= 1
    assert actions.std(axis=0).max() > 0  # it does something


def test_heuristic_drives_along_the_track():
    from worldmodels.diagnostics import off_road
    from worldmodels.env import make_env

    env = make_env(300)
    policy = make_policy(CollectConfig(policy="heuristic"))
    obs, _ = env.reset(seed=11)
    policy.reset(11, env)
    total, frames = 0.0, []
    for _ in range(300):
        obs, reward, term, trunc, _ = env.step(policy.act(obs))
        total += reward
        frames.append(obs)
        if term or trunc:
            break
    env.close()
    assert total > 150  # > 1/4 of a lap's tiles in 300 steps
    assert off_road(np.stack(frames)).mean() < 0.1


def test_off_road_detector_on_the_real_env():
    from worldmodels.diagnostics import off_road
    from worldmodels.env import make_env

    env = make_env(200)
    env.reset(seed=3)
    u = env.unwrapped
    agree = []
    for t in range(200):
        obs, *_ = env.step(np.array([0.0 if t < 60 else 1.0, 0.4, 0.0], np.float32))  # straight, then off
        truth = all(len(w.tiles) == 0 for w in u.car.wheels)
        agree.append(bool(off_road(obs)) == truth)
    env.close()
    assert np.mean(agree) > 0.9


def test_collection_plan_and_policy_seed_blocks():
    from worldmodels.data import collection_plan
    from worldmodels.policies import SEED_BLOCK, seed_offset

    plan = collection_plan(CollectConfig(mix="brownian:3,heuristic:2"))
    assert [(c.policy, c.episodes) for c in plan] == [("brownian", 3), ("heuristic", 2)]
    assert seed_offset("brownian") == 0 and seed_offset("heuristic") == 2 * SEED_BLOCK
    for bad in ("nope:3", "heuristic:2.5"):
        with pytest.raises(ValueError):
            collection_plan(CollectConfig(mix=bad))


def test_controller_policy_acts_within_the_box(tmp_path):
    import jax.numpy as jnp
    import jax.random as jr

    from worldmodels import checkpoint
    from worldmodels.env import make_env
    from worldmodels.models import MDNRNN, ConvVAE, LinearController
    from worldmodels.models.registry import controller_hparams

    vae = ConvVAE(32, key=jr.key(0))
    rnn_hp = {"z_size": 32, "action_size": 3, "hidden_size": 16, "num_mixtures": 2}
    rnn = MDNRNN(**rnn_hp, key=jr.key(1))
    flat = 0.01 * jr.normal(jr.key(2), (LinearController.num_params(32, 16),))
    ctrl = LinearController.from_flat(flat, 32, 16)
    checkpoint.save(tmp_path / "vae" / "ckpt", 1, vae, kind="vae", hparams={"z_size": 32})
    checkpoint.save(tmp_path / "rnn" / "ckpt", 1, rnn, kind="mdnrnn", hparams=rnn_hp)
    checkpoint.save(tmp_path / "controller" / "ckpt", 1, ctrl, kind="controller", hparams=controller_hparams(rnn))
    env = make_env(30)
    policy = make_policy(CollectConfig(policy="controller", controller_noise=0.5), tmp_path)
    obs, _ = env.reset(seed=0)
    policy.reset(0, env)
    actions = []
    for _ in range(30):
        a = policy.act(obs)
        actions.append(a)
        obs, *_ = env.step(a)
    env.close()
    actions = np.stack(actions)
    assert actions.dtype == np.float32 and actions.shape == (30, 3)
    assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1 and actions[:, 1:].min() >= 0
    # the noise is smooth (OU), not white: consecutive steer values correlate
    assert jnp.corrcoef(actions[:-1, 0], actions[1:, 0])[0, 1] > 0.2
    with pytest.raises(ValueError, match="run directory"):
        make_policy(CollectConfig(policy="controller"))
