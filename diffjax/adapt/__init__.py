"""Adapters on parameter trees (imports jax only): LoRA (:mod:`diffjax.adapt.lora`), textual inversion's new token
embeddings and DreamBooth's prior-preservation loss (:mod:`diffjax.adapt.concepts`)."""
from diffjax.adapt.concepts import prior_preservation_loss, ti_init, ti_merge
from diffjax.adapt.lora import LoraAdapter, lora_init, lora_kernel_paths, lora_merge, lora_num_params

__all__ = ["LoraAdapter", "lora_init", "lora_merge", "lora_kernel_paths", "lora_num_params", "ti_init", "ti_merge",
           "prior_preservation_loss"]
