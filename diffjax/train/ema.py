"""Exponential moving averages of the parameters: decay schedules with warm-up, and EDM2's power-function EMA with
post-hoc reconstruction of other EMA lengths from stored snapshots (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", Sec. 3 and Appendix C).

Every EMA here is one update rule with a per-step decay ``beta_k`` (``k`` = updates already applied):

.. math:: \\bar\\theta_{k+1} = \\beta_k \\bar\\theta_k + (1 - \\beta_k)\\, \\theta_{k+1}

and the schedules are functions ``decay(k) -> beta_k`` (like optax's learning-rate schedules):

* :func:`constant_decay`: ``beta_k = r`` (score-SDE). After ``n`` updates the EMA still holds ``r^n`` of its
  initial value (the random initialisation): 5% for ``r = 0.998`` after 1500 steps.
* :func:`debiased_decay`: the bias-corrected EMA of Adam / ``optax.ema(decay, debias=True)``; weights
  ``proportional to r^(n-k)`` over the updates only, none on the initialisation.
* :func:`warmup_decay`: ``min(r, (1 + k) / (10 + k))`` (TensorFlow's ``ExponentialMovingAverage(num_updates)``,
  diffusers' ``EMAModel`` default).
* :func:`power_warmup_decay`: ``min(r, 1 - (1 + k)^(-p))`` (diffusers' ``EMAModel(use_ema_warmup=True, power=p)``).
* :func:`power_decay`: ``(1 - 1/(k+1))^(gamma+1)`` (EDM2 eq. 3), whose averaging profile is ``proportional to
  tau^gamma`` at every time, i.e. its length is a fixed fraction ``sigma_rel`` of the training so far.

:func:`posthoc_coefficients` solves for the combination of stored power-EMA snapshots that best reproduces the
profile of another ``sigma_rel`` (EDM2 Appendix C.2: least squares between profiles in L2), so the EMA length can be
chosen after training.
"""
from __future__ import annotations

import glob
import math
import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core._checks import check_positive

__all__ = ["ema_update", "constant_decay", "debiased_decay", "warmup_decay", "power_warmup_decay", "power_decay",
           "sigma_rel_to_gamma", "gamma_to_sigma_rel", "posthoc_coefficients", "posthoc_combine", "save_posthoc_snapshot",
           "list_posthoc_snapshots", "posthoc_ema"]

DecaySchedule = Callable[[jax.Array], jax.Array]


def ema_update(ema_params, params, rate):
    """.. math:: \\bar\\theta \\leftarrow r \\bar\\theta + (1 - r) \\theta

    ``rate``: a float or a scalar array (e.g. a schedule's value at this step)."""
    return jax.tree.map(lambda e, p: (rate * e + (1.0 - rate) * p).astype(e.dtype), ema_params, params)


def _check_rate(rate):
    rate = float(rate)
    if not (math.isfinite(rate) and 0.0 <= rate < 1.0):
        raise ValueError(f"rate must be a finite float in [0, 1), got {rate!r}")
    return rate


def constant_decay(rate: float) -> DecaySchedule:
    """``beta_k = rate`` for every step (score-SDE's EMA; keeps ``rate^n`` of the initial parameters)."""
    rate = _check_rate(rate)
    return lambda k: jnp.full((), rate, jnp.float32)


def debiased_decay(rate: float) -> DecaySchedule:
    """The bias-corrected EMA (Kingma & Ba 2015, Sec. 3; ``optax.ema(rate, debias=True)``) as a decay schedule.

    .. math:: \\beta_k = r \\frac{1 - r^k}{1 - r^{k+1}}

    so ``beta_0 = 0`` (the first update copies the parameters) and after ``n`` updates the EMA is the weighted
    average of the ``n`` updated parameter sets with weights proportional to ``r^{n-j}``; none on the initialisation.
    """
    rate = _check_rate(rate)
    log_r = math.log(rate) if rate > 0 else -math.inf

    def decay(k):
        k = jnp.asarray(k, jnp.float32)
        if rate == 0:
            return jnp.zeros((), jnp.float32)
        # r (1 - r^k) / (1 - r^(k+1)), with expm1 for r close to 1
        return rate * jnp.expm1(k * log_r) / jnp.expm1((k + 1.0) * log_r)

    return decay


def warmup_decay(rate: float) -> DecaySchedule:
    """.. math:: \\beta_k = \\min\\big(r, \\tfrac{1 + k}{10 + k}\\big)

    TensorFlow's ``ExponentialMovingAverage(decay, num_updates)`` and diffusers' ``EMAModel`` default."""
    rate = _check_rate(rate)
    return lambda k: jnp.minimum(rate, (1.0 + jnp.asarray(k, jnp.float32)) / (10.0 + jnp.asarray(k, jnp.float32)))


def power_warmup_decay(rate: float, power: float = 2 / 3) -> DecaySchedule:
    """.. math:: \\beta_k = \\min\\big(r, 1 - (1 + k)^{-p}\\big)

    diffusers' ``EMAModel(decay=r, use_ema_warmup=True, inv_gamma=1, power=p)`` (its ``get_decay`` at optimisation
    step ``k + 1``): ``beta_0 = 0``, and the EMA's length grows like a power of the steps taken until it reaches
    ``r``. ``p = 2/3`` is diffusers' default (its docs: 2/3 for short runs, 3/4 for ~1M steps)."""
    rate = _check_rate(rate)
    power = check_positive("power", power)
    return lambda k: jnp.minimum(rate, 1.0 - (1.0 + jnp.asarray(k, jnp.float32)) ** (-power))


def gamma_to_sigma_rel(gamma: float) -> float:
    """EDM2 eq. 4: the relative standard deviation of the power-function profile ``tau^gamma`` on ``[0, 1]``.

    .. math:: \\sigma_{rel} = \\sqrt{(\\gamma + 1) / ((\\gamma + 2)^2 (\\gamma + 3))}
    """
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Inverse of :func:`gamma_to_sigma_rel`: the largest real root of
    ``sigma^2 (gamma + 2)^2 (gamma + 3) - (gamma + 1) = 0``; ``sigma_rel`` in ``(0, 0.28)`` (gamma > 0)."""
    sigma_rel = check_positive("sigma_rel", sigma_rel)
    if not sigma_rel < gamma_to_sigma_rel(0.0):
        raise ValueError(f"sigma_rel must lie in (0, {gamma_to_sigma_rel(0.0):.4f}) (gamma > 0), got {sigma_rel!r}")
    s2 = sigma_rel**2
    # s2 (g^3 + 7 g^2 + 16 g + 12) - g - 1 = 0
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_decay(sigma_rel: float) -> DecaySchedule:
    """EDM2's power-function EMA of relative length ``sigma_rel`` (eq. 3-4):

    .. math:: \\beta_k = (1 - 1/(k+1))^{\\gamma + 1}

    After ``n`` updates the weight of update ``j`` is close to ``(gamma + 1) j^gamma / n^(gamma + 1)``; ``beta_0 = 0``.
    EDM2 tracks ``sigma_rel`` 0.05 and 0.10 for post-hoc reconstruction.
    """
    gamma = sigma_rel_to_gamma(sigma_rel)
    return lambda k: (1.0 - 1.0 / (jnp.asarray(k, jnp.float32) + 1.0)) ** (gamma + 1.0)


def _profile_inner(t_a, gamma_a, t_b, gamma_b):
    """``int_0^inf p_a p_b`` for the profiles ``p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on ``[0, t]``."""
    lo = np.minimum(t_a, t_b)
    return ((gamma_a + 1) * (gamma_b + 1) * lo ** (gamma_a + gamma_b + 1)
            / ((gamma_a + gamma_b + 1) * t_a ** (gamma_a + 1) * t_b ** (gamma_b + 1)))


def posthoc_coefficients(snapshot_steps: Sequence[float], snapshot_sigma_rels: Sequence[float], target_step: float,
                         target_sigma_rel: float) -> np.ndarray:
    """Weights ``x`` such that ``sum_i x_i snapshot_i`` approximates the power EMA of ``target_sigma_rel`` at
    ``target_step`` (EDM2 Appendix C.2): least squares between the averaging profiles,

    .. math:: A x = b,\\quad A_{ij} = \\langle p_i, p_j \\rangle,\\ b_i = \\langle p_i, p_{target} \\rangle

    Args:
      snapshot_steps: ``(n,)`` step counts at which the snapshots were taken (> 0).
      snapshot_sigma_rels: ``(n,)`` the ``sigma_rel`` of each snapshot's power EMA.
      target_step: step of the reconstructed EMA (usually the last snapshot's).
      target_sigma_rel: the EMA length wanted.

    Returns:
      ``(n,)`` float64 weights (computed in float64: ``A`` is badly conditioned).
    """
    t = np.asarray(snapshot_steps, np.float64)
    if t.ndim != 1 or t.size == 0 or len(snapshot_sigma_rels) != t.size or not np.all(t > 0):
        raise ValueError(f"snapshot_steps must be a non-empty list of positive steps, one per sigma_rel; got "
                         f"{list(snapshot_steps)!r} and {list(snapshot_sigma_rels)!r}")
    if not target_step > 0:
        raise ValueError(f"target_step must be > 0, got {target_step!r}")
    g = np.asarray([sigma_rel_to_gamma(s) for s in snapshot_sigma_rels], np.float64)
    g_r = sigma_rel_to_gamma(target_sigma_rel)
    A = _profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    b = _profile_inner(t, g, np.float64(target_step), g_r)
    return np.linalg.lstsq(A, b, rcond=None)[0]


def posthoc_combine(snapshots: Sequence, weights: np.ndarray):
    """``sum_i weights_i snapshots_i`` over parameter pytrees (accumulated in float64 on the host, cast back)."""
    if len(snapshots) != len(weights):
        raise ValueError(f"need one weight per snapshot, got {len(weights)} weights for {len(snapshots)} snapshots")

    def combine(*leaves):
        acc = sum(float(w) * np.asarray(leaf, np.float64) for w, leaf in zip(weights, leaves))
        return acc.astype(np.asarray(leaves[0]).dtype)

    return jax.tree.map(combine, *snapshots)


_SNAPSHOT = "phema-{step:08d}.npz"


def _flat(tree):
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_posthoc_snapshot(directory: str, step: int, sigma_rels: Sequence[float], emas: Sequence) -> str:
    """Write the power EMAs ``emas`` (one parameter pytree per ``sigma_rel``) at ``step`` to
    ``directory/phema-STEP.npz`` atomically (temporary file + rename). Host arrays; call on process 0 with
    fully addressable (gathered) trees. Returns the path."""
    if len(sigma_rels) != len(emas):
        raise ValueError(f"need one EMA per sigma_rel, got {len(emas)} EMAs for sigma_rels {list(sigma_rels)!r}")
    os.makedirs(directory, exist_ok=True)
    arrays = {"step": np.int64(step), "sigma_rels": np.asarray(sigma_rels, np.float64)}
    for i, tree in enumerate(emas):
        arrays.update({f"ema{i}{k}": v for k, v in _flat(tree).items()})
    path = os.path.join(directory, _SNAPSHOT.format(step=int(step)))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def list_posthoc_snapshots(directory: str, *, max_step: int | None = None) -> list[tuple[int, str]]:
    """``(step, path)`` of the snapshots in ``directory`` (ascending), up to ``max_step``."""
    found = []
    for path in glob.glob(os.path.join(directory, "phema-*.npz")):
        m = re.fullmatch(r"phema-(\d+)\.npz", os.path.basename(path))
        if m and (max_step is None or int(m.group(1)) <= max_step):
            found.append((int(m.group(1)), path))
    return sorted(found)


def posthoc_ema(directory: str, like, sigma_rel: float, *, step: int | None = None):
    """The EMA of length ``sigma_rel`` at ``step`` (default: the last snapshot's) reconstructed from the power-EMA
    snapshots in ``directory`` up to ``step`` (:func:`posthoc_coefficients`), with the structure of ``like``.

    Returns:
      ``(params, info)``: a host pytree like ``like`` and a dict with the snapshot steps used and the weights.
    """
    snaps = list_posthoc_snapshots(directory, max_step=step)
    if not snaps:
        raise ValueError(f"no post-hoc EMA snapshots (phema-STEP.npz) in {directory!r}"
                         + (f" up to step {step}" if step is not None else "")
                         + "; train with training.posthoc_ema_freq > 0 to write them")
    target = snaps[-1][0] if step is None else int(step)
    keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
    treedef = jax.tree.structure(like)
    steps, sigmas, entries = [], [], []
    for snap_step, path in snaps:
        with np.load(path) as z:
            for i, s in enumerate(np.asarray(z["sigma_rels"])):
                missing = [k for k in keys if f"ema{i}{k}" not in z.files]
                if missing:
                    raise ValueError(f"snapshot {path} does not match the model: parameters {missing[:3]} missing")
                steps.append(snap_step)
                sigmas.append(float(s))
                entries.append((path, i))
    weights = posthoc_coefficients(steps, sigmas, target, sigma_rel)
    acc = None  # streamed: one snapshot in memory at a time
    for (path, i), w in zip(entries, weights):
        with np.load(path) as z:
            leaves = [float(w) * np.asarray(z[f"ema{i}{k}"], np.float64) for k in keys]
        acc = leaves if acc is None else [a + b for a, b in zip(acc, leaves)]
    dtypes = [np.dtype(getattr(leaf, "dtype", None) or np.asarray(leaf).dtype) for leaf in jax.tree.leaves(like)]
    params = jax.tree.unflatten(treedef, [a.astype(d) for a, d in zip(acc, dtypes)])
    return params, {"steps": steps, "sigma_rels": sigmas, "weights": weights, "target_step": target}
