"""Frozen configuration dataclasses for every stage, and the named presets in ``configs/``.

Every field has a docstring; tyro turns it into the ``--help`` of the scripts. The defaults are the
paper's sizes (Ha & Schmidhuber 2018, "World Models", Appendix A); ``configs/*.json`` override them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

OU_THETA = 0.5
"""Mean reversion per step of the Ornstein-Uhlenbeck action noise, wherever it is added: the ``controller``
collection policy and the road (``policies.ou_noise_step``) and the dream (``dream.ou_path``)."""

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
"""Where the named presets live (``configs/NAME.json`` next to the scripts)."""


def _check_ranges(cfg: Any, section: str, rules: dict[str, str]) -> None:
    """Refuse a config value outside its range, with one line naming the field, the value and what is allowed.

    ``rules`` maps a field name to one of ``">= N"``, ``"> N"``, ``"in [a, b]"``, ``"in [a, b)"``, ``"in (a, b]"``.

    Raises:
        ValueError: ``"SECTION.FIELD must be RULE, got VALUE"`` for the first field that breaks its rule.
    """
    for name, rule in rules.items():
        value = getattr(cfg, name)
        if not isinstance(value, int | float):  # e.g. a string from a preset file: compared below, it would raise
            raise ValueError(f"{section}.{name} must be a number {rule}, got {value!r}")
        op, _, bound = rule.partition(" ")
        if op == ">=":
            ok = value >= float(bound)
        elif op == ">":
            ok = value > float(bound)
        else:  # "in" with an interval
            lo, hi = (float(x) for x in bound.strip("[]()").split(","))
            ok = (lo <= value if bound[0] == "[" else lo < value) and (value <= hi if bound[-1] == "]" else value < hi)
        if not ok:
            raise ValueError(f"{section}.{name} must be {rule}, got {value!r}")


COLLECTION_POLICIES = ("brownian", "random_controller", "heuristic", "recovery", "aggressive", "controller")
"""Collection policies by name (``worldmodels.policies`` implements them); the index also sets each policy's
block of reset seeds (``policies.seed_offset``)."""

SEED_BLOCK = 20_000
"""Reset seeds of collection policy number p start at ``CollectConfig.seed + p * SEED_BLOCK``."""


def _check_policy(name: str, where: str, spec: Any = None) -> None:
    """Refuse an unknown collection policy name, or one that does not apply to the environment ``spec`` (an
    ``env.EnvSpec``), in one line naming ``where`` and the names that would do."""
    if name not in COLLECTION_POLICIES:
        raise ValueError(f"{where}: unknown collection policy {name!r}; available: {', '.join(COLLECTION_POLICIES)}")
    if spec is not None and name not in spec.policies:
        names = ", ".join(spec.policies)
        raise ValueError(f"{where}: policy {name!r} does not apply to {spec.name}; available: {names}")


@dataclass(frozen=True)
class CollectConfig:
    """Rollout collection (Sec. 3.1 of the paper: 10,000 random rollouts) with a choice of driving policies."""

    env: str = "carracing"
    """Environment (``env.ENVS``): ``carracing`` (CarRacing-v3, 64x64 frames, the paper's) or ``lunarlander``
    (LunarLander-v3 continuous, an 8-dim vector observation). Recorded with the run: every later stage reads it
    (``run_dir.env_spec``) to choose V's kind, the action squash and the environment it tests in."""
    episodes: int = 10_000
    """Number of episodes to collect (finished episodes already on disk count towards it)."""
    max_steps: int = 1000
    """Episode length cap in environment steps (CarRacing-v3's own limit is 1000)."""
    workers: int = 0
    """Worker processes stepping environments; 0 means one per CPU core."""
    seed: int = 0
    """Episode i of policy p is reset with seed ``seed + offset(p) + i`` (offsets 0, 20000, 40000, ... in the
    order of the policies below), so every policy drives its own tracks; evaluation uses seeds far from these."""
    policy: str = "brownian"
    """Collection policy: ``brownian`` (smooth random actions), ``random_controller`` (the paper's random linear
    controller), ``heuristic`` (pure pursuit on the track's tiles; on LunarLander, Gymnasium's heuristic lander),
    ``recovery`` (heuristic pushed off the road now and then), ``aggressive`` (heuristic entering corners too fast),
    ``controller`` (a trained agent plus exploration noise). LunarLander has ``brownian``, ``heuristic`` and
    ``controller``. The dataset is written to RUN_DIR/data/POLICY."""
    mix: str = ""
    """Mixed collection, ``policy:episodes,...`` (e.g. ``brownian:60,heuristic:30``): each policy is collected
    into its own dataset with that many episodes. Empty: ``episodes`` episodes of ``policy``."""
    brownian_sigma: float = 0.3
    """Per-step standard deviation of the brownian action increments (action units)."""
    brownian_theta: float = 0.5
    """Mean-reversion rate of the brownian actions towards ``brownian_mean`` per step."""
    brownian_mean: tuple[float, ...] = (0.0, 0.35, 0.0)
    """Long-run mean of the brownian actions, one number per action dimension: CarRacing's (steer, gas, brake),
    where a gas bias makes the car move (the defaults keep it on the road about half of its first 400 steps);
    LunarLander's (main, lateral) engine."""
    random_controller_scale: float = 1.0
    """``random_controller``: each episode draws a weight scale s ~ U(0, this) and weights ~ N(0, s^2 / inputs)
    on a 16x16 grey version of the frame (the paper's code drew stdev ~ U(0, 0.01) for its VAE's z)."""
    recovery_every: float = 120.0
    """``recovery``: mean number of steps between perturbations (geometric waiting time)."""
    recovery_steps: int = 20
    """``recovery``: length in steps of a perturbation (a hard turn with gas) that pushes the car off the road."""
    controller_run: str = ""
    """``controller``: run directory whose vae/, rnn/ and controller/ checkpoints drive; empty = this run."""
    controller_noise: float = 0.2
    """``controller``: standard deviation of the smooth (Ornstein-Uhlenbeck) noise added to the agent's actions."""
    heuristic_noise: float = 0.0
    """``heuristic`` on LunarLander (Gymnasium's own heuristic lander): each episode draws a noise scale
    s ~ U(0, this) and adds N(0, s^2) to every action, so the data shows wobbly descents and crashes as well as
    clean landings."""

    def __post_init__(self):
        _check_ranges(
            self,
            "collect",
            {
                "episodes": ">= 1",
                "max_steps": ">= 1",
                "workers": ">= 0",
                "brownian_sigma": ">= 0",
                "brownian_theta": "in [0, 1]",
                "random_controller_scale": ">= 0",
                "recovery_every": "> 0",
                "recovery_steps": ">= 1",
                "controller_noise": ">= 0",
                "heuristic_noise": ">= 0",
            },
        )
        from worldmodels.env import get_spec

        try:
            spec = get_spec(self.env)
        except ValueError as err:
            raise ValueError(f"collect.env: {err}") from None
        if len(self.brownian_mean) != spec.action_size:
            raise ValueError(
                f"collect.brownian_mean {tuple(self.brownian_mean)} has {len(self.brownian_mean)} entries; "
                f"{self.env} has {spec.action_size} action dimensions: use a preset made for it (e.g. --preset "
                f"lunar_quick) or pass --brownian-mean with {spec.action_size} numbers"
            )
        _check_policy(self.policy, "collect.policy", spec)
        if self.mix:
            for name, count in parse_recipe(self.mix, "episode count"):
                _check_policy(name, f"collect.mix {self.mix!r}", spec)
                if count != int(count):
                    raise ValueError(f"collect.mix {self.mix!r}: the episode count of {name!r} must be a whole number")


@dataclass(frozen=True)
class VAEConfig:
    """Vision model V: the paper's convolutional VAE (Appendix A.1) and its training."""

    dataset: str = "brownian"
    """Datasets under RUN_DIR/data/ to train on, as a recipe ``name[:weight],...`` (e.g.
    ``brownian:2,heuristic:1``): a batch draws each frame from dataset d with probability weight_d / sum."""
    mirror: bool = False
    """Mirror augmentation: flip a random half of every batch left-right (CarRacing is symmetric)."""
    z_size: int = 32
    """Latent size Z."""
    arch: Literal["conv", "residual"] = "conv"
    """Architecture: ``conv`` (the paper's four stride-2 convolutions each way) or ``residual`` (a residual block of
    two 3x3 convolutions after each of the first three, in the encoder and the decoder; ``models.vae``)."""
    mlp_hidden: tuple[int, ...] = (2048, 2048, 1024)
    """Vector observations (LunarLander): the MLP autoencoder's encoder widths, the decoder mirrors them
    (``models.mlp_autoencoder``; frames ignore this)."""
    variational: bool = True
    """Vector observations: the MLP autoencoder's encoder outputs a posterior (mu, log-variance), trained with the
    KL term, as the ConvVAE; ``--vae.no-variational`` makes it a plain autoencoder (MSE only, z = mu)."""
    kl_tolerance: float = 0.5
    """Free bits per latent dimension: the KL term is max(KL, kl_tolerance * z_size) nats (Appendix A.1)."""
    beta: float = 1.0
    """Weight of the KL term in the loss, the beta of a beta-VAE (Higgins et al. 2017, Eq. 4): 1 is the paper's
    plain VAE; above 1 trades reconstruction for a latent closer to the prior. Applied after the free bits."""
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

    def __post_init__(self):
        _check_ranges(
            self,
            "vae",
            {
                "z_size": ">= 1",
                "kl_tolerance": ">= 0",
                "beta": ">= 0",
                "learning_rate": "> 0",
                "batch_size": ">= 1",
                "steps": ">= 1",
                "checkpoint_every": ">= 1",
                "log_every": ">= 1",
            },
        )
        try:  # a malformed recipe is refused here, not mid-stage
            parse_recipe(self.dataset)
        except ValueError as err:
            raise ValueError(f"vae.dataset: {err}") from None
        if not self.mlp_hidden or any(not isinstance(w, int) or w < 1 for w in self.mlp_hidden):
            raise ValueError(f"vae.mlp_hidden must be one or more positive layer widths, got {self.mlp_hidden!r}")

    @property
    def loss_scales(self) -> dict[str, float]:
        """Scale of each term of ``losses.vae_loss`` in the total: the paper's plain sum (Appendix A.1), with the KL
        weighted by ``beta`` (a beta-VAE, Higgins et al. 2017, Eq. 4); 0 for a non-variational autoencoder."""
        return {"recon": 1.0, "kl": self.beta if self.variational else 0.0}


@dataclass(frozen=True)
class RNNConfig:
    """Memory model M on the VAE's latent sequences: the paper's MDN-RNN (Appendix A.2) with reward and done heads,
    the same with a GRU (``kind gru``), an RSSM (``kind rssm``; Hafner et al. 2019, 2023) or a causal transformer
    (``kind transformer``)."""

    kind: Literal["mdnrnn", "gru", "rssm", "transformer"] = "mdnrnn"
    """Dynamics kind this stage trains into RUN_DIR/rnn/ckpt: ``mdnrnn`` (LSTM + mixture of Gaussians, the paper),
    ``gru`` (the same mixture, reward and done heads on a GRU, Cho et al. 2014: ``models.transition``),
    ``rssm`` (GRU deterministic state + stochastic latent with prior and posterior, ``models.rssm``) or
    ``transformer`` (causal transformer with a sliding attention window + the MDN-RNN's mixture head,
    ``models.transformer``). Every later stage runs any of them."""
    dataset: str = "brownian"
    """Datasets under RUN_DIR/data/ whose episodes are encoded into latent sequences, as a recipe
    ``name[:weight],...``: a batch draws each sequence from dataset d with probability weight_d / sum."""
    mirror: bool = False
    """Mirror augmentation: also encode the left-right flipped frames with steer negated; half of the
    sequences of a batch are mirrored episodes."""
    holdout: float = 0.05
    """Fraction of each dataset's episodes (its last ones, at least one when it has two or more) kept out of
    training; the reward delusion diagnostic is measured on them."""
    hidden_size: int = 256
    """LSTM units (the GRU's units, also the RSSM's; the transformer's d_model, which must be divisible by
    ``heads``)."""
    num_mixtures: int = 5
    """Gaussian components K of the mixture over z_{t+1}."""
    layers: int = 2
    """transformer only: number of decoder blocks (causal self-attention + MLP)."""
    heads: int = 4
    """transformer only: attention heads; ``hidden_size`` must be divisible by it."""
    context: int = 64
    """transformer only: attention window in steps: each step attends to itself and the ``context`` - 1 before it
    (the size of its KV cache)."""
    obs: Literal["latent", "pixels"] = "latent"
    """RSSM only: what it observes. ``latent``: the frozen VAE's latents (cheap; the 2-core CPU path). ``pixels``:
    the frames, end to end: the VAE's conv encoder and decoder are trained together with the RSSM (its losses
    reach the encoder; the decoder also reconstructs the frame from the RSSM's state, Dreamer's image loss),
    starting from the VAE stage's V; the fine-tuned V is written to RUN_DIR/vae/ckpt as a new step (the GPU
    path: each update encodes and decodes every frame of its windows)."""
    latent: Literal["gaussian", "categorical"] = "gaussian"
    """RSSM only: the stochastic latent s_t, a diagonal Gaussian (PlaNet, DreamerV1) or ``stoch`` categoricals of
    ``classes`` classes with straight-through gradients (DreamerV2/V3)."""
    stoch: int = 32
    """RSSM only: size of the Gaussian latent, or number of categorical groups."""
    classes: int = 32
    """RSSM only: classes per categorical group."""
    units: int = 256
    """RSSM only: hidden units of its prior, posterior, decoder and head MLPs."""
    free_nats: float = 1.0
    """RSSM only: free bits, the KL terms are not pushed below this many nats (DreamerV3: 1)."""
    kl_dyn_weight: float = 1.0
    """RSSM only: scale of the dynamics KL, max(free, KL(sg(q) || p)) (DreamerV3 Eq. 5)."""
    kl_rep_weight: float = 0.1
    """RSSM only: scale of the representation KL, max(free, KL(q || sg(p))) (DreamerV3 Eq. 5)."""
    seq_len: int = 1000
    """Length L of the training windows in steps (each window starts from a zero state at its offset)."""
    windows: Literal["inside", "padded"] = "inside"
    """How windows are cut from an episode of T steps. ``inside``: each lies inside its episode, from a uniform
    offset in [0, T - L] (the paper's whole episodes when L >= T). An episode's last step, its termination, is then
    in 1 of those T - L + 1 windows and a middle step in up to L of them: M sees terminations about L times less
    often than other steps. ``padded``: offsets uniform in [0, T - 1], the part of a window past the episode's end
    padded and masked, so every step from L - 1 on, the last included, is in L windows (about L / 2T of each batch
    is masked padding). Matters where episodes are much longer than L and end in events M must predict
    (LunarLander's landings and crashes); with L >= T both give whole episodes from their start."""
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
    terminal_weight: float = 1.0
    """MDN-RNN and transformer: how many times a terminal step (done = 1, one per episode) counts in the reward and
    done losses, against the rarity of terminations (LunarLander's landing and crash are such steps, with their
    +-100 rewards). 1: every step alike."""
    checkpoint_every: int = 500
    """Save a checkpoint every this many updates (and at the end)."""
    log_every: int = 50
    """Write a metrics.jsonl line every this many updates."""
    seed: int = 0
    """Seed of initialisation, batch order and the latent re-sampling."""
    ensemble: int = 1
    """Number of M trained on the same data (``mdnrnn`` or ``transformer`` on latents): the run's own in RUN_DIR/rnn/
    (seed ``seed``) and members 1 .. ensemble - 1 in RUN_DIR/rnn/members/K/ (seed ``seed + K``: their own
    initialisation and batch order). CMA-ES deals its dreams over ``dream.ensemble`` of them (with
    ``dream.pessimism``); the agent acts with the run's own M. 1: one M (the paper)."""
    bootstrap: bool = False
    """With ``ensemble`` > 1: members 1 .. ensemble - 1 each train on a bootstrap resample of the training episodes
    (PETS, Chua et al. 2018: as many episodes as there are drawn with replacement, seeded by the member's seed; an
    episode's sampling weight is multiplied by how often it was drawn), so that the members differ in data as well as
    in initialisation; the run's own M (the agent's memory) trains on every episode. False: all on the same data."""

    def __post_init__(self):
        _check_ranges(
            self,
            "rnn",
            {
                "holdout": "in [0, 1)",
                "hidden_size": ">= 1",
                "num_mixtures": ">= 1",
                "seq_len": ">= 1",
                "batch_size": ">= 1",
                "learning_rate": "> 0",
                "grad_clip": "> 0",
                "steps": ">= 1",
                "reward_weight": ">= 0",
                "reward_overpredict_weight": ">= 0",
                "done_weight": ">= 0",
                "terminal_weight": "> 0",
                "checkpoint_every": ">= 1",
                "log_every": ">= 1",
                "stoch": ">= 1",
                "classes": ">= 2",
                "units": ">= 1",
                "free_nats": ">= 0",
                "kl_dyn_weight": ">= 0",
                "kl_rep_weight": ">= 0",
                "layers": ">= 1",
                "heads": ">= 1",
                "context": ">= 1",
                "ensemble": ">= 1",
            },
        )
        if self.kind not in DYNAMICS_KINDS:
            raise ValueError(f"rnn.kind must be one of {', '.join(DYNAMICS_KINDS)}, got {self.kind!r}")
        if self.kind == "transformer" and self.hidden_size % self.heads:
            raise ValueError(
                f"rnn.hidden_size (the transformer's d_model) must be divisible by rnn.heads, got --hidden-size "
                f"{self.hidden_size} and --heads {self.heads}"
            )
        if self.latent not in ("gaussian", "categorical"):
            raise ValueError(f"rnn.latent must be 'gaussian' or 'categorical', got {self.latent!r}")
        if self.obs not in ("latent", "pixels"):
            raise ValueError(f"rnn.obs must be 'latent' or 'pixels', got {self.obs!r}")
        if self.windows not in ("inside", "padded"):
            raise ValueError(f"rnn.windows must be 'inside' or 'padded', got {self.windows!r}")
        if self.ensemble > 1 and self.kind == "rssm":
            raise ValueError(
                "rnn.ensemble > 1 trains MDN-RNNs, MDN-GRUs or transformers; use --kind mdnrnn with --ensemble"
            )
        if self.obs == "pixels" and self.kind != "rssm":
            raise ValueError("rnn.obs 'pixels' trains an RSSM end to end; add --kind rssm (or use train_rssm.py)")
        try:  # a malformed recipe is refused here, not mid-stage
            parse_recipe(self.dataset)
        except ValueError as err:
            raise ValueError(f"rnn.dataset: {err}") from None

    @property
    def loss_scales(self) -> dict[str, float]:
        """Scale of each loss term in the total: ``losses.rnn_step_loss``'s for the MDN-RNN, the GRU and the
        transformer, or ``losses.rssm_sequence_loss``'s for the RSSM (``reward_weight``, ``done_weight`` and the two
        KL weights)."""
        if self.kind == "rssm":
            return {"obs": 1.0, "reward": self.reward_weight, "cont": self.done_weight,
                    "kl_dyn": self.kl_dyn_weight, "kl_rep": self.kl_rep_weight}  # fmt: skip
        return {"mdn_nll": 1.0, "reward": self.reward_weight, "done": self.done_weight}


DYNAMICS_KINDS = ("mdnrnn", "gru", "rssm", "transformer")
"""The dynamics kinds ``train_rnn.py --kind`` trains."""


@dataclass(frozen=True)
class DreamConfig:
    """Controller C learned inside the dream of M (any dynamics kind): evolved with CMA-ES (the paper), or an
    actor-critic (``learner``)."""

    learner: Literal["cmaes", "actor-critic"] = "cmaes"
    """What learns in the dream: ``cmaes`` evolves the paper's linear controller (the fields below); ``actor-critic``
    trains a Dreamer actor and critic on imagined lambda-returns (the ``actor_critic`` section; it reads
    ``temperature`` and ``seed`` from here)."""
    population: int = 64
    """CMA-ES population size P (candidates per generation)."""
    rollouts: int = 16
    """Dream rollouts R per candidate; fitness is their mean return."""
    dream_steps: int = 1000
    """Length T of each dream rollout in steps."""
    temperature: float = 1.0
    """Dream temperature tau: mixture logits / tau and sigma * sqrt(tau) (Sec. 4, "Cheating the World Model")."""
    action_noise: float = 0.0
    """Standard deviation of the smooth (Ornstein-Uhlenbeck, theta 0.5) noise added to C's actions in every dream,
    clipped to the action box (``dream.ou_path``): the fitness is then the return of the noisy policy that
    ``test.action_noise`` drives on the road. 0: the paper's deterministic controller."""
    generations: int = 200
    """Number of CMA-ES generations."""
    sigma_init: float = 0.1
    """Initial CMA-ES step size."""
    done_threshold: float = 0.5
    """A dream ends when the done head's probability exceeds this; later rewards are masked (``termination``
    ``threshold``)."""
    termination: Literal["threshold", "expected"] = "threshold"
    """How M's done head ends a dream. ``threshold``: the dream ends at the first step whose done probability p_t
    exceeds ``done_threshold``. ``expected``: it never ends, and the reward of step t is weighted by the probability
    that the episode is still running, prod_{k<t} (1 - p_k): the expected return under M's termination hazard
    (DreamerV3's continue-weighted return). An event M can only time roughly (a lander that comes to rest ends its
    episode once its body falls asleep) gets a done probability of a few percent per step, never the threshold, so a
    thresholded dream goes on paying that event's spread-out reward for as long as it lasts."""
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
    mid_episode_starts: float = 0.0
    """Fraction of dreams that start at a real frame inside an episode, with M's recurrent state warmed up on
    the real frames and actions before it (``dream.mid_episode_starts``), instead of at an episode's first
    frame. 0 (the paper): every dream starts on the start line."""
    start_pool: int = 1024
    """With ``mid_episode_starts`` > 0: the number of start frames drawn once, from ``seed``, before CMA-ES
    (that fraction of them uniformly over every frame of the training episodes, the rest first frames);
    each dream starts at one of them, drawn uniformly."""
    controller_inputs: Literal["zh", "z"] = "zh"
    """What the linear controller reads: ``zh`` (V's z and M's hidden state h, the paper's agent) or ``z`` (V's
    latent alone, the paper's "V model only" agent of Table 1, still evolved in M's dream)."""
    controller_units: int = 0
    """CMA-ES only: tanh units of a hidden layer between the controller's inputs and its actions
    (``models.controller.MLPController``; Table 1 of the paper reports the "V model only" agent with one). 0: the
    paper's linear controller. The flat vector CMA-ES searches grows to U * (I + 1) + A * (U + 1) for I inputs."""
    step_size_adaptation: Literal["csa", "tpa"] = "tpa"
    """CMA-ES step-size rule: ``tpa`` (two-point adaptation, Hansen et al. 2014: the two first samples of a
    generation mirror the last mean shift, and their ranks grow or shrink sigma) or ``csa`` (cumulative
    step-size adaptation, Hansen 2016, Sec. 4). TPA is the default at every size: on a noisy ill-conditioned
    quadratic of the paper controller's 867 dimensions it did as well as CSA or better
    (``experiments/cma_step_size.py``), and pycma picks it itself from 300 parameters on. Recorded in
    es_state.npz; a run continues with the rule it started with."""
    keep: Literal["best", "mean"] = "best"
    """CMA-ES only: the controller the stage keeps. ``best``: the generation best or mean with the highest single
    re-score (R dreams) over the run; the highest of many noisy scores, so it is partly chosen by luck (a
    winner's curse: 463 at selection, 427 re-scored on 512 dreams, ``experiments/honest_dream_search.py``).
    ``mean``: CMA-ES's mean at the last generation, which averages the population's noise away (the solution
    estool, the paper's code, reports)."""
    ensemble: int = 1
    """CMA-ES only: the number K of M the dreams are dealt over, the run's own and members 1 .. K - 1 of
    RUN_DIR/rnn/members/ (trained by ``rnn.ensemble`` >= K); dream r runs in member r mod K, where the run's M only
    tracks the world for the controller's h (``dream.ensemble_generation_returns``). First-frame starts only, and
    ``rollouts`` >= K. 1: the run's M alone (the paper)."""
    pessimism: float = 0.0
    """With ``ensemble`` > 1: a candidate's fitness is the mean over members of its mean dream return minus this
    many standard deviations of those member means (a lower confidence bound, ``dream.ensemble_fitness``).
    0: the mean of the member means."""

    def __post_init__(self):
        _check_ranges(
            self,
            "dream",
            {"population": ">= 2", "rollouts": ">= 1", "dream_steps": ">= 1", "temperature": "> 0",
             "generations": ">= 1", "sigma_init": "> 0", "done_threshold": "in (0, 1]", "eval_every": ">= 0",
             "eval_episodes": ">= 1", "eval_max_steps": ">= 1", "checkpoint_every": ">= 1",
             "mid_episode_starts": "in [0, 1]", "start_pool": ">= 1", "pessimism": ">= 0",
             "ensemble": ">= 1", "action_noise": ">= 0", "controller_units": ">= 0"},
        )  # fmt: skip
        if self.controller_inputs not in ("zh", "z"):
            raise ValueError(f"dream.controller_inputs must be 'zh' or 'z', got {self.controller_inputs!r}")
        if self.termination not in ("threshold", "expected"):
            raise ValueError(f"dream.termination must be 'threshold' or 'expected', got {self.termination!r}")
        if self.learner not in LEARNERS:
            raise ValueError(f"dream.learner must be one of {', '.join(LEARNERS)}, got {self.learner!r}")
        if self.controller_units and self.learner != "cmaes":
            raise ValueError("dream.controller_units shapes the controller CMA-ES evolves; use --learner cmaes")
        if self.ensemble > 1 and self.learner != "cmaes":
            raise ValueError("dream.ensemble deals CMA-ES dreams over several M; use --learner cmaes")
        if self.pessimism > 0 and self.ensemble == 1:
            raise ValueError("dream.pessimism penalises disagreement between M; add --ensemble K (K >= 2)")
        if self.ensemble > 1 and self.mid_episode_starts > 0:
            raise ValueError("dream.ensemble > 1 starts dreams from first frames only; use --mid-episode-starts 0")
        if self.rollouts < self.ensemble:
            raise ValueError(f"dream.rollouts {self.rollouts} cannot cover {self.ensemble} ensemble members")
        if self.keep not in ("best", "mean"):
            raise ValueError(f"dream.keep must be 'best' or 'mean', got {self.keep!r}")
        if self.step_size_adaptation not in STEP_SIZE_ADAPTATIONS:
            raise ValueError(
                f"dream.step_size_adaptation must be one of {', '.join(STEP_SIZE_ADAPTATIONS)}, "
                f"got {self.step_size_adaptation!r}"
            )


STEP_SIZE_ADAPTATIONS = ("csa", "tpa")
"""The CMA-ES step-size rules ``DreamConfig.step_size_adaptation`` accepts."""


LEARNERS = ("cmaes", "actor-critic")
"""What ``train_dream.py --learner`` trains in the dream: the paper's linear controller with CMA-ES, or a
Dreamer actor and critic on imagined lambda-returns (``ActorCriticConfig``)."""


@dataclass(frozen=True)
class ActorCriticConfig:
    """Actor and critic trained on trajectories imagined in M (Hafner et al. 2020 DreamerV1, 2023 DreamerV3)."""

    steps: int = 2000
    """Updates of the actor and critic (each imagines from a fresh batch of start states)."""
    batch_size: int = 16
    """Real latent sequences per update; M is teacher-forced along each, and imagination starts from every
    one of its states (batch_size x seq_len starts)."""
    seq_len: int = 64
    """Length of those sequences in steps."""
    horizon: int = 15
    """Imagination horizon H in steps (DreamerV3: 15)."""
    discount: float = 0.997
    """Discount gamma per step (DreamerV3: 0.997)."""
    lambda_: float = 0.95
    """lambda of the lambda-returns (DreamerV3: 0.95)."""
    entropy_scale: float = 3e-4
    """Weight eta of the actor's entropy bonus (DreamerV3: 3e-4 on normalised returns)."""
    gradient: Literal["dynamics", "reinforce"] = "dynamics"
    """Actor gradient: ``dynamics`` backpropagates the returns through M's differentiable dream (DreamerV1/V2 for
    continuous actions); ``reinforce`` uses the score function with the critic as baseline (DreamerV3)."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-4
    """Adam learning rate of the critic."""
    grad_clip: float = 100.0
    """Global gradient-norm clip of each (DreamerV3: 100)."""
    units: int = 256
    """Units of each hidden layer of the actor and the critic MLPs."""
    layers: int = 2
    """Hidden layers of the actor and the critic MLPs."""
    slow_critic_decay: float = 0.98
    """EMA decay of the slow critic, whose values the lambda-returns bootstrap from and which regularises the
    critic (DreamerV3: 0.98)."""
    return_norm_decay: float = 0.99
    """EMA decay of the 5th-95th percentile range that normalises returns (DreamerV3 Eq. 7: 0.99)."""
    checkpoint_every: int = 200
    """Save the actor (and critic) every this many updates."""
    log_every: int = 50
    """Write a metrics.jsonl line every this many updates."""

    def __post_init__(self):
        _check_ranges(
            self,
            "actor_critic",
            {"steps": ">= 1", "batch_size": ">= 1", "seq_len": ">= 1", "horizon": ">= 1", "discount": "in (0, 1]",
             "lambda_": "in [0, 1]", "entropy_scale": ">= 0", "actor_lr": "> 0", "critic_lr": "> 0",
             "grad_clip": "> 0", "units": ">= 1", "layers": ">= 1", "slow_critic_decay": "in [0, 1)",
             "return_norm_decay": "in [0, 1)", "checkpoint_every": ">= 1", "log_every": ">= 1"},
        )  # fmt: skip
        if self.gradient not in ("dynamics", "reinforce"):
            raise ValueError(f"actor_critic.gradient must be 'dynamics' or 'reinforce', got {self.gradient!r}")


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
    policy: Literal["controller", "cem", "cem-controller"] = "controller"
    """Who acts: ``controller`` (C on [z, h], the paper); ``cem`` (model-predictive control: at every step CEM plans
    in M's dream from the current state and the agent takes the plan's first action, each search warm-started from
    the last plan; the ``cem`` section's settings); ``cem-controller`` (CEM whose every search starts from the
    plan C would follow in the dream). A planner's results go to RUN_DIR/eval/POLICY/ (or --out)."""
    action_noise: float = 0.0
    """Standard deviation of smooth noise added to every action before it is clipped to the action box: the
    Ornstein-Uhlenbeck process (theta 0.5, ``policies.ou_noise_step``) that the ``controller`` collection policy
    adds (``--controller-noise``), drawn from the episode's seed. 0: the paper's deterministic controller. The
    policy becomes stochastic; its parameters stay those the dream chose."""
    ensemble: str = ""
    """Planners only: comma-separated run directories whose rnn/ckpt join this run's M in an ensemble (same kind
    and sizes, trained on this run's V's latents, e.g. with another --seed); plans are scored by mean return
    minus ``cem.uncertainty_weight`` times the members' disagreement. Empty: this run's M alone."""

    def __post_init__(self):
        _check_ranges(
            self,
            "test",
            {
                "episodes": ">= 1",
                "workers": ">= 0",
                "max_steps": ">= 1",
                "video_episodes": ">= 0",
                "video_fps": ">= 1",
                "action_noise": ">= 0",
            },
        )
        if self.policy not in ("controller", "cem", "cem-controller"):
            raise ValueError(f"test.policy must be controller, cem or cem-controller, got {self.policy!r}")
        if self.ensemble and self.policy == "controller":
            raise ValueError("--ensemble scores a planner's plans; add --policy cem (or cem-controller)")

    @property
    def ensemble_runs(self) -> list[str]:
        """The run directories of ``ensemble``, in order (empty when it is)."""
        return [e.strip() for e in self.ensemble.split(",") if e.strip()]


@dataclass(frozen=True)
class CEMConfig:
    """Settings of the cross-entropy-method planner.

    The defaults of H, N, k and I are PlaNet's (Hafner et al. 2019, Sec. 3, "Planning algorithm"). Static under
    ``jax.jit``: a changed field compiles a new planner.
    """

    horizon: int = 12
    """H, the planned steps (PlaNet: 12)."""
    candidates: int = 1000
    """N, action sequences drawn per iteration (PlaNet: 1000)."""
    top_k: int = 100
    """k, the elite refitted to per iteration, 1 <= k <= N (PlaNet: 100)."""
    iterations: int = 10
    """I, CEM iterations per planning call (PlaNet: 10)."""
    init_std: float = 0.5
    """The belief's standard deviation at the first iteration, in action units, per dimension (> 0)."""
    min_std: float = 0.05
    """Floor of the refitted standard deviation, action units (>= 0), so the search never collapses to a point."""
    temperature: float = 1.0
    """tau > 0 of the dream's next-latent sampling (``mdnrnn.sample_next_z``; Ha & Schmidhuber 2018, Sec. 4)."""
    sample_z: bool = True
    """Sample z_{t+1} from the mixture (True) or take the mean of its likeliest component (``most_likely_z``)."""
    discount: float = 1.0
    """gamma in (0, 1]: the return is sum_t gamma^t r_{t+1} (PlaNet: 1, an undiscounted sum)."""
    done_threshold: float = 0.5
    """The dream ends once sigmoid(done_logit) exceeds this, in [0, 1] (as ``dream.dream_step``)."""
    uncertainty_weight: float = 0.0
    """lambda >= 0 of the ensemble-disagreement penalty: score = mean return - lambda * disagreement."""
    offroad_threshold: float = 0.0
    """Largest allowed fraction of the horizon off-road, in [0, 1); 0 turns the constraint off."""
    offroad_reward: float = 0.0
    """A step whose predicted reward is below this counts as off-road (reward units)."""

    def __post_init__(self):
        _check_ranges(
            self,
            "cem",
            {
                "horizon": ">= 1",
                "candidates": ">= 1",
                "top_k": ">= 1",
                "iterations": ">= 1",
                "init_std": "> 0",
                "min_std": ">= 0",
                "temperature": "> 0",
                "discount": "in (0, 1]",
                "done_threshold": "in [0, 1]",
                "uncertainty_weight": ">= 0",
                "offroad_threshold": "in [0, 1)",
                "offroad_reward": "in [-1e9, 1e9]",
            },
        )
        if self.top_k > self.candidates:
            raise ValueError(f"cem.top_k must be <= cem.candidates ({self.candidates}), got {self.top_k}")


@dataclass(frozen=True)
class IterateConfig:
    """The Sim2Real2Sim loop: real test -> on-policy collection -> MDN-RNN fine-tuning -> CMA-ES again."""

    iterations: int = 0
    """Number of loop iterations after the first pipeline pass (0 = none)."""
    episodes: int = 40
    """On-policy episodes collected per iteration with the ``controller`` policy (its own failures)."""
    weight: float = 1.0
    """Recipe weight of the grown on-policy dataset when the MDN-RNN is fine-tuned."""
    rnn_steps: int = 200
    """MDN-RNN fine-tuning updates per iteration (on the preset's recipe plus the on-policy data)."""
    generations: int = 50
    """CMA-ES generations per iteration, continuing from the previous controller."""
    restart_sigma: float = 0.0
    """CMA-ES only: each iteration restarts the search at its current mean with this step size and a fresh
    covariance, instead of continuing with the step size the last iteration ended with (0: continue). After five
    iterations of ``quick`` sigma had fallen to 0.08 and the loop had stopped improving."""
    ac_steps: int = 500
    """With ``dream.learner actor-critic``: actor-critic updates per iteration, continuing from the previous ones."""
    test_episodes: int = 20
    """Real episodes scoring each iteration's controller."""
    validate_last: bool = True
    """After the last iteration, collect the next iteration's on-policy episodes with the last controller, so that
    it too has episodes of its own and is a candidate for ``iterations/selection.json`` (costs ``episodes`` real
    episodes; a later, longer loop reuses them as its next iteration's)."""

    def __post_init__(self):
        _check_ranges(
            self,
            "iterate",
            {
                "iterations": ">= 0",
                "episodes": ">= 1",
                "weight": "> 0",
                "rnn_steps": ">= 0",
                "generations": ">= 1",
                "restart_sigma": ">= 0",
                "ac_steps": ">= 0",
                "test_episodes": ">= 1",
            },
        )


DYNAMICS_FLAVOURS = ("mdnrnn", "gru")
"""The dynamics a gossip pool's world models can have (``models.joint.JointWorldModel``)."""
GOSSIP_COMPARES = ("pixel", "latent", "dreams")
GOSSIP_DISTANCES = ("l2", "l1", "kl")
GOSSIP_STOP_GRADIENTS = ("readers", "partner", "none")
GOSSIP_DREAMS = ("mean", "sample")


def check_gossip(cfg: GossipConfig) -> None:
    """Refuse a gossip config the pool trainer cannot run; every problem is named in one line.

    Raises:
        ValueError: ``"gossip config: FIELD=VALUE (known: ...); ..."``.
    """
    problems = []
    if cfg.flavour not in DYNAMICS_FLAVOURS:
        problems.append(f"flavour={cfg.flavour!r} (known: {', '.join(DYNAMICS_FLAVOURS)})")
    for name, value, known in (
        ("gossip_compare", cfg.gossip_compare, GOSSIP_COMPARES),
        ("gossip_distance", cfg.gossip_distance, GOSSIP_DISTANCES),
        ("gossip_stop_gradient", cfg.gossip_stop_gradient, GOSSIP_STOP_GRADIENTS),
        ("gossip_dream", cfg.gossip_dream, GOSSIP_DREAMS),
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


@dataclass(frozen=True)
class GossipConfig:
    """A pool of jointly trained world models that read each other's dreams (issue 5, ``worldmodels.gossip``)."""

    dataset: str = "brownian"
    """Datasets under RUN_DIR/data/ as a recipe ``name[:weight],...``: a batch draws each sequence from dataset d
    with probability weight_d / sum."""
    holdout: float = 0.1
    """Fraction of each dataset's episodes (its last ones, at least one when it has two or more) kept out of
    training; drift, disagreement and the videos are measured on them."""
    models: int = 2
    """Pool size M. M = 2 gossips in the fixed pair (0, 1); an even M > 2 is paired by a fresh random permutation
    every step; with an odd M one random model sits the step out (its consistency loss is 0 for that step)."""
    flavour: str = "mdnrnn"
    """Dynamics of every model: ``mdnrnn`` (the paper's LSTM + mixture) or ``gru`` (GRU state + one Gaussian)."""
    z_size: int = 32
    """Latent size Z of each model's VAE."""
    hidden_size: int = 256
    """Recurrent units H (LSTM or GRU)."""
    num_mixtures: int = 5
    """Gaussian components K of the MDN-RNN flavour (the GRU flavour has one)."""
    kl_tolerance: float = 0.5
    """Free bits per latent dimension: the KL term is max(KL, kl_tolerance * z_size) nats (Appendix A.1)."""
    seq_len: int = 32
    """Length L of the training windows in steps (L + 1 frames are encoded per window)."""
    batch_size: int = 8
    """Windows per update; every model of the pool sees the same windows (same data order)."""
    learning_rate: float = 3e-4
    """Adam learning rate (one Adam state per model)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip, per model."""
    steps: int = 2000
    """Number of pool updates."""
    dynamics_weight: float = 1.0
    """Weight of the dynamics loss (mixture NLL + reward + done) against the VAE loss (reconstruction + KL)."""
    dynamics_to_encoder: bool = True
    """Let the dynamics loss train the encoder too (joint training); off: the latents it reads are constants."""
    reward_weight: float = 1.0
    """Weight of the reward loss inside the dynamics loss."""
    reward_overpredict_weight: float = 5.0
    """Asymmetric reward MSE: squared errors where the prediction exceeds the truth are multiplied by this."""
    done_weight: float = 1.0
    """Weight of the done (termination) BCE inside the dynamics loss."""
    gossip_weight: float = 1.0
    """Weight of each model's consistency loss in its total; 0 is the baseline (independent models)."""
    gossip_dream_steps: int = 16
    """Dream length D of the gossip: steps imagined from the shared real start before decoding."""
    gossip_context: int = 1
    """Real frames k each model reads (teacher forced) before it dreams; gossip_context + gossip_dream_steps - 1
    must not exceed seq_len."""
    gossip_batch: int = 4
    """Shared starts per gossip step (the first windows of the batch)."""
    gossip_compare: str = "pixel"
    """What the consistency loss compares (formulas in ``gossip.consistency_loss``): ``pixel`` (the partner's reading
    of my dream against my own reading, both decoded to pixels), ``latent`` (the same two readings in my own latent
    space), ``dreams`` (the partner's encodings of my dream and of its own dream, in the partner's latent space)."""
    gossip_distance: str = "l2"
    """Distance of the consistency loss: ``l2`` (sum of squared differences), ``l1`` (sum of absolute differences),
    ``kl`` (KL between the two readings' diagonal Gaussians; ``latent`` and ``dreams`` only)."""
    gossip_stop_gradient: str = "readers"
    """Where a model's consistency gradient may go: ``readers`` (only into its dream: encoder of the start, dynamics,
    decoder that renders it; every reading is a fixed judge), ``partner`` (also into its own reading path; the
    partner stays fixed), ``none`` (into the partner as well)."""
    gossip_dream: str = "mean"
    """How a gossip dream steps: ``mean`` (the most likely next latent, deterministic) or ``sample`` (a
    reparameterised sample at ``gossip_temperature``; both models of a pair share the noise keys)."""
    gossip_temperature: float = 1.0
    """Temperature tau of ``sample`` gossip dreams."""
    drift_start: int = 50
    """Frame of each held-out episode where the drift measurement and the dream videos start. CarRacing's
    camera zooms in over the first second of an episode (50 frames at 50 FPS); from frame 0 the short horizons
    would measure how well a model predicts that zoom, not the driving."""
    drift_context: int = 1
    """Real frames k read before the open-loop drift measurement (then real actions only)."""
    drift_horizons: tuple[int, ...] = (1, 10, 50, 100, 200, 500, 900, 1000)
    """Horizons (dream steps after the context) at which drift and disagreement are reported; clipped to what the
    held-out episodes allow (from ``drift_start`` 50, a 1,000-step episode reaches 900 but not 1,000)."""
    drift_episodes: int = 4
    """Held-out episodes used for drift and disagreement (fewer if fewer are held out)."""
    video_steps: int = 300
    """Length of the side-by-side dream video (clipped to the held-out episode)."""
    video_fps: int = 30
    """Frames per second of the videos."""
    export: bool = True
    """Write model ``export_model`` (either flavour) as RUN_DIR/vae/ckpt and RUN_DIR/rnn/ckpt so train_dream.py and
    test_agent.py use it (never over checkpoints that another stage wrote)."""
    export_model: int = 0
    """Which model of the pool to export."""
    checkpoint_every: int = 200
    """Save the pool every this many updates (and at the end)."""
    log_every: int = 20
    """Write a metrics.jsonl line every this many updates."""
    vmap_pool: bool = True
    """Batch the pool axis with ``eqx.filter_vmap`` (one batched program, right on an accelerator). Off: a loop over
    the M models unrolled inside the same jitted step, same values, about 3x faster on XLA:CPU, where a vmapped
    convolution with per-model kernels becomes a slow grouped convolution."""
    seed: int = 0
    """Seed of initialisation (model m from fold_in(seed, m)), batch order, latent noise and pairing."""

    def __post_init__(self):
        check_gossip(self)

    @property
    def vae_loss_scales(self) -> dict[str, float]:
        """Scale of each term of ``losses.vae_loss`` in a model's VAE loss (the paper's plain sum)."""
        return {"recon": 1.0, "kl": 1.0}

    @property
    def dynamics_loss_scales(self) -> dict[str, float]:
        """Scale of each term of ``losses.rnn_step_loss`` in a model's dynamics loss (weighted by
        ``dynamics_weight`` in the total)."""
        return {"mdn_nll": 1.0, "reward": self.reward_weight, "done": self.done_weight}


MARLVariant = Literal["full", "no_tom", "no_factorisation", "repeat_teammate", "ppo"]
MARL_VARIANTS: tuple[str, ...] = get_args(MARLVariant)
"""The Dreaming-of-Others model, its ablations and the PPO reference (``MARLConfig.variant``)."""
SCRIPTED_PARTNERS = ("random", "stay", "cook", "cook_eps")
"""Overcooked's scripted teammates by name; a learned teammate is named ``ppo_SEED`` (self-play PPO with that
seed)."""
MPE_SCRIPTED_PARTNERS = ("random", "stay", "nearest", "landmark_0", "landmark_1", "complement")
"""MPE cooperative navigation's scripted teammates by name (``worldmodels.marl.partners``)."""
MARLEnv = Literal["overcooked", "mpe_spread"]
MARL_ENVS: tuple[str, ...] = get_args(MARLEnv)
"""The two-agent environments (``worldmodels.marl.env.ENVS``)."""


def scripted_partners(env: str) -> tuple[str, ...]:
    """The scripted teammates' names of environment ``env`` (one of ``MARL_ENVS``)."""
    return MPE_SCRIPTED_PARTNERS if env == "mpe_spread" else SCRIPTED_PARTNERS


def _check_partner_names(names: tuple[str, ...], flag: str, env: str = "overcooked") -> None:
    scripted = scripted_partners(env)
    for name in names:
        seed = name[4:] if name.startswith("ppo_") else ""
        if name not in scripted and not seed.isdigit():
            raise ValueError(
                f"--marl.{flag}: unknown teammate {name!r} in {env}; use {', '.join(scripted)} or ppo_SEED (ppo_0, ...)"
            )


@dataclass(frozen=True)
class PPOConfig:
    """Independent PPO (Schulman et al. 2017) on Overcooked: the learned teammates and the model-free reference."""

    total_steps: int = 1_500_000
    """Environment steps to train for, summed over the parallel environments (self-play on ``cramped_room`` passes a
    sparse return of 100 at about 0.55 M steps and levels off near 230 by 1.5 M)."""
    num_envs: int = 16
    """Parallel environments (vmapped)."""
    num_steps: int = 128
    """Steps per environment in each rollout before an update."""
    epochs: int = 4
    """Passes over each rollout."""
    minibatches: int = 4
    """Minibatches per pass; num_envs * num_steps must divide by it."""
    lr: float = 2.5e-4
    """Adam learning rate (annealed linearly to 0 when ``anneal_lr``)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over training."""
    gamma: float = 0.99
    """Discount per step."""
    gae_lambda: float = 0.95
    """lambda of GAE (Schulman et al. 2016)."""
    clip: float = 0.2
    """PPO's ratio clip epsilon."""
    ent_coef: float = 0.01
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    shaped_scale: float = 1.0
    """Initial weight of Overcooked's shaped reward (added to the sparse soup reward)."""
    shaped_anneal_steps: int = 1_000_000
    """Steps over which the shaped reward's weight anneals linearly to 0 (as JaxMARL's Overcooked IPPO, which uses
    2.5 M of 5 M; 0: never)."""
    units: int = 64
    """Hidden units of the policy and value MLP (two tanh layers)."""
    seed: int = 0
    """Seed of initialisation, environments and sampling."""

    def __post_init__(self):
        _check_ranges(
            self,
            "marl.partner_ppo",
            {"total_steps": ">= 1", "num_envs": ">= 1", "num_steps": ">= 1", "epochs": ">= 1", "minibatches": ">= 1",
             "lr": "> 0", "gamma": "in (0, 1]", "gae_lambda": "in [0, 1]", "clip": "> 0", "ent_coef": ">= 0",
             "vf_coef": ">= 0", "max_grad_norm": "> 0", "shaped_scale": ">= 0", "shaped_anneal_steps": ">= 0",
             "units": ">= 1"},
        )  # fmt: skip
        if self.steps_per_update % self.minibatches:
            raise ValueError(
                f"--marl.partner-ppo.minibatches {self.minibatches} must divide num_envs * num_steps = "
                f"{self.steps_per_update}"
            )
        if self.total_steps < self.steps_per_update:
            raise ValueError(
                f"--marl.partner-ppo.total-steps {self.total_steps} is less than one update (num_envs * num_steps = "
                f"{self.steps_per_update})"
            )

    @property
    def steps_per_update(self) -> int:
        """Environment steps collected by one update (num_envs * num_steps)."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Updates in a run (total_steps // steps_per_update)."""
        return self.total_steps // self.steps_per_update


@dataclass(frozen=True)
class MARLConfig:
    """Dreaming of Others on JaxMARL's Overcooked: a two-agent world model with a factorised latent, a
    theory-of-mind head and social imagination, trained with a population of teammates (``worldmodels.marl``)."""

    env: MARLEnv = "overcooked"
    """Two-agent environment: ``overcooked`` (JaxMARL's Overcooked, grid observations) or ``mpe_spread`` (the particle
    world's cooperative navigation with two agents and two landmarks, vector observations)."""
    layout: str = "cramped_room"
    """Overcooked layout (JaxMARL's ``overcooked_layouts``; unused in MPE)."""
    max_steps: int = 400
    """Episode length in steps (Overcooked's standard: 400; MPE's: 25)."""
    variant: MARLVariant = "full"
    """``full`` (joint-action RSSM, factorised latent, ToM head, social imagination); ``no_tom`` (a single-agent
    Dreamer: the model never sees the teammate's action); ``no_factorisation`` (one latent of the same size, the ToM
    head reads (h, z)); ``repeat_teammate`` (the full model, but in imagination the teammate repeats its last
    action instead of sampling the ToM head); ``ppo`` (the model-free reference: independent PPO for the agent
    with the same training teammates, for the environment steps this config's world-model run collects, with the
    ``partner_ppo`` settings and this seed)."""
    train_partners: tuple[str, ...] = ("ppo_0", "ppo_1", "cook", "random")
    """Teammates the agent trains with (one drawn per episode): ``ppo_SEED`` (self-play PPO with that seed), or a
    scripted one: in Overcooked ``random``, ``stay``, ``cook`` (a scripted onion cook), ``cook_eps`` (the cook with
    20 % random actions); in MPE ``random``, ``stay``, ``nearest`` (heads for its nearest landmark), ``landmark_0``,
    ``landmark_1`` (heads for that landmark)."""
    heldout_partners: tuple[str, ...] = ("ppo_2", "cook_eps", "stay")
    """Teammates never seen in training, for zero-shot evaluation."""
    partners_dir: str = ""
    """Load the teammate population from this directory (``RUN_DIR/partners`` of an earlier run) instead of
    training it; empty: train it into RUN_DIR/partners (or reuse it there)."""
    iterations: int = 30
    """Collect-then-train iterations."""
    prefill_episodes: int = 16
    """Episodes collected first with uniformly random actions of the agent."""
    episodes_per_iteration: int = 8
    """Episodes collected per iteration with the current actor (one teammate drawn per episode)."""
    updates_per_iteration: int = 100
    """World-model + actor-critic updates per iteration."""
    batch_size: int = 16
    """Windows per update."""
    seq_len: int = 64
    """Window length in steps."""
    deter: int = 128
    """GRU state size D."""
    units: int = 128
    """Hidden width of the world model's MLPs and of the actor and critic."""
    env_groups: int = 8
    """Categorical groups of z^env."""
    team_groups: int = 4
    """Categorical groups of z^team (added to z^env when not factorised)."""
    classes: int = 8
    """Classes per categorical group."""
    free_nats: float = 1.0
    """Free bits of each KL term (DreamerV3: 1 nat)."""
    tom_scale: float = 1.0
    """Weight of the theory-of-mind loss L_ToM in the world model's loss."""
    kl_dyn_scale: float = 0.5
    """Weight of the dynamics KL (DreamerV3: 0.5)."""
    kl_rep_scale: float = 0.1
    """Weight of the representation KL (DreamerV3: 0.1)."""
    shaped_scale: float = 1.0
    """Weight of Overcooked's shaped reward (both cooks') in the reward the world model learns; returns are
    reported as the sparse soup reward only."""
    wm_lr: float = 3e-4
    """Adam learning rate of the world model."""
    horizon: int = 15
    """Imagination horizon in steps."""
    discount: float = 0.99
    """Discount gamma per step."""
    lambda_: float = 0.95
    """lambda of the lambda-returns."""
    entropy_scale: float = 3e-3
    """Actor entropy bonus (on normalised returns)."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-4
    """Adam learning rate of the critic."""
    starts: int = 256
    """Imagination starts per update, drawn from the batch's posterior states."""
    eval_episodes: int = 8
    """Evaluation episodes with each teammate (training and held-out)."""
    gif: bool = True
    """Write eval/episode.gif: one evaluation episode with the first held-out teammate."""
    partner_ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings of the learned teammates (``ppo_SEED`` uses that seed)."""
    seed: int = 0
    """Seed of initialisation, teammate draws, environments and sampling."""

    def __post_init__(self):
        _check_ranges(
            self,
            "marl",
            {"max_steps": ">= 2", "iterations": ">= 0", "prefill_episodes": ">= 1", "episodes_per_iteration": ">= 1",
             "updates_per_iteration": ">= 0", "batch_size": ">= 1", "seq_len": ">= 2", "deter": ">= 1",
             "units": ">= 1", "env_groups": ">= 1", "team_groups": ">= 1", "classes": ">= 2", "free_nats": ">= 0",
             "tom_scale": ">= 0", "kl_dyn_scale": ">= 0", "kl_rep_scale": ">= 0", "shaped_scale": ">= 0",
             "wm_lr": "> 0", "horizon": ">= 1", "discount": "in (0, 1]", "lambda_": "in [0, 1]",
             "entropy_scale": ">= 0", "actor_lr": "> 0", "critic_lr": "> 0", "starts": ">= 1",
             "eval_episodes": ">= 1"},
        )  # fmt: skip
        if self.variant not in MARL_VARIANTS:
            raise ValueError(f"--marl.variant {self.variant!r} is unknown; choose one of {', '.join(MARL_VARIANTS)}")
        if self.seq_len > self.max_steps:
            raise ValueError(
                f"--marl.seq-len {self.seq_len} exceeds the episode length --marl.max-steps {self.max_steps}"
            )
        if self.starts > self.batch_size * self.seq_len:
            raise ValueError(
                f"--marl.starts {self.starts} exceeds the batch's states, batch_size x seq_len = "
                f"{self.batch_size * self.seq_len}"
            )
        if not self.train_partners:
            raise ValueError("--marl.train-partners is empty; name at least one teammate")
        if self.env not in MARL_ENVS:
            raise ValueError(f"--marl.env {self.env!r} is unknown; choose one of {', '.join(MARL_ENVS)}")
        _check_partner_names(self.train_partners, "train-partners", self.env)
        _check_partner_names(self.heldout_partners, "heldout-partners", self.env)
        both = set(self.train_partners) & set(self.heldout_partners)
        if both:
            raise ValueError(
                f"--marl.heldout-partners {sorted(both)} are also training teammates; held-out ones must be unseen"
            )

    @property
    def factorised(self) -> bool:
        """Whether the latent is split into z^env and z^team."""
        return self.variant != "no_factorisation"

    @property
    def tom(self) -> bool:
        """Whether the model sees the teammate's action and has a ToM head."""
        return self.variant not in ("no_tom", "ppo")

    @property
    def imagined_teammate(self) -> str:
        """Who acts for the teammate in imagination: ``tom`` (the ToM head), ``repeat`` (its last action) or
        ``none`` (the model takes no teammate action)."""
        return {"no_tom": "none", "repeat_teammate": "repeat"}.get(self.variant, "tom")


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
    iterate: IterateConfig = field(default_factory=IterateConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    cem: CEMConfig = field(default_factory=CEMConfig)
    marl: MARLConfig = field(default_factory=MARLConfig)

    def __post_init__(self):
        if self.dream.ensemble > self.rnn.ensemble:
            raise ValueError(
                f"dream.ensemble {self.dream.ensemble} deals dreams over more M than rnn.ensemble "
                f"{self.rnn.ensemble} trains; add --rnn.ensemble {self.dream.ensemble}"
            )


_SECTIONS = {c.__name__: c for c in (CollectConfig, VAEConfig, RNNConfig, DreamConfig, TestConfig, IterateConfig)}
"""The stage configs a preset nests, by the type name its fields carry (annotations are strings here)."""
_SECTIONS[GossipConfig.__name__] = GossipConfig
_SECTIONS[ActorCriticConfig.__name__] = ActorCriticConfig
_SECTIONS[CEMConfig.__name__] = CEMConfig
_SECTIONS[MARLConfig.__name__] = MARLConfig
_SECTIONS[PPOConfig.__name__] = PPOConfig


def merge_config(cls: type, overrides: dict[str, Any], where: str) -> Any:
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
            kwargs[key] = merge_config(sub, value, f"{where}.{key}")
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
    return merge_config(Preset, data, str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def with_seed(preset: Preset, seed: int) -> Preset:
    """``preset`` with every training seed derived from ``seed``: V, M and the dream (CMA-ES and its dreams) get
    ``seed``; collection gets ``seed * len(COLLECTION_POLICIES) * SEED_BLOCK``, so each run seed drives its own
    block of tracks (every policy's block included) and no two seeds share a collected episode. The test seeds
    (``test.seed``, 1,000,000 on) are not changed, so runs of different seeds are scored on the same tracks.

    Raises:
        ValueError: if ``seed`` is negative or its collection block would reach the test seeds.
    """
    block = len(COLLECTION_POLICIES) * SEED_BLOCK
    top = preset.test.seed // block - 1
    if not 0 <= seed <= top:
        raise ValueError(f"--seed must be in [0, {top}] (collection seeds stay below the test seeds), got {seed}")
    return dataclasses.replace(
        preset,
        collect=dataclasses.replace(preset.collect, seed=seed * block),
        vae=dataclasses.replace(preset.vae, seed=seed),
        rnn=dataclasses.replace(preset.rnn, seed=seed),
        dream=dataclasses.replace(preset.dream, seed=seed),
    )


SEEDED_STAGES = ("collect", "vae", "rnn", "dream")
"""The stages whose training seed ``with_seed`` sets and ``recorded_seeds`` reads."""


def recorded_seeds(run_dir: Path) -> dict[str, int]:
    """The training seeds recorded in ``run_dir/config.json`` ({stage: seed} for the ``SEEDED_STAGES`` that have
    one; empty when there is no readable record)."""
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k]["seed"] for k in SEEDED_STAGES if isinstance(data.get(k), dict) and "seed" in data[k]}


def seed_clash(run_dir: Path, preset: Preset) -> dict[str, tuple[int, int]]:
    """{stage: (recorded seed, ``preset``'s seed)} for every stage of ``run_dir`` recorded with another seed than
    ``preset`` asks for (empty when they agree or nothing is recorded). The stages' done-checks do not look at
    seeds, so ``pipeline.py`` refuses such a run directory instead of skipping or mixing them."""
    recorded = recorded_seeds(run_dir)
    return {k: (v, getattr(preset, k).seed) for k, v in recorded.items() if v != getattr(preset, k).seed}


def record_config(run_dir: Path, stage: str, cfg: Any) -> None:
    """Merge the resolved config of ``stage`` into ``run_dir/config.json`` (the run's record), atomically.

    A ``config.json`` that is not a JSON object is never overwritten: it is renamed to
    ``config.json.unreadable-TIMESTAMP`` (the user is told on stderr) and a new record starts.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            aside = path.with_name(f"config.json.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(aside)
            print(f"warning: {path} was unreadable ({err}); kept it as {aside}, starting a new record", file=sys.stderr)
            data = {}
    data[stage] = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def parse_recipe(text: str, what: str = "weight") -> list[tuple[str, float]]:
    """Parse a dataset recipe ``name[:number],...`` into ``[(name, number), ...]`` (a missing number is 1).

    Used for training mixes (``brownian:2,heuristic:1``: sampling weights) and mixed collection
    (``brownian:60,heuristic:30``: episode counts).

    Raises:
        ValueError: for an empty recipe, a repeated name, or a number that is not positive.
    """
    items: list[tuple[str, float]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, number = part.partition(":")
        name = name.strip()
        try:
            value = float(number) if number.strip() else 1.0
        except ValueError:
            raise ValueError(f"recipe {text!r}: {what} of {name!r} is not a number: {number!r}") from None
        if not name or value <= 0:
            raise ValueError(f"recipe {text!r}: every entry needs a name and a positive {what}, got {part!r}")
        if name in dict(items):
            raise ValueError(f"recipe {text!r}: {name!r} appears twice")
        items.append((name, value))
    if not items:
        raise ValueError(f"empty dataset recipe {text!r}; expected name[:{what}],...")
    return items
