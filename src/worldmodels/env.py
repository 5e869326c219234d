"""CarRacing-v3 preprocessing and environment factories.

Frames are cropped above the HUD (rows 0:84 of the 96x96 render) and resized to 64x64 with
``cv2.INTER_AREA``, as in Ha & Schmidhuber 2018 (Sec. 3.1). Actions are CarRacing's continuous
(steer in [-1, 1], gas in [0, 1], brake in [0, 1]).
"""

from __future__ import annotations

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


def make_env(max_steps: int = 1000, render_mode: str | None = None) -> gym.Env:
    """CarRacing-v3 with 64x64 uint8 observations and a ``max_steps`` time limit.

    Seeds are explicit: pass ``seed=`` to ``reset``. Uses Gymnasium's ``TransformObservation``
    wrapper, so the wrapped env keeps Gymnasium's checks and the time limit.

    Args:
        max_steps: episode length cap in steps (truncation).
        render_mode: passed to ``gym.make`` (``None`` or ``"rgb_array"``).

    Returns:
        A ``gym.Env`` whose observations are uint8 (64, 64, 3).
    """
    env = gym.make(ENV_ID, continuous=True, max_episode_steps=max_steps, render_mode=render_mode)
    space = gym.spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    return gym.wrappers.TransformObservation(env, preprocess, space)


def clip_action(action: np.ndarray) -> np.ndarray:
    """Clip (..., 3) actions to CarRacing's bounds; returns float32."""
    return np.clip(np.asarray(action, dtype=np.float32), ACTION_LOW, ACTION_HIGH)
