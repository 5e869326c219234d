"""``worldmodels.cli``: the persistent JAX compilation cache, its location, and its reuse across script runs; the
error boundary of the scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worldmodels.cli import default_cache_dir, enable_compilation_cache, run_main

# A script that compiles one generation under run_main and prints how many compilations were cache hits.
CACHED_SCRIPT = """
import json
import jax, jax.numpy as jnp, jax.random as jr
from worldmodels.cli import run_main

hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event == "/jax/compilation_cache/cache_hits"))

def work():
    from worldmodels.dream import DreamStart, generation_fitness
    from worldmodels.models import MDNRNN, LinearController
    rnn = MDNRNN(6, 3, 10, 2, key=jr.key(0))
    start = DreamStart(jnp.zeros((2, 6)), jnp.zeros((2, 6)))
    pop = jnp.zeros((3, LinearController.num_params(6, 10)))
    generation_fitness(pop, rnn, start, jr.key(1), jnp.float32(1.0), 2, 5, 0.5).block_until_ready()
    print(json.dumps({"cache_dir": jax.config.jax_compilation_cache_dir, "hits": sum(hits)}))

run_main(work)
"""


def test_scripts_reuse_compilations_across_runs(tmp_path):
    cache = tmp_path / "jax-cache"
    env = dict(os.environ, JAX_PLATFORMS="cpu", WORLDMODELS_JAX_CACHE=str(cache))

    def run():
        proc = subprocess.run(
            [sys.executable, "-c", CACHED_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run()
    assert first["cache_dir"] == str(cache) and first["hits"] == 0
    entries = {p.name for p in cache.iterdir()}
    assert any(name.startswith("jit_generation_fitness") for name in entries), entries
    second = run()
    assert second["hits"] >= 1  # the generation (and any other cached program) came from disk
    # The generation was not compiled and stored again (programs near the 0.1 s threshold may be, on a busy machine).
    new = {p.name for p in cache.iterdir()} - entries
    assert not any(name.startswith("jit_generation_fitness") for name in new), new


def test_compilation_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLDMODELS_JAX_CACHE", "")
    assert enable_compilation_cache() is None  # empty disables, and leaves JAX's config alone
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "worldmodels" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "worldmodels" / "jax"


def test_os_errors_become_one_line_naming_the_file(capsys):
    """A read-only run directory or a full disk is one line naming the path and exit status 1, not a traceback."""

    def fails():
        raise PermissionError(13, "Permission denied", "/runs/r/config.json")

    with pytest.raises(SystemExit) as exit_info:
        run_main(fails)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1
    assert "/runs/r/config.json" in err[0] and "Permission denied" in err[0]
