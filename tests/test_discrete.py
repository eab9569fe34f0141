"""DDPM and NCSN as special cases of the core: the papers' algorithms, written out by hand here with their own
schedules (numpy), equal the core-based functions to float tolerance with the same keys.

(VP at N=1000 -> DDPM's linspace(1e-4, 0.02, 1000) betas is tested in tests/test_sde.py.)
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.discrete import (
    ancestral_step,
    annealed_langevin_level,
    ddpm_grid,
    ddpm_simple_loss,
    langevin_step,
    ncsn_grid,
    ncsn_loss,
    ncsn_step_size,
)

N = 1000
BETAS = np.linspace(1e-4, 0.02, N)  # Ho et al. 2020, Sec. 4
ALPHAS = 1.0 - BETAS
ALPHA_BARS = np.cumprod(ALPHAS)
GRID = ddpm_grid(dj.vp_sde(0.1, 20.0, N=N))

SIGMA_MAX, SIGMA_MIN, L = 1.0, 0.01, 10  # Song & Ermon 2019: geometric sigmas, sigma_1 > ... > sigma_L
SIGMAS = np.geomspace(SIGMA_MAX, SIGMA_MIN, L)
VE = dj.ve_sde(SIGMA_MIN, SIGMA_MAX)
NGRID = ncsn_grid(VE, L)

W = jax.random.normal(jax.random.PRNGKey(42), (4, 4)) / 2.0
EMB = jax.random.normal(jax.random.PRNGKey(43), (N, 4)) / 2.0


def eps_theta(x, i):
    """A random-weights eps "network" conditioned on the integer step (x: (batch, 3, 4))."""
    return jnp.tanh(x @ W + EMB[i][:, None, :])


def eps_score_fn(x, t):
    """The same network seen by the core: score = -eps / sqrt(1 - alpha_bar)."""
    return dj.score_from_eps(eps_theta(x, GRID.index(t)), x, t, GRID)


def s_theta(x, sigma):
    """A random-weights noise-conditional score network s(x, sigma) (NCSN's convention)."""
    sigma = jnp.asarray(sigma).reshape(-1, 1, 1)
    return (jnp.tanh(x @ W) - x) / sigma


def ncsn_score_fn(x, t):
    return s_theta(x, VE.sigma(t))


def test_grid_time_round_trip():
    i = jnp.arange(N)
    np.testing.assert_array_equal(GRID.index(GRID.time(i)), i)
    np.testing.assert_allclose(GRID.alpha_bars, ALPHA_BARS, rtol=2e-5)
    np.testing.assert_allclose(NGRID.sigmas(), SIGMAS, rtol=1e-5)
    np.testing.assert_allclose(VE.sigma(NGRID.time(jnp.arange(L))), SIGMAS, rtol=1e-5)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_ddpm_algorithm_1(reduce):
    """Ho et al. Algorithm 1: i ~ U{1..N}, eps ~ N(0, I), grad of ||eps - eps_theta(sqrt(abar) x0 + sqrt(1-abar) eps, i)||^2.
    Keys as documented by ddpm_simple_loss: key_t, key_z = split(key)."""
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (16, 3, 4), minval=-1, maxval=1)
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        key_t, key_z = jax.random.split(key)
        i = np.asarray(jax.random.randint(key_t, (16,), 0, N))
        eps = np.asarray(jax.random.normal(key_z, x0.shape), np.float64)
        abar = ALPHA_BARS[i][:, None, None]
        x_t = np.sqrt(abar) * np.asarray(x0, np.float64) + np.sqrt(1 - abar) * eps
        sq = (eps - np.asarray(eps_theta(jnp.asarray(x_t, jnp.float32), i), np.float64)) ** 2
        hand = sq.mean() if reduce == "mean" else sq.sum(axis=(1, 2)).mean()
        np.testing.assert_allclose(ddpm_simple_loss(key, x0, eps_score_fn, GRID, reduce=reduce), hand, rtol=1e-5)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_algorithm_2(variance):
    """Ho et al. Algorithm 2, line 4: x_{t-1} = (x_t - (1-alpha_t)/sqrt(1-abar_t) eps_theta) / sqrt(alpha_t) + sigma_t z,
    z = 0 at the last step; sigma_t^2 = beta_t or beta_tilde_t = (1-abar_{t-1})/(1-abar_t) beta_t."""
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 3, 4))
    step = jax.jit(lambda key, x, i: ancestral_step(key, x, i, eps_score_fn, GRID, variance=variance))
    for i in (0, 1, 500, N - 1):
        key = jax.random.PRNGKey(100 + i)
        z = np.asarray(jax.random.normal(key, x.shape), np.float64)
        e = np.asarray(eps_theta(x, jnp.full((8,), i)), np.float64)
        mean = (np.asarray(x, np.float64) - (1 - ALPHAS[i]) / np.sqrt(1 - ALPHA_BARS[i]) * e) / np.sqrt(ALPHAS[i])
        if variance == "beta":
            var = BETAS[i]
        else:
            var = (1 - (ALPHA_BARS[i - 1] if i > 0 else 1.0)) / (1 - ALPHA_BARS[i]) * BETAS[i]
        hand = mean + (np.sqrt(var) * z if i > 0 else 0.0)
        got, got_mean = step(key, x, i)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5, err_msg=str(i))
        np.testing.assert_allclose(got, hand, rtol=1e-4, atol=1e-5, err_msg=str(i))


def test_ncsn_loss():
    """Song & Ermon eq. (5)-(6): i ~ U{1..L}, x~ = x + sigma_i z,
    (1/2) sigma_i^2 ||s_theta(x~, sigma_i) + (x~ - x)/sigma_i^2||^2 summed over dims, averaged over the batch
    (= 0.5 * ncsn_loss(reduce="sum")); reduce="mean" divides by the dimension."""
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (16, 3, 4))
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        key_t, key_z = jax.random.split(key)
        level = np.asarray(jax.random.randint(key_t, (16,), 0, L))
        sigma = SIGMAS[level][:, None, None]
        z = np.asarray(jax.random.normal(key_z, x0.shape), np.float64)
        x_tilde = np.asarray(x0, np.float64) + sigma * z
        target = -(x_tilde - np.asarray(x0, np.float64)) / sigma**2
        s = np.asarray(s_theta(jnp.asarray(x_tilde, jnp.float32), SIGMAS[level]), np.float64)
        per_example = 0.5 * (sigma[:, 0, 0] ** 2) * ((s - target) ** 2).sum(axis=(1, 2))
        hand = per_example.mean()
        np.testing.assert_allclose(0.5 * ncsn_loss(key, x0, ncsn_score_fn, NGRID, reduce="sum"), hand, rtol=1e-4)
        np.testing.assert_allclose(ncsn_loss(key, x0, ncsn_score_fn, NGRID), 2 * hand / 12, rtol=1e-4)


def test_annealed_langevin():
    """Song & Ermon Algorithm 1: for each level i, alpha_i = eps sigma_i^2 / sigma_L^2, then T times
    x <- x + alpha_i/2 s_theta(x, sigma_i) + sqrt(alpha_i) z, with z drawn from fold_in(level_key, step)."""
    eps_lr, T = 2e-5, 5
    x_init = jax.random.uniform(jax.random.PRNGKey(7), (8, 3, 4))
    key = jax.random.PRNGKey(8)

    # one Langevin step
    z = np.asarray(jax.random.normal(key, x_init.shape), np.float64)
    alpha = eps_lr * (SIGMAS[3] / SIGMAS[-1]) ** 2
    hand = np.asarray(x_init, np.float64) + 0.5 * alpha * np.asarray(s_theta(x_init, SIGMAS[3]), np.float64) \
        + np.sqrt(alpha) * z
    got = langevin_step(key, x_init, NGRID.time(3), ncsn_score_fn, step_size=ncsn_step_size(SIGMAS[3], SIGMA_MIN))
    np.testing.assert_allclose(got, hand, rtol=1e-4, atol=1e-6)

    # all levels
    x_hand = np.asarray(x_init, np.float64)
    for i in range(L):
        alpha = eps_lr * SIGMAS[i] ** 2 / SIGMAS[-1] ** 2
        for t in range(T):
            z = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), t), x_init.shape))
            s = np.asarray(s_theta(jnp.asarray(x_hand, jnp.float32), SIGMAS[i]), np.float64)
            x_hand = x_hand + 0.5 * alpha * s + np.sqrt(alpha) * z

    @jax.jit
    def level(x, i):
        step = ncsn_step_size(NGRID.sigmas()[i], SIGMA_MIN, step_lr=eps_lr)
        return annealed_langevin_level(jax.random.fold_in(key, i), x, NGRID.time(i), ncsn_score_fn,
                                       step_size=step, n_steps=T)

    x = x_init
    for i in range(L):
        x = level(x, i)
    np.testing.assert_allclose(x, x_hand, rtol=1e-4, atol=1e-5)


def test_special_case_losses_jit_and_grad():
    """Both losses differentiate under jit with respect to network weights (the training use)."""
    x0 = jnp.zeros((4, 3, 4))

    @jax.jit
    def grads(w):
        f = lambda w: ddpm_simple_loss(jax.random.PRNGKey(0), x0,  # noqa: E731
                                       lambda x, t: dj.score_from_eps(jnp.tanh(x @ w), x, t, GRID), GRID)
        g = lambda w: ncsn_loss(jax.random.PRNGKey(0), x0,  # noqa: E731
                                lambda x, t: (jnp.tanh(x @ w) - x) / VE.sigma(t)[:, None, None], NGRID)
        return jax.grad(f)(w), jax.grad(g)(w)

    g1, g2 = grads(W)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2)) and np.any(g1 != 0) and np.any(g2 != 0)
