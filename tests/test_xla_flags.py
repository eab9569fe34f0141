"""The XLA:CPU flag `import diffjax` applies (diffjax/_xla_flags.py) and the networks' matrix-product sums."""
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax.nets as nets
from diffjax import _xla_flags

IN_RANGE = _xla_flags.cpu_flag_wanted({}, _xla_flags._jaxlib_version())


@pytest.mark.parametrize("environ, version, wanted", [
    ({}, (0, 10, 2), True),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, (0, 11, 0), True),
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}, (0, 10, 2), False),  # the user's own choice
    ({"DIFFJAX_XLA_CPU_DEFAULTS": "0"}, (0, 10, 2), False),  # opt-out
    ({}, (0, 9, 2), False),  # not verified: an unknown flag would abort XLA
    ({}, (0, 12, 0), False),
    ({}, None, False),
])
def test_cpu_flag_wanted(environ, version, wanted):
    assert _xla_flags.cpu_flag_wanted(environ, version) is wanted


@pytest.mark.skipif(not IN_RANGE, reason="jaxlib outside the verified range: no flag applied")
def test_apply_warns_and_leaves_environment_alone_once_jax_started():
    env = {"XLA_FLAGS": "--foo"}
    jax.devices()  # the test process's backend is up
    with pytest.warns(UserWarning, match="JAX started before"):
        assert not _xla_flags.apply_cpu_defaults(env)
    assert env == {"XLA_FLAGS": "--foo"}


@pytest.mark.skipif(not IN_RANGE, reason="jaxlib outside the verified range: no flag applied")
def test_flag_active_in_this_process():
    assert _xla_flags.CPU_FLAG in os.environ["XLA_FLAGS"]
    x = jnp.ones((2, 8, 8, 16))
    w = jnp.ones((3, 3, 16, 16))

    def f(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean(jnp.log(2 * y) - jnp.log(y)), y.reshape(-1, 16) @ w[0, 0]

    hlo = jax.jit(f).lower(x, w).compile().as_text()
    ynn = [line for line in hlo.splitlines() if "__ynn_fusion" in line and " fusion(" in line]
    assert not any("conv" in line or "reduce" in line for line in ynn), ynn
    np.testing.assert_allclose(jax.jit(f)(x, w)[0], np.log(2), rtol=1e-6)


def _fresh_python(code, env_extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not IN_RANGE, reason="jaxlib outside the verified range: no flag applied")
def test_import_sets_flag_but_keeps_a_users_own():
    code = "import os, diffjax, jax; jax.devices(); print(os.environ.get('XLA_FLAGS', ''))"
    assert _fresh_python(code, {}) == _xla_flags.CPU_FLAG
    own = "--xla_cpu_experimental_ynn_fusion_type="
    assert _fresh_python(code, {"XLA_FLAGS": own}) == own
    assert _fresh_python(code, {"DIFFJAX_XLA_CPU_DEFAULTS": "0"}) == ""


def test_sum_spatial_matches_sum():
    a = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))
    b = jax.random.normal(jax.random.key(1), (3, 5, 4, 6))
    np.testing.assert_allclose(nets._base.sum_spatial(a), a.sum((1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nets._base.sum_spatial(a, b), (a * b).sum((1, 2)), rtol=1e-5, atol=1e-5)


def test_add_bias_derivatives_match_plain_add():
    y = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
    b = jax.random.normal(jax.random.key(1), (5,))
    w = jax.random.normal(jax.random.key(2), y.shape)

    def loss(add):
        return lambda y, b: jnp.sum(jnp.sin(add(y, b)) * w)

    plain = loss(lambda y, b: y + b)
    ours = loss(nets._base.add_bias)
    chex.assert_trees_all_close(jax.grad(ours, (0, 1))(y, b), jax.grad(plain, (0, 1))(y, b), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.jvp(ours, (y, b), (w, b))[1], jax.jvp(plain, (y, b), (w, b))[1], rtol=1e-5)
    hess = lambda f: jax.grad(lambda b: jnp.sum(jax.grad(f, 1)(y, b) ** 2))(b)  # noqa: E731
    np.testing.assert_allclose(hess(ours), hess(plain), rtol=1e-4, atol=1e-5)
    hlo = jax.jit(jax.grad(ours, 1)).lower(y, b).compile().as_text()
    assert "dot(" in hlo or "__ynn_fusion" in hlo  # the bias gradient is a product with ones


def test_dense_has_flax_dense_parameters_and_values():
    x = jax.random.normal(jax.random.key(0), (4, 7))
    ours = nets.Dense(3, init_scale=1.0)
    flax_dense = nn.Dense(3, kernel_init=nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"))
    p_ours = ours.init(jax.random.key(1), x)["params"]
    p_flax = flax_dense.init(jax.random.key(1), x)["params"]
    chex.assert_trees_all_equal_shapes(p_ours["Dense_0"], p_flax)
    p_flax = {"kernel": p_ours["Dense_0"]["kernel"], "bias": p_ours["Dense_0"]["bias"] + 0.5}
    np.testing.assert_allclose(ours.apply({"params": {"Dense_0": p_flax}}, x),
                               flax_dense.apply({"params": p_flax}, x), rtol=1e-6)
