"""Privileged pure-pursuit driver for CarRacing-v3, used only to collect training data.

The driver reads the simulator's internal state through ``env.unwrapped`` (the track centre
line in ``track`` and the car body in ``car.hull``), which the learned World Models agent never
sees. It exists to produce rollouts that cover the whole track (a good driver) or that leave
the road and recover (:func:`aggressive_driver`), so that the vision and memory models see the
states a competent controller reaches.

Control law:

* **Steering** is pure pursuit: aim at the track centre a speed-dependent number of tiles ahead
  of the nearest tile, ``steer = clip(-gain * heading_error - yaw_damping * yaw_rate)``, where a
  positive ``heading_error`` means the target lies to the car's left (CarRacing's positive steer
  turns right).
* **Speed** follows a braking-distance profile: each upcoming tile ``j`` at path distance ``d_j``
  with curvature ``k_j`` allows ``v_j = sqrt(lateral_accel / k_j)``, and the car may go at most
  ``min_j sqrt(v_j**2 + 2 * brake_decel * d_j)`` now (capped by ``max_speed``).
* **Throttle** is moderate and cut while steering hard, because the car is rear-wheel drive
  and full gas at speed spins it out; the brake is applied when the speed exceeds the profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

__all__ = ["PursuitDriver", "aggressive_driver"]


def _wrap(angle: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@dataclass
class PursuitDriver:
    """Pure-pursuit steering plus a curvature-based speed profile, from privileged env state.

    Speeds are Box2D units per second (``|car.hull.linearVelocity|``); distances are in tiles
    (one tile is about 3.5 units of centre line).

    Attributes:
        lookahead_tiles: pursuit target distance, in tiles ahead of the nearest tile, at rest.
        lookahead_per_speed: extra lookahead tiles per unit of speed.
        steer_gain: steering per radian of heading error to the target.
        yaw_damping: steering per rad/s of yaw rate (counter-steer damping).
        max_speed: target speed on straights.
        lateral_accel: allowed lateral acceleration in corners; corner speed is
            ``sqrt(lateral_accel / curvature)``.
        brake_decel: assumed deceleration when braking, for the braking-distance profile.
        curvature_span: tiles on each side used to estimate the curvature at a tile.
        horizon_tiles: how many tiles ahead the speed profile looks.
        gas: throttle below the target speed.
        gas_steer_cut: throttle is scaled by ``1 - gas_steer_cut * |steer|``.
        brake: brake strength when the speed exceeds ``brake_margin * target``.
        brake_margin: ratio of speed to target above which the driver brakes.
        offtrack_dist: distance from the centre line (road half-width is about 6.7) beyond
            which the car counts as off the road.
        recovery_speed: target speed while off the road or facing away from the target.
        recovery_heading: heading error (rad) beyond which the car counts as facing away.
        spin_yaw_rate: yaw rate (rad/s) above which the throttle is cut to stop a spin.
        search_back: tiles behind the previous nearest tile searched for the new one.
        search_ahead: tiles ahead of the previous nearest tile searched for the new one.
        relocate_dist: if the nearest tile in the search window is farther than this, the whole
            track is searched.
    """

    lookahead_tiles: float = 3.0
    lookahead_per_speed: float = 0.06
    steer_gain: float = 2.0
    yaw_damping: float = 0.1
    max_speed: float = 100.0
    lateral_accel: float = 250.0
    brake_decel: float = 100.0
    curvature_span: int = 2
    horizon_tiles: int = 40
    gas: float = 0.7
    gas_steer_cut: float = 0.6
    brake: float = 0.6
    brake_margin: float = 1.05
    offtrack_dist: float = 8.0
    recovery_speed: float = 20.0
    recovery_heading: float = 1.0
    spin_yaw_rate: float = 2.5
    search_back: int = 5
    search_ahead: int = 25
    relocate_dist: float = 60.0
    _track_key: tuple = field(default=(), init=False, repr=False)
    _points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), init=False, repr=False)
    _curv: np.ndarray = field(default_factory=lambda: np.zeros(0), init=False, repr=False)
    _seg: float = field(default=1.0, init=False, repr=False)
    _idx: int = field(default=-1, init=False, repr=False)

    def reset(self) -> None:
        """Forget the cached track and the car's tile index (call at every episode start)."""
        self._track_key = ()
        self._idx = -1

    @staticmethod
    def _key(track: list[tuple[float, float, float, float]]) -> tuple:
        """Identity of a track that survives ``id`` reuse: object id, length and first tile."""
        return (id(track), len(track), tuple(track[0]) if track else ())

    def _load_track(self, track: list[tuple[float, float, float, float]]) -> None:
        """Cache centre points and per-tile curvature (rad per unit length) for ``track``."""
        pts = np.asarray([(t[2], t[3]) for t in track], dtype=np.float64)
        nxt = np.roll(pts, -1, axis=0)
        delta = nxt - pts
        heading = np.arctan2(delta[:, 1], delta[:, 0])
        seg = np.linalg.norm(delta, axis=1)
        self._seg = float(np.mean(seg))
        s = max(1, int(self.curvature_span))
        turn = np.angle(np.exp(1j * (np.roll(heading, -s) - np.roll(heading, s))))
        self._curv = np.abs(turn) / (2 * s * self._seg)
        self._points = pts
        self._track_key = self._key(track)
        self._idx = -1

    def _nearest(self, pos: np.ndarray) -> tuple[int, float]:
        """Index of (and distance to) the tile nearest ``pos``, searched near the previous index."""
        n = len(self._points)
        if self._idx < 0:
            cand = np.arange(n)
        else:
            cand = np.arange(self._idx - self.search_back, self._idx + self.search_ahead + 1) % n
        d2 = np.sum((self._points[cand] - pos) ** 2, axis=1)
        best = int(cand[int(np.argmin(d2))])
        dmin2 = float(d2.min())
        if self._idx >= 0 and dmin2 > self.relocate_dist**2:
            # Far from the searched window (e.g. after a slide across the grass): search globally.
            d2 = np.sum((self._points - pos) ** 2, axis=1)
            best = int(np.argmin(d2))
            dmin2 = float(d2[best])
        self._idx = best
        return best, math.sqrt(dmin2)

    def target_speed(self, idx: int) -> float:
        """Highest speed allowed at tile ``idx`` given the braking distance to the corners ahead."""
        n = len(self._points)
        j = np.arange(1, self.horizon_tiles + 1)
        curv = self._curv[(idx + j) % n]
        dist = (j - 1) * self._seg
        corner = np.sqrt(self.lateral_accel / np.maximum(curv, 1e-6))
        allowed = np.sqrt(corner**2 + 2.0 * self.brake_decel * dist)
        return float(min(self.max_speed, allowed.min()))

    def act(self, env: gym.Env) -> np.ndarray:
        """Action for the current state of ``env`` (any wrapper around CarRacing-v3).

        Args:
            env: the environment; its ``unwrapped`` must expose ``track`` and ``car``.

        Returns:
            float32 array (steer, gas, brake) within [-1, 1] x [0, 1] x [0, 1].
        """
        u = env.unwrapped
        if self._key(u.track) != self._track_key:
            self._load_track(u.track)
        hull = u.car.hull
        pos = np.array([hull.position[0], hull.position[1]], dtype=np.float64)
        vel = np.array([hull.linearVelocity[0], hull.linearVelocity[1]], dtype=np.float64)
        speed = float(np.hypot(vel[0], vel[1]))
        n = len(self._points)
        idx, dist = self._nearest(pos)

        ahead = int(round(self.lookahead_tiles + self.lookahead_per_speed * speed))
        target = self._points[(idx + max(1, ahead)) % n]
        fwd = np.array([-math.sin(hull.angle), math.cos(hull.angle)])
        to = target - pos
        cross = fwd[0] * to[1] - fwd[1] * to[0]
        dot = fwd[0] * to[0] + fwd[1] * to[1]
        err = math.atan2(cross, dot)  # > 0: target to the left
        steer = -self.steer_gain * err + self.yaw_damping * float(hull.angularVelocity)
        steer = float(np.clip(steer, -1.0, 1.0))

        v_target = self.target_speed(idx)
        if dist > self.offtrack_dist or abs(err) > self.recovery_heading:
            v_target = min(v_target, self.recovery_speed)
        yaw_rate = abs(float(hull.angularVelocity))
        if speed < v_target:
            gas = self.gas * max(0.0, 1.0 - self.gas_steer_cut * abs(steer))
            if yaw_rate > self.spin_yaw_rate:
                gas = 0.0
            brake = 0.0
        elif speed > self.brake_margin * v_target:
            gas, brake = 0.0, self.brake
        else:
            gas, brake = 0.0, 0.0
        return np.array([steer, gas, brake], dtype=np.float32)


def aggressive_driver() -> PursuitDriver:
    """A :class:`PursuitDriver` that enters corners too fast and brakes late.

    It sometimes slides onto the grass and has to steer back, which puts off-track recovery
    states into the collected data while still making progress around the track: full
    throttle, no throttle cut while steering, a corner-speed model that allows several times the
    grip the car has, and a recovery mode that tolerates more heading error and yaw rate.
    """
    return PursuitDriver(
        max_speed=130.0,
        lateral_accel=1000.0,
        brake_decel=200.0,
        gas=1.0,
        gas_steer_cut=0.0,
        recovery_heading=1.5,
        spin_yaw_rate=3.5,
    )
