"""IPPO and the teammate population on JaxMARL's Overcooked: GAE, the scripted cook, pool sampling, checkpoints."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from worldmodels.config import PPOConfig
from worldmodels.errors import MissingInput
from worldmodels.marl import env as menv
from worldmodels.marl.env import obs_size
from worldmodels.marl.partners import (
    SCRIPTED,
    build_population,
    load_pool,
    make_pool,
    save_pool,
    scripted_act,
    subset,
)
from worldmodels.marl.ppo import PolicyNet, gae, train_ppo


@pytest.fixture(scope="module")
def env():
    return menv.make("cramped_room")


@pytest.fixture(scope="module")
def obs(env):
    return jax.jit(lambda k: menv.reset(env, k))(jr.PRNGKey(3))[0]


def _pool(env):
    """A pool of a learned net (with a far-from-uniform policy: its head's bias) and every scripted kind."""
    net = PolicyNet(obs_size(env), key=jr.PRNGKey(1))
    net = eqx.tree_at(lambda n: n.actor[-1].bias, net, jnp.asarray([1.5, 0.5, -1.0, 0.0, 1.0, -2.0]))
    return make_pool(["ppo_0", *SCRIPTED], {"ppo_0": net}, obs_size=obs_size(env))


@eqx.filter_jit
def _all_probs(pool, obs):
    """float32 (M, 6): every member's action distribution on one observation."""
    return jax.vmap(pool.probs, (0, None))(jnp.arange(len(pool)), obs)


def test_gae_matches_python_loop():
    t, b = 9, 3
    kr, kv, kd, kl = jr.split(jr.PRNGKey(0), 4)
    rewards = jr.normal(kr, (t, b))
    values = jr.normal(kv, (t, b))
    dones = jr.bernoulli(kd, 0.3, (t, b))
    last = jr.normal(kl, (b,))
    gamma, lam = 0.97, 0.9
    adv, targets = gae(rewards, values, dones, last, gamma, lam)
    r, v, d = np.asarray(rewards), np.asarray(values), np.asarray(dones, np.float64)
    expected = np.zeros((t, b))
    running = np.zeros(b)
    for i in reversed(range(t)):
        next_v = np.asarray(last) if i == t - 1 else v[i + 1]
        delta = r[i] + gamma * next_v * (1 - d[i]) - v[i]
        running = delta + gamma * lam * (1 - d[i]) * running
        expected[i] = running
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, expected + v, rtol=1e-5, atol=1e-5)


def test_scripted_cook_delivers_soups_beside_a_partner_that_stays(env):
    """The onion cook runs the whole cycle alone: onions into the pot, a plate, the soup, the delivery."""

    def episode(kinds, key):
        obs, state = menv.reset(env, key)

        def step(carry, k):
            state, obs = carry
            k0, k1, ke = jr.split(k, 3)
            actions = jnp.stack([scripted_act(kinds[0], obs[0], k0), scripted_act(kinds[1], obs[1], k1)])
            out, state = menv.step(env, ke, state, actions)
            return (state, out.obs), out.reward

        _, rewards = jax.lax.scan(step, (state, obs), jr.split(key, 400))
        return rewards.sum() / menv.SOUP_REWARD

    pairs = jnp.asarray([[SCRIPTED["cook"], SCRIPTED["stay"]], [SCRIPTED["stay"], SCRIPTED["cook"]]])
    keys = jr.split(jr.PRNGKey(0), 2)
    soups = np.asarray(jax.jit(jax.vmap(episode))(pairs, keys))
    assert soups.min() >= 1, soups
    assert soups.min() >= 5, f"the cook alone made {soups} soups in 400 steps; it makes 9-10 when working"


def test_scripted_probs(env, obs):
    pool = _pool(env)
    probs = dict(zip(pool.names, np.asarray(_all_probs(pool, obs[1])), strict=True))
    uniform = np.full(6, 1 / 6)
    np.testing.assert_allclose(probs["random"], uniform, rtol=1e-6)
    np.testing.assert_array_equal(probs["stay"], np.eye(6)[menv.STAY])
    assert sorted(probs["cook"].tolist()) == [0, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(probs["cook_eps"], 0.8 * probs["cook"] + 0.2 * uniform, rtol=1e-6)
    np.testing.assert_allclose(probs["ppo_0"].sum(), 1.0, rtol=1e-6)


def test_act_of_a_learned_member_samples_its_logits(env, obs):
    pool = _pool(env)
    member = jnp.int32(pool.names.index("ppo_0"))
    probs = np.asarray(_all_probs(pool, obs[1])[member])
    assert probs.max() < 0.95 and probs.min() < 0.1  # neither one-hot nor uniform: a real test of sampling
    n = 4000
    actions = jax.jit(jax.vmap(pool.act, (None, None, 0)))(member, obs[1], jr.split(jr.PRNGKey(7), n))
    freq = np.bincount(np.asarray(actions), minlength=6) / n
    np.testing.assert_allclose(freq, probs, atol=0.03)
    stay = jax.jit(jax.vmap(pool.act, (None, None, 0)))(
        jnp.int32(pool.names.index("stay")), obs[1], jr.split(jr.PRNGKey(8), 50)
    )
    assert (np.asarray(stay) == menv.STAY).all()


def test_tiny_self_play_ppo_runs(env):
    cfg = PPOConfig(total_steps=4 * 16 * 3, num_envs=4, num_steps=16, minibatches=2, shaped_anneal_steps=100)
    net, history = train_ppo(cfg, env, jr.PRNGKey(0), progress=False)
    assert isinstance(net, PolicyNet)
    assert set(history) == {"env_steps", "return", "shaped_return", "entropy", "loss"}
    assert all(len(v) == cfg.num_updates == 3 for v in history.values())
    np.testing.assert_array_equal(history["env_steps"], [64, 128, 192])
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["entropy"]).all()
    assert np.isnan(history["return"]).all()  # no 400-step episode ends in 48 steps
    logits, value = net(menv.reset(env, jr.PRNGKey(0))[0][0])
    assert logits.shape == (6,) and value.shape == () and np.isfinite(logits).all()


def test_tiny_ppo_beside_a_pool_runs(env):
    """The ego learns beside pool members (a learned net and scripted rules) drawn per episode."""
    cfg = PPOConfig(total_steps=2 * 8 * 2, num_envs=2, num_steps=8, minibatches=1, epochs=1)
    net, history = train_ppo(cfg, env, jr.PRNGKey(1), partners=_pool(env), progress=False)
    assert all(len(v) == 2 for v in history.values())
    assert np.isfinite(history["loss"]).all()


def test_ppo_config_names_the_flag():
    with pytest.raises(ValueError, match="--marl.partner-ppo.minibatches"):
        PPOConfig(num_envs=3, num_steps=5, minibatches=4)
    with pytest.raises(ValueError, match="marl.partner_ppo.num_envs"):
        PPOConfig(num_envs=0)


def test_pool_save_load_roundtrip_and_subset(env, obs, tmp_path):
    pool = _pool(env)
    save_pool(tmp_path / "pool", pool)
    loaded = load_pool(tmp_path / "pool")
    assert loaded.names == pool.names and len(loaded) == len(pool) == 5
    before = np.asarray(_all_probs(pool, obs[1]))
    np.testing.assert_array_equal(_all_probs(loaded, obs[1]), before)
    held_out = subset(loaded, ["cook", "ppo_0"])
    assert held_out.names == ("cook", "ppo_0") and held_out.num_nets == 1
    np.testing.assert_array_equal(_all_probs(held_out, obs[1]), before[[pool.names.index("cook"), 0]])
    scripted_only = subset(loaded, ["stay"])
    assert scripted_only.num_nets == 1  # a dummy net keeps the shapes fixed
    built = build_population(env, [("cook", 0), ("random", 0)], PPOConfig(), jr.PRNGKey(0))
    assert built.names == ("cook", "random") and built.num_nets == 1
    with pytest.raises(ValueError, match="nobody"):
        subset(loaded, ["nobody"])
    with pytest.raises(MissingInput, match="missing partner pool"):
        load_pool(tmp_path / "absent")
