"""Adapters on parameter trees: LoRA (:mod:`diffjax.adapt.lora`). Imports jax only."""
from diffjax.adapt.lora import LoraAdapter, lora_init, lora_kernel_paths, lora_merge, lora_num_params

__all__ = ["LoraAdapter", "lora_init", "lora_merge", "lora_kernel_paths", "lora_num_params"]
