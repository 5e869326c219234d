"""Losses that recover a known answer."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from worldmodels.config import GossipConfig, RNNConfig, VAEConfig
from worldmodels.losses import (
    asymmetric_mse,
    binary_cross_entropy,
    kl_diag_normal,
    mdn_nll,
    rnn_step_loss,
    vae_loss,
    weighted_total,
)
from worldmodels.models.mdnrnn import MDNOutput


def test_mdn_nll_recovers_a_known_mixture():
    """Fit a free 2-component mixture in 2-D to samples of a known one; weights and means come back."""
    true_pi = jnp.array([0.3, 0.7])
    true_mu = jnp.array([[-2.0, 1.0], [2.0, -1.0]])
    true_sigma = jnp.array([[0.3, 0.5], [0.4, 0.2]])
    k_comp, k_noise = jr.split(jr.key(0))
    comp = jr.categorical(k_comp, jnp.log(true_pi), shape=(4000,))
    data = true_mu[comp] + true_sigma[comp] * jr.normal(k_noise, (4000, 2))

    params = {"logits": jnp.zeros(2), "mu": jnp.array([[-0.5, 0.0], [0.5, 0.0]]), "log_sigma": jnp.zeros((2, 2))}

    def loss(p):
        out = MDNOutput(jax.nn.log_softmax(p["logits"]), p["mu"], p["log_sigma"], jnp.float32(0), jnp.float32(0))
        return jnp.mean(jax.vmap(lambda z: mdn_nll(out, z))(data))

    opt = optax.adam(0.05)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    for _ in range(1500):
        params, state = step(params, state)
    order = jnp.argsort(params["mu"][:, 0])
    np.testing.assert_allclose(jax.nn.softmax(params["logits"])[order], true_pi, atol=0.04)
    np.testing.assert_allclose(params["mu"][order], true_mu, atol=0.08)
    np.testing.assert_allclose(jnp.exp(params["log_sigma"])[order], true_sigma, atol=0.05)


def test_mdn_nll_matches_closed_form_for_one_gaussian():
    mu, sigma, z = jnp.array([[0.5, -1.0]]), jnp.array([[2.0, 0.5]]), jnp.array([1.0, 0.0])
    out = MDNOutput(jnp.zeros(1), mu, jnp.log(sigma), jnp.float32(0), jnp.float32(0))
    expected = -jnp.sum(jax.scipy.stats.norm.logpdf(z, mu[0], sigma[0])) / 2
    np.testing.assert_allclose(mdn_nll(out, z), expected, rtol=1e-5)


def test_kl_zero_for_standard_normal_and_free_bits_floor():
    assert float(kl_diag_normal(jnp.zeros(8), jnp.zeros(8))) == 0.0
    x = jnp.full((64, 64, 3), 0.5)
    losses = vae_loss(x, x, jnp.zeros(32), jnp.zeros(32), kl_tolerance=0.5)
    assert float(losses["recon"]) == 0.0
    assert float(losses["kl"]) == 16.0  # max(0, 0.5 * 32)
    big = vae_loss(x, x, jnp.full(32, 3.0), jnp.zeros(32), kl_tolerance=0.5)
    np.testing.assert_allclose(big["kl"], 0.5 * 32 * 9.0, rtol=1e-6)


def test_asymmetric_mse_weights_overprediction():
    assert float(asymmetric_mse(jnp.float32(2.0), jnp.float32(1.0), 5.0)) == 5.0
    assert float(asymmetric_mse(jnp.float32(0.0), jnp.float32(1.0), 5.0)) == 1.0


def test_bce_matches_definition():
    logit = jnp.array([-3.0, 0.0, 2.5])
    label = jnp.array([0.0, 1.0, 1.0])
    p = jax.nn.sigmoid(logit)
    expected = -(label * jnp.log(p) + (1 - label) * jnp.log(1 - p))
    np.testing.assert_allclose(binary_cross_entropy(logit, label), expected, rtol=1e-5)


def test_reward_head_learns_the_mean_reward_with_asymmetry():
    """A constant predictor under the asymmetric MSE settles below the mean (over-prediction costs 5x)."""
    targets = jr.normal(jr.key(0), (2000,))
    w = jnp.float32(0.0)
    for _ in range(300):
        g = jax.grad(lambda w: jnp.mean(asymmetric_mse(w, targets, 5.0)))(w)
        w = w - 0.2 * g
    assert float(w) < float(jnp.mean(targets)) - 0.2


def test_weighted_total_needs_a_scale_for_every_term():
    terms = {"mdn_nll": jnp.float32(2.0), "reward": jnp.float32(3.0), "done": jnp.float32(5.0)}
    assert float(weighted_total(terms, RNNConfig(reward_weight=10.0, done_weight=0.5).loss_scales)) == 34.5
    with pytest.raises(ValueError, match=r"no scale for \['done'\], no term for \[\]"):
        weighted_total(terms, {"mdn_nll": 1.0, "reward": 1.0})
    with pytest.raises(ValueError, match=r"no term for \['extra'\]"):
        weighted_total(terms, {"mdn_nll": 1.0, "reward": 1.0, "done": 1.0, "extra": 1.0})


def test_every_config_scales_exactly_its_loss_terms():
    x = jnp.full((64, 64, 3), 0.5)
    vae_terms = vae_loss(x, x, jnp.zeros(4), jnp.zeros(4), kl_tolerance=0.5)
    assert set(vae_terms) == set(VAEConfig().loss_scales) == set(GossipConfig().vae_loss_scales)
    out = MDNOutput(jnp.zeros(2), jnp.zeros((2, 4)), jnp.zeros((2, 4)), jnp.float32(0.0), jnp.float32(0.0))
    rnn_terms = rnn_step_loss(out, jnp.zeros(4), jnp.float32(0.0), jnp.float32(0.0), reward_overpredict_weight=5.0)
    assert set(rnn_terms) == set(RNNConfig().loss_scales) == set(GossipConfig().dynamics_loss_scales)
