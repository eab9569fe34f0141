"""Conditional PC samplers by replacement: score-SDE's inpainting and colorization (Appendix I.2,
``controllable_generation.py``).

They are :func:`diffjax.samplers.pc` with its kernels (the :func:`reverse_diffusion_step` predictor and the
:func:`langevin_corrector_step` corrector) where after every move the known part of the state is replaced by the
known data perturbed forward to the current time, ``x_t[known] = a(t) x_known + s(t) z``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_batched, check_int, check_positive
from diffjax.core._jit import jit_static
from diffjax.samplers._common import check_common, deprecated_sde_keyword, in_solve_dtype, with_steps
from diffjax.samplers._driver import run_steps
from diffjax.samplers._grids import check_time_grid, process_default
from diffjax.samplers._kernels import langevin_corrector_step, reverse_diffusion_step

__all__ = ["inpaint", "colorize"]


def _replace(key, x, known, mask, t, process):
    """Known part := the known data perturbed forward to time ``t`` (fresh noise); returns ``(x, known mean)``."""
    a, s = process.marginal(t)
    known_mean = a * known
    perturbed = known_mean + s * jax.random.normal(key, x.shape, x.dtype)
    return x * (1.0 - mask) + perturbed * mask, known_mean


@dataclasses.dataclass(frozen=True)
class ReplacementStep:
    """One PC step with replacement: ``n_corrector_steps`` Langevin moves at ``t`` and one reverse-diffusion move to
    ``t_next``, each followed by :func:`_replace`. The state is ``(x, mean)``, ``mean`` the predictor's noise-free
    mean with the known part's mean. Built inside the jitted sampler: it holds the arrays ``known`` and ``mask``."""
    score_fn: Callable
    process: Any  # with N = num_steps: the corrector's Langevin step rule is that of this grid, as in pc
    known: jax.Array
    mask: jax.Array
    snr: float
    n_corrector_steps: int
    denoise: bool

    def init(self, x, t):
        return x, x

    def step(self, key, state, t, t_next):
        x, known, mask = state[0], self.known, self.mask
        for j in range(self.n_corrector_steps):  # static, small: a replacement after every corrector move
            k_corr, k_rep = jax.random.split(jax.random.fold_in(key, j))
            x, _ = langevin_corrector_step(k_corr, x, t, self.score_fn, self.process, snr=self.snr, n_steps=1)
            x, _ = _replace(k_rep, x, known, mask, t, self.process)
        k_pred, k_rep = jax.random.split(jax.random.fold_in(key, self.n_corrector_steps))
        x, mean = reverse_diffusion_step(k_pred, x, t, t_next, self.score_fn, self.process)
        x, known_mean = _replace(k_rep, x, known, mask, t_next, self.process)
        return x, mean * (1.0 - mask) + known_mean * mask

    def output(self, key, state):
        x, mean = state
        return mean * (1.0 - self.mask) + self.known * self.mask if self.denoise else x

    def nfe(self, num_steps: int) -> int:
        return num_steps * (1 + self.n_corrector_steps)


def _pc_replacement(key, known, mask, *, times, score_fn, process, snr, n_corrector_steps, denoise):
    times = jnp.asarray(times, known.dtype)  # a compile-time constant, as in every sampler
    key_init, key_loop = jax.random.split(key)
    k_prior, k_known = jax.random.split(key_init)
    x, _ = _replace(k_known, process.prior_sample(k_prior, known.shape, known.dtype), known, mask, times[0], process)
    step = ReplacementStep(score_fn, process, known, mask, snr, n_corrector_steps, denoise)
    return run_steps(key_loop, x, times, step)


_STATIC = ("times", "score_fn", "process", "snr", "n_corrector_steps", "denoise")
# Compiled once per (score_fn, process, options) and shape; inlined under an outer trace (diffjax.core._jit). The solve
# runs in float32 (float64 for float64 data) and returns the data's dtype (diffjax.samplers._common).
_inpaint = jit_static(*_STATIC)(in_solve_dtype(_pc_replacement))


def _check_pc(key, x, score_fn, process, num_steps, snr, n_corrector_steps, t_eps, denoise, name):
    """The samplers' prologue (:func:`~diffjax.samplers._common.check_common`) with the data ``x`` named ``name``;
    returns the jitted sampler's options, its time grid among them."""
    c = check_common("inpaint / colorize", x, score_fn, process, num_steps, t_eps, default_steps=None,
                     denoise=denoise, x_name=name)
    snr = check_positive("snr", snr)
    n_corrector_steps = check_int("n_corrector_steps", n_corrector_steps, minimum=0)
    if key is None:
        raise ValueError("key must be a PRNG key, got None")
    stepped = with_steps(process, c.num_steps)
    times = tuple(check_time_grid(process_default, stepped, c.num_steps, c.t_eps).tolist())
    return dict(times=times, process=stepped, snr=snr, n_corrector_steps=n_corrector_steps, denoise=c.denoise)


@deprecated_sde_keyword
def inpaint(key, x_known, mask, score_fn, process, *, num_steps: int | None = None, snr: float = 0.16,
            n_corrector_steps: int = 1, t_eps: float | None = None, denoise: bool = True):
    """Inpainting by PC sampling with replacement (score-SDE Appendix I.2, ``get_pc_inpainter``).

    Each of ``num_steps`` steps from ``T`` to ``t_eps`` runs ``n_corrector_steps`` Langevin corrector moves
    (:func:`langevin_corrector_step`) at ``t_i`` and one reverse-diffusion predictor move
    (:func:`reverse_diffusion_step`) to ``t_{i+1}``; after each move the known entries are set to

    .. math:: x_t[\\text{known}] = a(t)\\, x_{\\text{known}} + s(t)\\, z,\\quad z \\sim \\mathcal N(0, I)

    Replacement approximates the conditional; it does not sample it exactly. The unknown entries follow the
    unconditional score of ``x_t``, evaluated with known entries that are noised afresh, independently of them,
    not the conditional score ``grad log p_t(x_t[unknown] | x_known)``. So even with the exact score the result
    is only approximately distributed as ``p(x[unknown] | x_known)``, and worst where the unknown entries depend
    strongly on the known ones. RePaint's resampling (Lugmayr et al. 2022) and sequential Monte Carlo (Trippe et
    al. 2023, Wu et al. 2023) reduce this error. They are not implemented here.

    Args:
      key: PRNG key.
      x_known: data ``(batch, *dims)``; only its entries where ``mask == 1`` are used.
      mask: 1 where known, 0 where to fill in; broadcastable to ``x_known`` (e.g. ``(batch, H, W, 1)``).
      score_fn: ``score_fn(x, t)`` of the (unconditional) model.
      process: any forward process (VP, sub-VP, VE, rectified flow, EDM, ``gaussian_path``).
      num_steps: predictor steps; ``None`` means ``process.N`` (score-SDE: 1000). The corrector's Langevin step rule
        is that of this grid, as in :func:`pc`.
      snr: Langevin corrector signal-to-noise ratio (score-SDE: 0.16).
      n_corrector_steps: corrector moves per step (score-SDE: 1; 0 gives predictor-only).
      t_eps: last time; ``None`` means the process's ``process.t_eps`` (score-SDE's 1e-3 for VP / sub-VP, 1e-5 VE).
      denoise: return the last predictor mean with the known entries exactly ``x_known`` (True) or the last
        noisy sample (False).

    Returns:
      ``(batch, *dims)`` samples.
    """
    opts = _check_pc(key, x_known, score_fn, process, num_steps, snr, n_corrector_steps, t_eps, denoise, "x_known")
    x_known = jnp.asarray(x_known)
    mask = jnp.asarray(mask)
    try:
        mask = jnp.broadcast_to(mask, x_known.shape).astype(x_known.dtype)
    except ValueError:
        raise ValueError(f"mask must be broadcastable to x_known's shape {x_known.shape}, got shape "
                         f"{mask.shape}") from None
    return _inpaint(key, x_known, mask, score_fn=score_fn, **opts)


# Orthonormal colour basis: first axis (1, 1, 1)/sqrt(3) is the gray level (times sqrt(3)), the other two span
# the chroma (score-SDE decouples with an orthogonal matrix of the same first column).
_COLOR_BASIS = (
    (1 / math.sqrt(3), 1 / math.sqrt(2), 1 / math.sqrt(6)),
    (1 / math.sqrt(3), -1 / math.sqrt(2), 1 / math.sqrt(6)),
    (1 / math.sqrt(3), 0.0, -2 / math.sqrt(6)),
)


@deprecated_sde_keyword
def colorize(key, gray, score_fn, process, *, num_steps: int | None = None, snr: float = 0.16,
             n_corrector_steps: int = 1, t_eps: float | None = None, denoise: bool = True):
    """Colorization (score-SDE Appendix I.2, ``get_pc_colorizer``): inpainting in a rotated colour basis.

    With the orthogonal ``Q`` whose first column is ``(1, 1, 1)/sqrt(3)``, the decoupled image ``z = x Q`` has
    ``z_0 = sqrt(3) gray``; the known channel ``z_0`` is replaced as in :func:`inpaint` (the same approximation of
    the conditional), the chroma channels are generated with the rotated score ``s_z(z, t) = s(z Q^T, t) Q`` (the
    processes are isotropic, so rotation commutes with them).

    .. math:: z = x Q,\\quad z_0 = \\sqrt{3}\\,\\mathrm{gray},\\quad x = z Q^\\top

    Args:
      key: PRNG key.
      gray: gray images in the model's data range, channels last: ``(batch, *spatial, 1)``, or
        ``(batch, *spatial, 3)`` whose channel mean is taken.
      score_fn: ``score_fn(x, t)`` of an RGB model, ``x`` of shape ``(batch, *spatial, 3)``.
      process, num_steps, snr, n_corrector_steps, t_eps, denoise: as in :func:`inpaint`.

    Returns:
      ``(batch, *spatial, 3)`` colour images whose channel mean equals ``gray`` (exactly when ``denoise``).
    """
    check_batched("gray", gray, min_ndim=2)
    gray = jnp.asarray(gray)
    if gray.shape[-1] not in (1, 3):
        raise ValueError(f"gray must have 1 or 3 channels (last axis), got shape {gray.shape}")
    opts = _check_pc(key, gray, score_fn, process, num_steps, snr, n_corrector_steps, t_eps, denoise, "gray")
    if not jnp.issubdtype(gray.dtype, jnp.floating):
        raise ValueError(f"gray must be a floating-point array in the model's data range, got dtype {gray.dtype}")
    return _colorize(key, jnp.mean(gray, axis=-1, keepdims=True), score_fn=score_fn, **opts)


@jit_static(*_STATIC)
@in_solve_dtype
def _colorize(key, level, *, times, score_fn, process, snr, n_corrector_steps, denoise):
    q = jnp.asarray(_COLOR_BASIS, level.dtype)
    known = jnp.concatenate([math.sqrt(3.0) * level, jnp.zeros_like(level), jnp.zeros_like(level)], axis=-1)
    mask = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0], level.dtype), known.shape)

    def rotated_score(z, t):
        return score_fn(z @ q.T, t) @ q

    z = _pc_replacement(key, known, mask, times=times, score_fn=rotated_score, process=process, snr=snr,
                        n_corrector_steps=n_corrector_steps, denoise=denoise)
    return z @ q.T
