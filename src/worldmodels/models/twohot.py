"""Symlog two-hot regression heads (Hafner et al. 2023, "Mastering Diverse Domains through World Models").

DreamerV3 predicts rewards and values whose scale is unknown in advance as a categorical distribution
over fixed bins in symlog space (Sec. 3, "Robust predictions", Eqs. 9-11):

* symlog(x) = sign(x) ln(|x| + 1), symexp(x) = sign(x) (exp(|x|) - 1)  (Eq. 9);
* bins b_1 < ... < b_B evenly spaced in symlog space over [-20, 20] (B = 255);
* the target y is encoded as ``twohot(symlog(y))``: weight on the two bins around it, linear in the
  distance (Eq. 10);
* the prediction is y_hat = symexp(sum_i softmax(logits)_i b_i) (Eq. 11), trained with the
  cross-entropy against the two-hot target.

Each function acts on one scalar (``jax.vmap`` adds batch axes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

NUM_BINS = 255
"""DreamerV3's bin count."""
LOW, HIGH = -20.0, 20.0
"""Range of the bins in symlog space."""


def symlog(x: Array) -> Array:
    """sign(x) ln(|x| + 1) (Hafner et al. 2023, Eq. 9)."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: Array) -> Array:
    """sign(x) (exp(|x|) - 1), the inverse of ``symlog``."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def bins(num_bins: int = NUM_BINS) -> Float[Array, " B"]:
    """The bin centres in symlog space, float32 (B,), evenly spaced over [LOW, HIGH]."""
    return jnp.linspace(LOW, HIGH, num_bins, dtype=jnp.float32)


def encode(y: Float[Array, ""], num_bins: int = NUM_BINS) -> Float[Array, " B"]:
    """The two-hot target of a real value ``y`` (Eq. 10): float32 (B,), two nonzero weights summing to 1.

    symlog(y) is clipped to the bins' range; the weights are linear in its distance to the two
    neighbouring bins, so ``sum(encode(y) * bins())`` equals ``symlog(y)`` exactly inside the range.
    """
    b = bins(num_bins)
    x = jnp.clip(symlog(y), LOW, HIGH)
    below = jnp.clip(jnp.searchsorted(b, x, side="right") - 1, 0, num_bins - 2)
    lo, hi = b[below], b[below + 1]
    w_hi = (x - lo) / (hi - lo)
    return jax.nn.one_hot(below, num_bins) * (1.0 - w_hi) + jax.nn.one_hot(below + 1, num_bins) * w_hi


def decode(logits: Float[Array, " B"]) -> Float[Array, ""]:
    """The prediction y_hat = symexp(E_softmax(logits)[b]) (Eq. 11), float32 scalar."""
    return symexp(jnp.sum(jax.nn.softmax(logits) * bins(logits.shape[-1])))


def loss(logits: Float[Array, " B"], y: Float[Array, ""]) -> Float[Array, ""]:
    """Cross-entropy of the logits against ``encode(y)`` in nats (Hafner et al. 2023, Sec. 3)."""
    return -jnp.sum(encode(y, logits.shape[-1]) * jax.nn.log_softmax(logits))
