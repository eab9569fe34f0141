"""clip_denoised / dynamic_threshold: score transforms that keep the implied x0 in the data range."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.discrete import ancestral_step, ddpm_grid

SDES = {
    "vp": dj.vp_sde(0.1, 20.0),
    "subvp": dj.subvp_sde(0.1, 20.0),
    "ve": dj.ve_sde(0.01, 5.0),
    "ddpm_grid": ddpm_grid(dj.vp_sde(0.1, 20.0, N=1000)),
}


def wild_eps(x, t):
    """An eps-network whose x0 predictions overshoot [-1, 1] by a lot at large t."""
    return jnp.tanh(3.0 * x) + 0.5 * jnp.cos(7.0 * x) * jnp.asarray(t).reshape(-1, 1, 1)


def score_of(eps_fn, sde):
    return lambda x, t: dj.score_from_eps(eps_fn(x, t), x, t, sde)


@pytest.mark.parametrize("name", sorted(SDES))
def test_clip_denoised_clips_the_implied_x0_and_keeps_the_rest(name):
    sde = SDES[name]
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (6, 5, 4))
    t = jnp.linspace(0.02, 0.98, 6)
    score = score_of(wild_eps, sde)
    clipped = dj.clip_denoised(score, sde)
    x0 = dj.x0_from_score(score(x, t), x, t, sde)
    x0_new = dj.x0_from_score(clipped(x, t), x, t, sde)
    inside = np.abs(np.asarray(x0)) <= 1.0
    assert 0.1 < inside.mean() < 0.9, "the test needs x0 both inside and outside the range"
    np.testing.assert_allclose(x0_new, np.clip(x0, -1.0, 1.0), rtol=1e-4, atol=1e-4)
    # where x0 is already in range the score is untouched (exactly: the correction term is 0)
    np.testing.assert_array_equal(np.asarray(clipped(x, t))[inside], np.asarray(score(x, t))[inside])
    chex.assert_trees_all_close(jax.jit(clipped)(x, t), clipped(x, t), rtol=1e-5, atol=1e-5)


def test_ancestral_step_with_clip_is_ddpm_clip_denoised():
    """Ho et al.'s sampler (p_mean_variance with clip_denoised=True): x0 = clip((x - sqrt(1-ab) eps) / sqrt(ab)),
    mean = posterior mean of q(x_{i-1} | x_i, x0), x_{i-1} = mean + sqrt(beta_i) z."""
    grid = SDES["ddpm_grid"]
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(1), (4, 3, 3))
    key = jax.random.PRNGKey(2)
    score = dj.clip_denoised(score_of(wild_eps, grid), grid)
    for i in (999, 500, 37, 1):
        ab, beta = grid.alpha_bars[i], grid.betas[i]
        ab_prev = ab / (1 - beta)  # = alpha_bars[i - 1] up to float32 rounding, which 1 / (1 - ab) amplifies at small i
        t = jnp.full((4,), grid.time(i))
        x0 = jnp.clip((x - jnp.sqrt(1 - ab) * wild_eps(x, t)) / jnp.sqrt(ab), -1.0, 1.0)
        mean = (jnp.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (jnp.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x
        expected = mean + jnp.sqrt(beta) * jax.random.normal(key, x.shape)
        got, got_mean = ancestral_step(key, x, i, score, grid)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=2e-4)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_dynamic_threshold_is_imagen_rule(name):
    sde = SDES[name]
    scale = jnp.array([0.05, 0.05, 2.0, 2.0, 2.0, 2.0]).reshape(6, 1, 1)  # two examples stay inside the range
    x = scale * jax.random.normal(jax.random.PRNGKey(3), (6, 5, 4))
    t = jnp.linspace(0.05, 0.95, 6)
    score = score_of(wild_eps, sde)
    x0 = np.asarray(dj.x0_from_score(score(x, t), x, t, sde)).reshape(6, -1)
    c = np.maximum(np.quantile(np.abs(x0), 0.9, axis=1), 1.0)[:, None]
    assert (c > 1.0).any() and (c == 1.0).any(), "the test needs examples on both sides of the threshold"
    expected = np.clip(x0, -c, c) / c
    got = dj.x0_from_score(dj.dynamic_threshold(score, sde, percentile=0.9)(x, t), x, t, sde)
    np.testing.assert_allclose(np.asarray(got).reshape(6, -1), expected, rtol=1e-4, atol=1e-4)


def test_clipped_ddim_on_range_data_matches_unclipped_with_exact_score():
    """Data well inside [-1, 1]: the exact posterior mean E[x0 | x_t] stays in range, so clipping changes nothing."""
    grid = SDES["ddpm_grid"]
    mix = dj.gaussian_mixture(jnp.array([0.5, 0.5]), jnp.array([[-0.5, 0.2], [0.4, -0.3]]), jnp.array([0.05, 0.05]))
    score = dj.mixture_score_fn(mix, grid)
    x_T = jax.random.normal(jax.random.PRNGKey(4), (64, 2))
    sde = dj.vp_sde(0.1, 20.0, N=1000)
    plain = dj.samplers.ddim(jax.random.PRNGKey(5), x_T, score, sde, num_steps=20)
    clipped = dj.samplers.ddim(jax.random.PRNGKey(5), x_T, dj.clip_denoised(score, grid), sde, num_steps=20)
    np.testing.assert_allclose(clipped, plain, rtol=1e-5, atol=1e-5)


def test_ddim_clip_x0_is_diffusers_default_and_differs_from_clip_denoised():
    """diffusers' DDIMScheduler(clip_sample=True), eta 0: x' = sqrt(ab') clip(x0) + sqrt(1 - ab') eps, the
    network's eps kept; clip_denoised recomputes eps from the clipped x0 instead (improved-diffusion / GLIDE)."""
    grid = SDES["ddpm_grid"]
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(6), (4, 3, 3))
    key = jax.random.PRNGKey(7)
    score = score_of(wild_eps, grid)
    for i, i_prev in ((999, 979), (500, 480), (19, -1)):
        ab = grid.alpha_bars[i]
        ab_prev = grid.alpha_bars[i_prev] if i_prev >= 0 else 1.0
        eps = wild_eps(x, jnp.full((4,), grid.time(i)))
        x0 = (x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)
        expected = jnp.sqrt(ab_prev) * jnp.clip(x0, -1.0, 1.0) + jnp.sqrt(1 - ab_prev) * eps
        got, got_x0 = dj.samplers.ddim_step(key, x, i, i_prev, score, grid, clip_x0=True)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_x0, jnp.clip(x0, -1.0, 1.0), rtol=1e-4, atol=1e-4)
        if i_prev >= 0:  # on the last step (ab' = 1) both give clip(x0)
            recomputed, _ = dj.samplers.ddim_step(key, x, i, i_prev, dj.clip_denoised(score, grid), grid)
            assert np.abs(np.asarray(recomputed - got)).max() > 1e-2
    sde = dj.vp_sde(0.1, 20.0, N=1000)
    x_T = jax.random.normal(jax.random.PRNGKey(8), (8, 3, 3))
    out = dj.samplers.ddim(key, x_T, score, sde, num_steps=10, clip_x0=True)
    assert np.isfinite(np.asarray(out)).all() and np.abs(np.asarray(out)).max() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="clip_x0"):
        dj.samplers.ddim(key, x_T, score, sde, num_steps=10, clip_x0="yes")


def test_bad_arguments_name_themselves():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="x_min < x_max"):
        dj.clip_denoised(lambda x, t: x, sde, x_min=1.0, x_max=-1.0)
    with pytest.raises(ValueError, match="percentile"):
        dj.dynamic_threshold(lambda x, t: x, sde, percentile=1.5)
    with pytest.raises(ValueError, match="max_value"):
        dj.dynamic_threshold(lambda x, t: x, sde, max_value=0.0)
