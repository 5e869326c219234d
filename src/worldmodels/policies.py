"""Data-collection policies. Each is a small stateful object: ``reset(seed)`` then ``act(obs) -> action``.

Actions are float32 (3,) in CarRacing's box: steer in [-1, 1], gas and brake in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldmodels.config import CollectConfig
from worldmodels.env import ACTION_HIGH, ACTION_LOW


@dataclass
class BrownianPolicy:
    """Smooth random actions: an Ornstein-Uhlenbeck process clipped to the action box.

    a_{t+1} = clip(a_t + theta (mean - a_t) + sigma * eps_t), eps_t ~ N(0, I). Random driving that
    turns, accelerates and brakes for stretches of time, like the paper's random rollouts (Sec. 3.1),
    instead of white noise that averages out to standing still.
    """

    sigma: float = 0.3
    theta: float = 0.5
    mean: tuple[float, float, float] = (0.0, 0.35, 0.0)

    def reset(self, seed: int) -> None:
        """Start a new episode with its own random stream."""
        self._rng = np.random.default_rng(seed)
        self._mean = np.asarray(self.mean, dtype=np.float32)
        self._action = self._mean.copy()

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """Next action, float32 (3,); ``obs`` is ignored."""
        noise = self._rng.standard_normal(3).astype(np.float32)
        self._action = np.clip(
            self._action + self.theta * (self._mean - self._action) + self.sigma * noise, ACTION_LOW, ACTION_HIGH
        )
        return self._action.copy()


POLICIES = ("brownian",)


def make_policy(cfg: CollectConfig) -> BrownianPolicy:
    """The collection policy named by ``cfg.policy``.

    Raises:
        ValueError: for an unknown policy name.
    """
    if cfg.policy == "brownian":
        return BrownianPolicy(cfg.brownian_sigma, cfg.brownian_theta, tuple(cfg.brownian_mean))
    raise ValueError(f"unknown collection policy {cfg.policy!r}; available: {', '.join(POLICIES)}")
