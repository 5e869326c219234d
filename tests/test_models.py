"""Shape tests per module, the transposed convolution's custom gradient, scan equals loop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

from worldmodels.models import MDNRNN, ConvVAE, LinearController
from worldmodels.models.mdnrnn import most_likely_z, rollout_sequence, sample_next_z
from worldmodels.models.vae import conv_transpose_s2


def test_vae_shapes_single_and_batched():
    vae = ConvVAE(32, key=jr.key(0))
    x = jr.uniform(jr.key(1), (64, 64, 3))
    mu, logvar = vae.encode(x)
    assert mu.shape == (32,) and logvar.shape == (32,)
    recon, mu2, _ = vae(x, key=jr.key(2))
    assert recon.shape == (64, 64, 3)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    xb = jr.uniform(jr.key(1), (2, 5, 64, 64, 3))
    mub, _ = vae.encode(xb)
    assert mub.shape == (2, 5, 32)
    assert vae.decode(mub).shape == (2, 5, 64, 64, 3)
    # batched and single-example encodings agree
    np.testing.assert_allclose(vae.encode(xb[0, 0])[0], mub[0, 0], atol=1e-5)


def test_vae_paper_parameter_count():
    vae = ConvVAE(32, key=jr.key(0))
    n = sum(x.size for x in jax.tree.leaves(eqx.filter(vae, eqx.is_array)))
    # Encoder convs + mu/logvar dense + decoder dense + deconvs of Ha & Schmidhuber's Appendix A.1.
    enc = (4 * 4 * 3 * 32 + 32) + (4 * 4 * 32 * 64 + 64) + (4 * 4 * 64 * 128 + 128) + (4 * 4 * 128 * 256 + 256)
    dense = 2 * (1024 * 32 + 32) + (32 * 1024 + 1024)
    dec = (5 * 5 * 1024 * 128 + 128) + (5 * 5 * 128 * 64 + 64) + (6 * 6 * 64 * 32 + 32) + (6 * 6 * 32 * 3 + 3)
    assert n == enc + dense + dec


def test_residual_vae_shapes_blocks_and_refusal():
    vae = ConvVAE(8, "residual", key=jr.key(0))
    x = jr.uniform(jr.key(1), (2, 64, 64, 3))
    recon, mu, logvar = vae(x, key=jr.key(2))
    assert recon.shape == (2, 64, 64, 3) and mu.shape == (2, 8) and logvar.shape == (2, 8)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    n = lambda m: sum(a.size for a in jax.tree.leaves(eqx.filter(m, eqx.is_array)))  # noqa: E731
    # Six blocks of two 3x3 convolutions at widths 32, 64, 128 (encoder) and 128, 64, 32 (decoder).
    extra = 2 * sum(2 * (9 * c * c + c) for c in (32, 64, 128))
    assert n(vae) == n(ConvVAE(8, key=jr.key(0))) + extra
    # A block is a residual: x + F(x), so it changes its input (F is not zero) but keeps its shape.
    h = jr.normal(jr.key(3), (1, 6, 6, 128))
    out = vae.res_enc[2](h)
    assert out.shape == h.shape and 0 < float(jnp.abs(out - h).max())
    with pytest.raises(ValueError, match="arch must be one of conv, residual"):
        ConvVAE(8, "resnet", key=jr.key(0))


def test_beta_weights_the_vae_kl_term():
    from worldmodels.config import VAEConfig

    assert VAEConfig().loss_scales == {"recon": 1.0, "kl": 1.0}
    assert VAEConfig(beta=4.0).loss_scales == {"recon": 1.0, "kl": 4.0}
    with pytest.raises(ValueError, match="vae.beta must be >= 0"):
        VAEConfig(beta=-1.0)


@pytest.mark.parametrize("kernel", [5, 6])
def test_conv_transpose_custom_vjp_matches_autodiff(kernel):
    x = jr.normal(jr.key(0), (3, 5, 5, 8))
    w = jr.normal(jr.key(1), (kernel, kernel, 8, 4))

    def reference(x, w):
        return lax.conv_transpose(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_allclose(conv_transpose_s2(x, w), reference(x, w), rtol=1e-5, atol=1e-4)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(reference(x, w))), (0, 1))(x, w)
    g_new = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv_transpose_s2(x, w))), (0, 1))(x, w)
    for a, b in zip(g_ref, g_new, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_mdnrnn_step_shapes_and_normalised_mixture():
    rnn = MDNRNN(32, 3, 256, 5, key=jr.key(0))
    state, out = rnn(jnp.zeros(32), jnp.zeros(3), rnn.initial_state())
    assert state.h.shape == (256,) and state.c.shape == (256,)
    assert out.log_pi.shape == (5,) and out.mu.shape == (5, 32) and out.log_sigma.shape == (5, 32)
    assert out.reward.shape == () and out.done_logit.shape == ()
    np.testing.assert_allclose(jnp.sum(jnp.exp(out.log_pi)), 1.0, rtol=1e-5)
    assert sample_next_z(out, jr.key(1), 1.0).shape == (32,)
    assert most_likely_z(out).shape == (32,)


def test_rollout_sequence_scan_equals_python_loop():
    rnn = MDNRNN(8, 3, 16, 3, key=jr.key(0))
    z = jr.normal(jr.key(1), (12, 8))
    a = jr.uniform(jr.key(2), (12, 3))
    final, outs = rollout_sequence(rnn, z, a)
    state = rnn.initial_state()
    for t in range(12):
        state, out = rnn(z[t], a[t], state)
        np.testing.assert_allclose(outs.mu[t], out.mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outs.reward[t], out.reward, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.h, state.h, rtol=1e-5, atol=1e-6)


def test_temperature_scales_sampling_spread():
    rnn = MDNRNN(4, 3, 8, 2, key=jr.key(0))
    _, out = rnn(jnp.zeros(4), jnp.zeros(3), rnn.initial_state())
    keys = jr.split(jr.key(3), 4000)
    cold = jax.vmap(lambda k: sample_next_z(out, k, 0.1))(keys)
    hot = jax.vmap(lambda k: sample_next_z(out, k, 2.0))(keys)
    assert float(jnp.std(hot)) > float(jnp.std(cold))


def test_controller_paper_size_and_action_bounds():
    assert LinearController.num_params(32, 256) == 867
    flat = jr.normal(jr.key(0), (867,)) * 10.0
    ctrl = LinearController.from_flat(flat, 32, 256)
    np.testing.assert_array_equal(ctrl.to_flat(), flat)
    actions = jax.vmap(ctrl)(jr.normal(jr.key(1), (500, 32)) * 5, jr.normal(jr.key(2), (500, 256)) * 5)
    assert float(actions[:, 0].min()) >= -1.0 and float(actions[:, 0].max()) <= 1.0
    assert float(actions[:, 1:].min()) >= 0.0 and float(actions[:, 1:].max()) <= 1.0
    with pytest.raises(ValueError, match="867"):
        LinearController.from_flat(jnp.zeros(10), 32, 256)


def test_controller_with_a_hidden_layer_computes_its_formula_and_round_trips():
    """``MLPController``: a = squash(W_2 tanh(W_1 x + b_1) + b_2), N = U (I + 1) + A (U + 1); ``controller_from_flat``
    picks the class by ``units`` and refuses a wrong length or negative units."""
    from worldmodels.models.controller import MLPController, controller_from_flat, controller_num_params

    z, h, units = 4, 6, 5
    n = controller_num_params(z, h, 2, "zh", units=units)
    assert n == 5 * (10 + 1) + 2 * (5 + 1) == MLPController.num_params(z, h, 2, units=units)
    assert controller_num_params(z, h, 2, "z", units=units) == 5 * (4 + 1) + 2 * 6
    assert controller_num_params(z, h, 2, "zh") == LinearController.num_params(z, h, 2)
    flat = jr.normal(jr.key(0), (n,))
    ctrl = controller_from_flat(flat, z, h, 2, "tanh", "zh", units)
    assert isinstance(ctrl, MLPController) and ctrl.hidden_weight.shape == (5, 10) and ctrl.weight.shape == (2, 5)
    np.testing.assert_array_equal(ctrl.to_flat(), flat)
    zv, hv = jr.normal(jr.key(1), (z,)), jr.normal(jr.key(2), (h,))
    w1, b1 = np.asarray(flat[:50]).reshape(5, 10), np.asarray(flat[50:55])
    w2, b2 = np.asarray(flat[55:65]).reshape(2, 5), np.asarray(flat[65:])
    x = np.concatenate([zv, hv])
    np.testing.assert_allclose(ctrl(zv, hv), np.tanh(w2 @ np.tanh(w1 @ x + b1) + b2), rtol=1e-5, atol=1e-6)
    assert isinstance(controller_from_flat(jnp.zeros(2 * 10 + 2), z, h, 2, "tanh"), LinearController)
    v_only = controller_from_flat(jnp.zeros(5 * 5 + 2 * 6), z, h, 2, "tanh", "z", units)
    assert v_only(zv, hv * 100).shape == (2,)  # h is not read
    # CarRacing's squash keeps gas and brake in [0, 1] behind the hidden layer too.
    big = controller_from_flat(jr.normal(jr.key(3), (controller_num_params(z, h, 3, units=7),)) * 10, z, h, 3,
                               units=7)  # fmt: skip
    acts = jax.vmap(big)(jr.normal(jr.key(4), (200, z)) * 5, jr.normal(jr.key(5), (200, h)) * 5)
    assert float(acts[:, 1:].min()) >= 0.0 and float(acts.max()) <= 1.0 and float(acts[:, 0].min()) >= -1.0
    with pytest.raises(ValueError, match=r"\(67,\)"):
        controller_from_flat(jnp.zeros(66), z, h, 2, "tanh", "zh", units)
    with pytest.raises(ValueError, match="units must be >= 0"):
        controller_from_flat(jnp.zeros(22), z, h, 2, "tanh", "zh", -1)


def test_fused_lstm_step_equals_equinox_cell():
    import jax.random as jr

    from worldmodels.models import MDNRNN
    from worldmodels.models.mdnrnn import LSTMState, lstm_step

    rnn = MDNRNN(8, 3, 16, 2, key=jr.key(0))
    x = jr.normal(jr.key(1), (11,))
    state = LSTMState(jr.normal(jr.key(2), (16,)), jr.normal(jr.key(3), (16,)))
    h_ref, c_ref = rnn.cell(x, (state.h, state.c))
    h, c = lstm_step(rnn.cell, x, state)
    np.testing.assert_allclose(h, h_ref, atol=1e-6)
    np.testing.assert_allclose(c, c_ref, atol=1e-6)


def test_batch_major_gru_step_and_linear_equal_equinox():
    """``gru_step`` and ``batch_major_linear`` give eqx.nn.GRUCell's and eqx.nn.Linear's values, batched too."""
    import jax.random as jr

    from worldmodels.models.mdnrnn import batch_major_linear
    from worldmodels.models.transition import GRUTransition, gru_step

    m = GRUTransition(8, 3, 16, key=jr.key(0))
    x = jr.normal(jr.key(1), (5, 11))
    h = jr.normal(jr.key(2), (5, 16))
    ref = jax.vmap(m.cell)(x, h)
    np.testing.assert_allclose(jax.vmap(lambda a, b: gru_step(m.cell, a, b))(x, h), ref, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda a: batch_major_linear(m.head, a))(h), jax.vmap(m.head)(h), atol=1e-6)


def test_sample_next_z_from_drawn_noise_equals_categorical_then_normal():
    """Drawing the noise ahead (``mixture_noise``) gives exactly jax.random.categorical, then a normal draw."""
    rnn = MDNRNN(8, 3, 16, 4, key=jr.key(0))
    _, out = rnn(jr.normal(jr.key(1), (8,)), jnp.ones(3), rnn.initial_state())

    def reference(key, tau):
        k_comp, k_noise = jr.split(key)
        comp = jr.categorical(k_comp, out.log_pi / tau)
        return out.mu[comp] + jnp.exp(out.log_sigma[comp]) * jnp.sqrt(tau) * jr.normal(k_noise, (8,))

    keys = jr.split(jr.key(2), 200)
    for tau in (0.5, 1.0, 1.7):
        ours = jax.vmap(sample_next_z, in_axes=(None, 0, None))(out, keys, tau)
        np.testing.assert_array_equal(ours, jax.vmap(reference, in_axes=(0, None))(keys, tau))


def test_every_dynamics_kind_implements_the_protocol():
    """MDN-RNN and GRU transition satisfy ``Dynamics``: sizes, ``initial_state`` with ``h`` (H,), one step."""
    from worldmodels.models.dynamics import Dynamics, DynamicsState, batched_initial_state
    from worldmodels.models.registry import kinds

    assert set(kinds("dynamics")) >= {"mdnrnn", "gru"}
    for name, kind in kinds("dynamics").items():
        hp = {"z_size": 4, "action_size": 3, "hidden_size": 8} | ({"num_mixtures": 2} if name == "mdnrnn" else {})
        model = kind.build(**hp)
        assert isinstance(model, Dynamics), name
        state = model.initial_state()
        assert isinstance(state, DynamicsState) and state.h.shape == (8,)
        state, out = model(jnp.zeros(4), jnp.zeros(3), state)
        assert state.h.shape == (8,) and out.mu.shape == (model.num_mixtures, 4) and out.reward.shape == ()
        batched = batched_initial_state(model, 5)
        assert all(leaf.shape[0] == 5 for leaf in jax.tree.leaves(batched))


def test_registry_refuses_a_kind_of_the_wrong_role_and_a_second_registration():
    from worldmodels.errors import CheckpointError
    from worldmodels.models.registry import build_vae, kind_of, register

    assert kind_of("vae", "vision", "ck/1").build is build_vae
    with pytest.raises(
        CheckpointError, match=r"ck/1 holds a 'vae', not a world-model dynamics \(known kinds: 'mdnrnn'"
    ):
        kind_of("vae", "dynamics", "ck/1")
    with pytest.raises(CheckpointError, match="holds a None, not a controller"):
        kind_of(None, "controller", "ck/1")
    with pytest.raises(ValueError, match="already registered"):
        register("vae", "vision", build_vae, "again")
    with pytest.raises(ValueError, match="unknown role"):
        register("new", "planner", build_vae, "no such role")
