"""Vision-model variants on the same data (issue 15): the beta of a beta-VAE and the residual architecture.

Each variant is a run directory with a VAE trained by ``train_vae.py`` (``--beta``, ``--arch``) on the same
frames; this script scores every run's V on the same held-out frames -- frames of a dataset no V trained on
(default ``controller``, the agent's own on-policy episodes, the frames V meets when the agent drives) -- and
writes ``OUT/vae_variants.json`` and a table: reconstruction error (mean squared error per pixel and channel,
images in [0, 1], and the paper's summed L2 per frame), KL(q(z|x) || N(0, I)) in nats per frame (before free
bits), the number of active latent dimensions (posterior-mean variance over the frames > 0.01, Burda et al. 2016),
and a grid of reconstructions ``OUT/recon.png`` (rows: real, then each run).

    uv run python experiments/vae_variants.py --runs runs/vae/beta0.5 runs/vae/beta1 runs/vae/beta4 \\
        runs/vae/residual --data runs/quick_s0/data --out runs/vae
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tyro

from worldmodels.data import load_episodes
from worldmodels.losses import kl_diag_normal
from worldmodels.models.vae import to_float
from worldmodels.run_dir import dataset_dir, load_vae
from worldmodels.train import frames_of


@dataclass(frozen=True)
class Args:
    runs: tuple[Path, ...]
    """Run directories with a trained vae/ckpt each."""
    data: Path
    """A run's data/ folder holding the held-out dataset."""
    out: Path
    """Directory that receives vae_variants.json and recon.png."""
    dataset: str = "controller"
    """Dataset under DATA whose frames are scored (one no variant trained on)."""
    frames: int = 4000
    """Frames scored, spread evenly over the dataset's episodes."""


@eqx.filter_jit
def _scores(vae, x):
    mu, logvar = vae.encode(to_float(x))
    recon = vae.decode(mu)
    sq = (recon - to_float(x)) ** 2
    return jnp.mean(sq, axis=(1, 2, 3)), jnp.sum(sq, axis=(1, 2, 3)), jax.vmap(kl_diag_normal)(mu, logvar), mu


def score(vae, frames: np.ndarray, chunk: int = 500) -> dict:
    """Reconstruction (from the posterior mean), KL and active units of ``vae`` on uint8 frames (N, 64, 64, 3)."""
    parts = [_scores(vae, jnp.asarray(frames[i : i + chunk])) for i in range(0, len(frames), chunk)]
    mse, l2, kl, mu = (np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(4))
    return {"mse_per_pixel": float(mse.mean()), "l2_per_frame": float(l2.mean()), "kl_nats": float(kl.mean()),
            "active_units": int((mu.var(axis=0) > 0.01).sum()), "z_size": int(mu.shape[1])}  # fmt: skip


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    episodes = load_episodes(dataset_dir(args.data.parent, args.dataset))
    frames = frames_of(episodes)
    frames = frames[np.linspace(0, len(frames) - 1, min(args.frames, len(frames))).astype(int)]
    args.out.mkdir(parents=True, exist_ok=True)
    table, grid = {}, [frames[:: max(1, len(frames) // 8)][:8]]
    for run in args.runs:
        vae, meta = load_vae(run)
        table[run.name] = {**score(vae, frames), "arch": vae.arch, "step": meta["step"],
                           "params": sum(x.size for x in jax.tree.leaves(eqx.filter(vae, eqx.is_array)))}  # fmt: skip
        grid.append(np.asarray(vae.decode(vae.encode(to_float(jnp.asarray(grid[0])))[0]) * 255).astype(np.uint8))
    (args.out / "vae_variants.json").write_text(
        json.dumps({"dataset": args.dataset, "frames": len(frames), **table}, indent=2)
    )
    import imageio.v3 as iio

    iio.imwrite(args.out / "recon.png", np.concatenate([np.concatenate(list(row), axis=1) for row in grid]))
    print(f"{len(frames)} frames of {args.dataset}:")
    print(f"{'run':<14}{'arch':<10}{'MSE/pixel':>11}{'L2/frame':>10}{'KL nats':>9}{'active':>8}")
    for name, r in table.items():
        print(f"{name:<14}{r['arch']:<10}{r['mse_per_pixel']:>11.5f}{r['l2_per_frame']:>10.1f}{r['kl_nats']:>9.1f}"
              f"{r['active_units']:>5}/{r['z_size']}")  # fmt: skip


if __name__ == "__main__":
    main()
