"""Collection into Minari: real CarRacing-v3 episodes, resume, kill -9 at any instant loses nothing counted (Ctrl-C:
test_scripts.py); mirroring."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldmodels.config import CollectConfig
from worldmodels.data import (
    DatasetError,
    Episode,
    append_episode,
    collect,
    dataset_dir,
    load_episodes,
    open_dataset,
    open_for_collection,
)

ROOT = Path(__file__).resolve().parents[1]


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


def test_collection_plan_and_policy_seed_blocks():
    from worldmodels.data import collection_plan
    from worldmodels.policies import SEED_BLOCK, seed_offset

    plan = collection_plan(CollectConfig(mix="brownian:3,heuristic:2"))
    assert [(c.policy, c.episodes) for c in plan] == [("brownian", 3), ("heuristic", 2)]
    assert seed_offset("brownian") == 0 and seed_offset("heuristic") == 2 * SEED_BLOCK
    for bad in ("nope:3", "heuristic:2.5"):
        with pytest.raises(ValueError):
            collection_plan(CollectConfig(mix=bad))


def test_mirror_flips_frames_and_negates_steer():
    from worldmodels.data import mirror

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
    f1, a1 = mirror(frames, actions)
    np.testing.assert_array_equal(f1[:, :, 0], frames[:, :, -1])  # left column <- right column
    np.testing.assert_array_equal(a1[:, 0], -actions[:, 0])
    np.testing.assert_array_equal(a1[:, 1:], actions[:, 1:])
    f2, a2 = mirror(f1, a1)
    np.testing.assert_array_equal(f2, frames)
    np.testing.assert_array_equal(a2, actions)
    # In a VAE batch about half of the frames come out flipped.
    asym = np.zeros((1, 4, 4, 3), np.uint8)
    asym[0, :, 0] = 255
    from worldmodels.train import FrameMix  # here, not at the top: the killed writers import this module

    drawn = FrameMix.of([(asym, 1.0)]).sample(np.random.default_rng(1), 1000, mirror=True)
    assert abs((drawn[:, 0, -1, 0] == 255).mean() - 0.5) < 0.05


def synthetic_episode(seed, steps=3):
    """An episode whose arrays all derive from its seed (frames filled with ``seed % 256``, rewards ``seed``)."""
    return Episode(
        seed=seed,
        observations=np.full((steps + 1, 64, 64, 3), seed % 256, np.uint8),
        actions=np.zeros((steps, 3), np.float32),
        rewards=np.full(steps, float(seed), np.float32),
        terminations=np.zeros(steps, bool),
        truncations=np.arange(steps) == steps - 1,
    )


def write_episodes(path, seeds, steps=3):
    """Episodes appended to a real Minari dataset in the given order (as workers finishing out of order do)."""
    storage = open_for_collection(path, CollectConfig(max_steps=steps))
    for seed in seeds:
        append_episode(storage, synthetic_episode(seed, steps))


# Kills at random instants, many of them cheaply: a driver process forks a writer that opens the dataset and
# appends the missing ones of seeds 0..N-1 (the calls `collect` makes), SIGKILLs it after a random delay (opening
# and one write take some 10-30 ms each, so the kills land in both), then forks a reader that must load the
# dataset. Minari and pyarrow are imported before the forks but used only in forked children (a fork would not
# inherit their thread pools cleanly). Exit 0: every seed stored once, equal to the original, after the last
# writer ran uninterrupted.
_KILLER = """
import os, signal, sys, time, traceback
import numpy as np
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_data import synthetic_episode
from worldmodels.config import CollectConfig
from worldmodels.data import append_episode, load_episodes, open_dataset, open_for_collection, stored_seeds

import minari, minari.data_collector, minari.dataset._storages.arrow_storage  # imported, never used, before forking

path, n, steps = Path({path!r}), {n}, {steps}

def append_missing(count=None):
    storage = open_for_collection(path, CollectConfig(max_steps=steps))
    done = set(stored_seeds(storage))
    for seed in [s for s in range(n) if s not in done][:count]:
        append_episode(storage, synthetic_episode(seed, steps))

def check(final):
    if final:
        episodes = load_episodes(path)
        assert [ep.seed for ep in episodes] == list(range(n)), [ep.seed for ep in episodes]
        for ep in episodes:
            want = synthetic_episode(ep.seed, steps)
            assert (ep.observations == want.observations).all() and (ep.rewards == want.rewards).all(), ep.seed
    else:  # readable: every counted episode's metadata, and the newest episode's arrays
        storage = open_dataset(path).storage
        stored = len(stored_seeds(storage))
        assert stored < n, "the writers finished before the last kill"
        last = next(iter(storage.get_episodes([stored - 1])))
        assert len(last["observations"]) == steps + 1

def forked(fn, *args):
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    return pid

def exit_code(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

assert exit_code(forked(append_missing, 1)) == 0  # the dataset and its first episode
rng = np.random.default_rng(0)
for k in range({kills}):
    pid = forked(append_missing)
    time.sleep(rng.uniform(0.0, 0.06))
    os.kill(pid, signal.SIGKILL)
    exit_code(pid)
    if exit_code(forked(check, False)) != 0:
        sys.exit(f"unreadable after kill {{k}}")
if exit_code(forked(append_missing)) != 0 or exit_code(forked(check, True)) != 0:
    sys.exit("the resumed collection did not end with every episode once")
"""


def test_a_collection_killed_at_any_instant_resumes_to_the_complete_dataset(tmp_path):
    path = dataset_dir(tmp_path, "brownian")
    path.parent.mkdir(parents=True)
    n, steps, kills = 60, 300, 40  # 3.7 MB an episode
    code = _KILLER.format(tests=str(ROOT / "tests"), path=str(path), n=n, steps=steps, kills=kills)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stored = json.loads((path / "metadata.json").read_text())
    assert stored["data_format"] == "arrow" and stored["total_episodes"] == n


def test_episodes_load_in_seed_order_whatever_order_they_were_stored_in(tmp_path):
    path = dataset_dir(tmp_path, "brownian")
    path.parent.mkdir(parents=True)
    write_episodes(path, [12, 10, 13, 11])
    episodes = load_episodes(path)
    assert [ep.seed for ep in episodes] == [10, 11, 12, 13]
    assert [float(ep.rewards[0]) for ep in episodes] == [10.0, 11.0, 12.0, 13.0]
    assert int(episodes[0].observations[0, 0, 0, 0]) == 10  # each episode's arrays travel with its seed


def test_a_directory_without_metadata_is_refused_and_nothing_is_deleted(tmp_path):
    path = dataset_dir(tmp_path, "brownian")
    path.mkdir(parents=True)
    (path / "main_data.hdf5").write_bytes(b"precious episodes")
    with pytest.raises(DatasetError, match="holds files but no metadata.json.*nothing was deleted"):
        collect(tmp_path, CollectConfig(episodes=1, max_steps=5, workers=1))
    assert (path / "main_data.hdf5").read_bytes() == b"precious episodes"
    assert not path.with_name("brownian.creating").exists()


def test_holdout_count_keeps_one_out_and_one_in():
    from worldmodels.data import holdout_count

    assert [holdout_count(n, 0.05) for n in (1, 2, 10, 40, 100)] == [0, 1, 1, 2, 5]
    assert holdout_count(10, 0.0) == 0 and holdout_count(3, 0.99) == 2


def test_episode_windows_stay_inside_their_episode():
    from worldmodels.data import episode_windows

    lengths = np.array([5, 30, 12])
    obs_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    act_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rng = np.random.default_rng(0)
    obs_idx, act_idx, obs_mask, act_mask = episode_windows(rng, lengths, np.full(3, 1 / 3), obs_start, act_start, 8, 64)
    assert obs_idx.shape == (64, 9) and act_idx.shape == act_mask.shape == (64, 8)
    episode = np.searchsorted(obs_start, obs_idx[:, 0], side="right") - 1
    assert np.all(obs_idx <= (obs_start + lengths)[episode, None])  # never past the episode's last frame
    assert np.all(act_idx < (act_start + lengths)[episode, None])
    assert act_mask[episode == 0].sum(axis=1).max() == 5 and act_mask[episode == 1].min() == 1.0
    assert np.all(obs_mask.sum(axis=1) == act_mask.sum(axis=1) + 1)


def test_padded_windows_see_an_episodes_termination_as_often_as_its_middle():
    """RNNConfig.windows: windows inside the episode see its last step (the termination) about L times less often
    than a middle step; padded windows see every step from L - 1 on equally often, the last included."""
    from worldmodels.data import episode_windows

    length, seq_len, n = 300, 50, 200_000
    lengths, starts = np.array([length]), np.array([0])

    def coverage(windows):
        rng = np.random.default_rng(0)
        _, act_idx, _, act_mask = episode_windows(rng, lengths, np.ones(1), starts, starts, seq_len, n, windows)
        return np.bincount(act_idx[act_mask > 0], minlength=length) / n

    inside, padded = coverage("inside"), coverage("padded")
    middle = slice(seq_len, length - seq_len)
    assert inside[-1] < 2 / (length - seq_len + 1)  # one offset of 251 reaches the last step
    assert inside[middle].mean() > 0.9 * seq_len / (length - seq_len + 1)
    assert np.allclose(padded[seq_len - 1 :], seq_len / length, rtol=0.1)  # the termination as often as the rest
    assert padded[-1] > 0.9 * seq_len / length > 20 * inside[-1]
    with pytest.raises(ValueError, match="windows"):
        episode_windows(np.random.default_rng(0), lengths, np.ones(1), starts, starts, seq_len, 4, "anywhere")
