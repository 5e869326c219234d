"""A generation sharded over 4 (forced host) devices scores like one device; the mesh rule pads only when it must."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from worldmodels.config import DreamConfig
from worldmodels.dream import DreamStart, generation_fitness, sharded_generation_fitness
from worldmodels.evolve import dream_fitness
from worldmodels.models import MDNRNN, LinearController
from worldmodels.sharding import mesh_shape

ROOT = Path(__file__).resolve().parents[1]
Z, HIDDEN, R, T = 8, 16, 4, 20
# (P, R) -> mesh (pop, roll) on 4 devices: pop only; pop and roll; pop with P padded 5 -> 8.
CASES = {(8, 4): (4, 1), (6, 4): (2, 2), (5, 3): (4, 1)}

# Shared by both processes, so the 4-device subprocess rebuilds exactly the same world and populations.
WORLD = f"""
import jax.numpy as jnp, jax.random as jr
from worldmodels.dream import DreamStart
from worldmodels.models import MDNRNN, LinearController
rnn = MDNRNN({Z}, 3, {HIDDEN}, 3, key=jr.key(0))
start = DreamStart(jr.normal(jr.key(1), (5, {Z})), jnp.full((5, {Z}), -2.0))
n = LinearController.num_params({Z}, {HIDDEN})
def population(p):
    return jr.normal(jr.key(100 + p), (p, n)) * 0.3
"""

FOUR_DEVICES = """
import json, sys
import jax
from worldmodels import dream
from worldmodels.config import DreamConfig
from worldmodels.evolve import dream_fitness
from worldmodels.sharding import dream_mesh, shard_population
import equinox as eqx

counted = eqx.debug.assert_max_traces(dream.single_rollout, max_traces=None)  # counts traces
dream.single_rollout = counted
out = {"devices": len(jax.devices()), "fitness": {}, "shards": {}}
# The evolve plumbing, three generations of new populations and keys: one trace in all.
fit = dream_fitness(rnn, start, DreamConfig(population=6, rollouts=R, dream_steps=T, temperature=1.1))
out["evolve"] = [fit(jr.normal(jr.key(g), (6, n)), jr.key(50 + g)).tolist() for g in range(3)]
out["evolve_traces"] = eqx.debug.get_num_traces(counted)
for p, r in CASES:
    pop = population(p)
    f = dream.sharded_generation_fitness(pop, rnn, start, jr.key(7), jnp.float32(1.1), r, T, 0.5)
    out["fitness"][f"{p},{r}"] = f.tolist()
    mesh = dream_mesh(p, r)
    x = shard_population(pop, mesh)
    out["shards"][f"{p},{r}"] = {
        "mesh": [mesh.shape["pop"], mesh.shape["roll"]],
        "devices": len(x.devices()),
        "padded": x.shape[0],
        "shard_rows": sorted({s.data.shape[0] for s in x.addressable_shards}),
    }
json.dump(out, sys.stdout)
"""


def start_four_devices(tmp_path) -> subprocess.Popen:
    """Start the 4-device run; it works while this process computes the 1-device answers."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["WORLDMODELS_JAX_CACHE"] = ""
    code = f"CASES = {list(CASES)}\nT = {T}\nR = {R}\n" + textwrap.dedent(WORLD) + textwrap.dedent(FOUR_DEVICES)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_four_devices_give_the_one_device_fitness(tmp_path):
    proc = start_four_devices(tmp_path)
    world: dict = {}
    exec(textwrap.dedent(WORLD), world)
    rnn, start, population = world["rnn"], world["start"], world["population"]
    one = {
        (p, r): generation_fitness(population(p), rnn, start, jr.key(7), jnp.float32(1.1), r, T, 0.5) for p, r in CASES
    }
    fit = dream_fitness(rnn, start, DreamConfig(population=6, rollouts=R, dream_steps=T, temperature=1.1))
    one_evolve = [fit(jr.normal(jr.key(g), (6, world["n"])), jr.key(50 + g)) for g in range(3)]
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout)

    assert out["devices"] == 4
    for (p, r), (pop_devices, roll_devices) in CASES.items():
        four = np.asarray(out["fitness"][f"{p},{r}"])
        assert four.shape == (p,)
        np.testing.assert_allclose(four, one[p, r], rtol=1e-5, atol=1e-6)
        shards = out["shards"][f"{p},{r}"]
        assert shards["mesh"] == [pop_devices, roll_devices] and shards["devices"] == 4
        assert shards["padded"] == -(-p // pop_devices) * pop_devices
        assert shards["shard_rows"] == [shards["padded"] // pop_devices]
    for four, single in zip(out["evolve"], one_evolve, strict=True):
        np.testing.assert_allclose(four, single, rtol=1e-5, atol=1e-6)
    assert out["evolve_traces"] == 1  # three generations, one trace


def test_one_device_is_plain_generation_fitness():
    rnn = MDNRNN(Z, 3, HIDDEN, 3, key=jr.key(0))
    start = DreamStart(jr.normal(jr.key(1), (5, Z)), jnp.full((5, Z), -2.0))
    population = jr.normal(jr.key(2), (5, LinearController.num_params(Z, HIDDEN)))
    args = (rnn, start, jr.key(3), jnp.float32(1.0), R, T, 0.5)
    np.testing.assert_array_equal(sharded_generation_fitness(population, *args), generation_fitness(population, *args))


@pytest.mark.parametrize(
    ("p", "r", "d", "shape"),
    [
        (64, 16, 8, (8, 1)),
        (6, 4, 4, (2, 2)),
        (5, 3, 4, (4, 1)),
        (5, 2, 4, (2, 2)),
        (5, 4, 4, (1, 4)),
        (7, 5, 1, (1, 1)),
        (2, 16, 8, (2, 4)),
    ],
)
def test_mesh_shape_uses_every_device_and_pads_only_when_it_must(p, r, d, shape):
    assert mesh_shape(p, r, d) == shape


def test_mesh_shape_refuses_empty_axes():
    with pytest.raises(ValueError, match="population, rollouts"):
        mesh_shape(0, 4, 2)
