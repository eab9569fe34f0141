"""Conditional generation as transforms of a score function, and score-SDE's inpainting and colorization.

* :func:`classifier_guidance` adds ``scale * grad_x log p_t(y | x)`` of a noise-conditional classifier
  (Dhariwal & Nichol 2021; score-SDE Section 5 / Appendix I.1): ``grad log p_t(x | y) = grad log p_t(x) +
  grad log p_t(y | x)``, exact at ``scale = 1``.
* :func:`classifier_free_guidance` mixes a conditional and an unconditional (null-label) score
  (Ho & Salimans 2022): ``(1 + w) s(x, t, y) - w s(x, t, null)``.
* :func:`with_label` binds ``y`` so that a conditional ``score_fn(x, t, y)`` drives any sampler as
  ``score_fn(x, t)``.
* :func:`inpaint` and :func:`colorize` are score-SDE's conditional PC samplers (Appendix I.2,
  ``controllable_generation.py``): reverse-diffusion predictor + Langevin corrector, where after every update the
  known part of the state is replaced by the known data perturbed forward to the current time.

The PC kernels are written here (privately) because ``core`` does not import ``diffjax.samplers``.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_batched, check_int, check_nonnegative, check_positive, check_t_eps
from diffjax.core.process import check_process

__all__ = ["classifier_guidance", "classifier_free_guidance", "with_label", "inpaint", "colorize"]

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_callable(name, fn, signature):
    if not callable(fn):
        raise ValueError(f"{name} must be a callable {signature}, got {fn!r}")


def classifier_guidance(score_fn: ScoreFn, classifier_logp_fn, *, scale: float = 1.0):
    """Classifier-guided score ``score_fn(x, t, y)``.

    .. math:: s(x, t, y) = s_\\theta(x, t) + \\lambda \\nabla_x \\log \\mathrm{softmax}(c_\\phi(x, t))_y

    Args:
      score_fn: unconditional ``score_fn(x, t)``.
      classifier_logp_fn: noise-conditional classifier ``(x, t) -> logits (batch, classes)`` (unnormalized
        log-probabilities; they are log-softmaxed). Examples must not interact (no batch statistics), since the
        gradient is taken of the batch sum.
      scale: guidance scale ``lambda >= 0``; 1 gives the exact conditional score for an exact classifier.

    Returns:
      ``guided(x, t, y)`` with integer labels ``y`` of shape ``()`` or ``(batch,)``.
    """
    _check_callable("score_fn", score_fn, "score_fn(x, t)")
    _check_callable("classifier_logp_fn", classifier_logp_fn, "classifier_logp_fn(x, t) -> logits")
    scale = check_nonnegative("scale", scale)

    def guided(x, t, y):
        labels = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (x.shape[0],))

        def log_p_y(x):
            logp = jax.nn.log_softmax(classifier_logp_fn(x, t), axis=-1)
            return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

        return score_fn(x, t) + scale * jax.grad(log_p_y)(x).astype(x.dtype)

    return guided


def classifier_free_guidance(cond_score_fn, *, guidance_scale: float, null_label):
    """Classifier-free guided score ``score_fn(x, t, y)`` (Ho & Salimans 2022, eq. 6 in score form).

    .. math:: s(x, t, y) = (1 + w)\\, s_\\theta(x, t, y) - w\\, s_\\theta(x, t, \\varnothing)

    Args:
      cond_score_fn: ``cond_score_fn(x, t, y)``, trained with label dropout to ``null_label``.
      guidance_scale: ``w >= 0``; 0 is the plain conditional score.
      null_label: the label that means "unconditional" (e.g. ``num_classes``), broadcast like ``y``.

    Returns:
      ``guided(x, t, y)``.
    """
    _check_callable("cond_score_fn", cond_score_fn, "cond_score_fn(x, t, y)")
    w = check_nonnegative("guidance_scale", guidance_scale)
    if null_label is None:
        raise ValueError("null_label must be a label (e.g. the number of classes), got None")

    def guided(x, t, y):
        y = jnp.asarray(y)
        null = jnp.broadcast_to(jnp.asarray(null_label, y.dtype), y.shape)
        return (1.0 + w) * cond_score_fn(x, t, y) - w * cond_score_fn(x, t, null)

    return guided


def with_label(score_fn, y):
    """Bind the condition: ``score_fn(x, t, y) -> score_fn(x, t)`` for the samplers (``y``: ``()`` or ``(batch,)``)."""
    _check_callable("score_fn", score_fn, "score_fn(x, t, y)")

    def bound(x, t):
        return score_fn(x, t, y)

    return bound


# ----------------------------------------------------------------------------------------------------------------
# Conditional PC sampling by replacement (score-SDE Appendix I.2).


def _reverse_diffusion(key, x, t, t_next, score_fn, sde):
    """Reverse-diffusion predictor (score-SDE eq. 47): ``x' = x - F + G^2 s(x, t) + G z``. Returns ``(x', mean)``."""
    tb = jnp.broadcast_to(t, (x.shape[0],))
    F, G2 = sde.forward_chain_step(x, t, t_next)
    G2 = jnp.asarray(G2, x.dtype)
    mean = x - F + G2 * score_fn(x, tb)
    return mean + jnp.sqrt(G2) * jax.random.normal(key, x.shape, x.dtype), mean


def _langevin(key, x, t, score_fn, sde, snr, alpha):
    """score-SDE's Langevin corrector (Algorithm 4): ``eps = 2 alpha (snr ||z|| / ||s||)^2``, norms batch-averaged."""
    tb = jnp.broadcast_to(t, (x.shape[0],))
    grad = score_fn(x, tb)
    noise = jax.random.normal(key, x.shape, x.dtype)

    def norm(a):
        return jnp.mean(jnp.sqrt(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=-1)))

    step = (2.0 * alpha * (snr * norm(noise) / norm(grad)) ** 2).astype(x.dtype)
    mean = x + step * grad
    return mean + jnp.sqrt(2.0 * step) * noise, mean


def _replace(key, x, known, mask, t, sde):
    """Known part := the known data perturbed forward to time ``t`` (fresh noise); returns ``(x, known mean)``."""
    a, s = sde.marginal(t)
    known_mean = a * known
    perturbed = known_mean + s * jax.random.normal(key, x.shape, x.dtype)
    return x * (1.0 - mask) + perturbed * mask, known_mean


def _pc_replacement(key, known, mask, score_fn, sde, *, num_steps, snr, n_corrector_steps, t_eps, denoise):
    times = jnp.linspace(sde.T, t_eps, num_steps + 1, dtype=jnp.float32)
    dt = (sde.T - t_eps) / num_steps
    key_init, key_loop = jax.random.split(key)
    a_T, s_T = sde.marginal(jnp.float32(sde.T))
    k1, k2 = jax.random.split(key_init)
    x = sde.prior_sample(k1, known.shape, known.dtype)
    x = x * (1.0 - mask) + (a_T * known + s_T * jax.random.normal(k2, known.shape, known.dtype)) * mask

    def step(carry, i):
        x, _ = carry
        t, t_next = times[i], times[i + 1]
        k = jax.random.fold_in(key_loop, i)
        alpha = sde.langevin_alpha(t, dt)  # DDPM's alpha_i = 1 - beta_i on this grid (VE: 1), as in score-SDE
        for j in range(n_corrector_steps):  # static, small
            kc, kr = jax.random.split(jax.random.fold_in(k, j))
            x, _ = _langevin(kc, x, t, score_fn, sde, snr, alpha)
            x, _ = _replace(kr, x, known, mask, t, sde)
        kp, kr = jax.random.split(jax.random.fold_in(k, n_corrector_steps))
        x, mean = _reverse_diffusion(kp, x, t, t_next, score_fn, sde)
        x, known_mean = _replace(kr, x, known, mask, t_next, sde)
        return (x, mean * (1.0 - mask) + known_mean * mask), None

    (x, mean), _ = jax.lax.scan(step, (x, x), jnp.arange(num_steps))
    out = mean if denoise else x
    return out * (1.0 - mask) + known * mask if denoise else out


def _check_pc(key, x, score_fn, sde, num_steps, snr, n_corrector_steps, t_eps, denoise, name):
    check_batched(name, x, min_ndim=2)
    _check_callable("score_fn", score_fn, "score_fn(x, t)")
    check_process(sde, where="inpaint / colorize")
    num_steps = check_int("num_steps", sde.N if num_steps is None else num_steps, minimum=1)
    check_positive("snr", snr)
    n_corrector_steps = check_int("n_corrector_steps", n_corrector_steps, minimum=0)
    t_eps = check_t_eps(sde.t_eps if t_eps is None else t_eps, sde.T)
    if not isinstance(denoise, bool):
        raise ValueError(f"denoise must be True or False, got {denoise!r}")
    if key is None:
        raise ValueError("key must be a PRNG key, got None")
    return dict(num_steps=num_steps, snr=float(snr), n_corrector_steps=n_corrector_steps, t_eps=t_eps,
                denoise=denoise)


def inpaint(key, x_known, mask, score_fn: ScoreFn, sde, *, num_steps: int | None = None, snr: float = 0.16,
            n_corrector_steps: int = 1, t_eps: float | None = None, denoise: bool = True):
    """Inpainting by PC sampling with replacement (score-SDE Appendix I.2, ``get_pc_inpainter``).

    Each of ``num_steps`` steps from ``T`` to ``t_eps`` runs ``n_corrector_steps`` Langevin corrector moves at
    ``t_i`` and one reverse-diffusion predictor move to ``t_{i+1}``; after each move the known entries are set to

    .. math:: x_t[\\text{known}] = \\alpha(t)\\, x_{\\text{known}} + \\sigma(t)\\, z,\\quad z \\sim \\mathcal N(0, I)

    Args:
      key: PRNG key.
      x_known: data ``(batch, *dims)``; only its entries where ``mask == 1`` are used.
      mask: 1 where known, 0 where to fill in; broadcastable to ``x_known`` (e.g. ``(batch, H, W, 1)``).
      score_fn: ``score_fn(x, t)`` of the (unconditional) model.
      sde: ``vp_sde``, ``subvp_sde`` or ``ve_sde``.
      num_steps: predictor steps; ``None`` means ``sde.N`` (score-SDE: 1000).
      snr: Langevin corrector signal-to-noise ratio (score-SDE: 0.16).
      n_corrector_steps: corrector moves per step (score-SDE: 1; 0 gives predictor-only).
      t_eps: last time; ``None`` means 1e-3 (VP, sub-VP) or 1e-5 (VE), score-SDE's.
      denoise: return the last predictor mean with the known entries exactly ``x_known`` (True) or the last
        noisy sample (False).

    Returns:
      ``(batch, *dims)`` samples.
    """
    opts = _check_pc(key, x_known, score_fn, sde, num_steps, snr, n_corrector_steps, t_eps, denoise, "x_known")
    x_known = jnp.asarray(x_known)
    mask = jnp.asarray(mask)
    try:
        mask = jnp.broadcast_to(mask, x_known.shape).astype(x_known.dtype)
    except ValueError:
        raise ValueError(f"mask must be broadcastable to x_known's shape {x_known.shape}, got shape "
                         f"{mask.shape}") from None
    return _call(_inpaint_jit, _pc_replacement, key, x_known, mask, score_fn, sde, opts)


# Orthonormal colour basis: first axis (1, 1, 1)/sqrt(3) is the gray level (times sqrt(3)), the other two span
# the chroma (score-SDE decouples with an orthogonal matrix of the same first column).
_COLOR_BASIS = (
    (1 / math.sqrt(3), 1 / math.sqrt(2), 1 / math.sqrt(6)),
    (1 / math.sqrt(3), -1 / math.sqrt(2), 1 / math.sqrt(6)),
    (1 / math.sqrt(3), 0.0, -2 / math.sqrt(6)),
)


def colorize(key, gray, score_fn: ScoreFn, sde, *, num_steps: int | None = None, snr: float = 0.16,
             n_corrector_steps: int = 1, t_eps: float | None = None, denoise: bool = True):
    """Colorization (score-SDE Appendix I.2, ``get_pc_colorizer``): inpainting in a rotated colour basis.

    With the orthogonal ``Q`` whose first column is ``(1, 1, 1)/sqrt(3)``, the decoupled image ``z = x Q`` has
    ``z_0 = sqrt(3) gray``; the known channel ``z_0`` is replaced as in :func:`inpaint`, the chroma channels are
    generated with the rotated score ``s_z(z, t) = s(z Q^T, t) Q`` (the SDEs are isotropic, so rotation commutes
    with them).

    .. math:: z = x Q,\\quad z_0 = \\sqrt{3}\\,\\mathrm{gray},\\quad x = z Q^\\top

    Args:
      key: PRNG key.
      gray: gray images in the model's data range, channels last: ``(batch, *spatial, 1)``, or
        ``(batch, *spatial, 3)`` whose channel mean is taken.
      score_fn: ``score_fn(x, t)`` of an RGB model, ``x`` of shape ``(batch, *spatial, 3)``.
      sde, num_steps, snr, n_corrector_steps, t_eps, denoise: as in :func:`inpaint`.

    Returns:
      ``(batch, *spatial, 3)`` colour images whose channel mean equals ``gray`` (exactly when ``denoise``).
    """
    check_batched("gray", gray, min_ndim=2)
    gray = jnp.asarray(gray)
    if gray.shape[-1] not in (1, 3):
        raise ValueError(f"gray must have 1 or 3 channels (last axis), got shape {gray.shape}")
    opts = _check_pc(key, gray, score_fn, sde, num_steps, snr, n_corrector_steps, t_eps, denoise, "gray")
    if not jnp.issubdtype(gray.dtype, jnp.floating):
        raise ValueError(f"gray must be a floating-point array in the model's data range, got dtype {gray.dtype}")
    level = jnp.mean(gray, axis=-1, keepdims=True)
    return _call(_colorize_jit, _colorize, key, level, None, score_fn, sde, opts)


def _colorize(key, level, _, score_fn, sde, **opts):
    q = jnp.asarray(_COLOR_BASIS, level.dtype)
    known = jnp.concatenate([math.sqrt(3.0) * level, jnp.zeros_like(level), jnp.zeros_like(level)], axis=-1)
    mask = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0], level.dtype), known.shape)

    def rotated_score(z, t):
        return score_fn(z @ q.T, t) @ q

    z = _pc_replacement(key, known, mask, rotated_score, sde, **opts)
    return z @ q.T


_STATIC = ("score_fn", "sde", "num_steps", "snr", "n_corrector_steps", "t_eps", "denoise")
# Compiled once per (score_fn, sde, options) and shape, so eager calls do not recompile the scan.
_inpaint_jit = jax.jit(_pc_replacement, static_argnames=_STATIC)
_colorize_jit = jax.jit(_colorize, static_argnames=_STATIC)


def _call(jitted, plain, key, x, mask, score_fn, sde, opts):
    traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves((key, x, mask)))
    try:
        hash((score_fn, sde))
    except TypeError:  # a score_fn with __eq__ but no __hash__ cannot key a cache
        traced = True
    if traced:  # under an outer jit/vmap the scan is inlined; a cached inner jit would keep outer tracers alive
        return plain(key, x, mask, score_fn, sde, **opts)
    return jitted(key, x, mask, score_fn=score_fn, sde=sde, **opts)
