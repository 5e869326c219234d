"""Checkpoints: round trip, self-description, clear errors on mismatch or damage."""

import shutil

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import optax
import pytest

from worldmodels import checkpoint
from worldmodels.checkpoint import CheckpointError
from worldmodels.models import MDNRNN, ConvVAE
from worldmodels.models.registry import build_vae


def test_round_trip_with_optimiser_state(tmp_path):
    rnn = MDNRNN(8, 3, 16, 3, key=jr.key(0))
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(rnn, eqx.is_array))
    hp = {"z_size": 8, "action_size": 3, "hidden_size": 16, "num_mixtures": 3}
    checkpoint.save(tmp_path / "ck", 3, rnn, kind="mdnrnn", hparams=hp, opt_state=state, extra={"loss": 1.5})
    other = MDNRNN(8, 3, 16, 3, key=jr.key(9))
    loaded, loaded_state, meta = checkpoint.load(tmp_path / "ck", other, kind="mdnrnn", opt_like=state)
    leaves = zip(
        jax.tree.leaves(eqx.filter(rnn, eqx.is_array)), jax.tree.leaves(eqx.filter(loaded, eqx.is_array)), strict=True
    )
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)
    assert meta["step"] == 3 and meta["extra"]["loss"] == 1.5
    assert jax.tree.structure(loaded_state) == jax.tree.structure(state)


def test_module_rebuilds_from_its_own_hparams(tmp_path):
    vae = ConvVAE(16, key=jr.key(0))
    checkpoint.save(tmp_path / "ck", 1, vae, kind="vae", hparams={"z_size": 16})
    loaded, _ = checkpoint.load_module(tmp_path / "ck", build_vae, kind="vae")
    assert loaded.z_size == 16
    np.testing.assert_array_equal(loaded.fc_mu.weight, vae.fc_mu.weight)


def test_size_mismatch_names_both_sizes(tmp_path):
    checkpoint.save(tmp_path / "ck", 1, ConvVAE(64, key=jr.key(0)), kind="vae", hparams={"z_size": 64})
    with pytest.raises(CheckpointError, match="z_size=64 in the checkpoint, 32 in the config"):
        checkpoint.load_module(tmp_path / "ck", build_vae, kind="vae", expected={"z_size": 32})
    with pytest.raises(CheckpointError, match=r"\(64, 1024\).*\(32, 1024\)"):
        checkpoint.load(tmp_path / "ck", ConvVAE(32, key=jr.key(0)), kind="vae")
    with pytest.raises(CheckpointError, match="holds a 'vae', expected a 'mdnrnn'"):
        checkpoint.load(tmp_path / "ck", ConvVAE(64, key=jr.key(0)), kind="mdnrnn")


def test_missing_and_corrupt_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nothing")):
        checkpoint.load_module(tmp_path / "nothing", build_vae, kind="vae")
    checkpoint.save(tmp_path / "ck", 1, ConvVAE(8, key=jr.key(0)), kind="vae", hparams={"z_size": 8})
    shutil.rmtree(tmp_path / "ck" / "1" / "model")
    with pytest.raises(CheckpointError, match="ck/1"):
        checkpoint.load_module(tmp_path / "ck", build_vae, kind="vae")


def test_keeps_only_the_latest_steps(tmp_path):
    vae = ConvVAE(8, key=jr.key(0))
    for step in (1, 2, 3):
        checkpoint.save(tmp_path / "ck", step, vae, kind="vae", hparams={"z_size": 8}, keep=2)
    assert checkpoint.latest_step(tmp_path / "ck") == 3
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.isdigit()) == ["2", "3"]
