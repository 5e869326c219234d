"""The RSSM (models/rssm.py), its losses, its training and its place in the dream: scan equals loop, KL balancing's
gradient routing, two-hot round trips, a loss that recovers a known system, the protocol and a checkpoint round trip."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from worldmodels.losses import kl_balance, rssm_sequence_loss
from worldmodels.models import twohot
from worldmodels.models.rssm import RSSM, imagine, observe

LATENTS = ("gaussian", "categorical")


def small(latent: str, seed: int = 0, stoch: int = 3) -> RSSM:
    return RSSM(
        z_size=4, action_size=3, hidden_size=8, latent=latent, stoch=stoch, classes=4, units=16, key=jr.key(seed)
    )


@pytest.mark.parametrize("latent", LATENTS)
def test_observe_and_imagine_scanned_equal_a_python_loop(latent):
    model = small(latent)
    z = jr.normal(jr.key(1), (6, 4))
    actions = jr.uniform(jr.key(2), (6, 3), minval=-1.0, maxval=1.0)
    seq = observe(model, z, actions, jr.key(3))
    assert seq.h.shape == (6, 8) and seq.s.shape == (6, model.state_size)
    h = model.initial_state().h
    for t, key in enumerate(jr.split(jr.key(3), 6)):
        np.testing.assert_allclose(seq.h[t], h, atol=1e-6)
        h, (prior, post, s) = model.observe_step(h, z[t], actions[t], key)
        np.testing.assert_allclose(seq.s[t], s, atol=1e-6)
        for a, b in zip(jax.tree.leaves((seq.prior, seq.post)), jax.tree.leaves((prior, post)), strict=True):
            np.testing.assert_allclose(a[t], b, atol=1e-6)

    hs, ss = imagine(model, seq.h[-1], seq.s[-1], actions, jr.key(4))
    h, s = seq.h[-1], seq.s[-1]
    for t, key in enumerate(jr.split(jr.key(4), 6)):
        h, s = model.imagine_step(h, s, actions[t], key)
        np.testing.assert_allclose(hs[t], h, atol=1e-6)
        np.testing.assert_allclose(ss[t], s, atol=1e-6)


def test_categorical_latent_is_one_hot_with_unimix_and_straight_through_gradients():
    model = small("categorical")
    stats = model.prior(jnp.ones(8))
    probs = jnp.exp(stats.logits)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert float(probs.min()) >= 0.01 / 4 - 1e-7  # 1 % uniform mix: no class is impossible
    s = model.sample(stats, jr.key(0)).reshape(3, 4)
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-6)
    assert set(np.unique(np.round(np.asarray(s), 6))) <= {0.0, 1.0}
    # straight-through: d sample / d logits is the gradient of the probabilities, not zero
    g = jax.grad(lambda h: jnp.sum(model.sample(model.prior(h), jr.key(0)) * jnp.arange(12.0)))(jnp.ones(8))
    assert float(jnp.abs(g).sum()) > 0


@pytest.mark.parametrize("latent", LATENTS)
def test_kl_balancing_sends_gradients_only_where_its_stop_gradients_say(latent):
    """L_dyn trains the prior only, L_rep the posterior only (DreamerV3 Eq. 5); below free bits neither."""
    model = small(latent)
    h, z = jr.normal(jr.key(1), (8,)), jr.normal(jr.key(2), (4,)) * 3

    def grads(term, free):
        def f(m):
            return kl_balance(m, m.posterior(h, z), m.prior(h), free)[term]

        g = eqx.filter_grad(f)(model)
        norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))  # noqa: E731
        return norm(g.prior_net), norm(g.post_net)

    prior_g, post_g = grads("kl_dyn", 0.0)
    assert prior_g > 0 and post_g == 0
    prior_g, post_g = grads("kl_rep", 0.0)
    assert prior_g == 0 and post_g > 0
    assert grads("kl_dyn", 1e6) == (0.0, 0.0)  # free bits: a KL under the floor is not pushed


def test_two_hot_encode_decode_round_trip():
    ys = jnp.array([-250.0, -3.2, -0.01, 0.0, 0.5, 7.0, 1000.0])
    enc = jax.vmap(twohot.encode)(ys)
    np.testing.assert_allclose(enc.sum(-1), 1.0, atol=1e-6)
    assert int((enc > 0).sum(-1).max()) <= 2
    back = jax.vmap(lambda w: twohot.symexp(jnp.sum(w * twohot.bins())))(enc)
    np.testing.assert_allclose(back, ys, rtol=1e-4, atol=1e-5)
    # the loss is minimal at the logits of the target itself
    logits = jnp.log(enc[4] + 1e-12)
    assert float(twohot.loss(logits, ys[4])) < float(twohot.loss(jnp.log(enc[5] + 1e-12), ys[4]))
    np.testing.assert_allclose(twohot.decode(logits), ys[4], rtol=1e-4)


@pytest.mark.parametrize("latent", LATENTS)
def test_rssm_learns_a_known_linear_system_and_its_reward(latent):
    """z_{t+1} = 0.9 z_t + 0.5 [a, 0]: after training, the protocol step predicts z_{t+1} and r_t = 1 + z_t[0]
    five times better than the untrained model (z_{t+1} for categoricals, which quantise the state: twice) and
    below the data's own spread by as much."""
    import optax

    rng = np.random.default_rng(0)
    B, L = 32, 12

    def batch(seed):
        r = np.random.default_rng(seed)
        a = r.uniform(-1, 1, (B, L, 3)).astype(np.float32)
        z = np.zeros((B, L + 1, 4), np.float32)
        z[:, 0] = r.normal(size=(B, 4))
        for t in range(L):
            z[:, t + 1] = 0.9 * z[:, t] + 0.5 * np.concatenate([a[:, t], np.zeros((B, 1))], -1)
        return z, a, (1.0 + z[:, :-1, 0]).astype(np.float32)

    model = small(latent, stoch=8)
    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, z, a, r, key):
        def loss(m):
            keys = jr.split(key, B)
            terms = jax.vmap(lambda *x: rssm_sequence_loss(m, *x, free_nats=0.1))(z, a, r, jnp.zeros_like(r), keys)
            return sum(terms[k].mean() * w for k, w in (("obs", 1), ("reward", 1), ("cont", 1), ("kl_dyn", 1),
                                                        ("kl_rep", 0.1)))  # fmt: skip

        g = eqx.filter_grad(loss)(model)
        upd, state = opt.update(g, state)
        return eqx.apply_updates(model, upd), state

    def errors(m):
        z, a, r = batch(999)
        err_z, err_r = [], []
        for b in range(8):
            st = m.initial_state()
            for t in range(L):
                st, out = m(jnp.asarray(z[b, t]), jnp.asarray(a[b, t]), st)
                err_z.append(float(jnp.mean((out.mu[0] - z[b, t + 1]) ** 2)))
                err_r.append(float((out.reward - r[b, t]) ** 2))
        return np.mean(err_z), np.mean(err_r)

    before = errors(model)
    for i in range(300):
        z, a, r = batch(int(rng.integers(1 << 30)))
        model, state = step(model, state, z, a, r, jr.key(i))
    after = errors(model)
    spread = batch(999)[0].var()
    bound = 0.2 if latent == "gaussian" else 0.45  # 8 x 4 categoricals quantise the continuous state
    assert after[0] < bound * before[0] and after[0] < bound * spread, (before, after, spread)
    assert after[1] < 0.2 * before[1], (before, after)


@pytest.mark.parametrize("latent", LATENTS)
def test_rssm_runs_in_the_fused_dream_and_round_trips_through_its_checkpoint(tmp_path, latent):
    from worldmodels import checkpoint, run_dir
    from worldmodels.dream import DreamStart, generation_fitness, warm_up
    from worldmodels.models.controller import LinearController
    from worldmodels.models.dynamics import Dynamics

    model = small(latent)
    assert isinstance(model, Dynamics)
    n = LinearController.num_params(4, 8)
    pop = jr.normal(jr.key(1), (3, n)) * 0.1
    start = DreamStart(jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    fit = generation_fitness(pop, model, start, jr.key(2), jnp.float32(1.0), rollouts=2, steps=5, done_threshold=0.5)
    assert fit.shape == (3,) and bool(jnp.all(jnp.isfinite(fit)))
    states = warm_up(model, jnp.ones((5, 4)), jnp.zeros((5, 3)))
    assert states.h.shape == (6, 8)

    hparams = {"z_size": 4, "action_size": 3, "hidden_size": 8, "latent": latent, "stoch": 3, "classes": 4,
               "units": 16}  # fmt: skip
    checkpoint.save(tmp_path / "rnn" / "ckpt", 7, model, kind="rssm", hparams=hparams)
    loaded, meta = run_dir.load_dynamics(tmp_path, expected={"z_size": 4})
    assert isinstance(loaded, RSSM) and meta["kind"] == "rssm" and loaded.latent == latent
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rnn_config_refuses_bad_rssm_values_and_scales_the_rssm_terms():
    from worldmodels.config import RNNConfig

    cfg = RNNConfig(kind="rssm")
    assert set(cfg.loss_scales) == {"obs", "reward", "cont", "kl_dyn", "kl_rep"}
    assert cfg.loss_scales["kl_rep"] == 0.1 and cfg.loss_scales["kl_dyn"] == 1.0
    for bad, match in (({"kind": "lstm"}, "rnn.kind"), ({"latent": "beta"}, "rnn.latent"),
                       ({"classes": 1}, "rnn.classes"), ({"free_nats": -1.0}, "rnn.free_nats")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(cfg, **bad)
