"""make_score_fn: an analytic "network" that predicts the exact eps / x0 / v / score / EDM F of Gaussian data gives
back the exact score, for VP, sub-VP and VE; noise labels map t as documented.

Data ``x0 ~ N(mu, s0^2 I)``; with ``x_t = a x0 + s eps`` the marginal is ``N(a mu, (a^2 s0^2 + s^2) I)``, so
``score = -(x - a mu) / (a^2 s0^2 + s^2)``, ``E[eps | x_t] = -s score`` and ``E[x0 | x_t] = (x + s^2 score) / a``.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
import diffjax.nets as nets
from _fast_compile import fast_jit

SDES = {"vp": dj.vp_sde(0.1, 20.0), "subvp": dj.subvp_sde(0.1, 20.0), "ve": dj.ve_sde(0.01, 50.0)}
PARAMS = {"mu": jnp.array([0.7, -1.2, 0.3]), "s0": jnp.array(0.6)}


def _exact(x, t, sde, mu, s0):
    """Exact score, E[eps | x_t], E[x0 | x_t] of the Gaussian's perturbed marginal (written out, no core helpers)."""
    a, s = sde.marginal(t)
    a, s = a[:, None], s[:, None]
    score = -(x - a * mu) / (a**2 * s0**2 + s**2)
    eps = -s * score
    x0 = (x + s**2 * score) / a
    return score, eps, x0, a, s


def _t_from_labels(labels, sde, time_input):
    if time_input == "t":
        return labels
    assert time_input == "continuous"
    return labels * sde.T / 999.0


def _analytic_apply(sde, parameterization, time_input, learned_sigma=False):
    def apply_fn(variables, x, labels, y=None, *, train):
        p = variables["params"]
        mu = p["mu"] if y is None else p["mu"] + y[:, None].astype(jnp.float32)
        if parameterization == "edm":  # labels = c_noise = log(sigma) / 4; x = c_in * x_t / a
            sigma = jnp.exp(4.0 * labels)[:, None]
            c_skip, c_out, c_in, _ = dj.edm_preconditioning(sigma)
            x_hat = x / c_in  # = x0 + sigma n
            denoised = mu + p["s0"] ** 2 / (p["s0"] ** 2 + sigma**2) * (x_hat - mu)
            return (denoised - c_skip * x_hat) / c_out
        t = _t_from_labels(labels, sde, time_input)
        score, eps, x0, a, s = _exact(x, t, sde, mu, p["s0"])
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": s * score}[parameterization]
        return jnp.concatenate([out, 100.0 + out], -1) if learned_sigma else out

    return apply_fn


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "score", "edm"])
def test_analytic_network_gives_exact_score(sde_name, parameterization):
    # x0 / EDM outputs recover the score as (a x0 - x) / s^2, which cancels catastrophically in float32 where s is
    # tiny (sub-VP's s ~ 1e-4 at t = 1e-3): compare in float64 so the check is about the algebra, not rounding.
    with jax.enable_x64(True):
        _check_exact_score(sde_name, parameterization)


def _check_exact_score(sde_name, parameterization):
    sde = SDES[sde_name]
    time_input = "t" if parameterization != "edm" else None
    apply_fn = _analytic_apply(sde, parameterization, time_input)
    score_fn = nets.make_score_fn(apply_fn, PARAMS, sde, parameterization=parameterization, time_input=time_input,
                                  scale_by_sigma=parameterization == "score")
    x = 2.0 * jax.random.normal(jax.random.key(0), (6, 3), jnp.float64)
    t = jnp.array([1e-3, 0.05, 0.2, 0.5, 0.8, 1.0], jnp.float64) * sde.T
    want = _exact(x, t, sde, PARAMS["mu"], PARAMS["s0"])[0]
    chex.assert_trees_all_close(jax.jit(score_fn)(x, t), want, rtol=2e-4, atol=1e-5)
    # scalar t broadcasts over the batch
    chex.assert_trees_all_close(score_fn(x, 0.3), _exact(x, jnp.full(6, 0.3), sde, PARAMS["mu"], PARAMS["s0"])[0],
                                rtol=2e-4, atol=1e-5)


def test_continuous_labels_learned_sigma_and_conditional():
    sde = SDES["vp"]
    x = jax.random.normal(jax.random.key(1), (4, 3))
    t = jnp.array([0.1, 0.3, 0.6, 0.9])
    want = _exact(x, t, sde, PARAMS["mu"], PARAMS["s0"])[0]
    # continuous labels 999 t / T, a learned-variance head (only the first half is eps)
    f = nets.make_score_fn(_analytic_apply(sde, "eps", "continuous", learned_sigma=True), {"params": PARAMS}, sde,
                           parameterization="eps", time_input="continuous", learned_sigma=True)
    chex.assert_trees_all_close(f(x, t), want, rtol=2e-4, atol=1e-5)
    # class-conditional: y shifts the mean; None is passed through as the null label
    g = nets.make_conditional_score_fn(_analytic_apply(sde, "x0", "t"), PARAMS, sde, parameterization="x0",
                                       time_input="t")
    y = jnp.array([0, 1, 2, 3])
    chex.assert_trees_all_close(g(x, t, y), _exact(x, t, sde, PARAMS["mu"] + y[:, None], PARAMS["s0"])[0],
                                rtol=2e-4, atol=1e-5)
    chex.assert_trees_all_close(g(x, t, None), want, rtol=2e-4, atol=1e-5)


def test_noise_labels_for():
    vp, ve = SDES["vp"], SDES["ve"]
    t = jnp.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(nets.noise_labels_for(t, vp, time_input="continuous"), 999.0 * t, rtol=1e-6)
    np.testing.assert_array_equal(nets.noise_labels_for(t, vp, time_input="index"), [0.0, 250.0, 999.0])
    sigma = 0.01 * (50.0 / 0.01) ** t
    np.testing.assert_allclose(nets.noise_labels_for(t, ve, time_input="log_sigma"), np.log(sigma), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="time_input"):
        nets.noise_labels_for(t, vp, time_input="step")
    with pytest.raises(ValueError, match="parameterization"):
        nets.make_score_fn(lambda *a, **k: None, {}, vp, parameterization="mu")
    with pytest.raises(ValueError, match="rng"):
        nets.make_score_fn(lambda *a, **k: None, {}, vp, train=True)


def test_unet_score_fn_runs_under_jit():
    model = nets.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, norm_groups=4)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    # random parameters filled from numpy: compiling model.init's many threefry draws takes seconds on the CPU
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(1), x, jnp.zeros(2), train=False))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), shapes)
    sde = SDES["vp"]
    score_fn = nets.make_score_fn(model.apply, params, sde, time_input="index")
    # the jitted score_fn and the network's output at the matching labels, in one compiled program (the network
    # applied eagerly, op by op, compiles each primitive separately)
    s, out = fast_jit(lambda x, t: (score_fn(x, t), model.apply({"params": params}, x, jnp.array([100.0, 899.0]),
                                                                  train=False)))(x, jnp.array([0.1, 0.9]))
    assert bool(jnp.all(jnp.isfinite(s))) and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.std(out)) > 1e-3
    chex.assert_trees_all_close(s, -out / sde.marginal(jnp.array([0.1, 0.9]))[1][:, None, None, None],
                                rtol=1e-5, atol=1e-6)
