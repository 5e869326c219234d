"""The model registry: a checkpoint's ``kind`` -> the builder that rebuilds its module.

Every checkpoint is self-describing (``worldmodels.checkpoint``): it stores its ``kind`` and the
``hparams`` that rebuild the module, so loading is ``build(kind, **hparams)`` followed by filling in the
arrays. Each kind belongs to one role: ``vision`` (V: frame -> latent), ``dynamics`` (M: implements
``worldmodels.models.dynamics.Dynamics``) or ``controller`` (C). A new kind registers here, in one place,
and every loader (``worldmodels.run_dir``) finds it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import jax.random as jr

from worldmodels.errors import CheckpointError
from worldmodels.models.actor import build_actor_critic
from worldmodels.models.controller import Controller, controller_from_flat, controller_num_params
from worldmodels.models.mdnrnn import MDNRNN
from worldmodels.models.mlp_autoencoder import DEFAULT_HIDDEN, MLPAutoencoder
from worldmodels.models.rssm import RSSM
from worldmodels.models.transformer import TransformerDynamics
from worldmodels.models.transition import GRUTransition
from worldmodels.models.vae import ConvVAE

ROLES = {"vision": "vision model (V)", "dynamics": "world-model dynamics", "controller": "controller (C)"}
"""The parts of an agent a kind can fill (V, M and C of Ha & Schmidhuber 2018), with their names in messages."""


@dataclass(frozen=True)
class Kind:
    """One registered checkpoint kind.

    Attributes:
        name: the ``kind`` string stored in the checkpoint's metadata.
        role: one of ``ROLES`` (``vision``, ``dynamics``, ``controller``).
        build: ``build(**hparams)`` -> a module skeleton of the right shapes (its values are overwritten
            on loading).
        doc: one line on what the kind is, shown in error messages.
    """

    name: str
    role: str
    build: Callable[..., Any]
    doc: str


KINDS: dict[str, Kind] = {}
"""Every registered kind by name."""


def register(name: str, role: str, build: Callable[..., Any], doc: str) -> Kind:
    """Register checkpoint kind ``name`` for ``role`` with its builder.

    Raises:
        ValueError: for an unknown role or a name already registered.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} for kind {name!r}; roles: {', '.join(ROLES)}")
    if name in KINDS:
        raise ValueError(f"kind {name!r} is already registered (as {KINDS[name].role})")
    KINDS[name] = Kind(name, role, build, doc)
    return KINDS[name]


def kinds(role: str) -> dict[str, Kind]:
    """The registered kinds of ``role``, by name."""
    return {n: k for n, k in KINDS.items() if k.role == role}


def hparam_defaults(name: str | None) -> dict[str, Any]:
    """The keyword defaults of kind ``name``'s builder ({} for an unknown kind): the value a checkpoint written
    before a hyperparameter existed stands for (e.g. a VAE saved without ``arch`` is ``conv``)."""
    kind = KINDS.get(name or "")
    if kind is None:
        return {}
    params = inspect.signature(kind.build).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def kind_of(name: str | None, role: str, where: str) -> Kind:
    """The registered kind ``name``, which must fill ``role``.

    Args:
        name: the checkpoint's ``kind``.
        role: what the caller needs (``vision``, ``dynamics`` or ``controller``).
        where: the checkpoint path, for the message.

    Raises:
        CheckpointError: naming the checkpoint, what it holds and the kinds that would do.
    """
    kind = KINDS.get(name or "")
    if kind is None or kind.role != role:
        known = ", ".join(repr(n) for n in kinds(role))
        raise CheckpointError(f"checkpoint {where} holds a {name!r}, not a {ROLES[role]} (known kinds: {known})")
    return kind


# V


def build_vae(z_size: int = 32, arch: str = "conv") -> ConvVAE:
    """ConvVAE skeleton for loading (kind ``vae``); ``arch`` is ``conv`` (the paper's, and every checkpoint
    written before the residual variant existed) or ``residual``."""
    return ConvVAE(z_size, arch, key=jr.key(0))


def build_mlp_autoencoder(
    obs_size: int, z_size: int = 16, hidden: tuple[int, ...] = DEFAULT_HIDDEN, variational: bool = True
) -> MLPAutoencoder:
    """MLP autoencoder skeleton for loading (kind ``mlp_autoencoder``): V of a vector environment."""
    return MLPAutoencoder(obs_size, z_size, tuple(hidden), variational, key=jr.key(0))


# M


def build_mdnrnn(**hparams: Any) -> MDNRNN:
    """MDN-RNN skeleton for loading (kind ``mdnrnn``): ``z_size``, ``action_size``, ``hidden_size``,
    ``num_mixtures``."""
    return MDNRNN(**hparams, key=jr.key(0))


def gru_hparams(z_size: int, hidden_size: int, action_size: int = 3) -> dict:
    """Keyword arguments that rebuild gossip's one-Gaussian ``GRUTransition`` (the checkpoint kind ``gru``)."""
    return {"z_size": z_size, "action_size": action_size, "hidden_size": hidden_size}


def build_gru(**hparams: Any) -> GRUTransition:
    """GRU transition skeleton for loading (kind ``gru``): ``z_size``, ``action_size``, ``hidden_size`` and
    ``num_mixtures`` (1 where a checkpoint does not store it: gossip's exports)."""
    return GRUTransition(**hparams, key=jr.key(0))


def build_rssm(**hparams: Any) -> RSSM:
    """RSSM skeleton for loading (kind ``rssm``): ``z_size``, ``action_size``, ``hidden_size``, ``latent``,
    ``stoch``, ``classes``, ``units`` (``train.rnn_hparams``)."""
    return RSSM(**hparams, key=jr.key(0))


def build_transformer(
    z_size: int = 32,
    action_size: int = 3,
    hidden_size: int = 256,
    num_mixtures: int = 5,
    layers: int = 2,
    heads: int = 4,
    context: int = 64,
) -> TransformerDynamics:
    """Causal transformer skeleton for loading (kind ``transformer``): ``hidden_size`` is d_model; ``layers``,
    ``heads`` and the attention window ``context`` as in ``train.rnn_hparams``."""
    return TransformerDynamics(z_size, action_size, hidden_size, num_mixtures, layers, heads, context, key=jr.key(0))


# C


def controller_hparams(dynamics: Any, squash: str = "carracing", inputs: str = "zh", units: int = 0) -> dict:
    """Keyword arguments that rebuild the controller acting on ``dynamics``' [z, h] (``Dynamics``), or on z alone
    (``inputs="z"``), with the environment's action ``squash`` (``env.EnvSpec.squash``): linear with ``units`` 0,
    else with one hidden layer of that many units (``controller.controller_from_flat``)."""
    return {
        "z_size": dynamics.z_size,
        "hidden_size": dynamics.hidden_size,
        "action_size": dynamics.action_size,
        "squash": squash,
        "inputs": inputs,
        "units": units,
    }


def build_controller(
    z_size: int,
    hidden_size: int,
    action_size: int = 3,
    squash: str = "carracing",
    inputs: str = "zh",
    units: int = 0,
) -> Controller:
    """Controller skeleton (zeros) for loading (kind ``controller``); checkpoints written before ``squash``,
    ``inputs`` and ``units`` existed are CarRacing's linear [z, h] controllers."""
    n = controller_num_params(z_size, hidden_size, action_size, inputs, units=units)
    return controller_from_flat(jnp.zeros(n), z_size, hidden_size, action_size, squash, inputs, units)


register("vae", "vision", build_vae, "convolutional VAE on 64x64x3 frames (train_vae.py)")
register(
    "mlp_autoencoder",
    "vision",
    build_mlp_autoencoder,
    "MLP (variational) autoencoder on vector observations (train_vae.py on a vector environment)",
)
register("mdnrnn", "dynamics", build_mdnrnn, "MDN-RNN: LSTM + mixture of Gaussians (train_rnn.py, gossip export)")
register(
    "rssm", "dynamics", build_rssm, "RSSM: GRU + stochastic latent, prior and posterior (train_rnn.py --kind rssm)"
)
register(
    "transformer",
    "dynamics",
    build_transformer,
    "causal transformer (sliding window, RoPE) + mixture of Gaussians (train_rnn.py --kind transformer)",
)
register(
    "gru",
    "dynamics",
    build_gru,
    "GRU + one Gaussian or a mixture (train_rnn.py --kind gru; train_gossip.py --flavour gru export)",
)
register("controller", "controller", build_controller, "linear controller on [z, h] (train_dream.py)")
register("actor", "controller", build_actor_critic, "actor-critic on [z, h] (train_dream.py --learner actor-critic)")
