"""The grid samplers (DDIM, DDPM ancestral) evaluate the model at each step's own noise level; DDIM's spacings;
sampling with improved DDPM's learned variance.

Hand-written loops in float64 NumPy over an analytic eps model (the exact eps of Gaussian data N(MU, S0^2 I) under
the grid's alpha-bars) are the reference, clipped (diffusers' ``clip_sample`` / DDPM's ``clip_denoised``) and not.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.discrete import ancestral_step, ddpm_grid, ddpm_grid_from_betas

MU, S0 = 0.8, 0.5  # data N(0.8, 0.25): a third of the mass above 1, so clipping changes the samples
SHAPE = (16, 3)


def gaussian_eps(x, abar):
    """E[eps | x_t] for x0 ~ N(MU, S0^2), x_t = sqrt(abar) x0 + sqrt(1-abar) eps (works for numpy and jnp)."""
    return np.sqrt(1 - abar) * (x - np.sqrt(abar) * MU) / (abar * S0**2 + 1 - abar) if isinstance(x, np.ndarray) \
        else jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * MU) / (abar * S0**2 + 1 - abar)


def grid_score(grid):
    """A discrete model: sees t only through the grid's step (its alpha-bar)."""
    def score_fn(x, t):
        abar = grid.alpha_bars[grid.index(t)][:, None]
        return -gaussian_eps(x, abar) / jnp.sqrt(1 - abar)
    return score_fn


def continuous_score(sde):
    """A continuous-time model: the exact score under the VP SDE's own marginal at t."""
    def score_fn(x, t):
        abar = (sde.marginal(t)[0] ** 2)[:, None]
        return -gaussian_eps(x, abar) / jnp.sqrt(1 - abar)
    return score_fn


def abars64(sde):
    return np.cumprod(1.0 - np.asarray(sde.discrete_betas(), np.float64))


def hand_ddim(x, sde, seq, *, eta, clip, key):
    """DDIM (Song et al. eq. 12) over the increasing indices ``seq``, last step to alpha_bar = 1; with ``clip``,
    diffusers' clip_sample: x0 clipped to [-1, 1] and eps recomputed from it. Noise: normal(fold_in(key, k))."""
    ab = abars64(sde)
    x = np.asarray(x, np.float64)
    prev = [-1] + list(seq[:-1])
    for k, (i, j) in enumerate(zip(seq[::-1], prev[::-1])):
        a, a_prev = ab[i], (ab[j] if j >= 0 else 1.0)
        eps = gaussian_eps(x, a)
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        if clip:
            x0 = np.clip(x0, -1.0, 1.0)
            eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        z = np.asarray(jax.random.normal(jax.random.fold_in(key, k), x.shape), np.float64)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * z
    return x


def hand_ancestral(x, sde, *, clip, key):
    """DDPM Algorithm 2 with sigma^2 = beta; with ``clip``, Ho et al.'s clip_denoised (posterior mean of the clipped
    x0). Returns the last step's mean. Noise: normal(fold_in(key, i)) at step i."""
    betas = np.asarray(sde.discrete_betas(), np.float64)
    ab = abars64(sde)
    x = np.asarray(x, np.float64)
    zs = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), x.shape))(jnp.arange(sde.N)),
                    np.float64)
    for i in range(sde.N - 1, -1, -1):
        a, a_prev, b = ab[i], (ab[i - 1] if i > 0 else 1.0), betas[i]
        x0 = (x - np.sqrt(1 - a) * gaussian_eps(x, a)) / np.sqrt(a)
        if clip:
            x0 = np.clip(x0, -1.0, 1.0)
        mean = np.sqrt(a_prev) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - a_prev) / (1 - a) * x
        x = mean + (np.sqrt(b) * zs[i] if i > 0 else 0.0)
    return mean


# --------------------------------------------------------------------------------------- grid times (item 3)


@pytest.mark.parametrize("sde", [dj.vp_sde(), dj.cosine_vp_sde(), dj.vp_sde(N=25)], ids=["linear", "cosine", "N25"])
def test_grid_times_have_the_grid_alpha_bars(sde):
    grid = ddpm_grid(sde)
    i = jnp.arange(grid.N)
    index, a = jax.jit(lambda g: (g.index(g.time(i)), sde.marginal(g.time(i))[0]))(grid)
    np.testing.assert_array_equal(index, np.arange(grid.N))
    # float32: relative 5e-5 down to alpha_bar ~ 1e-5; cosine's last steps (alpha_bar 2.4e-9) to 2e-3
    np.testing.assert_allclose(np.log(a**2), np.log(grid.alpha_bars), atol=2e-3)
    big = np.asarray(grid.alpha_bars) > 1e-5
    np.testing.assert_allclose(np.asarray(a**2)[big], np.asarray(grid.alpha_bars)[big], rtol=5e-5)
    assert np.all(np.diff(np.asarray(grid.time(i))) > 0)


@pytest.mark.parametrize("sde", [dj.vp_sde(), dj.cosine_vp_sde(), dj.subvp_sde(), dj.ve_sde()],
                         ids=["vp", "cosine", "subvp", "ve"])
def test_t_from_log_snr_inverts_log_snr(sde):
    t = jnp.array([1e-4, 1e-3, 0.05, 0.3, 0.7, 0.999])
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=2e-3, atol=2e-6)


@pytest.mark.parametrize("model,clip,eta,spacing", [
    ("grid", False, 0.0, "leading"), ("grid", True, 0.0, "leading"), ("continuous", False, 0.0, "leading"),
    ("continuous", True, 0.0, "leading"), ("grid", True, 0.7, "leading"), ("continuous", True, 0.7, "linspace"),
    ("grid", True, 0.0, "trailing"), ("grid", False, 0.0, "linspace"),
])
def test_ddim_equals_hand_written_loop(model, clip, eta, spacing):
    """Every DDIM step evaluates the model at its own alpha-bar, so DDIM equals the hand loop (clipped or not) for a
    discrete model and for a continuous one; clipped, the samples lie in [-1, 1]. (N = 1000: there t_eps = 1e-3,
    the old floor of the last step's time, rounded to step 1, not 0.)"""
    sde = dj.vp_sde(0.1, 20.0, N=1000)
    grid = ddpm_grid(sde)
    score = grid_score(grid) if model == "grid" else continuous_score(sde)
    marginal = grid if model == "grid" else sde
    if clip:
        score = dj.clip_denoised(score, marginal)
    x_T = jax.random.normal(jax.random.key(0), SHAPE)
    key = jax.random.key(1)
    got = dj.samplers.ddim(key, x_T, score, sde, num_steps=10, eta=eta, spacing=spacing)
    want = hand_ddim(x_T, sde, grid.subsequence(10, spacing=spacing), eta=eta, clip=clip, key=key)
    assert bool(jnp.all(jnp.isfinite(got)))
    # the continuous model sees the grid's alpha-bar up to float32 rounding of the times
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 if model == "grid" else 5e-4)
    if clip:
        assert float(jnp.max(jnp.abs(got))) <= 1.0 + 1e-5
    else:
        assert float(jnp.max(jnp.abs(got))) > 1.05  # the data leave [-1, 1]: clipping is exercised


@pytest.mark.parametrize("clip", [False, True])
def test_ancestral_equals_hand_written_loop(clip):
    sde = dj.vp_sde(0.1, 20.0, N=1000)
    grid = ddpm_grid(sde)
    score = dj.clip_denoised(grid_score(grid), grid) if clip else grid_score(grid)
    x_T = jax.random.normal(jax.random.key(2), SHAPE)
    key = jax.random.key(3)
    got = dj.samplers.ancestral(key, x_T, score, sde)
    want = hand_ancestral(x_T, sde, clip=clip, key=key)
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    if clip:
        assert float(jnp.max(jnp.abs(got))) <= 1.0 + 1e-5


def test_grid_samplers_reject_t_eps():
    sde = dj.vp_sde(N=100)
    x = jnp.zeros((2, 3))
    for sampler in (dj.samplers.ddim, dj.samplers.ancestral):
        with pytest.raises(ValueError, match="t_eps must be None.*0.001"):
            sampler(jax.random.key(0), x, grid_score(ddpm_grid(sde)), sde, t_eps=1e-3)


def test_smld_ancestral_evaluates_sigma_min_at_step_0():
    """VE's geometric grid: step i at t_i = i/(N-1), where sigma(t_i) is the grid's sigma_i; step 0 at sigma_min."""
    sde = dj.ve_sde(0.01, 5.0, N=30)
    seen = []

    def score_fn(x, t):
        jax.debug.callback(lambda t: seen.append(float(np.asarray(t)[0])), t, ordered=True)
        return -x / (1.0 + sde.sigma(t)[:, None] ** 2)

    out = dj.samplers.ancestral(jax.random.key(1), sde.prior_sample(jax.random.key(0), (4, 2)), score_fn, sde)
    jax.effects_barrier()
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(sde.sigma(np.asarray(seen)), np.asarray(sde.discrete_sigmas())[::-1], rtol=1e-5)
    assert seen[-1] == 0.0


# --------------------------------------------------------------------------------------- spacings (item 4)


@pytest.mark.parametrize("n,s,spacing,want", [
    (10, 3, "leading", [0, 3, 6]),
    (10, 3, "trailing", [2, 6, 9]),
    (10, 3, "linspace", [0, 4, 9]),  # 4.5 rounds half to even, as NumPy (and diffusers)
    (1000, 3, "trailing", [332, 666, 999]),
    (1000, 7, "linspace", [0, 166, 333, 500, 666, 832, 999]),
    (1000, 50, "leading", list(range(0, 1000, 20))),
    (1000, 50, "trailing", list(range(19, 1000, 20))),
    (1000, 1, "leading", [0]),
    (1000, 1, "trailing", [999]),
    (7, 7, "linspace", list(range(7))),
])
def test_ddim_spacings(n, s, spacing, want):
    grid = ddpm_grid_from_betas(np.linspace(1e-4, 0.02, n))
    np.testing.assert_array_equal(grid.subsequence(s, spacing=spacing), want)


def test_bad_spacing_and_variance_name_themselves():
    sde = dj.vp_sde(N=100)
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="spacing.*uniform"):
        dj.samplers.ddim(jax.random.key(0), x, grid_score(ddpm_grid(sde)), sde, spacing="uniform")
    for sampler in (dj.samplers.ddim, dj.samplers.ancestral):
        with pytest.raises(ValueError, match="variance='learned' needs a score_fn with a learned variance"):
            sampler(jax.random.key(0), x, grid_score(ddpm_grid(sde)), sde, variance="learned")


# --------------------------------------------------------------------------------------- learned variance (item 6)

W_V = jax.random.normal(jax.random.key(9), (3, 3)) / 2.0


def learned_model(grid):
    """A learned-variance eps model: eps as above, v = tanh(x W) in (-1, 1); returns (score, v) in one call."""
    def fn(x, t):
        abar = grid.alpha_bars[grid.index(t)][:, None]
        return -gaussian_eps(x, abar) / jnp.sqrt(1 - abar), jnp.tanh(x @ W_V)
    return dj.LearnedVarianceScore(fn)


def test_ancestral_step_with_learned_variance_is_improved_ddpm():
    """Nichol & Dhariwal: mean from eps (Ho et al. eq. 11), Sigma = exp(f log beta + (1-f) log beta_tilde),
    f = (v+1)/2, x_{i-1} = mean + sqrt(Sigma) z."""
    sde = dj.vp_sde(0.1, 20.0, N=100)
    grid = ddpm_grid(sde)
    lv = learned_model(grid)
    betas, ab = np.asarray(sde.discrete_betas(), np.float64), abars64(sde)
    x = 1.5 * jax.random.normal(jax.random.key(4), SHAPE)
    x64 = np.asarray(x, np.float64)
    v = np.tanh(x64 @ np.asarray(W_V, np.float64))
    step = jax.jit(lambda key, x, i: ancestral_step(key, x, i, lv, grid, variance="learned"))
    for i in (99, 37, 1):
        key = jax.random.key(10 + i)
        a, a_prev, b = ab[i], ab[i - 1], betas[i]
        mean = (x64 - b / np.sqrt(1 - a) * gaussian_eps(x64, a)) / np.sqrt(1 - b)
        f = (v + 1) / 2
        logvar = f * np.log(b) + (1 - f) * np.log((1 - a_prev) / (1 - a) * b)
        want = mean + np.exp(0.5 * logvar) * np.asarray(jax.random.normal(key, x.shape), np.float64)
        got, got_mean = step(key, x, i)
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the samplers' default for a learned-variance score_fn is the learned variance
    sde = dj.vp_sde(0.1, 20.0, N=30)
    lv = learned_model(ddpm_grid(sde))
    x_T = jax.random.normal(jax.random.key(5), SHAPE)
    default = dj.samplers.ancestral(jax.random.key(6), x_T, lv, sde)
    learned = dj.samplers.ancestral(jax.random.key(6), x_T, lv, sde, variance="learned")
    beta = dj.samplers.ancestral(jax.random.key(6), x_T, lv, sde, variance="beta")
    np.testing.assert_array_equal(default, learned)
    assert float(jnp.max(jnp.abs(default - beta))) > 1e-3


def test_ddim_with_learned_variance():
    """eta scales the learned variance of the strided step (beta = 1 - abar/abar', beta_tilde = (1-abar')/(1-abar)
    beta); the mean is DDIM's. At eta = 1 this is improved DDPM's respaced ancestral step."""
    sde = dj.vp_sde(0.1, 20.0, N=100)
    grid = ddpm_grid(sde)
    lv = learned_model(grid)
    ab = abars64(sde)
    x = 1.5 * jax.random.normal(jax.random.key(7), SHAPE)
    x64 = np.asarray(x, np.float64)
    v = np.tanh(x64 @ np.asarray(W_V, np.float64))
    step = jax.jit(lambda key, x, i, j, eta: dj.samplers.ddim_step(key, x, i, j, lv, grid, eta=eta, variance="learned"))
    for eta in (1.0, 0.5):
        for i, j in ((90, 80), (30, 10)):
            key = jax.random.key(20 + i)
            a, a_prev = ab[i], ab[j]
            eps = gaussian_eps(x64, a)
            x0 = (x64 - np.sqrt(1 - a) * eps) / np.sqrt(a)
            b = 1 - a / a_prev
            bt = (1 - a_prev) / (1 - a) * b
            f = (v + 1) / 2
            std = eta * np.exp(0.5 * (f * np.log(b) + (1 - f) * np.log(bt)))
            z = np.asarray(jax.random.normal(key, x.shape), np.float64)
            mean = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - eta**2 * bt) * eps
            if eta == 1.0:  # DDIM's eta = 1 mean is the posterior mean of q(x_j | x_i, x0)
                post = np.sqrt(a_prev) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - a_prev) / (1 - a) * x64
                np.testing.assert_allclose(mean, post, rtol=1e-9, atol=1e-9)
            got, _ = step(key, x, i, j, eta)
            assert bool(jnp.all(jnp.isfinite(got)))
            np.testing.assert_allclose(got, mean + std * z, rtol=1e-4, atol=1e-4)
    x_T = jax.random.normal(jax.random.key(8), SHAPE)
    out = dj.samplers.ddim(jax.random.key(9), x_T, lv, sde, num_steps=10, eta=1.0)
    fixed = dj.samplers.ddim(jax.random.key(9), x_T, lv, sde, num_steps=10, eta=1.0, variance="posterior")
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.max(jnp.abs(out - fixed))) > 1e-3


def test_clip_denoised_keeps_the_learned_variance():
    sde = dj.vp_sde(0.1, 20.0, N=100)
    grid = ddpm_grid(sde)
    lv = learned_model(grid)
    clipped = dj.clip_denoised(lv, grid)
    assert dj.has_learned_variance(clipped)
    x = 3.0 * jax.random.normal(jax.random.key(11), SHAPE)
    t = jnp.full((SHAPE[0],), grid.time(50))
    s, v = clipped.score_and_v(x, t)
    np.testing.assert_array_equal(v, lv.score_and_v(x, t)[1])
    np.testing.assert_array_equal(s, clipped(x, t))
    x0 = dj.x0_from_score(s, x, t, grid)
    assert float(jnp.max(jnp.abs(x0))) <= 1.0 + 1e-5
    out = dj.samplers.ancestral(jax.random.key(12), jax.random.normal(jax.random.key(13), SHAPE), clipped, sde)
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-5


def test_bridge_learned_sigma_returns_score_and_v():
    nets = pytest.importorskip("diffjax.nets")
    sde = dj.vp_sde(N=100)
    grid = ddpm_grid(sde)

    def apply_fn(variables, x, labels, *, train):
        return jnp.concatenate([0.1 * x + labels[:, None] / 100.0, jnp.tanh(x)], -1)

    score_fn = nets.make_score_fn(apply_fn, {}, grid, parameterization="eps", time_input="index", learned_sigma=True)
    assert isinstance(score_fn, dj.LearnedVarianceScore)
    x = jax.random.normal(jax.random.key(14), SHAPE)
    t = jnp.full((SHAPE[0],), grid.time(40))
    s, v = score_fn.score_and_v(x, t)
    eps = 0.1 * x + 0.4
    np.testing.assert_allclose(s, -eps / jnp.sqrt(1 - grid.alpha_bars[40]), rtol=1e-5)
    np.testing.assert_allclose(v, jnp.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(score_fn(x, t), s, rtol=1e-6)
