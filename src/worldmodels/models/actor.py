"""Actor and critic MLPs on the controller's inputs [z_t, h_t] (Hafner et al. 2020 DreamerV1; 2023 DreamerV3).

Both read what the linear controller reads (Ha & Schmidhuber 2018, Eq. 1): the latent z_t (Z,) of the frame
and the dynamics' recurrent state h_t (H,) (``Dynamics``: ``state.h``), so an ``Actor`` is a drop-in
controller (``actor(z, h) -> action (3,)``) for the agent, the dream and ``test_agent.py``.

* ``Actor``: the policy pi(a_t | z_t, h_t), a diagonal Gaussian over *raw* actions u_t whose sample is squashed
  to CarRacing's box by ``controller.squash_action`` (tanh for steering, (tanh + 1) / 2 for gas, clip(tanh) for
  brake). DreamerV1 (Sec. 3, "Action and value models") uses a tanh-transformed Gaussian,
  a = tanh(mu + sigma eps) with eps ~ N(0, I), sampled with reparameterisation; the std parameterisation here
  is DreamerV2's (Hafner et al. 2021, code ``dist='normal'``): sigma = (max_std - min_std) sigmoid(x + 2) +
  min_std, with min_std 0.1 and max_std 1.0. The deterministic action (``Actor.__call__``) is squash(mean),
  the squashed mode of the raw Gaussian as in DreamerV1's evaluation; it is not the mean action of the
  stochastic policy, above all for the brake, whose clip at 0 makes E[brake] > 0 where squash(mean) gives 0.
* ``Critic``: the value v(z_t, h_t) as DreamerV3's symlog two-hot categorical over ``twohot.NUM_BINS`` bins
  (Sec. 3, "Critic learning" and "Robust predictions", Eqs. 9-11), its output layer initialised to zero so
  that the first predictions are 0 (DreamerV3 Sec. 3 initialises the critic's and the reward head's output
  weights to zero).

Hidden layers are Linear (no bias) -> LayerNorm -> SiLU as in DreamerV3 (Appendix B, "Network architecture"),
written with ``mdnrnn.batch_major_linear`` so that ``vmap`` over starts gives batch-major products.
Every module acts on one example (``jax.vmap`` adds batch axes).
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from worldmodels.models import twohot
from worldmodels.models.controller import action_box, squash_action
from worldmodels.models.mdnrnn import batch_major_linear

MIN_STD = 0.1
"""Lower bound of the actor's raw-action standard deviation (DreamerV2's ``min_std``)."""
MAX_STD = 1.0
"""Upper bound of the actor's raw-action standard deviation (DreamerV2's ``max_std``)."""
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class _MLP(eqx.Module):
    """``layers`` hidden layers of ``units``: x -> SiLU(LayerNorm(W x)) each (DreamerV3, Appendix B)."""

    linears: tuple[eqx.nn.Linear, ...]
    norms: tuple[eqx.nn.LayerNorm, ...]

    def __init__(self, in_size: int, units: int, layers: int, *, key: PRNGKeyArray):
        keys = jr.split(key, max(layers, 1))
        sizes = [in_size] + [units] * layers
        self.linears = tuple(eqx.nn.Linear(sizes[i], sizes[i + 1], use_bias=False, key=keys[i]) for i in range(layers))
        self.norms = tuple(eqx.nn.LayerNorm(units) for _ in range(layers))

    def __call__(self, x: Float[Array, " I"]) -> Float[Array, " U"]:
        """float32 (I,) -> float32 (U,) (the input itself when there are no hidden layers)."""
        for linear, norm in zip(self.linears, self.norms, strict=True):
            x = jax.nn.silu(norm(batch_major_linear(linear, x)))
        return x


class Actor(eqx.Module):
    """The policy pi(u_t | z_t, h_t) = N(mean, diag(std^2)) over raw actions, a_t = squash_action(u_t).

    Attributes:
        mlp: the hidden layers on [z, h] (Z + H,).
        out: linear layer units -> 2 A: the raw mean (A,) and the raw std parameter (A,).
        z_size, hidden_size, action_size, units, layers: Z, H, A and the MLP's width and depth (static).
        squash: how raw actions map into the environment's box (``controller.squash_action``: ``carracing``,
            A = 3, or ``tanh``, any A; static, from the run's ``env.EnvSpec``).

    Raises:
        ValueError: (at construction) for another ``squash``, or ``carracing`` with A != 3.
    """

    mlp: _MLP
    out: eqx.nn.Linear
    z_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    action_size: int = eqx.field(static=True)
    units: int = eqx.field(static=True)
    layers: int = eqx.field(static=True)
    squash: str = eqx.field(static=True)

    def __init__(
        self,
        z_size: int,
        hidden_size: int,
        action_size: int = 3,
        units: int = 256,
        layers: int = 2,
        squash: str = "carracing",
        *,
        key: PRNGKeyArray,
    ):
        if action_box(squash, action_size)[0].shape != (action_size,):  # action_box refuses an unknown squash
            raise ValueError(
                f"actor squash {squash!r} with {action_size} actions: expected 'tanh', or 'carracing' with 3"
            )
        k_mlp, k_out = jr.split(key)
        self.mlp = _MLP(z_size + hidden_size, units, layers, key=k_mlp)
        self.out = eqx.nn.Linear(units if layers > 0 else z_size + hidden_size, 2 * action_size, key=k_out)
        self.z_size, self.hidden_size, self.action_size = z_size, hidden_size, action_size
        self.units, self.layers, self.squash = units, layers, squash

    def mean_std(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> tuple[Float[Array, " A"], Float[Array, " A"]]:
        """The raw-action Gaussian's mean and std, float32 (A,) each.

        std = (MAX_STD - MIN_STD) sigmoid(x + 2) + MIN_STD (DreamerV2's bounded std), so std lies in
        (0.1, 1.0) and starts near 0.89 for x near 0.
        """
        out = batch_major_linear(self.out, self.mlp(jnp.concatenate([z, h])))
        mean, raw_std = out[: self.action_size], out[self.action_size :]
        return mean, (MAX_STD - MIN_STD) * jax.nn.sigmoid(raw_std + 2.0) + MIN_STD

    def __call__(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> Float[Array, " A"]:
        """The deterministic action squash_action(mean), float32 (A,) in the action box (a drop-in controller)."""
        return squash_action(self.mean_std(z, h)[0], self.squash)

    def sample(
        self, z: Float[Array, " Z"], h: Float[Array, " H"], key: PRNGKeyArray
    ) -> tuple[Float[Array, " A"], Float[Array, ""], Float[Array, ""]]:
        """Sample an action with the reparameterisation trick (DreamerV1 Sec. 3; Kingma & Welling 2014).

        u = mean + std * eps with eps ~ N(0, I) and a = squash_action(u), so gradients flow from the action
        into the actor's parameters (the ``dynamics`` actor gradient). The log-probability is that of the raw
        sample under N(mean, diag(std^2)),

            log pi(u) = sum_i [-(u_i - mean_i)^2 / (2 std_i^2) - log std_i - log(2 pi) / 2],

        evaluated at ``stop_gradient(u)``, so its gradient is the score function d log pi(u) / d theta with the
        sample held fixed (the REINFORCE estimator, Williams 1992; DreamerV3 Sec. 3, "Actor learning"). The
        entropy is the raw Gaussian's, sum_i [log std_i + (1 + log 2 pi) / 2]. Both leave out the squash's log-Jacobian:
        the entropy bonus is therefore an approximation of the action's entropy, as DreamerV1's entropy
        estimate of its tanh-Gaussian is; the log-probability of the raw sample is exact for REINFORCE,
        since the action is a deterministic function of u.

        Args:
            z: float32 (Z,) latent.
            h: float32 (H,) the dynamics' ``state.h``.
            key: PRNG key of the Gaussian noise.

        Returns:
            (action float32 (A,), log_prob float32 scalar, entropy float32 scalar).
        """
        mean, std = self.mean_std(z, h)
        eps = jr.normal(key, mean.shape, mean.dtype)
        raw = mean + std * eps
        fixed = jax.lax.stop_gradient(raw)
        log_prob = jnp.sum(-0.5 * jnp.square((fixed - mean) / std) - jnp.log(std) - _HALF_LOG_2PI)
        entropy = jnp.sum(jnp.log(std) + 0.5 + _HALF_LOG_2PI)
        return squash_action(raw, self.squash), log_prob, entropy


class Critic(eqx.Module):
    """The value v(z_t, h_t) as symlog two-hot logits (DreamerV3 Sec. 3, "Critic learning"; Eqs. 9-11).

    Attributes:
        mlp: the hidden layers on [z, h] (Z + H,).
        out: linear layer units -> ``twohot.NUM_BINS``, weights and bias initialised to zero.
        z_size, hidden_size, units, layers: Z, H and the MLP's width and depth (static).
    """

    mlp: _MLP
    out: eqx.nn.Linear
    z_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    units: int = eqx.field(static=True)
    layers: int = eqx.field(static=True)

    def __init__(self, z_size: int, hidden_size: int, units: int = 256, layers: int = 2, *, key: PRNGKeyArray):
        k_mlp, k_out = jr.split(key)
        self.mlp = _MLP(z_size + hidden_size, units, layers, key=k_mlp)
        out = eqx.nn.Linear(units if layers > 0 else z_size + hidden_size, twohot.NUM_BINS, key=k_out)
        # DreamerV3 initialises the critic's output weights to zero: the first values are exactly 0, and the
        # early, arbitrary returns do not start from large, wrong value predictions.
        self.out = eqx.tree_at(
            lambda m: (m.weight, m.bias), out, (jnp.zeros_like(out.weight), jnp.zeros_like(out.bias))
        )
        self.z_size, self.hidden_size, self.units, self.layers = z_size, hidden_size, units, layers

    def __call__(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> Float[Array, " B"]:
        """The value's two-hot logits, float32 (B,) with B = ``twohot.NUM_BINS``."""
        return batch_major_linear(self.out, self.mlp(jnp.concatenate([z, h])))

    def value(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> Float[Array, ""]:
        """The value v(z, h) = symexp(E_softmax(logits)[bins]) (DreamerV3 Eq. 11), float32 scalar."""
        return twohot.decode(self(z, h))


def actor_hparams(
    z_size: int, hidden_size: int, action_size: int = 3, units: int = 256, layers: int = 2, squash: str = "carracing"
) -> dict:
    """Keyword arguments that rebuild an ``Actor`` (for a checkpoint's ``hparams``); Z and H are the dynamics'.
    A checkpoint written before ``squash`` existed has none and loads as ``carracing`` (it was the only box)."""
    return {"z_size": z_size, "hidden_size": hidden_size, "action_size": action_size, "units": units, "layers": layers,
            "squash": squash}  # fmt: skip


def critic_hparams(z_size: int, hidden_size: int, units: int = 256, layers: int = 2) -> dict:
    """Keyword arguments that rebuild a ``Critic`` (for a checkpoint's ``hparams``)."""
    return {"z_size": z_size, "hidden_size": hidden_size, "units": units, "layers": layers}


def build_actor(**hparams: Any) -> Actor:
    """Actor skeleton for loading (key ``jr.key(0)``; its arrays are overwritten by the checkpoint)."""
    return Actor(**hparams, key=jr.key(0))


def build_critic(**hparams: Any) -> Critic:
    """Critic skeleton for loading (key ``jr.key(0)``; its arrays are overwritten by the checkpoint)."""
    return Critic(**hparams, key=jr.key(0))


class ActorCritic(eqx.Module):
    """The actor-critic learner's checkpoint (kind ``actor``): actor, critic and slow critic; a controller.

    Calling it is calling the actor's deterministic action on [z, h] (``Actor.__call__``), so the agent, the
    ``controller`` collection policy and ``test_agent.py`` run it where they run the linear controller.
    """

    actor: Actor
    critic: Critic
    slow_critic: Critic

    @property
    def z_size(self) -> int:
        return self.actor.z_size

    @property
    def hidden_size(self) -> int:
        return self.actor.hidden_size

    def __call__(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> Float[Array, " A"]:
        """The actor's deterministic action (A,) = squash(mean) (``Actor.__call__``)."""
        return self.actor(z, h)

    def sample(self, z: Float[Array, " Z"], h: Float[Array, " H"], key: PRNGKeyArray) -> Float[Array, " A"]:
        """An action (A,) sampled from the actor's policy (``Actor.sample``): its exploration when it collects
        on-policy data (``agent.agent_step(explore=True)``)."""
        return self.actor.sample(z, h, key)[0]


def actor_critic_hparams(
    z_size: int, hidden_size: int, action_size: int = 3, units: int = 256, layers: int = 2, squash: str = "carracing"
) -> dict:
    """Keyword arguments that rebuild an ``ActorCritic`` (the checkpoint kind ``actor``)."""
    return actor_hparams(z_size, hidden_size, action_size, units, layers, squash)


def build_actor_critic(
    z_size: int, hidden_size: int, action_size: int = 3, units: int = 256, layers: int = 2, squash: str = "carracing"
) -> ActorCritic:
    """``ActorCritic`` skeleton for loading (kind ``actor``; no ``squash`` in an older checkpoint: ``carracing``)."""
    critic = build_critic(z_size=z_size, hidden_size=hidden_size, units=units, layers=layers)
    actor = build_actor(**actor_hparams(z_size, hidden_size, action_size, units, layers, squash))
    return ActorCritic(actor, critic, critic)
