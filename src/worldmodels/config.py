"""Frozen configuration dataclasses for every stage, and the named presets in ``configs/``.

Every field has a docstring; tyro turns it into the ``--help`` of the scripts. The defaults are the
paper's sizes (Ha & Schmidhuber 2018, "World Models", Appendix A); ``configs/*.json`` override them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
"""Where the named presets live (``configs/NAME.json`` next to the scripts)."""


@dataclass(frozen=True)
class CollectConfig:
    """Rollout collection with the paper's random policy (Sec. 3.1: 10,000 random rollouts)."""

    episodes: int = 10_000
    """Number of episodes to collect (finished episodes already on disk count towards it)."""
    max_steps: int = 1000
    """Episode length cap in environment steps (CarRacing-v3's own limit is 1000)."""
    workers: int = 0
    """Worker processes stepping environments; 0 means one per CPU core."""
    seed: int = 0
    """Episode i is reset with seed ``seed + i``; evaluation uses seeds far from these."""
    policy: str = "brownian"
    """Collection policy: ``brownian`` (smooth random actions, the paper's random policy)."""
    brownian_sigma: float = 0.3
    """Per-step standard deviation of the brownian action increments (action units)."""
    brownian_theta: float = 0.5
    """Mean-reversion rate of the brownian actions towards ``brownian_mean`` per step."""
    brownian_mean: tuple[float, float, float] = (0.0, 0.35, 0.0)
    """Long-run mean of (steer, gas, brake) for the brownian policy; a gas bias makes the car move.
    The defaults keep the car on the road about half of its first 400 steps."""


@dataclass(frozen=True)
class VAEConfig:
    """Vision model V: the paper's convolutional VAE (Appendix A.1) and its training."""

    dataset: str = "brownian"
    """Dataset under RUN_DIR/data/ to train on."""
    z_size: int = 32
    """Latent size Z."""
    kl_tolerance: float = 0.5
    """Free bits per latent dimension: the KL term is max(KL, kl_tolerance * z_size) nats (Appendix A.1)."""
    learning_rate: float = 1e-4
    """Adam learning rate."""
    batch_size: int = 100
    """Frames per update."""
    steps: int = 20_000
    """Number of gradient updates (frames are drawn uniformly from the whole dataset)."""
    checkpoint_every: int = 1000
    """Save a checkpoint every this many updates (and at the end)."""
    log_every: int = 100
    """Write a metrics.jsonl line every this many updates."""
    seed: int = 0
    """Seed of initialisation, batch order and the reparameterisation noise."""


@dataclass(frozen=True)
class RNNConfig:
    """Memory model M: the paper's MDN-RNN (Appendix A.2) with reward and done heads."""

    dataset: str = "brownian"
    """Dataset under RUN_DIR/data/ whose episodes are encoded into latent sequences."""
    hidden_size: int = 256
    """LSTM units."""
    num_mixtures: int = 5
    """Gaussian components K of the mixture over z_{t+1}."""
    seq_len: int = 1000
    """Length of the training windows in steps (episodes are cut into windows from their start)."""
    batch_size: int = 32
    """Sequences per update."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    steps: int = 4000
    """Number of gradient updates."""
    reward_weight: float = 1.0
    """Weight of the reward loss in the total."""
    reward_overpredict_weight: float = 5.0
    """Asymmetric reward MSE: squared errors where the prediction exceeds the truth are multiplied by this."""
    done_weight: float = 1.0
    """Weight of the done (termination) BCE in the total."""
    checkpoint_every: int = 500
    """Save a checkpoint every this many updates (and at the end)."""
    log_every: int = 50
    """Write a metrics.jsonl line every this many updates."""
    seed: int = 0
    """Seed of initialisation, batch order and the latent re-sampling."""


@dataclass(frozen=True)
class DreamConfig:
    """Controller C evolved with CMA-ES inside the MDN-RNN's dream."""

    population: int = 64
    """CMA-ES population size P (candidates per generation)."""
    rollouts: int = 16
    """Dream rollouts R per candidate; fitness is their mean return."""
    dream_steps: int = 1000
    """Length T of each dream rollout in steps."""
    temperature: float = 1.0
    """Dream temperature tau: mixture logits / tau and sigma * sqrt(tau) (Sec. 4, "Cheating the World Model")."""
    generations: int = 200
    """Number of CMA-ES generations."""
    sigma_init: float = 0.1
    """Initial CMA-ES step size."""
    done_threshold: float = 0.5
    """A dream ends when the done head's probability exceeds this; later rewards are masked."""
    eval_every: int = 0
    """Score the best candidate in the real environment every this many generations (0 = never)."""
    eval_episodes: int = 4
    """Real episodes for those periodic checks."""
    eval_max_steps: int = 1000
    """Episode length cap of those periodic checks."""
    checkpoint_every: int = 10
    """Save the CMA-ES mean, step size and best controller every this many generations."""
    seed: int = 0
    """Seed of CMA-ES and the dream keys."""


@dataclass(frozen=True)
class TestConfig:
    """Real-environment evaluation of V + M + C."""

    episodes: int = 100
    """Real episodes to run."""
    workers: int = 0
    """Environment worker processes; 0 means one per CPU core."""
    seed: int = 1_000_000
    """First evaluation seed; collection uses seeds from 0, so these were never seen in training."""
    max_steps: int = 1000
    """Episode length cap in environment steps."""
    video: bool = False
    """Record side-by-side mp4 videos (real frame | VAE reconstruction | MDN-RNN prediction)."""
    video_episodes: int = 1
    """How many of the episodes to record when ``video`` is on."""
    video_fps: int = 30
    """Frames per second of the videos."""


@dataclass(frozen=True)
class Preset:
    """A named bundle of every stage's config, loaded from ``configs/NAME.json``."""

    name: str = "paper"
    """Preset name."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    rnn: RNNConfig = field(default_factory=RNNConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    test: TestConfig = field(default_factory=TestConfig)


_SECTIONS = {c.__name__: c for c in (CollectConfig, VAEConfig, RNNConfig, DreamConfig, TestConfig)}
"""The stage configs a preset nests, by the type name its fields carry (annotations are strings here)."""


def _merge(cls: type, overrides: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from its defaults and ``overrides``; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in overrides.items():
        ftype = names[key].type
        sub = _SECTIONS.get(str(ftype))
        if sub is not None:
            kwargs[key] = _merge(sub, value, f"{where}.{key}")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def available_presets() -> list[str]:
    """Names of the presets in ``configs/``."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))


def load_preset(name: str) -> Preset:
    """Load ``configs/NAME.json`` on top of the paper defaults.

    Raises:
        ValueError: if the preset does not exist or names a field that no config has.
    """
    path = CONFIGS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}: no {path}; available: {', '.join(available_presets())}")
    with path.open() as f:
        data = json.load(f)
    data["name"] = name
    return _merge(Preset, data, str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def record_config(run_dir: Path, stage: str, cfg: Any) -> None:
    """Merge the resolved config of ``stage`` into ``run_dir/config.json`` (the run's record)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[stage] = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
