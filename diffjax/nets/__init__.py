"""Score networks (flax.linen) and the bridge to the core.

Networks map ``(x, noise_labels[, y])`` to an array shaped like ``x`` and know nothing about SDEs;
:func:`make_score_fn` (the only bridge) turns one into the core's ``score_fn(x, t)``. Text: :class:`TextEncoder`
(a small transformer over token ids with a padding mask) and :class:`CLIP` (text and image towers, contrastive).

Named constructors (keyword overrides of the fields): :func:`ddpm_cifar10`, :func:`ncsnpp_cifar10`,
:func:`ncsnpp_deep_cifar10`, :func:`ddpmpp_cifar10`, :func:`ddpmpp_deep_cifar10`, :func:`small32`,
:func:`fashion_mnist_small`, :func:`toy_mlp`, :func:`noise_classifier_cifar10`; the diffusion transformers
:func:`dit_s2`, :func:`dit_b2`, :func:`dit_l2`, :func:`dit_xl2` (DiT's published sizes), :func:`dit_fashion_mnist` and
:func:`dit_cifar10_small`. The KL autoencoder of latent diffusion: :class:`AutoencoderKL` (diffusers' layout;
:func:`autoencoder_params_from_diffusers` reads a diffusers state dict), its posterior :class:`DiagonalGaussian` and
objective :func:`autoencoder_loss`.

The layers (:class:`Conv`, :class:`GroupNorm`, :class:`AttnBlock`, :class:`ResBlock`, ...) and the functional
:func:`attention` / :func:`group_norm` are public; the kernel variants they choose between (``conv_impl`` /
``layer_impl``) stay in the private module of their concern: ``_conv`` (``conv_xla``, ``conv_upsampled``,
``conv_polyphase_grad``, ..., ``CONV_IMPLS``), ``_attention`` (``dot_product_attention``, ``reference_attention``),
``_norm`` (``group_norm_fused``), ``_base`` (``LAYER_IMPLS``, ``Dense``, ``add_bias``, ``sum_spatial``),
``_embeddings``, ``_resampling`` (FIR and nearest resampling) and ``_blocks`` (``Upsample``, ``Downsample``,
``ResBlock``).
"""
from diffjax.nets._bridge import (PARAMETERIZATIONS, TIME_INPUTS, make_conditional_score_fn, make_score_fn,
                                  noise_labels_for, split_learned_sigma)
from diffjax.nets._cascade import LowResConditioned
from diffjax.nets._classifier import NoiseConditionalClassifier
from diffjax.nets._clip import CLIP
from diffjax.nets._cross_attention import CrossAttention, SpatialTransformer, TransformerBlock
from diffjax.nets._text import TEXT_POOLINGS, TextEncoder
from diffjax.nets._text_conditional import TextConditional
from diffjax.nets._dit import DiT, dit_timestep_embedding, sincos_pos_embed_2d
from diffjax.nets._attention import AttnBlock, attention, masked_attention
from diffjax.nets._flash_attention import flash_attention
from diffjax.nets._flow_map import FlowMapNet, TimeGap
from diffjax.nets._autoencoder import AutoencoderKL, DiagonalGaussian, autoencoder_loss
from diffjax.nets._autoencoder_diffusers import autoencoder_params_from_diffusers
from diffjax.nets._base import Dense
from diffjax.nets._blocks import Downsample, ResBlock, Upsample
from diffjax.nets._conv import Conv
from diffjax.nets._embeddings import GaussianFourierProjection, timestep_embedding
from diffjax.nets._norm import GroupNorm, group_norm
from diffjax.nets._resampling import fir_downsample_2d, fir_upsample_2d
from diffjax.nets._mlp import MLPScore
from diffjax.nets._presets import (ddpm_cifar10, ddpmpp_cifar10, ddpmpp_deep_cifar10, dit_b2, dit_cifar10_small,
                                   dit_fashion_mnist, dit_l2, dit_s2, dit_xl2, fashion_mnist_small,
                                   ncsnpp_cifar10, ncsnpp_deep_cifar10, noise_classifier_cifar10, small32, toy_mlp)
from diffjax.nets._summary import abstract_init, count_params, model_summary
from diffjax.nets._unet import UNet

__all__ = [
    "UNet", "MLPScore", "NoiseConditionalClassifier", "DiT", "LowResConditioned",
    "make_score_fn", "make_conditional_score_fn", "noise_labels_for", "split_learned_sigma",
    "TIME_INPUTS", "PARAMETERIZATIONS",
    "model_summary", "count_params", "abstract_init",
    "ddpm_cifar10", "ncsnpp_cifar10", "ncsnpp_deep_cifar10", "ddpmpp_cifar10", "ddpmpp_deep_cifar10", "small32",
    "fashion_mnist_small", "toy_mlp", "noise_classifier_cifar10",
    "dit_s2", "dit_b2", "dit_l2", "dit_xl2", "dit_fashion_mnist", "dit_cifar10_small",
    "sincos_pos_embed_2d", "dit_timestep_embedding",
    "Conv", "Dense", "GroupNorm", "AttnBlock", "ResBlock", "Upsample", "Downsample", "GaussianFourierProjection",
    "timestep_embedding", "fir_upsample_2d", "fir_downsample_2d", "attention", "group_norm",
    "TextEncoder", "TEXT_POOLINGS", "CLIP", "masked_attention", "flash_attention", "FlowMapNet", "TimeGap",
    "CrossAttention", "TransformerBlock", "SpatialTransformer", "TextConditional",
    "AutoencoderKL", "DiagonalGaussian", "autoencoder_loss", "autoencoder_params_from_diffusers",
]
