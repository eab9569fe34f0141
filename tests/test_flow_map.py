"""diffjax.distill.flow_map against closed forms: the Gaussian flow map is the ODE's, MeanFlow's and the shortcut's
targets evaluated on the exact map equal the exact map (float64; on an exact mixture, against a reference ODE solve),
and each objective trains a small MLP on the ring whose one-step samples land on the data."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax.core.mixture import mixture_score_fn, ring_mixture
from diffjax.core.parameterizations import velocity_from_score
from diffjax.distill import flow_map as fm

PROCESSES = {"rectified_flow": lambda: dj.rectified_flow(), "vp": lambda: dj.vp_sde()}


def _rk4_flow(velocity, x, t, s, steps=400):
    """x_s by classical RK4 on dx/dt = v from t down to s (differentiable; the reference map)."""
    h = (s - t) / steps

    def body(i, x):
        tau = t + i * h
        k1 = velocity(x, tau)
        k2 = velocity(x + 0.5 * h[:, None] * k1, tau + 0.5 * h)
        k3 = velocity(x + 0.5 * h[:, None] * k2, tau + 0.5 * h)
        k4 = velocity(x + h[:, None] * k3, tau + h)
        return x + h[:, None] / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.lax.fori_loop(0, steps, body, x)


def _points(key, n=16, dim=3):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (n, dim), jnp.float64) * 1.5
    ts = jax.random.uniform(k2, (2, n), jnp.float64, 0.05, 0.9)
    return x, jnp.max(ts, 0), jnp.min(ts, 0)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_gaussian_flow_map_is_the_ode_flow_and_the_targets_are_exact(name):
    with jax.enable_x64(True):
        process = PROCESSES[name]()
        g = fm.GaussianFlowMap(process, jnp.array([0.5, -1.0, 2.0]), jnp.array([0.3, 1.0, 0.7]))
        x, t, s = _points(jax.random.key(0))
        ref = _rk4_flow(g.velocity, x, t, s)
        np.testing.assert_allclose(g.flow(x, t, s), ref, rtol=0, atol=1e-9)
        u = g.average_velocity(x, t, s)
        assert np.isfinite(np.asarray(u)).all()
        np.testing.assert_allclose(g.average_velocity(x, t, t), g.velocity(x, t), rtol=1e-12)
        # MeanFlow's identity with the marginal velocity
        u_net, target = fm.meanflow_target(g.average_velocity, x, g.velocity(x, t), t, s)
        np.testing.assert_allclose(u_net, u, rtol=1e-12)
        np.testing.assert_allclose(target, u, rtol=0, atol=1e-10)
        # the shortcut's semigroup identity
        np.testing.assert_allclose(fm.shortcut_target(g.average_velocity, x, t, s), u, rtol=0, atol=1e-10)
        # and a wrong map fails both (the checks can fail)
        def wrong(x, t, s):
            return 1.1 * g.average_velocity(x, t, s)
        assert np.abs(np.asarray(fm.meanflow_target(wrong, x, g.velocity(x, t), t, s)[1]) - 1.1 * u).max() > 1e-3


def _ring64(*, radius, std):
    """A 4-mode ring mixture in float64 (inside jax.enable_x64)."""
    mix = ring_mixture(4, radius=radius, std=std)
    return mix._replace(means=mix.means.astype(jnp.float64), stds=mix.stds.astype(jnp.float64),
                        weights=mix.weights.astype(jnp.float64))


def test_targets_on_an_exact_mixture_match_a_reference_ode_solve():
    with jax.enable_x64(True):
        process = dj.rectified_flow()
        mix = _ring64(radius=2.0, std=0.4)
        score = mixture_score_fn(mix, process)

        def velocity(x, t):
            return velocity_from_score(score(x, t), x, t, process)

        def u_ref(x, t, s):
            return (x - _rk4_flow(velocity, x, t, s, steps=200)) / (t - s)[:, None]

        x, t, s = _points(jax.random.key(1), n=6, dim=2)
        s = jnp.minimum(s, t - 0.1)
        u = u_ref(x, t, s)
        _, target = fm.meanflow_target(u_ref, x, velocity(x, t), t, s)
        assert np.isfinite(np.asarray(target)).all()
        np.testing.assert_allclose(target, u, rtol=0, atol=1e-6)
        np.testing.assert_allclose(fm.shortcut_target(u_ref, x, t, s), u, rtol=0, atol=1e-6)


class FlowMapMLP(nn.Module):
    """u(x, t, s) for 2-D points: MLP on (x, Fourier features of t and t - s)."""

    @nn.compact
    def __call__(self, x, t, s):
        freqs = jnp.arange(1, 9, dtype=x.dtype)
        emb = [jnp.sin(freqs * v[:, None] * np.pi) for v in (t, t - s)] + [jnp.cos(freqs * v[:, None] * np.pi)
                                                                           for v in (t, t - s)]
        h = jnp.concatenate([x] + emb, axis=-1)
        for _ in range(3):
            h = nn.silu(nn.Dense(128)(h))
        return nn.Dense(2)(h)


def _train(loss_name, steps):
    process = dj.rectified_flow()
    mix = ring_mixture(8, radius=4.0, std=0.2)
    net = FlowMapMLP()
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones(1), jnp.zeros(1))
    opt = optax.adam(optax.cosine_decay_schedule(3e-3 if loss_name == "meanflow" else 2e-3, steps))
    state = opt.init(params)
    scale = 4.0  # data in units of the ring radius: unit-scale targets

    def loss(params, key):
        kx, kl = jax.random.split(key)
        x0 = mix.sample(kx, 256) / scale
        u = lambda x, t, s: net.apply(params, x, t, s)  # noqa: E731
        if loss_name == "meanflow":  # long jumps as often as short ones, milder adaptive weight
            return fm.meanflow_loss(u, process, kl, x0, time_sampler=fm.uniform_two_times, power=0.5)[0]
        return fm.shortcut_loss(u, process, kl, x0)[0]

    @jax.jit
    def step(params, state, key):
        value, grads = jax.value_and_grad(loss)(params, key)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    for i in range(steps):
        params, state, value = step(params, state, jax.random.fold_in(jax.random.key(1), i))
    assert np.isfinite(float(value))
    u = lambda x, t, s: net.apply(params, x, t, s)  # noqa: E731
    x_T = jax.random.normal(jax.random.key(2), (512, 2))
    x1, nfe = jax.jit(lambda x: fm.flow_map_sample(u, x, [process.T, 0.0]))(x_T)
    return np.asarray(x1) * scale, nfe


@pytest.mark.parametrize("loss_name,steps", [("meanflow", 5000), ("shortcut", 1500)])
def test_one_step_samples_of_a_trained_mlp_land_on_the_ring(loss_name, steps):
    x, nfe = _train(loss_name, steps)
    assert nfe == 1 and np.isfinite(x).all()
    r = np.linalg.norm(x, axis=1)
    # the ring: radius 4, component std 0.2; a one-step sample of N(0, I) pushed nowhere would have r ~ 1.25
    assert abs(np.median(r) - 4.0) < 0.4, np.median(r)
    assert np.mean(np.abs(r - 4.0) < 1.0) > 0.8
    angles = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    counts = np.bincount(np.round(angles / (np.pi / 4)).astype(int) % 8, minlength=8)
    assert counts.min() > 0.04 * len(x), counts  # every mode visited


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="equal_fraction"):
        fm.logit_normal_two_times(jax.random.key(0), 4, T=1.0, equal_fraction=1.5)
    with pytest.raises(ValueError, match="times must be"):
        fm.flow_map_sample(lambda x, t, s: x, jnp.zeros((2, 2)), [1.0])
    with pytest.raises(ValueError, match="times must decrease"):  # s > t: a jump forward in time
        fm.flow_map_sample(lambda x, t, s: x, jnp.zeros((2, 2)), [0.2, 0.5])


def _exact_trigflow_F(g, sd):
    """TrigFlow's consistency network of the exact map: F(y, t) with f(sd y, t) = flow(sd y, t, 0)."""
    def F(y, t):
        x = sd * y
        return (jnp.cos(t)[:, None] * x - g.flow(x, t, jnp.zeros_like(t))) / (sd * jnp.sin(t))[:, None]

    return F


def test_scm_tangent_vanishes_on_the_exact_consistency_function():
    with jax.enable_x64(True):
        sd = 0.5
        process = dj.trigflow(sd)
        g = fm.GaussianFlowMap(process, jnp.array([0.5, -1.0, 0.2]), jnp.array([0.3, 1.0, 0.7]))
        x, t, _ = _points(jax.random.key(3))
        t = t * 1.6  # (0.08, 1.44): most of TrigFlow's [0, pi/2]
        F = _exact_trigflow_F(g, sd)
        f = fm.trigflow_consistency(F, sd)
        np.testing.assert_allclose(f(x, t), g.flow(x, t, jnp.zeros_like(t)), rtol=0, atol=1e-12)
        any_F = fm.trigflow_consistency(lambda y, t: y**2 + 1.0, sd)
        np.testing.assert_allclose(any_F(x, jnp.zeros_like(t)), x, rtol=0, atol=0)  # f(x, 0) = x for any F
        # the same network as a flow map: its jump to 0 is the exact one
        u = fm.trigflow_flow_map(F, sd)
        np.testing.assert_allclose(u(x, t, jnp.zeros_like(t)), g.average_velocity(x, t, jnp.zeros_like(t)),
                                   rtol=1e-10, atol=1e-12)
        # and with the velocity's network, u(x, t, t) is the velocity
        v = g.velocity(x, t)
        np.testing.assert_allclose(fm.trigflow_flow_map(lambda y, t: g.velocity(sd * y, t) / sd, sd)(x, t, t), v,
                                   rtol=1e-12)
        # sCM's tangent cos(t) df/dt: zero on the exact map with the exact velocity
        F_val, tangent = fm.scm_tangent(F, x, v, t, sigma_data=sd)
        np.testing.assert_allclose(F_val, F(x / sd, t), rtol=1e-12)
        assert np.abs(np.asarray(F(x / sd, t))).max() > 0.1  # not a trivially small network
        np.testing.assert_allclose(tangent, 0.0, rtol=0, atol=1e-10)
        # nonzero for a wrong map (the check can fail) and for a partial warm-up (r < 1)
        wrong = lambda y, t: 1.1 * F(y, t)  # noqa: E731
        assert np.abs(np.asarray(fm.scm_tangent(wrong, x, v, t, sigma_data=sd)[1])).max() > 1e-2
        assert np.abs(np.asarray(fm.scm_tangent(F, x, v, t, sigma_data=sd, warmup=0.5)[1])).max() > 1e-2
        # affine in v: the conditional velocities' tangents average to the marginal velocity's (unbiased training)
        v1, v2 = v + 1.0, v - 3.0
        g1, g2 = (fm.scm_tangent(F, x, w, t, sigma_data=sd)[1] for w in (v1, v2))
        g_mid = fm.scm_tangent(F, x, 0.75 * v1 + 0.25 * v2, t, sigma_data=sd)[1]
        np.testing.assert_allclose(g_mid, 0.75 * g1 + 0.25 * g2, rtol=0, atol=1e-10)


def test_trigflow_is_edm_in_another_clock():
    with jax.enable_x64(True):
        p = dj.trigflow(0.5)
        t = jnp.linspace(0.05, 1.5, 7, dtype=jnp.float64)
        a, s = p.marginal(t)
        np.testing.assert_allclose(s / a, 0.5 * jnp.tan(t), rtol=1e-12)  # sigma = sigma_d tan t
        np.testing.assert_allclose(p.t_from_log_snr(p.log_snr(t)), t, rtol=1e-12)
        da, ds = jax.jvp(p.marginal, (t,), (jnp.ones_like(t),))[1]
        np.testing.assert_allclose(p.marginal_derivative(t), (da, ds), rtol=1e-12)
        np.testing.assert_allclose(p.T, np.arctan(80.0 / 0.5))
    with pytest.raises(ValueError, match="sigma_data"):
        dj.trigflow(0.0)


class TrigFlowMLP(nn.Module):
    """F(y, t) for 2-D points: MLP on (y, Fourier features of t)."""

    @nn.compact
    def __call__(self, y, t):
        freqs = jnp.arange(1, 9, dtype=y.dtype)
        h = jnp.concatenate([y, jnp.sin(freqs * t[:, None]), jnp.cos(freqs * t[:, None])], axis=-1)
        for _ in range(3):
            h = nn.silu(nn.Dense(128)(h))
        return nn.Dense(2)(h)


@pytest.mark.parametrize("teacher", [None, "rectified_flow"], ids=["training", "distillation"])
def test_scm_trains_an_mlp_whose_one_step_samples_land_on_the_ring(teacher):
    """sCM from scratch (the conditional velocity) and sCD from the exact ring's rectified-flow velocity, converted to
    TrigFlow (trigflow_velocity); the data in units of 1/8 (per-coordinate std 0.36 ~ sigma_d)."""
    sd = 0.5
    process = dj.trigflow(sd)
    scale = 8.0
    mix = ring_mixture(8, radius=4.0 / scale, std=0.2 / scale)
    velocity = None
    if teacher is not None:
        rf = dj.rectified_flow()
        velocity = fm.trigflow_velocity(mixture_score_fn(mix, rf), rf, sd)
    net = TrigFlowMLP()
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones(1))
    steps = 3000
    opt = optax.adam(optax.cosine_decay_schedule(1e-3, steps))
    state = opt.init(params)

    def loss(params, key, r):
        kx, kl = jax.random.split(key)
        return fm.scm_loss(lambda y, t: net.apply(params, y, t), process, kl, mix.sample(kx, 256), warmup=r,
                           velocity_fn=velocity)[0]

    @jax.jit
    def step(params, state, key, r):
        value, grads = jax.value_and_grad(loss)(params, key, r)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    for i in range(steps):
        params, state, value = step(params, state, jax.random.fold_in(jax.random.key(1), i), min(1.0, i / 500))
    assert np.isfinite(float(value))
    f = fm.trigflow_consistency(lambda y, t: net.apply(params, y, t), sd)
    x_T = process.prior_sample(jax.random.key(2), (512, 2))
    x = np.asarray(jax.jit(lambda x: f(x, jnp.full((512,), process.T)))(x_T)) * scale
    assert np.isfinite(x).all()
    # seeds 0-2 (training): median 4.33-4.39, 90-93% within 1; seeds 0-1 (distillation): 4.02-4.14, 88%
    r = np.linalg.norm(x, axis=1)
    assert abs(np.median(r) - 4.0) < 0.5, np.median(r)
    assert np.mean(np.abs(r - 4.0) < 1.0) > 0.8, np.mean(np.abs(r - 4.0) < 1.0)
    angles = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    counts = np.bincount(np.round(angles / (np.pi / 4)).astype(int) % 8, minlength=8)
    assert counts.min() > 0.04 * len(x), counts


def test_trigflow_velocity_of_a_model_on_another_process_is_trigflows_own():
    """sCM distillation from any model: the exact mixture's score on rectified flow / VP / EDM, converted, is the
    probability-flow velocity of the same mixture on TrigFlow (float64)."""
    with jax.enable_x64(True):
        sd = 0.5
        trig = dj.trigflow(sd)
        mix = _ring64(radius=1.0, std=0.2)
        want_score = mixture_score_fn(mix, trig)

        def want(x, t):
            return velocity_from_score(want_score(x, t), x, t, trig)

        x, t, _ = _points(jax.random.key(5), n=8, dim=2)
        t = t * 1.5
        v = want(x, t)
        assert np.abs(np.asarray(v)).max() > 0.1
        for teacher in (dj.rectified_flow(), dj.vp_sde(), dj.edm_sde(), trig):
            got = fm.trigflow_velocity(mixture_score_fn(mix, teacher), teacher, sd)(x, t)
            np.testing.assert_allclose(got, v, rtol=1e-7, atol=1e-9, err_msg=type(teacher).__name__)
