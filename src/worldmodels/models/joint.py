"""Joint world models: a ConvVAE and its dynamics in one module, trained together (issue 5, part 1).

Two flavours share one small world-model interface (``WorldModel``):

* ``mdnrnn``: ConvVAE + the paper's MDN-RNN (Ha & Schmidhuber 2018, Sec. 2.1-2.2, Appendix A);
* ``gru``: ConvVAE + ``GRUTransition`` (GRU state, one Gaussian over z_{t+1}; Cho et al. 2014, Hafner et al. 2019).

The interface, on one example and one step (``vmap`` adds batch and pool axes, ``lax.scan`` adds time):

``encode(x) -> (mu, logvar)``   frames float32 (*B, 64, 64, 3) in [0, 1] -> posteriors (*B, Z)
``decode(z) -> x``              latents (*B, Z) -> frames (*B, 64, 64, 3)
``initial_state() -> state``    the recurrent carry (``LSTMState`` or ``GRUState``, each with ``h`` (H,))
``step(z, a, state)``           -> ``(state, MDNOutput)``: the prediction of z_{t+1} (a K-component mixture;
                                K = 1 for the GRU), the reward and the done logit. ``sample_next_z`` and
                                ``most_likely_z`` (``worldmodels.models.mdnrnn``) read a sample or the most
                                likely next latent from it.

Either flavour is exactly a ``ConvVAE`` plus its dynamics, so ``gossip.export_model`` saves its parts as the
run's ``vae/ckpt`` and ``rnn/ckpt`` (kind ``mdnrnn`` or ``gru``) and the paper's dream and test stages run it
unchanged (``run_dir.load_dynamics`` rebuilds whichever dynamics kind the checkpoint holds).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from worldmodels.config import DYNAMICS_FLAVOURS
from worldmodels.models.mdnrnn import MDNRNN, MDNOutput, most_likely_z, sample_next_z
from worldmodels.models.transition import GRUTransition
from worldmodels.models.vae import ConvVAE

FLAVOURS = DYNAMICS_FLAVOURS
"""The dynamics a joint world model can have (``config.DYNAMICS_FLAVOURS``)."""


class WorldModel(Protocol):
    """What a world model offers to dreams, gossip and evaluation (shapes in the module docstring)."""

    def encode(self, x: Array) -> tuple[Array, Array]: ...

    def decode(self, z: Array) -> Array: ...

    def initial_state(self) -> Any: ...

    def step(self, z: Array, action: Array, state: Any) -> tuple[Any, MDNOutput]: ...


class JointWorldModel(eqx.Module):
    """ConvVAE + dynamics (``MDNRNN`` or ``GRUTransition``), one example, one step.

    Attributes:
        vae: the encoder / decoder.
        dynamics: the transition; its ``__call__(z, a, state) -> (state, MDNOutput)``.
        flavour: ``"mdnrnn"`` or ``"gru"`` (static).
    """

    vae: ConvVAE
    dynamics: MDNRNN | GRUTransition
    flavour: str = eqx.field(static=True)

    def __init__(
        self,
        flavour: str = "mdnrnn",
        z_size: int = 32,
        hidden_size: int = 256,
        num_mixtures: int = 5,
        action_size: int = 3,
        *,
        key: PRNGKeyArray,
    ):
        """Build a fresh model.

        Raises:
            ValueError: for an unknown ``flavour``.
        """
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown world-model flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
        k_vae, k_dyn = jr.split(key)
        self.vae = ConvVAE(z_size, key=k_vae)
        if flavour == "mdnrnn":
            self.dynamics = MDNRNN(z_size, action_size, hidden_size, num_mixtures, key=k_dyn)
        else:
            self.dynamics = GRUTransition(z_size, action_size, hidden_size, key=k_dyn)
        self.flavour = flavour

    @property
    def z_size(self) -> int:
        return self.vae.z_size

    @property
    def hidden_size(self) -> int:
        return self.dynamics.hidden_size

    @property
    def action_size(self) -> int:
        return self.dynamics.action_size

    def encode(self, x: Float[Array, "*B 64 64 3"]) -> tuple[Float[Array, "*B Z"], Float[Array, "*B Z"]]:
        """Frames float32 (*B, 64, 64, 3) in [0, 1] -> (mu, logvar), float32 (*B, Z) each."""
        return self.vae.encode(x)

    def decode(self, z: Float[Array, "*B Z"]) -> Float[Array, "*B 64 64 3"]:
        """Latents (*B, Z) -> frames float32 (*B, 64, 64, 3) in [0, 1]."""
        return self.vae.decode(z)

    def initial_state(self):
        """The dynamics' zero carry (``LSTMState`` or ``GRUState``; ``.h`` is float32 (H,))."""
        return self.dynamics.initial_state()

    def step(self, z: Float[Array, " Z"], action: Float[Array, " A"], state) -> tuple[Any, MDNOutput]:
        """Consume (z_t (Z,), a_t (A,)) and return (next carry, prediction of step t+1 as an ``MDNOutput``)."""
        return self.dynamics(z, action, state)


def joint_hparams(flavour: str, z_size: int, hidden_size: int, num_mixtures: int) -> dict[str, Any]:
    """Keyword arguments that rebuild a ``JointWorldModel`` (for self-describing checkpoints)."""
    return {"flavour": flavour, "z_size": z_size, "hidden_size": hidden_size, "num_mixtures": num_mixtures}


def next_latent(pred: MDNOutput, key: PRNGKeyArray | None = None, temperature: float | Array = 1.0) -> Array:
    """A point or sampled next latent (Z,) from one step's prediction.

    ``key=None``: the mean of the most likely component (``most_likely_z``, deterministic; differentiable
    in the means). Otherwise a sample at ``temperature`` (``sample_next_z``, Ha & Schmidhuber 2018, Sec. 4),
    reparameterised within the drawn component, so gradients reach its mean and sigma.
    """
    return most_likely_z(pred) if key is None else sample_next_z(pred, key, temperature)


def teacher_forced(model: JointWorldModel, z: Float[Array, "T Z"], actions: Float[Array, "T A"]) -> MDNOutput:
    """Teacher-forced pass with ``lax.scan``: step on the real z_t and a_t for t = 0..T-1.

    Args:
        model: a world model.
        z: float32 (T, Z) latents z_0..z_{T-1}.
        actions: float32 (T, A) actions a_0..a_{T-1}.

    Returns:
        ``MDNOutput`` with a leading T axis: the predictions of z_1..z_T, r_1..r_T, d_1..d_T.
    """

    def step(state, inputs):
        return model.step(inputs[0], inputs[1], state)

    return jax.lax.scan(step, model.initial_state(), (z, actions))[1]


class OpenLoop(NamedTuple):
    """An open-loop pass: latents fed to the model and its predictions.

    Attributes:
        z: float32 (T, Z) the latent the model stepped on at each step (real during the context, its own
            prediction after).
        z_next: float32 (T, Z) the next latent it chose at each step (the prediction of z_{t+1}).
        reward: float32 (T,) predicted rewards.
        done_logit: float32 (T,) predicted done logits.
    """

    z: Float[Array, "T Z"]
    z_next: Float[Array, "T Z"]
    reward: Float[Array, " T"]
    done_logit: Float[Array, " T"]


def open_loop(
    model: JointWorldModel,
    z_context: Float[Array, "k Z"],
    actions: Float[Array, "T A"],
    keys: PRNGKeyArray | None = None,
    temperature: float | Array = 1.0,
) -> OpenLoop:
    """Read k real latents (teacher forcing), then dream on the given actions with ``lax.scan``.

    Step t (0-based) steps the model on (z_t, a_t): z_t is ``z_context[t]`` for t < k and the model's own
    previous next-latent otherwise. With T = k - 1 + D actions, ``z_next[-1]`` is the model's latent D
    steps after its last real frame.

    Args:
        model: a world model.
        z_context: float32 (k, Z), k >= 1, latents of the real context frames x_0..x_{k-1}.
        actions: float32 (T, A), T >= k, the actions a_0..a_{T-1}.
        keys: ``None`` for the most likely latents, else (T,) keys for sampled ones.
        temperature: sampling temperature tau.

    Returns:
        ``OpenLoop`` with a leading T axis.
    """
    k, t_total = z_context.shape[0], actions.shape[0]
    z_in = jnp.concatenate([z_context, jnp.zeros((t_total - k, z_context.shape[1]), z_context.dtype)])
    is_real = jnp.arange(t_total) < k

    def step(carry, inputs):
        state, z_prev = carry
        z_real, action, real, key = inputs
        z = jnp.where(real, z_real, z_prev)
        state, pred = model.step(z, action, state)
        z_next = next_latent(pred, None if keys is None else key, temperature)
        return (state, z_next), OpenLoop(z, z_next, pred.reward, pred.done_logit)

    # Without keys the scan still needs an input per step; a dummy that ``next_latent`` never reads.
    step_keys = jnp.zeros((t_total,)) if keys is None else keys
    init = (model.initial_state(), jnp.zeros_like(z_context[0]))
    return jax.lax.scan(step, init, (z_in, actions, is_real, step_keys))[1]
