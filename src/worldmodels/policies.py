"""Data-collection policies. Each is a small stateful object: ``reset(seed, env)`` then ``act(obs) -> action``.

Actions are float32 (A,) in the environment's box (``env.EnvSpec``): for CarRacing steer in [-1, 1], gas and
brake in [0, 1]; for LunarLander main and lateral engine in [-1, 1]. The heuristic drivers read the
environment's own state (CarRacing's track tiles and car body; LunarLander's state through Gymnasium's own
``heuristic`` lander) through ``env``: they exist to show the world model good and bad flying or driving,
never to act for the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from worldmodels.config import COLLECTION_POLICIES, OU_THETA, SEED_BLOCK, CollectConfig
from worldmodels.env import ACTION_HIGH, ACTION_LOW, get_spec

POLICIES = COLLECTION_POLICIES
"""Collection policies by name (``config.COLLECTION_POLICIES``, where configs check names); the index also sets each
policy's block of reset seeds (``seed_offset``)."""


class Policy(Protocol):
    def reset(self, seed: int, env: Any = None) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


def seed_offset(policy: str) -> int:
    """First reset seed of ``policy``'s episodes relative to ``CollectConfig.seed``.

    Raises:
        ValueError: for an unknown policy name.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown collection policy {policy!r}; available: {', '.join(POLICIES)}")
    return POLICIES.index(policy) * SEED_BLOCK


def ou_noise_step(noise: np.ndarray, rng: np.random.Generator, std: float, theta: float = OU_THETA) -> np.ndarray:
    """One step of an Ornstein-Uhlenbeck process whose stationary standard deviation is ``std``:
    n' = (1 - theta) n + std sqrt(1 - (1 - theta)^2) eps, eps ~ N(0, I) (the discrete OU / AR(1) process of
    Uhlenbeck & Ornstein 1930, used as exploration noise by DDPG, Lillicrap et al. 2016).

    Args:
        noise: (A,), the previous noise (float32 zeros at an episode's start).
        rng: the episode's generator; one ``standard_normal(A)`` draw per call.
        std: stationary standard deviation, in action units.
        theta: mean reversion per step, in (0, 1].

    Returns:
        (A,), the next noise (float64 once ``sigma`` has scaled it; ``add_noise`` adds it to an action).
    """
    sigma = std * np.sqrt(1.0 - (1.0 - theta) ** 2)
    return (1.0 - theta) * noise + sigma * rng.standard_normal(noise.shape[-1]).astype(np.float32)


def add_noise(action: np.ndarray, noise: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``action + noise`` clipped to the action box [low, high], as float32: (..., A) actions, (..., A) noise,
    (A,) bounds. How the noise of ``ou_noise_step`` reaches the environment."""
    return np.clip(action + noise, low, high).astype(np.float32)


def squash_np(o: np.ndarray) -> np.ndarray:
    """NumPy twin of ``models.controller.squash_action``: raw outputs (3,) -> action float32 (3,)."""
    t = np.tanh(o)
    return np.array([t[0], (t[1] + 1.0) / 2.0, np.clip(t[2], 0.0, 1.0)], np.float32)


@dataclass
class BrownianPolicy:
    """Smooth random actions: an Ornstein-Uhlenbeck process clipped to the action box.

    a_{t+1} = clip(a_t + theta (mean - a_t) + sigma * eps_t), eps_t ~ N(0, I). Random driving that
    turns, accelerates and brakes for stretches of time, like the paper's random rollouts (Sec. 3.1),
    instead of white noise that averages out to standing still.
    """

    sigma: float = 0.3
    theta: float = 0.5
    mean: tuple[float, ...] = (0.0, 0.35, 0.0)
    low: tuple[float, ...] = tuple(ACTION_LOW.tolist())
    high: tuple[float, ...] = tuple(ACTION_HIGH.tolist())

    def reset(self, seed: int, env: Any = None) -> None:
        """Start a new episode with its own random stream (``env`` is not used)."""
        self._rng = np.random.default_rng(seed)
        self._mean = np.asarray(self.mean, dtype=np.float32)
        self._action = self._mean.copy()

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """Next action, float32 (A,) with A = len(mean); ``obs`` is ignored."""
        noise = self._rng.standard_normal(len(self._mean)).astype(np.float32)
        self._action = np.clip(
            self._action + self.theta * (self._mean - self._action) + self.sigma * noise,
            np.asarray(self.low, np.float32),
            np.asarray(self.high, np.float32),
        )
        return self._action.copy()


@dataclass
class RandomControllerPolicy:
    """The paper's random policy: a linear controller with small random weights (Sec. 3.1, and the
    authors' ``extract.py``, which drew the weights' stdev from U(0, 0.01) per rollout).

    Without a trained VAE at collection time, the controller reads a 16x16 grey version of the frame
    scaled to [-1, 1] (256 inputs): a = squash(W x + b), W ~ N(0, s^2 / 256), b ~ N(0, s^2), with the
    scale s ~ U(0, ``scale``) drawn per episode, so some episodes barely steer and others weave.
    """

    scale: float = 1.0

    def reset(self, seed: int, env: Any = None) -> None:
        """Draw this episode's weights (``env`` is not used)."""
        rng = np.random.default_rng(seed)
        s = rng.uniform(0.0, self.scale)
        self._weight = rng.normal(0.0, s / 16.0, (3, 256)).astype(np.float32)
        self._bias = rng.normal(0.0, s, 3).astype(np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action float32 (3,) for a uint8 (64, 64, 3) frame."""
        grey = cv2.resize(cv2.cvtColor(obs, cv2.COLOR_RGB2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
        x = grey.astype(np.float32).reshape(-1) / 127.5 - 1.0
        return squash_np(self._weight @ x + self._bias)


@dataclass
class HeuristicPolicy:
    """Pure pursuit on the track's tiles (``worldmodels.pursuit.PursuitDriver``), reading ``env.unwrapped``."""

    aggressive: bool = False

    def reset(self, seed: int, env: Any = None) -> None:
        """Bind to the episode's environment (required: the driver reads the track and the car)."""
        from worldmodels.pursuit import PursuitDriver, aggressive_driver

        if env is None:
            raise ValueError("the heuristic drivers need the environment: call reset(seed, env)")
        self._env = env
        self._driver = aggressive_driver() if self.aggressive else PursuitDriver()
        self._driver.reset()

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """Action float32 (3,) from the car's pose and the track ahead; ``obs`` is not used."""
        return np.clip(np.asarray(self._driver.act(self._env), np.float32), ACTION_LOW, ACTION_HIGH)


@dataclass
class LanderHeuristicPolicy:
    """Gymnasium's heuristic LunarLander pilot (``gymnasium.envs.box2d.lunar_lander.heuristic``, a PID on angle
    and height that lands in most episodes), with Gaussian noise on its actions: each episode draws a noise
    scale s ~ U(0, ``noise``) and adds N(0, s^2) to every action, clipped to [-1, 1]."""

    noise: float = 0.0

    def reset(self, seed: int, env: Any = None) -> None:
        """Bind to the episode's environment (required: the heuristic reads its continuous flag) and draw s."""
        if env is None:
            raise ValueError("the heuristic lander needs the environment: call reset(seed, env)")
        self._env = env.unwrapped
        self._rng = np.random.default_rng(seed)
        self._scale = float(self._rng.uniform(0.0, self.noise))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action float32 (2,) for LunarLander's state vector (8,)."""
        from gymnasium.envs.box2d.lunar_lander import heuristic

        action = np.asarray(heuristic(self._env, obs), np.float32)
        action = action + self._scale * self._rng.standard_normal(2).astype(np.float32)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


@dataclass
class RecoveryPolicy(HeuristicPolicy):
    """The heuristic driver, pushed off the road now and then so the data shows recoveries.

    Perturbations start after a geometric waiting time of mean ``every`` steps and last ``steps`` steps:
    full steer to a random side with gas 0.5, which puts the car on the grass; then the driver brings
    it back to the track.
    """

    every: float = 120.0
    steps: int = 20

    def reset(self, seed: int, env: Any = None) -> None:
        """Bind to the environment and start this episode's perturbation schedule."""
        super().reset(seed, env)
        self._rng = np.random.default_rng(seed)
        self._left = 0
        self._side = 1.0

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """The driver's action, or the perturbation's while one lasts."""
        action = super().act(obs)  # keeps the driver's tile tracking up to date
        if self._left == 0 and self._rng.random() < 1.0 / self.every:
            self._left = self.steps
            self._side = float(self._rng.choice([-1.0, 1.0]))
        if self._left > 0:
            self._left -= 1
            return np.array([self._side, 0.5, 0.0], np.float32)
        return action


@dataclass
class ControllerPolicy:
    """A trained agent (V + M + C of a run directory) with exploration: on-policy data.

    A linear controller's action gets smooth noise, an Ornstein-Uhlenbeck process (``ou_noise_step``, theta 0.5,
    stationary std ``noise``), then is clipped to the box. An actor-critic's action is sampled from the actor's own
    policy (its exploration noise; ``agent.explores``), with no noise added. The agent is loaded once per worker
    process."""

    run_dir: Path
    noise: float = 0.2
    low: tuple[float, ...] = tuple(ACTION_LOW.tolist())
    high: tuple[float, ...] = tuple(ACTION_HIGH.tolist())

    def reset(self, seed: int, env: Any = None) -> None:
        """Start an episode: the dynamics' initial state and a fresh noise stream (``env`` is not used)."""
        import jax.random as jr

        from worldmodels.models.dynamics import batched_initial_state

        agent = _load_agent(self.run_dir)
        self._state = batched_initial_state(agent.dynamics, 1)
        self._key = jr.key(seed)
        self._rng = np.random.default_rng(seed)
        self._noise = np.zeros(len(self.low), np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The agent's action for one observation (a uint8 (64, 64, 3) frame or a float32 vector) plus noise,
        float32 (A,)."""
        import jax.numpy as jnp
        import jax.random as jr

        from worldmodels.agent import agent_step, explores

        agent = _load_agent(self.run_dir)
        self._key, sub = jr.split(self._key)
        explore = explores(agent.controller)
        action, self._state, _, _ = agent_step(agent, jnp.asarray(obs[None]), self._state, sub, explore=explore)
        if explore:
            return np.asarray(action[0], np.float32)
        self._noise = ou_noise_step(self._noise, self._rng, self.noise)
        return add_noise(np.asarray(action[0]), self._noise, np.asarray(self.low), np.asarray(self.high))


_AGENTS: dict[str, Any] = {}


def _load_agent(run_dir: Path):
    """The run's V + M + C (``run_dir.load_agent``), loaded once per process."""
    key = str(Path(run_dir).resolve())
    if key not in _AGENTS:
        from worldmodels.run_dir import load_agent

        _AGENTS[key] = load_agent(run_dir)
    return _AGENTS[key]


def make_policy(cfg: CollectConfig, run_dir: Path | None = None) -> Policy:
    """The collection policy named by ``cfg.policy``.

    Args:
        cfg: collection config (policy name and its parameters).
        run_dir: the run directory; the ``controller`` policy loads its agent from ``cfg.controller_run``
            or, when that is empty, from here.

    ``CollectConfig`` has already refused a policy that does not apply to ``cfg.env`` (``config._check_policy``).

    Raises:
        ValueError: for an unknown policy name, or ``controller`` without a run directory.
    """
    name, spec = cfg.policy, get_spec(cfg.env)
    box = (spec.action_low, spec.action_high)
    if name == "brownian":
        return BrownianPolicy(cfg.brownian_sigma, cfg.brownian_theta, tuple(cfg.brownian_mean), *box)
    if name == "heuristic" and spec.name == "lunarlander":
        return LanderHeuristicPolicy(cfg.heuristic_noise)
    if name == "random_controller":
        return RandomControllerPolicy(cfg.random_controller_scale)
    if name == "heuristic":
        return HeuristicPolicy()
    if name == "aggressive":
        return HeuristicPolicy(aggressive=True)
    if name == "recovery":
        return RecoveryPolicy(every=cfg.recovery_every, steps=cfg.recovery_steps)
    if name == "controller":
        source = cfg.controller_run or run_dir
        if not source:
            raise ValueError("the controller policy needs a run directory holding a trained agent")
        return ControllerPolicy(Path(source), cfg.controller_noise, *box)
    raise ValueError(f"unknown collection policy {name!r}; available: {', '.join(POLICIES)}")
