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

Flow maps (:mod:`diffjax.distill.flow_map`: ``u(x_t, t, s)``, a jump along the probability-flow ODE from any time to
any earlier one): :func:`meanflow_loss` (MeanFlow, Geng et al. 2025: the target from one ``jax.jvp``),
:func:`shortcut_loss` (Frans et al. 2025: two half jumps as the target of one), :func:`flow_map_sample` (1, 2, 4, ...
jumps), and :class:`GaussianFlowMap`, the exact map for Gaussian data that the targets are tested against.

Each method as one object (:mod:`diffjax.distill.methods`, the contract :class:`DistillMethod`): its loss, its sampler,
its rounds and its state, over the networks a run provides (:class:`DistillNetworks`):
:class:`ProgressiveDistillation`, :class:`ConsistencyDistillation`, :class:`ConsistencyTraining`.
"""
from diffjax.distill.progressive import *  # noqa: F401,F403
from diffjax.distill.consistency import *  # noqa: F401,F403
from diffjax.distill.methods import *  # noqa: F401,F403
from diffjax.distill.flow_map import *  # noqa: F401,F403
from diffjax.distill import consistency, flow_map, methods, progressive

__all__ = progressive.__all__ + consistency.__all__ + methods.__all__ + flow_map.__all__
