"""diffusers' ``AutoencoderKL`` state dict (``{name: array}``, PyTorch layouts) as :class:`AutoencoderKL` parameters.

Names map one to one: ``encoder.down_blocks.0.resnets.1.conv1.weight`` is ``encoder/down_blocks_0/resnets_1/conv1/
kernel`` (an index folded into the name before it; ``weight`` is a GroupNorm's ``scale``, elsewhere a ``kernel``).
Convolutions go from OIHW to HWIO, linear layers from ``(out, in)`` to ``(in, out)``. The attention projections are
read under diffusers' names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) and the legacy ones of older checkpoints
(``query``, ``key``, ``value``, ``proj_attn``), as linear ``(out, in)`` or 1x1 convolution ``(out, in, 1, 1)``
weights.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["autoencoder_params_from_diffusers", "diffusers_name"]

_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_name(path) -> str:
    """The diffusers state-dict name of a parameter path ``("encoder", "down_blocks_0", ..., "kernel")``."""
    *modules, leaf = [str(getattr(k, "key", k)) for k in path]
    modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    return ".".join(modules + ["bias" if leaf == "bias" else "weight"])


def _current_name(name: str) -> str:
    """``name`` with the legacy attention names (``...attentions.0.query.weight``) replaced by diffusers' current
    ones (``...attentions.0.to_q.weight``)."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in _LEGACY_ATTENTION:
        parts[-2:-1] = _LEGACY_ATTENTION[parts[-2]].split(".")
    return ".".join(parts)


def _to_flax(value: np.ndarray, target_shape: tuple):
    """``value`` in the target's layout, or None where its shape cannot be that parameter's."""
    value = np.asarray(value)
    if len(target_shape) == 4 and value.ndim == 4:  # conv OIHW -> HWIO
        value = value.transpose(2, 3, 1, 0)
    elif len(target_shape) == 2 and value.ndim == 4 and value.shape[2:] == (1, 1):  # 1x1 conv as a linear layer
        value = value[:, :, 0, 0].T
    elif len(target_shape) == 2 and value.ndim == 2:  # linear (out, in) -> (in, out)
        value = value.T
    return value if value.shape == tuple(target_shape) else None


def _expected_torch_shape(shape: tuple) -> tuple:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))


def _listing(items, limit: int = 5) -> str:
    items = list(items)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def autoencoder_params_from_diffusers(state_dict: dict, model, *, dtype=jnp.float32):
    """The parameters of ``model`` (an :class:`~diffjax.nets.AutoencoderKL`) from a diffusers ``AutoencoderKL``
    state dict ``{name: array}`` (e.g. :func:`diffjax.eval.safetensors.read_safetensors` of a
    ``diffusion_pytorch_model.safetensors``), cast to ``dtype``.

    Raises:
      ValueError: the state dict does not fit ``model``: names it lacks, names ``model`` has no parameter for, and
        arrays of the wrong shape (each listed with the expected PyTorch shape).
    """
    image = (1, model.down_factor, model.down_factor, model.in_channels)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image, jnp.float32)))["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    wanted = {diffusers_name(path): leaf.shape for path, leaf in leaves}
    given = {}
    for name, value in state_dict.items():
        given.setdefault(_current_name(str(name)), (str(name), value))
    missing = [n for n in wanted if n not in given]
    unexpected = [orig for n, (orig, _) in given.items() if n not in wanted]
    converted, misshaped = {}, []
    for n, shape in wanted.items():
        if n not in given:
            continue
        orig, value = given[n]
        out = _to_flax(value, shape)
        if out is None:
            misshaped.append(f"{orig}: {tuple(np.shape(value))} in the state dict, expected "
                             f"{_expected_torch_shape(tuple(shape))}")
        else:
            converted[n] = out
    if missing or unexpected or misshaped:
        parts = [f"{len(missing)} missing ({_listing(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({_listing(unexpected)})" if unexpected else "",
                 f"{len(misshaped)} of the wrong shape ({_listing(misshaped)})" if misshaped else ""]
        config = (f"block_out_channels={tuple(model.block_out_channels)}, layers_per_block={model.layers_per_block}, "
                  f"latent_channels={model.latent_channels}, norm_num_groups={model.norm_num_groups}, "
                  f"in_channels={model.in_channels}, out_channels={model.out_channels}, "
                  f"mid_attention={model.mid_attention}, use_quant_conv={model.use_quant_conv}, "
                  f"use_post_quant_conv={model.use_post_quant_conv}")
        raise ValueError(f"state_dict does not fit AutoencoderKL({config}): " + "; ".join(p for p in parts if p))
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(converted[diffusers_name(p)], dtype)
                                                  for p, _ in leaves])
