"""The M stage's GRU (``train_rnn.py --kind gru``: the MDN-RNN's mixture, reward and done heads on a GRU): the mixture
head's shapes and the protocol, the training scan equals a loop of the step, the M stage's loop learns a known
linear system, the fused dream runs on it, a checkpoint round trip, and gossip's one-Gaussian layout unchanged."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import linear_system

from worldmodels.models.dynamics import Dynamics, DynamicsState
from worldmodels.models.transition import GRUState, GRUTransition

Z, A, H, K = 4, 3, 8, 3


def test_mixture_head_shapes_protocol_and_the_one_gaussian_layout():
    model = GRUTransition(Z, A, H, K, key=jr.key(0))
    assert isinstance(model, Dynamics) and model.num_mixtures == K
    assert model.head.weight.shape == (K * (1 + 2 * Z) + 2, H)  # the MDN-RNN's head layout
    state = model.initial_state()
    assert isinstance(state, GRUState) and isinstance(state, DynamicsState)
    new, out = model(jnp.ones(Z), jnp.zeros(A), state)
    assert new.h.shape == (H,) and out.log_pi.shape == (K,) and out.mu.shape == out.log_sigma.shape == (K, Z)
    np.testing.assert_allclose(jax.nn.logsumexp(out.log_pi), 0.0, atol=1e-6)  # normalised mixture weights
    # gossip's exports (K = 1) keep their head: [mu, log sigma, reward, done], log pi = 0
    one = GRUTransition(Z, A, H, key=jr.key(0))
    assert one.num_mixtures == 1 and one.head.weight.shape == (2 * Z + 2, H)
    _, out1 = one(jnp.ones(Z), jnp.zeros(A), one.initial_state())
    assert out1.log_pi.shape == (1,) and float(out1.log_pi[0]) == 0.0
    with pytest.raises(ValueError, match="num_mixtures must be >= 1, got 0"):
        GRUTransition(Z, A, H, 0, key=jr.key(0))


def test_training_sequence_equals_a_loop_of_the_step():
    from worldmodels.train import mdn_sequence

    model = GRUTransition(Z, A, H, K, key=jr.key(1))
    z, actions = jr.normal(jr.key(2), (7, Z)), jr.uniform(jr.key(3), (7, A), minval=-1, maxval=1)
    seq = eqx.filter_jit(mdn_sequence)(model, z, actions)
    state = model.initial_state()
    for t in range(7):
        state, out = model(z[t], actions[t], state)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(jax.tree.map(lambda x, t=t: x[t], seq)), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_m_stage_learns_a_known_system_runs_in_the_dream_and_round_trips(tmp_path):
    """``train.train_rnn`` with ``kind gru`` lowers the mixture NLL and learns the reward of a known linear system;
    the trained model runs in the fused dream and comes back through ``run_dir.load_dynamics``."""
    from worldmodels import run_dir
    from worldmodels.config import DYNAMICS_KINDS, RNNConfig
    from worldmodels.dream import DreamStart, generation_fitness
    from worldmodels.models.controller import LinearController
    from worldmodels.train import DYNAMICS_NAMES, rnn_hparams, train_rnn

    assert "gru" in DYNAMICS_KINDS and DYNAMICS_NAMES["gru"] == "MDN-GRU"
    cfg = RNNConfig(kind="gru", hidden_size=16, num_mixtures=K, seq_len=16, batch_size=8, steps=200,
                    learning_rate=1e-2, log_every=10, checkpoint_every=200)  # fmt: skip
    assert cfg.loss_scales == RNNConfig().loss_scales  # the MDN-RNN's terms
    data = linear_system(z_size=Z, action_size=A)
    model = train_rnn(tmp_path / "rnn", data, cfg)
    assert isinstance(model, GRUTransition) and model.num_mixtures == K
    rows = [json.loads(line) for line in (tmp_path / "rnn" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert last["step"] == 200 and last["mdn_nll"] < first["mdn_nll"] - 1.0, (first, last)
    assert last["reward"] < 0.2 * first["reward"], (first, last)

    n = LinearController.num_params(Z, 16)
    pop = jr.normal(jr.key(1), (3, n)) * 0.1
    start = DreamStart(jnp.asarray(data.mu[:2]), jnp.full((2, Z), -6.0))
    fit = generation_fitness(pop, model, start, jr.key(2), jnp.float32(1.0), rollouts=2, steps=12, done_threshold=0.5)
    assert fit.shape == (3,) and bool(jnp.all(jnp.isfinite(fit)))

    loaded, meta = run_dir.load_dynamics(tmp_path, expected={"z_size": Z})
    assert isinstance(loaded, GRUTransition) and meta["kind"] == "gru"
    assert meta["hparams"] == rnn_hparams(cfg, Z) and loaded.num_mixtures == K
    assert run_dir.fixed_export(tmp_path) is None  # the M stage's own GRU trains on; a gossip export does not
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
