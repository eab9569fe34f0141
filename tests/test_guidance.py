"""Guidance transforms and score-SDE's inpainting / colorization, against exact Gaussian(-mixture) ground truth."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj


def energy_distance(x, y):
    """Squared energy distance 2 E|x - y| - E|x - x'| - E|y - y'| (V-statistic)."""

    def mean_dist(a, b):
        return jnp.mean(jnp.sqrt(jnp.sum((a[:, None] - b[None]) ** 2, axis=-1) + 1e-12))

    return float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))


def toy_cond_score(x, t, y):
    return -x * (1.0 + jnp.asarray(t).reshape(-1, 1)) + jnp.sin(y.astype(x.dtype))[:, None] * jnp.arange(1.0, 3.0)


def test_classifier_free_guidance_formula_and_with_label():
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    t = jnp.linspace(0.1, 0.9, 5)
    y = jnp.array([0, 1, 2, 1, 0])
    w = 2.5
    guided = dj.classifier_free_guidance(toy_cond_score, guidance_scale=w, null_label=3)
    expected = (1 + w) * toy_cond_score(x, t, y) - w * toy_cond_score(x, t, jnp.full((5,), 3))
    chex.assert_trees_all_close(guided(x, t, y), expected, rtol=1e-6, atol=1e-6)
    unguided = dj.classifier_free_guidance(toy_cond_score, guidance_scale=0.0, null_label=3)
    chex.assert_trees_all_close(unguided(x, t, y), toy_cond_score(x, t, y), rtol=1e-6)
    bound = dj.with_label(guided, y)
    chex.assert_trees_all_close(bound(x, t), expected, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(jax.jit(bound)(x, t), expected, rtol=1e-5, atol=1e-5)


RING = dj.ring_mixture(8, radius=4.0, std=0.35)
CLASSES = (np.arange(8) < 4).astype(np.int32)  # class 1: the four upper-right modes 0..3, class 0: the rest


def sub_mixture(label):
    idx = np.nonzero(CLASSES == label)[0]
    return dj.gaussian_mixture(RING.weights[idx], RING.means[idx], RING.stds[idx])


def exact_classifier(sde):
    """Bayes posterior p_t(y | x) of the perturbed mixture: logits log pi_y + log p_t(x | y)."""
    subs = [sub_mixture(c) for c in (0, 1)]
    priors = [float(jnp.sum(RING.weights[CLASSES == c])) for c in (0, 1)]

    def logits(x, t):
        a, s = sde.marginal(t)
        return jnp.stack([np.log(p) + dj.mixture_log_prob(m, x, a, s) for p, m in zip(priors, subs)], axis=-1)

    return logits


@pytest.mark.parametrize("sde", [dj.vp_sde(), dj.ve_sde()], ids=["vp", "ve"])
def test_classifier_guidance_scale_one_is_exact_conditional_score(sde):
    guided = jax.jit(dj.classifier_guidance(dj.mixture_score_fn(RING, sde), exact_classifier(sde), scale=1.0))
    x = RING.sample(jax.random.PRNGKey(2), 64) * 1.3
    t = jnp.linspace(0.02, 0.9, 64)
    for label in (0, 1):
        want = jax.jit(dj.mixture_score_fn(sub_mixture(label), sde))(x, t)
        chex.assert_trees_all_close(guided(x, t, label), want, rtol=1e-3, atol=1e-3 * float(jnp.abs(want).max()))
    per_example = jnp.asarray(CLASSES[np.arange(64) % 8])
    want = jnp.where(per_example[:, None] == 1, jax.jit(dj.mixture_score_fn(sub_mixture(1), sde))(x, t),
                     jax.jit(dj.mixture_score_fn(sub_mixture(0), sde))(x, t))
    chex.assert_trees_all_close(guided(x, t, per_example), want, rtol=1e-3, atol=1e-3 * float(jnp.abs(want).max()))
    plain = jax.jit(dj.classifier_guidance(dj.mixture_score_fn(RING, sde), exact_classifier(sde), scale=0.0))
    chex.assert_trees_all_close(plain(x, t, 1), jax.jit(dj.mixture_score_fn(RING, sde))(x, t), rtol=1e-6)


def test_classifier_guided_sampling_lands_in_the_class_modes():
    """PC sampling (``inpaint`` with nothing known is plain PC sampling) with the guided score for class 1."""
    sde = dj.vp_sde()
    n = 512
    guided = dj.with_label(dj.classifier_guidance(dj.mixture_score_fn(RING, sde), exact_classifier(sde)), 1)
    zeros = jnp.zeros((n, 2))
    samples = dj.inpaint(jax.random.PRNGKey(4), zeros, zeros, guided, sde, num_steps=200)
    target = sub_mixture(1)
    fresh = target.sample(jax.random.PRNGKey(5), n)
    baseline = energy_distance(target.sample(jax.random.PRNGKey(6), n), fresh)
    d_class = energy_distance(samples, fresh)
    d_other = energy_distance(samples, sub_mixture(0).sample(jax.random.PRNGKey(7), n))
    assert d_class < 3 * baseline + 0.02, (d_class, baseline)
    assert d_other > 20 * d_class, (d_other, d_class)


RHO = 0.8
SIGMA = jnp.array([[1.0, RHO], [RHO, 1.0]])


def correlated_gaussian_score(sde):
    """Exact score of N(0, Sigma) perturbed by the SDE: -(a^2 Sigma + s^2 I)^{-1} x."""

    def score_fn(x, t):
        a, s = sde.marginal(t)
        cov = (a**2)[:, None, None] * SIGMA + (s**2)[:, None, None] * jnp.eye(2)
        return -jnp.linalg.solve(cov, x[..., None])[..., 0]

    return score_fn


@pytest.mark.parametrize("sde,steps", [(dj.ve_sde(), 200), (dj.subvp_sde(), 400)], ids=["ve", "subvp"])
def test_inpainting_keeps_known_and_matches_exact_conditional(sde, steps):
    """x2 | x1 = c ~ N(rho c, 1 - rho^2); the replacement method is approximate, so tolerances are ~3 SE + bias."""
    n, c = 2000, 1.0
    known = jnp.tile(jnp.array([[c, 123.0]]), (n, 1))  # the unknown entry's value must be ignored
    mask = jnp.array([1.0, 0.0])
    out = np.asarray(dj.inpaint(jax.random.PRNGKey(0), known, mask, correlated_gaussian_score(sde), sde,
                                num_steps=steps))
    np.testing.assert_array_equal(out[:, 0], c)
    mean, var = out[:, 1].mean(), out[:, 1].var()
    assert abs(mean - RHO * c) < 0.06, mean
    assert abs(var / (1 - RHO**2) - 1) < 0.15, var
    # without the known coordinate the marginal would be N(0, 1): clearly different
    assert abs(mean) > 0.5 and var < 0.6


def test_inpaint_is_jittable_and_deterministic():
    sde = dj.ve_sde()
    score_fn = correlated_gaussian_score(sde)
    known = jnp.ones((4, 2))
    mask = jnp.array([1.0, 0.0])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key, known):
        return dj.inpaint(key, known, mask, score_fn, sde, num_steps=10)

    a = run(jax.random.PRNGKey(0), known)
    b = run(jax.random.PRNGKey(0), known * 2)
    chex.assert_trees_all_close(a[:, 0], known[:, 0])
    chex.assert_trees_all_close(b[:, 0], 2 * known[:, 0])
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and not np.allclose(a[:, 1], b[:, 1])


def test_colorization_preserves_gray_and_recovers_colours():
    """Three constant-colour 2x2 images with the same gray level: colorizing their gray must give back the colours."""
    sde = dj.ve_sde()
    colours = jnp.array([[0.6, -0.3, -0.3], [-0.3, 0.6, -0.3], [-0.3, -0.3, 0.6]]) + 0.1
    means = jnp.broadcast_to(colours[:, None, None, :], (3, 2, 2, 3))
    mix = dj.gaussian_mixture(jnp.ones(3), means, 0.05)
    data = mix.sample(jax.random.PRNGKey(1), 300)
    gray = jnp.mean(data, axis=-1, keepdims=True)
    score_fn = dj.mixture_score_fn(mix, sde)
    out = dj.colorize(jax.random.PRNGKey(2), gray, score_fn, sde, num_steps=200)
    assert out.shape == (300, 2, 2, 3)
    np.testing.assert_allclose(jnp.mean(out, axis=-1, keepdims=True), gray, atol=1e-5)
    dist = jnp.sqrt(jnp.mean((out[:, None] - means[None]) ** 2, axis=(2, 3, 4)))  # (300, 3) RMS per component
    assert float(jnp.max(jnp.min(dist, axis=1))) < 0.2
    counts = np.bincount(np.asarray(jnp.argmin(dist, axis=1)), minlength=3)
    assert counts.min() > 50, counts  # every colour is produced (each has probability 1/3)
    # a 3-channel gray input (channel mean taken) gives the same result
    out3 = dj.colorize(jax.random.PRNGKey(2), jnp.repeat(gray, 3, axis=-1), score_fn, sde, num_steps=200)
    assert bool(jnp.all(jnp.isfinite(out3)))  # assert_trees_all_close treats NaN as equal to NaN
    chex.assert_trees_all_close(out3, out, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise():
    sde = dj.vp_sde()
    score_fn = dj.mixture_score_fn(RING, sde)
    key = jax.random.PRNGKey(0)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="scale"):
        dj.classifier_guidance(score_fn, lambda x, t: x, scale=-1.0)
    with pytest.raises(ValueError, match="classifier_logp_fn"):
        dj.classifier_guidance(score_fn, None)
    with pytest.raises(ValueError, match="guidance_scale"):
        dj.classifier_free_guidance(toy_cond_score, guidance_scale="big", null_label=0)
    with pytest.raises(ValueError, match="null_label"):
        dj.classifier_free_guidance(toy_cond_score, guidance_scale=1.0, null_label=None)
    with pytest.raises(ValueError, match="num_steps"):
        dj.inpaint(key, x, x, score_fn, sde, num_steps=0)
    with pytest.raises(ValueError, match="snr"):
        dj.inpaint(key, x, x, score_fn, sde, snr=0.0)
    with pytest.raises(ValueError, match="t_eps"):
        dj.inpaint(key, x, x, score_fn, sde, t_eps=1.0)
    with pytest.raises(ValueError, match="mask"):
        dj.inpaint(key, x, jnp.zeros((3,)), score_fn, sde)
    with pytest.raises(ValueError, match="x_known"):
        dj.inpaint(key, jnp.zeros(3), jnp.zeros(3), score_fn, sde)
    with pytest.raises(ValueError, match="gray"):
        dj.colorize(key, jnp.zeros((2, 4, 4, 2)), score_fn, sde)
    with pytest.raises(ValueError, match="sde"):
        dj.inpaint(key, x, x, score_fn, "vp")
