"""Open-loop drift of several runs' world models on the same held-out real episodes (MDN-RNN against RSSM).

Each run directory contributes its V (``vae/ckpt``) and its M (``rnn/ckpt``, any dynamics kind). From
``--context`` real frames at frame ``--start`` of each held-out episode, M steps on its own most likely
latents and the episode's real actions only (``models.joint.open_loop``; the RSSM's prior mode); at each
horizon h the error against the real frame is measured as in gossip's drift (``gossip.drift.drift_metrics``):
the latent mean squared error against V's encoding of the real frame and the pixel mean squared error of
V's decoding. The held-out episodes are the last ``--holdout`` of each dataset of ``--dataset``, the ones
the M stage holds out with the same fraction, so no model trained on them.

    uv run python experiments/drift_compare.py --runs runs/wm0 runs/rssm2 --out runs/drift

It also scores each M teacher-forced on the same held-out episodes (each step reads the real frame's latent and
action, ``one_step_errors``): the negative log-likelihood of the next real latent under M's predicted mixture (nats
per latent dimension, ``losses.mdn_nll``) and the mean squared error of the predicted reward.

Writes ``OUT/drift.json`` (per run: horizons, latent and pixel error, one-step NLL and reward error) and
``OUT/drift.png``, and prints a table at a few horizons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import tyro

from worldmodels.config import GossipConfig
from worldmodels.data import load_episodes
from worldmodels.dream import teacher_forced
from worldmodels.gossip.drift import drift_metrics
from worldmodels.losses import mdn_nll
from worldmodels.models.joint import JointWorldModel
from worldmodels.models.vae import to_float
from worldmodels.pixels import FrameSequences
from worldmodels.run_dir import load_dynamics, load_vae, recipe_paths


@dataclass(frozen=True)
class Args:
    runs: tuple[Path, ...]
    """Run directories with trained vae/ and rnn/ checkpoints; the first one's data/ is read."""
    out: Path
    """Directory that receives drift.json and drift.png."""
    dataset: str = "brownian,heuristic,recovery,aggressive"
    """Datasets under the first run's data/ whose held-out episodes are measured (a recipe)."""
    holdout: float = 0.05
    """Fraction of each dataset's episodes held out (the M stage's ``--holdout``)."""
    episodes: int = 16
    """Held-out episodes measured at most."""
    start: int = 50
    """Frame of each episode where the context starts (CarRacing zooms in during the first ~50 frames)."""
    context: int = 1
    """Real frames read before the open-loop dream."""
    horizons: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 700, 900)
    """Dream steps after the last real frame at which the error is measured."""


def as_world_model(vae: Any, dynamics: Any) -> JointWorldModel:
    """A run's V and M as one ``JointWorldModel``-shaped module (encode, decode, step) with a leading pool
    axis of size 1, as ``drift_metrics`` reads."""
    shell = JointWorldModel("mdnrnn", z_size=vae.z_size, hidden_size=8, num_mixtures=1, key=jr.key(0))
    model = eqx.tree_at(lambda m: (m.vae, m.dynamics), shell, (vae, dynamics))
    return jax.tree.map(lambda x: x[None] if eqx.is_array(x) else x, model)


@eqx.filter_jit
def _one_step(vae, dynamics, frames, actions, rewards):
    mu, _ = vae.encode(to_float(frames))
    _, out = teacher_forced(dynamics, mu[:-1], actions)
    nll = jax.vmap(mdn_nll)(out, mu[1:])
    return jnp.mean(nll), jnp.mean((out.reward - rewards) ** 2)


def one_step_errors(vae: Any, dynamics: Any, data: FrameSequences, episodes: int) -> dict[str, float]:
    """M's one-step predictions on the first ``episodes`` held-out episodes of ``data``, teacher-forced through its
    protocol step (``dream.teacher_forced``; any kind, the transformer with its KV cache): the mean NLL of V's
    encoding of each next real frame (nats per latent dimension) and the mean squared error of the predicted reward,
    averaged over episodes."""
    nlls, errs = [], []
    for e in np.flatnonzero(data.heldout)[:episodes]:
        o, a, n = data.obs_start[e], data.act_start[e], data.lengths[e]
        frames, actions = jnp.asarray(data.frames[o : o + n + 1]), jnp.asarray(data.actions[a : a + n])
        nll, err = _one_step(vae, dynamics, frames, actions, jnp.asarray(data.rewards[a : a + n]))
        nlls.append(float(nll))
        errs.append(float(err))
    return {"next_z_nll": float(np.mean(nlls)), "reward_mse": float(np.mean(errs))}


def main(args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(load_episodes(path), 1.0) for path, _ in recipe_paths(args.runs[0], args.dataset)]
    data = FrameSequences.of(groups, args.holdout, mirror=False)
    cfg = GossipConfig(
        models=1,
        drift_episodes=args.episodes,
        drift_start=args.start,
        drift_context=args.context,
        drift_horizons=args.horizons,
    )
    results = {}
    for run in args.runs:
        vae, _ = load_vae(run)
        dynamics, meta = load_dynamics(run, expected={"z_size": vae.z_size})
        kind = str(meta.get("kind"))
        m = drift_metrics(as_world_model(vae, dynamics), data, cfg)
        results[str(run)] = {"kind": kind, "horizons": m["horizons"], "episodes": m["episodes"],
                             "latent": m["latent"][0], "pixel": m["pixel"][0],
                             **one_step_errors(vae, dynamics, data, args.episodes)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(results, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run, r in results.items():
        for ax, key in zip(axes, ("latent", "pixel"), strict=True):
            ax.plot(r["horizons"], r[key], marker="o", label=f"{Path(run).name} ({r['kind']})")
    for ax, key in zip(axes, ("latent MSE (vs V's encoding)", "pixel MSE"), strict=True):
        ax.set(xscale="log", xlabel="open-loop horizon (steps after the last real frame)", ylabel=key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "drift.png", dpi=100)
    show = [h for h in (1, 10, 50, 100, 300, 900) if any(h in r["horizons"] for r in results.values())]
    print(
        "| run (kind) | episodes | next-z NLL | reward MSE | "
        + " | ".join(f"latent / pixel @ {h}" for h in show)
        + " |"
    )
    for run, r in results.items():
        cells = []
        for h in show:
            i = r["horizons"].index(h) if h in r["horizons"] else None
            cells.append("-" if i is None else f"{r['latent'][i]:.3f} / {r['pixel'][i]:.4f}")
        one_step = f"{r['next_z_nll']:.3f} | {r['reward_mse']:.3f}"
        print(f"| {Path(run).name} ({r['kind']}) | {r['episodes']} | {one_step} | " + " | ".join(cells) + " |")
    print(f"-> {args.out / 'drift.json'}, {args.out / 'drift.png'}")


if __name__ == "__main__":
    main(tyro.cli(Args))
