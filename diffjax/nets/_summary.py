"""Parameter counts and a per-block shape summary, computed abstractly (``jax.eval_shape``: nothing allocated)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["count_params", "abstract_init", "model_summary"]


def count_params(params) -> int:
    """Total number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct``)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def _dummy_inputs(model, input_shape, num_classes, condition=None):
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    labels = jnp.zeros((input_shape[0],), jnp.float32)
    args = [x, labels]
    if condition is not None:
        return args + [condition]
    num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
    if num_classes is not None and "y" in _call_params(model):
        args.append(jnp.zeros((input_shape[0],), jnp.int32))
    return args


def _call_params(model):
    import inspect
    return inspect.signature(type(model).__call__).parameters


def abstract_init(model: nn.Module, input_shape: Sequence[int], *, num_classes: Optional[int] = None,
                  condition=None):
    """``jax.eval_shape`` of ``model.init(rngs, x, labels[, y], train=False)``: the variables as a tree of
    ``jax.ShapeDtypeStruct``, without allocating or compiling anything. ``condition``: an example of the network's
    condition (a pytree), passed in the place of ``y``."""
    return _abstract_init(model, input_shape, num_classes, condition)[0]


def _abstract_init(model, input_shape, num_classes, condition=None):
    args = _dummy_inputs(model, input_shape, num_classes, condition)
    blocks = []  # (name, output shape) of top-level blocks, in call order

    def record(next_fun, a, kw, context):
        out = next_fun(*a, **kw)
        if context.method_name == "__call__" and len(context.module.scope.path) == 1:
            blocks.append((context.module.name, tuple(getattr(out, "shape", ()))))
        return out

    def init():
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        with nn.intercept_methods(record):
            return model.init(rngs, *args, train=False)

    return jax.eval_shape(init), blocks


def model_summary(model: nn.Module, input_shape: Sequence[int], *, num_classes: Optional[int] = None,
                  condition=None) -> str:
    """A table of the network's top-level blocks (name, output shape, parameters) and the total parameter count.

    Args:
      model: a flax module called as ``model(x, noise_labels[, y], train=...)``.
      input_shape: ``(batch, H, W, C)`` or ``(batch, D)``.
      num_classes: feed dummy labels (default: the model's ``num_classes`` field if it has one).
      condition: an example of the network's condition (a pytree), fed in the place of the labels.
    """
    variables, blocks = _abstract_init(model, input_shape, num_classes, condition)
    params = variables["params"]
    rows = [("block", "output shape", "params")]
    seen = set()
    for name, shape in blocks:
        if name in seen or (name.startswith("Dropout") and name not in params):
            continue
        rows.append((name, str(shape), f"{count_params(params.get(name, {})):,}"))
        seen.add(name)
    for name in params:
        if name not in seen:
            rows.append((name, "-", f"{count_params(params[name]):,}"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{type(model).__name__} on input {tuple(input_shape)}"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in rows]
    total = count_params(params)
    lines.append(f"total parameters: {total:,} ({total / 1e6:.2f} M)")
    return "\n".join(lines)
