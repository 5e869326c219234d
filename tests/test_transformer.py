"""The causal transformer dynamics (models/transformer.py): shapes and the protocol, the cached step equals the
full-sequence pass (past the window, so the ring buffer wraps), the window really bounds attention, RoPE's relative
positions, training through the M stage's loop lowers its loss, the fused dream runs on it, a checkpoint round
trip, and its config."""

from __future__ import annotations

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import linear_system

from worldmodels.models.dynamics import Dynamics, DynamicsState, batched_initial_state
from worldmodels.models.transformer import TransformerDynamics, TransformerState, rope

Z, A, H, K = 4, 3, 8, 2


def small(context: int = 5, layers: int = 2, seed: int = 0) -> TransformerDynamics:
    """A tiny model. Every model of this file has the same weight shapes (the context and the number of blocks
    change no shape), so the eager initialisation compiles its random draws once."""
    return TransformerDynamics(Z, A, H, K, layers=layers, heads=2, context=context, key=jr.key(seed))


@eqx.filter_jit
def step(model: TransformerDynamics, z: jax.Array, action: jax.Array, state: TransformerState):
    """``model(z, action, state)``, jitted (eager, every op compiles on its own: seconds)."""
    return model(z, action, state)


@eqx.filter_jit
def forward(model: TransformerDynamics, z: jax.Array, actions: jax.Array):
    """``model.forward_sequence``, jitted."""
    return model.forward_sequence(z, actions)


def inputs(T: int, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    z = jr.normal(jr.key(seed), (T, Z))
    actions = jr.uniform(jr.key(seed + 1), (T, A), minval=-1.0, maxval=1.0)
    return z, actions


@eqx.filter_jit
def stepped(model: TransformerDynamics, z: jax.Array, actions: jax.Array):
    """``__call__`` scanned T times from ``initial_state()`` -> (final state, MDNOutput with a leading T)."""
    return jax.lax.scan(lambda s, x: model(x[0], x[1], s), model.initial_state(), (z, actions))


def test_shapes_state_and_protocol():
    model = small()
    assert isinstance(model, Dynamics)
    state = model.initial_state()
    assert isinstance(state, TransformerState) and isinstance(state, DynamicsState)
    assert state.h.shape == (H,) and state.h.dtype == jnp.float32 and not state.h.any()
    assert state.keys.shape == state.values.shape == (2, 5, 2, H // 2)
    assert state.valid.shape == (5,) and state.t.dtype == jnp.int32 and int(state.t) == 0
    state, out = step(model, jnp.zeros(Z), jnp.zeros(A), state)
    assert state.h.shape == (H,) and int(state.t) == 1 and int(state.valid.sum()) == 1
    assert out.log_pi.shape == (K,) and out.mu.shape == out.log_sigma.shape == (K, Z)
    assert out.reward.shape == () and out.done_logit.shape == ()
    np.testing.assert_allclose(jnp.exp(out.log_pi).sum(), 1.0, rtol=1e-5)
    seq = forward(model, *inputs(7))
    assert seq.mu.shape == (7, K, Z) and seq.reward.shape == (7,) and seq.log_pi.shape == (7, K)
    batched = batched_initial_state(model, 3)  # vmap over a batch of states
    states, outs = eqx.filter_jit(jax.vmap(step, in_axes=(None, 0, 0, 0)))(
        model, jnp.zeros((3, Z)), jnp.zeros((3, A)), batched
    )
    assert states.keys.shape == (3, 2, 5, 2, H // 2) and outs.mu.shape == (3, K, Z)
    with pytest.raises(ValueError, match="not divisible by heads"):
        TransformerDynamics(Z, A, 10, K, heads=4, key=jr.key(0))


@pytest.mark.parametrize(("T", "context"), [(13, 5), (4, 6), (6, 1)])
def test_cached_steps_equal_the_full_sequence_pass(T, context):
    """The KV-cache step (ring buffer wrapping when T > context) equals the banded forward pass, to 1e-5."""
    model = small(context=context)
    z, actions = inputs(T)
    final, steps = stepped(model, z, actions)
    seq = forward(model, z, actions)
    for a, b in zip(jax.tree.leaves(steps), jax.tree.leaves(seq), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert int(final.t) == T and int(final.valid.sum()) == min(T, context)
    # h is the final LayerNorm'd output of the last token: the head applied to it gives the last prediction
    np.testing.assert_allclose(model.head(final.h)[-2], seq.reward[-1], rtol=1e-5, atol=1e-5)


def test_sliding_window_limits_attention():
    """With one layer, an input more than ``context`` - 1 steps back cannot change a prediction; within the window
    it does. Each of L layers reaches C - 1 steps further back (through the earlier tokens' outputs it attends to),
    so token t depends on tokens t - L (C - 1) .. t only."""
    model, C, T = small(context=4, layers=1), 4, 12
    z, actions = inputs(T)
    base = forward(model, z, actions).mu
    changed = forward(model, z.at[2].add(5.0), actions).mu
    np.testing.assert_array_equal(base[:2], changed[:2])  # the past never sees the future
    assert float(jnp.abs(base[2 : 2 + C] - changed[2 : 2 + C]).max(axis=(1, 2)).min()) > 0  # inside the window
    np.testing.assert_allclose(base[2 + C :], changed[2 + C :], atol=1e-6)  # beyond it: no effect
    # two layers reach back 2 (C - 1) steps, and no further
    deep = small(context=C, layers=2)
    base, changed = (forward(deep, zz, actions).mu for zz in (z, z.at[2].add(5.0)))
    assert float(jnp.abs(base[2 + C] - changed[2 + C]).max()) > 0
    np.testing.assert_allclose(base[2 + 2 * C - 1 :], changed[2 + 2 * C - 1 :], atol=1e-6)
    # the stepped model agrees: its ring buffer has forgotten step 2
    _, steps = stepped(deep, z.at[2].add(5.0), actions)
    np.testing.assert_allclose(steps.mu[2 + 2 * C - 1 :], base[2 + 2 * C - 1 :], atol=1e-5)


def test_rope_scores_depend_on_relative_offsets_only():
    q, k = jr.normal(jr.key(0), (2, 6)), jr.normal(jr.key(1), (2, 6))
    score = lambda t, s: jnp.sum(rope(q, t) * rope(k, s), axis=-1)  # noqa: E731
    np.testing.assert_allclose(score(3.0, 1.0), score(103.0, 101.0), rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(score(3.0, 1.0) - score(3.0, 2.0)).max()) > 1e-3
    np.testing.assert_allclose(jnp.linalg.norm(rope(q, 7.0), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)
    # a window of tokens shifted in time gives the same outputs: the model only sees relative positions
    model = small(context=3, layers=1)
    z, actions = inputs(9)
    seq = forward(model, z, actions)
    _, late = stepped(model, jnp.concatenate([jnp.zeros((5, Z)), z]), jnp.concatenate([jnp.zeros((5, A)), actions]))
    np.testing.assert_allclose(late.mu[5 + 3 :], seq.mu[3:], atol=1e-4)


def test_training_lowers_the_loss_runs_in_the_dream_and_round_trips(tmp_path):
    """``train.train_rnn --kind transformer`` (the M stage's loop) learns a known linear system; the trained model
    runs in the fused dream and comes back from ``RUN_DIR/rnn/ckpt`` through ``run_dir.load_dynamics``."""
    from worldmodels import run_dir
    from worldmodels.config import RNNConfig
    from worldmodels.dream import DreamStart, generation_fitness, warm_up
    from worldmodels.models.controller import LinearController
    from worldmodels.train import DYNAMICS_NAMES, rnn_hparams, train_rnn

    cfg = RNNConfig(kind="transformer", hidden_size=H, num_mixtures=K, layers=1, heads=2, context=8, seq_len=16,
                    batch_size=8, steps=150, learning_rate=3e-3, log_every=10, checkpoint_every=150)  # fmt: skip
    assert DYNAMICS_NAMES["transformer"] == "transformer"
    data = linear_system(z_size=Z, action_size=A)
    model = train_rnn(tmp_path / "rnn", data, cfg)
    assert isinstance(model, TransformerDynamics) and model.context == 8
    rows = [json.loads(line) for line in (tmp_path / "rnn" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert last["step"] == 150 and {"total", "mdn_nll", "reward", "done"} <= set(last)
    assert last["total"] < first["total"] - 1.0 and last["mdn_nll"] < first["mdn_nll"], (first, last)
    assert last["reward"] < 0.5 * first["reward"], (first, last)

    # the fused dream (vmapped over population and rollouts, scanned over time) and warm-up runs on it
    n = LinearController.num_params(Z, H)
    pop = jr.normal(jr.key(1), (3, n)) * 0.1
    start = DreamStart(jnp.asarray(data.mu[:2]), jnp.full((2, Z), -6.0))
    fit = generation_fitness(pop, model, start, jr.key(2), jnp.float32(1.0), rollouts=2, steps=12, done_threshold=0.5)
    assert fit.shape == (3,) and bool(jnp.all(jnp.isfinite(fit)))
    states = warm_up(model, jnp.asarray(data.mu[:10]), jnp.asarray(data.actions[:10]))
    assert states.h.shape == (11, H) and states.keys.shape == (11, 1, 8, 2, H // 2)

    loaded, meta = run_dir.load_dynamics(tmp_path, expected={"z_size": Z})
    assert isinstance(loaded, TransformerDynamics) and meta["kind"] == "transformer"
    assert meta["hparams"] == rnn_hparams(cfg, Z)
    assert (loaded.layers, loaded.heads, loaded.context) == (1, 2, 8)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rnn_config_transformer_fields_and_refusals():
    from worldmodels.config import DYNAMICS_KINDS, RNNConfig

    assert "transformer" in DYNAMICS_KINDS
    cfg = RNNConfig(kind="transformer")
    assert (cfg.layers, cfg.heads, cfg.context) == (2, 4, 64)
    assert cfg.loss_scales == RNNConfig().loss_scales  # the MDN-RNN's terms
    with pytest.raises(ValueError, match=r"divisible by rnn.heads, got --hidden-size 250 and --heads 4"):
        dataclasses.replace(cfg, hidden_size=250)
    RNNConfig(hidden_size=250)  # heads only matter to the transformer
    for field in ("layers", "heads", "context"):
        with pytest.raises(ValueError, match=f"rnn.{field} must be >= 1"):
            dataclasses.replace(cfg, **{field: 0})
