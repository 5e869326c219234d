"""The actor-critic learner of ``train_dream.py --learner actor-critic``: Dreamer's behaviour learning in M's dream.

Each update replays ``batch_size`` real latent sequences of ``seq_len`` steps (the episodes M was trained on),
teacher-forces M along them (``dream.warm_up``: the state M had at every frame), and imagines ``horizon`` steps
from every one of those batch_size x seq_len states with the actor (``imagination.make_update``: one jitted call
for imagination, lambda-returns, actor and critic; Hafner et al. 2020, Sec. 4 "imagine from every posterior state
of the replayed batch"). M is any ``Dynamics`` (an RSSM, an MDN-RNN, a GRU transition) and stays frozen.

Training runs on ``trainer.fit`` (resume, NaN stop, Ctrl-C save, metrics.jsonl and TensorBoard); the checkpoint in
``RUN_DIR/controller/ckpt`` has kind ``actor``: an ``ActorCritic`` (actor, critic, slow critic) that acts as a
controller (its actor's mean action on [z, h]), so ``test_agent.py``, the ``controller`` collection policy and the
Sim2Real2Sim loop run it as they run the linear controller. The optimiser states and the return scale are its
optimiser state in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from worldmodels.config import ActorCriticConfig, DreamConfig, RNNConfig
from worldmodels.dream import warm_up
from worldmodels.imagination import ACState, init_ac_state, make_update
from worldmodels.models.actor import ActorCritic, actor_critic_hparams
from worldmodels.models.dynamics import Dynamics
from worldmodels.train import LatentDataset, sequence_batch
from worldmodels.trainer import fit


@eqx.filter_jit
def warm_starts(dynamics: Dynamics, z: jax.Array, actions: jax.Array) -> tuple[jax.Array, Any]:
    """Imagination starts from real sequences: every frame's latent and the state M had there.

    Args:
        dynamics: M.
        z: float32 (B, L, Z) latents of the replayed frames.
        actions: float32 (B, L, A) the actions taken at them.

    Returns:
        (z_starts float32 (B * L, Z), states with leading axis B * L): frame t's latent and M's state after
        frames 0 .. t-1 (``dream.warm_up``).
    """
    states = jax.vmap(lambda z, a: warm_up(dynamics, z, a))(z, actions)
    B, L = z.shape[:2]
    flat = jax.tree.map(lambda s: s[:, :-1].reshape((B * L,) + s.shape[2:]), states)
    return z.reshape(B * L, -1), flat


def start_batch(data: LatentDataset, step: int, ac: ActorCriticConfig, seed: int) -> dict[str, np.ndarray]:
    """Replayed real windows for update ``step``, deterministic in (seed, step): ``z`` float32 (B, L, Z) sampled from
    the VAE posterior and ``actions`` (B, L, A) (``train.sequence_batch``'s windows)."""
    windows = RNNConfig(seq_len=ac.seq_len, batch_size=ac.batch_size, seed=seed)
    batch = sequence_batch(data, step, windows)
    rng = np.random.default_rng([seed, step, 1])
    mu, logvar = batch["mu"][:, :-1], batch["logvar"][:, :-1]
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape).astype(np.float32)
    return {"z": z.astype(np.float32), "actions": batch["actions"]}


def train_actor_critic(
    out_dir: Path,
    dynamics: Dynamics,
    data: LatentDataset,
    ac: ActorCriticConfig,
    dream: DreamConfig,
    squash: str = "carracing",
) -> ActorCritic:
    """Train an actor and a critic in M's dream for ``ac.steps`` updates (resuming ``out_dir/ckpt``).

    Args:
        out_dir: ``RUN_DIR/controller``.
        dynamics: the frozen M.
        data: the latent sequences M was trained on (starts are drawn from its training episodes).
        ac: the actor-critic config.
        dream: ``temperature`` (of the imagined latents) and ``seed`` (initialisation, batches, imagination).
        squash: the actor's action squash, the run's ``env.EnvSpec.squash`` (``carracing`` or ``tanh``).

    Returns:
        The trained ``ActorCritic``.
    """
    z_size, hidden_size, action_size = dynamics.z_size, dynamics.hidden_size, dynamics.action_size
    hparams = actor_critic_hparams(z_size, hidden_size, action_size, ac.units, ac.layers, squash)
    init = init_ac_state(z_size, hidden_size, ac, jax.random.key(dream.seed), action_size, squash)
    update = make_update(ac, dream.temperature)

    def step_fn(model: ActorCritic, opt_state, batch, key):
        z_starts, state_starts = warm_starts(dynamics, jnp.asarray(batch["z"]), jnp.asarray(batch["actions"]))
        state = ACState(model.actor, model.critic, model.slow_critic, *opt_state, step=jnp.zeros((), jnp.int32))
        state, metrics = update(state, dynamics, z_starts, state_starts, key)
        model = ActorCritic(state.actor, state.critic, state.slow_critic)
        metrics["total"] = metrics["actor_loss"] + metrics["critic_loss"]
        return model, (state.actor_opt_state, state.critic_opt_state, state.return_norm), metrics

    return fit(
        model=ActorCritic(init.actor, init.critic, init.slow_critic),
        step_fn=step_fn,
        opt_state=(init.actor_opt_state, init.critic_opt_state, init.return_norm),
        make_batch=lambda step: start_batch(data, step, ac, dream.seed),
        steps=ac.steps,
        out_dir=out_dir,
        kind="actor",
        hparams=hparams,
        seed=dream.seed,
        log_every=ac.log_every,
        checkpoint_every=ac.checkpoint_every,
        items_per_step=ac.batch_size * ac.seq_len * ac.horizon,
        desc="actor-critic in the dream",
        postfix=("imagined_return", "entropy"),
    )
