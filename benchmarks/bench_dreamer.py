"""Throughput of the Dreamer family's hot loops: RSSM training and the actor-critic update in imagination.

Measures, in one run, at the ``dreamer_quick`` preset's sizes (Z 32, GRU 256, Gaussian latent 32, MLPs 256):

* RSSM training, sequence-steps/s (B x L per update): the jitted update of ``train.rssm_loss`` (gradient clip +
  Adam, as ``train.train_rnn`` with ``--kind rssm``) on random VAE posteriors, with the MDN-RNN's update on the
  same batch for comparison (``train.rnn_loss``) and the ratio RSSM / MDN-RNN; also the MDN-GRU's (``--kind gru``:
  the MDN-RNN's heads and loss on a GRU of the same width) and the causal transformer's (``--kind transformer``:
  2 layers, d 256, 4 heads, context 64, the same loss as the MDN-RNN's);
* the actor-critic update, imagined steps/s (starts x horizon per update): ``dreamer.warm_starts`` on B x L real
  windows plus ``imagination.make_update`` (imagination, lambda-returns, actor and critic), in the RSSM's dream and
  in the MDN-RNN's, each with the ``dynamics`` (backprop) and the ``reinforce`` actor gradient.

Every figure is steady state (a warm-up call compiles first; ``block_until_ready`` closes each timing), from one run
on a machine that may be busy: the 1-minute load average is printed with them.

    uv run python benchmarks/bench_dreamer.py [--small] [--json PATH]
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Args:
    batch: int = 32
    """RSSM / MDN-RNN training: sequences B per update (dreamer_quick)."""
    seq_len: int = 64
    """RSSM / MDN-RNN training: window length L (dreamer_quick)."""
    train_steps: int = 10
    """Timed training updates after the warm-up."""
    ac_batch: int = 16
    """Actor-critic: replayed windows per update (dreamer_quick)."""
    ac_seq_len: int = 32
    """Actor-critic: window length; starts = ac_batch x ac_seq_len (dreamer_quick)."""
    ac_steps: int = 5
    """Timed actor-critic updates after the warm-up."""
    small: bool = False
    """Tiny sizes, for a smoke test of this script."""
    json: Path | None = None
    """Also write the figures to this JSON file."""


def timed(fn, n: int) -> tuple[float, float]:
    """(compile + first call seconds, mean seconds per call over ``n`` further calls) of ``fn()``."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return first, (time.perf_counter() - t0) / n


def main(args: Args) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax

    from worldmodels.config import ActorCriticConfig, RNNConfig
    from worldmodels.dreamer import warm_starts
    from worldmodels.imagination import init_ac_state, make_update
    from worldmodels.models import MDNRNN
    from worldmodels.models.rssm import RSSM
    from worldmodels.models.transformer import TransformerDynamics
    from worldmodels.models.transition import GRUTransition
    from worldmodels.train import rnn_hparams, rnn_loss, rssm_loss
    from worldmodels.trainer import make_step

    Z, H, units = (8, 32, 32) if args.small else (32, 256, 256)
    B, L = (2, 8) if args.small else (args.batch, args.seq_len)
    rng = np.random.default_rng(0)
    batch = {
        "mu": jnp.asarray(rng.normal(size=(B, L + 1, Z)), jnp.float32),
        "logvar": jnp.full((B, L + 1, Z), -2.0, jnp.float32),
        "actions": jnp.asarray(rng.uniform(-1, 1, (B, L, 3)), jnp.float32),
        "rewards": jnp.asarray(rng.normal(size=(B, L)), jnp.float32),
        "dones": jnp.zeros((B, L), jnp.float32),
        "mask": jnp.ones((B, L), jnp.float32),
    }
    results: dict = {"sizes": {"z": Z, "hidden": H, "units": units, "batch": B, "seq_len": L}}
    models = {}
    builders = {"rssm": RSSM, "mdnrnn": MDNRNN, "gru": GRUTransition, "transformer": TransformerDynamics}
    for kind, loss in (("rssm", rssm_loss), ("mdnrnn", rnn_loss), ("gru", rnn_loss), ("transformer", rnn_loss)):
        cfg = RNNConfig(kind=kind, hidden_size=H, units=units, stoch=32 if not args.small else 4)
        hp = rnn_hparams(cfg, Z)
        model = builders[kind](**hp, key=jr.key(0))
        opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
        step = make_step(lambda m, b, k, cfg=cfg, loss=loss: loss(m, b, k, cfg), opt)
        state = opt.init(eqx.filter(model, eqx.is_array))
        first, per = timed(
            lambda model=model, state=state, step=step: step(model, state, batch, jr.key(1))[2], args.train_steps
        )
        results[f"{kind}_train"] = {"compile_s": first, "update_s": per, "sequence_steps_per_s": B * L / per}
        if kind != "gru":  # the actor-critic timings below: the RSSM's dream and the MDN-RNN's
            models[kind] = model
        print(f"{kind:7s} training: {B * L / per:10.0f} sequence-steps/s ({per * 1e3:.1f} ms per {B}x{L} update; "
              f"compile {first:.1f} s)")  # fmt: skip
    results["rssm_over_mdnrnn_train"] = (
        results["rssm_train"]["sequence_steps_per_s"] / results["mdnrnn_train"]["sequence_steps_per_s"]
    )
    results["gru_over_mdnrnn_train"] = (
        results["gru_train"]["sequence_steps_per_s"] / results["mdnrnn_train"]["sequence_steps_per_s"]
    )
    results["transformer_over_mdnrnn_train"] = (
        results["transformer_train"]["sequence_steps_per_s"] / results["mdnrnn_train"]["sequence_steps_per_s"]
    )
    print(f"RSSM / MDN-RNN training throughput: {results['rssm_over_mdnrnn_train']:.2f}x")
    print(f"MDN-GRU / MDN-RNN training throughput: {results['gru_over_mdnrnn_train']:.2f}x")
    print(f"transformer / MDN-RNN training throughput: {results['transformer_over_mdnrnn_train']:.2f}x")

    ab, al = (2, 4) if args.small else (args.ac_batch, args.ac_seq_len)
    z = jnp.asarray(rng.normal(size=(ab, al, Z)), jnp.float32)
    actions = jnp.asarray(rng.uniform(-1, 1, (ab, al, 3)), jnp.float32)
    for kind, model in models.items():
        for gradient in ("dynamics", "reinforce"):
            ac = ActorCriticConfig(batch_size=ab, seq_len=al, units=units, gradient=gradient)
            state = init_ac_state(Z, H, ac, jr.key(2))
            update = make_update(ac, 1.0)

            def call(model=model, state=state, update=update):
                zs, ss = warm_starts(model, z, actions)
                return update(state, model, zs, ss, jr.key(3))[1]

            first, per = timed(call, args.ac_steps)
            name = f"ac_{kind}_{gradient}"
            steps = ab * al * ac.horizon
            results[name] = {"compile_s": first, "update_s": per, "imagined_steps_per_s": steps / per}
            where = f"actor-critic in the {kind} dream ({gradient:9s})"
            print(f"{where}: {steps / per:10.0f} imagined steps/s ({per * 1e3:.0f} ms per update of {ab * al} starts x "
                  f"{ac.horizon}; compile {first:.1f} s)")  # fmt: skip
    results["load_avg_1min"] = os.getloadavg()[0]
    results["device"] = str(jax.devices()[0])
    print(f"device {results['device']}, 1-minute load average {results['load_avg_1min']:.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args, description=__doc__))
