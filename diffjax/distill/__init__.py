"""Few-step generation: progressive distillation and consistency models, as pure functions on the process protocol.

A layer like :mod:`diffjax.samplers` (it imports core and samplers, never flax or optax): losses take plain callables
``fn(x, t)`` and a process; a training step elsewhere wraps them.

Progressive distillation (Salimans & Ho 2022): :func:`pd_target` (the one-step x0 target equal to two teacher DDIM
steps), :func:`pd_loss` (Algorithm 2, truncated-SNR weighting), :func:`pd_sample` (DDIM with the distilled steps),
:func:`ddim_x0_step`, :func:`truncated_snr_weight`.

Consistency models (Song et al. 2023; iCT, Song & Dhariwal 2024): :func:`consistency_fn` (``f(x, t_eps) = x``
exactly, on any process), :func:`cd_loss` (distillation, Algorithm 2), :func:`ct_loss` (training, Algorithm 3 with
iCT's curriculum :func:`ict_num_scales`, log-normal noise levels, :func:`ict_weight`, :func:`pseudo_huber`),
:func:`consistency_sample` (one step and multistep, Algorithm 1); metrics :func:`pseudo_huber`, :func:`squared_l2`.

Each method as one object (:mod:`diffjax.distill.methods`, the contract :class:`DistillMethod`): its loss, its sampler,
its rounds and its state, over the networks a run provides (:class:`DistillNetworks`):
:class:`ProgressiveDistillation`, :class:`ConsistencyDistillation`, :class:`ConsistencyTraining`.
"""
from diffjax.distill.progressive import *  # noqa: F401,F403
from diffjax.distill.consistency import *  # noqa: F401,F403
from diffjax.distill.methods import *  # noqa: F401,F403
from diffjax.distill import consistency, methods, progressive

__all__ = progressive.__all__ + consistency.__all__ + methods.__all__
