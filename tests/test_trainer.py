"""``trainer.fit``: the loss goes down, NaN stops with the step named and the checkpoint intact, resume (rows once)."""

import json

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import Interrupted, rows, scalars, toy_latents

from worldmodels import checkpoint
from worldmodels.config import RNNConfig
from worldmodels.errors import TrainingDiverged
from worldmodels.metrics_log import append_jsonl
from worldmodels.models import MDNRNN
from worldmodels.train import rnn_loss, sequence_batch
from worldmodels.trainer import fit

SMALL = {"z_size": 4, "action_size": 3, "hidden_size": 8, "num_mixtures": 2}


def bias_loss(model, batch, key):
    """A loss of the MDN head's bias, scaled by the batch (a NaN batch makes it NaN)."""
    loss = jnp.sum(model.head.bias**2) * batch
    return loss, {"total": loss}


def fit_small(out_dir, make_batch, steps, *, log_every, checkpoint_every, lr=1e-2, desc="test"):
    """``fit`` of a small MDN-RNN with ``bias_loss`` and plain SGD."""
    return fit(
        model=MDNRNN(**SMALL, key=jr.key(0)),
        optimizer=optax.sgd(lr),
        loss_fn=bias_loss,
        make_batch=make_batch,
        steps=steps,
        out_dir=out_dir,
        kind="mdnrnn",
        hparams=SMALL,
        seed=0,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        items_per_step=1,
        desc=desc,
    )


def test_rnn_training_reduces_loss_and_resumes(tmp_path):
    data = toy_latents()
    cfg = RNNConfig(
        hidden_size=16, num_mixtures=2, seq_len=10, batch_size=8, steps=30, log_every=10, checkpoint_every=10
    )
    hp = {"z_size": 4, "action_size": 3, "hidden_size": 16, "num_mixtures": 2}

    def run(steps):
        return fit(
            model=MDNRNN(**hp, key=jr.key(0)),
            optimizer=optax.adam(1e-2),
            loss_fn=lambda m, b, k: rnn_loss(m, b, k, cfg),
            make_batch=lambda s: sequence_batch(data, s, cfg),
            steps=steps,
            out_dir=tmp_path / "rnn",
            kind="mdnrnn",
            hparams=hp,
            seed=0,
            log_every=10,
            checkpoint_every=10,
            items_per_step=80,
            desc="test",
        )

    run(20)
    assert checkpoint.latest_step(tmp_path / "rnn" / "ckpt") == 20
    run(30)  # resumes at 20
    rows = [json.loads(x) for x in (tmp_path / "rnn" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["total"] < rows[0]["total"]
    assert {"mdn_nll", "reward", "done", "grad_norm"} <= set(rows[0])


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step 7.*last good checkpoint: .*ckpt/5"):
        nan_at_7 = lambda s: jnp.float32(np.nan if s == 6 else 1.0)  # noqa: E731
        fit_small(tmp_path / "x", nan_at_7, 10, log_every=1, checkpoint_every=5, lr=1e-3, desc="nan")
    assert checkpoint.latest_step(tmp_path / "x" / "ckpt") == 5
    model, _, meta = checkpoint.load(tmp_path / "x" / "ckpt", MDNRNN(**SMALL, key=jr.key(1)), kind="mdnrnn")
    assert np.isfinite(np.asarray(model.head.bias)).all() and meta["step"] == 5


def test_resumed_fit_leaves_one_row_per_logged_step(tmp_path):
    """A crash at update 18 (checkpoint at 10, rows 5, 10, 15 written) then a resume to 30: steps
    5, 10, ..., 30 once each in metrics.jsonl and in TensorBoard."""

    def run(make_batch):
        return fit_small(tmp_path / "rnn", make_batch, 30, log_every=5, checkpoint_every=10, desc="resume")

    def crashing(step):
        if step == 17:
            raise Interrupted
        return jnp.float32(1.0)

    with pytest.raises(Interrupted):
        run(crashing)
    assert [r["step"] for r in rows(tmp_path / "rnn")] == [5, 10, 15]
    run(lambda step: jnp.float32(1.0))
    got = rows(tmp_path / "rnn")
    assert [r["step"] for r in got] == [5, 10, 15, 20, 25, 30]
    assert all(set(r) == {"step", "total", "grad_norm", "items_per_s"} for r in got)
    series = scalars(tmp_path / "rnn")
    assert set(series) == {"total", "grad_norm", "items_per_s"}
    assert [s for s, _ in series["total"]] == [5, 10, 15, 20, 25, 30]
    np.testing.assert_allclose([v for _, v in series["total"]], [r["total"] for r in got], rtol=1e-6)
    # a finished run resumed again changes nothing
    before = (tmp_path / "rnn" / "metrics.jsonl").read_bytes()
    run(crashing)
    assert (tmp_path / "rnn" / "metrics.jsonl").read_bytes() == before


def test_fit_without_a_checkpoint_starts_its_rows_afresh(tmp_path):
    """Rows left by a run that crashed before its first checkpoint are dropped when training restarts at 0."""
    out = tmp_path / "rnn"
    out.mkdir()
    append_jsonl(out / "metrics.jsonl", {"step": 5, "total": 9.0})
    fit_small(out, lambda s: jnp.float32(1.0), 5, log_every=5, checkpoint_every=5, desc="fresh")
    got = rows(out)
    assert [r["step"] for r in got] == [5] and got[0]["total"] != 9.0
