"""The persistent compilation cache the test run shares (tests/conftest.py) works on XLA:CPU with the installed jax:
a second process compiling the same program reads it from the cache, and an entry keyed for another jax version is
never read (jax puts its version into every key)."""
import json
import os
import subprocess
import sys

_PROG = r"""
import json, sys
import jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
def f(x):
    for _ in range(20):
        x = jnp.tanh(x @ x.T) + x
    return x
jax.jit(f)(jnp.ones((32, 32))).block_until_ready()
print(json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run(cache, _prelude=""):
    e = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    r = subprocess.run([sys.executable, "-c", _prelude + "\n" + _PROG], env=e, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_cache_and_another_jaxlib_does_not(tmp_path):
    first = _run(tmp_path)
    assert first["hits"] == 0 and first["misses"] >= 1
    entries = [n for n in os.listdir(tmp_path) if n.startswith("jit_f-")]
    assert len(entries) == 1, os.listdir(tmp_path)
    # jax puts the jaxlib version into every key: the same program under another version string misses
    other = _run(tmp_path, _prelude="import jax._src.cache_key as ck; ck.jaxlib_version_str = '0.0.1'")
    assert other["hits"] == 0 and other["misses"] >= 1
    second = _run(tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0


def test_the_run_shares_one_cache():
    """conftest.py put the cache directory into the environment every worker and subprocess inherits."""
    assert os.environ.get("JAX_COMPILATION_CACHE_DIR")
    assert os.path.isdir(os.environ["JAX_COMPILATION_CACHE_DIR"])


def test_main_uses_a_persistent_cache_unless_the_environment_names_one(monkeypatch, tmp_path):
    import jax
    from diffjax import main
    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
        main._use_compile_cache(str(tmp_path / "flag"))
        assert jax.config.jax_compilation_cache_dir == before  # the environment's choice stands
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
        main._use_compile_cache("")
        assert jax.config.jax_compilation_cache_dir == before  # '' turns it off
        main._use_compile_cache(str(tmp_path / "flag"))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "flag")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
