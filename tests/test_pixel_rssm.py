"""The RSSM trained end to end from pixels (models/pixel_rssm.py, pixels.py): its loss terms, gradients that reach
the conv encoder, frame windows held out and mirrored like the M stage's latents, and training that resumes."""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import rows

from worldmodels import checkpoint
from worldmodels.config import RNNConfig
from worldmodels.data import Episode
from worldmodels.losses import (
    binary_cross_entropy,
    gaussian_nll,
    kl_balance,
    kl_diag_normal,
    rssm_sequence_loss,
    rssm_sequence_terms,
)
from worldmodels.models import twohot
from worldmodels.models.pixel_rssm import PixelRSSM, pixel_rssm_sequence_loss
from worldmodels.models.rssm import observe
from worldmodels.models.vae import to_float
from worldmodels.pixels import FrameSequences, frame_batch, pixel_hparams, train_pixel_rssm

L = 4
CFG = RNNConfig(kind="rssm", hidden_size=16, stoch=4, classes=4, units=16, seq_len=L, batch_size=2, free_nats=0.5)
FRAME_TERMS = ("recon", "vae_kl", "obs", "kl_dyn", "kl_rep", "kl", "image")
STEP_TERMS = ("reward", "cont")


def episode(seed: int, length: int) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        seed=seed,
        observations=rng.integers(0, 256, (length + 1, 64, 64, 3), dtype=np.uint8),
        actions=rng.uniform(-1, 1, (length, 3)).astype(np.float32),
        rewards=rng.normal(size=length).astype(np.float32),
        terminations=np.arange(length) == length - 1,
        truncations=np.zeros(length, bool),
    )


def model_of(latent: str = "gaussian", seed: int = 0) -> PixelRSSM:
    return PixelRSSM(**pixel_hparams(dataclasses.replace(CFG, latent=latent), 4), key=jr.key(seed))


def window(seed: int = 1):
    ep = episode(seed, L)
    return to_float(jnp.asarray(ep.observations)), ep.actions, ep.rewards, ep.terminations.astype(np.float32)


def old_rssm_sequence_loss(model, z, actions, rewards, dones, key, free_nats):
    """``losses.rssm_sequence_loss``'s body before it moved into ``rssm_sequence_terms``, and its obs_mu."""
    seq = observe(model, z, jnp.concatenate([actions, jnp.zeros_like(actions[:1])]), key)
    obs_mu, obs_log_sigma, reward_logits, cont_logit = jax.vmap(model.heads)(seq.h, seq.s)
    terms = {
        "obs": jax.vmap(gaussian_nll)(z, obs_mu, obs_log_sigma),
        **jax.vmap(lambda q, p: kl_balance(model, q, p, free_nats))(seq.post, seq.prior),
        "reward": jax.vmap(twohot.loss)(reward_logits[1:], rewards),
        "cont": binary_cross_entropy(cont_logit[1:], 1.0 - dones),
    }
    return terms, obs_mu


@eqx.filter_jit
def _forward(model, frames, actions, rewards, dones, key):
    free_nats, kl_tolerance = 0.5, 0.5
    terms = pixel_rssm_sequence_loss(model, frames, actions, rewards, dones, key, free_nats, kl_tolerance)
    # z as the loss samples it (its own split of the key), and the RSSM's loss on it three ways
    k_z, k_seq = jr.split(key)
    mu, logvar = model.vae.encode(frames)
    z = mu + jnp.exp(0.5 * logvar) * jr.normal(k_z, mu.shape)
    public = rssm_sequence_loss(model.rssm, z, actions, rewards, dones, k_seq, free_nats=free_nats)
    helper = rssm_sequence_terms(model.rssm, z, actions, rewards, dones, k_seq, free_nats)
    before, obs_mu = old_rssm_sequence_loss(model.rssm, z, actions, rewards, dones, k_seq, free_nats)
    # the pixel terms from their definitions
    sse = lambda x: jnp.sum((x - frames) ** 2, axis=(1, 2, 3))  # noqa: E731
    definitions = {
        **public,
        "recon": sse(model.vae.decode(z)),
        "image": sse(model.vae.decode(obs_mu)),
        "vae_kl": jnp.maximum(jax.vmap(kl_diag_normal)(mu, logvar), kl_tolerance * z.shape[-1]),
    }
    return {"terms": terms, "definitions": definitions, "public": public, "helper": helper, "before": (before, obs_mu)}


@functools.cache
def forward(latent: str) -> dict:
    """Every loss value the tests compare, for one window, in one compilation per latent kind (eager dispatch of
    the convolutions is slow on the CPU)."""
    return jax.device_get(_forward(model_of(latent), *window(), jr.key(2)))


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
def test_pixel_loss_terms_are_the_vae_the_rssm_and_the_image_decoder_on_the_sampled_latent(latent):
    out = forward(latent)
    terms = out["terms"]
    assert set(terms) == set(out["definitions"]) == set(FRAME_TERMS + STEP_TERMS)
    for k, v in terms.items():
        assert v.shape == ((L + 1,) if k in FRAME_TERMS else (L,)) and v.dtype == np.float32, k
        assert np.all(np.isfinite(v)), k
        np.testing.assert_allclose(v, out["definitions"][k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert terms["vae_kl"].min() >= 0.5 * 4 - 1e-6  # the VAE's free bits: kl_tolerance nats per dimension
    model = model_of(latent)
    assert model.z_size == 4 and model.hidden_size == 16 and model.action_size == 3


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
def test_rssm_sequence_loss_is_unchanged_by_the_refactor(latent):
    """The public loss equals the helper's terms and the body it had before the helper was factored out."""
    out = forward(latent)
    public, (helper, helper_mu), (before, obs_mu) = out["public"], out["helper"], out["before"]
    assert set(public) == set(helper) == set(before) == {"obs", "kl_dyn", "kl_rep", "kl", "reward", "cont"}
    for k in public:
        np.testing.assert_array_equal(public[k], helper[k], err_msg=k)
        np.testing.assert_allclose(public[k], before[k], rtol=1e-6, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(helper_mu, obs_mu, rtol=1e-6, atol=1e-6)


def test_the_rssm_terms_train_the_conv_encoder_end_to_end():
    names = ("obs", "kl_rep")

    @eqx.filter_jit
    def term_grads(model, frames, actions, rewards, dones, key):
        """The gradient of each term's window sum, stacked on a leading axis (one compilation for both)."""

        def sums(m):
            terms = pixel_rssm_sequence_loss(m, frames, actions, rewards, dones, key, 0.0, 0.0)
            return jnp.stack([jnp.sum(terms[k]) for k in names])

        _, vjp = eqx.filter_vjp(sums, model)
        return jax.vmap(vjp)(jnp.eye(len(names)))[0]

    grads = term_grads(model_of(), *window(), jr.key(2))
    norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))  # noqa: E731
    for i, term in enumerate(names):
        g = jax.tree.map(lambda x: x[i], grads)  # noqa: B023
        assert norm(g.vae.enc[0].weight) > 0 and norm(g.vae.fc_mu) > 0, term  # the RSSM's losses reach the conv encoder
        assert norm(g.vae.dec) == 0 and norm(g.vae.fc_logvar) > 0, term  # (not the decoder; through sigma too)


def groups():
    # dataset a: 5 episodes (the last one held out at holdout 0.2), one shorter than a window; dataset b: 2
    a = [episode(10 + i, n) for i, n in enumerate((9, 2, 7, 8, 6))]
    b = [episode(20 + i, n) for i, n in enumerate((12, 5))]
    return [(a, 1.0), (b, 3.0)]


def test_frame_sequences_hold_out_and_mirror_like_the_latent_dataset(monkeypatch):
    import worldmodels.train as train

    (a, _), (b, _) = gs = groups()
    data = FrameSequences.of(gs, holdout=0.2, mirror=True)
    # per dataset: originals (the last held out), then the mirrored training episodes
    assert data.heldout.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0] + [0, 1, 0]
    assert data.episode_p[data.heldout].sum() == 0
    np.testing.assert_allclose(data.episode_p[:9].sum(), 0.25)
    np.testing.assert_allclose(data.episode_p[9:].sum(), 0.75)
    for copy, orig in [(5 + i, i) for i in range(4)] + [(11, 9)]:
        n, o = data.lengths[orig], data.obs_start
        assert data.lengths[copy] == n
        np.testing.assert_array_equal(
            data.frames[o[copy] : o[copy] + n + 1], data.frames[o[orig] : o[orig] + n + 1, :, ::-1]
        )
        acts = data.actions[data.act_start[copy] : data.act_start[copy] + n]
        orig_acts = data.actions[data.act_start[orig] : data.act_start[orig] + n]
        np.testing.assert_array_equal(acts, orig_acts * np.array([-1, 1, 1], np.float32))
    # the layout of the M stage's latents (train.encode_episodes per dataset, LatentDataset.concat), whose "VAE"
    # here copies each frame's first pixels into its mu, so that mu shows which frame sits where
    fingerprint = lambda frames: frames.reshape(len(frames), -1)[:, :4].astype(np.float32)  # noqa: E731
    monkeypatch.setattr(train, "encode_frames", lambda _, frames: (fingerprint(frames), fingerprint(frames)))
    latents = train.LatentDataset.concat(
        [train.encode_episodes(None, eps, holdout=0.2, mirror=True) for eps, _ in gs], [w for _, w in gs]
    )
    np.testing.assert_array_equal(latents.mu, fingerprint(data.frames))
    for k in ("actions", "rewards", "dones", "obs_start", "act_start", "lengths", "episode_p", "heldout"):
        np.testing.assert_array_equal(getattr(latents, k), getattr(data, k), err_msg=k)
    # without mirroring (gossip's frame sequences): the originals only, episode() reads one back
    plain = FrameSequences.of(gs, 0.2, mirror=False)
    assert plain.heldout.tolist() == [0, 0, 0, 0, 1, 0, 1]
    frames, actions = plain.episode(5)
    np.testing.assert_array_equal(frames, b[0].observations)
    np.testing.assert_array_equal(actions, b[0].actions)
    with pytest.raises(ValueError, match="training episode"):
        FrameSequences.of([(a, 1.0), ([], 1.0)], 0.2, mirror=False)


def test_frame_batch_is_deterministic_masks_short_tails_and_never_draws_held_out_episodes():
    data = FrameSequences.of(groups(), holdout=0.2, mirror=True)
    cfg = dataclasses.replace(CFG, batch_size=8)
    batch = frame_batch(data, 3, cfg)
    assert batch["frames"].shape == (8, L + 1, 64, 64, 3) and batch["frames"].dtype == np.uint8
    assert batch["actions"].shape == (8, L, 3) and batch["mask"].shape == (8, L)
    for k, v in frame_batch(data, 3, cfg).items():
        np.testing.assert_array_equal(v, batch[k], err_msg=k)
    assert not np.array_equal(frame_batch(data, 4, cfg)["frames"], batch["frames"])

    where = {data.frames[i].tobytes(): i for i in range(len(data.frames))}
    short = {1, 6}  # the 2-step episode and its mirror image
    seen_short = False
    for step in range(12):
        batch = frame_batch(data, step, cfg)
        for row in range(cfg.batch_size):
            i = where[batch["frames"][row, 0].tobytes()]
            e = int(np.searchsorted(data.obs_start, i, side="right") - 1)
            assert not data.heldout[e]
            n, off = int(data.lengths[e]), i - int(data.obs_start[e])
            valid = min(L, n - off)
            np.testing.assert_array_equal(batch["mask"][row], np.arange(L) < valid)
            expected = data.frames[i + np.minimum(np.arange(L + 1), valid)]
            np.testing.assert_array_equal(batch["frames"][row], expected)
            if e in short:
                seen_short = True
                assert batch["mask"][row].tolist() == [1, 1, 0, 0]
                np.testing.assert_array_equal(batch["actions"][row, 2:], batch["actions"][row, [1, 1]])
    assert seen_short


def test_train_pixel_rssm_writes_a_checkpoint_and_resumes_from_it(tmp_path, monkeypatch):
    import worldmodels.pixels as pixels
    import worldmodels.trainer as trainer

    real_make_step = trainer.make_step
    data = FrameSequences.of(groups(), holdout=0.2, mirror=False)
    cfg = dataclasses.replace(CFG, steps=6, log_every=2, checkpoint_every=6)
    drawn = []

    def recording_batch(data, step, cfg):
        drawn.append(step)
        return frame_batch(data, step, cfg)

    monkeypatch.setattr(pixels, "frame_batch", recording_batch)
    # the second call's update is the same computation as the first's: reuse its compilation (many seconds on a CPU)
    made = []

    def make_step_once(loss_fn, optimizer):
        if not made:
            made.append(real_make_step(loss_fn, optimizer))
        return made[0]

    monkeypatch.setattr(trainer, "make_step", make_step_once)
    out = tmp_path / "pixel"
    model = train_pixel_rssm(out, data, cfg, 4, 0.5)
    assert drawn == list(range(6)) and checkpoint.latest_step(out / "ckpt") == 6
    assert [r["step"] for r in rows(out)] == [2, 4, 6]
    assert set(rows(out)[0]) >= {"total", "grad_norm", *FRAME_TERMS, *STEP_TERMS}
    assert all(np.isfinite(r[k]) for r in rows(out) for k in ("total", *FRAME_TERMS, *STEP_TERMS))
    loaded, meta = checkpoint.load_module(
        out / "ckpt", lambda **h: PixelRSSM(**h, key=jr.key(1)), kind="pixel_rssm", expected={"z_size": 4}
    )
    assert meta["hparams"] == pixel_hparams(cfg, 4)
    for x, y in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(x, y)

    drawn.clear()
    train_pixel_rssm(out, data, dataclasses.replace(cfg, steps=9), 4, 0.5)
    assert drawn == [6, 7, 8]  # resumed after step 6, not started over
    assert [r["step"] for r in rows(out)] == [2, 4, 6, 8, 9] and checkpoint.latest_step(out / "ckpt") == 9


def test_train_pixel_rssm_starts_from_a_pretrained_vae(tmp_path, monkeypatch):
    import worldmodels.pixels as pixels
    from worldmodels.models.vae import ConvVAE

    monkeypatch.setattr(pixels, "fit", lambda *, model, **_: model)
    vae = ConvVAE(4, key=jr.key(7))
    model = train_pixel_rssm(tmp_path, None, CFG, 4, 0.5, init_vae=vae)
    for x, y in zip(jax.tree.leaves(model.vae), jax.tree.leaves(vae), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="z_size"):
        train_pixel_rssm(tmp_path, None, CFG, 8, 0.5, init_vae=vae)
