"""The teammate population: self-play PPO policies and scripted partners, behind one ``PartnerPool``.

Every member maps its OWN observation to an action distribution. In Overcooked the observation is uint8
(H, W, 26) (JaxMARL's ``Overcooked.get_obs``) and the six actions are 0 up, 1 down, 2 right, 3 left, 4 stay,
5 interact (the index of a move is its index into JaxMARL's ``DIR_TO_VEC``). Kinds, by code:

0. ``learned``: a self-play IPPO ``PolicyNet`` (``worldmodels.marl.ppo``), sampled from its logits;
1. ``random``: uniform over the six actions;
2. ``stay``: always action 4;
3. ``cook``: a scripted onion cook (``cook_action``) that fills a pot with onions, then fetches a plate, picks the
   soup up and delivers it;
4. ``cook_eps``: the cook, but uniform at random with probability ``COOK_EPS``.

The observation channels the cook reads (``get_obs``'s docstring): 0 own position, 1 partner position, 2-5 own
orientation, 10 pots, 11 counters, 12 onion piles, 14 plate piles, 15 delivery, 16 onions in a pot not yet
cooking, 20 cooking time left, 21 soup ready (in a pot or on a plate), 22 plates, 23 onions; items held by an agent
show on its own tile.

In MPE cooperative navigation (``mpe_spread``) the observation is float32 (12,) (``worldmodels.marl.env``) and the
five actions are 0 stay, 1 left, 2 right, 3 down, 4 up. Scripted kinds there: 1 ``random``, 2 ``stay``, 3
``nearest`` (steers to the landmark nearest to itself, ``steer_to``), 4 ``landmark_0`` and 5 ``landmark_1``
(steer to that landmark whatever the agent does), 6 ``complement`` (steers to the landmark its teammate is not
nearest to, ``complement_landmark``: the division of labour a perfect model of a ``nearest`` teammate allows; the
project's scripted reference for what our agent could reach).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, UInt8

from worldmodels import checkpoint
from worldmodels.config import PPOConfig, scripted_partners
from worldmodels.errors import MissingInput
from worldmodels.marl import env as menv
from worldmodels.marl.ppo import PolicyNet, build_policy, policy_hparams, train_ppo

KIND_LEARNED, KIND_RANDOM, KIND_STAY, KIND_COOK, KIND_COOK_EPS = 0, 1, 2, 3, 4
"""Member kind codes (``PartnerPool.kind``)."""
STEER_GAIN = 3.0
"""``steer_to``'s weight of the velocity against the distance (a PD rule: the particle keeps momentum)."""
ARRIVED = 0.05
"""``steer_to`` stays when the steering vector is shorter than this."""


def scripted(env: str) -> dict[str, int]:
    """The scripted members' kind codes by name in environment ``env`` (``overcooked`` or ``mpe_spread``): the
    names the config accepts (``config.scripted_partners``), coded 1, 2, ... in that order."""
    return {name: code for code, name in enumerate(scripted_partners(env), start=1)}


SCRIPTED = scripted("overcooked")
"""Overcooked's scripted members by name: random ``KIND_RANDOM``, stay ``KIND_STAY``, cook ``KIND_COOK``, cook_eps
``KIND_COOK_EPS``."""


COOK_EPS = 0.2
"""Probability that ``cook_eps`` acts uniformly at random instead of as the cook."""
INTERACT = 5
"""The interact action."""
CHECKPOINT_KIND = "partner_pool"
"""The checkpoint kind of a saved pool."""

_MOVES = ((0, -1), (0, 1), (1, 0), (-1, 0))
"""(dx, dy) of actions 0-3 (up, down, right, left): JaxMARL's ``DIR_TO_VEC``."""
_BLOCKING = (10, 11, 12, 13, 14, 15, 18, 21, 22, 23)
"""Channels that mark a tile no agent can enter (pots, counters, piles, delivery, items lying on counters)."""


def _shift(grid: Array, dx: int, dy: int, fill: Any) -> Array:
    """``grid[y + dy, x + dx]`` at each (y, x) of an (H, W) grid, ``fill`` beyond its edge."""
    h, w = grid.shape
    padded = jnp.pad(grid, 1, constant_values=fill)
    return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def _beside(grid: Bool[Array, "H W"]) -> Bool[Array, "H W"]:
    """Tiles with a 4-neighbour in ``grid``."""
    out = jnp.zeros_like(grid)
    for dx, dy in _MOVES:
        out = out | _shift(grid, dx, dy, False)
    return out


def distance_field(goal: Bool[Array, "H W"], passable: Bool[Array, "H W"]) -> Int[Array, "H W"]:
    """Steps from each passable tile to the nearest passable ``goal`` tile (breadth-first search as H * W rounds of
    relaxation over 4-neighbours); H * W + 1 where none is reachable and on every impassable tile."""
    h, w = goal.shape
    big = h * w + 1
    dist = jnp.where(passable & goal, 0, big)

    def relax(_: Any, d: Array) -> Array:
        nearest = jnp.stack([_shift(d, dx, dy, big) for dx, dy in _MOVES]).min(0)
        return jnp.where(passable, jnp.minimum(d, jnp.minimum(nearest + 1, big)), big)

    return jax.lax.fori_loop(0, h * w, relax, dist)


def cook_plan(obs: UInt8[Array, "H W C"]) -> tuple[Bool[Array, "H W"], Bool[Array, ""]]:
    """What the onion cook does next, from its own observation: (the counter tiles bool (H, W) it wants to interact
    with, wait bool ()); waiting means standing clear of the pots' neighbours until something changes.

    * holding a soup: deliver it;
    * holding a plate: take the soup from a pot where it is ready, else wait beside one where it cooks; with no soup
      on the way, wait when the partner carries the onion that fills the pot, else put the plate on a counter;
    * holding an onion: put it in a pot that still takes onions, else on a counter;
    * empty-handed: pick up a soup lying on a counter; with a soup on the way, fetch a plate unless the partner holds
      one (then fetch an onion for a second pot that takes onions, else wait); with none, fetch an onion while the
      pots still need more than the partner carries, else fetch a plate.

    Plates and onions come from their piles or from counters. Pot states are channels 16 (onions in a pot not yet
    cooking), 20 (cooking time left) and 21 (ready).
    """
    o = obs.astype(jnp.int32)
    ch = lambda c: o[..., c] > 0
    me, mate = ch(0), ch(1)
    agents = me | mate
    pot, ready = ch(10), ch(21)
    holds = lambda who, layer: jnp.any(who & layer)
    hold_onion, hold_plate, hold_dish = holds(me, ch(23)), holds(me, ch(22)), holds(me, ready)
    mate_onion, mate_plate, mate_dish = holds(mate, ch(23)), holds(mate, ch(22)), holds(mate, ready)

    pot_ready = pot & ready
    pot_cooking = pot & ((o[..., 20] > 0) | (o[..., 16] >= 3))
    pot_open = pot & ~pot_ready & ~pot_cooking
    soup_coming = jnp.any(pot_ready | pot_cooking)
    onions_needed = jnp.sum(jnp.where(pot_open, 3 - o[..., 16], 0)) - mate_onion.astype(jnp.int32)
    free_counter = ch(11)
    loose_dish = ready & ~pot & ~agents
    plates = ch(14) | (ch(22) & ~agents)
    onions = ch(12) | (ch(23) & ~agents)
    none = jnp.zeros_like(pot)

    # Empty-handed
    mate_serves = mate_plate | mate_dish
    target = jnp.where(onions_needed > 0, onions, plates)
    target = jnp.where(soup_coming, jnp.where(mate_serves, jnp.where(onions_needed > 0, onions, none), plates), target)
    target = jnp.where(jnp.any(loose_dish), loose_dish, target)
    wait = ~jnp.any(target)
    # Holding an onion
    onion_target = jnp.where(jnp.any(pot_open), pot_open, free_counter)
    target = jnp.where(hold_onion, onion_target, target)
    wait = wait & ~hold_onion
    # Holding a plate
    plate_target = jnp.where(jnp.any(pot_ready), pot_ready, pot_cooking)
    plate_wait = ~soup_coming & (onions_needed <= 0)
    plate_target = jnp.where(soup_coming, plate_target, jnp.where(plate_wait, none, free_counter))
    target = jnp.where(hold_plate, plate_target, target)
    wait = jnp.where(hold_plate, plate_wait, wait)
    # Holding a soup
    target = jnp.where(hold_dish, ch(15), target)
    wait = wait & ~hold_dish
    return target, wait


def walk_to(obs: UInt8[Array, "H W C"], target: Bool[Array, "H W"], wait: Bool[Array, ""]) -> Int[Array, ""]:
    """The action that brings the agent of ``obs`` (channel 0) to interact with a ``target`` tile, or, when
    ``wait``, to stand on a floor tile beside no pot (so as not to block the pots).

    Facing a target from the next tile: interact (5). Beside one but facing elsewhere: move toward it (a blocked
    move only turns the agent). Otherwise step to the neighbour that shortens the ``distance_field`` over free
    floor with the partner's tile blocked, or, with no such path, ignoring the partner; stay (4) when there already
    or when nothing is reachable. Two agents stepping into one tile both bounce and end facing it; the one of them
    with the larger tile index (row-major) then turns away for a step (a move into a blocked neighbour, else a step
    back), so that two such agents never bounce forever, and an agent beside a partner that does not move loses one
    step at most.
    """
    o = obs.astype(jnp.int32)
    me, mate = o[..., 0] > 0, o[..., 1] > 0
    blocked = jnp.any(o[..., jnp.array(_BLOCKING)] > 0, axis=-1) & ~(me | mate)
    big = target.size + 1
    at_me = lambda grid: jnp.sum(jnp.where(me, grid, 0))
    around = lambda grid, fill: jnp.stack([at_me(_shift(grid, dx, dy, fill)) for dx, dy in _MOVES])

    beside = (around(target, False) > 0) & ~wait
    facing = jnp.argmax(jnp.stack([at_me(o[..., 2 + k]) for k in range(4)]))
    goal = jnp.where(wait, ~_beside(o[..., 10] > 0), _beside(target))
    step = [around(distance_field(goal, p), big) for p in (~blocked & ~mate, ~blocked)]
    move = jnp.where(
        step[0].min() < big,
        jnp.argmin(step[0]),
        jnp.where(step[1].min() < big, jnp.argmin(step[1]), menv.STAY),
    )
    move = jnp.where(wait & (at_me(goal) > 0), menv.STAY, move)

    # Bounce breaking: the partner faces the tile this agent faces and is about to enter.
    mate_front = jnp.zeros_like(mate)
    for k, (dx, dy) in enumerate(_MOVES):
        mate_front = mate_front | _shift(o[..., 6 + k] > 0, -dx, -dy, False)
    index = jnp.arange(target.size).reshape(target.shape)
    contested = (move < menv.STAY) & (move == facing) & around(mate_front, False)[jnp.minimum(move, 3)]
    yields = contested & (at_me(index) > jnp.sum(jnp.where(mate, index, 0)))
    closed = around(blocked | mate, True)
    away = jnp.argmin(jnp.where(jnp.arange(4) == move, 2, jnp.where(closed, 0, 1)))
    move = jnp.where(yields, away, move)

    action = jnp.where(beside[facing], INTERACT, jnp.where(jnp.any(beside), jnp.argmax(beside), move))
    return action.astype(jnp.int32)


def cook_action(obs: UInt8[Array, "H W C"]) -> Int[Array, ""]:
    """The scripted onion cook's action int32 () from its own observation uint8 (H, W, C) (``cook_plan`` then
    ``walk_to``)."""
    return walk_to(obs, *cook_plan(obs))


def steer_to(obs: Float[Array, " 12"], landmark: Int[Array, ""] | int) -> Int[Array, ""]:
    """MPE: the action int32 () that steers an agent towards landmark ``landmark`` (0 or 1) from its own observation
    float32 (12,): the move along the larger axis of (relative position - ``STEER_GAIN`` x 0.1 s x velocity), a
    proportional-derivative rule that brakes before it arrives; stay once that vector is shorter than ``ARRIVED``."""
    vel, rel = obs[0:2], jnp.stack([obs[4:6], obs[6:8]])[landmark]
    want = rel - STEER_GAIN * 0.1 * vel
    axis = jnp.argmax(jnp.abs(want))
    move = 1 + 2 * axis + (want[axis] > 0)  # 1 left, 2 right, 3 down, 4 up
    return jnp.where(jnp.linalg.norm(want) < ARRIVED, menv.MPE_STAY, move).astype(jnp.int32)


def nearest_landmark(obs: Float[Array, " 12"]) -> Int[Array, ""]:
    """MPE: the index int32 () of the landmark nearest to the agent, from its own observation."""
    return jnp.argmin(jnp.stack([jnp.linalg.norm(obs[4:6]), jnp.linalg.norm(obs[6:8])])).astype(jnp.int32)


def complement_landmark(obs: Float[Array, " 12"]) -> Int[Array, ""]:
    """MPE: the index int32 () of the landmark its teammate is NOT nearest to, from the agent's own observation
    (landmark k relative to the teammate is obs[4 + 2k : 6 + 2k] - obs[8:10]): cooperative navigation's division
    of labour when the teammate heads for its nearest landmark."""
    team = obs[8:10]
    to_team = jnp.stack([jnp.linalg.norm(obs[4:6] - team), jnp.linalg.norm(obs[6:8] - team)])
    return (1 - jnp.argmin(to_team)).astype(jnp.int32)


def _mpe_probs(kind: Int[Array, ""], obs: Float[Array, " 12"]) -> Float[Array, " 5"]:
    n = menv.NUM_ACTIONS_OF["mpe_spread"]
    uniform = jnp.full(n, 1.0 / n, jnp.float32)
    hot = lambda a: jax.nn.one_hot(a, n, dtype=jnp.float32)  # noqa: E731
    nearest = hot(steer_to(obs, nearest_landmark(obs)))
    complement = hot(steer_to(obs, complement_landmark(obs)))
    table = jnp.stack(
        [uniform, uniform, hot(menv.MPE_STAY), nearest, hot(steer_to(obs, 0)), hot(steer_to(obs, 1)), complement]
    )
    return table[jnp.clip(kind, 0, len(table) - 1)]


def scripted_probs(kind: Int[Array, ""], obs: Array, env: str = "overcooked") -> Float[Array, " A"]:
    """The action distribution float32 (A,) of scripted kind ``kind`` (traced ok) on its own observation in
    environment ``env`` (static). Overcooked (codes 1-4): uniform for ``random`` (and for the code 0 of a learned
    member, which has no script), one-hot for ``stay`` and ``cook``, the cook mixed with uniform at ``COOK_EPS`` for
    ``cook_eps``. MPE (codes 1-6): uniform for ``random``, one-hot for the others."""
    if env == "mpe_spread":
        return _mpe_probs(kind, obs)
    uniform = jnp.full(menv.NUM_ACTIONS, 1.0 / menv.NUM_ACTIONS, jnp.float32)
    cook = jax.nn.one_hot(cook_action(obs), menv.NUM_ACTIONS, dtype=jnp.float32)
    table = jnp.stack(
        [
            uniform,
            uniform,
            jax.nn.one_hot(menv.STAY, menv.NUM_ACTIONS, dtype=jnp.float32),
            cook,
            (1.0 - COOK_EPS) * cook + COOK_EPS * uniform,
        ]
    )
    return table[jnp.clip(kind, 0, len(table) - 1)]


def scripted_act(kind: Int[Array, ""], obs: Array, key: PRNGKeyArray, env: str = "overcooked") -> Int[Array, ""]:
    """An action int32 () of scripted kind ``kind`` (traced ok), sampled from ``scripted_probs``."""
    return jr.categorical(key, jnp.log(scripted_probs(kind, obs, env))).astype(jnp.int32)


class PartnerPool(eqx.Module):
    """A population of teammates, each a learned ``PolicyNet`` or a scripted rule, indexable by a traced member.

    Attributes:
        nets: the learned networks stacked along a leading axis (at least one: a dummy when no member is learned).
        kind: int32 (M,) each member's kind code (``KIND_LEARNED`` ... ``KIND_COOK_EPS``).
        net_index: int32 (M,) the stacked net a learned member uses (0 for scripted members).
        names: the members' names (static).
        env: the environment whose scripted rules the kind codes name (static): ``overcooked`` or ``mpe_spread``.
    """

    nets: PolicyNet
    kind: Int[Array, " M"]
    net_index: Int[Array, " M"]
    names: tuple[str, ...] = eqx.field(static=True)
    env: str = eqx.field(static=True, default="overcooked")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_nets(self) -> int:
        """The number of stacked networks."""
        return int(jax.tree.leaves(self.nets)[0].shape[0])

    def net(self, index: Int[Array, ""] | int) -> PolicyNet:
        """The stacked network ``index`` as one ``PolicyNet``."""
        params, static = eqx.partition(self.nets, eqx.is_array)
        return eqx.combine(jax.tree.map(lambda x: x[index], params), static)

    def _learned_logits(self, member: Int[Array, ""], obs: UInt8[Array, "H W C"]) -> Float[Array, " 6"]:
        return self.net(self.net_index[member])(obs)[0]

    def probs(self, member: Int[Array, ""], obs: UInt8[Array, "H W C"]) -> Float[Array, " 6"]:
        """Member ``member``'s (int32 (), traced ok) action distribution float32 (6,) on its own observation uint8
        (H, W, C): the softmax of a learned net's logits, or ``scripted_probs``."""
        kind = self.kind[member]
        learned = jax.nn.softmax(self._learned_logits(member, obs))
        return jnp.where(kind == KIND_LEARNED, learned, scripted_probs(kind, obs, self.env))

    def act(self, member: Int[Array, ""], obs: UInt8[Array, "H W C"], key: PRNGKeyArray) -> Int[Array, ""]:
        """An action int32 () of member ``member`` (int32 (), traced ok) on its own observation uint8 (H, W, C),
        sampled from its logits (a learned net) or its scripted distribution."""
        kind = self.kind[member]
        logits = jnp.where(
            kind == KIND_LEARNED, self._learned_logits(member, obs), jnp.log(scripted_probs(kind, obs, self.env))
        )
        return jr.categorical(key, logits).astype(jnp.int32)


def stack_nets(nets: Sequence[PolicyNet]) -> PolicyNet:
    """``PolicyNet``s of one architecture stacked along a new leading axis of their arrays."""
    params = [eqx.filter(n, eqx.is_array) for n in nets]
    static = eqx.partition(nets[0], eqx.is_array)[1]
    return eqx.combine(jax.tree.map(lambda *x: jnp.stack(x), *params), static)


def make_pool(
    names: Sequence[str],
    nets: dict[str, PolicyNet] | None = None,
    *,
    obs_size: int,
    units: int = 64,
    env: str = "overcooked",
) -> PartnerPool:
    """A pool of ``names`` in that order: a name in ``scripted(env)`` is that rule, any other must be a key of
    ``nets``.

    Args:
        names: member names, unique.
        nets: the learned members' networks by name.
        obs_size: the flat observation size (for the dummy net of a pool with no learned member).
        units: hidden units of the dummy net.
        env: the environment (``overcooked`` or ``mpe_spread``).

    Raises:
        ValueError: a repeated name, or a name neither scripted nor in ``nets``.
    """
    nets = nets or {}
    rules = scripted(env)
    if len(set(names)) != len(names):
        raise ValueError(f"partner names repeat: {', '.join(names)}")
    unknown = [n for n in names if n not in rules and n not in nets]
    if unknown:
        raise ValueError(f"partners {', '.join(unknown)} are neither scripted ({', '.join(rules)}) nor trained")
    learned = [n for n in names if n not in rules]
    stacked = [nets[n] for n in learned] or [build_policy(obs_size, menv.NUM_ACTIONS_OF[env], units)]
    return PartnerPool(
        nets=stack_nets(stacked),
        kind=jnp.asarray([rules.get(n, KIND_LEARNED) for n in names], jnp.int32),
        net_index=jnp.asarray([learned.index(n) if n in learned else 0 for n in names], jnp.int32),
        names=tuple(names),
        env=env,
    )


def subset(pool: PartnerPool, names: Sequence[str]) -> PartnerPool:
    """The members ``names`` of ``pool`` (in that order), keeping only the networks they use.

    Raises:
        ValueError: a name not in the pool.
    """
    missing = [n for n in names if n not in pool.names]
    if missing:
        raise ValueError(f"partners {', '.join(missing)} are not in the pool ({', '.join(pool.names)})")
    kinds = np.asarray(pool.kind)
    index = np.asarray(pool.net_index)
    members = [pool.names.index(n) for n in names]
    used = sorted({int(index[m]) for m in members if kinds[m] == KIND_LEARNED}) or [0]
    remap = {old: new for new, old in enumerate(used)}
    params, static = eqx.partition(pool.nets, eqx.is_array)
    nets = eqx.combine(jax.tree.map(lambda x: x[np.asarray(used)], params), static)
    return PartnerPool(
        nets=nets,
        kind=jnp.asarray(kinds[members], jnp.int32),
        net_index=jnp.asarray(
            [remap.get(int(index[m]), 0) if kinds[m] == KIND_LEARNED else 0 for m in members], jnp.int32
        ),
        names=tuple(names),
        env=pool.env,
    )


def pool_hparams(pool: PartnerPool) -> dict[str, Any]:
    """The JSON-able keyword arguments of ``build_pool`` that rebuild ``pool``'s skeleton."""
    net = pool.net(0)
    return {
        "names": list(pool.names),
        "kinds": [int(k) for k in np.asarray(pool.kind)],
        "net_index": [int(i) for i in np.asarray(pool.net_index)],
        "num_nets": pool.num_nets,
        "env": pool.env,
        **policy_hparams(net.obs_size, net.num_actions, net.units),
    }


def build_pool(
    names: Sequence[str],
    kinds: Sequence[int],
    net_index: Sequence[int],
    num_nets: int,
    obs_size: int,
    num_actions: int = menv.NUM_ACTIONS,
    units: int = 64,
    env: str = "overcooked",
) -> PartnerPool:
    """A ``PartnerPool`` skeleton from ``pool_hparams`` (its net values are overwritten when a checkpoint loads; a
    pool saved before MPE has no ``env`` and is Overcooked's)."""
    return PartnerPool(
        nets=stack_nets([build_policy(obs_size, num_actions, units)] * num_nets),
        kind=jnp.asarray(list(kinds), jnp.int32),
        net_index=jnp.asarray(list(net_index), jnp.int32),
        names=tuple(names),
        env=env,
    )


def save_pool(directory: Path, pool: PartnerPool) -> None:
    """Save ``pool`` as an orbax checkpoint (kind ``partner_pool``) under ``directory``; no pickle."""
    checkpoint.save(Path(directory), 0, pool, kind=CHECKPOINT_KIND, hparams=pool_hparams(pool))


def load_pool(directory: Path, command: str = "uv run train_marl.py") -> PartnerPool:
    """The pool saved by ``save_pool`` in ``directory``.

    Raises:
        MissingInput: no checkpoint in ``directory``; the message names ``command``, which makes it.
        CheckpointError: a damaged checkpoint or one of another kind.
    """
    directory = Path(directory)
    if checkpoint.latest_step(directory) is None:
        raise MissingInput(f"missing partner pool in {directory}: run `{command}` first")
    pool, _ = checkpoint.load_module(directory, build_pool, kind=CHECKPOINT_KIND)
    return pool


def build_population(
    env: Any,
    names_and_seeds: Sequence[tuple[str, int]],
    ppo_cfg: PPOConfig,
    key: PRNGKeyArray,
    *,
    progress: bool = True,
    on_trained: Callable[[str, dict[str, np.ndarray]], None] | None = None,
) -> PartnerPool:
    """Train one self-play IPPO per learned member and add the scripted ones, in the order given.

    Args:
        env: the environment (``worldmodels.marl.env.make``).
        names_and_seeds: (name, seed) pairs; a name in ``scripted(env)`` adds that rule (its seed unused), any other
            name (e.g. ``ppo_0``) trains a self-play ``train_ppo`` with key ``fold_in(key, seed)``.
        ppo_cfg: the PPO hyperparameters of every learned member.
        key: the population's key.
        progress: draw each training's tqdm bar.
        on_trained: called with (name, history) after each learned member trains (e.g. to log its curve).

    Returns:
        the ``PartnerPool``.
    """
    names = [n for n, _ in names_and_seeds]
    env_name = menv.env_name(env)
    nets = {}
    for name, seed in names_and_seeds:
        if name in scripted(env_name):
            continue
        nets[name], history = train_ppo(ppo_cfg, env, jr.fold_in(key, seed), progress=progress)
        if on_trained is not None:
            on_trained(name, history)
    return make_pool(names, nets, obs_size=menv.obs_size(env), units=ppo_cfg.units, env=env_name)
