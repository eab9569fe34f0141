"""Score networks (flax.linen) and the bridge to the core.

Networks map ``(x, noise_labels[, y])`` to an array shaped like ``x`` and know nothing about SDEs;
:func:`make_score_fn` (the only bridge) turns one into the core's ``score_fn(x, t)``.

Named constructors (keyword overrides of the fields): :func:`ddpm_cifar10`, :func:`ncsnpp_cifar10`,
:func:`ncsnpp_deep_cifar10`, :func:`ddpmpp_cifar10`, :func:`ddpmpp_deep_cifar10`, :func:`small32`,
:func:`fashion_mnist_small`, :func:`toy_mlp`, :func:`noise_classifier_cifar10`.
"""
from diffjax.nets._bridge import (PARAMETERIZATIONS, TIME_INPUTS, make_conditional_score_fn, make_score_fn,
                                  noise_labels_for, split_learned_sigma)
from diffjax.nets._classifier import NoiseConditionalClassifier
from diffjax.nets._layers import (CONV_IMPLS, LAYER_IMPLS, AttnBlock, Conv, Dense, Downsample,
                                  GaussianFourierProjection, GroupNorm, ResBlock, Upsample, add_bias, attention,
                                  conv_matmul_grad, conv_polyphase, conv_polyphase_grad,
                                  conv_shifted_matmuls, conv_upsampled, conv_xla, default_heads_per_step,
                                  dot_product_attention, fir_downsample_2d, fir_upsample_2d, group_norm,
                                  group_norm_fused, reference_attention, sum_spatial, timestep_embedding)
from diffjax.nets._mlp import MLPScore
from diffjax.nets._presets import (ddpm_cifar10, ddpmpp_cifar10, ddpmpp_deep_cifar10, fashion_mnist_small,
                                   ncsnpp_cifar10, ncsnpp_deep_cifar10, noise_classifier_cifar10, small32, toy_mlp)
from diffjax.nets._summary import abstract_init, count_params, model_summary
from diffjax.nets._unet import UNet

__all__ = [
    "UNet", "MLPScore", "NoiseConditionalClassifier",
    "make_score_fn", "make_conditional_score_fn", "noise_labels_for", "split_learned_sigma",
    "TIME_INPUTS", "PARAMETERIZATIONS",
    "model_summary", "count_params", "abstract_init",
    "ddpm_cifar10", "ncsnpp_cifar10", "ncsnpp_deep_cifar10", "ddpmpp_cifar10", "ddpmpp_deep_cifar10", "small32",
    "fashion_mnist_small", "toy_mlp", "noise_classifier_cifar10",
    "Conv", "Dense", "GroupNorm", "AttnBlock", "ResBlock", "Upsample", "Downsample", "GaussianFourierProjection",
    "timestep_embedding", "fir_upsample_2d", "fir_downsample_2d",
    "CONV_IMPLS", "conv_xla", "conv_matmul_grad", "conv_shifted_matmuls", "conv_upsampled", "conv_polyphase",
    "conv_polyphase_grad",
    "LAYER_IMPLS", "attention", "dot_product_attention", "reference_attention", "default_heads_per_step",
    "group_norm", "group_norm_fused", "sum_spatial", "add_bias",
]
