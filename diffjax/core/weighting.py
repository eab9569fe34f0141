"""Loss weightings and time samplers for :func:`~diffjax.dsm_loss`, for any Gaussian path ``x_t = a x_0 + s eps``.

Every published objective below is one weighted DSM loss. Given ``x_t``, the errors of every parameterization are
proportional to the score error, so an objective stated on any prediction target is a DSM weighting
``lambda(t)`` (``dsm_loss`` minimises ``E_t lambda(t) ||s_theta + eps/s||^2``):

* eps loss ``w_eps ||eps_theta - eps||^2``: ``lambda = s^2 w_eps`` (``eps_theta = -s * score``);
* x0 / denoiser loss ``w_x0 ||x0_theta - x0||^2``: ``lambda = s^2 w_x0 / SNR`` (``x0`` error = ``(s/a)`` eps error);
* velocity loss ``||u_theta - u||^2``: ``lambda = (s^2 lambda'/2)^2`` (:func:`flow_matching_weighting`).

Weightings are written as functions of the log-SNR ``l = log(a^2/s^2)`` where the paper does, and have the
signature ``weighting(process, t, *, hyperparameters) -> (batch,)`` (bind hyperparameters with
``functools.partial``). They are the paper's objective up to a constant factor.

Time samplers ``sampler(key, batch, process, *, t_eps=None, ...) -> t`` of shape ``(batch,)`` in ``[t_eps, T]``;
pass one to ``dsm_loss`` as ``time_sampler=functools.partial(sampler, process=process)``. A non-uniform sampler
changes the objective (that is its purpose: SD3's logit-normal and EDM's log-normal sigma put the training effort
on intermediate noise levels); only ``dsm_loss(..., importance_sampling=True)``
(:func:`~diffjax.importance_sample_time`) reweights to stay unbiased for the uniform-``t`` objective.
``t_eps=None`` uses ``process.t_eps`` (1e-5 for the discrete grids).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_finite, check_int, check_positive, check_t_eps
from diffjax.core.losses import likelihood_weighting
from diffjax.core.process import check_process

__all__ = [
    "min_snr_weighting",
    "edm_weighting",
    "sigmoid_weighting",
    "flow_matching_weighting",
    "uniform_time",
    "logit_normal_time",
    "edm_lognormal_time",
]


def min_snr_weighting(process, t, *, gamma: float = 5.0):
    """Min-SNR-gamma (Hang et al. 2023, "Efficient diffusion training via Min-SNR weighting strategy", Sec. 3):
    the x0 loss weighted by ``min(SNR, gamma)``, i.e. for eps-prediction the eps loss weighted by
    ``min(SNR, gamma) / SNR``; as a DSM weighting ``lambda = s^2 min(SNR, gamma) / SNR``.

    .. math:: \\lambda(t) = \\sigma_t^2 \\min(1, \\gamma e^{-l_t}),\\quad l_t = \\log \\mathrm{SNR}(t)

    (written with ``min(1, gamma/SNR)`` so that it stays finite where ``SNR = 0``).
    """
    gamma = check_positive("gamma", gamma)
    s = process.marginal(t)[1]
    return s**2 * jnp.minimum(1.0, gamma * jnp.exp(-process.log_snr(t)))


def edm_weighting(process, t, *, sigma_data: float = 0.5):
    """EDM's loss weighting (Karras et al. 2022, eq. 2 with Table 1's ``lambda(sigma)``) on the denoiser loss
    ``lambda(sigma) ||D(x; sigma) - x0||^2``, ``sigma = s/a``, ``lambda(sigma) = (sigma^2 + sigma_d^2) /
    (sigma sigma_d)^2``. The denoiser error is ``sigma s`` times the score error, so ``lambda_DSM = s^2 sigma^2
    lambda(sigma)``:

    .. math:: \\lambda(t) = \\sigma_t^2\\, (e^{-l_t} + \\sigma_d^2) / \\sigma_d^2

    EDM's other half, sampling ``ln sigma ~ N(P_mean, P_std^2)``, is :func:`edm_lognormal_time`.
    """
    sigma_data = check_positive("sigma_data", sigma_data)
    s = process.marginal(t)[1]
    return s**2 * (jnp.exp(-process.log_snr(t)) + sigma_data**2) / sigma_data**2


def sigmoid_weighting(process, t, *, bias: float = 2.0):
    """Kingma & Gao 2023 ("Understanding diffusion objectives as the ELBO with simple data augmentation", the
    weighted loss of Sec. 2-3 and the sigmoid weighting of Sec. 5): the eps loss
    ``1/2 w(l_t) (-dl/dt) ||eps_theta - eps||^2`` with ``w(l) = sigmoid(bias - l)``. As ``-s^2 dl/dt = g^2``, this
    is the likelihood weighting times ``w`` (the factor 1/2 dropped; ``bias -> inf`` gives
    :func:`~diffjax.likelihood_weighting`, the ELBO). Default ``bias = 2`` (their ``sigmoid(-l + 2)``).

    .. math:: \\lambda(t) = g(t)^2\\, \\mathrm{sigmoid}(b - l_t)

    Needs ``process.diffusion``. Where ``l -> -inf`` at ``T`` (rectified flow) ``g^2`` diverges like the ELBO's.
    """
    bias = check_finite("bias", bias)
    return likelihood_weighting(process, t) * jax.nn.sigmoid(bias - process.log_snr(t))


def flow_matching_weighting(process, t):
    """The DSM weighting under which :func:`~diffjax.dsm_loss` is the conditional flow-matching loss
    (:func:`~diffjax.flow_matching_loss`; Lipman et al. 2023 eq. 9 / rectified flow, Liu et al. 2023 eq. 1).

    Given ``x_t``, ``u = (a'/a) x_t + (s^2 l'/2) score`` (:func:`~diffjax.velocity_from_score`), so
    ``||u_theta - u||^2 = (s^2 l'/2)^2 ||s_theta + eps/s||^2`` exactly, with
    ``s^2 l'/2 = s (s a' - a s') / a = -g^2/2``:

    .. math:: \\lambda(t) = \\big(\\sigma_t (a_t \\sigma_t' - \\sigma_t a_t') / a_t\\big)^2 = g(t)^4 / 4

    Infinite where ``a = 0`` (rectified flow's ``t = 1``, never drawn by the uniform sampler's ``[t_eps, T)``).
    """
    a, s = process.marginal(t)
    da, ds = process.marginal_derivative(t)
    return (s * (a * ds - s * da) / a) ** 2


# ------------------------------------------------------------------------------------------------------ time samplers


def _t_range(process, t_eps):
    T = float(process.T)
    if t_eps is None:
        t_eps = float(process.t_eps)
    return check_t_eps(t_eps, T), T


def uniform_time(key, batch: int, process, *, t_eps: float | None = None):
    """``t ~ U[t_eps, T)``: the same draw as :func:`~diffjax.dsm_loss`'s default sampler on the same key.

    .. math:: t \\sim \\mathcal U[t_\\epsilon, T)
    """
    batch = check_int("batch", batch, minimum=1)
    t_eps, T = _t_range(process, t_eps)
    return jax.random.uniform(key, (batch,), jnp.float32, minval=t_eps, maxval=T)


def logit_normal_time(key, batch: int, process, *, mean: float = 0.0, std: float = 1.0, t_eps: float | None = None):
    """Logit-normal times (Esser et al. 2024, SD3, Sec. 3.1, "logit-normal sampling"):
    ``t = T sigmoid(mean + std n)``, ``n ~ N(0, 1)``, clipped to ``[t_eps, T]`` (the clipped
    mass, ``P(t < t_eps)``, is below ``1e-10`` for the defaults and ``t_eps = 1e-5``). SD3's default is
    ``mean = 0, std = 1`` on rectified flow (``T = 1``).

    .. math:: t = T\\, \\mathrm{sigmoid}(m + s\\, n)
    """
    batch = check_int("batch", batch, minimum=1)
    mean, std = check_finite("mean", mean), check_positive("std", std)
    t_eps, T = _t_range(process, t_eps)
    n = jax.random.normal(key, (batch,), jnp.float32)
    return jnp.clip(T * jax.nn.sigmoid(mean + std * n), t_eps, T)


def edm_lognormal_time(key, batch: int, process, *, p_mean: float = -1.2, p_std: float = 1.2,
                       t_eps: float | None = None):
    """EDM's training noise levels (Karras et al. 2022, Table 1: ``ln sigma ~ N(P_mean, P_std^2)``), on any process:
    ``sigma = s/a`` is the noise level of ``x_t / a``, so ``t = process.t_from_log_snr(-2 ln sigma)``.

    .. math:: t = \\lambda^{-1}(-2 (P_{mean} + P_{std}\\, n))

    Noise levels outside the process's range ``[sigma(t_eps), sigma(T)]`` are clipped to ``t_eps`` or ``T``. With
    the default ``P_mean``, ``P_std`` the clipped fractions (normal tail probabilities; 2e6 draws agree) are:
    ``vp_sde(0.1, 20)`` at its default ``t_eps = 1e-3`` (sigma 0.0105): 0.26% on ``t_eps``, 1e-7 on ``T``; at
    ``t_eps = 1e-5`` (sigma 0.001): 1e-6 in all; ``ve_sde(0.01, 50)``: 0.23% on ``t_eps``, 1e-5 on ``T``;
    ``cosine_vp_sde()`` at ``t_eps = 1e-3``: 0.07%; ``edm_sde()``: 0.002%; ``subvp_sde`` and ``rectified_flow()``:
    below 1e-6. Needs ``process.t_from_log_snr``.
    """
    batch = check_int("batch", batch, minimum=1)
    p_mean, p_std = check_finite("p_mean", p_mean), check_positive("p_std", p_std)
    check_process(process, name="process", where="edm_lognormal_time (it needs t_from_log_snr(lam))")
    t_eps, T = _t_range(process, t_eps)
    log_sigma = p_mean + p_std * jax.random.normal(key, (batch,), jnp.float32)
    t = process.t_from_log_snr(-2.0 * log_sigma)
    return jnp.clip(t, t_eps, T)
