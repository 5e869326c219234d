"""Environments as data: one ``EnvSpec`` per environment, and the factories that build them.

An ``EnvSpec`` says everything the pipeline needs to know about an environment: its Gymnasium id and
arguments, whether the agent sees pixels or a vector (the observations' shape chooses V's kind: the
convolutional VAE or the MLP autoencoder, ``train.vision_kind``), the action box and how a controller's raw
outputs are squashed into it, the reward that counts as solved, and the collection policies that apply.
Stages read the spec of their run (``run_dir.env_spec``, recorded by the collection stage as
``collect.env``); nothing else branches on an environment's name.

``carracing`` (the default, Ha & Schmidhuber 2018): frames are cropped above the HUD (rows 0:84 of the
96x96 render) and resized to 64x64 with ``cv2.INTER_AREA`` (Sec. 3.1); actions steer in [-1, 1], gas
and brake in [0, 1].

``lunarlander``: ``LunarLander-v3`` with ``continuous=True``: an 8-dim float32 vector observation
(position, velocity, angle, angular velocity, two leg contacts), 2 actions in [-1, 1] (main and lateral
engine), solved at 200.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import gymnasium as gym
import numpy as np

ENV_ID = "CarRacing-v3"
FRAME_SIZE = 64
"""Side of the square frames the models see."""
HUD_ROW = 84
"""First row of the status bar at the bottom of CarRacing's 96x96 frames."""
ACTION_LOW = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0], dtype=np.float32)
ACTION_SIZE = 3


def preprocess(frame: np.ndarray) -> np.ndarray:
    """Crop the HUD and resize a CarRacing frame.

    Args:
        frame: uint8 array of shape (96, 96, 3), HWC RGB.

    Returns:
        uint8 array of shape (64, 64, 3).

    Raises:
        ValueError: if ``frame`` is not a (H >= 84, W, 3) uint8 image.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < HUD_ROW or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (96, 96, 3) CarRacing frame, got {frame.dtype} {frame.shape}")
    return cv2.resize(frame[:HUD_ROW], (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class EnvSpec:
    """One environment as data.

    Attributes:
        name: the name configs and run directories use (``collect.env``).
        gym_id: Gymnasium id.
        gym_kwargs: keyword arguments of ``gym.make`` besides the time limit and render mode.
        observation: ``pixels`` (uint8 (64, 64, 3) after ``preprocess``) or ``vector`` (float32 (obs_size,)).
        obs_shape: shape of one observation as the models see it.
        action_low, action_high: the action box, float (A,) each.
        squash: how raw controller outputs map into the box (``models.controller.squash_action``: ``carracing``
            or ``tanh``).
        reward_threshold: the return at which the task counts as solved (Gymnasium's, CarRacing's 900).
        policies: the collection policies that apply (``config.COLLECTION_POLICIES``).
        obs_names: short names of a vector observation's dimensions (for plots and videos).
    """

    name: str
    gym_id: str
    gym_kwargs: tuple[tuple[str, object], ...]
    observation: str
    obs_shape: tuple[int, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    squash: str
    reward_threshold: float
    policies: tuple[str, ...]
    obs_names: tuple[str, ...] = ()

    @property
    def action_size(self) -> int:
        """A, the number of action dimensions."""
        return len(self.action_low)

    @property
    def obs_dtype(self) -> type:
        """numpy dtype of stored observations: uint8 frames or float32 vectors."""
        return np.uint8 if self.observation == "pixels" else np.float32

    def low(self) -> np.ndarray:
        """float32 (A,) lower bounds of the action box."""
        return np.array(self.action_low, np.float32)

    def high(self) -> np.ndarray:
        """float32 (A,) upper bounds of the action box."""
        return np.array(self.action_high, np.float32)


ENVS: dict[str, EnvSpec] = {
    "carracing": EnvSpec(
        name="carracing",
        gym_id=ENV_ID,
        gym_kwargs=(("continuous", True),),
        observation="pixels",
        obs_shape=(FRAME_SIZE, FRAME_SIZE, 3),
        action_low=tuple(ACTION_LOW.tolist()),
        action_high=tuple(ACTION_HIGH.tolist()),
        squash="carracing",
        reward_threshold=900.0,
        policies=("brownian", "random_controller", "heuristic", "recovery", "aggressive", "controller"),
    ),
    "lunarlander": EnvSpec(
        name="lunarlander",
        gym_id="LunarLander-v3",
        gym_kwargs=(("continuous", True),),
        observation="vector",
        obs_shape=(8,),
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
        squash="tanh",
        reward_threshold=200.0,
        policies=("brownian", "heuristic", "controller"),
        obs_names=("x", "y", "vx", "vy", "angle", "omega", "legL", "legR"),
    ),
}
"""Every environment the pipeline runs on, by name."""


def get_spec(name: str) -> EnvSpec:
    """The spec of environment ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; available: {', '.join(ENVS)}")
    return ENVS[name]


def make_env(max_steps: int = 1000, render_mode: str | None = None, env: str = "carracing") -> gym.Env:
    """Environment ``env`` with a ``max_steps`` time limit, observations as the models see them.

    CarRacing's frames go through ``preprocess`` (Gymnasium's ``TransformObservation`` wrapper, so the
    wrapped env keeps Gymnasium's checks and the time limit): uint8 (64, 64, 3). A vector environment's
    observations are float32 (obs_size,). Seeds are explicit: pass ``seed=`` to ``reset``.

    Args:
        max_steps: episode length cap in steps (truncation).
        render_mode: passed to ``gym.make`` (``None`` or ``"rgb_array"``).
        env: an ``ENVS`` name.

    Raises:
        ValueError: for an unknown ``env``.
    """
    spec = get_spec(env)
    made = gym.make(spec.gym_id, max_episode_steps=max_steps, render_mode=render_mode, **dict(spec.gym_kwargs))
    if spec.observation == "pixels":
        space = gym.spaces.Box(0, 255, spec.obs_shape, np.uint8)
        return gym.wrappers.TransformObservation(made, preprocess, space)
    return made


def clip_action(action: np.ndarray, env: str = "carracing") -> np.ndarray:
    """Clip (..., A) actions to the action box of ``env``; returns float32."""
    spec = get_spec(env)
    return np.clip(np.asarray(action, dtype=np.float32), spec.low(), spec.high())
