"""Supervised training of V and M: the VAE and the M stage (an MDN-RNN, an RSSM or a transformer), their data
(frame mixes, latent sequences, training windows) and losses.

Both train through the project's one training loop (``worldmodels.trainer.fit``) and resume from their
latest checkpoint, so an interrupted run continues where it stopped and a finished one is a no-op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from worldmodels import checkpoint
from worldmodels.config import RNNConfig, VAEConfig
from worldmodels.data import Episode, episode_windows, holdout_count
from worldmodels.data import mirror as mirror_episode
from worldmodels.diagnostics import off_road, reward_delusion
from worldmodels.dream import teacher_forced
from worldmodels.losses import kl_diag_normal, rnn_step_loss, rssm_sequence_loss, vae_loss, weighted_total
from worldmodels.models import MDNRNN, ConvVAE
from worldmodels.models.dynamics import module_at, stack_modules
from worldmodels.models.mdnrnn import MDNOutput, rollout_sequence
from worldmodels.models.mlp_autoencoder import MLPAutoencoder
from worldmodels.models.rssm import RSSM
from worldmodels.models.transformer import TransformerDynamics
from worldmodels.models.transition import GRUTransition, gru_rollout_sequence
from worldmodels.models.vae import to_float
from worldmodels.trainer import MemberCheckpoints, clipped_adam, fit, make_ensemble_step

# Vision


def vae_hparams(cfg: VAEConfig, obs_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Keyword arguments that rebuild V: the ConvVAE (kind ``vae``, ``registry.build_vae``) for frames, or, given
    a vector ``obs_shape`` (D,), the MLP autoencoder (kind ``mlp_autoencoder``)."""
    if obs_shape is not None and len(obs_shape) == 1:
        return {"obs_size": int(obs_shape[0]), "z_size": cfg.z_size, "hidden": list(cfg.mlp_hidden),
                "variational": cfg.variational}  # fmt: skip
    return {"z_size": cfg.z_size, "arch": cfg.arch}


def vision_kind(obs_shape: tuple[int, ...]) -> str:
    """V's checkpoint kind for observations of ``obs_shape``: ``mlp_autoencoder`` for vectors, else ``vae``."""
    return "mlp_autoencoder" if len(obs_shape) == 1 else "vae"


def frames_of(episodes: list[Episode]) -> np.ndarray:
    """All observations of the episodes: uint8 (N, 64, 64, 3) frames or float32 (N, D) vectors."""
    return np.concatenate([ep.observations for ep in episodes])


class FrameMix(eqx.Module):
    """Frames of several datasets, concatenated, with each dataset's sampling weight.

    Attributes:
        frames: uint8 (N, 64, 64, 3), dataset after dataset.
        starts, sizes: int64 (D,) where each dataset's frames begin, and how many it has.
        probs: float64 (D,) probability that a drawn frame comes from each dataset (weights / sum).
    """

    frames: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    probs: np.ndarray

    @classmethod
    def of(cls, groups: list[tuple[np.ndarray, float]]) -> FrameMix:
        """From ``[(frames, weight), ...]``."""
        sizes = np.array([len(f) for f, _ in groups], np.int64)
        weights = np.array([w for _, w in groups], np.float64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls(np.concatenate([f for f, _ in groups]), starts, sizes, weights / weights.sum())

    def sample(self, rng: np.random.Generator, n: int, mirror: bool = False) -> np.ndarray:
        """``n`` frames, uint8 (n, 64, 64, 3): dataset d with probability probs[d], then a uniform frame of it;
        with ``mirror``, each frame is flipped left-right with probability 1/2."""
        d = rng.choice(len(self.sizes), n, p=self.probs)
        idx = np.sort(self.starts[d] + (rng.random(n) * self.sizes[d]).astype(np.int64))
        batch = self.frames[idx]
        if mirror:
            flip = rng.random(n) < 0.5
            batch[flip] = batch[flip][:, :, ::-1]
        return batch


def vae_batch_loss(
    model: ConvVAE | MLPAutoencoder, frames: jax.Array, key: jax.Array, kl_tolerance: float, scales: dict[str, float]
):
    """Mean VAE loss over a batch of observations, uint8 frames (B, 64, 64, 3) or float32 vectors (B, D):
    ``(total, metrics)`` with every term of ``losses.vae_loss`` (Appendix A.1 of Ha & Schmidhuber 2018) averaged
    over the batch, ``total`` (their sum weighted by ``scales``, ``VAEConfig.loss_scales``) and the diagnostic
    ``kl_raw``. The MLP autoencoder's reconstruction is compared with the standardised vector (its ``normalize``),
    so the recon term is a sum of squared errors in units of each dimension's std."""
    x = to_float(frames)
    recon, mu, logvar = model(x, key=key)
    if isinstance(model, MLPAutoencoder):
        x = model.normalize(x)
    losses = jax.vmap(vae_loss, in_axes=(0, 0, 0, 0, None))(recon, x, mu, logvar, kl_tolerance)
    metrics = {k: jnp.mean(v) for k, v in losses.items()}
    metrics["total"] = weighted_total(metrics, scales)
    metrics["kl_raw"] = jnp.mean(jax.vmap(kl_diag_normal)(mu, logvar))
    return metrics["total"], metrics


def train_vae(
    out_dir: Path, frames: np.ndarray | FrameMix, cfg: VAEConfig, obs_names: tuple[str, ...] = ()
) -> ConvVAE | MLPAutoencoder:
    """Train V on observations, or a ``FrameMix`` of them; writes ``recon.png`` at the end.

    uint8 frames (N, 64, 64, 3) train the ConvVAE; float32 vectors (N, D) train the MLP autoencoder
    (``models.mlp_autoencoder``, standardised with the statistics of all N observations). Loss: Appendix A.1 of
    Ha & Schmidhuber 2018 (L2 reconstruction + KL with free bits), see ``losses.vae_loss``; a non-variational
    autoencoder has no KL term (``VAEConfig.loss_scales``). With ``cfg.mirror`` half of each batch is flipped
    left-right (frames only). ``obs_names`` label a vector's dimensions in ``recon.png``.
    """
    mix = frames if isinstance(frames, FrameMix) else FrameMix.of([(frames, 1.0)])
    obs_shape = mix.frames.shape[1:]
    kind = vision_kind(obs_shape)
    if kind == "mlp_autoencoder":
        model = MLPAutoencoder(**vae_hparams(cfg, obs_shape), key=jr.key(cfg.seed)).with_statistics(mix.frames)
    else:
        model = ConvVAE(cfg.z_size, cfg.arch, key=jr.key(cfg.seed))

    def loss_fn(model, x, key):
        return vae_batch_loss(model, x, key, cfg.kl_tolerance, cfg.loss_scales)

    def make_batch(step: int) -> np.ndarray:
        return mix.sample(np.random.default_rng([cfg.seed, step]), cfg.batch_size, cfg.mirror)

    model = fit(
        model=model,
        optimizer=optax.adam(cfg.learning_rate),
        loss_fn=loss_fn,
        make_batch=make_batch,
        steps=cfg.steps,
        out_dir=out_dir,
        kind=kind,
        hparams=vae_hparams(cfg, obs_shape),
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        items_per_step=cfg.batch_size,
        desc="train VAE" if kind == "vae" else "train MLP autoencoder",
    )
    from worldmodels.viz import save_recon_grid, save_vector_recon

    sample = mix.sample(np.random.default_rng(cfg.seed + 1), 8 if kind == "vae" else 500)
    if kind == "vae":
        save_recon_grid(out_dir / "recon.png", model, sample)
    else:
        save_vector_recon(out_dir / "recon.png", model, sample, obs_names)
    return model


@eqx.filter_jit
def _encode_chunk(model: ConvVAE, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model.encode(to_float(frames))


def encode_frames(model: ConvVAE, frames: np.ndarray, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """VAE posterior of every frame: uint8 (N, 64, 64, 3) -> (mu, logvar), float32 (N, Z) each.

    Runs in fixed-size chunks (the last one padded) so it compiles once.
    """
    mus, logvars = [], []
    for i in range(0, len(frames), chunk):
        block = frames[i : i + chunk]
        n = len(block)
        if n < chunk:
            block = np.concatenate([block, np.zeros((chunk - n,) + block.shape[1:], block.dtype)])
        mu, logvar = _encode_chunk(model, jnp.asarray(block))
        mus.append(np.asarray(mu)[:n])
        logvars.append(np.asarray(logvar)[:n])
    return np.concatenate(mus), np.concatenate(logvars)


# Memory


class LatentDataset(eqx.Module):
    """Episodes as latent sequences, concatenated, with per-episode offsets (numpy arrays).

    Attributes:
        mu, logvar: float32 (sum_e (T_e + 1), Z) VAE posteriors of every frame.
        actions: float32 (sum_e T_e, 3).
        rewards: float32 (sum_e T_e,).
        dones: float32 (sum_e T_e,) 1 where the episode terminated after the action.
        offroad: bool (sum_e T_e,) the car is on the grass in the frame after the action (``off_road``).
        obs_start, act_start, lengths: int64 (E,) offsets into the frame and action arrays, and T_e.
        episode_p: float64 (E,) probability of drawing each episode into a training batch (sums to 1;
            0 for held-out episodes).
        heldout: bool (E,) episodes kept out of training for diagnostics.
    """

    mu: np.ndarray
    logvar: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    offroad: np.ndarray
    obs_start: np.ndarray
    act_start: np.ndarray
    lengths: np.ndarray
    episode_p: np.ndarray
    heldout: np.ndarray

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) of every episode's first frame, float32 (E, Z) each: the dreams' start states."""
        return self.mu[self.obs_start], self.logvar[self.obs_start]

    def save(self, path: Path, **extra: Any) -> None:
        """Write as an ``.npz`` (no pickle)."""
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: getattr(self, k) for k in self.__dataclass_fields__}, **extra)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> tuple[LatentDataset, dict[str, np.ndarray]]:
        """Read an ``.npz`` written by ``save``; returns the dataset and the extra arrays.

        Raises:
            CheckpointError: if the file is unreadable (truncated, not a zip) or lacks one of the fields (written
                by an older version); the message names it.
        """
        fields = list(cls.__dataclass_fields__)
        data = checkpoint.read_npz(path, "latent cache", tuple(fields))
        return cls(**{k: data.pop(k) for k in fields}), data

    @classmethod
    def concat(cls, parts: list[LatentDataset], weights: list[float]) -> LatentDataset:
        """Join datasets; part i's episodes share probability weights[i] / sum(weights) of a batch.

        Raises:
            ValueError: if a part with positive weight has no training episode.
        """
        episode_p = recipe_probs([p.episode_p for p in parts], weights)
        obs_len = np.cumsum([0] + [len(p.mu) for p in parts])
        act_len = np.cumsum([0] + [len(p.actions) for p in parts])
        cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("mu", "logvar", "actions", "rewards")}
        return cls(
            **cat,
            dones=np.concatenate([p.dones for p in parts]),
            offroad=np.concatenate([p.offroad for p in parts]),
            obs_start=np.concatenate([p.obs_start + o for p, o in zip(parts, obs_len, strict=False)]),
            act_start=np.concatenate([p.act_start + o for p, o in zip(parts, act_len, strict=False)]),
            lengths=np.concatenate([p.lengths for p in parts]),
            episode_p=episode_p,
            heldout=np.concatenate([p.heldout for p in parts]),
        )


def training_copies(
    episodes: list[Episode], *, holdout: float = 0.0, mirror: bool = False
) -> tuple[list[Episode], np.ndarray]:
    """One dataset's episodes as M trains on them, and which are held out (``encode_episodes``' order).

    The last ``data.holdout_count(n, holdout)`` of the n episodes are held out; with ``mirror`` the
    left-right mirror image (``data.mirror``, steer negated) of every training episode follows the
    originals, in order.

    Returns:
        (the n originals then the mirrored copies, bool (E,) held out).
    """
    n_hold = holdout_count(len(episodes), holdout)
    train_eps = episodes[: len(episodes) - n_hold]
    copies = list(episodes)
    if mirror:
        for ep in train_eps:
            obs, act = mirror_episode(ep.observations, ep.actions)
            copies.append(dataclasses.replace(ep, observations=obs, actions=act))
    held = np.zeros(len(copies), bool)
    held[len(train_eps) : len(episodes)] = True
    return copies, held


def episode_starts(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each episode of T_e = ``lengths[e]`` actions begins when episodes are stored end to end:
    (obs_start, act_start), int64 (E,) offsets into the frames (T_e + 1 each) and the actions (T_e each)."""
    obs_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    act_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return obs_start, act_start


def recipe_probs(episode_ps: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Sampling probability of every episode of a recipe, float64 (sum_i E_i,): dataset i's episodes share
    weights[i] / sum(weights) in proportion to ``episode_ps[i]`` (0 for held-out episodes).

    Raises:
        ValueError: if a dataset has no training episode (its ``episode_ps`` sum to 0).
    """
    total = float(sum(weights))
    probs = []
    for p, w in zip(episode_ps, weights, strict=True):
        if p.sum() <= 0:
            raise ValueError("every dataset of a recipe needs at least one training episode")
        probs.append(p / p.sum() * (w / total))
    return np.concatenate(probs)


def encode_episodes(
    model: ConvVAE, episodes: list[Episode], *, holdout: float = 0.0, mirror: bool = False
) -> LatentDataset:
    """Encode every frame of every episode with the VAE into a ``LatentDataset``.

    Args:
        model: the trained VAE.
        episodes: real episodes.
        holdout: fraction of the episodes (the last ones; at least one when there are two or more and
            ``holdout`` > 0) marked held out, with sampling probability 0.
        mirror: also add the left-right mirrored copy of every training episode (steer negated), so a
            batch draws mirrored and original episodes equally often.

    Returns:
        The dataset; training episodes are drawn uniformly.
    """
    copies, held = training_copies(episodes, holdout=holdout, mirror=mirror)
    frames = frames_of(copies)
    mu, logvar = encode_frames(model, frames)
    lengths = np.array([ep.length for ep in copies])
    obs_start, act_start = episode_starts(lengths)
    offroad = np.concatenate([off_road(ep.observations[1:]) for ep in copies])
    p = (~held).astype(np.float64)
    return LatentDataset(
        mu=mu,
        logvar=logvar,
        actions=np.concatenate([ep.actions for ep in copies]),
        rewards=np.concatenate([ep.rewards for ep in copies]),
        dones=np.concatenate([ep.terminations for ep in copies]).astype(np.float32),
        offroad=offroad,
        obs_start=obs_start,
        act_start=act_start,
        lengths=lengths,
        episode_p=p / p.sum(),
        heldout=held,
    )


def rnn_hparams(cfg: RNNConfig, z_size: int, action_size: int = 3) -> dict[str, Any]:
    """Keyword arguments that rebuild the stage's dynamics (an ``MDNRNN``, a ``GRUTransition`` for ``kind gru``, an
    ``RSSM`` for ``kind rssm``, or a ``TransformerDynamics`` for ``kind transformer``) on latents of ``z_size`` and
    actions of ``action_size``."""
    a = action_size
    if cfg.kind == "rssm":
        return {"z_size": z_size, "action_size": a, "hidden_size": cfg.hidden_size, "latent": cfg.latent,
                "stoch": cfg.stoch, "classes": cfg.classes, "units": cfg.units}  # fmt: skip
    mdn = {"z_size": z_size, "action_size": a, "hidden_size": cfg.hidden_size, "num_mixtures": cfg.num_mixtures}
    if cfg.kind == "transformer":
        return {**mdn, "layers": cfg.layers, "heads": cfg.heads, "context": cfg.context}
    return mdn


def window_indices(data: Any, step: int, cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The windows of step ``step``: ``data.episode_windows`` drawn with the generator seeded by (cfg.seed, step).

    Args:
        data: episodes stored end to end with ``lengths``, ``episode_p``, ``obs_start``, ``act_start``
            (a ``LatentDataset`` or a ``pixels.FrameSequences``).
        step: the update's index.
        cfg: anything with ``seed``, ``seq_len`` L and ``batch_size`` B (an ``RNNConfig``), and optionally
            ``windows`` (``RNNConfig.windows``; ``inside`` where it has none).

    Returns:
        ``episode_windows``' (obs_idx (B, L + 1), act_idx (B, L), obs_mask (B, L + 1), act_mask (B, L)).
    """
    rng = np.random.default_rng([cfg.seed, step])
    windows = getattr(cfg, "windows", "inside")
    return episode_windows(
        rng, data.lengths, data.episode_p, data.obs_start, data.act_start, cfg.seq_len, cfg.batch_size, windows
    )


def sequence_batch(data: LatentDataset, step: int, cfg: RNNConfig) -> dict[str, np.ndarray]:
    """A batch of training windows, deterministic in (cfg.seed, step).

    Episodes are drawn with probabilities ``data.episode_p`` (the recipe's weights; held-out episodes never).
    Each window is seq_len L steps of one episode starting at a uniform offset in [0, T_e - L]
    (offset 0 when the episode is not longer than L), or in [0, T_e - 1] with ``cfg.windows`` ``padded``; a tail
    past the episode's end is masked.

    Returns:
        dict of numpy arrays: ``mu``, ``logvar`` (B, L + 1, Z); ``actions`` (B, L, 3); ``rewards``,
        ``dones``, ``mask`` (B, L).
    """
    obs_idx, act_idx, _, valid = window_indices(data, step, cfg)
    return _gather(data, obs_idx, act_idx, valid)


def _gather(data: LatentDataset, obs_idx: np.ndarray, act_idx: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """M's batch at frame indices (B, L + 1) and action indices (B, L) into ``data``, with the step ``mask``."""
    return {
        "mu": data.mu[obs_idx],
        "logvar": data.logvar[obs_idx],
        "actions": data.actions[act_idx],
        "rewards": data.rewards[act_idx],
        "dones": data.dones[act_idx],
        "mask": mask,
    }


def heldout_batch(data: LatentDataset) -> dict[str, np.ndarray] | None:
    """The held-out episodes as one batch of whole episodes from their first frame, shaped like ``sequence_batch``'s
    (L = the longest held-out episode; shorter ones padded with their last frame and action, masked), or None
    without held-out episodes. M's validation data: the dream also runs M from an episode's start.

    Returns:
        dict of numpy arrays: ``mu``, ``logvar`` float32 (H, L + 1, Z); ``actions`` (H, L, A); ``rewards``,
        ``dones``, ``mask`` float32 (H, L), for the H held-out episodes.
    """
    windows = _heldout_windows(data)
    return None if windows is None else _gather(data, *windows)


def _heldout_windows(data: LatentDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Frame indices (H, L + 1), action indices (H, L) and the float32 step mask (H, L) of the H held-out episodes,
    whole from their first frame (L the longest; shorter ones repeat their last frame and action, masked), or None
    without held-out episodes."""
    eps = np.flatnonzero(data.heldout)
    if not len(eps):
        return None
    n = data.lengths[eps][:, None]
    t = np.arange(int(n.max()) + 1)[None, :]
    obs_idx = data.obs_start[eps][:, None] + np.minimum(t, n)
    act_idx = data.act_start[eps][:, None] + np.minimum(t[:, :-1], n - 1)
    return obs_idx, act_idx, (t[:, :-1] < n).astype(np.float32)


def heldout_loss(loss: Callable, data: LatentDataset, cfg: RNNConfig, members: bool = False) -> Callable | None:
    """Validation for ``trainer.fit``'s ``evaluate``: ``model -> metrics`` of ``loss`` (``rnn_loss`` or
    ``rssm_loss``) on ``heldout_batch(data)``, with z drawn from the VAE posterior by a fixed key so that every
    checkpoint is scored on the same sample (float32 scalars; with ``members``, a stacked ensemble gives (E,)
    vectors). None without held-out episodes.

    An M that fits its training windows ever better while this rises is overfitting its 150-odd episodes.
    """
    batch = heldout_batch(data)
    if batch is None:
        return None
    batch = jax.tree.map(jnp.asarray, batch)

    def one(model):
        return loss(model, batch, jr.key(0), cfg)[1]

    return eqx.filter_jit(eqx.filter_vmap(one) if members else one)


def mdn_sequence(model: MDNRNN | GRUTransition | TransformerDynamics, z: jax.Array, actions: jax.Array) -> MDNOutput:
    """Teacher-forced predictions of a mixture-head M over one sequence, z (T, Z) and actions (T, A) -> ``MDNOutput``
    with a leading T (steps 1 .. T): the transformer's ``forward_sequence`` (all steps at once, banded causal mask),
    the MDN-RNN's ``rollout_sequence`` (a ``lax.scan`` of its step), the GRU's ``gru_rollout_sequence``."""
    if isinstance(model, TransformerDynamics):
        return model.forward_sequence(z, actions)
    if isinstance(model, GRUTransition):
        return gru_rollout_sequence(model, z, actions)[1]
    return rollout_sequence(model, z, actions)[1]


def rnn_loss(
    model: MDNRNN | GRUTransition | TransformerDynamics, batch: dict[str, jax.Array], key: jax.Array, cfg: RNNConfig
):
    """Masked mean MDN-RNN loss over a batch of windows (also the GRU's and the transformer's: same head, same
    terms); z is re-sampled from (mu, sigma) each call."""
    z = batch["mu"] + jnp.exp(0.5 * batch["logvar"]) * jr.normal(key, batch["mu"].shape)

    weights = {"reward_overpredict_weight": cfg.reward_overpredict_weight, "terminal_weight": cfg.terminal_weight}

    def one(z, actions, rewards, dones):
        out = mdn_sequence(model, z[:-1], actions)
        return jax.vmap(lambda o, zn, r, d: rnn_step_loss(o, zn, r, d, **weights))(out, z[1:], rewards, dones)

    losses = jax.vmap(one)(z, batch["actions"], batch["rewards"], batch["dones"])
    mask = batch["mask"]
    denom = jnp.maximum(mask.sum(), 1.0)
    metrics = {k: jnp.sum(v * mask) / denom for k, v in losses.items()}
    metrics["total"] = weighted_total(metrics, cfg.loss_scales)
    return metrics["total"], metrics


def window_means(terms: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
    """Masked means over a batch of windows of per-step terms, float32 scalars.

    A term of shape (B, L + 1) is a frame term, averaged over the valid frames (frame 0 always, frame t + 1
    when transition t is valid); a term of shape (B, L) a transition term, averaged where ``mask`` (B, L) is 1.
    """
    frames = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)

    def masked_mean(v):
        m = frames if v.shape == frames.shape else mask
        return jnp.sum(v * m) / jnp.maximum(m.sum(), 1.0)

    return {k: masked_mean(v) for k, v in terms.items()}


def rssm_loss(model: RSSM, batch: dict[str, jax.Array], key: jax.Array, cfg: RNNConfig):
    """Masked mean RSSM loss over a batch of windows (``losses.rssm_sequence_loss``; Hafner et al. 2023, Eq. 5).

    z is re-sampled from the VAE posterior (mu, sigma) each call, as for the MDN-RNN. Frame terms (obs, KL) are
    averaged over the valid frames of each window (frame t + 1 is valid when transition t is), transition
    terms (reward, cont) over the valid transitions. ``kl`` (before free bits) is logged, not summed.
    """
    k_z, k_seq = jr.split(key)
    z = batch["mu"] + jnp.exp(0.5 * batch["logvar"]) * jr.normal(k_z, batch["mu"].shape)
    keys = jr.split(k_seq, z.shape[0])
    terms = jax.vmap(lambda *a: rssm_sequence_loss(model, *a, free_nats=cfg.free_nats))(
        z, batch["actions"], batch["rewards"], batch["dones"], keys
    )
    metrics = window_means(terms, batch["mask"])
    diagnostics = {"kl": metrics.pop("kl")}
    metrics["total"] = weighted_total(metrics, cfg.loss_scales)
    return metrics["total"], {**metrics, **diagnostics}


DYNAMICS_NAMES = {"mdnrnn": "MDN-RNN", "gru": "MDN-GRU", "rssm": "RSSM", "transformer": "transformer"}
"""How messages and progress bars name each dynamics kind of the M stage."""


def _rnn_model_and_loss(cfg: RNNConfig, hparams: dict[str, Any], seed: int) -> tuple[Any, Callable]:
    """M of ``cfg.kind`` initialised from ``seed``, and its batch loss."""
    if cfg.kind == "rssm":
        return RSSM(**hparams, key=jr.key(seed)), rssm_loss
    builder = {"transformer": TransformerDynamics, "gru": GRUTransition}.get(cfg.kind, MDNRNN)
    return builder(**hparams, key=jr.key(seed)), rnn_loss


def train_rnn(
    out_dir: Path, data: LatentDataset, cfg: RNNConfig
) -> MDNRNN | GRUTransition | RSSM | TransformerDynamics:
    """Train M on latent sequences of the frozen VAE: the MDN-RNN (Ha & Schmidhuber 2018, Sec. 2.2), with
    ``cfg.kind == "gru"`` the same heads on a GRU (``models.transition``; the MDN-RNN's loss), with
    ``cfg.kind == "rssm"`` the RSSM (Hafner et al. 2019; losses of Hafner et al. 2023, Eq. 5), or with
    ``cfg.kind == "transformer"`` the causal transformer (``models.transformer``; the MDN-RNN's loss)."""
    hparams = rnn_hparams(cfg, data.mu.shape[-1], data.actions.shape[-1])
    model, loss = _rnn_model_and_loss(cfg, hparams, cfg.seed)
    optimizer = clipped_adam(cfg.learning_rate, cfg.grad_clip)
    return fit(
        model=model,
        optimizer=optimizer,
        loss_fn=lambda m, b, k: loss(m, b, k, cfg),
        make_batch=lambda step: sequence_batch(data, step, cfg),
        steps=cfg.steps,
        out_dir=out_dir,
        kind=cfg.kind,
        hparams=hparams,
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        items_per_step=cfg.batch_size * cfg.seq_len,
        desc=f"train {DYNAMICS_NAMES[cfg.kind]}",
        evaluate=heldout_loss(loss, data, cfg),
    )


def bootstrap_episodes(data: LatentDataset, seed: int) -> LatentDataset:
    """``data`` with each training episode's sampling weight (``episode_p``) multiplied by how often it comes up in n
    draws with replacement from the n training episodes (the bootstrap of PETS, Chua et al. 2018), renormalised.

    Held-out episodes and episodes of weight 0 are never drawn. Deterministic in ``seed``.

    Raises:
        ValueError: when ``data`` has no training episode of positive weight.
    """
    train = np.flatnonzero(~data.heldout & (data.episode_p > 0))
    if not len(train):
        raise ValueError("bootstrap needs at least one training episode of positive weight")
    drawn = np.random.default_rng([seed, 0xB0]).choice(train, size=len(train))
    p = data.episode_p * np.bincount(drawn, minlength=len(data.episode_p))
    return dataclasses.replace(data, episode_p=p / p.sum())


def train_rnn_ensemble(
    log_dir: Path,
    member_dirs: Sequence[Path],
    data: LatentDataset | Sequence[LatentDataset],
    cfg: RNNConfig,
    seeds: Sequence[int],
) -> list[MDNRNN | GRUTransition | RSSM | TransformerDynamics]:
    """Train E members of an ensemble of M at once: one stacked module, one ``vmap``-ped update per step
    (``trainer.make_ensemble_step``), each member exactly as ``train_rnn`` trains it alone with ``cfg.seed`` =
    ``seeds[k]`` (its initialisation, its windows ``sequence_batch(data, step, seed k)`` and its per-step keys), so
    the result equals training them one by one up to float rounding, in about one member's time on a GPU.

    Args:
        log_dir: where ``metrics.jsonl`` (each metric's mean over the members as ``name``, member k's as
            ``name/k``), ``tb/`` and the loss plot go.
        member_dirs: E >= 1 member directories; member k's checkpoints go to ``member_dirs[k]/ckpt`` (the
            ordinary checkpoint of an M), and training resumes from them when all hold the same step.
        data: the latent sequences (``LatentDataset``), or one per member (the same episodes with each member's
            sampling weights, e.g. ``bootstrap_episodes``).
        cfg: the M stage's config (``cfg.seed`` is replaced by each member's seed).
        seeds: E training seeds, one per member.

    Returns:
        The E trained members, in order.

    Raises:
        ValueError: when ``member_dirs``, ``seeds`` (and a list ``data``) differ in length or are empty.
        CheckpointError: when the members' checkpoints stand at different steps (``trainer.MemberCheckpoints``).
        TrainingDiverged: as ``trainer.fit``, naming the members' last good step.
    """
    datas = [data] * len(seeds) if isinstance(data, LatentDataset) else list(data)
    if not seeds or len(seeds) != len(member_dirs) or len(datas) != len(seeds):
        raise ValueError(
            f"{len(member_dirs)} member directories, {len(seeds)} seeds and {len(datas)} data sets: give one per member"
        )
    hparams = rnn_hparams(cfg, datas[0].mu.shape[-1], datas[0].actions.shape[-1])
    members = [_rnn_model_and_loss(cfg, hparams, s) for s in seeds]
    loss = members[0][1]
    model = stack_modules([m for m, _ in members])
    optimizer = clipped_adam(cfg.learning_rate, cfg.grad_clip)
    member_cfgs = [dataclasses.replace(cfg, seed=s) for s in seeds]

    def make_batch(step: int) -> dict[str, Any]:
        windows = [sequence_batch(d, step, c) for d, c in zip(datas, member_cfgs, strict=True)]
        return {
            "member": jax.tree.map(lambda *xs: np.stack(xs), *windows),
            "keys": jnp.stack([jr.fold_in(jr.key(s), step) for s in seeds]),
        }

    trained = fit(
        model=model,
        step_fn=make_ensemble_step(lambda m, b, k: loss(m, b, k, cfg), optimizer),
        opt_state=eqx.filter_vmap(optimizer.init)(eqx.filter(model, eqx.is_array)),
        make_batch=make_batch,
        steps=cfg.steps,
        out_dir=Path(log_dir),
        kind=cfg.kind,
        hparams=hparams,
        seed=seeds[0],
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        items_per_step=cfg.batch_size * cfg.seq_len * len(seeds),
        desc=f"train {len(seeds)} {DYNAMICS_NAMES[cfg.kind]}s at once",
        checkpoints=MemberCheckpoints([Path(d) / "ckpt" for d in member_dirs], cfg.kind, hparams),
        evaluate=heldout_loss(loss, datas[0], cfg, members=True),
    )
    return [module_at(trained, k) for k in range(len(seeds))]


@eqx.filter_jit
def _teacher_forced_rewards(model, z: jax.Array, actions: jax.Array) -> jax.Array:
    """Reward predictions (B, L) of any ``Dynamics`` fed real latents z (B, L, Z) and actions (B, L, 3)
    (``dream.teacher_forced``)."""
    return jax.vmap(lambda z, a: teacher_forced(model, z, a)[1].reward)(z, actions)


def heldout_delusion(model, data: LatentDataset) -> dict[str, float | int | None]:
    """Reward delusion (``diagnostics.reward_delusion``) of M (any ``Dynamics``) on the held-out episodes.

    M reads the real latent means and actions of each held-out episode (teacher forcing, the episodes of
    ``heldout_batch`` in one batch) and predicts each step's reward; M is causal, so the padding after an
    episode's end changes none of its steps.

    Returns:
        The ``reward_delusion`` dict plus ``episodes``; delusion is None without held-out off-road steps.
    """
    windows = _heldout_windows(data)
    if windows is None:
        return {"reward_delusion": None, "offroad_steps": 0, "steps": 0, "episodes": 0}
    obs_idx, act_idx, mask = windows
    r = _teacher_forced_rewards(model, jnp.asarray(data.mu[obs_idx[:, :-1]]), jnp.asarray(data.actions[act_idx]))
    valid = mask > 0  # episode by episode, step by step: the order of the real steps
    out = reward_delusion(np.asarray(r)[valid], data.rewards[act_idx][valid], data.offroad[act_idx][valid])
    return {**out, "episodes": len(obs_idx)}
