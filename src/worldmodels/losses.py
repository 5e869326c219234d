"""Named loss dicts for V and M. Each function acts on one example; the trainers vmap and average.

DreamerV3 style (Hafner et al. 2023, Sec. 3 and its ``loss_scales`` table): every loss function returns a
dict of named float32 loss terms, and the total is ``weighted_total(terms, scales)`` with the scales taken
from the config (``VAEConfig.loss_scales``, ``RNNConfig.loss_scales``, ``GossipConfig.loss_scales``).
``weighted_total`` refuses a term without a scale and a scale without a term, so a new loss cannot enter
or leave the total silently. Diagnostics that are not losses (the KL before free bits) are logged next
to the terms but never summed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from worldmodels.models import twohot
from worldmodels.models.mdnrnn import MDNOutput
from worldmodels.models.rssm import RSSM, Stats, observe

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
    the latents informative (``kl_diag_normal`` is the KL before the floor, a diagnostic).

    Returns:
        dict of loss terms ``recon``, ``kl`` (float32 scalars); the paper's total is their sum
        (``VAEConfig.loss_scales``).
    """
    recon_loss = jnp.sum((recon - x) ** 2)
    kl = jnp.maximum(kl_diag_normal(mu, logvar), kl_tolerance * mu.shape[-1])
    return {"recon": recon_loss, "kl": kl}


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
    reward_overpredict_weight: float,
    terminal_weight: float = 1.0,
) -> dict[str, Array]:
    """MDN-RNN loss terms of one step: mixture NLL of z_{t+1}, asymmetric reward MSE, done BCE.

    A terminal step (done = 1) counts ``terminal_weight`` times in the reward and done terms: terminations are
    rare, one per episode, and on LunarLander they carry the +-100 rewards (a class weight, as in a weighted
    cross-entropy for imbalanced labels, King & Zeng 2001).

    Returns:
        dict of loss terms ``mdn_nll``, ``reward``, ``done`` (float32 scalars), weighted by
        ``RNNConfig.loss_scales``.
    """
    nll = mdn_nll(out, z_next)
    w = 1.0 + (terminal_weight - 1.0) * done
    r = w * asymmetric_mse(out.reward, reward, reward_overpredict_weight)
    d = w * binary_cross_entropy(out.done_logit, done)
    return {"mdn_nll": nll, "reward": r, "done": d}


def weighted_total(terms: Mapping[str, Array], scales: Mapping[str, float]) -> Array:
    """sum_k scales[k] * terms[k] over the named loss terms (DreamerV3's scaled sum of losses).

    Raises:
        ValueError: when a term has no scale or a scale names no term (the message lists both sets).
    """
    if set(terms) != set(scales):
        raise ValueError(
            f"loss terms {sorted(terms)} and loss scales {sorted(scales)} differ: "
            f"no scale for {sorted(set(terms) - set(scales))}, no term for {sorted(set(scales) - set(terms))}"
        )
    return sum(scales[k] * terms[k] for k in terms)


def gaussian_nll(x: Float[Array, " Z"], mu: Float[Array, " Z"], log_sigma: Float[Array, " Z"]) -> Float[Array, ""]:
    """-log N(x; mu, diag(exp(log_sigma)^2)) in nats, summed over the Z dimensions (an ELBO's reconstruction term)."""
    return jnp.sum(0.5 * ((x - mu) / jnp.exp(log_sigma)) ** 2 + log_sigma + 0.5 * LOG_2PI)


def kl_balance(model: RSSM, post: Stats, prior: Stats, free_nats: float) -> dict[str, Array]:
    """DreamerV3's KL balancing with free bits (Hafner et al. 2023, Sec. 3, Eqs. 3 and 5).

    L_dyn = max(free, KL(sg(q) || p)) trains the prior towards the posterior; L_rep = max(free, KL(q || sg(p)))
    trains the posterior (the representation) towards the prior. sg is ``jax.lax.stop_gradient``, so L_dyn
    sends gradients only into the prior's parameters and L_rep only into the posterior's. Their scales
    (DreamerV3: 1.0 and 0.1) are ``RNNConfig.loss_scales``. Below ``free_nats`` a term is constant (no gradient).

    Returns:
        dict with ``kl_dyn``, ``kl_rep`` (loss terms) and ``kl`` (the KL itself, a diagnostic), float32 scalars.
    """
    return balanced_kl(model.kl, post, prior, free_nats)


def balanced_kl(kl: Callable[[Any, Any], Array], post: Any, prior: Any, free_nats: float) -> dict[str, Array]:
    """``kl_balance`` for any distributions: ``kl(q, p)`` gives KL(q || p) of the pytrees ``post`` and ``prior``.

    Returns:
        dict with ``kl_dyn`` = max(free, KL(sg q || p)), ``kl_rep`` = max(free, KL(q || sg p)) and ``kl``, the KL
        itself, float32 scalars (DreamerV3 Eqs. 3 and 5).
    """
    sg = jax.lax.stop_gradient
    return {
        "kl_dyn": jnp.maximum(free_nats, kl(jax.tree.map(sg, post), prior)),
        "kl_rep": jnp.maximum(free_nats, kl(post, jax.tree.map(sg, prior))),
        "kl": kl(post, prior),
    }


def rssm_sequence_loss(
    model: RSSM,
    z: Float[Array, "L1 Z"],
    actions: Float[Array, "L A"],
    rewards: Float[Array, " L"],
    dones: Float[Array, " L"],
    key: Array,
    free_nats: float,
) -> dict[str, Array]:
    """Per-step RSSM loss terms of one window of L transitions (L + 1 frames; Hafner et al. 2023, Eqs. 3-5).

    The window is filtered with ``rssm.observe``; on every model state (h_t, s_t), s_t sampled from the
    posterior:

    * ``obs`` (L + 1,): Gaussian NLL of the VAE latent z_t under the observation decoder, nats per frame;
    * ``kl_dyn``, ``kl_rep``, ``kl`` (L + 1,): ``kl_balance`` of q(s_t | h_t, z_t) against p(s_t | h_t);
    * ``reward`` (L,): symlog two-hot cross-entropy of r_t (the reward of a_t) from the state after it,
      (h_{t+1}, s_{t+1}) (``twohot.loss``);
    * ``cont`` (L,): BCE of the continue flag 1 - done_t from the same state.

    Returns:
        dict of float32 arrays; the trainer masks and averages them (``train.rssm_loss``).
    """
    return rssm_sequence_terms(model, z, actions, rewards, dones, key, free_nats)[0]


def rssm_sequence_terms(
    model: RSSM,
    z: Float[Array, "L1 Z"],
    actions: Float[Array, "L A"],
    rewards: Float[Array, " L"],
    dones: Float[Array, " L"],
    key: Array,
    free_nats: float,
) -> tuple[dict[str, Array], Float[Array, "L1 Z"]]:
    """``rssm_sequence_loss``'s terms and the observation decoder's mean obs_mu_t (L + 1, Z) of every model
    state (h_t, s_t), which the pixel path decodes into a frame (``models.pixel_rssm``)."""
    actions = jnp.concatenate([actions, jnp.zeros_like(actions[:1])])
    seq = observe(model, z, actions, key)
    obs_mu, obs_log_sigma, reward_logits, cont_logit = jax.vmap(model.heads)(seq.h, seq.s)
    kls = jax.vmap(lambda post, prior: kl_balance(model, post, prior, free_nats))(seq.post, seq.prior)
    terms = {
        "obs": jax.vmap(gaussian_nll)(z, obs_mu, obs_log_sigma),
        **kls,
        "reward": jax.vmap(twohot.loss)(reward_logits[1:], rewards),
        "cont": binary_cross_entropy(cont_logit[1:], 1.0 - dones),
    }
    return terms, obs_mu
