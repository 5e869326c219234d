"""The MLP autoencoder: the vision model V for vector observations (LunarLander's 8 numbers).

The project's notes on a vector-observation world model: encoder Linear(obs -> 2048) -> Linear(2048 ->
2048) -> Linear(2048 -> 1024) -> Linear(1024 -> latent), decoder the mirror image, trained on collected
observations with MSE and Adam, then frozen so that the agent reads the latent instead of the raw
observation. With ``variational=True`` (the default) the last encoder layer gives mu and log-variance of
a diagonal Gaussian posterior, as the convolutional VAE does (Kingma & Welling 2014), so it fills V's
place unchanged: ``encode(x) -> (mu, logvar)``, ``decode(z) -> x``, ``__call__(x, key)``. With
``variational=False`` it is a plain autoencoder: ``encode`` returns a log-variance of ``DETERMINISTIC_LOGVAR``
(z = mu to float32 precision) and training drops the KL term.

Observations are standardised inside the model, x_n = (x - mean) / std with the training data's
per-dimension mean and std (``with_statistics``; held fixed, not trained), so dimensions of different
scales weigh alike in the reconstruction loss, which compares ``normalize(x)`` with the decoder's
standardised output (``__call__``). ``decode`` returns observations in their own units.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

DEFAULT_HIDDEN = (2048, 2048, 1024)
"""The notes' encoder widths; the decoder mirrors them."""
DETERMINISTIC_LOGVAR = -30.0
"""log sigma^2 of a non-variational encoder: sigma = 3e-7, so z ~ N(mu, sigma^2) is mu."""
STD_FLOOR = 1e-3
"""Smallest per-dimension std used for standardising (a constant dimension is left unscaled, not divided by 0)."""


def _mlp(sizes: tuple[int, ...], key: PRNGKeyArray) -> tuple[eqx.nn.Linear, ...]:
    keys = jr.split(key, len(sizes) - 1)
    return tuple(eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True))


def _forward(layers: tuple[eqx.nn.Linear, ...], x: Float[Array, " I"]) -> Float[Array, " O"]:
    """ReLU between layers, none after the last."""
    for layer in layers[:-1]:
        x = jax.nn.relu(layer(x))
    return layers[-1](x)


class MLPAutoencoder(eqx.Module):
    """MLP (variational) autoencoder on float32 vectors (obs_size,).

    Attributes:
        obs_mean, obs_std: float32 (obs_size,) standardisation of the inputs (fixed; ``with_statistics``).
        obs_size: observation size D.
        z_size: latent size Z.
        hidden: encoder widths (the decoder uses them in reverse).
        variational: whether the encoder outputs a learned log-variance.

    Raises:
        ValueError: for a non-positive size.
    """

    encoder: tuple[eqx.nn.Linear, ...]
    fc_mu: eqx.nn.Linear
    fc_logvar: eqx.nn.Linear | None
    decoder: tuple[eqx.nn.Linear, ...]
    obs_mean: Float[Array, " D"]
    obs_std: Float[Array, " D"]
    obs_size: int = eqx.field(static=True)
    z_size: int = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)
    variational: bool = eqx.field(static=True)

    def __init__(
        self,
        obs_size: int,
        z_size: int = 16,
        hidden: tuple[int, ...] = DEFAULT_HIDDEN,
        variational: bool = True,
        *,
        key: PRNGKeyArray,
    ):
        hidden = tuple(int(h) for h in hidden)
        if obs_size < 1 or z_size < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"MLP autoencoder sizes must be positive, got obs {obs_size}, z {z_size}, hidden {hidden}")
        k_enc, k_mu, k_lv, k_dec = jr.split(key, 4)
        self.encoder = _mlp((obs_size, *hidden), k_enc)
        self.fc_mu = eqx.nn.Linear(hidden[-1], z_size, key=k_mu)
        self.fc_logvar = eqx.nn.Linear(hidden[-1], z_size, key=k_lv) if variational else None
        self.decoder = _mlp((z_size, *hidden[::-1], obs_size), k_dec)
        self.obs_mean = jnp.zeros(obs_size, jnp.float32)
        self.obs_std = jnp.ones(obs_size, jnp.float32)
        self.obs_size, self.z_size, self.hidden, self.variational = obs_size, z_size, hidden, variational

    def with_statistics(self, observations: np.ndarray) -> MLPAutoencoder:
        """The same model standardising with the mean and std (floored at ``STD_FLOOR``) of ``observations``
        float (N, D)."""
        obs = np.asarray(observations, np.float64).reshape(-1, self.obs_size)
        mean = jnp.asarray(obs.mean(0), jnp.float32)
        std = jnp.asarray(np.maximum(obs.std(0), STD_FLOOR), jnp.float32)
        return eqx.tree_at(lambda m: (m.obs_mean, m.obs_std), self, (mean, std))

    def normalize(self, x: Float[Array, "*B D"]) -> Float[Array, "*B D"]:
        """(x - mean) / std with the statistics held fixed (no gradient reaches them)."""
        return (x - jax.lax.stop_gradient(self.obs_mean)) / jax.lax.stop_gradient(self.obs_std)

    def encode(self, x: Float[Array, "*B D"]) -> tuple[Float[Array, "*B Z"], Float[Array, "*B Z"]]:
        """Observations float32 (*B, D) in their own units -> (mu, logvar), float32 (*B, Z) each."""
        lead = x.shape[:-1]
        flat = self.normalize(x.astype(jnp.float32)).reshape(-1, self.obs_size)

        def one(v):
            h = jax.nn.relu(_forward(self.encoder, v))
            mu = self.fc_mu(h)
            logvar = self.fc_logvar(h) if self.fc_logvar is not None else jnp.full_like(mu, DETERMINISTIC_LOGVAR)
            return mu, logvar

        mu, logvar = jax.vmap(one)(flat)
        return mu.reshape(lead + (self.z_size,)), logvar.reshape(lead + (self.z_size,))

    def decode_normalized(self, z: Float[Array, "*B Z"]) -> Float[Array, "*B D"]:
        """Latents (*B, Z) -> standardised observations (*B, D) (compare with ``normalize(x)``)."""
        lead = z.shape[:-1]
        out = jax.vmap(lambda v: _forward(self.decoder, v))(z.reshape(-1, self.z_size))
        return out.reshape(lead + (self.obs_size,))

    def decode(self, z: Float[Array, "*B Z"]) -> Float[Array, "*B D"]:
        """Latents (*B, Z) -> observations float32 (*B, D) in their own units."""
        return self.decode_normalized(z) * self.obs_std + self.obs_mean

    def __call__(
        self, x: Float[Array, "*B D"], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "*B D"], Float[Array, "*B Z"], Float[Array, "*B Z"]]:
        """Encode, sample z = mu + sigma * eps (reparameterisation, Kingma & Welling 2014), decode.

        Returns:
            (reconstruction of ``normalize(x)``, standardised, float32 (*B, D); mu (*B, Z); logvar (*B, Z)).
        """
        mu, logvar = self.encode(x)
        z = mu + jnp.exp(0.5 * logvar) * jr.normal(key, mu.shape)
        return self.decode_normalized(z), mu, logvar
