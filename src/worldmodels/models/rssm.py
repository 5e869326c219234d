"""Recurrent state-space model (RSSM): a deterministic GRU path and a stochastic latent with a prior and a posterior.

PlaNet's RSSM (Hafner et al. 2019, "Learning Latent Dynamics for Planning from Pixels", Sec. 3, Eqs. 1-4
and Fig. 2c), as DreamerV1-V3 use it (Hafner et al. 2020, 2021, 2023):

* deterministic state   h_t = f(h_{t-1}, s_{t-1}, a_{t-1})   a GRU (Cho et al. 2014) on [s, a] through a dense layer;
* prior (transition)    p(s_t | h_t)                          an MLP on h_t;
* posterior             q(s_t | h_t, e_t)                     an MLP on [h_t, e_t] with e_t the observation's embedding;
* decoders on the model state (h_t, s_t): the observation, the reward (symlog two-hot, ``twohot``) and the
  continue flag (Bernoulli).

The stochastic latent s_t is either a diagonal Gaussian (PlaNet, DreamerV1: std = softplus(x) + 0.1) or
``groups`` categoricals of ``classes`` classes (DreamerV2/V3: 32 x 32, sampled one-hot with straight-through
gradients, Bengio et al. 2013; the probabilities mixed with 1 % uniform, DreamerV3 Sec. 3 "unimix").

Observation path here: the RSSM reads the frozen VAE's latent z_t (the observation is the VAE posterior,
e_t = z_t) and its observation decoder predicts a diagonal Gaussian over z_t. So the RSSM is trained on the
same latent sequences as the MDN-RNN, and it implements the ``Dynamics`` protocol:

``__call__(z_t, a_t, state_t)`` takes the *mode* s_t of the posterior q(s_t | h_t, z_t) (the mean of a Gaussian,
each group's likeliest class for categoricals), advances h_{t+1} = f(h_t, s_t, a_t), and predicts from
(h_{t+1}, the mode of the prior p(s_{t+1} | h_{t+1}))
a single Gaussian over z_{t+1} (an ``MDNOutput`` with K = 1), the reward of a_t and the logit of the episode
ending. The protocol step has no random key, so its stochasticity lives in the dream's sampling of z_{t+1}
(at the dream's temperature), which the next step reads back through the posterior: a dream of the RSSM
runs in the same fused engine, controller and agent as the MDN-RNN's. ``observe_step`` and ``imagine_step``
are the sampled steps of training and of latent imagination (Hafner et al. 2020, Sec. 3).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from worldmodels.models import twohot
from worldmodels.models.mdnrnn import MDNOutput, batch_major_linear
from worldmodels.models.transition import gru_step

LATENTS = ("gaussian", "categorical")
"""The stochastic latent kinds of ``RSSM``."""
MIN_STD = 0.1
"""Floor of the Gaussian latent's standard deviation (Hafner et al. 2020, DreamerV1's ``min_std``)."""


class RSSMState(NamedTuple):
    """The RSSM's state between protocol steps: the deterministic GRU state ``h``, float32 (H,)."""

    h: Float[Array, " H"]


class Stats(NamedTuple):
    """Parameters of a stochastic latent distribution (one example).

    Gaussian: ``mean`` and ``std``, float32 (S,). Categorical: ``logits`` float32 (G, C) of the unimix
    probabilities (``mean`` and ``std`` are then unused zeros of shape (0,)).
    """

    mean: Array
    std: Array
    logits: Array


def categorical_logp(raw: Float[Array, " N"], groups: int, classes: int, unimix: float) -> Float[Array, "G K"]:
    """log((1 - unimix) softmax(raw) + unimix / K) per group of K classes (DreamerV3 Sec. 3, the 1 % uniform mix)."""
    probs = (1.0 - unimix) * jax.nn.softmax(raw.reshape(groups, classes), -1) + unimix / classes
    return jnp.log(probs)


def categorical_sample(logp: Float[Array, "G K"], key: PRNGKeyArray) -> Float[Array, " GK"]:
    """One-hot samples of G categoricals, flat (G * K,), with straight-through gradients onehot + p - sg(p)
    (Bengio et al. 2013; DreamerV2 Sec. 2, Algorithm 1)."""
    onehot = jax.nn.one_hot(jr.categorical(key, logp, axis=-1), logp.shape[-1])
    probs = jnp.exp(logp)
    return (onehot + probs - jax.lax.stop_gradient(probs)).reshape(-1)


def categorical_kl(q: Float[Array, "G K"], p: Float[Array, "G K"]) -> Float[Array, ""]:
    """KL(q || p) in nats, summed over groups, from log-probabilities: sum q_c (log q_c - log p_c)."""
    return jnp.sum(jnp.exp(q) * (q - p))


class MLP(eqx.Module):
    """Dense layers with SiLU between them (batch-major, ``mdnrnn.batch_major_linear``); linear output."""

    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, sizes: list[int], *, key: PRNGKeyArray, zero_last: bool = False):
        keys = jr.split(key, len(sizes) - 1)
        layers = [eqx.nn.Linear(i, o, key=k) for i, o, k in zip(sizes[:-1], sizes[1:], keys, strict=True)]
        if zero_last:  # DreamerV3 initialises the reward and critic outputs to zero
            last = layers[-1]
            layers[-1] = eqx.tree_at(
                lambda m: (m.weight, m.bias), last, (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias))
            )
        self.layers = tuple(layers)

    def __call__(self, x: Array) -> Array:
        for layer in self.layers[:-1]:
            x = jax.nn.silu(batch_major_linear(layer, x))
        return batch_major_linear(self.layers[-1], x)


class RSSM(eqx.Module):
    """RSSM on VAE latents, one example and one step.

    Attributes:
        z_size: Z, the observed (VAE) latent size.
        action_size: A.
        hidden_size: H, the deterministic GRU state (what the controller reads).
        num_mixtures: always 1 (the protocol prediction is one Gaussian).
        latent: ``gaussian`` or ``categorical``.
        stoch: S for Gaussian latents, or the number of groups G for categoricals.
        classes: C classes per group (categorical only).
        units: hidden units of every MLP.
        unimix: mixing weight of the uniform distribution in the categorical probabilities.
    """

    img_in: eqx.nn.Linear
    cell: eqx.nn.GRUCell
    prior_net: MLP
    post_net: MLP
    obs_net: MLP
    reward_net: MLP
    cont_net: MLP
    z_size: int = eqx.field(static=True)
    action_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    num_mixtures: int = eqx.field(static=True)
    latent: str = eqx.field(static=True)
    stoch: int = eqx.field(static=True)
    classes: int = eqx.field(static=True)
    units: int = eqx.field(static=True)
    unimix: float = eqx.field(static=True)

    def __init__(
        self,
        z_size: int = 32,
        action_size: int = 3,
        hidden_size: int = 256,
        latent: str = "gaussian",
        stoch: int = 32,
        classes: int = 32,
        units: int = 256,
        unimix: float = 0.01,
        *,
        key: PRNGKeyArray,
    ):
        if latent not in LATENTS:
            raise ValueError(f"RSSM latent must be one of {', '.join(LATENTS)}, got {latent!r}")
        self.z_size, self.action_size, self.hidden_size, self.num_mixtures = z_size, action_size, hidden_size, 1
        self.latent, self.stoch, self.classes, self.units, self.unimix = latent, stoch, classes, units, unimix
        s_flat = self.state_size
        n_stats = 2 * stoch if latent == "gaussian" else stoch * classes
        k = jr.split(key, 7)
        self.img_in = eqx.nn.Linear(s_flat + action_size, units, key=k[0])
        self.cell = eqx.nn.GRUCell(units, hidden_size, key=k[1])
        self.prior_net = MLP([hidden_size, units, n_stats], key=k[2])
        self.post_net = MLP([hidden_size + z_size, units, n_stats], key=k[3])
        self.obs_net = MLP([hidden_size + s_flat, units, 2 * z_size], key=k[4])
        self.reward_net = MLP([hidden_size + s_flat, units, twohot.NUM_BINS], key=k[5], zero_last=True)
        self.cont_net = MLP([hidden_size + s_flat, units, 1], key=k[6])

    @property
    def state_size(self) -> int:
        """Flat size of the stochastic latent s: S (Gaussian) or G * C (categorical)."""
        return self.stoch if self.latent == "gaussian" else self.stoch * self.classes

    # distributions

    def stats(self, raw: Float[Array, " N"]) -> Stats:
        """Distribution parameters from a network's raw output.

        Gaussian: mean, std = softplus(x) + ``MIN_STD`` (DreamerV1). Categorical: the log of the
        probabilities (1 - unimix) softmax(x) + unimix / C per group (DreamerV3 Sec. 3).
        """
        if self.latent == "gaussian":
            mean, raw_std = jnp.split(raw, 2)
            return Stats(mean, jax.nn.softplus(raw_std) + MIN_STD, jnp.zeros((0,)))
        return Stats(jnp.zeros((0,)), jnp.zeros((0,)), categorical_logp(raw, self.stoch, self.classes, self.unimix))

    def mode(self, stats: Stats) -> Float[Array, " S"]:
        """The distribution's most likely value as a flat latent: the Gaussian mean, or each group's most likely
        class one-hot (G * C,) -- a value of the kind the transition was trained on (samples)."""
        if self.latent == "gaussian":
            return stats.mean
        return jax.nn.one_hot(jnp.argmax(stats.logits, -1), self.classes).reshape(-1)

    def sample(self, stats: Stats, key: PRNGKeyArray) -> Float[Array, " S"]:
        """A reparameterised sample, flat (S,) or (G * C,).

        Gaussian: mean + std * eps. Categorical: one-hot samples with straight-through gradients,
        onehot + p - stop_gradient(p) (Bengio et al. 2013; DreamerV2 Sec. 2, Algorithm 1).
        """
        if self.latent == "gaussian":
            return stats.mean + stats.std * jr.normal(key, stats.mean.shape)
        return categorical_sample(stats.logits, key)

    def kl(self, post: Stats, prior: Stats) -> Float[Array, ""]:
        """KL(post || prior) in nats, summed over the latent's dimensions or groups.

        Gaussian: 0.5 sum(log(s_p^2 / s_q^2) + (s_q^2 + (m_q - m_p)^2) / s_p^2 - 1). Categorical:
        sum over groups of sum_c q_c (log q_c - log p_c).
        """
        if self.latent == "gaussian":
            var_q, var_p = post.std**2, prior.std**2
            return 0.5 * jnp.sum(jnp.log(var_p / var_q) + (var_q + (post.mean - prior.mean) ** 2) / var_p - 1.0)
        return categorical_kl(post.logits, prior.logits)

    # the core shared by observe and imagine

    def initial_state(self) -> RSSMState:
        """h_0 = 0, float32 (H,)."""
        return RSSMState(jnp.zeros((self.hidden_size,), jnp.float32))

    def transition(
        self, h: Float[Array, " H"], s: Float[Array, " S"], action: Float[Array, " A"]
    ) -> Float[Array, " H"]:
        """h_{t+1} = GRU(h_t, SiLU(W [s_t, a_t] + b)) (Hafner et al. 2019, Eq. 1's deterministic path)."""
        x = jax.nn.silu(batch_major_linear(self.img_in, jnp.concatenate([s, action])))
        return gru_step(self.cell, x, h)

    def prior(self, h: Float[Array, " H"]) -> Stats:
        """p(s_t | h_t), the transition prior (Hafner et al. 2019, Eq. 1)."""
        return self.stats(self.prior_net(h))

    def posterior(self, h: Float[Array, " H"], z: Float[Array, " Z"]) -> Stats:
        """q(s_t | h_t, z_t), the posterior given the observation's latent (Hafner et al. 2019, Eq. 3)."""
        return self.stats(self.post_net(jnp.concatenate([h, z])))

    def heads(self, h: Float[Array, " H"], s: Float[Array, " S"]) -> tuple[Array, Array, Array, Array]:
        """Decoders on the model state (h_t, s_t).

        Returns:
            (obs_mu (Z,), obs_log_sigma (Z,), reward logits (``twohot.NUM_BINS``,), continue logit ()).
        """
        feat = jnp.concatenate([h, s])
        obs_mu, obs_log_sigma = jnp.split(self.obs_net(feat), 2)
        return obs_mu, obs_log_sigma, self.reward_net(feat), self.cont_net(feat)[0]

    def observe_step(
        self, h: Float[Array, " H"], z: Float[Array, " Z"], action: Float[Array, " A"], key: PRNGKeyArray
    ) -> tuple[Float[Array, " H"], tuple[Stats, Stats, Float[Array, " S"]]]:
        """One training step on a real frame: prior p(s_t | h_t), posterior q(s_t | h_t, z_t), a posterior
        sample s_t, and h_{t+1} = f(h_t, s_t, a_t) (Hafner et al. 2019, Eqs. 1 and 3).

        Returns:
            (h_{t+1} (H,), (prior stats, posterior stats, s_t (S,))).
        """
        prior, post = self.prior(h), self.posterior(h, z)
        s = self.sample(post, key)
        return self.transition(h, s, action), (prior, post, s)

    def imagine_step(
        self, h: Float[Array, " H"], s: Float[Array, " S"], action: Float[Array, " A"], key: PRNGKeyArray
    ) -> tuple[Float[Array, " H"], Float[Array, " S"]]:
        """One step of latent imagination: h_{t+1} = f(h_t, s_t, a_t), s_{t+1} ~ p(s_{t+1} | h_{t+1})
        (Hafner et al. 2020, Sec. 3, "latent imagination").

        Returns:
            (h_{t+1} (H,), s_{t+1} (S,)).
        """
        h = self.transition(h, s, action)
        return h, self.sample(self.prior(h), key)

    def __call__(
        self, z: Float[Array, " Z"], action: Float[Array, " A"], state: RSSMState
    ) -> tuple[RSSMState, MDNOutput]:
        """The ``Dynamics`` step: consume (z_t, a_t), return h_{t+1} and the prediction for step t+1.

        s_t is the posterior's mode given z_t; the prediction decodes (h_{t+1}, the prior's mode of s_{t+1}):
        one Gaussian over z_{t+1}, the reward of a_t (``twohot.decode``) and the done logit (the negated
        continue logit).

        Returns:
            (RSSMState, MDNOutput with log_pi (1,), mu and log_sigma (1, Z), reward and done_logit ()).
        """
        s = self.mode(self.posterior(state.h, z))
        h = self.transition(state.h, s, action)
        obs_mu, obs_log_sigma, reward_logits, cont_logit = self.heads(h, self.mode(self.prior(h)))
        return RSSMState(h), MDNOutput(
            log_pi=jnp.zeros((1,), obs_mu.dtype),
            mu=obs_mu[None],
            log_sigma=obs_log_sigma[None],
            reward=twohot.decode(reward_logits),
            done_logit=-cont_logit,
        )


class Observed(NamedTuple):
    """What ``observe`` returns per step t (leading axis L + 1): prior and posterior stats, the posterior
    sample s_t, and h_t (the state the frame was seen in)."""

    prior: Stats
    post: Stats
    s: Array
    h: Array


def observe(model: RSSM, z: Float[Array, "T Z"], actions: Float[Array, "T A"], key: PRNGKeyArray) -> Observed:
    """Filter a real sequence with ``lax.scan`` over ``observe_step`` from ``initial_state()``.

    Args:
        model: the RSSM.
        z: float32 (T, Z) observed latents z_0 .. z_{T-1}.
        actions: float32 (T, A) the action taken at each frame (the last one only advances h_T, unused).
        key: PRNG key (split into one per step).

    Returns:
        ``Observed`` with a leading T axis.
    """
    keys = jr.split(key, z.shape[0])

    def step(h, inputs):
        zt, at, kt = inputs
        h_next, (prior, post, s) = model.observe_step(h, zt, at, kt)
        return h_next, Observed(prior, post, s, h)

    _, out = jax.lax.scan(step, model.initial_state().h, (z, actions, keys))
    return out


def imagine(
    model: RSSM, h: Float[Array, " H"], s: Float[Array, " S"], actions: Float[Array, "T A"], key: PRNGKeyArray
) -> tuple[Float[Array, "T H"], Float[Array, "T S"]]:
    """Open-loop latent imagination of a given action sequence from (h_0, s_0) with ``lax.scan``.

    Returns:
        (h_1 .. h_T (T, H), s_1 .. s_T (T, S)), s_t sampled from the prior.
    """
    keys = jr.split(key, actions.shape[0])

    def step(carry, inputs):
        h, s = model.imagine_step(*carry, *inputs)
        return (h, s), (h, s)

    _, (hs, ss) = jax.lax.scan(step, (h, s), (actions, keys))
    return hs, ss
