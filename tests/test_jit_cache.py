"""The one compile-cache mechanism (diffjax.core._jit.jit_static) as a sampler, the likelihood and inpaint use it:
an eager call compiles once per (score_fn, sde, options, shapes), a call under an outer trace is inlined into it,
and an unhashable static argument falls back to an uncached call with the same result."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj

SDE = dj.vp_sde()
MASK = jnp.array([1.0, 0.0])


def _score(x, t):
    """Exact score of N(0, I) data under VP: every marginal is N(0, I) (a^2 + s^2 = 1)."""
    del t
    return -x


# name -> (call(key, x, score_fn) -> array, the name of the jitted implementation)
CALLS = {
    "euler_maruyama": (lambda key, x, f: dj.samplers.euler_maruyama(key, x, f, SDE, num_steps=5), "_sample"),
    "log_likelihood": (lambda key, x, f: dj.log_likelihood(key, x, f, SDE, rtol=1e-3, atol=1e-3)[0], "_solve"),
    "inpaint": (lambda key, x, f: dj.inpaint(key, x, MASK, f, SDE, num_steps=5, n_corrector_steps=0),
                "_pc_replacement"),
}


def _counted():
    traces = []

    def score_fn(x, t):
        traces.append(1)  # Python side effect: runs only while tracing
        return _score(x, t)

    return score_fn, traces


def _jit_names(jaxpr):
    """Names of the jitted functions called at the top level of a closed jaxpr."""
    return {str(e.params["name"]) for e in jaxpr.jaxpr.eqns if "name" in e.params}


def _data(seed):
    return jax.random.normal(jax.random.key(seed), (8, 2))


@functools.lru_cache(maxsize=None)
def _eager(name):
    """The eager, cached-compilation result for key 0 and data 0 with the plain ``_score`` (computed once)."""
    return np.asarray(CALLS[name][0](jax.random.key(0), _data(0), _score))


@pytest.mark.parametrize("name", list(CALLS))
def test_same_call_twice_traces_once(name):
    call, _ = CALLS[name]
    score_fn, traces = _counted()
    a = call(jax.random.key(0), _data(0), score_fn)
    n = len(traces)
    b = call(jax.random.key(1), _data(1), score_fn)  # new key and values, same shapes and options: no new trace
    assert n > 0 and len(traces) == n
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and not np.allclose(a, b)


@pytest.mark.parametrize("name", list(CALLS))
def test_call_under_an_outer_trace_is_inlined(name):
    call, inner = CALLS[name]
    score_fn, traces = _counted()
    key, x = jax.random.key(0), _data(0)
    eager = _eager(name)

    def nested(y):
        return y

    nested.__name__ = inner  # what a nested jit of the implementation would look like
    assert inner in _jit_names(jax.make_jaxpr(lambda y: jax.jit(nested)(y))(x))
    # Tracer arguments: the outer trace traces the implementation itself (no nested jit of it).
    jaxpr = jax.make_jaxpr(lambda k, y: call(k, y, score_fn))(key, x)
    assert traces and inner not in _jit_names(jaxpr)
    # Concrete arguments but a score_fn that closes over an outer tracer: still inlined (no cache entry per trace).
    outer = jax.make_jaxpr(lambda scale: call(key, x, lambda y, t: scale * score_fn(y, t)))(1.0)
    assert inner not in _jit_names(outer)
    scaled = jax.jit(lambda scale: call(key, x, lambda y, t: scale * score_fn(y, t)))(1.0)
    assert np.all(np.isfinite(scaled)) and np.all(np.isfinite(eager))
    np.testing.assert_allclose(scaled, eager, rtol=1e-5, atol=1e-5)


class _UnhashableScore:
    """A score_fn object with value equality and no hash: it cannot key a compile cache."""

    __hash__ = None

    def __init__(self):
        self.traces = 0

    def __eq__(self, other):
        return isinstance(other, _UnhashableScore)

    def __call__(self, x, t):
        self.traces += 1
        return _score(x, t)


@pytest.mark.parametrize("name", list(CALLS))
def test_unhashable_static_argument_falls_back_with_the_same_result(name):
    call, _ = CALLS[name]
    key, x = jax.random.key(0), _data(0)
    want = _eager(name)
    score_fn = _UnhashableScore()
    with pytest.raises(TypeError):
        hash(score_fn)
    got = call(key, x, score_fn)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert score_fn.traces > 0
