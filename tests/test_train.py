"""``worldmodels.train``: sequence batches, recipe weights and held-out episodes, the VAE learns a tiny dataset."""

import json

import numpy as np
from helpers import toy_latents

from worldmodels.config import RNNConfig, VAEConfig
from worldmodels.train import FrameMix, LatentDataset, sequence_batch, train_vae


def test_sequence_batch_windows_and_mask():
    data = toy_latents()
    cfg = RNNConfig(seq_len=15, batch_size=16)
    batch = sequence_batch(data, 0, cfg)
    assert batch["mu"].shape == (16, 16, 4) and batch["actions"].shape == (16, 15, 3)
    # The short episode (10 steps) is masked after its end; full ones are not.
    assert set(batch["mask"].sum(axis=1).tolist()) <= {10.0, 15.0}
    again = sequence_batch(data, 0, cfg)
    np.testing.assert_array_equal(batch["mu"], again["mu"])  # deterministic in (seed, step)


def test_vae_learns_a_tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    for i in range(8):  # coloured squares at different places
        r, c = rng.integers(0, 48, 2)
        frames[i, r : r + 16, c : c + 16] = rng.integers(60, 255, 3)
    cfg = VAEConfig(z_size=8, batch_size=8, steps=60, learning_rate=1e-3, log_every=20, checkpoint_every=60)
    train_vae(tmp_path / "vae", frames, cfg)
    rows = [json.loads(x) for x in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["recon"] < 0.5 * rows[0]["recon"]
    assert (tmp_path / "vae" / "recon.png").stat().st_size > 0


def test_recipe_weights_set_batch_frequencies():
    a, b = toy_latents(episodes=4), toy_latents(episodes=2)
    b = LatentDataset(**{**{k: getattr(b, k) for k in b.__dataclass_fields__}, "rewards": np.full_like(b.rewards, 7.0)})
    mix = LatentDataset.concat([a, b], [1.0, 3.0])
    assert mix.num_episodes == 6 and np.isclose(mix.episode_p.sum(), 1.0)
    np.testing.assert_allclose(mix.episode_p[4:].sum(), 0.75)
    cfg = RNNConfig(seq_len=5, batch_size=4000)
    batch = sequence_batch(mix, 0, cfg)
    from_b = (batch["rewards"][:, 0] == 7.0).mean()
    assert abs(from_b - 0.75) < 0.03
    # offsets line up: the second part's first frame is found where its episode starts
    np.testing.assert_array_equal(mix.mu[mix.obs_start[4]], b.mu[0])

    frames_a = np.zeros((100, 2, 2, 3), np.uint8)
    frames_b = np.full((10, 2, 2, 3), 255, np.uint8)
    pool = FrameMix.of([(frames_a, 1.0), (frames_b, 1.0)])
    drawn = pool.sample(np.random.default_rng(0), 4000)
    assert abs((drawn[:, 0, 0, 0] == 255).mean() - 0.5) < 0.03  # per-dataset weight, not per-frame


def test_heldout_episodes_never_train():
    data = toy_latents(episodes=4)
    held = np.array([False, False, False, True])
    p = np.where(held, 0.0, 1.0 / 3)
    data = LatentDataset(
        **{**{k: getattr(data, k) for k in data.__dataclass_fields__}, "episode_p": p, "heldout": held}
    )
    batch = sequence_batch(data, 3, RNNConfig(seq_len=5, batch_size=500))
    held_mu = data.mu[data.obs_start[3] : data.obs_start[3] + data.lengths[3] + 1]
    first = batch["mu"][:, 0]
    assert not any((first == m).all(axis=1).any() for m in held_mu)


def test_latent_cache_round_trip_and_damage_named(tmp_path):
    """The latent cache reads back what was saved; a truncated one (a killed write elsewhere, a disk fault) is a
    CheckpointError naming the file, which the M stage takes as "encode again" instead of a traceback."""
    import pytest

    from worldmodels.checkpoint import CheckpointError

    data, path = toy_latents(), tmp_path / "brownian.npz"
    data.save(path, key=np.str_("k"))
    back, extra = LatentDataset.load(path)
    np.testing.assert_array_equal(back.mu, data.mu)
    assert str(extra["key"]) == "k"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="brownian.npz"):
        LatentDataset.load(path)


def test_ensemble_trained_at_once_equals_members_one_by_one(tmp_path):
    """``train_rnn_ensemble`` (one vmapped update of every member) gives each member what ``train_rnn`` gives it
    alone with its seed, checkpoints and held-out loss and all; it resumes from the members' checkpoints (members
    trained one by one and now fine-tuned together equal the ensemble's members fine-tuned alone), and refuses
    members standing at different steps."""
    import dataclasses

    import jax
    import pytest

    from worldmodels.checkpoint import CheckpointError, latest_step
    from worldmodels.train import bootstrap_episodes, train_rnn, train_rnn_ensemble

    data = toy_latents(episodes=4)
    data = dataclasses.replace(data, heldout=np.arange(4) == 3, episode_p=np.array([1, 1, 1, 0]) / 3)
    cfg = RNNConfig(hidden_size=16, num_mixtures=2, seq_len=8, batch_size=4, steps=6, learning_rate=1e-2,
                    log_every=3, checkpoint_every=3, seed=5)  # fmt: skip
    alone_dirs, ens_dirs = (
        [tmp_path / "alone" / str(k) for k in range(2)],
        [tmp_path / "ens" / str(k) for k in range(2)],
    )
    datas = [data, bootstrap_episodes(data, 6)]  # member 1 on a bootstrap resample (RNNConfig.bootstrap)
    alone = [train_rnn(d, datas[k], dataclasses.replace(cfg, seed=5 + k)) for k, d in enumerate(alone_dirs)]
    together = train_rnn_ensemble(tmp_path / "ens" / "log", ens_dirs, datas, cfg, [5, 6])

    def close(a, b):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5)

    for k in range(2):
        close(together[k], alone[k])
        assert latest_step(ens_dirs[k] / "ckpt") == 6
    rows = [json.loads(x) for x in (tmp_path / "ens" / "log" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and {"total/0", "total/1"} <= set(rows[-1])
    for k, d in enumerate(alone_dirs):  # each member's held-out loss, as it logs alone (trainer.fit's evaluate)
        alone_last = json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])
        np.testing.assert_allclose(rows[-1][f"heldout_total/{k}"], alone_last["heldout_total"], rtol=2e-4)
    assert not (tmp_path / "ens" / "log" / "ckpt").exists()  # the members' own directories hold the checkpoints
    longer = dataclasses.replace(cfg, steps=9)
    finetuned_together = train_rnn_ensemble(tmp_path / "alone" / "log", alone_dirs, datas, longer, [5, 6])
    for k in range(2):
        finetuned_alone = train_rnn(ens_dirs[k], datas[k], dataclasses.replace(longer, seed=5 + k))
        close(finetuned_together[k], finetuned_alone)
    with pytest.raises(CheckpointError, match="different steps"):
        train_rnn_ensemble(tmp_path / "mixed", [ens_dirs[0], tmp_path / "fresh"], data, longer, [5, 6])


def test_bootstrap_reweights_training_episodes_only():
    """``bootstrap_episodes``: each training episode's weight times its count in n draws with replacement (so some
    drop out, some count twice), held-out episodes never drawn, deterministic in the seed, different across seeds."""
    import dataclasses

    import pytest

    from worldmodels.train import bootstrap_episodes

    data = toy_latents(episodes=12)
    held = np.zeros(12, bool)
    held[-2:] = True
    data = dataclasses.replace(data, heldout=held, episode_p=np.where(held, 0.0, 0.1))
    a, b = bootstrap_episodes(data, 1), bootstrap_episodes(data, 2)
    np.testing.assert_array_equal(a.episode_p, bootstrap_episodes(data, 1).episode_p)
    assert not np.array_equal(a.episode_p, b.episode_p)
    assert np.isclose(a.episode_p.sum(), 1.0) and np.all(a.episode_p[-2:] == 0)
    counts = a.episode_p[:10] * 10  # each of the 10 training episodes: its count in the 10 draws
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert (counts == 0).any() and counts.sum() == pytest.approx(10)
    np.testing.assert_array_equal(a.mu, data.mu)  # the episodes themselves are untouched
    with pytest.raises(ValueError, match="at least one training episode"):
        bootstrap_episodes(dataclasses.replace(data, heldout=np.ones(12, bool)), 1)


def test_heldout_loss_is_m_on_whole_heldout_episodes(tmp_path):
    """``heldout_batch`` holds each held-out episode whole from its first frame (shorter ones masked after their
    end); ``train_rnn`` writes M's loss on it at every checkpoint as ``heldout_*`` columns of ``metrics.jsonl``, equal
    to ``rnn_loss`` of the checkpoint on that batch (fixed key), in rows of their own at checkpoints that are not
    logging steps (the ensemble's per-member columns: ``test_ensemble_trained_at_once_equals_members_one_by_one``)."""
    import dataclasses

    import jax.random as jr

    from worldmodels.checkpoint import latest_step
    from worldmodels.train import heldout_batch, rnn_loss, train_rnn

    data = toy_latents(episodes=4)  # the last episode (10 steps) is half as long as the others (20)
    assert heldout_batch(data) is None  # nothing held out: nothing to validate on
    held = np.array([False, False, True, True])
    data = dataclasses.replace(data, heldout=held, episode_p=np.where(held, 0.0, 0.5))
    batch = heldout_batch(data)
    assert batch["mu"].shape == (2, 21, 4) and batch["actions"].shape == (2, 20, 3)
    np.testing.assert_array_equal(batch["mask"].sum(axis=1), [20, 10])
    np.testing.assert_array_equal(batch["mu"][1, :11], data.mu[data.obs_start[3] : data.obs_start[3] + 11])
    np.testing.assert_array_equal(batch["rewards"][0], data.rewards[data.act_start[2] : data.act_start[2] + 20])

    cfg = RNNConfig(hidden_size=16, num_mixtures=2, seq_len=8, batch_size=4, steps=6, learning_rate=1e-2,
                    log_every=2, checkpoint_every=3, seed=5)  # fmt: skip
    model = train_rnn(tmp_path / "alone", data, cfg)
    rows = [json.loads(x) for x in (tmp_path / "alone" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]  # step 3 is a checkpoint, not a logging step: a row of its own
    assert set(rows[1]) == {"step", "heldout_total", "heldout_mdn_nll", "heldout_reward", "heldout_done"}
    assert "heldout_total" in rows[3] and "total" in rows[3] and "heldout_total" not in rows[0]
    expected = rnn_loss(model, batch, jr.key(0), cfg)[1]
    for k in ("total", "mdn_nll", "reward"):
        np.testing.assert_allclose(rows[3][f"heldout_{k}"], float(expected[k]), rtol=1e-5)
    assert latest_step(tmp_path / "alone" / "ckpt") == 6  # the checkpoint it was measured on
