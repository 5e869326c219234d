"""The same controller in M's dream and on the real environment, side by side (vector observations).

V decodes every dreamed latent back into an observation, so for an environment with vector observations (LunarLander)
the dream can be read in the environment's own units: where M believes the controller takes the lander, against
where it really goes. One dream from the first frame of a training episode (z_{t+1} sampled from M at
``--temperature``), one real episode from ``--seed`` (the controller reading V's posterior mean and M's state, as in
the dream). Prints both every ``--every`` steps with M's predicted reward and done probability, and writes a plot of
every observation dimension over time (dream against real) and the numbers as JSON.

    uv run python experiments/dream_vs_real.py --run-dir runs/lunar_pad --out runs/lunar_pad/dream_vs_real
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    run_dir: Path
    """A run with V, M and a controller on an environment with vector observations."""
    out: Path
    """Directory for dream_vs_real.png and dream_vs_real.json."""
    steps: int = 300
    """Steps of the dream, and at most of the real episode."""
    seed: int = 1_000_000
    """Seed of the real episode (the test seeds start here)."""
    episode: int = 0
    """Training episode whose first frame the dream starts from."""
    temperature: float = 1.0
    """Dream temperature tau."""
    dream_seed: int = 0
    """Seed of the dream's latent sampling."""
    every: int = 20
    """Print a row every this many steps."""


def dream(agent, z0, steps: int, temperature: float, key) -> dict:
    """The controller in M's dream from latent ``z0``: decoded observations (T, D), actions, M's rewards and done
    probabilities (T,)."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    from worldmodels.dream import sample_next_z_from_noise
    from worldmodels.models.mdnrnn import mixture_noise

    @jax.jit
    def step(z, state, k):
        action = agent.controller(z, state.h)
        state, out = agent.dynamics(z, action, state)
        noise = mixture_noise(k, out.log_pi.shape[0], z.shape[0])
        z_next = sample_next_z_from_noise(out, noise, temperature)
        return z_next, state, action, agent.vae.decode(z), out.reward, jax.nn.sigmoid(out.done_logit)

    z, state, rows = jnp.asarray(z0), agent.dynamics.initial_state(), []
    for k in jr.split(key, steps):
        z, state, *row = step(z, state, k)
        rows.append([np.asarray(v) for v in row])
    actions, obs, reward, p_done = (np.stack(c) for c in zip(*rows, strict=True))
    return {"obs": obs, "actions": actions, "reward": reward, "p_done": p_done}


def real(agent, spec, seed: int, steps: int) -> dict:
    """The controller on the real environment: observations (T, D) before each action, actions, real rewards, and
    M's predicted rewards and done probabilities along the way (T,)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from worldmodels.env import make_env

    @jax.jit
    def step(obs, state):
        z, _ = agent.vae.encode(obs)
        action = agent.controller(z, state.h)
        state, out = agent.dynamics(z, action, state)
        return state, action, out.reward, jax.nn.sigmoid(out.done_logit)

    env = make_env(max_steps=steps, env=spec.name)
    obs, _ = env.reset(seed=seed)
    state, rows = agent.dynamics.initial_state(), []
    for _ in range(steps):
        state, action, predicted, p_done = step(jnp.asarray(obs, jnp.float32), state)
        next_obs, r, terminated, truncated, _ = env.step(np.asarray(action))
        rows.append((obs, np.asarray(action), r, float(predicted), float(p_done)))
        obs = next_obs
        if terminated or truncated:
            break
    env.close()
    o, a, r, pred, p = (np.asarray(c) for c in zip(*rows, strict=True))
    return {"obs": o, "actions": a, "reward": r, "predicted_reward": pred, "p_done": p}


def main() -> None:
    import jax.random as jr
    import matplotlib
    import numpy as np
    import tyro

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldmodels.run_dir import env_spec, load_agent
    from worldmodels.stages import latents, recorded_rnn_config

    args = tyro.cli(Args, description=__doc__)
    spec = env_spec(args.run_dir)
    if spec.observation != "vector":
        raise SystemExit(f"--run-dir {args.run_dir}: {spec.name} has pixel observations; this compares vectors")
    agent = load_agent(args.run_dir)
    data = latents(args.run_dir, recorded_rnn_config(args.run_dir))
    if not 0 <= args.episode < data.num_episodes:
        raise SystemExit(f"--episode {args.episode}: the run's data has episodes 0 .. {data.num_episodes - 1}")
    d = dream(agent, data.mu[data.obs_start[args.episode]], args.steps, args.temperature, jr.key(args.dream_seed))
    r = real(agent, spec, args.seed, args.steps)
    names = spec.obs_names or tuple(f"o{i}" for i in range(d["obs"].shape[1]))
    print(f"{'':6}{'step':>5} " + " ".join(f"{n:>6}" for n in names) + "  reward  p_done")
    for t in range(0, args.steps, args.every):
        for label, run, rew in (("dream", d, d["reward"]), ("real", r, r.get("reward"))):
            if t < len(run["obs"]):
                row = " ".join(f"{v:6.2f}" for v in run["obs"][t])
                print(f"{label:6}{t:5d} {row} {float(rew[t]):7.2f} {float(run['p_done'][t]):7.3f}")
    dream_return = float(np.sum(d["reward"] * np.cumprod(np.concatenate([[1.0], 1 - d["p_done"][:-1]]))))
    print(
        f"dream: {args.steps} steps, continue-weighted return {dream_return:.1f}; real: {len(r['obs'])} steps, "
        f"return {r['reward'].sum():.1f} (M predicted {r['predicted_reward'].sum():.1f} along it)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, (len(names) + 1) // 2 + 1, figsize=(3.2 * ((len(names) + 1) // 2 + 1), 5.5))
    for i, (ax, name) in enumerate(zip(axes.flat, names, strict=False)):
        ax.plot(d["obs"][:, i], label="dream (V decodes M's z)")
        ax.plot(r["obs"][:, i], label="real")
        ax.set_title(name)
    ax = axes.flat[len(names)]
    ax.plot(d["reward"], label="dream: M's reward")
    ax.plot(r["reward"], label="real reward")
    ax.set_title("reward")
    ax.legend(fontsize=7)
    for extra in list(axes.flat)[len(names) + 1 :]:
        extra.axis("off")
    fig.suptitle(f"{args.run_dir}: the controller in the dream and on the real seed {args.seed}")
    fig.tight_layout()
    fig.savefig(args.out / "dream_vs_real.png", dpi=80)
    plt.close(fig)
    record = {
        "run_dir": str(args.run_dir), "seed": args.seed, "episode": args.episode, "temperature": args.temperature,
        "obs_names": list(names), "dream_return": dream_return, "real_return": float(r["reward"].sum()),
        "dream": {k: v.tolist() for k, v in d.items()}, "real": {k: v.tolist() for k, v in r.items()},
    }  # fmt: skip
    tmp = args.out / "dream_vs_real.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(args.out / "dream_vs_real.json")
    print(f"-> {args.out / 'dream_vs_real.png'}, {args.out / 'dream_vs_real.json'}")


if __name__ == "__main__":
    main()
