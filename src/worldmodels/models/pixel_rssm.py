"""The RSSM trained end to end from pixels: a ConvVAE and the RSSM of ``models.rssm``, optimised jointly.

Dreamer's observation path (Hafner et al. 2019, PlaNet, Sec. 3; 2020, DreamerV1, Sec. 4, the reconstruction
objective; 2023, DreamerV3, Sec. 3, the image decoder in the prediction loss) built from the parts of this
project: the convolutional VAE of Ha & Schmidhuber 2018 (Appendix A.1, ``models.vae``) is the image encoder and
decoder, and the RSSM (``models.rssm``) reads the VAE's reparameterised latent z_t = mu_t + sigma_t * eps as its
observation e_t. Unlike the two-stage pipeline (V trained first and frozen, M trained on its latents) the RSSM's
losses here reach the conv encoder, so the latent is shaped by what the dynamics can predict.

Shapes: one window of L transitions, frames float32 (L + 1, 64, 64, 3) in [0, 1], actions (L, A), rewards and
dones (L,); latents (L + 1, Z). The loss (``pixel_rssm_sequence_loss``) is the VAE's own (reconstruction and
KL to N(0, I) with free bits), the RSSM's (``losses.rssm_sequence_loss`` on z) and Dreamer's image decoder
term: the VAE's decoder applied to the RSSM's observation-decoder mean from (h_t, s_t), compared with frame t.

After training, the two parts are exported as a run's V (``vae/ckpt``, kind ``vae``) and M (``rnn/ckpt``,
kind ``rssm``), so the dream, the controller and ``test_agent.py`` use them unchanged.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from worldmodels.losses import rssm_sequence_terms, vae_loss
from worldmodels.models.rssm import RSSM
from worldmodels.models.vae import ConvVAE


class PixelRSSM(eqx.Module):
    """A ConvVAE (V) and an RSSM (M) on its latent, trained together from 64x64x3 frames.

    Attributes:
        vae: the ConvVAE; its posterior sample is the RSSM's observation z_t (Z,).
        rssm: the RSSM, with ``z_size`` the VAE's Z.
    """

    vae: ConvVAE
    rssm: RSSM

    def __init__(
        self,
        z_size: int = 32,
        action_size: int = 3,
        hidden_size: int = 256,
        latent: str = "gaussian",
        stoch: int = 32,
        classes: int = 32,
        units: int = 256,
        *,
        key: PRNGKeyArray,
    ):
        k_vae, k_rssm = jr.split(key)
        self.vae = ConvVAE(z_size, key=k_vae)
        self.rssm = RSSM(z_size, action_size, hidden_size, latent, stoch, classes, units, key=k_rssm)

    @property
    def z_size(self) -> int:
        """Z, the VAE latent the RSSM observes."""
        return self.vae.z_size

    @property
    def action_size(self) -> int:
        """A."""
        return self.rssm.action_size

    @property
    def hidden_size(self) -> int:
        """H, the RSSM's deterministic state (the controller's second input)."""
        return self.rssm.hidden_size


def pixel_rssm_sequence_loss(
    model: PixelRSSM,
    frames: Float[Array, "L1 64 64 3"],
    actions: Float[Array, "L A"],
    rewards: Float[Array, " L"],
    dones: Float[Array, " L"],
    key: PRNGKeyArray,
    free_nats: float,
    kl_tolerance: float,
) -> dict[str, Array]:
    """Per-step loss terms of one window of L transitions, end to end from the frames.

    Every frame is encoded, (mu_t, logvar_t) = ``model.vae.encode(x_t)``, and z_t = mu_t + exp(logvar_t / 2) eps
    (reparameterised: Kingma & Welling 2014, so every term below sends gradients into the conv encoder).

    Args:
        model: the ``PixelRSSM``.
        frames: float32 (L + 1, 64, 64, 3) in [0, 1] (``models.vae.to_float``).
        actions: float32 (L, A); a_t is taken at frame t.
        rewards: float32 (L,) the reward of a_t.
        dones: float32 (L,) 1 where the episode terminated after a_t.
        key: PRNG key (the latent noise and the RSSM's posterior samples).
        free_nats: the RSSM's free bits (``losses.kl_balance``; ``RNNConfig.free_nats``).
        kl_tolerance: the VAE's free bits per latent dimension (``losses.vae_loss``; ``VAEConfig.kl_tolerance``).

    Returns:
        dict of float32 arrays:

        * ``recon`` (L + 1,): sum of squared errors of decode(z_t) against x_t over 64x64x3, and ``vae_kl``
          (L + 1,): max(KL(q(z_t | x_t) || N(0, I)), kl_tolerance * Z) in nats; ``losses.vae_loss``'s
          ``recon`` and ``kl`` (Ha & Schmidhuber 2018, Appendix A.1);
        * ``obs``, ``kl_dyn``, ``kl_rep``, ``kl`` (L + 1,) and ``reward``, ``cont`` (L,): the terms of
          ``losses.rssm_sequence_loss`` on z (Hafner et al. 2023, Eqs. 3-5);
        * ``image`` (L + 1,): sum of squared errors over 64x64x3 of decode(obs_mu_t) against x_t, where obs_mu_t
          is the RSSM's observation-decoder mean from (h_t, s_t) (``RSSM.heads``): the Dreamer image decoder
          p(x_t | h_t, s_t) as a unit-variance Gaussian, up to a factor 1/2 and a constant (Hafner et al.
          2020, Sec. 4, the reconstruction objective's image term; 2023, Sec. 3, the prediction loss).
    """
    k_z, k_seq = jr.split(key)
    mu, logvar = model.vae.encode(frames)
    z = mu + jnp.exp(0.5 * logvar) * jr.normal(k_z, mu.shape)
    terms, obs_mu = rssm_sequence_terms(model.rssm, z, actions, rewards, dones, k_seq, free_nats)
    n = frames.shape[0]
    decoded = model.vae.decode(jnp.concatenate([z, obs_mu]))  # one decoder pass for both, (2 (L + 1), 64, 64, 3)
    vae_terms = jax.vmap(vae_loss, in_axes=(0, 0, 0, 0, None))(decoded[:n], frames, mu, logvar, kl_tolerance)
    image = jnp.sum((decoded[n:] - frames) ** 2, axis=(1, 2, 3))
    return {"recon": vae_terms["recon"], "vae_kl": vae_terms["kl"], **terms, "image": image}
