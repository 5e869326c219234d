"""The linear controller C (Ha & Schmidhuber 2018, Sec. 2.3, Eq. 1): a_t = W_c [z_t h_t] + b_c.

The raw outputs are squashed to CarRacing's action box as in the paper's code: steer = tanh(o_0),
gas = (tanh(o_1) + 1) / 2, brake = clip(tanh(o_2), 0, 1). At paper sizes (Z = 32, H = 256, 3 actions)
it has 3 * 288 + 3 = 867 parameters. CMA-ES works on the flat vector; ``from_flat`` / ``to_flat`` are
the views between the two.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


def squash_action(o: Float[Array, " 3"]) -> Float[Array, " 3"]:
    """Raw controller outputs (3,) -> CarRacing action (steer in [-1, 1], gas and brake in [0, 1])."""
    t = jnp.tanh(o)
    return jnp.stack([t[0], (t[1] + 1.0) / 2.0, jnp.clip(t[2], 0.0, 1.0)])


class LinearController(eqx.Module):
    """a = squash(W [z, h] + b) for one example.

    Attributes:
        weight: float32 (A, Z + H).
        bias: float32 (A,).
    """

    weight: Float[Array, "A I"]
    bias: Float[Array, " A"]

    @staticmethod
    def num_params(z_size: int, hidden_size: int, action_size: int = 3) -> int:
        """Length of the flat parameter vector: A * (Z + H) + A."""
        return action_size * (z_size + hidden_size) + action_size

    @classmethod
    def from_flat(
        cls, flat: Float[Array, " N"], z_size: int, hidden_size: int, action_size: int = 3
    ) -> LinearController:
        """Controller from a flat vector of length ``num_params`` (weights row-major, then biases).

        Raises:
            ValueError: if the vector has the wrong length.
        """
        n_in = z_size + hidden_size
        expected = cls.num_params(z_size, hidden_size, action_size)
        if flat.shape != (expected,):
            raise ValueError(
                f"controller vector has shape {flat.shape}, expected ({expected},) for Z={z_size}, H={hidden_size}"
            )
        weight = flat[: action_size * n_in].reshape(action_size, n_in)
        return cls(weight=weight, bias=flat[action_size * n_in :])

    def to_flat(self) -> Float[Array, " N"]:
        """The flat parameter vector (weights row-major, then biases)."""
        return jnp.concatenate([self.weight.reshape(-1), self.bias])

    def __call__(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> Float[Array, " 3"]:
        """Action (3,) for latent z (Z,) and LSTM hidden state h (H,)."""
        return squash_action(self.weight @ jnp.concatenate([z, h]) + self.bias)
