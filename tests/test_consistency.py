"""Consistency models (diffjax.distill.consistency): the exact boundary condition on every process, the iCT pieces
written out by hand, consistency distillation against the closed-form probability-flow map of Gaussian data, and iCT
training of a tiny pure-JAX MLP (optax in the test only) on the 2-D ring, sampled in one step."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax import distill
from diffjax.eval.sample_distances import energy_distance

PROCESSES = {
    "vp": dj.vp_sde(),
    "ve": dj.ve_sde(),
    "edm": dj.edm_sde(),
    "rf": dj.rectified_flow(),
}
FREQS = jnp.arange(1, 9, dtype=jnp.float32)


def mlp_init(key, width=64, dim=2):
    dims = [dim + 2 * len(FREQS), width, width, dim]
    keys = jax.random.split(key, len(dims) - 1)
    return [(jax.random.normal(k, (i, o)) / math.sqrt(i), jnp.zeros(o)) for k, i, o in zip(keys, dims[:-1], dims[1:])]


def mlp(params, x, c_noise):
    c = jnp.broadcast_to(c_noise, (x.shape[0],))[:, None]
    h = jnp.concatenate([x, jnp.sin(FREQS * c), jnp.cos(FREQS * c)], axis=1)
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = jax.nn.silu(h)
    return h


# ------------------------------------------------------------------------------------------- boundary condition


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_boundary_condition_is_exact(name):
    p = PROCESSES[name]
    params = mlp_init(jax.random.key(0))
    f = distill.consistency_fn(lambda x, c: 10.0 * mlp(params, x, c), p, sigma_data=0.7)
    x = 3.0 * jax.random.normal(jax.random.key(1), (64, 2))
    for out in (f(x, p.t_eps), f(x, jnp.full((64,), p.t_eps, jnp.float32)), jax.jit(f)(x, jnp.float32(p.t_eps))):
        assert bool(jnp.all(jnp.isfinite(out)))
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    # elsewhere the network matters
    t_mid = 0.5 * (p.t_eps + p.T)
    assert float(jnp.max(jnp.abs(f(x, t_mid) - x))) > 1e-2
    # a custom boundary time
    g = distill.consistency_fn(lambda x, c: mlp(params, x, c), p, t_eps=t_mid)
    np.testing.assert_array_equal(np.asarray(jax.jit(g)(x, jnp.float32(t_mid))), np.asarray(x))


def test_parameterization_by_hand():
    """c_skip, c_out, c_in, c_noise in the process's sigma = s/a, written out for the VP SDE."""
    p = PROCESSES["vp"]
    sd = 0.5
    raw = lambda x, c: jnp.sin(x) + c[:, None]  # noqa: E731
    f = distill.consistency_fn(raw, p, sigma_data=sd)
    x = jax.random.normal(jax.random.key(2), (16, 3))
    t = jnp.linspace(0.1, 1.0, 16)
    a, s = p.marginal(t)
    a_e, s_e = p.marginal(jnp.float32(p.t_eps))
    sig, sig_min = s / a, s_e / a_e
    c_skip = sd**2 / ((sig - sig_min) ** 2 + sd**2)
    c_out = sd * (sig - sig_min) / jnp.sqrt(sig**2 + sd**2)
    c_in = 1.0 / jnp.sqrt(sig**2 + sd**2)
    want = a_e * (c_skip[:, None] * x / a[:, None] + c_out[:, None] * raw(c_in[:, None] * x / a[:, None],
                                                                          0.25 * jnp.log(sig)))
    np.testing.assert_allclose(f(x, t), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- iCT pieces


def test_ict_curriculum():
    n = lambda k: int(distill.ict_num_scales(k, total_steps=1000))  # noqa: E731  K' = floor(1000 / 8) = 125
    assert [n(0), n(124), n(125), n(250), n(874), n(875), n(999)] == [11, 11, 21, 41, 641, 1281, 1281]
    assert int(jax.jit(lambda k: distill.ict_num_scales(k, total_steps=1000))(300)) == 41
    with pytest.raises(ValueError, match="total_steps"):
        distill.ict_num_scales(0, total_steps=0)
    with pytest.raises(ValueError, match="s1"):
        distill.ict_num_scales(0, total_steps=10, s0=10, s1=5)


def test_metrics_by_hand():
    x = jax.random.normal(jax.random.key(3), (4, 3, 5))
    y = jnp.zeros_like(x)
    sq = jnp.sum(x.reshape(4, -1) ** 2, axis=1)
    c = 0.00054 * math.sqrt(15)
    np.testing.assert_allclose(distill.pseudo_huber(x, y), jnp.sqrt(sq + c**2) - c, rtol=1e-6)
    np.testing.assert_allclose(distill.squared_l2(x, y), sq, rtol=1e-6)
    np.testing.assert_allclose(distill.ict_weight(jnp.float32(1.0), jnp.float32(1.5)), 2.0)


def test_ct_loss_by_hand():
    """iCT on EDM (t = sigma): the Karras grid of N(k) levels, the log-normal index, shared noise, 1/(dsigma)."""
    p = PROCESSES["edm"]
    f = distill.consistency_fn(lambda x, c: jnp.tanh(x) * c[:, None], p)
    x0 = jax.random.normal(jax.random.key(4), (64, 2))
    key = jax.random.key(5)
    got = jax.jit(lambda k: distill.ct_loss(k, x0, f, p, step=150, total_steps=1000))(key)
    n = 21  # K' = 125: one doubling
    sig = (0.002 ** (1 / 7) + jnp.arange(n) / (n - 1) * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    cdf = jax.scipy.special.erf((jnp.log(sig) + 1.1) / (math.sqrt(2) * 2.0))
    key_i, key_z = jax.random.split(key)
    cum = jnp.cumsum(cdf[1:] - cdf[:-1])
    i = jnp.searchsorted(cum, jax.random.uniform(key_i, (64,)) * cum[-1], side="right")
    z = jax.random.normal(key_z, x0.shape)
    lo, hi = sig[i], sig[i + 1]
    want = jnp.mean(distill.pseudo_huber(f(x0 + hi[:, None] * z, hi), f(x0 + lo[:, None] * z, lo)) / (hi - lo))
    assert bool(jnp.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=2e-4)


# ------------------------------------------------------------ Gaussian data: the probability-flow map in closed form

MU, C = jnp.array([1.0, -0.5]), 0.8


def exact_map(p, t_eps):
    """The probability-flow ODE map of data N(MU, C^2 I) from (x, t) to t_eps: an affine map of x."""
    a_e, s_e = p.marginal(jnp.float32(t_eps))

    def f(x, t):
        a, s = p.marginal(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],)))
        ratio = jnp.sqrt(a_e**2 * C**2 + s_e**2) / jnp.sqrt(a**2 * C**2 + s**2)
        return a_e * MU + ratio[:, None] * (x - a[:, None] * MU)

    return f


def gaussian_score(p):
    return dj.mixture_score_fn(dj.gaussian_mixture(jnp.ones(1), MU[None], C), p)


def test_consistency_distillation_moves_student_toward_the_ode_map():
    p = PROCESSES["edm"]
    target_map = exact_map(p, p.t_eps)
    x0 = MU + C * jax.random.normal(jax.random.key(6), (512, 2))

    def student(w):  # 6 parameters: F = (w0 + w1 c_noise) x_in + (b0 + b1 c_noise), b0, b1 in R^2
        return distill.consistency_fn(lambda x, c: (w[0] + w[1] * c[:, None]) * x + (w[2:4] + w[4:6] * c[:, None]),
                                      p, sigma_data=C)

    def loss(w, key):
        f = student(w)
        return distill.cd_loss(key, x0, f, student(jax.lax.stop_gradient(w)), gaussian_score(p), p, num_scales=18)

    # mean squared distance to the exact map at the loss's own grid times, on noised data
    times = jnp.asarray(dj.samplers.karras_grid(p, 17, p.t_eps))
    noise = jax.random.normal(jax.random.key(7), (len(times),) + x0.shape)

    @jax.jit
    def distance(w):
        def one(t, z):
            x = p.perturb(x0, t, z)
            return jnp.mean((student(w)(x, t) - target_map(x, t)) ** 2)

        return jnp.mean(jax.vmap(one)(times, noise))

    w = jnp.zeros(6)
    before = float(distance(w))
    step = jax.jit(lambda w, k: w - 0.5 * jax.grad(loss)(w, jax.random.key(k)))
    for k in range(20):
        w = step(w, k)
    assert bool(jnp.all(jnp.isfinite(w)))
    assert bool(jnp.isfinite(loss(w, jax.random.key(0))))
    after = float(distance(w))
    assert np.isfinite(before) and after < 0.2 * before, (before, after)


def test_cd_loss_with_exact_consistency_function_is_small():
    """The exact consistency function of Gaussian data is (up to the teacher's Heun error) a zero of cd_loss; a wrong
    one is not; Euler as the teacher's step also runs."""
    p = PROCESSES["edm"]
    exact = exact_map(p, p.t_eps)
    x0 = MU + C * jax.random.normal(jax.random.key(8), (256, 2))
    score = gaussian_score(p)
    wrong = lambda x, t: exact(x, t) + 0.1  # noqa: E731
    zero, other = jax.jit(lambda k: (
        distill.cd_loss(k, x0, exact, exact, score, p, num_scales=40),
        distill.cd_loss(k, x0, wrong, exact, score, p, num_scales=40, ode_step=dj.samplers.ode_euler_step,
                        metric=distill.pseudo_huber)))(jax.random.key(9))
    assert bool(jnp.isfinite(zero)) and bool(jnp.isfinite(other))
    assert float(zero) < 1e-4 and float(other) > 1e-2


def test_sampler_with_exact_consistency_function():
    """One step of the exact map from the prior gives the data's marginal at t_eps; multistep follows Algorithm 1."""
    p = PROCESSES["vp"]
    f = exact_map(p, p.t_eps)
    x_T = p.prior_sample(jax.random.key(10), (4000, 2))
    one = distill.consistency_sample(jax.random.key(11), x_T, f, p)
    np.testing.assert_allclose(one, f(x_T, p.T), rtol=1e-6)
    a_e, s_e = p.marginal(jnp.float32(p.t_eps))
    np.testing.assert_allclose(jnp.mean(one, 0), a_e * MU, atol=0.05)
    np.testing.assert_allclose(jnp.std(one, 0), jnp.sqrt(a_e**2 * C**2 + s_e**2), rtol=0.05)
    tau = 0.3
    two = jax.jit(lambda k, x: distill.consistency_sample(k, x, f, p, steps=(p.T, tau)))(jax.random.key(11), x_T)
    a, s = p.marginal(jnp.float32(tau))
    z = jax.random.normal(jax.random.fold_in(jax.random.key(11), 1), x_T.shape)
    x_tau = a / a_e * one + a * jnp.sqrt((s / a) ** 2 - (s_e / a_e) ** 2) * z
    assert bool(jnp.all(jnp.isfinite(two)))
    np.testing.assert_allclose(two, f(x_tau, tau), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------- iCT on the 2-D ring


def test_ict_trains_a_one_step_sampler_on_the_ring():
    p = PROCESSES["edm"]
    mix = dj.ring_mixture()
    total = 300

    def model(params):
        return distill.consistency_fn(lambda x, c: mlp(params, x, c), p, sigma_data=2.9)

    opt = optax.adam(3e-3)
    params = mlp_init(jax.random.key(0))
    state = opt.init(params)

    @jax.jit
    def train_step(params, state, k):
        key = jax.random.fold_in(jax.random.key(1), k)
        x0 = mix.sample(jax.random.fold_in(key, 1), 512)
        loss, grads = jax.value_and_grad(
            lambda q: distill.ct_loss(key, x0, model(q), p, step=k, total_steps=total))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    data = mix.sample(jax.random.key(99), 1000)
    x_T = p.prior_sample(jax.random.key(7), (1000, 2))
    sample = jax.jit(lambda params: distill.consistency_sample(jax.random.key(8), x_T, model(params), p))
    untrained = float(energy_distance(sample(params), data))
    prior = float(energy_distance(x_T, data))
    for k in range(total):
        params, state, loss = train_step(params, state, k)
        assert bool(jnp.isfinite(loss)), k
    x = sample(params)
    assert bool(jnp.all(jnp.isfinite(x)))
    trained = float(energy_distance(x, data))
    assert untrained > 1.5 and prior > 10.0  # neither the prior nor the untrained model is near the data
    assert trained < 0.4, (trained, untrained, prior)


# ------------------------------------------------------------------------------------------------- validation


def test_validation_and_nan():
    p = PROCESSES["edm"]
    x0 = jnp.zeros((8, 2))
    f = distill.consistency_fn(lambda x, c: x, p)
    with pytest.raises(ValueError, match="raw_fn"):
        distill.consistency_fn("net", p)
    with pytest.raises(ValueError, match="sigma_data"):
        distill.consistency_fn(lambda x, c: x, p, sigma_data=0.0)
    with pytest.raises(ValueError, match="t_eps"):
        distill.consistency_fn(lambda x, c: x, p, t_eps=100.0)
    with pytest.raises(ValueError, match="process"):
        distill.consistency_fn(lambda x, c: x, object())
    with pytest.raises(ValueError, match="num_scales"):
        distill.cd_loss(jax.random.key(0), x0, f, f, f, p, num_scales=1)
    with pytest.raises(ValueError, match="metric"):
        distill.ct_loss(jax.random.key(0), x0, f, p, step=0, total_steps=10, metric="lpips")
    with pytest.raises(ValueError, match="p_std"):
        distill.ct_loss(jax.random.key(0), x0, f, p, step=0, total_steps=10, p_std=-1.0)
    with pytest.raises(ValueError, match="steps"):
        distill.consistency_sample(jax.random.key(0), x0, f, p, steps=(1.0, 5.0))
    with pytest.raises(ValueError, match="steps"):
        distill.consistency_sample(jax.random.key(0), x0, f, p, steps=(500.0,))
    nan_f = distill.consistency_fn(lambda x, c: x * jnp.nan, p)
    loss = jax.jit(lambda k: distill.ct_loss(k, jnp.ones((8, 2)), nan_f, p, step=0, total_steps=10))(jax.random.key(0))
    assert not bool(jnp.isfinite(loss))


def test_losses_and_gradients_finite_on_every_process():
    """iCT at the curriculum's end (N = 1281 levels, sigma down to sigma(t_eps)): finite losses and gradients on VP
    and rectified flow (whose sigma = s/a reaches 999 at T)."""
    params = mlp_init(jax.random.key(12))
    x0 = dj.ring_mixture().sample(jax.random.key(13), 64)

    @jax.jit
    def all_losses(params):
        out = []
        for name in ("vp", "rf"):
            p = PROCESSES[name]

            def ct(q):
                return distill.ct_loss(jax.random.key(14), x0, distill.consistency_fn(
                    lambda x, c: mlp(q, x, c), p, sigma_data=2.9), p, step=999, total_steps=1000)
            out.append(jax.value_and_grad(ct)(params))
        return out

    for loss, grads in all_losses(params):
        assert bool(jnp.isfinite(loss)) and float(loss) > 0
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
