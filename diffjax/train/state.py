"""Train state, optimizer and EMA."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffjax.core._checks import check_choice, check_int, check_nonnegative, check_positive

from diffjax.train.ema import ema_update

__all__ = ["TrainState", "make_optimizer", "learning_rate_schedule", "cosine_decay", "inverse_sqrt_decay", "ema_update", "init_params", "create_state"]


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: ``step`` (int32 scalar), ``params``, ``ema_params``,
    ``opt_state``, ``key`` (raw ``uint32`` key data; :func:`jax.random.wrap_key_data` gives the key) and ``phema``,
    a tuple of EDM2 power-function EMAs kept for post-hoc EMA reconstruction (empty unless asked for)."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    key: jax.Array
    phema: tuple = ()


def make_optimizer(*, lr: float = 2e-4, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, warmup: int = 5000, grad_clip: float = 1.0,
                   optimizer: str = "adam", decay: Optional[optax.Schedule] = None) -> optax.GradientTransformation:
    """score-SDE's optimizer: clip by global norm, then Adam(W) with a linear learning-rate warmup.

    .. math:: \\eta_k = \\eta \\min(k / \\mathrm{warmup}, 1)\\, d(k)

    ``grad_clip <= 0`` disables clipping; ``warmup=0`` disables the warmup. ``decay``: an optional factor
    ``d(k)`` (an optax schedule, e.g. :func:`cosine_decay` or :func:`inverse_sqrt_decay`); ``None`` keeps the rate.
    """
    check_choice("optimizer", optimizer, ("adam", "adamw"))
    check_positive("lr", lr)
    check_int("warmup", warmup, minimum=0)
    check_nonnegative("weight_decay", weight_decay)
    schedule = learning_rate_schedule(lr=lr, warmup=warmup, decay=decay)
    if optimizer == "adam":
        opt = optax.adam(schedule, b1=beta1, b2=beta2, eps=eps)
    else:
        opt = optax.adamw(schedule, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), opt) if grad_clip > 0 else opt


def learning_rate_schedule(*, lr: float, warmup: int = 0, decay: Optional[optax.Schedule] = None) -> optax.Schedule:
    """:func:`make_optimizer`'s learning rate at optimizer step ``k`` (optax's count: the update that makes step
    ``k + 1``), for the optimizer and for logging.

    .. math:: \\eta_k = \\eta \\min(k / \\mathrm{warmup}, 1)\\, d(k)
    """
    check_positive("lr", lr)
    check_int("warmup", warmup, minimum=0)
    if decay is not None and not callable(decay):
        raise ValueError(f"decay must be None or a schedule (step -> factor), got {decay!r}")

    def schedule(k):
        ramp = jnp.minimum(k / warmup, 1.0) if warmup > 0 else 1.0
        return lr * ramp * (decay(k) if decay is not None else 1.0)

    return schedule


def cosine_decay(total_steps: int, *, warmup: int = 0, final: float = 0.0) -> optax.Schedule:
    """Cosine decay factor from 1 at ``warmup`` to ``final`` at ``total_steps`` (Loshchilov & Hutter 2017), for
    :func:`make_optimizer`'s ``decay``.

    .. math:: d(k) = f + (1 - f) \\tfrac12 \\left(1 + \\cos \\pi \\tfrac{k - w}{K - w}\\right)
    """
    check_int("total_steps", total_steps, minimum=1)
    check_int("warmup", warmup, minimum=0)
    if warmup >= total_steps:
        raise ValueError(f"warmup must be < total_steps={total_steps}, got {warmup}")
    if not 0.0 <= final <= 1.0:
        raise ValueError(f"final must be in [0, 1], got {final!r}")

    def decay(k):
        u = jnp.clip((k - warmup) / (total_steps - warmup), 0.0, 1.0)
        return final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * u))

    return decay


def inverse_sqrt_decay(ref_steps: int) -> optax.Schedule:
    """EDM2's inverse-square-root decay factor (Karras et al. 2024, Eq. 16), for :func:`make_optimizer`'s ``decay``.

    .. math:: d(k) = 1 / \\sqrt{\\max(k / k_\\mathrm{ref}, 1)}
    """
    check_int("ref_steps", ref_steps, minimum=1)
    return lambda k: jax.lax.rsqrt(jnp.maximum(k / ref_steps, 1.0))


def init_params(key, model: nn.Module, input_shape: Sequence[int], *, num_classes: Optional[int] = None,
                condition: Any = None):
    """``model.init`` on zeros of ``input_shape`` (``(batch, ...)``), returning the ``"params"`` collection.
    ``condition``: an example of the network's condition for that batch (a pytree, e.g. a cascade's
    :class:`~diffjax.core.cascade.LowResCondition`), passed where class labels would be."""
    b = input_shape[0]
    args = [jnp.zeros(input_shape, jnp.float32), jnp.zeros((b,), jnp.float32)]
    if condition is not None:
        args.append(condition)
    elif num_classes is not None:
        args.append(jnp.zeros((b,), jnp.int32))
    k_param, k_drop = jax.random.split(key)
    return model.init({"params": k_param, "dropout": k_drop}, *args, train=False)["params"]


def create_state(key, model: nn.Module, input_shape: Sequence[int], optimizer: optax.GradientTransformation, *,
                 num_classes: Optional[int] = None, num_posthoc_emas: int = 0, condition: Any = None) -> TrainState:
    """A fresh :class:`TrainState` at step 0 (every EMA = initial params; ``num_posthoc_emas`` power EMAs in
    ``phema``; ``condition``: see :func:`init_params`). Pure: wrap in ``jax.jit`` with ``out_shardings`` to create it
    sharded."""
    check_int("num_posthoc_emas", num_posthoc_emas, minimum=0)
    k_init, k_train = jax.random.split(key)
    params = init_params(k_init, model, input_shape, num_classes=num_classes, condition=condition)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=optimizer.init(params), key=jax.random.key_data(k_train),
                      phema=tuple(params for _ in range(num_posthoc_emas)))
