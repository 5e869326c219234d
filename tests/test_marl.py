"""Dreaming of Others: the environment wrapper, the joint-action RSSM, the ToM head, social imagination, the learner
and ``train_marl.py`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from worldmodels.config import MARLConfig
from worldmodels.marl import env as menv
from worldmodels.marl.social import SocialActor, imagine, init_learner, make_train_step
from worldmodels.marl.world_model import Sequence, SocialWorldModel, observe, sequence_terms

ROOT = Path(__file__).resolve().parents[1]
OBS = (4, 5, 26)
PI = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.2])
"""A known teammate policy for the constructed cases."""


def small_model(key=0, **kw) -> SocialWorldModel:
    args = dict(deter=16, units=16, env_groups=3, team_groups=2, classes=4)
    args.update(kw)
    return SocialWorldModel(int(np.prod(OBS)), 6, **args, key=jr.PRNGKey(key))


def random_sequence(key, T=12, pi=None) -> Sequence:
    key = jr.PRNGKey(key) if isinstance(key, int) else key
    k_obs, k_a, k_j, k_r = jr.split(key, 4)
    a_team = jr.randint(k_j, (T,), 0, 6) if pi is None else jr.categorical(k_j, jnp.log(jnp.asarray(pi)), shape=(T,))
    return Sequence(
        obs=jr.randint(k_obs, (T, *OBS), 0, 3).astype(jnp.uint8),
        a_self=jr.randint(k_a, (T,), 0, 6),
        a_team=a_team.astype(jnp.int32),
        reward=jr.normal(k_r, (T,)),
        cont=jnp.ones((T,)),
        first=jnp.zeros((T,), bool),
    )


def with_tom_policy(model: SocialWorldModel, pi) -> SocialWorldModel:
    """The ToM head replaced by a constant distribution pi (last layer: zero weights, bias log pi)."""
    last = model.tom_head.layers[-1]
    last = eqx.tree_at(lambda m: (m.weight, m.bias), last, (jnp.zeros_like(last.weight), jnp.log(jnp.asarray(pi))))
    return eqx.tree_at(lambda m: m.tom_head.layers[-1], model, last)


# --- environment wrapper -------------------------------------------------------------------------------------------


def lockstep(env, key, steps):
    """JaxMARL's own environment and the wrapper from one reset key, stepped with the same keys and random joint
    actions; asserts the stacked observations equal JaxMARL's at every step and yields (JaxMARL's (obs, state,
    rewards, dones, infos), the wrapper's ``Step``) per step."""
    raw_obs, raw_state = env.reset(key)
    obs, state = menv.reset(env, key)
    for i, name in enumerate(env.agents):
        np.testing.assert_array_equal(obs[i], raw_obs[name])
    rng = np.random.default_rng(0)
    for t in range(steps):
        k = jr.fold_in(key, t)
        acts = rng.integers(0, menv.num_actions(env), 2)
        raw = env.step(k, raw_state, {env.agents[0]: jnp.int32(acts[0]), env.agents[1]: jnp.int32(acts[1])})
        raw_state = raw[1]
        out, state = menv.step(env, k, state, jnp.asarray(acts, jnp.int32))
        for i, name in enumerate(env.agents):
            np.testing.assert_array_equal(out.obs[i], raw[0][name])
        yield raw, out


def test_wrapper_matches_jaxmarl():
    """Stacked observations, joint actions, rewards and dones are JaxMARL's own, step by step."""
    env = menv.make("cramped_room", max_steps=30)
    for (_, _, raw_rew, raw_done, raw_info), out in lockstep(env, jr.PRNGKey(3), 30):
        for i, name in enumerate(env.agents):
            assert float(out.shaped[i]) == float(raw_info["shaped_reward"][name])
        assert float(out.reward) == float(raw_rew[env.agents[0]])
        assert bool(out.done) == bool(raw_done["__all__"])
    assert bool(out.done)  # the 30-step limit ends the episode
    assert menv.obs_shape(env) == OBS
    with pytest.raises(ValueError, match="layout"):
        menv.make("no_such_kitchen")


def test_mpe_wrapper_matches_jaxmarl_and_its_scripted_teammates_reach_their_landmarks():
    """MPE cooperative navigation: float32 (2, 12) observations and the agents' mean reward are JaxMARL's own, an
    episode is exactly ``max_steps`` long; ``nearest`` and ``landmark_k`` bring the teammate within 0.1 of their
    landmark within 20 steps beside a random ego agent."""
    from worldmodels.marl.partners import make_pool
    from worldmodels.marl.rollout import run_episodes

    env = menv.make(max_steps=25, name="mpe_spread")
    assert menv.env_name(env) == "mpe_spread" and menv.obs_shape(env) == (12,) and menv.num_actions(env) == 5
    assert menv.reset(env, jr.PRNGKey(5))[0].dtype == jnp.float32
    dones = []
    for (_, raw_state, raw_rew, _, _), out in lockstep(env, jr.PRNGKey(5), 25):
        np.testing.assert_allclose(out.reward, np.mean([raw_rew[a] for a in env.agents]), rtol=1e-6)
        dones.append(bool(out.done))
        last = raw_state
    assert dones == [False] * 24 + [True]
    assert menv.render(env, jax.tree.map(np.asarray, last)).shape == (256, 256, 3)

    pool = make_pool(["nearest", "landmark_0", "landmark_1", "stay"], obs_size=12, env="mpe_spread")
    for m, name in enumerate(pool.names):
        members = np.full(32, m, np.int32)
        _, states = run_episodes(env, None, pool, members, jr.PRNGKey(m), ego_kind="random", record_states=True)
        every = np.asarray(states.p_pos)  # (T, E, 4, 2): the state each step acts in, from the reset on
        jumps = np.linalg.norm(np.diff(every[:, :, :2], axis=0), axis=-1).max()
        assert jumps < 1.0, f"{name}: the recorded states jump by {jumps:.2f} (a reset inside the episode?)"
        pos = every[20]  # (E, 4, 2) after 20 steps: agents 0-1, landmarks 2-3
        gap = np.linalg.norm(pos[:, 1:2] - pos[:, 2:], axis=-1)  # the teammate's distance to each landmark
        if name == "stay":
            assert gap.min(-1).mean() > 0.3
            continue
        first = every[1]  # after one step: the nearest landmark is (almost always) the first's
        nearest = np.linalg.norm(first[:, 1:2] - first[:, 2:], axis=-1).argmin(-1)
        target = nearest if name == "nearest" else np.full(32, int(name[-1]))
        assert np.median(gap[np.arange(32), target]) < 0.1, name

    # The scripted `complement` agent (ego kind `scripted`) takes the landmark its `nearest` teammate leaves: it
    # covers the other landmark, and the team's return beats a random agent's by far on the same resets.
    beside_nearest = np.full(64, pool.names.index("nearest"), np.int32)
    ego = make_pool(["complement"], obs_size=12, env="mpe_spread")
    comp, states = run_episodes(env, ego, pool, beside_nearest, jr.PRNGKey(9), ego_kind="scripted", record_states=True)
    rand, _ = run_episodes(env, None, pool, beside_nearest, jr.PRNGKey(9), ego_kind="random")
    pos = np.asarray(states.p_pos)[-1]  # (E, 4, 2) at the last step: agents 0-1, landmarks 2-3
    covered = np.linalg.norm(pos[:, :2, None] - pos[:, None, 2:], axis=-1).min(1)  # each landmark's nearest agent
    assert np.median(covered.max(-1)) < 0.15
    comp_ret, rand_ret = np.asarray(comp.reward).sum(-1), np.asarray(rand.reward).sum(-1)
    assert comp_ret.mean() > rand_ret.mean() + 4.0, (comp_ret.mean(), rand_ret.mean())
    with pytest.raises(ValueError, match="marl.env"):
        menv.make(name="mpe_nowhere")


# --- the joint-action RSSM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("factorised", [True, False])
def test_observe_scan_equals_loop(factorised):
    model = small_model(factorised=factorised)
    seq = random_sequence(1)
    key = jr.PRNGKey(7)
    scanned = observe(model, seq, key)
    state = model.initial_state()
    keys = jr.split(key, seq.a_self.shape[0])
    for t in range(seq.a_self.shape[0]):
        a0 = seq.a_self[t - 1] if t else 0
        aj = seq.a_team[t - 1] if t else 0
        state, post, _ = model.observe_step(state, a0, aj, seq.obs[t], jnp.asarray(t == 0), keys[t])
        np.testing.assert_allclose(scanned.states.h[t], state.h, atol=1e-5)
        np.testing.assert_allclose(scanned.states.z_env[t], state.z_env, atol=1e-6)
        np.testing.assert_allclose(scanned.post.team[t], post.team, atol=1e-5)
    assert scanned.states.z_team.shape[-1] == (2 * 4 if factorised else 0)
    assert model.feature_size == 16 + 5 * 4


def test_joint_action_drives_the_transition():
    """The teammate's action changes h with the joint-action transition and is ignored without it."""
    state = small_model().initial_state()
    joint = small_model(key=1)
    single = small_model(key=1, joint_action=False, tom=False)
    assert not np.allclose(joint.transition(state, 2, 0), joint.transition(state, 2, 5))
    np.testing.assert_array_equal(single.transition(state, 2, 0), single.transition(state, 2, 5))
    with pytest.raises(ValueError, match="theory-of-mind"):
        single.tom_logits(state)


@pytest.mark.heavy(seconds=90)
def test_tom_loss_minimal_at_true_policy_and_recovered_by_training():
    """L_ToM on teammate actions drawn from a known pi is lowest when the head predicts pi, and gradient descent on
    the world model's loss recovers pi from data."""
    model = small_model()
    seq = random_sequence(2, T=400, pi=PI)
    key = jr.PRNGKey(0)
    at_pi = float(sequence_terms(with_tom_policy(model, PI), seq, key, 1.0)[0]["tom"])
    for other in (np.full(6, 1 / 6), np.roll(PI, 1), 0.5 * PI + 0.5 * np.eye(6)[4]):
        assert at_pi < float(sequence_terms(with_tom_policy(model, other), seq, key, 1.0)[0]["tom"])

    opt = optax.adam(1e-2)

    @eqx.filter_jit
    def step(model, state, key):
        k_data, k_model = jr.split(key)
        batch = jax.vmap(lambda k: random_sequence(k, T=16, pi=PI))(jr.split(k_data, 8))  # fresh data: no memorising

        def loss(m):
            terms = jax.vmap(lambda s, k: sequence_terms(m, s, k, 1.0)[0])(batch, jr.split(k_model, 8))
            return jnp.mean(terms["tom"])

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, value

    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    for i in range(150):
        model, state, value = step(model, state, jr.PRNGKey(i))
    held_out = observe(model, random_sequence(999, T=64, pi=PI), jr.PRNGKey(1))
    probs = jax.vmap(lambda s: jax.nn.softmax(model.tom_logits(s)))(held_out.states).mean(0)
    np.testing.assert_allclose(probs, PI, atol=0.05)


# --- social imagination ----------------------------------------------------------------------------------------------


def test_social_imagination_samples_the_tom_head():
    """Imagined teammate actions follow the ToM head's distribution; ``repeat`` keeps the last real action."""
    model = with_tom_policy(small_model(), PI)
    actor = SocialActor(model.feature_size, 6, 16, key=jr.PRNGKey(1))
    starts = jax.vmap(lambda _: model.initial_state())(jnp.arange(400))
    last = jnp.full((400,), 3, jnp.int32)
    keys = jr.split(jr.PRNGKey(2), 400)
    dreams = jax.vmap(lambda s, a, k: imagine(model, actor, s, a, k, 10, "tom"))(starts, last, keys)
    freq = np.bincount(np.asarray(dreams.a_team).ravel(), minlength=6) / dreams.a_team.size
    np.testing.assert_allclose(freq, PI, atol=0.02)  # 4000 draws: 3 standard errors of the largest p
    assert dreams.features.shape == (400, 11, model.feature_size)
    rep = jax.vmap(lambda s, a, k: imagine(model, actor, s, a, k, 10, "repeat"))(starts, last, keys)
    assert np.all(np.asarray(rep.a_team) == 3)
    with pytest.raises(ValueError, match="imagined teammate"):
        imagine(model, actor, model.initial_state(), jnp.int32(0), jr.PRNGKey(0), 3, "oracle")


@pytest.mark.parametrize("variant", ["full", "no_factorisation", "no_tom", "repeat_teammate"])
def test_train_step_lowers_the_world_model_loss(variant):
    """The jitted learner step (world model + actor + critic) of every variant is finite and fits a fixed batch."""
    cfg = MARLConfig(deter=16, units=16, env_groups=3, team_groups=2, classes=4, horizon=4, starts=16, seq_len=8,
                     wm_lr=3e-3, max_steps=40, variant=variant)  # fmt: skip
    learner = init_learner(cfg, int(np.prod(OBS)), 6, jr.PRNGKey(0))
    batch = jax.tree.map(lambda *x: jnp.stack(x), *[random_sequence(20 + i, T=8) for i in range(4)])
    step = make_train_step(cfg)
    losses = []
    for i in range(40 if variant == "full" else 10):
        learner, metrics = step(learner, batch, jr.PRNGKey(i))
        assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
        losses.append(float(metrics["model_loss"]))
    if variant == "full":
        assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert int(learner.step) == len(losses)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="variant"):
        MARLConfig(variant="telepathy")
    with pytest.raises(ValueError, match="heldout-partners"):
        MARLConfig(train_partners=("cook",), heldout_partners=("cook",))
    with pytest.raises(ValueError, match="unknown teammate"):
        MARLConfig(train_partners=("chef",))
    with pytest.raises(ValueError, match="seq-len"):
        MARLConfig(seq_len=500)
    with pytest.raises(ValueError, match="starts"):
        MARLConfig(starts=5000)
    assert MARLConfig(variant="no_tom").imagined_teammate == "none"
    assert not MARLConfig(variant="no_factorisation").factorised


# --- train_marl.py end to end ----------------------------------------------------------------------------------------


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train_marl.py"), "--preset", "marl_smoke", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )


@pytest.mark.heavy(seconds=335)
def test_train_marl_smoke_end_to_end(tmp_path):
    """marl_smoke trains the teammates, the world model and the actor, evaluates with training and held-out
    teammates, writes results.json and a GIF, resumes without redoing work, runs the PPO reference on the same
    population, and refuses a run directory that holds another variant's run."""
    run = tmp_path / "run"
    proc = run_script("--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["variant"] == "full"
    assert results["env_steps"] == (4 + 2 * 2) * 40
    assert set(results["partners"]) == {"ppo_0", "cook", "random", "ppo_1", "stay"}
    for name, r in results["partners"].items():
        assert len(r["returns"]) == 2 and all(v % 20 == 0 for v in r["returns"]), name
        assert 0.0 <= r["tom_top1"] <= 1.0 and r["tom_ce"] > 0.0
        assert r["tom_policy_ce"] >= r["teammate_entropy"] - 1e-6  # cross-entropy is at least the entropy
    assert results["partners"]["stay"]["teammate_entropy"] == 0.0
    assert (run / "eval" / "episode.gif").stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "marl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2] and "real_tom_top1" in rows[0] and "kl_team" in rows[0]

    again = run_script("--run-dir", str(run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "teammate ppo_0 trained" not in again.stdout  # the population is reused
    assert len((run / "marl" / "metrics.jsonl").read_text().splitlines()) == 2  # nothing retrained
    assert "is up to date with the learner; kept" in again.stdout  # nor evaluated again

    ref = tmp_path / "ppo"
    proc = run_script("--run-dir", str(ref), "--marl.variant", "ppo", "--marl.partners-dir", str(run / "partners"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ppo = json.loads((ref / "eval" / "results.json").read_text())
    assert ppo["variant"] == "ppo" and "tom_top1" not in ppo["partners"]["cook"]
    assert not (ref / "partners").exists()

    bad = run_script("--run-dir", str(run), "--marl.variant", "no_tom")
    assert bad.returncode == 1 and "marl.variant='full'" in bad.stderr, bad.stderr
    missing = run_script("--run-dir", str(tmp_path / "x"), "--marl.partners-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "missing partner pool" in missing.stderr, missing.stderr
    assert not (tmp_path / "x").exists()  # nothing written


@pytest.mark.heavy(seconds=235)
def test_train_marl_mpe_smoke_end_to_end(tmp_path):
    """marl_mpe_smoke (vector observations, five actions, 25-step episodes) trains and evaluates end to end; a run
    directory of that environment refuses the Overcooked preset."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_marl.py"), "--preset", "marl_mpe_smoke", "--run-dir", str(run)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["env"] == "mpe_spread" and results["env_steps"] == (4 + 2 * 2) * 25
    assert set(results["partners"]) == {"ppo_0", "nearest", "random", "landmark_1", "stay"}
    for name, r in results["partners"].items():
        assert len(r["returns"]) == 2 and all(v < 0 for v in r["returns"]) and "soups" not in r, name
        assert 0.0 <= r["tom_top1"] <= 1.0
    assert "team return per episode" in proc.stdout
    assert (run / "eval" / "episode.gif").stat().st_size > 1000
    bad = run_script("--run-dir", str(run))
    assert bad.returncode == 1 and "marl.env='mpe_spread'" in bad.stderr, bad.stderr

    # experiments/marl_arms.py on that run (its arm full_s0, finished, so skipped): the summary, the report and the
    # two references that do not learn (a random agent, the scripted `complement` rule)
    arms = tmp_path / "arms"
    arms.mkdir()
    run.rename(arms / "full_s0")
    experiment = [sys.executable, str(ROOT / "experiments" / "marl_arms.py"), "--out", str(arms)]
    proc = subprocess.run(
        [*experiment, "--preset", "marl_mpe_smoke", "--seeds", "0", "--variants", "full"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((arms / "summary.json").read_text())
    assert set(summary) == {"full", "random_agent", "complement_agent"}
    assert (
        summary["complement_agent"]["per_partner"]["nearest"]["mean"]
        > summary["random_agent"]["per_partner"]["nearest"]["mean"]
    )
    assert "| complement_agent |" in (arms / "report.md").read_text() and (arms / "curves.png").is_file()


def test_replay_windows_roundtrip_and_damage(tmp_path):
    """Windows stay inside one episode with the right first flags and training reward; save/load is exact; a damaged
    file is a DatasetError naming it."""
    from worldmodels.errors import DatasetError
    from worldmodels.marl.rollout import Episodes, Replay

    E, T = 3, 20
    rng = np.random.default_rng(0)
    eps = Episodes(
        obs=rng.integers(0, 3, (E, T, *OBS)).astype(np.uint8),
        a_self=np.tile(np.arange(T), (E, 1)) + 100 * np.arange(E)[:, None],  # encodes (episode, step)
        a_team=rng.integers(0, 6, (E, T)),
        reward=rng.normal(size=(E, T)).astype(np.float32),
        shaped=rng.normal(size=(E, T, 2)).astype(np.float32),
        tom_logp=np.zeros((E, T, 6)),
        true_probs=np.zeros((E, T, 6)),
        member=np.arange(E),
    )
    replay = Replay()
    replay.add(eps)
    assert len(replay) == E and replay.steps == E * T
    batch = replay.sample(np.random.default_rng(1), 64, 8, shaped_scale=0.5)
    ep, step = batch.a_self // 100, batch.a_self % 100
    assert np.all(ep == ep[:, :1]) and np.all(np.diff(step, axis=1) == 1)  # one episode, consecutive steps
    np.testing.assert_array_equal(batch.first, step == 0)
    e, t = ep[:, 0], step[:, 0]
    expected = eps.reward[e, t] + 0.5 * eps.shaped[e, t].sum(-1)
    np.testing.assert_allclose(batch.reward[:, 0], expected, rtol=1e-6)
    replay.save(tmp_path / "replay.npz")
    again = Replay.load(tmp_path / "replay.npz")
    for k, v in replay.data.items():
        np.testing.assert_array_equal(again.data[k], v)
    (tmp_path / "bad.npz").write_bytes(b"not a replay")
    with pytest.raises(DatasetError, match="bad.npz"):
        Replay.load(tmp_path / "bad.npz")


def test_marl_arms_pairs_each_arm_with_full_seed_by_seed():
    """experiments/marl_arms.py's paired rows: arm minus full on the seeds both ran, never for a reference arm."""
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import marl_arms
    finally:
        sys.path.remove(str(ROOT / "experiments"))

    def arm(seeds, train, heldout):
        return {"seeds": seeds, "train": {"per_seed": train}, "heldout": {"per_seed": heldout}}

    summary = {
        "full": arm([0, 1, 2], [-10.0, -12.0, -11.0], [-15.0, -15.0, -16.0]),
        # seeds in another order; train: -1 on every seed; held-out: -1, +1, +1
        "no_tom": arm([2, 0, 1], [-12.0, -11.0, -13.0], [-15.0, -16.0, -14.0]),
        "random_agent": arm([12345], [-15.0], [-16.0]),
    }
    lines = marl_arms.paired_lines(summary)
    rows = [x for x in lines if x.startswith("| no_tom - full")]
    assert len(rows) == 1, lines
    assert "| 3 | -1.00 +- 0.00 (lower on 3 of 3) | +0.33 +- 2.87 (lower on 1 of 3) |" in rows[0], rows
    assert not any("random_agent" in x for x in lines)
    assert marl_arms.paired_lines({"no_tom": summary["no_tom"]}) == []
