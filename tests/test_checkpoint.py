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


def test_module_skeleton_is_only_traced_and_every_leaf_is_loaded(tmp_path):
    # load_module never runs the skeleton's initialisation (a separate PRNG compile per parameter shape, seconds
    # per model on a CPU): build is traced, every array leaf of the result is the checkpoint's, none is abstract.
    vae = ConvVAE(16, key=jr.key(3))
    checkpoint.save(tmp_path / "ck", 1, vae, kind="vae", hparams={"z_size": 16})
    traced = []

    def build(**hparams):
        traced.append(isinstance(jax.numpy.zeros(()), jax.core.Tracer))
        return build_vae(**hparams)

    loaded, _ = checkpoint.load_module(tmp_path / "ck", build, kind="vae")
    assert traced == [True]
    ours, theirs = (jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (loaded, vae))
    assert len(ours) == len(theirs) and all(isinstance(a, jax.Array) for a in ours)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_without_a_later_hparam_takes_its_default(tmp_path):
    # A VAE saved before ``arch`` existed records only z_size: it is a ``conv`` VAE, matches a conv config and is
    # refused for a residual one, naming both values.
    checkpoint.save(tmp_path / "old", 1, ConvVAE(8, key=jr.key(0)), kind="vae", hparams={"z_size": 8})
    loaded, _ = checkpoint.load_module(tmp_path / "old", build_vae, kind="vae", expected={"z_size": 8, "arch": "conv"})
    assert loaded.arch == "conv"
    with pytest.raises(CheckpointError, match="arch='conv' in the checkpoint, 'residual' in the config"):
        checkpoint.load_module(tmp_path / "old", build_vae, kind="vae", expected={"arch": "residual"})
    res = ConvVAE(8, "residual", key=jr.key(1))
    checkpoint.save(tmp_path / "res", 1, res, kind="vae", hparams={"z_size": 8, "arch": "residual"})
    loaded, _ = checkpoint.load_module(tmp_path / "res", build_vae, kind="vae")
    np.testing.assert_array_equal(loaded.res_dec[1].w2, res.res_dec[1].w2)


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


def _damage(step_dir):
    """Overwrite every array data file of a saved step with garbage, as a disk fault would."""
    files = [f for f in (step_dir / "model").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files
    for f in files:
        f.write_bytes(b"\0garbage" * 16)


def test_damaged_newest_step_falls_back_to_the_one_before(tmp_path, capsys):
    old, new = ConvVAE(8, key=jr.key(0)), ConvVAE(8, key=jr.key(1))
    checkpoint.save(tmp_path / "ck", 1, old, kind="vae", hparams={"z_size": 8})
    checkpoint.save(tmp_path / "ck", 2, new, kind="vae", hparams={"z_size": 8})
    _damage(tmp_path / "ck" / "2")
    loaded, meta = checkpoint.load_module(tmp_path / "ck", build_vae, kind="vae")
    assert meta["step"] == 1
    np.testing.assert_array_equal(loaded.fc_mu.weight, old.fc_mu.weight)
    err = capsys.readouterr().err
    assert "ck/2: cannot read arrays" in err and "loading step 1 instead" in err
    assert (tmp_path / "ck" / "2").is_dir()  # a reader keeps the damaged step where it is

    # Unreadable metadata falls back too; with nothing older, the damage is named.
    shutil.rmtree(tmp_path / "ck" / "2" / "meta")
    assert checkpoint.load_module(tmp_path / "ck", build_vae, kind="vae")[1]["step"] == 1
    with pytest.raises(checkpoint.CheckpointError, match="ck/2"):
        checkpoint.load_module(tmp_path / "ck", build_vae, kind="vae", step=2)


def test_trainer_resume_sets_a_damaged_step_aside_and_saves_again(tmp_path, capsys):
    vae = ConvVAE(8, key=jr.key(0))
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(vae, eqx.is_array))
    for step in (1, 2):
        checkpoint.save(tmp_path / "ck", step, vae, kind="vae", hparams={"z_size": 8}, opt_state=state)
    _damage(tmp_path / "ck" / "2")
    _, _, meta = checkpoint.load(tmp_path / "ck", vae, kind="vae", opt_like=state, set_aside_damaged=True)
    assert meta["step"] == 1
    err = capsys.readouterr().err
    assert "ck/2: cannot read arrays" in err and "loading step 1 instead" in err and "damaged/2-" in err
    assert [p.name.split("-")[0] for p in (tmp_path / "ck" / "damaged").iterdir()] == ["2"]  # kept, not deleted
    assert checkpoint.latest_step(tmp_path / "ck") == 1
    checkpoint.save(tmp_path / "ck", 2, vae, kind="vae", hparams={"z_size": 8}, opt_state=state)
    assert checkpoint.load(tmp_path / "ck", vae, kind="vae")[2]["step"] == 2
