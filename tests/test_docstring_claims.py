"""Figures that docstrings state, measured: edm_lognormal_time's clipped fractions."""
import jax
import jax.numpy as jnp
import pytest

import diffjax as dj
from diffjax.core import edm_lognormal_time


@pytest.mark.parametrize("process, at_t_eps, at_T", [
    (dj.vp_sde(0.1, 20.0), 0.0026, 1e-7),   # default t_eps = 1e-3: "0.26% on t_eps, 1e-7 on T"
    (dj.ve_sde(0.01, 50.0), 0.0023, 1e-5),  # "0.23% on t_eps, 1e-5 on T"
])
def test_edm_lognormal_time_clips_the_documented_fractions(process, at_t_eps, at_T):
    n = 1_000_000
    t = edm_lognormal_time(jax.random.key(0), n, process)
    low, high = float(jnp.mean(t <= process.t_eps)), float(jnp.mean(t >= process.T))
    assert abs(low - at_t_eps) < 0.1 * at_t_eps, low
    assert high < 10 * at_T + 10 / n, high
