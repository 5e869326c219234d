"""GRU transition model: a deterministic recurrent state and a Gaussian prediction of the next latent.

The gossip design's dynamics (docs/ARCHITECTURE.md, "World-model kinds"):

* h_{t+1} = GRU(h_t, [z_t, a_t]) -- the gated recurrent unit of Cho et al. 2014 (Eqs. 5-8), as in
  ``equinox.nn.GRUCell``; the recurrent state is deterministic, like the deterministic path of
  PlaNet's RSSM (Hafner et al. 2019, Sec. 3, "Recurrent state-space model");
* p(z_{t+1} | h_{t+1}) = N(mu(h_{t+1}), diag(sigma(h_{t+1})^2)) -- one diagonal Gaussian from a linear
  head, the "prior" of the same RSSM (here the target latent is the VAE's posterior sample); with
  ``num_mixtures`` K > 1, the MDN-RNN's mixture of K diagonal Gaussians instead (Ha & Schmidhuber 2018,
  Sec. 2.2, with the LSTM replaced by a GRU: the "MDN-GRU" the M stage trains with ``--kind gru``);
* a reward r_{t+1} (regression) and the logit of the episode ending after a_t.

The prediction is returned as an ``MDNOutput`` (K = 1: log pi = 0). A Gaussian is the
one-component case of the MDN-RNN's mixture, so ``losses.mdn_nll`` is then exactly the Gaussian
negative log-likelihood, ``sample_next_z`` at temperature tau draws mu + sqrt(tau) sigma eps and
``most_likely_z`` returns mu: ``dream.py`` and ``evaluate.py`` run this model where they run an MDN-RNN.
The head's layout: K = 1 is [mu (Z), log sigma (Z), reward, done] (gossip's exports, unchanged); K > 1 is the
MDN-RNN's [K logits, K x Z means, K x Z log sigmas, reward, done] (``mdnrnn.mdn_head_output``).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from worldmodels.models.mdnrnn import MDNOutput, batch_major_linear, mdn_head_output


class GRUState(NamedTuple):
    """GRU carry: the hidden state ``h``, float32 (H,). Named ``h`` like the LSTM's, which the controller reads."""

    h: Float[Array, " H"]


class GRUTransition(eqx.Module):
    """GRU cell + Gaussian (or mixture) head over z_{t+1} + reward and done heads, one step on one example.

    Attributes:
        z_size, action_size, hidden_size: Z, A, H.
        num_mixtures: K >= 1 Gaussians of the next-latent prediction (1: gossip's GRU transition).
    """

    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear
    z_size: int = eqx.field(static=True)
    action_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    num_mixtures: int = eqx.field(static=True)

    def __init__(
        self,
        z_size: int = 32,
        action_size: int = 3,
        hidden_size: int = 256,
        num_mixtures: int = 1,
        *,
        key: PRNGKeyArray,
    ):
        """Raises ValueError for ``num_mixtures`` < 1."""
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
        k_cell, k_head = jr.split(key)
        self.cell = eqx.nn.GRUCell(z_size + action_size, hidden_size, key=k_cell)
        out = 2 * z_size + 2 if num_mixtures == 1 else num_mixtures * (1 + 2 * z_size) + 2
        self.head = eqx.nn.Linear(hidden_size, out, key=k_head)
        self.z_size, self.action_size, self.hidden_size = z_size, action_size, hidden_size
        self.num_mixtures = num_mixtures

    def initial_state(self) -> GRUState:
        """Zero state, float32 (H,)."""
        return GRUState(jnp.zeros((self.hidden_size,), jnp.float32))

    def __call__(
        self, z: Float[Array, " Z"], action: Float[Array, " A"], state: GRUState
    ) -> tuple[GRUState, MDNOutput]:
        """One step: consume (z_t (Z,), a_t (A,)), return h_{t+1} and the prediction for step t+1.

        Returns:
            (GRUState, MDNOutput with log_pi (K,), mu and log_sigma (K, Z), reward and done_logit ()).
        """
        h = gru_step(self.cell, jnp.concatenate([z, action]), state.h)
        return GRUState(h), _head(self, h)


def gru_step(cell: eqx.nn.GRUCell, x: Float[Array, " I"], h: Float[Array, " H"]) -> Float[Array, " H"]:
    """``eqx.nn.GRUCell``'s step (Cho et al. 2014; reset r, update u, candidate n) in batch-major form.

    r = sigmoid(W_ir x + b_ir + W_hr h), u = sigmoid(W_iu x + b_iu + W_hu h),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = n + u * (h - n): the same parameters and values
    as ``cell(x, h)``, with the products written ``x @ W.T`` so that under ``vmap`` they give batch-major
    results (``mdnrnn.batch_major_linear``).

    Args:
        cell: the GRU cell, weight_ih (3H, I), weight_hh (3H, H), bias (3H,), bias_n (H,).
        x: float32 (I,).
        h: float32 (H,).

    Returns:
        float32 (H,).
    """
    return _gru_update(cell, _input_gates(cell, x), h)


def _input_gates(cell: eqx.nn.GRUCell, x: Float[Array, "... I"]) -> Float[Array, "... G"]:
    """The input half of the three gates, W_i x + b (G = 3H), for one input (I,) or many (T, I)."""
    igates = x @ cell.weight_ih.T
    return igates + cell.bias if cell.use_bias else igates


def _gru_update(cell: eqx.nn.GRUCell, igates: Float[Array, " G"], h: Float[Array, " H"]) -> Float[Array, " H"]:
    """h' from the input gates W_i x + b (3H,) and h (H,) (Cho et al. 2014, Eqs. 5-8, as ``eqx.nn.GRUCell``)."""
    i_r, i_u, i_n = jnp.split(igates, 3)
    h_r, h_u, h_n = jnp.split(h @ cell.weight_hh.T, 3)
    reset = jax.nn.sigmoid(i_r + h_r)
    update = jax.nn.sigmoid(i_u + h_u)
    new = jnp.tanh(i_n + reset * (h_n + (cell.bias_n if cell.use_bias else 0.0)))
    return new + update * (h - new)


def gru_rollout_sequence(
    model: GRUTransition, z: Float[Array, "T Z"], actions: Float[Array, "T A"]
) -> tuple[GRUState, MDNOutput]:
    """Teacher-forced pass over a sequence: the same values as ``lax.scan`` of ``model.__call__`` from
    ``initial_state()``, with the input half of every gate (W_i [z_t, a_t] + b, which does not depend on h) computed
    for all T steps in one (T, I) x (I, 3H) product before the scan and the heads applied to all T states after it,
    so the scanned step holds only the recurrent product h @ W_h^T (Cho et al. 2014, Eqs. 5-8).

    Args:
        model: the GRU.
        z: float32 (T, Z) latents z_0..z_{T-1}.
        actions: float32 (T, A) actions a_0..a_{T-1}.

    Returns:
        (final state, ``MDNOutput`` with a leading T axis: predictions for z_1..z_T, r_1..r_T, d_1..d_T).
    """
    igates = _input_gates(model.cell, jnp.concatenate([z, actions], axis=-1))

    def step(h, ig):
        h = _gru_update(model.cell, ig, h)
        return h, h

    h_last, hs = jax.lax.scan(step, model.initial_state().h, igates)
    return GRUState(h_last), jax.vmap(lambda h: _head(model, h))(hs)


def _head(model: GRUTransition, h: Float[Array, " H"]) -> MDNOutput:
    """The prediction of ``model`` from its new state h (H,), split by ``mdn_head_output``. The one-Gaussian head
    (K = 1) stores no mixture logit; a constant 0 stands in for it, whose log-softmax is log pi = 0."""
    out = batch_major_linear(model.head, h)
    if model.num_mixtures == 1:
        out = jnp.concatenate([jnp.zeros((1,), out.dtype), out])
    return mdn_head_output(out, model.num_mixtures, model.z_size)
