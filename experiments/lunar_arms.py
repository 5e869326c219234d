"""LunarLander's extra arms (issue 16), on a run made by ``pipeline.py --preset lunar_quick``.

``--part latent``: the MLP autoencoder trained at latent 16 and at latent 128 (``--latents``) on the source run's
data (each in ``OUT/zZ``, a run directory linking the source's ``data/``), scored on held-out observations: the
source's ``controller`` dataset (the agent's own episodes, which no V trained on) or, without one, every
observation of the source's datasets. Writes ``OUT/latent_sizes.json``: the reconstruction MSE of every observation
dimension (decoded posterior mean, in the dimension's own units and relative to its variance), and the wall time.

``--part v-only``: the paper's "V model only" agent (Table 1): a linear controller reading V's z alone, evolved by
CMA-ES in the dream of the source's M as it was before any Sim2Real2Sim iteration, then tested on the preset's test
seeds. ``OUT/v_only`` holds a copy of the source's V and trains that M again with the preset's config (the
source keeps only its last two M steps; training is deterministic in the seed and the step, so it is the same M).
The source is only read. Its results are ``OUT/v_only/eval/results.json``.

    uv run python experiments/lunar_arms.py --source runs/lunar_s0 --out runs/lunar_arms --part latent
    uv run python experiments/lunar_arms.py --source runs/lunar_s0 --out runs/lunar_arms --part v-only
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np
import tyro

from worldmodels.config import load_preset, record_config
from worldmodels.data import load_episodes
from worldmodels.run_dir import dataset_dir, env_spec, load_vae
from worldmodels.train import frames_of


@dataclass(frozen=True)
class Args:
    source: Path
    """A finished lunar_quick run directory (data/, vae/, rnn/)."""
    out: Path
    """Directory that receives the arms' run directories and results."""
    part: Literal["latent", "v-only"] = "latent"
    """Which arm to run."""
    preset: str = "lunar_quick"
    """Preset whose stage configs the arms use."""
    latents: tuple[int, ...] = (16, 128)
    """``--part latent``: the latent sizes compared."""
    observations: int = 20_000
    """``--part latent``: held-out observations scored (spread evenly)."""


def _linked_run(source: Path, run: Path) -> None:
    """A run directory sharing ``source``'s data and environment (its collect record)."""
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "data").exists():
        (run / "data").symlink_to(source.resolve() / "data")
    collect = json.loads((source / "config.json").read_text())["collect"]
    record_config(run, "collect", collect)


def latent_sizes(args: Args) -> None:
    from worldmodels.stages import run_vae

    preset = load_preset(args.preset)
    names = env_spec(args.source).obs_names
    held = "controller" if (dataset_dir(args.source, "controller") / "metadata.json").is_file() else None
    if held:
        obs = frames_of(load_episodes(dataset_dir(args.source, held)))
    else:
        obs = np.concatenate([frames_of(load_episodes(p)) for p in sorted((args.source / "data").glob("*/"))])
    obs = obs[np.linspace(0, len(obs) - 1, min(args.observations, len(obs))).astype(int)]
    table = {}
    for z in args.latents:
        run = args.out / f"z{z}"
        _linked_run(args.source, run)
        t0 = time.perf_counter()
        run_vae(run, dataclasses.replace(preset.vae, z_size=z))
        vae, meta = load_vae(run)
        mu, _ = vae.encode(jnp.asarray(obs))
        recon = np.asarray(vae.decode(mu))
        mse = ((recon - obs) ** 2).mean(0)
        relative = mse / np.maximum(obs.var(0), 1e-8)
        table[f"z{z}"] = {"z_size": z, "step": meta["step"], "seconds": time.perf_counter() - t0,
                          "mse": dict(zip(names, mse.tolist(), strict=True)),
                          "relative_mse": dict(zip(names, relative.tolist(), strict=True)),
                          "mean_relative_mse": float(relative.mean())}  # fmt: skip
    result = {"held_out": held or "training data", "observations": len(obs), **table}
    (args.out / "latent_sizes.json").write_text(json.dumps(result, indent=2))
    print(f"{len(obs)} observations of {held or 'the training data'}; MSE per dimension; mean MSE / variance:")
    print(f"{'V':<6}" + "".join(f"{n:>9}" for n in names) + f"{'rel.':>8}")
    for name, r in table.items():
        print(f"{name:<6}" + "".join(f"{r['mse'][n]:>9.1e}" for n in names) + f"{r['mean_relative_mse']:>8.3f}")


def v_only(args: Args) -> None:
    from worldmodels.stages import run_dream, run_rnn, run_test

    preset = load_preset(args.preset)
    run = args.out / "v_only"
    _linked_run(args.source, run)
    if not (run / "vae").exists():
        shutil.copytree(args.source / "vae" / "ckpt", run / "vae" / "ckpt")
    run_rnn(run, preset.rnn)
    run_dream(run, dataclasses.replace(preset.dream, controller_inputs="z"))
    run_test(run, preset.test)


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    args.out.mkdir(parents=True, exist_ok=True)
    (latent_sizes if args.part == "latent" else v_only)(args)


if __name__ == "__main__":
    main()
