"""The gossip itself: pairing the pool (``pair_partners``), the shared starts and the decoded dreams, and the
consistency loss of how each model's dream reads to its partner (``consistency_loss``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from worldmodels.config import GossipConfig
from worldmodels.gossip.pool import _stop, over_pool
from worldmodels.models.joint import JointWorldModel, open_loop
from worldmodels.models.vae import to_float


def pair_partners(key: PRNGKeyArray, num_models: int) -> tuple[Int[Array, " M"], Float[Array, " M"]]:
    """Random pairing of a pool: a permutation pi, then pi[0] <-> pi[1], pi[2] <-> pi[3], ...

    Jittable (``num_models`` is static). For M = 2 the pairing is always (0, 1); for an odd M the last model
    of the permutation is its own partner and inactive this step; M = 1 is never active.

    Returns:
        (partner int32 (M,) with partner[partner[m]] == m, active float32 (M,) 1 where m has a partner).
    """
    perm = jr.permutation(key, num_models)
    paired = num_models - num_models % 2
    pos = jnp.arange(num_models)
    mate = jnp.where(pos < paired, pos ^ 1, pos)
    partner = jnp.zeros(num_models, jnp.int32).at[perm].set(perm[mate].astype(jnp.int32))
    active = jnp.zeros(num_models, jnp.float32).at[perm].set((pos < paired).astype(jnp.float32))
    return partner, active


def gossip_inputs(batch: dict[str, Array], cfg: GossipConfig) -> tuple[Array, Array]:
    """The shared starts of a gossip step, from the first ``gossip_batch`` windows of a batch.

    Returns:
        (context frames float32 (G, k, 64, 64, 3) in [0, 1], actions float32 (G, k - 1 + D, 3)), with
        k = ``gossip_context``, D = ``gossip_dream_steps``.
    """
    g, k, d = cfg.gossip_batch, cfg.gossip_context, cfg.gossip_dream_steps
    return to_float(batch["frames"][:g, :k]), batch["actions"][:g, : k - 1 + d]


def dream_images(
    model: JointWorldModel,
    context: Float[Array, "G k 64 64 3"],
    actions: Float[Array, "G T 3"],
    keys: PRNGKeyArray | None,
    temperature: float | Array = 1.0,
) -> Float[Array, "G 64 64 3"]:
    """Each start's dream, decoded: encode the k context frames (posterior means), read them, dream on the
    actions (``joint.open_loop``), decode the final latent (the latent D = T - k + 1 steps after the last
    real frame).

    Args:
        model: one world model.
        context: float32 (G, k, 64, 64, 3) real frames in [0, 1].
        actions: float32 (G, T, 3), T >= k.
        keys: ``None`` for most-likely dreams, else (G, T) keys for sampled ones.
        temperature: tau of sampled dreams.

    Returns:
        float32 (G, 64, 64, 3) dream images in [0, 1].
    """
    mu, _ = model.encode(context)
    if keys is None:
        z = jax.vmap(lambda zc, a: open_loop(model, zc, a).z_next[-1])(mu, actions)
    else:
        z = jax.vmap(lambda zc, a, k: open_loop(model, zc, a, k, temperature).z_next[-1])(mu, actions, keys)
    return model.decode(z)


def _distance(a: Array, b: Array, a_logvar: Array | None, b_logvar: Array | None, kind: str) -> Array:
    """Distance per start between readings (G, ...): summed over every axis but the first."""
    axes = tuple(range(1, a.ndim))
    if kind == "l2":
        return jnp.sum((a - b) ** 2, axis=axes)
    if kind == "l1":
        return jnp.sum(jnp.abs(a - b), axis=axes)
    # KL(N(a, exp(a_logvar)) || N(b, exp(b_logvar))) of diagonal Gaussians, in nats.
    kl = b_logvar - a_logvar + (jnp.exp(a_logvar) + (a - b) ** 2) / jnp.exp(b_logvar) - 1.0
    return 0.5 * jnp.sum(kl, axis=axes)


def consistency_loss(
    pool: JointWorldModel,
    context: Float[Array, "G k 64 64 3"],
    actions: Float[Array, "G T 3"],
    partner: Int[Array, " M"],
    active: Float[Array, " M"],
    key: PRNGKeyArray,
    cfg: GossipConfig,
) -> Float[Array, " M"]:
    """Each model's consistency loss C_m: how its dream reads to its partner (issue 5, protocol step 2).

    Notation: x_m = dec_m(z_m) is model m's dream image (``dream_images``, the same starts and actions
    for every model; sampled dreams share their noise keys), p = partner[m], E_r(x) = (mu_r(x), logvar_r(x))
    is model r's encoder (its *reading* of an image), R_r(x) = dec_r(mu_r(x)) its reading rendered back
    to pixels, and d the distance ``cfg.gossip_distance`` (``l2``: sum of squared differences; ``l1``:
    sum of absolute differences; ``kl``: KL(first || second) of the two diagonal Gaussians, in nats),
    averaged over the G starts. ``cfg.gossip_compare`` picks the formula:

    * ``pixel`` (default): C_m = d(R_p(x_m), R_m(x_m)) -- the partner's reading of my dream against my own
      reading of it, both in pixels. Two models' latent spaces are unrelated coordinate systems (different
      initialisations), so a reading can only be compared with another in a space both share: pixels.
      Comparing against my own *reading* R_m(x_m) rather than the raw dream x_m makes C = 0 for identical
      models (an autoencoder is not idempotent, so d(R_p(x_m), x_m) would not vanish) and cancels the
      reconstruction error both autoencoders share; what is left is where the two readers disagree, which
      is where my dream left the frames both learned from (disagreement of an ensemble as a measure of
      novelty, Pathak et al. 2019).
    * ``latent``: C_m = d(E_m(R_p(x_m)), E_m(x_m)) -- the same two readings, compared in my own latent
      space (my encoder as a perceptual metric; with ``kl`` the posteriors' variances count).
    * ``dreams``: C_m = d(E_p(x_m), E_p(x_p)) -- the partner reads my dream and its own dream of the same
      start and actions, compared in the partner's latent space: do we dream the same future.

    Stop-gradients (``cfg.gossip_stop_gradient``):

    * ``readers`` (default): C_m's gradient reaches only model m's dream -- the encoder that read the
      start frames, the dynamics and the decoder that rendered x_m. Every reader (the partner's encoder
      and decoder, and model m's own parameters where they *read* x_m) is a fixed judge: gradient flows
      through a reader to its input image, never into its parameters. Why: a reader that can learn can
      make C small by reading worse (an encoder that maps every image to one point agrees with
      anything), which is collapse, not agreement; the dreamer alone should move its dreams to where
      they are understood. It also keeps each model's gradient exactly that of its own total, so the
      pool's update is M separate updates coupled only through the data.
    * ``partner``: model m's own reading path learns as well (its autoencoder moves its reading of its
      dreams towards the partner's -- distillation of readers); the partner is still fixed.
    * ``none``: C_m's gradient also reaches the partner's reader (and, for ``dreams``, the partner's dream).

    Args:
        pool: stacked models (leading axis M).
        context: float32 (G, k, 64, 64, 3) shared real start frames in [0, 1].
        actions: float32 (G, k - 1 + D, 3) shared actions.
        partner: int32 (M,) from ``pair_partners``.
        active: float32 (M,) 0 for a model without a partner this step (its C is 0).
        key: PRNG key of sampled dreams (unused for ``mean`` dreams).
        cfg: ``gossip_compare``, ``gossip_distance``, ``gossip_stop_gradient``, ``gossip_dream``,
            ``gossip_temperature``.

    Returns:
        float32 (M,) C_m >= 0 (exactly 0 for two identical models).
    """
    keys = jr.split(key, actions.shape[:2]) if cfg.gossip_dream == "sample" else None
    images = over_pool(lambda m: dream_images(m, context, actions, keys, cfg.gossip_temperature), cfg.vmap_pool, pool)
    stop_own = cfg.gossip_stop_gradient == "readers"
    stop_partner = cfg.gossip_stop_gradient != "none"
    seen = jnp.take(images, partner, axis=0)  # seen[r]: the dream that reader r reads, its partner's
    kind = cfg.gossip_distance

    if cfg.gossip_compare == "dreams":

        def readings(model, own, other):
            mu, logvar = _stop(model, stop_partner).encode(jnp.concatenate([other, own]))
            g = own.shape[0]
            return (mu[:g], logvar[:g]), (mu[g:], logvar[g:])

        (cross_mu, cross_lv), (own_mu, own_lv) = over_pool(readings, cfg.vmap_pool, pool, images, seen)
        # C_m lives in p's space: p's reading of m's dream against p's reading of its own dream, a constant
        # for m unless gradients may reach the partner.
        target_mu, target_lv = _stop((own_mu[partner], own_lv[partner]), stop_partner)
        dist = jax.vmap(_distance, in_axes=(0, 0, 0, 0, None))(
            cross_mu[partner], target_mu, cross_lv[partner], target_lv, kind
        )
    else:

        def render(model, own, other):
            own_reader, cross_reader = _stop(model, stop_own), _stop(model, stop_partner)
            if stop_own == stop_partner:  # one reader: read both images in one pass (half the code to compile)
                mu, logvar = own_reader.encode(jnp.concatenate([own, other]))
                rendered = own_reader.decode(mu)
                g = own.shape[0]
                return (mu[:g], logvar[:g]), rendered[:g], rendered[g:]
            own_read = own_reader.encode(own)
            return own_read, own_reader.decode(own_read[0]), cross_reader.decode(cross_reader.encode(other)[0])

        own_read, own_render, cross_render = over_pool(render, cfg.vmap_pool, pool, images, seen)
        partner_render = cross_render[partner]  # R_p(x_m): the partner's reading of my dream, in pixels
        if cfg.gossip_compare == "pixel":
            dist = jax.vmap(_distance, in_axes=(0, 0, None, None, None))(partner_render, own_render, None, None, kind)
        else:
            back = over_pool(lambda m, x: _stop(m, stop_own).encode(x), cfg.vmap_pool, pool, partner_render)
            dist = jax.vmap(_distance, in_axes=(0, 0, 0, 0, None))(back[0], own_read[0], back[1], own_read[1], kind)
    return active * jnp.mean(dist, axis=1)
