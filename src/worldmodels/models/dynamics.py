"""The dynamics protocol: what every world-model memory M offers the dream, the planners and the agent.

A dynamics model acts on **one example and one step** (Equinox style; ``jax.vmap`` adds batch, population
and pool axes, ``lax.scan`` adds time). From the latent z_t of the current frame, the action a_t and its
recurrent state, it returns its next state and a prediction for step t+1: a mixture of K diagonal
Gaussians over z_{t+1}, the reward of the action and the logit of the episode ending (``MDNOutput``;
Ha & Schmidhuber 2018, Sec. 2.2). A model with a single Gaussian (the GRU transition) has K = 1.

The controller reads the state's ``h`` (the paper's C acts on [z_t, h_t], Eq. 1), so every state carries
an ``h`` of shape (H,) with H = ``hidden_size``; anything else in the state (an LSTM's cell, an RSSM's
stochastic part, a transformer's KV cache) is the model's own business. Every initial state comes from
``initial_state()``; nothing outside the model builds one.

Implemented by ``MDNRNN`` (kind ``mdnrnn``), ``RSSM`` (kind ``rssm``), ``TransformerDynamics`` (kind
``transformer``) and ``GRUTransition`` (kind ``gru``); a new
kind implements this protocol and registers its builder in ``worldmodels.models.registry`` (see docs/ARCHITECTURE.md,
"Adding a world-model kind").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
from jaxtyping import Array, Float

from worldmodels.models.mdnrnn import MDNOutput


@runtime_checkable
class DynamicsState(Protocol):
    """A dynamics model's recurrent state (a pytree); ``h`` float32 (H,) is what the controller reads."""

    @property
    def h(self) -> Float[Array, " H"]: ...


@runtime_checkable
class Dynamics(Protocol):
    """A world-model memory M: one example, one step.

    Attributes:
        z_size: Z, the latent size it reads and predicts.
        action_size: A, the action size it reads.
        hidden_size: H, the size of ``state.h`` (the controller's second input).
        num_mixtures: K, the Gaussians of its next-latent prediction (1 for a single Gaussian).
    """

    z_size: int
    action_size: int
    hidden_size: int
    num_mixtures: int

    def initial_state(self) -> Any:
        """The state before the first step of an episode (a ``DynamicsState`` pytree of unbatched arrays)."""
        ...

    def __call__(self, z: Float[Array, " Z"], action: Float[Array, " A"], state: Any) -> tuple[Any, MDNOutput]:
        """Consume (z_t (Z,), a_t (A,)) and the state; return (next state, prediction for step t+1)."""
        ...


def batched_initial_state(dynamics: Dynamics, batch: int) -> Any:
    """``dynamics.initial_state()`` broadcast to a leading batch axis of size ``batch`` (every leaf (batch, ...))."""
    return broadcast_batch(dynamics.initial_state(), batch)


def broadcast_batch(tree: Any, batch: int) -> Any:
    """Every array leaf of ``tree`` broadcast to a new leading axis of size ``batch`` (one state for W environments)."""
    return jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (batch,) + x.shape), tree)


# Stacked modules: a gossip pool, a planner's ensemble


def stack_modules(members: Sequence[Any]) -> Any:
    """E equinox modules of one type and size as one module: every array leaf stacked on a new leading axis E.

    Static fields and other non-array leaves are kept once (they must agree). ``module_at`` is the inverse; a
    stacked module is what ``eqx.filter_vmap(..., in_axes=eqx.if_array(0))`` maps over (a gossip pool of world
    models, a planner's ensemble of dynamics).

    Args:
        members: E >= 1 modules with identical structure, static fields (sizes) and array shapes.

    Returns:
        One module of the members' type whose array leaves are (E, ...).

    Raises:
        ValueError: if ``members`` is empty, or the members differ in structure, static fields or shapes.
    """
    members = list(members)
    if not members:
        raise ValueError("stacking needs at least one member")
    parts = [eqx.partition(m, eqx.is_array) for m in members]
    arrays0, static0 = parts[0]
    tree0, leaves0 = jax.tree.structure(arrays0), jax.tree.leaves(arrays0)
    for i, (arrays, static) in enumerate(parts[1:], start=1):
        same = jax.tree.structure(arrays) == tree0 and jax.tree.structure(static) == jax.tree.structure(static0)
        same = same and jax.tree.leaves(static) == jax.tree.leaves(static0)
        if not same or [x.shape for x in jax.tree.leaves(arrays)] != [x.shape for x in leaves0]:
            raise ValueError(f"member {i} differs from member 0 in structure, static fields or array shapes")
    stacked = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *[a for a, _ in parts])
    return eqx.combine(stacked, static0)


def module_at(stacked: Any, i: int) -> Any:
    """Member ``i`` of a stacked module (``stack_modules``): every array leaf indexed at ``i`` on its leading axis."""
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, stacked)
