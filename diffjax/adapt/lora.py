"""Low-rank adaptation of a parameter tree (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen kernel ``W`` gets the update of eq. (3), ``W + (alpha / r) * B A``: here, with flax's kernels laid out
``(..., fan_in, fan_out)``, every selected kernel is viewed as the matrix ``(prod(shape[:-1]), shape[-1])`` (a Dense
kernel as it is; a Conv kernel ``(kh, kw, c_in, c_out)`` as ``(kh * kw * c_in, c_out)``, i.e. a ``kh x kw`` conv to
``r`` channels followed by a 1x1 conv to ``c_out``), and

.. math:: W' = W + s\\, \\frac{\\alpha}{r}\\, \\mathrm{down}\\, \\mathrm{up},\\qquad
          \\mathrm{down} \\in \\mathbb{R}^{\\mathrm{fan\\_in} \\times r},\\ \\mathrm{up} \\in \\mathbb{R}^{r \\times
          \\mathrm{fan\\_out}}

(the paper's ``A`` is ``down``, Gaussian at initialisation; its ``B`` is ``up``, zero, so a fresh adapter changes
nothing). ``s`` is the strength at inference (``lora_merge``'s ``scale``): 0 is the base model, -1 undoes a merge,
and adapters combine by merging one after another.

Everything is a pure function of pytrees: :func:`lora_merge` is differentiable in the adapter, so a training step
differentiates ``loss(lora_merge(frozen, adapter))`` with respect to ``adapter.layers`` alone and its optimizer holds
state for those leaves only.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

__all__ = ["LoraAdapter", "lora_init", "lora_merge", "lora_kernel_paths", "lora_num_params"]

KERNEL = "kernel"


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _kernels(params) -> dict:
    """Every Dense / Conv kernel of the tree: ``{"a/b/kernel": leaf}`` for leaves named ``kernel`` of rank >= 2."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = _path_str(path)
        if name.rsplit("/", 1)[-1] == KERNEL and getattr(leaf, "ndim", 0) >= 2:
            out[name] = leaf
    return out


def lora_kernel_paths(params, targets: Optional[Sequence[str]] = None) -> list:
    """The kernels an adapter with ``targets`` covers, as ``"module/.../kernel"`` paths.

    ``targets``: ``fnmatch`` patterns over those paths (``"*attn*"``, ``"*/Conv_0/kernel"``); ``None``: every Dense
    and Conv kernel. A pattern matching no kernel is an error (it names the kernels there are)."""
    kernels = _kernels(params)
    if not kernels:
        raise ValueError("params hold no Dense or Conv kernel (leaves named 'kernel' of rank >= 2) to adapt")
    if targets is None:
        return sorted(kernels)
    if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets) or not targets:
        raise ValueError(f"targets must be a non-empty sequence of path patterns (fnmatch, e.g. '*attn*'), "
                         f"got {targets!r}")
    chosen = set()
    for pattern in targets:
        hits = [k for k in kernels if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            shown = ", ".join(sorted(kernels)[:8]) + (", ..." if len(kernels) > 8 else "")
            raise ValueError(f"targets pattern {pattern!r} matches no Dense or Conv kernel; the kernels are: {shown}")
        chosen.update(hits)
    return sorted(chosen)


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    """``layers``: ``{kernel path: {"down": (fan_in, r), "up": (r, fan_out)}}`` (the trainable leaves);
    ``alpha`` and ``rank``: static (pytree metadata), the update is scaled by ``alpha / rank``."""

    layers: dict
    alpha: float
    rank: int


jax.tree_util.register_dataclass(LoraAdapter, data_fields=["layers"], meta_fields=["alpha", "rank"])


def lora_init(key: jax.Array, params, *, rank: int, alpha: Optional[float] = None,
              targets: Optional[Sequence[str]] = None, dtype=jnp.float32) -> LoraAdapter:
    """A fresh adapter for ``params``: ``down ~ N(0, 1 / fan_in)``, ``up = 0`` (so merging it changes nothing).

    Args:
        key: PRNG key of the Gaussian ``down`` matrices.
        params: the base model's parameter tree (any nesting; only its kernels are read).
        rank: ``r``, the rank of every update (an update's rank is at most ``min(fan_in, fan_out)`` of its kernel,
            e.g. 1 for an output conv to one channel, whatever ``r`` is).
        alpha: the update's scale numerator (default ``rank``: scale 1).
        targets: kernel path patterns (:func:`lora_kernel_paths`); default every Dense and Conv kernel.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite float > 0 (default: the rank), got {alpha!r}")
    kernels = _kernels(params)
    paths = lora_kernel_paths(params, targets)
    layers = {}
    for path, k in zip(paths, jax.random.split(key, len(paths))):
        shape = kernels[path].shape
        fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
        layers[path] = {"down": jax.random.normal(k, (fan_in, rank), dtype) / math.sqrt(fan_in),
                        "up": jnp.zeros((rank, fan_out), dtype)}
    return LoraAdapter(layers=layers, alpha=alpha, rank=rank)


def lora_merge(params, adapter: LoraAdapter, scale=1.0):
    """``params`` with every adapted kernel replaced by ``W + scale * (alpha / rank) * down @ up`` (in ``W``'s dtype).

    ``scale``: a float or a traced scalar (the adapter's strength; -1 undoes a merge of scale 1). A kernel the
    adapter names but ``params`` lacks, or of another shape, is an error: the adapter belongs to another base."""
    kernels = _kernels(params)
    for path, lr in adapter.layers.items():
        if path not in kernels:
            raise ValueError(f"the adapter adapts {path}, which these params do not have: it was made for another "
                             f"base model")
        want = (math.prod(kernels[path].shape[:-1]), kernels[path].shape[-1])
        got = (lr["down"].shape[0], lr["up"].shape[1])
        if want != got:
            raise ValueError(f"the adapter's {path} is {got[0]} x {got[1]}, the kernel {tuple(kernels[path].shape)} "
                             f"({want[0]} x {want[1]}): it was made for another base model")
    factor = jnp.asarray(scale, jnp.float32) * (adapter.alpha / adapter.rank)

    def merge(path, leaf):
        lr = adapter.layers.get(_path_str(path))
        if lr is None:
            return leaf
        delta = (lr["down"].astype(jnp.float32) @ lr["up"].astype(jnp.float32)).reshape(leaf.shape)
        return (leaf.astype(jnp.float32) + factor * delta).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(merge, params)


def lora_num_params(adapter: LoraAdapter) -> int:
    """The adapter's trainable parameters."""
    return sum(int(x.size) for x in jax.tree.leaves(adapter.layers))
