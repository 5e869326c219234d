"""Real Overcooked episodes of the agent with teammates from a population, as one jitted call, and the replay.

``run_episodes`` plays E whole episodes at once: ``jax.vmap`` over environments, ``lax.scan`` over the episode's
steps. The agent ("ego", agent 0) is one of

* ``dreamer``: the world model filters each observation into (h_t, z^env_t, z^team_t) (``observe_step``) and the
  actor samples a^0_t from it; the ToM head's prediction of the teammate's action is recorded at every step;
* ``random``: uniform actions (the replay's prefill);
* ``ppo``: a PPO policy network (the model-free reference);
* ``scripted``: member 0 of a ``PartnerPool`` acting on the agent's own observation (a scripted reference such as
  MPE's ``complement``);

and the teammate (agent 1) is the population member given for that environment, acting on its own observation
(``PartnerPool.act``); its true action distribution (``PartnerPool.probs``) is recorded too, the known answer the ToM
head's predictions are scored against.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from worldmodels.errors import DatasetError
from worldmodels.marl import env as menv
from worldmodels.marl import partners as mpartners
from worldmodels.marl.world_model import Sequence

EGO_KINDS = ("dreamer", "random", "ppo", "scripted")


class Episodes(NamedTuple):
    """E episodes of T steps (numpy or jax arrays; leading axes (E, T)).

    Attributes:
        obs: uint8 (E, T, H, W, C) the agent's observations x_t.
        a_self: int32 (E, T) the agent's actions.
        a_team: int32 (E, T) the teammate's actions.
        reward: float32 (E, T) the shared reward (Overcooked: sparse, 20 per soup; MPE: the agents' mean).
        shaped: float32 (E, T, 2) both cooks' shaped rewards.
        tom_logp: float32 (E, T, A) the ToM head's log-probabilities of the teammate's action (zeros without one).
        true_probs: float32 (E, T, A) the teammate's real action distribution at t.
        member: int32 (E,) the population member that was the teammate.
    """

    obs: Any
    a_self: Any
    a_team: Any
    reward: Any
    shaped: Any
    tom_logp: Any
    true_probs: Any
    member: Any


def run_episodes(
    env: Any,
    ego: Any,
    pool: mpartners.PartnerPool,
    members: Array,
    key: PRNGKeyArray,
    *,
    ego_kind: str,
    record_states: bool = False,
) -> tuple[Episodes, Any]:
    """Play ``len(members)`` whole episodes of ``env.episode_steps(env)`` steps from fresh resets (module docstring).

    Args:
        env: a JaxMARL Overcooked (``marl.env.make``).
        ego: ``(world_model, actor)`` for ``dreamer``, a ``ppo.PolicyNet`` for ``ppo``, a ``PartnerPool`` whose
            member 0 acts for the agent for ``scripted``, ignored for ``random``.
        pool: the teammate population.
        members: int32 (E,) the teammate of each episode (indices into ``pool``).
        key: PRNG key.
        ego_kind: one of ``EGO_KINDS``.
        record_states: also return the JaxMARL state each step acts in (for rendering), leading axes (T, E):
            state 0 is the reset, state t the one after t steps; the state after the last step is not kept (the
            environment resets there).

    Returns:
        (``Episodes`` of jax arrays, the states or None).

    Raises:
        ValueError: an unknown ``ego_kind``.
    """
    if ego_kind not in EGO_KINDS:
        raise ValueError(f"ego kind {ego_kind!r} is unknown; choose one of {', '.join(EGO_KINDS)}")
    return _run(env, ego, pool, jnp.asarray(members, jnp.int32), key, ego_kind, record_states)


@eqx.filter_jit
def _run(env, ego, pool, members, key, ego_kind, record_states):
    num = members.shape[0]
    k_reset, k_steps = jr.split(key)
    obs, env_state = jax.vmap(menv.reset, (None, 0))(env, jr.split(k_reset, num))
    num_actions = menv.num_actions(env)

    if ego_kind == "dreamer":
        model, actor = ego
        init = jax.vmap(lambda _: model.initial_state())(members)
    else:
        model = actor = None
        init = jnp.zeros((num,))

    def ego_step(carry_state, x, prev_self, prev_team, first, k):
        k_obs, k_act = jr.split(k)
        if ego_kind == "dreamer":
            state, _, _ = model.observe_step(carry_state, prev_self, prev_team, x, first, k_obs)
            a0 = jr.categorical(k_act, actor(model.features(state))).astype(jnp.int32)
            tom = jax.nn.log_softmax(model.tom_logits(state)) if model.tom else jnp.zeros((num_actions,))
            return state, a0, tom
        if ego_kind == "ppo":
            logits, _ = ego(x)
            return carry_state, jr.categorical(k_act, logits).astype(jnp.int32), jnp.zeros((num_actions,))
        if ego_kind == "scripted":
            return carry_state, ego.act(jnp.zeros((), jnp.int32), x, k_act), jnp.zeros((num_actions,))
        return carry_state, jr.randint(k_act, (), 0, num_actions, jnp.int32), jnp.zeros((num_actions,))

    def one_env_step(env_state, obs, carry_state, prev_self, prev_team, first, member, k):
        k_ego, k_team, k_env = jr.split(k, 3)
        carry_state, a0, tom = ego_step(carry_state, obs[0], prev_self, prev_team, first, k_ego)
        aj = pool.act(member, obs[1], k_team).astype(jnp.int32)
        true = pool.probs(member, obs[1])
        out, env_state = menv.step(env, k_env, env_state, jnp.stack([a0, aj]))
        record = (obs[0], a0, aj, out.reward, out.shaped, tom, true)
        return env_state, out.obs, carry_state, a0, aj, out.done, record

    def step(carry, k):
        env_state, obs, ego_state, prev_self, prev_team, first = carry
        states = env_state if record_states else None  # the state this step acts in (after an episode's last step
        # the environment has already reset, so recording the state after each step would end on the next episode)
        env_state, obs, ego_state, a0, aj, done, record = jax.vmap(one_env_step)(
            env_state, obs, ego_state, prev_self, prev_team, first, members, jr.split(k, num)
        )
        return (env_state, obs, ego_state, a0, aj, done), (record, states)

    zeros = jnp.zeros((num,), jnp.int32)
    carry = (env_state, obs, init, zeros, zeros, jnp.ones((num,), bool))
    _, (record, states) = jax.lax.scan(step, carry, jr.split(k_steps, menv.episode_steps(env)))
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  (T, E, ...) -> (E, T, ...)
    obs_t, a0, aj, rew, shaped, tom, true = jax.tree.map(swap, record)
    return Episodes(obs_t, a0, aj, rew, shaped, tom, true, members), states


def tom_scores(episodes: Episodes) -> dict[str, float]:
    """Theory-of-mind accuracy over all steps of ``episodes``.

    Returns:
        ``tom_top1``: fraction of steps where the head's most likely action is the teammate's real action;
        ``tom_ce``: mean -log pi_hat(a^j_t) in nats (cross-entropy against the real action);
        ``tom_policy_ce``: mean -sum_a pi(a) log pi_hat(a) against the teammate's true distribution pi (its
        minimum is pi's entropy, reached when pi_hat = pi);
        ``teammate_entropy``: mean entropy of pi, that minimum.
    """
    logp = np.asarray(episodes.tom_logp, np.float64)
    aj = np.asarray(episodes.a_team)
    true = np.asarray(episodes.true_probs, np.float64)
    ce = -np.take_along_axis(logp, aj[..., None], -1)[..., 0]
    ent = -np.sum(np.where(true > 0, true * np.log(np.where(true > 0, true, 1.0)), 0.0), -1)
    return {
        "tom_top1": float(np.mean(np.argmax(logp, -1) == aj)),
        "tom_ce": float(np.mean(ce)),
        "tom_policy_ce": float(np.mean(-np.sum(true * logp, -1))),
        "teammate_entropy": float(np.mean(ent)),
    }


REPLAY_FIELDS = ("obs", "a_self", "a_team", "reward", "shaped", "member")


class Replay:
    """Whole episodes of joint experience (x_t, a^0_t, a^j_t, r_t, c_t) in host memory, saved as one ``.npz``.

    Windows never cross an episode's end; c_t is 1 throughout (Overcooked ends only at its time limit, a
    truncation). The training reward is the sparse reward plus ``shaped_scale`` x both cooks' shaped rewards.
    """

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return 0 if not self.data else int(self.data["a_self"].shape[0])

    @property
    def steps(self) -> int:
        """Environment steps held."""
        return 0 if not self.data else int(self.data["a_self"].size)

    def add(self, episodes: Episodes) -> None:
        """Append E episodes (any array type)."""
        new = {name: np.asarray(getattr(episodes, name)) for name in REPLAY_FIELDS}
        if not self.data:
            self.data = new
        else:
            self.data = {k: np.concatenate([self.data[k], new[k]]) for k in REPLAY_FIELDS}

    def sample(self, rng: np.random.Generator, batch: int, length: int, shaped_scale: float) -> Sequence:
        """``batch`` windows of ``length`` steps (numpy ``Sequence`` with a leading batch axis)."""
        n, t = self.data["a_self"].shape
        ep = rng.integers(0, n, batch)
        start = rng.integers(0, t - length + 1, batch)
        idx = start[:, None] + np.arange(length)[None]
        take = lambda x: x[ep[:, None], idx]  # noqa: E731
        reward = take(self.data["reward"]) + shaped_scale * take(self.data["shaped"]).sum(-1)
        return Sequence(
            obs=take(self.data["obs"]),
            a_self=take(self.data["a_self"]).astype(np.int32),
            a_team=take(self.data["a_team"]).astype(np.int32),
            reward=reward.astype(np.float32),
            cont=np.ones((batch, length), np.float32),
            first=idx == 0,
        )

    def save(self, path: Path) -> None:
        """Write atomically (a temporary file renamed over ``path``)."""
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **self.data)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Replay:
        """Read a replay written by ``save`` (no pickle).

        Raises:
            DatasetError: the file is missing or damaged (named, with what to do).
        """
        replay = cls()
        try:
            with np.load(path, allow_pickle=False) as f:
                replay.data = {k: f[k] for k in REPLAY_FIELDS}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise DatasetError(
                f"{path}: unreadable replay ({err}); move the run's marl/ directory aside to train again from scratch"
            ) from err
        return replay
