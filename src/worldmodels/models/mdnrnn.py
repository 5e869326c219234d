"""MDN-RNN, the memory model M (Ha & Schmidhuber 2018, Sec. 2.2 and Appendix A.2; Graves 2013, Bishop 1994).

An LSTM reads (z_t, a_t) and its hidden state h_{t+1} parameterises

* a K-component mixture of diagonal Gaussians over z_{t+1}:
  P(z_{t+1} | a_t, z_t, h_t) = sum_k pi_k N(z_{t+1}; mu_k, diag(sigma_k^2)),
* the reward r_{t+1} of the action (a scalar regression),
* the probability that the episode terminates after the action (a logit).

One module acts on one example and one step; ``jax.vmap`` adds batch axes and ``lax.scan`` adds time
(``rollout_sequence``).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


class LSTMState(NamedTuple):
    """LSTM carry: hidden ``h`` and cell ``c``, each float32 (H,)."""

    h: Float[Array, " H"]
    c: Float[Array, " H"]


class MDNOutput(NamedTuple):
    """The MDN-RNN's prediction for the next step.

    Attributes:
        log_pi: (K,) normalised log mixture weights.
        mu: (K, Z) component means.
        log_sigma: (K, Z) component log standard deviations.
        reward: () predicted reward of the action.
        done_logit: () logit of the episode ending after the action.
    """

    log_pi: Float[Array, " K"]
    mu: Float[Array, "K Z"]
    log_sigma: Float[Array, "K Z"]
    reward: Float[Array, ""]
    done_logit: Float[Array, ""]


class MDNRNN(eqx.Module):
    """LSTM + mixture density head + reward and done heads, one step on one example."""

    cell: eqx.nn.LSTMCell
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
        num_mixtures: int = 5,
        *,
        key: PRNGKeyArray,
    ):
        k_cell, k_head = jr.split(key)
        self.cell = eqx.nn.LSTMCell(z_size + action_size, hidden_size, key=k_cell)
        k, z = num_mixtures, z_size
        self.head = eqx.nn.Linear(hidden_size, k + 2 * k * z + 2, key=k_head)
        self.z_size, self.action_size = z_size, action_size
        self.hidden_size, self.num_mixtures = hidden_size, num_mixtures

    def initial_state(self) -> LSTMState:
        """Zero LSTM state, float32 (H,) each."""
        zeros = jnp.zeros((self.hidden_size,), jnp.float32)
        return LSTMState(zeros, zeros)

    def __call__(
        self, z: Float[Array, " Z"], action: Float[Array, " A"], state: LSTMState
    ) -> tuple[LSTMState, MDNOutput]:
        """One step: consume (z_t, a_t), return the new state and the prediction for step t+1."""
        h, c = lstm_step(self.cell, jnp.concatenate([z, action]), state)
        out = self.head(h)
        k, zs = self.num_mixtures, self.z_size
        logits = out[:k]
        mu = out[k : k + k * zs].reshape(k, zs)
        log_sigma = out[k + k * zs : k + 2 * k * zs].reshape(k, zs)
        return LSTMState(h, c), MDNOutput(
            log_pi=jax.nn.log_softmax(logits),
            mu=mu,
            log_sigma=log_sigma,
            reward=out[-2],
            done_logit=out[-1],
        )


def lstm_step(cell: eqx.nn.LSTMCell, x: Float[Array, " I"], state: LSTMState) -> tuple[Array, Array]:
    """``eqx.nn.LSTMCell``'s step (Hochreiter & Schmidhuber 1997; gates i, f, g, o) with one matmul.

    The input and recurrent weights are applied as one (4H, I + H) matrix to [x, h]: under the dream's
    vmap this is one (N, I + H) x (I + H, 4H) product per step instead of two, and the concatenated
    weight is loop-invariant, so XLA computes it once per scan. Same parameters and values as
    ``cell(x, (h, c))``.

    Returns:
        (h, c), float32 (H,) each.
    """
    weight = jnp.concatenate([cell.weight_ih, cell.weight_hh], axis=1)
    gates = weight @ jnp.concatenate([x, state.h])
    if cell.bias is not None:
        gates = gates + cell.bias
    i, f, g, o = jnp.split(gates, 4)
    c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def sample_next_z(out: MDNOutput, key: PRNGKeyArray, temperature: float | Array = 1.0) -> Float[Array, " Z"]:
    """Sample z_{t+1} from the mixture at a temperature (Ha & Schmidhuber 2018, Sec. 4, "Cheating the World Model").

    The temperature tau divides the mixture logits and scales each sigma by sqrt(tau): tau < 1 is
    more deterministic, tau > 1 more uncertain.

    Args:
        out: one step's prediction (no batch axes).
        key: PRNG key.
        temperature: tau > 0.

    Returns:
        float32 (Z,).
    """
    k_comp, k_noise = jr.split(key)
    comp = jr.categorical(k_comp, out.log_pi / temperature)
    sigma = jnp.exp(out.log_sigma[comp]) * jnp.sqrt(temperature)
    return out.mu[comp] + sigma * jr.normal(k_noise, out.mu.shape[1:])


def most_likely_z(out: MDNOutput) -> Float[Array, " Z"]:
    """The mean of the most probable component: a deterministic point prediction of z_{t+1}, (Z,)."""
    return out.mu[jnp.argmax(out.log_pi)]


def rollout_sequence(
    model: MDNRNN, z: Float[Array, "T Z"], actions: Float[Array, "T A"], state: LSTMState | None = None
) -> tuple[LSTMState, MDNOutput]:
    """Teacher-forced pass over a sequence with ``lax.scan`` (the same step as ``MDNRNN.__call__``).

    Args:
        model: the MDN-RNN.
        z: float32 (T, Z) latents z_0..z_{T-1}.
        actions: float32 (T, A) actions a_0..a_{T-1}.
        state: starting LSTM state; zeros when ``None``.

    Returns:
        (final state, MDNOutput with a leading T axis: predictions for z_1..z_T, r_1..r_T, d_1..d_T).
    """
    state = model.initial_state() if state is None else state

    def step(carry: LSTMState, inputs):
        carry, out = model(inputs[0], inputs[1], carry)
        return carry, out

    return jax.lax.scan(step, state, (z, actions))
