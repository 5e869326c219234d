"""The linear controller C (Ha & Schmidhuber 2018, Sec. 2.3, Eq. 1): a_t = W_c [z_t h_t] + b_c.

The raw outputs are squashed to the environment's action box (``squash``, from its ``env.EnvSpec``):
``carracing`` as in the paper's code, steer = tanh(o_0), gas = (tanh(o_1) + 1) / 2, brake =
clip(tanh(o_2), 0, 1); ``tanh`` for a box of [-1, 1] in every dimension (LunarLander). At paper sizes
(Z = 32, H = 256, 3 actions) it has 3 * 288 + 3 = 867 parameters. With ``inputs="z"`` it reads the
latent alone, a_t = W_c z_t + b_c: the paper's "V model only" agent (Sec. 3.4, Table 1). CMA-ES works on
the flat vector; ``from_flat`` / ``to_flat`` are the views between the two.

``MLPController`` puts one hidden layer of ``units`` tanh units between the inputs and the outputs, the variant the
paper reports with "V model only" (Table 1: 788 +- 141 against the linear controller's 632 +- 251).
``controller_from_flat`` and ``controller_num_params`` pick the class by ``units`` (0: linear).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

CONTROLLER_INPUTS = ("zh", "z")
"""What the controller reads: [z, h] (V + M, the paper's agent) or z alone (V only)."""


def squash_action(o: Float[Array, " A"], squash: str = "carracing") -> Float[Array, " A"]:
    """Raw controller outputs (A,) -> an action in the environment's box.

    ``carracing`` (A = 3): steer in [-1, 1], gas and brake in [0, 1] (the paper's code); ``tanh``: tanh(o),
    every dimension in [-1, 1].

    Raises:
        ValueError: for another ``squash``.
    """
    t = jnp.tanh(o)
    if squash == "tanh":
        return t
    if squash != "carracing":
        raise ValueError(f"unknown action squash {squash!r}; expected 'carracing' or 'tanh'")
    return jnp.stack([t[0], (t[1] + 1.0) / 2.0, jnp.clip(t[2], 0.0, 1.0)])


def action_box(squash: str, action_size: int) -> tuple[Float[Array, " A"], Float[Array, " A"]]:
    """(low, high) float32 (A,) each: the action box that ``squash_action``'s ``squash`` maps into.

    Raises:
        ValueError: for another ``squash``.
    """
    if squash == "carracing":
        return jnp.array([-1.0, 0.0, 0.0]), jnp.ones(3)
    if squash == "tanh":
        return -jnp.ones(action_size), jnp.ones(action_size)
    raise ValueError(f"unknown action squash {squash!r}; expected 'carracing' or 'tanh'")


class LinearController(eqx.Module):
    """a = squash(W [z, h] + b) (or W z + b with ``inputs="z"``) for one example.

    Attributes:
        weight: float32 (A, Z + H), or (A, Z) with ``inputs="z"``.
        bias: float32 (A,).
        squash: ``squash_action``'s mapping into the action box.
        inputs: ``zh`` or ``z`` (``CONTROLLER_INPUTS``).
    """

    weight: Float[Array, "A I"]
    bias: Float[Array, " A"]
    squash: str = eqx.field(static=True, default="carracing")
    inputs: str = eqx.field(static=True, default="zh")

    @staticmethod
    def num_params(
        z_size: int, hidden_size: int, action_size: int = 3, inputs: str = "zh", squash: str = "carracing"
    ) -> int:
        """Length of the flat parameter vector: A * (Z + H) + A (A * Z + A with ``inputs="z"``); ``squash`` does not
        change it (accepted so a controller's hparams can be passed whole)."""
        return action_size * _input_size(z_size, hidden_size, inputs) + action_size

    @classmethod
    def from_flat(
        cls,
        flat: Float[Array, " N"],
        z_size: int,
        hidden_size: int,
        action_size: int = 3,
        squash: str = "carracing",
        inputs: str = "zh",
    ) -> LinearController:
        """Controller from a flat vector of length ``num_params`` (weights row-major, then biases).

        Raises:
            ValueError: if the vector has the wrong length or ``inputs`` is unknown.
        """
        n_in = _input_size(z_size, hidden_size, inputs)
        _check_length(flat, cls.num_params(z_size, hidden_size, action_size, inputs), z_size, hidden_size, action_size,
                      inputs)  # fmt: skip
        weight = flat[: action_size * n_in].reshape(action_size, n_in)
        return cls(weight=weight, bias=flat[action_size * n_in :], squash=squash, inputs=inputs)

    def to_flat(self) -> Float[Array, " N"]:
        """The flat parameter vector (weights row-major, then biases)."""
        return jnp.concatenate([self.weight.reshape(-1), self.bias])

    def __call__(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> Float[Array, " A"]:
        """Action (A,) for latent z (Z,) and the memory's hidden state h (H,) (ignored with ``inputs="z"``)."""
        return squash_action(self.weight @ _read(z, h, self.inputs) + self.bias, self.squash)


def _input_size(z_size: int, hidden_size: int, inputs: str) -> int:
    """I: Z + H for ``inputs="zh"``, Z for ``"z"``.

    Raises:
        ValueError: for another ``inputs``.
    """
    if inputs not in CONTROLLER_INPUTS:
        raise ValueError(f"controller inputs must be one of {CONTROLLER_INPUTS}, got {inputs!r}")
    return z_size + (hidden_size if inputs == "zh" else 0)


def _check_length(flat: Array, expected: int, z: int, h: int, a: int, inputs: str, units: int = 0) -> None:
    """Raise ``ValueError`` naming the sizes when ``flat`` is not (expected,)."""
    if flat.shape != (expected,):
        layer = f", {units} hidden units" if units else ""
        raise ValueError(
            f"controller vector has shape {flat.shape}, expected ({expected},) for Z={z}, H={h}, A={a}, "
            f"inputs {inputs}{layer}"
        )


def _read(z: Float[Array, " Z"], h: Float[Array, " H"], inputs: str) -> Float[Array, " I"]:
    """What the controller reads: [z, h], or z with ``inputs="z"``."""
    return z if inputs == "z" else jnp.concatenate([z, h])


class MLPController(eqx.Module):
    """a = squash(W_2 tanh(W_1 x + b_1) + b_2) with x = [z, h] (or z with ``inputs="z"``): C with one hidden layer
    of U tanh units (Ha & Schmidhuber 2018, Table 1, "with hidden layer"), evolved by CMA-ES like the linear one.

    Attributes:
        hidden_weight: float32 (U, I); hidden_bias: float32 (U,).
        weight: float32 (A, U); bias: float32 (A,).
        squash, inputs: as ``LinearController``'s.
    """

    hidden_weight: Float[Array, "U I"]
    hidden_bias: Float[Array, " U"]
    weight: Float[Array, "A U"]
    bias: Float[Array, " A"]
    squash: str = eqx.field(static=True, default="carracing")
    inputs: str = eqx.field(static=True, default="zh")

    @staticmethod
    def num_params(
        z_size: int,
        hidden_size: int,
        action_size: int = 3,
        inputs: str = "zh",
        squash: str = "carracing",
        units: int = 1,
    ) -> int:
        """Length of the flat vector: U * I + U + A * U + A (I = Z + H, or Z with ``inputs="z"``)."""
        n_in = _input_size(z_size, hidden_size, inputs)
        return units * n_in + units + action_size * units + action_size

    @classmethod
    def from_flat(
        cls,
        flat: Float[Array, " N"],
        z_size: int,
        hidden_size: int,
        action_size: int = 3,
        squash: str = "carracing",
        inputs: str = "zh",
        units: int = 1,
    ) -> MLPController:
        """Controller from a flat vector of length ``num_params``: W_1 row-major, b_1, W_2 row-major, b_2.

        Raises:
            ValueError: for the wrong length, ``units`` < 1 or unknown ``inputs``.
        """
        if units < 1:
            raise ValueError(f"a controller's hidden layer needs at least one unit, got {units}")
        n_in = _input_size(z_size, hidden_size, inputs)
        expected = cls.num_params(z_size, hidden_size, action_size, inputs, units=units)
        _check_length(flat, expected, z_size, hidden_size, action_size, inputs, units)
        cuts = [units * n_in, units * n_in + units, units * n_in + units + action_size * units]
        w1, b1, w2, b2 = jnp.split(flat, cuts)
        return cls(w1.reshape(units, n_in), b1, w2.reshape(action_size, units), b2, squash=squash, inputs=inputs)

    def to_flat(self) -> Float[Array, " N"]:
        """The flat parameter vector (W_1 row-major, b_1, W_2 row-major, b_2)."""
        return jnp.concatenate([self.hidden_weight.reshape(-1), self.hidden_bias, self.weight.reshape(-1), self.bias])

    def __call__(self, z: Float[Array, " Z"], h: Float[Array, " H"]) -> Float[Array, " A"]:
        """Action (A,) for latent z (Z,) and the memory's hidden state h (H,) (ignored with ``inputs="z"``)."""
        x = _read(z, h, self.inputs)
        return squash_action(self.weight @ jnp.tanh(self.hidden_weight @ x + self.hidden_bias) + self.bias, self.squash)


Controller = LinearController | MLPController
"""C: linear (the paper's) or with one hidden layer."""


def _check_units(units: int) -> None:
    """Refuse a negative number of hidden units (0 is the linear controller)."""
    if units < 0:
        raise ValueError(f"controller units must be >= 0 (0: linear), got {units}")


def controller_num_params(
    z_size: int, hidden_size: int, action_size: int = 3, inputs: str = "zh", squash: str = "carracing", units: int = 0
) -> int:
    """Length N of the flat vector of C: ``LinearController``'s with ``units`` 0, else ``MLPController``'s.

    Raises:
        ValueError: for ``units`` < 0.
    """
    _check_units(units)
    if units:
        return MLPController.num_params(z_size, hidden_size, action_size, inputs, units=units)
    return LinearController.num_params(z_size, hidden_size, action_size, inputs)


def controller_from_flat(
    flat: Float[Array, " N"],
    z_size: int,
    hidden_size: int,
    action_size: int = 3,
    squash: str = "carracing",
    inputs: str = "zh",
    units: int = 0,
) -> Controller:
    """C from its flat vector (N,): a ``LinearController`` with ``units`` 0, else an ``MLPController`` with that
    many hidden units. Keyword-compatible with ``registry.controller_hparams``.

    Raises:
        ValueError: as the classes' ``from_flat`` (wrong length, unknown inputs), or for ``units`` < 0.
    """
    _check_units(units)
    if units:
        return MLPController.from_flat(flat, z_size, hidden_size, action_size, squash, inputs, units)
    return LinearController.from_flat(flat, z_size, hidden_size, action_size, squash, inputs)
