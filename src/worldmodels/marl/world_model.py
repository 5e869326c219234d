"""A two-agent RSSM with a factorised latent and a theory-of-mind head ("Dreaming of Others").

The single-agent RSSM (Hafner et al. 2019 PlaNet; DreamerV3, Hafner et al. 2023) extended as the project's
notes ask (docs/ARCHITECTURE.md, "Dreaming of Others"):

* **Joint-action transition**: h_t = GRU(h_{t-1}, MLP([z_{t-1}, onehot(a^0_{t-1}), onehot(a^j_{t-1})])), the
  agent's own action a^0 and its teammate's a^j both drive the deterministic path.
* **Factorised latent**: the stochastic state is two groups of categorical latents, z^env (the kitchen) and
  z^team (the teammate), each with its own prior p(z | h) and posterior q(z | h, x); the KL loss is the sum of
  the two KL terms, each balanced and floored by free bits as in DreamerV3 (Eqs. 3 and 5).
* **Theory-of-mind head**: pi_hat(a^j_t | h_t, z^team_t), an MLP over the teammate's six actions, trained by the
  cross-entropy against the teammate's real action (L_ToM).

The ablations are the same module with parts switched off: ``factorised=False`` keeps one latent z of the same
total size (the ToM head then reads (h, z)); ``joint_action=False`` and ``tom=False`` give a single-agent
Dreamer that never sees the teammate's action (the teammate is part of the environment).

One example, one step (Equinox style); ``observe`` scans a sequence. Observations are Overcooked's uint8
(H, W, C) grids, encoded flat through symlog (DreamerV3's input squashing for vector inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from worldmodels.losses import balanced_kl, binary_cross_entropy
from worldmodels.models import twohot
from worldmodels.models.rssm import MLP, categorical_kl, categorical_logp, categorical_sample


class JointState(NamedTuple):
    """The model's state at one step.

    Attributes:
        h: float32 (D,) the deterministic (GRU) state.
        z_env: float32 (G_env * K,) one-hot categorical latents of the environment (straight-through samples).
        z_team: float32 (G_team * K,) those of the teammate; shape (0,) when the latent is not factorised.
    """

    h: Float[Array, " D"]
    z_env: Float[Array, " Ze"]
    z_team: Float[Array, " Zt"]


class LatentDists(NamedTuple):
    """Log-probabilities of one step's categorical prior or posterior, float32 (G, K) per latent: z^env and z^team."""

    env: Float[Array, "Ge K"]
    team: Float[Array, "Gt K"]


class SocialWorldModel(eqx.Module):
    """The two-agent RSSM, one example and one step.

    Attributes (static sizes):
        obs_size: flat observation size (Overcooked ``cramped_room``: 4 * 5 * 26 = 520).
        num_actions: A, each agent's discrete actions (6).
        deter: D, the GRU state's size.
        units: hidden width of every MLP.
        env_groups, team_groups, classes: G_env and G_team latent groups of K classes (team_groups 0 when not
            factorised).
        factorised, joint_action, tom: which parts are on (module docstring).
        unimix: the uniform mix of the categoricals.
    """

    encoder: MLP
    trans_in: MLP
    gru: eqx.nn.GRUCell
    prior_env: MLP
    post_env: MLP
    prior_team: MLP | None
    post_team: MLP | None
    decoder: MLP
    reward_head: MLP
    cont_head: MLP
    tom_head: MLP | None
    obs_size: int = eqx.field(static=True)
    num_actions: int = eqx.field(static=True)
    deter: int = eqx.field(static=True)
    units: int = eqx.field(static=True)
    env_groups: int = eqx.field(static=True)
    team_groups: int = eqx.field(static=True)
    classes: int = eqx.field(static=True)
    factorised: bool = eqx.field(static=True)
    joint_action: bool = eqx.field(static=True)
    tom: bool = eqx.field(static=True)
    unimix: float = eqx.field(static=True)

    def __init__(
        self,
        obs_size: int,
        num_actions: int = 6,
        deter: int = 128,
        units: int = 128,
        env_groups: int = 8,
        team_groups: int = 4,
        classes: int = 8,
        factorised: bool = True,
        joint_action: bool = True,
        tom: bool = True,
        unimix: float = 0.01,
        *,
        key: PRNGKeyArray,
    ):
        if not factorised:  # one latent of the same total size
            env_groups, team_groups = env_groups + team_groups, 0
        if tom and not joint_action:
            raise ValueError("a theory-of-mind head needs the joint-action transition (joint_action=True)")
        self.obs_size, self.num_actions, self.deter, self.units = obs_size, num_actions, deter, units
        self.env_groups, self.team_groups, self.classes = env_groups, team_groups, classes
        self.factorised, self.joint_action, self.tom, self.unimix = factorised, joint_action, tom, unimix
        ks = iter(jr.split(key, 12))
        z_size = (env_groups + team_groups) * classes
        feat = deter + z_size
        act_in = num_actions * (2 if joint_action else 1)
        self.encoder = MLP([obs_size, units, units], key=next(ks))
        self.trans_in = MLP([z_size + act_in, units], key=next(ks))
        self.gru = eqx.nn.GRUCell(units, deter, key=next(ks))
        self.prior_env = MLP([deter, units, env_groups * classes], key=next(ks))
        self.post_env = MLP([deter + units, units, env_groups * classes], key=next(ks))
        if team_groups:
            self.prior_team = MLP([deter, units, team_groups * classes], key=next(ks))
            self.post_team = MLP([deter + units, units, team_groups * classes], key=next(ks))
        else:
            self.prior_team = self.post_team = None
            next(ks), next(ks)
        self.decoder = MLP([feat, units, units, obs_size], key=next(ks))
        self.reward_head = MLP([feat, units, twohot.NUM_BINS], key=next(ks), zero_last=True)
        self.cont_head = MLP([feat, units, 1], key=next(ks))
        tom_in = deter + (team_groups if factorised else env_groups) * classes
        self.tom_head = MLP([tom_in, units, num_actions], key=next(ks)) if tom else None

    # sizes and features

    @property
    def z_size(self) -> int:
        """Flat size of the whole stochastic state (G_env + G_team) * K."""
        return (self.env_groups + self.team_groups) * self.classes

    @property
    def feature_size(self) -> int:
        """D + (G_env + G_team) * K: the size of ``features``, what the actor and critic read."""
        return self.deter + self.z_size

    def initial_state(self) -> JointState:
        """h = 0 and all-zero latents (an episode's start, before the first observation)."""
        return JointState(
            jnp.zeros((self.deter,)),
            jnp.zeros((self.env_groups * self.classes,)),
            jnp.zeros((self.team_groups * self.classes,)),
        )

    def features(self, state: JointState) -> Float[Array, " F"]:
        """[h, z^env, z^team], float32 (D + Z,): the full factorised state (the actor's and critic's input)."""
        return jnp.concatenate([state.h, state.z_env, state.z_team])

    # the core shared by observe and imagine

    def embed(self, obs: Array) -> Float[Array, " U"]:
        """Encoder of one observation uint8 (H, W, C) -> float32 (units,), through symlog of the flat grid."""
        return self.encoder(twohot.symlog(jnp.asarray(obs, jnp.float32).reshape(-1)))

    def transition(self, state: JointState, a_self: Int[Array, ""], a_team: Int[Array, ""]) -> Float[Array, " D"]:
        """h_t = GRU(h_{t-1}, MLP([z_{t-1}, onehot(a^0_{t-1}), onehot(a^j_{t-1})])); a^j is ignored without
        ``joint_action``. Actions are int32 scalars in [0, A)."""
        acts = [jax.nn.one_hot(a_self, self.num_actions)]
        if self.joint_action:
            acts.append(jax.nn.one_hot(a_team, self.num_actions))
        x = jax.nn.silu(self.trans_in(jnp.concatenate([state.z_env, state.z_team, *acts])))
        return self.gru(x, state.h)

    def prior(self, h: Float[Array, " D"]) -> LatentDists:
        """p(z^env | h), p(z^team | h) as log-probabilities (G, K) each (team (0, K) when not factorised)."""
        team = self._logp(self.prior_team(h), self.team_groups) if self.prior_team is not None else self._no_team()
        return LatentDists(self._logp(self.prior_env(h), self.env_groups), team)

    def posterior(self, h: Float[Array, " D"], embedding: Float[Array, " U"]) -> LatentDists:
        """q(z^env | h, x), q(z^team | h, x) as log-probabilities (G, K) each."""
        x = jnp.concatenate([h, embedding])
        team = self._logp(self.post_team(x), self.team_groups) if self.post_team is not None else self._no_team()
        return LatentDists(self._logp(self.post_env(x), self.env_groups), team)

    def sample(self, h: Float[Array, " D"], dist: LatentDists, key: PRNGKeyArray) -> JointState:
        """A state (h, z^env, z^team) with both latents sampled (straight-through) from ``dist``."""
        k_env, k_team = jr.split(key)
        team = categorical_sample(dist.team, k_team) if self.team_groups else jnp.zeros((0,))
        return JointState(h, categorical_sample(dist.env, k_env), team)

    def observe_step(
        self,
        prev: JointState,
        a_self: Int[Array, ""],
        a_team: Int[Array, ""],
        obs: Array,
        first: Bool[Array, ""],
        key: PRNGKeyArray,
    ) -> tuple[JointState, LatentDists, LatentDists]:
        """Filter one real step: h_t from the previous state and joint action (h = 0 where ``first``, an episode's
        start), then z_t ~ q(z | h_t, x_t).

        Returns:
            (state_t, posterior, prior) -- the two distributions as log-probabilities for the KL terms.
        """
        h = jnp.where(first, jnp.zeros((self.deter,)), self.transition(prev, a_self, a_team))
        post = self.posterior(h, self.embed(obs))
        return self.sample(h, post, key), post, self.prior(h)

    def imagine_step(
        self, prev: JointState, a_self: Int[Array, ""], a_team: Int[Array, ""], key: PRNGKeyArray
    ) -> JointState:
        """Dream one step: h_t from the joint action, z_t ~ p(z | h_t) (no observation)."""
        h = self.transition(prev, a_self, a_team)
        return self.sample(h, self.prior(h), key)

    # heads

    def reward(self, state: JointState) -> Float[Array, ""]:
        """The predicted reward of the joint action that led to ``state`` (symexp of the two-hot mean)."""
        return twohot.decode(self.reward_head(self.features(state)))

    def cont(self, state: JointState) -> Float[Array, ""]:
        """The predicted probability that the episode continues after the step that led to ``state``."""
        return jax.nn.sigmoid(self.cont_head(self.features(state))[0])

    def tom_logits(self, state: JointState) -> Float[Array, " A"]:
        """Theory of mind: logits of pi_hat(a^j_t | h_t, z^team_t) over the teammate's A actions (reads (h, z)
        when not factorised). Raises ValueError on a model without the head."""
        if self.tom_head is None:
            raise ValueError("this world model has no theory-of-mind head (tom=False)")
        z = state.z_team if self.factorised else state.z_env
        return self.tom_head(jnp.concatenate([state.h, z]))

    def _logp(self, raw: Array, groups: int) -> Array:
        return categorical_logp(raw, groups, self.classes, self.unimix)

    def _no_team(self) -> Array:
        return jnp.zeros((0, self.classes))


class Sequence(NamedTuple):
    """A window of joint experience (``vmap`` adds a batch axis): the replay's record per step t.

    Attributes:
        obs: uint8 (T, H, W, C) x_t, the agent's observation.
        a_self: int32 (T,) a^0_t, the agent's action at t.
        a_team: int32 (T,) a^j_t, the teammate's action at t.
        reward: float32 (T,) r_t, the team's reward for the joint action at t (sparse + shaped, as trained).
        cont: float32 (T,) c_t, 1 while the episode goes on after step t (Overcooked's time limit is a
            truncation, not a termination, so it stays 1).
        first: bool (T,) x_t is an episode's first observation (the window's first step is always treated so).
    """

    obs: Array
    a_self: Int[Array, " T"]
    a_team: Int[Array, " T"]
    reward: Float[Array, " T"]
    cont: Float[Array, " T"]
    first: Bool[Array, " T"]


class Observed(NamedTuple):
    """``observe``'s output: the filtered states and both distributions at every step (leading axis T)."""

    states: JointState
    post: LatentDists
    prior: LatentDists


def observe(model: SocialWorldModel, seq: Sequence, key: PRNGKeyArray) -> Observed:
    """Filter a window through the model with ``lax.scan``: state_t from state_{t-1}, (a^0_{t-1}, a^j_{t-1}) and
    x_t; the window's first step starts from h = 0.

    Args:
        model: the world model.
        seq: one window (no batch axis), T steps.
        key: PRNG key of the latent samples (split per step).

    Returns:
        ``Observed`` with (T, ...) states and log-probabilities.
    """
    T = seq.a_self.shape[0]
    prev_self = jnp.concatenate([jnp.zeros((1,), seq.a_self.dtype), seq.a_self[:-1]])
    prev_team = jnp.concatenate([jnp.zeros((1,), seq.a_team.dtype), seq.a_team[:-1]])
    first = seq.first.at[0].set(True)

    def step(prev, inputs):
        a0, aj, x, f, k = inputs
        state, post, prior = model.observe_step(prev, a0, aj, x, f, k)
        return state, (state, post, prior)

    _, (states, post, prior) = jax.lax.scan(
        step, model.initial_state(), (prev_self, prev_team, seq.obs, first, jr.split(key, T))
    )
    return Observed(states, post, prior)


def sequence_terms(
    model: SocialWorldModel, seq: Sequence, key: PRNGKeyArray, free_nats: float
) -> tuple[dict[str, Array], Observed]:
    """The world model's loss terms on one window (DreamerV3 Eqs. 3-5 with the ToM term of "Dreaming of Others").

    * ``recon``: 0.5 ||decoder(h_t, z_t) - symlog(x_t)||^2 summed over the grid, mean over t;
    * ``reward``: two-hot cross-entropy of the reward head at state_{t+1} against r_t (t < T - 1);
    * ``cont``: binary cross-entropy of the continue head at state_{t+1} against c_t (t < T - 1);
    * ``kl_dyn`` / ``kl_rep``: DreamerV3's balanced KL, max(free, KL(sg q || p)) and max(free, KL(q || sg p)),
      each the **sum** of the env and the team latents' terms (each floored by free bits on its own);
    * ``tom``: -log pi_hat(a^j_t | h_t, z^team_t), mean over t (0 without the head);
    * diagnostics ``kl_env``, ``kl_team`` (the raw KLs) and ``tom_top1`` (argmax pi_hat == a^j_t).

    Returns:
        (terms: name -> float32 scalar, the ``Observed`` filter).
    """
    obs_out = observe(model, seq, key)
    states = obs_out.states
    feats = jax.vmap(model.features)(states)
    target = twohot.symlog(jnp.asarray(seq.obs, jnp.float32).reshape(seq.obs.shape[0], -1))
    recon = 0.5 * jnp.sum((jax.vmap(model.decoder)(feats) - target) ** 2, -1)
    rew_logits = jax.vmap(model.reward_head)(feats[1:])
    reward = jax.vmap(twohot.loss)(rew_logits, seq.reward[:-1])
    cont_logit = jax.vmap(model.cont_head)(feats[1:])[:, 0]
    cont = binary_cross_entropy(cont_logit, seq.cont[:-1])

    kl_dyn = kl_rep = 0.0
    terms: dict[str, Array] = {}
    for name in ("env", "team"):
        q, p = getattr(obs_out.post, name), getattr(obs_out.prior, name)
        if q.shape[-2] == 0:
            terms[f"kl_{name}"] = jnp.zeros(())
            continue
        kls = jax.vmap(lambda q_t, p_t: balanced_kl(categorical_kl, q_t, p_t, free_nats))(q, p)
        kl_dyn, kl_rep = kl_dyn + kls["kl_dyn"], kl_rep + kls["kl_rep"]
        terms[f"kl_{name}"] = jnp.mean(kls["kl"])
    if model.tom_head is not None:
        logits = jax.vmap(model.tom_logits)(states)
        logp = jax.nn.log_softmax(logits)
        tom = -jnp.take_along_axis(logp, seq.a_team[:, None], -1)[:, 0]
        top1 = (jnp.argmax(logits, -1) == seq.a_team).astype(jnp.float32)
    else:
        tom = top1 = jnp.zeros(())
    terms.update(
        recon=jnp.mean(recon),
        reward=jnp.mean(reward),
        cont=jnp.mean(cont),
        kl_dyn=jnp.mean(kl_dyn),
        kl_rep=jnp.mean(kl_rep),
        tom=jnp.mean(tom),
        tom_top1=jnp.mean(top1),
    )
    return terms, obs_out
