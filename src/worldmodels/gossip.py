"""Gossip: a pool of jointly trained world models that read each other's dreams (issue 5).

One training step of the pool (one jitted call, ``make_pool_step``):

1. **Ordinary losses.** Every model takes its own losses on the same real batch of sequences
   (``model_loss``): L2 reconstruction + KL with free bits (Ha & Schmidhuber 2018, Appendix A.1) on every
   frame, and the dynamics loss on the latents it encodes (mixture NLL of z_{t+1}, asymmetric reward MSE,
   done BCE; Appendix A.2), trained jointly: the dynamics' gradient reaches the encoder
   (``dynamics_to_encoder``).
2. **Gossip.** The pool is split into pairs (``pair_partners``). From shared real starts (the first
   ``gossip_batch`` windows of the batch: ``gossip_context`` real frames, then the windows' real actions)
   each model dreams ``gossip_dream_steps`` steps in its own latent space and decodes its final latent
   into an image, its dream x_i. The partner reads that image with its own encoder (cross-encoding).
   ``consistency_loss`` turns the readings into each model's consistency loss C_i.
3. Each model's total is ``ordinary_i + gossip_weight * C_i``; the pool's loss is the sum of the totals,
   and one vmapped optax update (one Adam state and one gradient clip per model) updates every model.

The pool is one stacked pytree: every array of a ``JointWorldModel`` has a leading model axis M, made by
vmapping the constructor over M keys (``init_pool``); losses, dreams and readings are
``eqx.filter_vmap``-ed over that axis (``over_pool``; ``vmap_pool = False`` unrolls the same per-model code
as a loop, faster on XLA:CPU), and the partner's dream is gathered with ``jnp.take`` inside the jitted step.
``gossip_weight = 0`` is the baseline: independent models, the same data order, the same updates (the
consistency is still measured, under ``stop_gradient``, for the logs).

Pairing (``pair_partners``): a random permutation pi of the M models each step, then pi[0] <-> pi[1],
pi[2] <-> pi[3], ... For M = 2 that is always the pair (0, 1). For an odd M the last model of the
permutation has no partner: its partner is itself and its consistency weight is 0 for that step, so
every model sits out 1 / M of the steps on average. M = 1 never gossips.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray
from tqdm.auto import tqdm

from worldmodels import checkpoint
from worldmodels.config import GossipConfig, parse_recipe, record_config
from worldmodels.data import Episode, dataset_dir, load_episodes
from worldmodels.losses import rnn_step_loss, vae_loss
from worldmodels.models.joint import FLAVOURS, JointWorldModel, joint_hparams, open_loop, teacher_forced
from worldmodels.models.vae import to_float

LOSS_KEYS = ("total", "recon", "kl", "kl_raw", "mdn_nll", "reward", "done", "dynamics", "consistency", "grad_norm")
"""Per-model metrics of a pool step, in the order they are plotted."""
COMPARES = ("pixel", "latent", "dreams")
DISTANCES = ("l2", "l1", "kl")
STOP_GRADIENTS = ("readers", "partner", "none")
DREAMS = ("mean", "sample")


def check_config(cfg: GossipConfig) -> None:
    """Raise ``ValueError`` naming the field for a config the trainer cannot run."""
    problems = []
    if cfg.flavour not in FLAVOURS:
        problems.append(f"flavour={cfg.flavour!r} (known: {', '.join(FLAVOURS)})")
    for name, value, known in (
        ("gossip_compare", cfg.gossip_compare, COMPARES),
        ("gossip_distance", cfg.gossip_distance, DISTANCES),
        ("gossip_stop_gradient", cfg.gossip_stop_gradient, STOP_GRADIENTS),
        ("gossip_dream", cfg.gossip_dream, DREAMS),
    ):
        if value not in known:
            problems.append(f"{name}={value!r} (known: {', '.join(known)})")
    if cfg.gossip_distance == "kl" and cfg.gossip_compare == "pixel":
        problems.append("gossip_distance='kl' needs gossip_compare 'latent' or 'dreams' (pixels have no variance)")
    if cfg.models < 1:
        problems.append(f"models={cfg.models} (need at least 1)")
    if cfg.gossip_context < 1 or cfg.gossip_dream_steps < 1:
        problems.append("gossip_context and gossip_dream_steps must be >= 1")
    if cfg.gossip_context + cfg.gossip_dream_steps - 1 > cfg.seq_len:
        problems.append(
            f"gossip_context + gossip_dream_steps - 1 = {cfg.gossip_context + cfg.gossip_dream_steps - 1} "
            f"exceeds seq_len={cfg.seq_len}"
        )
    if not 1 <= cfg.gossip_batch <= cfg.batch_size:
        problems.append(f"gossip_batch={cfg.gossip_batch} must be in [1, batch_size={cfg.batch_size}]")
    if not 0 <= cfg.export_model < cfg.models:
        problems.append(f"export_model={cfg.export_model} is not a model of a pool of {cfg.models}")
    if problems:
        raise ValueError("gossip config: " + "; ".join(problems))


# Data


@dataclass(frozen=True)
class FrameSequences:
    """Real episodes as concatenated arrays with per-episode offsets (NumPy).

    Attributes:
        frames: uint8 (sum_e (T_e + 1), 64, 64, 3) every observation.
        actions: float32 (sum_e T_e, 3).
        rewards: float32 (sum_e T_e,).
        dones: float32 (sum_e T_e,) 1 where the episode terminated after the action.
        obs_start, act_start, lengths: int64 (E,) offsets into frames and actions, and T_e.
        episode_p: float64 (E,) probability of drawing each episode into a batch (0 when held out).
        heldout: bool (E,) episodes kept out of training (drift, disagreement, videos).
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    obs_start: np.ndarray
    act_start: np.ndarray
    lengths: np.ndarray
    episode_p: np.ndarray
    heldout: np.ndarray

    @classmethod
    def of(cls, groups: list[tuple[list[Episode], float]], holdout: float) -> FrameSequences:
        """Build from ``[(episodes, weight), ...]``; each group holds out its last episodes.

        Group g holds out ``min(n - 1, max(1, round(holdout * n)))`` of its n episodes when ``holdout`` > 0
        and n >= 2; its training episodes share probability weight_g / sum(weights) of a batch.

        Raises:
            ValueError: if a group has no training episode.
        """
        episodes, probs, held = [], [], []
        total = float(sum(w for _, w in groups))
        for eps, weight in groups:
            n_hold = min(len(eps) - 1, max(1, round(holdout * len(eps)))) if holdout > 0 and len(eps) >= 2 else 0
            n_train = len(eps) - n_hold
            if n_train < 1:
                raise ValueError("every dataset of a gossip recipe needs at least one training episode")
            episodes += eps
            probs += [weight / total / n_train] * n_train + [0.0] * n_hold
            held += [False] * n_train + [True] * n_hold
        lengths = np.array([ep.length for ep in episodes], np.int64)
        return cls(
            frames=np.concatenate([ep.observations for ep in episodes]),
            actions=np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
            rewards=np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
            dones=np.concatenate([ep.terminations for ep in episodes]).astype(np.float32),
            obs_start=np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64),
            act_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
            lengths=lengths,
            episode_p=np.array(probs) / np.sum(probs),
            heldout=np.array(held),
        )

    def episode(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 (T_e + 1, 64, 64, 3) and actions float32 (T_e, 3) of episode ``e``."""
        o, a, n = self.obs_start[e], self.act_start[e], self.lengths[e]
        return self.frames[o : o + n + 1], self.actions[a : a + n]


def load_sequences(run_dir: Path, cfg: GossipConfig) -> FrameSequences:
    """The episodes of the recipe ``cfg.dataset`` under ``RUN_DIR/data/`` (``data.load_episodes``).

    Raises:
        stages.MissingInput: naming the dataset path and the command that collects it.
        DatasetError: for an unreadable or empty dataset.
    """
    from worldmodels.stages import MissingInput

    groups = []
    for name, weight in parse_recipe(cfg.dataset):
        path = dataset_dir(run_dir, name)
        if not (path / "metadata.json").is_file():
            raise MissingInput(
                f"missing {path}: run `uv run collect_data.py --run-dir {run_dir} --policy {name}` first"
            )
        groups.append((load_episodes(path), weight))
    return FrameSequences.of(groups, cfg.holdout)


def sequence_batch(data: FrameSequences, step: int, cfg: GossipConfig) -> dict[str, np.ndarray]:
    """A batch of training windows of frames, deterministic in (cfg.seed, step).

    The windowing of ``train.sequence_batch``: episodes drawn with ``data.episode_p``; each window is L =
    ``cfg.seq_len`` steps from a uniform offset in [0, T_e - L] (0 when the episode is not longer than L,
    the tail then repeats the last frame and action and is masked).

    Returns:
        dict of NumPy arrays: ``frames`` uint8 (B, L + 1, 64, 64, 3); ``frame_mask`` float32 (B, L + 1);
        ``actions`` float32 (B, L, 3); ``rewards``, ``dones``, ``mask`` float32 (B, L).
    """
    rng = np.random.default_rng([cfg.seed, step])
    L, B = cfg.seq_len, cfg.batch_size
    eps = rng.choice(len(data.lengths), B, p=data.episode_p)
    lengths = data.lengths[eps]
    offsets = (rng.random(B) * np.maximum(lengths - L + 1, 1)).astype(np.int64)
    left = (lengths - offsets)[:, None]
    t = np.arange(L)
    act_idx = data.act_start[eps, None] + offsets[:, None] + np.minimum(t[None, :], left - 1)
    obs_t = np.minimum(np.arange(L + 1)[None, :], left)
    return {
        "frames": data.frames[data.obs_start[eps, None] + offsets[:, None] + obs_t],
        "frame_mask": (np.arange(L + 1)[None, :] <= left).astype(np.float32),
        "actions": data.actions[act_idx],
        "rewards": data.rewards[act_idx],
        "dones": data.dones[act_idx],
        "mask": (t[None, :] < left).astype(np.float32),
    }


# The pool


def pool_hparams(cfg: GossipConfig) -> dict[str, Any]:
    """What rebuilds the pool: the joint model's sizes and the pool size M."""
    return {**joint_hparams(cfg.flavour, cfg.z_size, cfg.hidden_size, cfg.num_mixtures), "models": cfg.models}


def init_pool(cfg: GossipConfig, key: PRNGKeyArray | None = None) -> JointWorldModel:
    """M fresh models stacked into one pytree: model m is initialised from ``fold_in(key, m)``.

    The constructor is vmapped over the M keys (``eqx.filter_vmap``), so every array has a leading axis M.
    ``key`` defaults to ``jr.key(cfg.seed)``.
    """
    key = jr.key(cfg.seed) if key is None else key
    hp = joint_hparams(cfg.flavour, cfg.z_size, cfg.hidden_size, cfg.num_mixtures)
    return _init_stacked(key, cfg.models, tuple(hp.items()))


@functools.partial(jax.jit, static_argnums=(1, 2), compiler_options={"xla_backend_optimization_level": 0})
def _init_stacked(key: PRNGKeyArray, num_models: int, hparams: tuple) -> JointWorldModel:
    # One jitted call (eagerly, the vmapped constructor dispatches hundreds of small ops), compiled without
    # XLA's backend optimisations: it runs once, and optimising its random-bit generators costs ~10 s on a CPU.
    keys = jax.vmap(lambda m: jr.fold_in(key, m))(jnp.arange(num_models))
    return eqx.filter_vmap(lambda k: JointWorldModel(**dict(hparams), key=k))(keys)


def model_at(pool: JointWorldModel, m: int) -> JointWorldModel:
    """Model ``m`` of a stacked pool (its arrays without the M axis); ``stack_models`` is the inverse."""
    return jax.tree.map(lambda x: x[m] if eqx.is_array(x) else x, pool)


def stack_models(models: list[JointWorldModel]) -> JointWorldModel:
    """The inverse of ``model_at``: stack same-shaped models into a pool."""
    arrays = [eqx.filter(m, eqx.is_array) for m in models]
    static = eqx.filter(models[0], eqx.is_array, inverse=True)
    return eqx.combine(jax.tree.map(lambda *xs: jnp.stack(xs), *arrays), static)


def over_pool(fn: Any, vmap: bool, *trees: Any) -> Any:
    """``fn`` applied to every model's slice of ``trees`` (each with a leading M axis), outputs stacked.

    ``vmap=True`` is ``eqx.filter_vmap(fn)(*trees)``; ``False`` unrolls a Python loop over the M slices
    (inside a jitted caller: one program with M copies of ``fn``), with the same values (``GossipConfig.vmap_pool``).
    """
    if vmap:
        return eqx.filter_vmap(fn)(*trees)
    size = jax.tree.leaves(eqx.filter(trees[0], eqx.is_array))[0].shape[0]
    outs = [fn(*(model_at(t, m) for t in trees)) for m in range(size)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def _stop(tree: Any, stop: bool) -> Any:
    """``tree`` with ``stop_gradient`` on every array when ``stop`` (a reader whose parameters do not learn)."""
    if not stop:
        return tree
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)


# Ordinary losses


def model_loss(
    model: JointWorldModel, batch: dict[str, Array], key: PRNGKeyArray, cfg: GossipConfig
) -> tuple[Array, dict[str, Array]]:
    """One model's ordinary losses on a batch of windows (one example = one window; masked means).

    * VAE, every valid frame: ``recon`` = sum of squared errors over 64x64x3, ``kl`` = max(KL, kl_tolerance * Z)
      (free bits), ``kl_raw`` (Ha & Schmidhuber 2018, Appendix A.1; ``losses.vae_loss``);
    * dynamics, every valid step, on z sampled from the posterior (z = mu + sigma eps, Kingma & Welling
      2014): ``mdn_nll`` of z_{t+1} in nats per dimension, asymmetric ``reward`` MSE, ``done`` BCE
      (Appendix A.2; ``losses.rnn_step_loss``); ``dynamics`` is their weighted sum.

    total = recon + kl + dynamics_weight * dynamics. With ``cfg.dynamics_to_encoder`` the dynamics loss
    trains the encoder too (joint training); otherwise its input latents are constants.

    Args:
        model: one world model (no pool axis).
        batch: ``sequence_batch`` arrays (frames uint8 (B, L + 1, 64, 64, 3), ...).
        key: PRNG key of the posterior samples.
        cfg: loss weights.

    Returns:
        (total, dict of float32 scalars: ``total``, ``recon``, ``kl``, ``kl_raw``, ``mdn_nll``, ``reward``,
        ``done``, ``dynamics``).
    """
    x = to_float(batch["frames"])
    mu, logvar = model.encode(x)
    z = mu + jnp.exp(0.5 * logvar) * jr.normal(key, mu.shape)
    recon = model.decode(z)
    per_frame = jax.vmap(jax.vmap(vae_loss, in_axes=(0, 0, 0, 0, None)), in_axes=(0, 0, 0, 0, None))(
        recon, x, mu, logvar, cfg.kl_tolerance
    )
    fmask = batch["frame_mask"]
    vae_metrics = {k: jnp.sum(v * fmask) / jnp.maximum(fmask.sum(), 1.0) for k, v in per_frame.items()}
    z_dyn = z if cfg.dynamics_to_encoder else jax.lax.stop_gradient(z)
    step_loss = functools.partial(
        rnn_step_loss,
        reward_weight=cfg.reward_weight,
        reward_overpredict_weight=cfg.reward_overpredict_weight,
        done_weight=cfg.done_weight,
    )

    def one(z, actions, rewards, dones):
        out = teacher_forced(model, z[:-1], actions)
        return jax.vmap(step_loss)(out, z[1:], rewards, dones)

    per_step = jax.vmap(one)(z_dyn, batch["actions"], batch["rewards"], batch["dones"])
    mask = batch["mask"]
    dyn = {k: jnp.sum(v * mask) / jnp.maximum(mask.sum(), 1.0) for k, v in per_step.items()}
    total = vae_metrics["total"] + cfg.dynamics_weight * dyn["total"]
    metrics = {
        "total": total,
        "recon": vae_metrics["recon"],
        "kl": vae_metrics["kl"],
        "kl_raw": vae_metrics["kl_raw"],
        "mdn_nll": dyn["mdn_nll"],
        "reward": dyn["reward"],
        "done": dyn["done"],
        "dynamics": dyn["total"],
    }
    return total, metrics


# Gossip


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


def pool_loss(
    pool: JointWorldModel, batch: dict[str, Array], key: PRNGKeyArray, cfg: GossipConfig
) -> tuple[Array, dict[str, Array]]:
    """Sum over the pool of ``ordinary_m + gossip_weight * C_m``, with per-model metrics.

    ``key`` splits into (models, pairing, dream); model m's ordinary loss uses ``jr.split(models, M)[m]``
    (``model_keys``), so a model trained alone with that key takes the same step. With ``gossip_weight``
    = 0 the consistency is computed under ``stop_gradient`` (logged, not trained).

    Returns:
        (scalar pool loss, dict of float32 (M,) arrays: the ``model_loss`` metrics with ``total`` including
        the gossip term, ``consistency`` C_m, and ``active``).
    """
    k_models, k_pair, k_dream = jr.split(key, 3)
    m = cfg.models
    _, metrics = over_pool(
        lambda model, k: model_loss(model, batch, k, cfg), cfg.vmap_pool, pool, jr.split(k_models, m)
    )
    partner, active = pair_partners(k_pair, m)
    context, actions = gossip_inputs(batch, cfg)
    gossip_pool = pool if cfg.gossip_weight else _stop(pool, True)
    c = consistency_loss(gossip_pool, context, actions, partner, active, k_dream, cfg)
    metrics["total"] = metrics["total"] + cfg.gossip_weight * c
    metrics["consistency"] = c
    metrics["active"] = active
    return jnp.sum(metrics["total"]), metrics


def model_keys(key: PRNGKeyArray, num_models: int) -> PRNGKeyArray:
    """The per-model keys of ``pool_loss``'s ordinary losses for step key ``key``: (M,) keys."""
    return jr.split(jr.split(key, 3)[0], num_models)


def make_optimizer(cfg: GossipConfig) -> optax.GradientTransformation:
    """Global-norm clip then Adam, applied to one model (the pool vmaps it)."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(cfg.learning_rate))


def init_opt_state(pool: JointWorldModel, optimizer: optax.GradientTransformation) -> Any:
    """One optimiser state per model, stacked (leading axis M)."""
    return eqx.filter_vmap(optimizer.init)(eqx.filter(pool, eqx.is_array))


def pool_update(
    pool: JointWorldModel,
    opt_state: Any,
    batch: dict[str, Array],
    key: PRNGKeyArray,
    cfg: GossipConfig,
    optimizer: optax.GradientTransformation,
) -> tuple[JointWorldModel, Any, dict[str, Array]]:
    """One update of the whole pool (pure; ``make_pool_step`` jits it).

    Gradients of ``pool_loss`` (pairs drawn and gathered inside), then one vmapped optax update: each model
    is clipped and Adam-updated with its own state, exactly as if it were trained alone.

    Returns:
        (new pool, new optimiser states, metrics: ``pool_loss``'s (M,) arrays plus ``grad_norm`` (M,),
        before clipping).
    """
    (_, metrics), grads = eqx.filter_value_and_grad(pool_loss, has_aux=True)(pool, batch, key, cfg)
    params = eqx.filter(pool, eqx.is_array)
    updates, opt_state = eqx.filter_vmap(optimizer.update)(grads, opt_state, params)
    metrics["grad_norm"] = jax.vmap(optax.tree.norm)(grads)
    return eqx.apply_updates(pool, updates), opt_state, metrics


def model_update(
    model: JointWorldModel,
    opt_state: Any,
    batch: dict[str, Array],
    key: PRNGKeyArray,
    cfg: GossipConfig,
    optimizer: optax.GradientTransformation,
) -> tuple[JointWorldModel, Any, dict[str, Array]]:
    """One model's update alone on its ordinary losses: what ``pool_update`` does to each model when
    ``gossip_weight`` = 0 (used by the tests)."""
    (_, metrics), grads = eqx.filter_value_and_grad(model_loss, has_aux=True)(model, batch, key, cfg)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, metrics


def make_pool_step(cfg: GossipConfig):
    """``pool_update`` jitted for ``cfg``: ``step(pool, opt_state, batch, key) -> (pool, opt_state, metrics)``.

    One call updates the whole pool; new batches and keys reuse the compiled program.
    """
    return eqx.filter_jit(functools.partial(pool_update, cfg=cfg, optimizer=make_optimizer(cfg)))


# Training loop


def _per_model_record(step: int, window: dict[str, list[np.ndarray]], items_per_s: float) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    for k, rows in window.items():
        mean = np.mean(np.stack(rows), axis=0)
        record[k] = float(np.mean(mean))
        for m, v in enumerate(mean):
            record[f"{k}/{m}"] = float(v)
    record["items_per_s"] = items_per_s
    return record


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines written after ``step`` (an interrupted run resumes from the checkpoint at ``step``)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in lines))


def train_pool(out_dir: Path, data: FrameSequences, cfg: GossipConfig) -> JointWorldModel:
    """Train the pool for ``cfg.steps`` updates; resumes from ``out_dir/ckpt``.

    Writes ``ckpt/`` (kind ``gossip_pool``, the stacked pool and the M optimiser states) every
    ``checkpoint_every`` updates and ``metrics.jsonl`` every ``log_every`` updates: for every metric of
    ``LOSS_KEYS`` the pool mean ``name`` and each model's ``name/m``.

    Returns:
        The trained pool.

    Raises:
        TrainingDiverged: at a non-finite loss, naming the step and the last good checkpoint (left intact).
        CheckpointError: when a checkpoint there was made with different sizes.
    """
    from worldmodels.train import TrainingDiverged, append_jsonl

    check_config(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, metrics_path = out_dir / "ckpt", out_dir / "metrics.jsonl"
    pool = init_pool(cfg)
    opt_state = init_opt_state(pool, make_optimizer(cfg))
    hparams = pool_hparams(cfg)
    start = 0
    if checkpoint.latest_step(ckpt_dir) is not None:
        pool, opt_state, meta = checkpoint.load(
            ckpt_dir, pool, kind="gossip_pool", opt_like=opt_state, expected=hparams
        )
        start = int(meta["step"])
    _truncate_metrics(metrics_path, start)
    if start >= cfg.steps:
        return pool
    step_fn = make_pool_step(cfg)
    base_key = jr.key(cfg.seed)
    last_good = checkpoint.latest_step(ckpt_dir)

    def save(step: int) -> None:
        nonlocal last_good
        checkpoint.save(ckpt_dir, step, pool, kind="gossip_pool", hparams=hparams, opt_state=opt_state)
        last_good = step

    window: dict[str, list[np.ndarray]] = {}
    t_window = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train gossip pool", unit="step")
    step = start
    try:
        for step in bar:
            batch = sequence_batch(data, step, cfg)
            new_pool, new_opt, out = step_fn(pool, opt_state, batch, jr.fold_in(base_key, step))
            metrics = {k: np.asarray(v) for k, v in out.items() if k != "active"}
            if not all(np.all(np.isfinite(v)) for v in metrics.values()):
                where = f"{ckpt_dir}/{last_good}" if last_good is not None else "none (no checkpoint yet)"
                bad = {k: v.tolist() for k, v in metrics.items() if not np.all(np.isfinite(v))}
                raise TrainingDiverged(f"gossip pool: non-finite loss at step {step + 1} ({bad}); last good: {where}")
            pool, opt_state = new_pool, new_opt
            for k, v in metrics.items():
                window.setdefault(k, []).append(v)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                n = len(window["total"])
                rate = cfg.models * cfg.batch_size * cfg.seq_len * n / max(time.perf_counter() - t_window, 1e-9)
                record = _per_model_record(done, window, rate)
                append_jsonl(metrics_path, record)
                bar.set_postfix(loss=f"{record['total']:.2f}", gossip=f"{record['consistency']:.3g}")
                window, t_window = {}, time.perf_counter()
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
    except KeyboardInterrupt:
        if step > (last_good or 0):
            save(step)
        raise
    finally:
        bar.close()
    return pool


def load_pool(out_dir: Path, cfg: GossipConfig) -> tuple[JointWorldModel, int]:
    """The trained pool in ``out_dir/ckpt`` (a run's ``gossip/``) and its step.

    Raises:
        CheckpointError: if there is none, or it was trained with other sizes (both named).
    """
    pool, _, meta = checkpoint.load(
        Path(out_dir) / "ckpt", init_pool(cfg), kind="gossip_pool", expected=pool_hparams(cfg)
    )
    return pool, int(meta["step"])


# Drift, disagreement, videos


@eqx.filter_jit
def _open_loop_at(
    pool: JointWorldModel, context: Array, actions: Array, targets: Array, index: Array
) -> tuple[Array, Array, Array, Array]:
    """Per model: open-loop dreams of E episodes and their errors at the given steps.

    Args:
        pool: stacked models.
        context: uint8 (E, k, 64, 64, 3) the real context frames.
        actions: float32 (E, T, 3) the real actions (padded).
        targets: uint8 (E, N, 64, 64, 3) the real frames the dream is compared with.
        index: int32 (N,) the open-loop step whose next latent predicts each target.

    Returns:
        (latent error (M, E, N) mean squared over Z against the model's encoding of the real frame, pixel
        error (M, E, N) mean squared over 64x64x3, dream frames float32 (M, E, N, 64, 64, 3), the dream
        latents (M, E, N, Z)).
    """

    def one(model):
        mu_ctx, _ = model.encode(to_float(context))
        z_next = jax.vmap(lambda zc, a: open_loop(model, zc, a).z_next)(mu_ctx, actions)
        z_pred = z_next[:, index]
        mu_real, _ = model.encode(to_float(targets))
        frames = model.decode(z_pred)
        latent = jnp.mean((z_pred - mu_real) ** 2, axis=-1)
        pixel = jnp.mean((frames - to_float(targets)) ** 2, axis=(-3, -2, -1))
        return latent, pixel, frames, z_pred

    return eqx.filter_vmap(one)(pool)


def drift_metrics(pool: JointWorldModel, data: FrameSequences, cfg: GossipConfig) -> dict[str, Any]:
    """Open-loop drift on held-out real episodes and disagreement between the models' dreams.

    From k = ``drift_context`` real frames, starting at frame s = ``drift_start`` of each of up to
    ``drift_episodes`` held-out episodes, each model steps on its own most likely latents and the episode's
    real actions only. At horizon h (h dream steps after the last real frame, i.e. frame s + k - 1 + h) it
    reports, averaged over the episodes long enough for h (horizons no episode reaches are dropped; episodes
    shorter than s + k are skipped):

    * ``latent``: mean over Z of (z_hat - mu(x))^2, against the model's own encoding of the real frame;
    * ``pixel``: mean over pixels and channels of (dec(z_hat) - x)^2, images in [0, 1];
    * ``disagreement``: mean over model pairs i < j of the pixel mean squared difference between the two
      models' decoded dreams of the same start and actions (latent spaces are not comparable; pixels are).

    Returns:
        dict with ``horizons`` (list of int), ``episodes`` (int), ``latent`` and ``pixel`` (per model: a list
        per horizon), ``latent_mean`` / ``pixel_mean`` (pool mean per horizon), ``disagreement`` (per horizon;
        empty for M = 1). Empty lists when there is no held-out episode.
    """
    k, s = cfg.drift_context, cfg.drift_start
    eps = [e for e in np.nonzero(data.heldout)[0] if data.lengths[e] >= s + k][: cfg.drift_episodes]
    eps = np.array(eps, np.int64)
    empty = {"horizons": [], "episodes": 0, "latent": [], "pixel": [], "latent_mean": [], "pixel_mean": []}
    if len(eps) == 0:
        return {**empty, "disagreement": []}
    lengths = data.lengths[eps] - s
    horizons = [h for h in cfg.drift_horizons if k - 1 + h <= lengths.max()]
    if not horizons:
        return {**empty, "disagreement": []}
    t_max = int(lengths.max())
    contexts, actions, targets = [], [], []
    hz = np.array(horizons)
    for e, n in zip(eps, lengths, strict=True):
        frames, acts = _episode_from(data, e, s)
        contexts.append(frames[:k])
        actions.append(np.concatenate([acts, np.repeat(acts[-1:], t_max - n, axis=0)]))
        targets.append(frames[np.minimum(k - 1 + hz, n)])
    latent, pixel, frames, _ = _open_loop_at(
        pool,
        jnp.asarray(np.stack(contexts)),
        jnp.asarray(np.stack(actions)),
        jnp.asarray(np.stack(targets)),
        jnp.asarray(k - 2 + hz, jnp.int32),
    )
    valid = (k - 1 + hz[None, :] <= lengths[:, None]).astype(np.float64)  # (E, N)
    count = valid.sum(axis=0)

    def avg(err: np.ndarray) -> list[float]:  # (E, N) -> (N,)
        return (np.sum(np.asarray(err) * valid, axis=0) / count).tolist()

    lat = [avg(latent[m]) for m in range(cfg.models)]
    pix = [avg(pixel[m]) for m in range(cfg.models)]
    frames = np.asarray(frames)
    pairs = [(i, j) for i in range(cfg.models) for j in range(i + 1, cfg.models)]
    disagreement = []
    if pairs:
        diffs = [np.mean((frames[i] - frames[j]) ** 2, axis=(-3, -2, -1)) for i, j in pairs]
        disagreement = avg(np.mean(diffs, axis=0))
    return {
        "horizons": horizons,
        "episodes": int(len(eps)),
        "latent": lat,
        "pixel": pix,
        "latent_mean": np.mean(lat, axis=0).tolist(),
        "pixel_mean": np.mean(pix, axis=0).tolist(),
        "disagreement": disagreement,
    }


def _episode_from(data: FrameSequences, e: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode ``e`` from frame ``start`` on: frames (T_e - start + 1, 64, 64, 3), actions (T_e - start, 3)."""
    frames, acts = data.episode(e)
    return frames[start:], acts[start:]


def dream_video(
    out_dir: Path,
    pool: JointWorldModel,
    data: FrameSequences,
    cfg: GossipConfig,
    name: str = "dreams",
    labels: tuple[str, str] = ("model 0", "model 1"),
) -> list[Path]:
    """Side-by-side video of the first held-out episode: real | model 0's dream | model 1's dream.

    Both models read the same ``drift_context`` real frames from frame ``drift_start`` on, then dream on the
    episode's real actions for up
    to ``video_steps`` steps (most likely latents). Writes ``NAME.mp4`` and a half-size ``NAME.gif`` (every
    n-th frame for long videos). A pool of
    one model shows one dream; ``labels`` name the panels (``stack_models`` puts models of two pools side by
    side, e.g. a baseline model next to a gossip model).

    Returns:
        The written paths (empty when there is no held-out episode).
    """
    from worldmodels.viz import side_by_side, to_uint8, write_video

    held = np.nonzero(data.heldout)[0]
    k = cfg.drift_context
    held = [e for e in held if data.lengths[e] >= cfg.drift_start + k]
    if not held:
        return []
    frames, acts = _episode_from(data, held[0], cfg.drift_start)
    steps = min(cfg.video_steps, len(acts) - k + 1)
    index = np.arange(k - 1, k - 1 + steps)
    shown = list(range(min(jax.tree.leaves(pool)[0].shape[0], 2)))
    sub = _select(pool, shown)
    _, _, dreams, _ = _open_loop_at(
        sub,
        jnp.asarray(frames[None, :k]),
        jnp.asarray(acts[None, : k - 1 + steps]),
        jnp.asarray(frames[None, index + 1]),
        jnp.asarray(index, jnp.int32),
    )
    dreams = to_uint8(np.asarray(dreams)[:, 0])  # (models, steps, 64, 64, 3)
    video = [
        side_by_side([frames[i + 1]] + [d[t] for d in dreams], ["real", *labels[: len(shown)]])
        for t, i in enumerate(index)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    mp4, gif = out_dir / f"{name}.mp4", out_dir / f"{name}.gif"
    write_video(mp4, video, fps=cfg.video_fps)
    import imageio.v3 as iio

    every = max(1, len(video) // 300)  # a README-sized gif: at most ~300 half-size frames, same playing time
    iio.imwrite(gif, [f[::2, ::2] for f in video[::every]], duration=1000 * every / cfg.video_fps, loop=0)
    return [mp4, gif]


def _select(pool: JointWorldModel, models: list[int]) -> JointWorldModel:
    idx = jnp.asarray(models)
    return jax.tree.map(lambda x: x[idx] if eqx.is_array(x) else x, pool)


def plot_pool(metrics_path: Path, out_path: Path, num_models: int) -> None:
    """PNG of every loss in ``LOSS_KEYS``, one line per model, against the update step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    keys = [k for k in LOSS_KEYS if rows and k in rows[0]]
    if not keys:
        return
    cols = 5
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * 2), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for m in range(num_models):
            ax.plot([r["step"] for r in rows], [r[f"{key}/{m}"] for r in rows], label=f"model {m}")
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def plot_drift(drift: dict[str, Any], out_path: Path) -> None:
    """PNG of latent and pixel drift per model, and the models' disagreement, against the horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not drift["horizons"]:
        return
    h = drift["horizons"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for m, (lat, pix) in enumerate(zip(drift["latent"], drift["pixel"], strict=True)):
        axes[0].plot(h, lat, marker="o", label=f"model {m}")
        axes[1].plot(h, pix, marker="o", label=f"model {m}")
    if drift["disagreement"]:
        axes[2].plot(h, drift["disagreement"], marker="o")
    titles = ("latent error (MSE per dim)", "pixel error (MSE)", "disagreement between dreams (pixel MSE)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("horizon (dream steps)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


# Export to the paper's stages


def export_model(run_dir: Path, pool: JointWorldModel, cfg: GossipConfig, step: int) -> bool:
    """Write model ``cfg.export_model`` of the pool as ``RUN_DIR/vae/ckpt`` and ``RUN_DIR/rnn/ckpt`` (either flavour).

    The checkpoints have the kinds and hparams ``stages.load_vae`` / ``stages.load_rnn`` rebuild: ``vae``
    (``z_size``) and the dynamics, ``mdnrnn`` (an ``MDNRNN``: ``z_size``, ``action_size``, ``hidden_size``,
    ``num_mixtures``) or ``gru`` (a ``GRUTransition``: ``z_size``, ``action_size``, ``hidden_size``), and carry
    ``extra.source = "gossip"`` and ``extra.model``. ``RUN_DIR/config.json`` records an ``rnn`` section naming the
    recipe (``num_mixtures`` 1 for the GRU), so the dream stage starts its dreams from the same datasets.
    Checkpoints written by another stage (no ``source = "gossip"``) are never replaced.

    Returns:
        True when exported; False when another stage's checkpoints are there.
    """
    from worldmodels.config import RNNConfig
    from worldmodels.stages import gru_hparams
    from worldmodels.train import rnn_hparams

    run_dir = Path(run_dir)
    targets = {"vae": run_dir / "vae" / "ckpt", "rnn": run_dir / "rnn" / "ckpt"}
    for path in targets.values():
        if checkpoint.latest_step(path) is not None:
            if checkpoint.read_meta(path).get("extra", {}).get("source") != "gossip":
                print(f"not exporting: {path} holds a checkpoint of another stage")
                return False
    model = model_at(pool, cfg.export_model)
    extra = {"source": "gossip", "model": cfg.export_model}
    rnn_cfg = RNNConfig(
        dataset=cfg.dataset,
        holdout=cfg.holdout,
        hidden_size=cfg.hidden_size,
        num_mixtures=cfg.num_mixtures if cfg.flavour == "mdnrnn" else 1,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        steps=step,
        seed=cfg.seed,
    )
    if cfg.flavour == "mdnrnn":
        kind, hparams = "mdnrnn", rnn_hparams(rnn_cfg, cfg.z_size)
    else:
        kind, hparams = "gru", gru_hparams(cfg.z_size, cfg.hidden_size)
    for path in targets.values():
        shutil.rmtree(path, ignore_errors=True)
    checkpoint.save(targets["vae"], step, model.vae, kind="vae", hparams={"z_size": cfg.z_size}, extra=extra)
    checkpoint.save(targets["rnn"], step, model.dynamics, kind=kind, hparams=hparams, extra=extra)
    record_config(run_dir, "rnn", rnn_cfg)
    return True


# The stage


def run_gossip(run_dir: Path, cfg: GossipConfig) -> dict[str, Any]:
    """Train a gossip pool on ``RUN_DIR/data/`` and write ``RUN_DIR/gossip/``.

    Writes ``ckpt/`` (resumable), ``metrics.jsonl`` and ``losses.png`` (every loss per model),
    ``drift.json`` and ``drift.png`` (``drift_metrics`` on held-out episodes), ``dreams.mp4`` and
    ``dreams.gif`` (``dream_video``), then exports model ``export_model`` of the pool (either flavour) to the
    run's ``vae/`` and ``rnn/`` (``export_model``) so ``train_dream.py`` and ``test_agent.py`` use it.

    Returns:
        The drift dict (with ``step``).

    Raises:
        ValueError: for an invalid config (``check_config``).
        stages.MissingInput: when a dataset of the recipe is missing.
    """
    run_dir = Path(run_dir)
    check_config(cfg)
    data = load_sequences(run_dir, cfg)
    record_config(run_dir, "gossip", cfg)
    out = run_dir / "gossip"
    n_train, n_held = int((~data.heldout).sum()), int(data.heldout.sum())
    print(
        f"gossip pool of {cfg.models} {cfg.flavour} models, gossip_weight {cfg.gossip_weight:g}: {n_train} training "
        f"episodes ({n_held} held out), {len(data.actions)} steps"
    )
    pool = train_pool(out, data, cfg)
    step = checkpoint.latest_step(out / "ckpt") or 0
    plot_pool(out / "metrics.jsonl", out / "losses.png", cfg.models)
    drift = {"step": step, **drift_metrics(pool, data, cfg)}
    (out / "drift.json").write_text(json.dumps(drift, indent=2))
    plot_drift(drift, out / "drift.png")
    videos = dream_video(out, pool, data, cfg)
    exported = cfg.export and export_model(run_dir, pool, cfg, step)
    if drift["horizons"]:
        h = drift["horizons"]
        print(
            "drift on held-out episodes, pixel MSE at horizons "
            + ", ".join(f"{a}: {b:.4f}" for a, b in zip(h, drift["pixel_mean"], strict=True))
        )
    files = ["metrics.jsonl", "losses.png", "drift.json", "drift.png", *(p.name for p in videos)]
    print(f"gossip pool: step {step} -> {out} ({', '.join(files)})")
    if exported:
        where = f"{run_dir / 'vae'} and {run_dir / 'rnn'}"
        print(f"model {cfg.export_model} exported to {where}: train_dream.py and test_agent.py use it")
    return drift
