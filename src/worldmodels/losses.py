"""Named loss dicts for V and M. Each function acts on one example; the trainers vmap and average.

Every function returns a dict of named float32 scalars with a ``total`` entry, the weighted sum
whose weights come from the config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from worldmodels.models.mdnrnn import MDNOutput

LOG_2PI = float(jnp.log(2.0 * jnp.pi))


def kl_diag_normal(mu: Float[Array, " Z"], logvar: Float[Array, " Z"]) -> Float[Array, ""]:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in nats (Kingma & Welling 2014, Appendix B)."""
    return -0.5 * jnp.sum(1.0 + logvar - mu**2 - jnp.exp(logvar))


def vae_loss(
    recon: Float[Array, "64 64 3"],
    x: Float[Array, "64 64 3"],
    mu: Float[Array, " Z"],
    logvar: Float[Array, " Z"],
    kl_tolerance: float,
) -> dict[str, Array]:
    """The paper's VAE loss for one frame (Ha & Schmidhuber 2018, Appendix A.1).

    recon = sum over pixels and channels of (x - x_hat)^2 (L2, images in [0, 1]);
    kl = max(KL, kl_tolerance * Z) -- free bits: the KL is not pushed below the tolerance, which keeps
    the latents informative. ``kl_raw`` is the KL before the floor.

    Returns:
        dict with ``recon``, ``kl``, ``kl_raw``, ``total`` (float32 scalars).
    """
    recon_loss = jnp.sum((recon - x) ** 2)
    kl_raw = kl_diag_normal(mu, logvar)
    kl = jnp.maximum(kl_raw, kl_tolerance * mu.shape[-1])
    return {"recon": recon_loss, "kl": kl, "kl_raw": kl_raw, "total": recon_loss + kl}


def mdn_nll(out: MDNOutput, z_next: Float[Array, " Z"]) -> Float[Array, ""]:
    """Negative log-likelihood of z_next under the diagonal Gaussian mixture, in nats per latent dimension.

    -log sum_k pi_k prod_i N(z_i; mu_ki, sigma_ki^2), computed with logsumexp (Bishop 1994, Eq. 29;
    Graves 2013, Eq. 26), divided by Z so the scale does not depend on the latent size.
    """
    log_sigma = out.log_sigma
    comp = -0.5 * (((z_next - out.mu) / jnp.exp(log_sigma)) ** 2) - log_sigma - 0.5 * LOG_2PI
    log_prob = jax.nn.logsumexp(out.log_pi + jnp.sum(comp, axis=-1))
    return -log_prob / z_next.shape[-1]


def asymmetric_mse(pred: Array, target: Array, overpredict_weight: float) -> Array:
    """Squared error, multiplied by ``overpredict_weight`` where pred > target.

    Over-predicted rewards are what a controller evolved in the dream exploits, so they cost more.
    """
    err = pred - target
    return jnp.where(err > 0, overpredict_weight, 1.0) * err**2


def binary_cross_entropy(logit: Array, label: Array) -> Array:
    """BCE with logits, numerically stable: max(l, 0) - l * y + log(1 + exp(-|l|))."""
    return jnp.maximum(logit, 0.0) - logit * label + jnp.log1p(jnp.exp(-jnp.abs(logit)))


def rnn_step_loss(
    out: MDNOutput,
    z_next: Float[Array, " Z"],
    reward: Float[Array, ""],
    done: Float[Array, ""],
    *,
    reward_weight: float,
    reward_overpredict_weight: float,
    done_weight: float,
) -> dict[str, Array]:
    """MDN-RNN loss of one step: mixture NLL of z_{t+1}, asymmetric reward MSE, done BCE.

    Returns:
        dict with ``mdn_nll``, ``reward``, ``done``, ``total`` (float32 scalars).
    """
    nll = mdn_nll(out, z_next)
    r = asymmetric_mse(out.reward, reward, reward_overpredict_weight)
    d = binary_cross_entropy(out.done_logit, done)
    return {"mdn_nll": nll, "reward": r, "done": d, "total": nll + reward_weight * r + done_weight * d}
