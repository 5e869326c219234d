"""Model-predictive control in the dream: the cross-entropy method (CEM) over action sequences, in latent space.

At every real step the planner searches the dynamics M for a good sequence of the next H actions and executes
only the first (model-predictive control). The search is the cross-entropy method (Rubinstein 1997; de Boer et
al. 2005) as PlaNet runs it (Hafner et al. 2019, Sec. 3, "Planning algorithm"): a diagonal Gaussian belief
q(a_{t:t+H}) = N(mean, diag(std^2)) over action sequences; each of I iterations draws N candidates from it,
rolls every candidate out in M from the current latent z_t and recurrent state, scores it by the sum of
predicted rewards, and refits the belief to the top k candidates (the elite):

    mean <- (1 / k) sum_{j in elite} a^(j),     std <- max(sqrt((1 / k) sum_{j in elite} (a^(j) - mean)^2), min_std).

PlaNet's defaults are H 12, N 1000, k 100, I 10. The planned action is the belief's mean first action; the mean,
shifted by one step, seeds the next step's search (warm start).

Everything works with any ``Dynamics`` (``worldmodels.models.dynamics``: MDN-RNN, GRU, RSSM, a transformer): a
rollout step is ``dream.dream_step``'s math with the action given instead of read from a controller -- advance M,
add the reward while the dream is alive, let the done head end it, and sample z_{t+1} from the predicted mixture
at a temperature with noise drawn ahead of time (``mdnrnn.mixture_noise``). All candidates of an iteration share
one noise path (common random numbers), so their scores differ by their actions, not by the dream's luck.

**Ensembles.** ``dynamics`` may be an ensemble of E members of one kind and size
(``models.dynamics.stack_modules``): every array leaf has a leading E axis, and so has the state
(``ensemble_initial_state``). Each member rolls out every candidate, following its own samples; a candidate's score
is the mean return over members minus ``uncertainty_weight`` times the members' disagreement about the future: the
variance across members of each member's predicted next-latent mean, averaged over the latent and summed over the
horizon,

    D = sum_{t<H} (1 / Z) sum_i Var_e[ E_e[z_{t+1, i}] ],     score = (1 / E) sum_e R_e - lambda D,

the ensemble disagreement of PETS (Chua et al. 2018, probabilistic ensembles) and Plan2Explore (Sekar et al. 2020,
"latent disagreement", the variance of the ensemble's predicted means), here a penalty rather than a bonus.

**Off-road constraint.** A step whose predicted reward is below ``offroad_reward`` counts as off-road (CarRacing
gives -0.1 per frame and +1000/N per new track tile, so a car off the road earns less than 0 each step); with
``offroad_threshold`` > 0 a candidate that spends more than that fraction of its horizon off-road is rejected,
unless every candidate would be (a feasibility-first variant of constrained CEM, Wen & Topcu 2018).

All functions act on one environment and are pure and jittable; ``jax.vmap`` them over environments
(``plan_batch`` does, jitted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from worldmodels.config import CEMConfig
from worldmodels.models.dynamics import Dynamics
from worldmodels.models.mdnrnn import MDNOutput, MixtureNoise, mixture_noise, most_likely_z, sample_next_z_from_noise


class RolloutExtras(NamedTuple):
    """What ``plan_returns`` reports besides the returns, per candidate.

    Attributes:
        offroad_steps: float32 (N,) predicted off-road steps while alive (reward < ``offroad_reward``); for an
            ensemble the mean over members.
        disagreement: float32 (N,) ensemble disagreement, sum over the horizon of the mean over Z of the variance
            across members of their predicted next-latent means (PETS / Plan2Explore); zeros for one model.
    """

    offroad_steps: Float[Array, " N"]
    disagreement: Float[Array, " N"]


class PlanResult(NamedTuple):
    """One planning call's answer.

    Attributes:
        action: float32 (A,) the action to execute now: the final belief's mean first action, inside [low, high].
        mean: float32 (H, A) the final belief's mean shifted one step for the next call's warm start
            (mean[1:] then the last row repeated).
        predicted_return: float32 () the mean predicted return (mean over members for an ensemble, no penalty)
            of the last iteration's accepted elite.
        disagreement: float32 () their mean ensemble disagreement (0 for one model).
        constraint_bound: bool () whether the off-road constraint rejected any candidate in the last iteration.
    """

    action: Float[Array, " A"]
    mean: Float[Array, "H A"]
    predicted_return: Float[Array, ""]
    disagreement: Float[Array, ""]
    constraint_bound: Bool[Array, ""]


# ensembles


def ensemble_initial_state(ensemble: Any) -> Any:
    """Each member's ``initial_state()``, stacked: a state pytree whose every leaf has a leading axis E."""
    return eqx.filter_vmap(lambda m: m.initial_state())(ensemble)


# rollouts


def mixture_mean(out: MDNOutput) -> Float[Array, " Z"]:
    """The mean of the predicted next-latent mixture, E[z_{t+1}] = sum_k pi_k mu_k (Bishop 1994), (Z,)."""
    return jax.nn.softmax(out.log_pi) @ out.mu


class _Carry(NamedTuple):
    """Scan carry of one candidate's rollout: latent, state, 1.0 while alive, return, off-road steps."""

    z: Float[Array, " Z"]
    state: Any
    alive: Float[Array, ""]
    total: Float[Array, ""]
    offroad: Float[Array, ""]


def _next_z(out: MDNOutput, noise: MixtureNoise | None, cfg: CEMConfig) -> Float[Array, " Z"]:
    """z_{t+1}: sampled with the given noise at ``cfg.temperature``, or the likeliest component's mean."""
    if cfg.sample_z:
        return sample_next_z_from_noise(out, noise, cfg.temperature)
    return most_likely_z(out)


def _rollout(
    dynamics: Dynamics,
    z: Float[Array, " Z"],
    state: Any,
    actions: Float[Array, "H A"],
    noise: MixtureNoise | None,
    cfg: CEMConfig,
    with_means: bool,
) -> tuple[_Carry, Float[Array, "H Z"] | None]:
    """One candidate in one model: ``dream.dream_step``'s math over H given actions (``lax.scan``).

    Step t (0-based) adds gamma^t r_{t+1} and counts an off-road step while alive, then lets the done head end the
    dream. Returns the final carry and, if ``with_means``, each step's predicted next-latent mean (H, Z).
    """
    discounts = jnp.asarray(cfg.discount, jnp.float32) ** jnp.arange(actions.shape[0], dtype=jnp.float32)

    def step(carry: _Carry, xs):
        action, n, disc = xs
        state, out = dynamics(carry.z, action, carry.state)
        total = carry.total + carry.alive * disc * out.reward
        offroad = carry.offroad + carry.alive * (out.reward < cfg.offroad_reward).astype(jnp.float32)
        done = (jax.nn.sigmoid(out.done_logit) > cfg.done_threshold).astype(jnp.float32)
        carry = _Carry(_next_z(out, n, cfg), state, carry.alive * (1.0 - done), total, offroad)
        return carry, (mixture_mean(out) if with_means else None)

    init = _Carry(z, state, jnp.float32(1.0), jnp.float32(0.0), jnp.float32(0.0))
    return jax.lax.scan(step, init, (actions, noise, discounts))


def _check_noise(noise: MixtureNoise | None, horizon: int, cfg: CEMConfig) -> None:
    if cfg.sample_z and noise is None:
        raise ValueError("noise is required when cfg.sample_z is True (draw it with draw_noise)")
    if noise is not None and noise.normal.shape[0] != horizon:
        raise ValueError(f"noise covers {noise.normal.shape[0]} steps, the actions {horizon}")


def draw_noise(key: PRNGKeyArray, horizon: int, num_mixtures: int, z_size: int) -> MixtureNoise:
    """The sampling noise of a dream of ``horizon`` steps, drawn at once (as ``dream.single_rollout`` does).

    Returns:
        ``MixtureNoise`` with gumbel float32 (horizon, K) and normal float32 (horizon, Z).
    """
    return jax.vmap(mixture_noise, in_axes=(0, None, None))(jr.split(key, horizon), num_mixtures, z_size)


def plan_returns(
    dynamics: Dynamics,
    z: Float[Array, " Z"],
    state: Any,
    actions: Float[Array, "N H A"],
    noise: MixtureNoise | None,
    cfg: CEMConfig,
    ensemble: bool = False,
) -> tuple[Float[Array, " N"], RolloutExtras]:
    """Predicted returns of N candidate action sequences rolled out in M from (z_t, state) (PlaNet, Sec. 3).

    Each candidate is rolled out with ``dream.dream_step``'s step math (``jax.vmap`` over candidates, ``lax.scan``
    over the horizon): R = sum_{t<H} gamma^t alive_t r_{t+1}, where alive_t drops to 0 after the done head fires
    (sigmoid(done_logit) > ``cfg.done_threshold``; the reward of that step still counts). z_{t+1} is sampled with
    the given noise at ``cfg.temperature`` (``sample_next_z_from_noise``) -- the same noise for every candidate
    and every ensemble member (common random numbers) -- or is ``most_likely_z`` when ``cfg.sample_z`` is False.

    Args:
        dynamics: any ``Dynamics``, or with ``ensemble`` a stacked ensemble (``models.dynamics.stack_modules``).
        z: float32 (Z,) the current latent z_t.
        state: the dynamics' state at z_t, an unbatched pytree (leading axis E on every leaf with ``ensemble``).
        actions: float32 (N, H, A) candidate action sequences (not clipped here).
        noise: ``MixtureNoise`` of H steps, gumbel (H, K) and normal (H, Z) (``draw_noise``); may be ``None`` when
            ``cfg.sample_z`` is False.
        cfg: planner settings (``discount``, ``done_threshold``, ``temperature``, ``sample_z``, ``offroad_reward``).
        ensemble: whether ``dynamics`` and ``state`` are a stacked ensemble. Each member rolls out every candidate,
            following its own samples.

    Returns:
        (returns float32 (N,) -- the mean over members for an ensemble, without any penalty --,
        ``RolloutExtras`` with off-road step counts and the disagreement (N,)).

    Raises:
        ValueError: if ``noise`` is missing while ``cfg.sample_z``, or covers another horizon than ``actions``.
    """
    _check_noise(noise, actions.shape[1], cfg)

    def candidates(model, model_state, with_means):
        roll = lambda a: _rollout(model, z, model_state, a, noise, cfg, with_means)
        return jax.vmap(roll)(actions)

    if not ensemble:
        carry, _ = candidates(dynamics, state, False)
        zeros = jnp.zeros_like(carry.total)
        return carry.total, RolloutExtras(carry.offroad, zeros)
    carry, means = eqx.filter_vmap(lambda m, s: candidates(m, s, True), in_axes=(eqx.if_array(0), 0))(dynamics, state)
    # means: (E, N, H, Z) -> variance across members, mean over Z, sum over the horizon.
    disagreement = jnp.sum(jnp.mean(jnp.var(means, axis=0), axis=-1), axis=-1)
    return jnp.mean(carry.total, axis=0), RolloutExtras(jnp.mean(carry.offroad, axis=0), disagreement)


def candidate_scores(
    returns: Float[Array, " N"], extras: RolloutExtras, cfg: CEMConfig
) -> tuple[Float[Array, " N"], Bool[Array, ""]]:
    """CEM's objective per candidate: return - lambda * disagreement, with off-road candidates rejected.

    score_j = R_j - ``uncertainty_weight`` * D_j (PETS / Plan2Explore disagreement D as a penalty). With
    ``offroad_threshold`` > 0, candidate j is rejected (score -inf) when offroad_steps_j / H > threshold -- unless
    every candidate is, in which case none is and the plain score stands. NaN scores count as rejected too.

    Args:
        returns: float32 (N,) from ``plan_returns``.
        extras: its ``RolloutExtras``.
        cfg: ``uncertainty_weight``, ``offroad_threshold`` and ``horizon`` (the H of the fraction).

    Returns:
        (scores float32 (N,), constraint_bound bool (): whether any candidate was rejected by the constraint).
    """
    score = returns - cfg.uncertainty_weight * extras.disagreement
    if cfg.offroad_threshold > 0:
        reject = extras.offroad_steps / cfg.horizon > cfg.offroad_threshold
        bound = jnp.any(reject) & ~jnp.all(reject)
        score = jnp.where(reject & bound, -jnp.inf, score)
    else:
        bound = jnp.bool_(False)
    return jnp.where(jnp.isnan(score), -jnp.inf, score), bound


# CEM


def initial_mean(horizon: int, low: Float[Array, " A"], high: Float[Array, " A"]) -> Float[Array, "H A"]:
    """The belief's mean before any plan: the middle of the action box, (low + high) / 2, repeated; float32 (H, A).

    For CarRacing (``env.ACTION_LOW`` / ``ACTION_HIGH``) that is steer 0, gas 0.5, brake 0.5.
    """
    mid = (jnp.asarray(low, jnp.float32) + jnp.asarray(high, jnp.float32)) / 2
    return jnp.broadcast_to(mid, (horizon,) + mid.shape)


def seed_mean(
    controller: Callable[[Array, Array], Array],
    dynamics: Dynamics,
    z: Float[Array, " Z"],
    state: Any,
    horizon: int,
    noise: MixtureNoise | None,
    cfg: CEMConfig,
) -> Float[Array, "H A"]:
    """The H actions a learned controller takes in the dream from (z_t, state): a plan to seed CEM with.

    Each step is ``dream.dream_step``: a_t = controller(z_t, h_t) (Ha & Schmidhuber 2018, Eq. 1), advance M, then
    z_{t+1} sampled with ``noise`` at ``cfg.temperature`` (or ``most_likely_z`` when ``cfg.sample_z`` is False).
    The done head is ignored: the seed is a full-length sequence. For an ensemble pass one member
    (``models.dynamics.module_at``) and its state.

    Args:
        controller: anything callable as controller(z (Z,), h (H,)) -> action (A,) (``LinearController``,
            an actor's mode).
        dynamics: any ``Dynamics`` (a single model).
        z: float32 (Z,) current latent; state: its unbatched state.
        horizon: H.
        noise: ``MixtureNoise`` of H steps (``draw_noise``), or ``None`` when ``cfg.sample_z`` is False.
        cfg: ``temperature`` and ``sample_z``.

    Returns:
        float32 (H, A) the controller's actions (inside its own output box; not clipped here).

    Raises:
        ValueError: if ``noise`` is missing while ``cfg.sample_z``, or covers another horizon.
    """
    _check_noise(noise, horizon, cfg)

    def step(carry, n):
        z, state = carry
        action = controller(z, state.h)
        state, out = dynamics(z, action, state)
        return (_next_z(out, n, cfg), state), action

    if noise is None:
        noise = jnp.zeros((horizon, 0))  # only the scan's length
    return jax.lax.scan(step, (z, state), noise)[1].astype(jnp.float32)


def cem_plan(
    dynamics: Dynamics,
    z: Float[Array, " Z"],
    state: Any,
    mean: Float[Array, "H A"],
    key: PRNGKeyArray,
    cfg: CEMConfig,
    low: Float[Array, " A"],
    high: Float[Array, " A"],
    ensemble: bool = False,
) -> PlanResult:
    """Plan the next action by the cross-entropy method in latent space (Hafner et al. 2019, Sec. 3, "Planning
    algorithm"; Rubinstein 1997).

    I iterations (``lax.scan``) of: draw N sequences a^(j) = clip(mean + std * eps^(j), low, high), eps ~ N(0, I);
    draw one noise path for the dream shared by all candidates; score them (``plan_returns`` then
    ``candidate_scores``); take the top k (``lax.top_k``) and refit mean and std to them, std floored at
    ``cfg.min_std`` (candidates rejected by the off-road constraint are left out of the refit). The first iteration
    starts from ``mean`` and ``cfg.init_std``. Pure and jittable (``eqx.filter_jit``; ``cfg`` is static), one
    environment: ``jax.vmap`` it over environments (``plan_batch``).

    Args:
        dynamics: any ``Dynamics``, or with ``ensemble`` a stacked ensemble (``models.dynamics.stack_modules``).
        z: float32 (Z,) the current latent z_t.
        state: the dynamics' state at z_t (unbatched; leading axis E with ``ensemble``).
        mean: float32 (H, A) the initial belief mean: ``initial_mean``, ``seed_mean`` or the last call's
            ``PlanResult.mean`` (warm start).
        key: PRNG key of this call.
        cfg: planner settings; ``cfg.horizon`` must equal H.
        low, high: float32 (A,) the action box (CarRacing: ``env.ACTION_LOW``, ``env.ACTION_HIGH``).
        ensemble: whether ``dynamics`` and ``state`` are a stacked ensemble.

    Returns:
        ``PlanResult``: the action, the shifted mean, and the last iteration's elite statistics.

    Raises:
        ValueError: if ``mean`` is not (cfg.horizon, A) or ``low`` / ``high`` are not (A,).
    """
    n_act = dynamics.action_size
    if mean.shape != (cfg.horizon, n_act):
        raise ValueError(f"mean has shape {mean.shape}, expected (horizon={cfg.horizon}, A={n_act})")
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    if low.shape != (n_act,) or high.shape != (n_act,):
        raise ValueError(f"low {low.shape} and high {high.shape} must have shape (A={n_act},)")
    shape = (cfg.candidates, cfg.horizon, n_act)

    def iteration(carry, k):
        mean, std, *_ = carry
        k_act, k_noise = jr.split(k)
        actions = jnp.clip(mean + std * jr.normal(k_act, shape), low, high)
        noise = draw_noise(k_noise, cfg.horizon, dynamics.num_mixtures, dynamics.z_size) if cfg.sample_z else None
        returns, extras = plan_returns(dynamics, z, state, actions, noise, cfg, ensemble)
        scores, bound = candidate_scores(returns, extras, cfg)
        top, idx = jax.lax.top_k(scores, cfg.top_k)
        accepted = jnp.isfinite(top)
        w = jnp.where(jnp.any(accepted), accepted, True).astype(jnp.float32)
        w = w / jnp.sum(w)
        elite = actions[idx]
        mean = jnp.einsum("k,kha->ha", w, elite)
        std = jnp.sqrt(jnp.einsum("k,kha->ha", w, (elite - mean) ** 2))
        std = jnp.maximum(std, cfg.min_std)
        return (mean, std, w @ returns[idx], w @ extras.disagreement[idx], bound), None

    std = jnp.full(mean.shape, cfg.init_std, jnp.float32)
    init = (jnp.asarray(mean, jnp.float32), std, jnp.float32(0.0), jnp.float32(0.0), jnp.bool_(False))
    (mean, _, ret, dis, bound), _ = jax.lax.scan(iteration, init, jr.split(key, cfg.iterations))
    shifted = jnp.concatenate([mean[1:], mean[-1:]])
    return PlanResult(mean[0], shifted, ret, dis, bound)


@eqx.filter_jit
def plan_batch(
    dynamics: Dynamics,
    z: Float[Array, "W Z"],
    state: Any,
    mean: Float[Array, "W H A"],
    key: PRNGKeyArray,
    cfg: CEMConfig,
    low: Float[Array, " A"],
    high: Float[Array, " A"],
    ensemble: bool = False,
) -> PlanResult:
    """``cem_plan`` for W environments in one jitted call (``jax.vmap``; each environment gets its own key).

    Args:
        dynamics: shared by all environments (a stacked ensemble with ``ensemble``).
        z: float32 (W, Z); state: pytree with leading axis W (then E with ``ensemble``); mean: float32 (W, H, A).
        key: one key, split into W.
        cfg, low, high, ensemble: as in ``cem_plan`` (``cfg`` and ``ensemble`` static).

    Returns:
        ``PlanResult`` with a leading axis W on every field.
    """
    keys = jr.split(key, z.shape[0])
    plan = lambda z, s, m, k: cem_plan(dynamics, z, s, m, k, cfg, low, high, ensemble)
    return jax.vmap(plan)(z, state, mean, keys)
