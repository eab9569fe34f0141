"""Training objectives on one core: velocity prediction and every other parameterization round-trip exactly for every
process; the conditional flow-matching loss is a weighted DSM loss; each published weighting equals the paper's own
loss written out by hand; the time samplers draw what they claim. Ground truth: Gaussian data, whose every marginal,
score and conditional mean is known in closed form."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import config_lib

MU, C, D = 0.4, 0.8, 3  # Gaussian data N(MU, C^2 I_D)

PROCESSES = {"vp": dj.vp_sde(), "subvp": dj.subvp_sde(), "ve": dj.ve_sde(), "cosine": dj.cosine_vp_sde(),
             "rf": dj.rectified_flow(), "edm": dj.edm_sde()}
NAMES = sorted(PROCESSES)


def _times(p, n=8):
    """Times spread over the process's range, away from a = 0 (rectified flow's T)."""
    t_eps = float(getattr(p, "t_eps", 1e-5))
    return jnp.asarray(np.geomspace(max(t_eps, 1e-3 * p.T), 0.95 * p.T, n), jnp.float32)


def _d(p, t):  # (a', s') by autodiff of the marginal: an independent reference for marginal_derivative
    return jax.vmap(jax.jacfwd(lambda tt: jnp.stack(p.marginal(tt))))(t).T


def _gaussian_truth(p, x, t):
    """Exact score, E[x0 | x_t], E[eps | x_t] and velocity E[u | x_t] for x0 ~ N(MU, C^2 I)."""
    a, s = (jnp.asarray(c, x.dtype)[:, None] for c in p.marginal(t))
    da, ds = (jnp.asarray(c, x.dtype)[:, None] for c in p.marginal_derivative(t))  # = autodiff of marginal, below
    var = a**2 * C**2 + s**2
    r = x - a * MU
    x0, eps = MU + a * C**2 * r / var, s * r / var
    return -r / var, x0, eps, da * x0 + ds * eps


def _check(actual, expected, rtol=2e-4, atol=1e-5):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# --- parameterizations ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_parameterization_round_trips(name):
    """Exact algebra: in float64 every pair inverts to ~1e-8 (in float32 some directions are ill-conditioned near
    t = 0, e.g. score -> x0 -> score, where s^2 * score is rounded away against x)."""
    p = PROCESSES[name]
    with jax.enable_x64(True):
        t = jnp.asarray(np.asarray(_times(p)), jnp.float64)
        kx, kp = jax.random.split(jax.random.PRNGKey(0))
        x = jax.random.normal(kx, (t.shape[0], D), jnp.float64) * 2.0
        pred = jax.random.normal(kp, x.shape, jnp.float64)
        pairs = [(dj.score_from_velocity, dj.velocity_from_score), (dj.eps_from_velocity, dj.velocity_from_eps),
                 (dj.x0_from_velocity, dj.velocity_from_x0), (dj.score_from_eps, dj.eps_from_score),
                 (dj.score_from_x0, dj.x0_from_score), (dj.score_from_v, dj.v_from_score)]
        for to, back in pairs:
            there = to(pred, x, t, p)
            assert there.dtype == jnp.float64
            _check(back(there, x, t, p), pred, rtol=1e-6, atol=1e-9)
            _check(to(back(pred, x, t, p), x, t, p), pred, rtol=1e-6, atol=1e-9)
        f = dj.edm_from_score(pred, x, t, p)
        _check(dj.score_from_edm(lambda x_in, c_noise: f, x, t, p), pred, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_conversions_of_the_exact_score_give_the_exact_conditional_means(name):
    """Analytic network: from the exact score, velocity / eps / x0 are the exact conditional means, and back."""
    p = PROCESSES[name]
    with jax.enable_x64(True):  # float64: the comparison measures the algebra, not float32 conditioning at small t
        t = jnp.asarray(np.asarray(_times(p)), jnp.float64)
        a = p.marginal(t)[0][:, None]
        x = a * MU + jax.random.normal(jax.random.PRNGKey(1), (t.shape[0], D), jnp.float64) * 1.5
        score, x0, eps, u = _gaussian_truth(p, x, t)
        chk = functools.partial(_check, rtol=1e-6, atol=1e-9)
        chk(dj.velocity_from_score(score, x, t, p), u)
        chk(dj.score_from_velocity(u, x, t, p), score)
        chk(dj.eps_from_velocity(u, x, t, p), eps)
        chk(dj.x0_from_velocity(u, x, t, p), x0)
        chk(dj.x0_from_score(score, x, t, p), x0)
        chk(dj.eps_from_score(score, x, t, p), eps)
        # the velocity is the probability-flow ODE's vector field f - g^2/2 score. The processes compute f, g^2 and
        # (a', s') in float32 (cosine VP's s' is off by 5e-4 relative at t = 1e-3), so the tolerance is relative to
        # the size of the two terms
        f, g = p.coefficients(x, t)
        scale = np.abs(f) + np.abs(0.5 * g[:, None] ** 2 * score)
        err = np.abs(dj.probability_flow_ode(p, lambda xx, tt: score)(x, t) - u)
        assert np.all(err <= 1e-3 * scale + 1e-9), np.max(err / scale)
        _check(jnp.stack(p.marginal_derivative(t)), _d(p, t), rtol=1e-3, atol=1e-6)  # float32, as above


def test_velocity_conversions_are_exact_where_the_signal_vanishes():
    """Rectified flow at t = 1 (a = 0; beyond its T = 1 - 1e-3): x = eps, so E[x0 | x] = MU and E[eps | x] = x;
    from the velocity both are recovered exactly (the 2x2 system stays regular)."""
    p = PROCESSES["rf"]
    t = jnp.ones((4,), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, D))
    da, ds = (c[:, None] for c in _d(p, t))
    u = da * MU + ds * x
    _check(dj.x0_from_velocity(u, x, t, p), jnp.full_like(x, MU))
    _check(dj.eps_from_velocity(u, x, t, p), x)
    _check(dj.score_from_velocity(u, x, t, p), -x / p.marginal(t)[1][:, None] ** 2)


def test_make_score_fn_velocity_parameterization():
    p = dj.vp_sde()
    t = _times(p)
    x = jax.random.normal(jax.random.PRNGKey(3), (t.shape[0], D))
    score, _, _, u = _gaussian_truth(p, x, t)
    from diffjax.nets import PARAMETERIZATIONS, make_score_fn
    assert "velocity" in PARAMETERIZATIONS
    # the network sees labels = 999 t / T; an analytic "network" that returns the exact velocity
    apply_fn = lambda variables, xx, labels, train: _gaussian_truth(p, xx, labels * p.T / 999.0)[3]  # noqa: E731
    _check(make_score_fn(apply_fn, {}, p, parameterization="velocity")(x, t), score, rtol=1e-3)


# --- flow matching is weighted DSM ----------------------------------------------------------------------------------


def _net_score(x, t):  # a deliberately imperfect analytic score network
    tt = jnp.asarray(t)[:, None]
    return -x / (1.0 + tt) + 0.3 * jnp.tanh(x + tt)


def _net_velocity(x, t):
    tt = jnp.asarray(t)[:, None]
    return 0.7 * x - 0.5 * jnp.sin(x * (1.0 + tt))


@pytest.mark.parametrize("name", NAMES)
def test_flow_matching_loss_equals_weighted_dsm(name):
    p = PROCESSES[name]
    x0 = MU + C * jax.random.normal(jax.random.PRNGKey(4), (64, D))
    key = jax.random.PRNGKey(5)
    t_eps = float(getattr(p, "t_eps", 1e-5))
    kw = dict(t_eps=t_eps)
    # a score network, its velocity through the exact conversion
    fm = dj.flow_matching_loss(key, x0, lambda x, t: dj.velocity_from_score(_net_score(x, t), x, t, p), p, **kw)
    dsm = dj.dsm_loss(key, x0, _net_score, p, weighting=dj.flow_matching_weighting, **kw)
    assert np.isfinite(fm) and fm > 0
    _check(fm, dsm, rtol=1e-4)
    # a velocity network, its score through the exact conversion
    fm = dj.flow_matching_loss(key, x0, _net_velocity, p, **kw)
    dsm = dj.dsm_loss(key, x0, lambda x, t: dj.score_from_velocity(_net_velocity(x, t), x, t, p), p,
                      weighting=dj.flow_matching_weighting, **kw)
    assert np.isfinite(fm) and fm > 0
    _check(fm, dsm, rtol=1e-4)


def test_flow_matching_weighting_is_a_quarter_g_to_the_fourth():
    for name in NAMES:
        p = PROCESSES[name]
        t = _times(p)
        _check(dj.flow_matching_weighting(p, t), dj.likelihood_weighting(p, t) ** 2 / 4, rtol=1e-3)


def test_rectified_flow_loss_is_the_hand_written_one():
    """Liu et al. 2023 eq. 1: E || v(x_t, t) - (z - x0) ||^2, x_t = (1 - t) x0 + t z, t ~ U."""
    p = PROCESSES["rf"]
    x0 = MU + C * jax.random.normal(jax.random.PRNGKey(6), (32, D))
    key = jax.random.PRNGKey(7)
    key_t, key_z = jax.random.split(key)
    t = jax.random.uniform(key_t, (32,), jnp.float32, minval=1e-5, maxval=p.T)
    z = jax.random.normal(key_z, x0.shape)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * z
    ref = jnp.mean((_net_velocity(x_t, t) - (z - x0)) ** 2)
    _check(dj.flow_matching_loss(key, x0, _net_velocity, p, t_eps=1e-5), ref, rtol=1e-5)


# --- the published weightings are the papers' losses ----------------------------------------------------------------


def _draws(p, key, x0, t_eps):
    key_t, key_z = jax.random.split(key)
    t = jax.random.uniform(key_t, (x0.shape[0],), jnp.float32, minval=t_eps, maxval=p.T)
    z = jax.random.normal(key_z, x0.shape)
    a, s = p.marginal(t)
    return t, z, a[:, None] * x0 + s[:, None] * z


def _paper_loss(name, p, t, z, x0, x_t):
    """Each paper's per-example loss in its own prediction target (Gaussian-path identities only)."""
    score = _net_score(x_t, t)
    lam = p.log_snr(t)
    a, s = p.marginal(t)
    if name == "min_snr":  # Hang et al.: eps loss * min(SNR, 5) / SNR
        err = jnp.mean((dj.eps_from_score(score, x_t, t, p) - z) ** 2, axis=1)
        snr = jnp.exp(lam)
        return jnp.minimum(snr, 5.0) / snr * err
    if name == "edm":  # Karras et al.: lambda(sigma) ||D - x0||^2, sigma = s / a
        err = jnp.mean((dj.x0_from_score(score, x_t, t, p) - x0) ** 2, axis=1)
        sigma = s / a
        return (sigma**2 + 0.5**2) / (sigma * 0.5) ** 2 * err
    # Kingma & Gao (x2): sigmoid(b - lambda) (-dlambda/dt) ||eps_hat - eps||^2, dlambda/dt by autodiff
    err = jnp.mean((dj.eps_from_score(score, x_t, t, p) - z) ** 2, axis=1)
    dlam = jax.vmap(jax.grad(lambda tt: p.log_snr(tt)))(t)
    return jax.nn.sigmoid(2.0 - lam) * (-dlam) * err


@pytest.mark.parametrize("weighting", ["min_snr", "edm", "sigmoid"])
@pytest.mark.parametrize("name", NAMES)
def test_weightings_are_the_papers_objectives(name, weighting):
    p = PROCESSES[name]
    w = {"min_snr": dj.min_snr_weighting, "edm": dj.edm_weighting, "sigmoid": dj.sigmoid_weighting}[weighting]
    x0 = MU + C * jax.random.normal(jax.random.PRNGKey(8), (64, D))
    key, t_eps = jax.random.PRNGKey(9), float(getattr(p, "t_eps", 1e-5))
    t, z, x_t = _draws(p, key, x0, t_eps)
    ref = jnp.mean(_paper_loss(weighting, p, t, z, x0, x_t))
    got = dj.dsm_loss(key, x0, _net_score, p, weighting=w, t_eps=t_eps)
    _check(got, ref, rtol=2e-3)


def test_weighting_hyperparameters_are_checked():
    p, t = dj.vp_sde(), jnp.array([0.5])
    for f, kw in ((dj.min_snr_weighting, dict(gamma=0.0)), (dj.edm_weighting, dict(sigma_data=-1.0)),
                  (dj.sigmoid_weighting, dict(bias=float("nan")))):
        with pytest.raises(ValueError, match=list(kw)[0]):
            f(p, t, **kw)


# --- time samplers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_time_samplers_stay_in_range_and_uniform_matches_dsm(name):
    p = PROCESSES[name]
    t_eps = float(getattr(p, "t_eps", 1e-5))
    key = jax.random.PRNGKey(10)
    for sampler in (dj.uniform_time, dj.logit_normal_time, dj.edm_lognormal_time):
        t = sampler(key, 512, p, t_eps=t_eps)
        assert t.shape == (512,) and bool(jnp.all(jnp.isfinite(t)))
        assert float(t.min()) >= t_eps and float(t.max()) <= p.T
    x0 = MU + C * jax.random.normal(key, (16, D))
    ref = dj.dsm_loss(key, x0, _net_score, p, t_eps=t_eps)
    got = dj.dsm_loss(key, x0, _net_score, p, t_eps=t_eps,
                      time_sampler=functools.partial(dj.uniform_time, process=p, t_eps=t_eps))
    _check(got, ref, rtol=1e-6)


def test_logit_normal_and_edm_lognormal_distributions():
    key = jax.random.PRNGKey(11)
    p = PROCESSES["rf"]
    t = np.asarray(dj.logit_normal_time(key, 20000, p, mean=0.3, std=0.8), np.float64)
    logit = np.log(t / (p.T - t))
    assert abs(logit.mean() - 0.3) < 0.03 and abs(logit.std() - 0.8) < 0.03
    for name in ("vp", "edm", "rf"):  # ln sigma = -log_snr / 2 of the drawn t is N(-1.2, 1.2^2)
        p = PROCESSES[name]
        t = dj.edm_lognormal_time(key, 20000, p)
        log_sigma = np.asarray(-0.5 * p.log_snr(t), np.float64)
        assert np.all(np.isfinite(log_sigma))
        assert abs(log_sigma.mean() + 1.2) < 0.04 and abs(log_sigma.std() - 1.2) < 0.04, name


# --- configs --------------------------------------------------------------------------------------------------------


def test_config_tables_and_validation():
    from configs import tiny
    assert {"simple", "likelihood", "min_snr", "edm", "sigmoid", "flow_matching"} <= set(config_lib.WEIGHTINGS)
    assert {"uniform", "logit_normal", "edm_lognormal", "importance"} <= set(config_lib.TIME_SAMPLINGS)
    for field, bad in (("weighting", "nope"), ("time_sampling", "nope")):
        config = tiny.get_config()
        config.training[field] = bad
        with pytest.raises(ValueError, match=f"training.{field}"):
            config_lib.validate(config, device_count=1)
    config = tiny.get_config()
    config.model.parameterization = "velocity"
    config.training.weighting, config.training.time_sampling = "flow_matching", "logit_normal"
    config_lib.validate(config, device_count=1)


@pytest.mark.parametrize("sde, weighting, time_sampling", [
    ("vpsde", "min_snr", "logit_normal"), ("vesde", "sigmoid", "edm_lognormal"),
    ("subvpsde", "likelihood", "importance"),
    ("rectified_flow", "flow_matching", "logit_normal"), ("edm", "edm", "edm_lognormal")])
def test_build_loss_fn_passes_the_objective(sde, weighting, time_sampling):
    """The config path computes core.dsm_loss with the configured process, weighting and time sampler (same key)."""
    from configs import tiny
    config = tiny.get_config()
    t = config.training
    config.model.parameterization = "velocity"
    if sde == "edm":
        config.model.sigma_min, config.model.sigma_max = 0.002, 80.0
    t.sde, t.weighting, t.time_sampling = sde, weighting, time_sampling
    t.min_snr_gamma, t.sigmoid_bias, t.logit_normal_mean, t.edm_p_std = 3.0, 1.0, 0.5, 1.0
    config_lib.validate(config, device_count=1)
    sde, model = config_lib.build_sde(config), config_lib.build_model(config)
    expected = {"rectified_flow": dj.rectified_flow(), "edm": dj.edm_sde(0.002, 80.0)}.get(t.sde)
    assert expected is None or sde == expected
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)), train=False)["params"]
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    key = jax.random.PRNGKey(2)
    loss, _ = config_lib.build_loss_fn(config, model, sde)(params, key, {"x": x})
    k_loss, k_drop = jax.random.split(key)
    score_fn = config_lib.build_score_fn(config, model, sde, params, train=True, rng=k_drop)
    w = {"min_snr": functools.partial(dj.min_snr_weighting, gamma=3.0),
         "sigmoid": functools.partial(dj.sigmoid_weighting, bias=1.0), "edm": dj.edm_weighting,
         "flow_matching": dj.flow_matching_weighting, "likelihood": dj.likelihood_weighting}[weighting]
    sampler = {"logit_normal": functools.partial(dj.logit_normal_time, process=sde, mean=0.5, t_eps=t.t_eps),
               "edm_lognormal": functools.partial(dj.edm_lognormal_time, process=sde, p_std=1.0, t_eps=t.t_eps)}
    ref = dj.dsm_loss(k_loss, x, score_fn, sde, weighting=w, t_eps=t.t_eps, time_sampler=sampler.get(time_sampling),
                      importance_sampling=time_sampling == "importance", reduce="mean")
    assert np.isfinite(loss)
    _check(loss, ref, rtol=1e-5)
    config.training.time_sampling = "logit_normal"
    config.training.sde, config.training.loss = "vpsde", "ddpm"
    with pytest.raises(ValueError, match="training.time_sampling"):
        config_lib.validate(config, device_count=1)
