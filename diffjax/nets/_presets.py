"""Named network constructors. Each takes keyword overrides of the module's fields: ``ddpm_cifar10(dropout=0.0)``.

``config_lib`` maps config names to these functions with one explicit dict.
"""
from __future__ import annotations

from diffjax.nets._classifier import NoiseConditionalClassifier
from diffjax.nets._dit import DiT
from diffjax.nets._mlp import MLPScore
from diffjax.nets._unet import UNet


def _make(cls, defaults, overrides):
    unknown = set(overrides) - set(cls.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; allowed: "
                        f"{sorted(f for f in cls.__dataclass_fields__ if f not in ('parent', 'name'))}")
    return cls(**{**defaults, **overrides})


_DDPM = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
             resblock_type="ddpm", embedding_type="positional", resamp_with_conv=True, skip_rescale=False,
             init_scale=0.0, attn_every_up_block=True, image_size=32, num_channels=3)

# score-SDE configs/{vp,ve,subvp}/cifar10_{ncsnpp,ddpmpp}*.py: nf=128, ch_mult=(1,2,2,2), 4 (deep: 8) res blocks,
# attention at 16, BigGAN blocks, skip rescale, init_scale 0, attention once per up level.
_SCORE_SDE = dict(ch=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1, resblock_type="biggan",
                  resamp_with_conv=True, skip_rescale=True, init_scale=0.0, attn_every_up_block=False,
                  fourier_scale=16.0, fir_kernel=(1, 3, 3, 1), image_size=32, num_channels=3)
_NCSNPP = dict(_SCORE_SDE, embedding_type="fourier", fir=True, progressive="none", progressive_input="residual",
               progressive_combine="sum")
_DDPMPP = dict(_SCORE_SDE, embedding_type="positional", fir=False, progressive="none", progressive_input="none",
               progressive_combine="sum")


def ddpm_cifar10(**overrides) -> UNet:
    """DDPM's CIFAR-10 UNet (Ho et al. 2020): 35.7 M parameters; feed it DDPM's step index (``time_input="index"``)."""
    return _make(UNet, _DDPM, overrides)


def ncsnpp_cifar10(**overrides) -> UNet:
    """score-SDE's NCSN++ (continuous VE config): Fourier features of log sigma, FIR resampling, BigGAN blocks,
    residual input pyramid, 4 blocks per level. Use ``time_input="log_sigma"`` and ``scale_by_sigma=True``.

    score-SDE's discrete ``cifar10_ncsnpp.py`` is this with ``embedding_type="positional"``.
    """
    return _make(UNet, dict(_NCSNPP, num_res_blocks=4), overrides)


def ncsnpp_deep_cifar10(**overrides) -> UNet:
    """NCSN++ deep (score-SDE's ``cifar10_ncsnpp_deep_continuous``): 8 residual blocks per level."""
    return _make(UNet, dict(_NCSNPP, num_res_blocks=8), overrides)


def ddpmpp_cifar10(**overrides) -> UNet:
    """score-SDE's DDPM++ (``cifar10_ddpmpp[_continuous]``): sinusoidal embedding, BigGAN blocks, no FIR, no pyramid,
    4 blocks per level. score-SDE feeds it ``t * 999`` (``time_input="continuous"``)."""
    return _make(UNet, dict(_DDPMPP, num_res_blocks=4), overrides)


def ddpmpp_deep_cifar10(**overrides) -> UNet:
    """DDPM++ deep (score-SDE's ``cifar10_ddpmpp_deep_continuous``): 8 residual blocks per level."""
    return _make(UNet, dict(_DDPMPP, num_res_blocks=8), overrides)


def small32(**overrides) -> UNet:
    """The layout of diffusers' ``UNet2DModel(sample_size=32, block_out_channels=(64, 128, 128), layers_per_block=2,
    down=(Down, AttnDown, Down), up=(Up, AttnUp, Up), norm_num_groups=32)``: attention (8 channels per head) after
    every block at 16x16, no dropout; about 6.5 M parameters."""
    return _make(UNet, dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
                            resblock_type="ddpm", embedding_type="positional", skip_rescale=False, init_scale=0.0,
                            attn_every_up_block=True, num_head_channels=8, image_size=32, num_channels=3),
                 overrides)


def fashion_mnist_small(**overrides) -> UNet:
    """A small UNet for 28x28x1 (28 -> 14 -> 7, attention at 7) that trains on a CPU; about 1.6 M parameters."""
    return _make(UNet, dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.1,
                            resblock_type="ddpm", embedding_type="positional", init_scale=0.0,
                            attn_every_up_block=True, image_size=28, num_channels=1), overrides)


def toy_mlp(**overrides) -> MLPScore:
    """An MLP score network for 2-D toy data (three hidden layers of 256)."""
    return _make(MLPScore, dict(hidden=(256, 256, 256), embedding_type="positional"), overrides)


def noise_classifier_cifar10(**overrides) -> NoiseConditionalClassifier:
    """A noise-conditional classifier for 32x32x3, 10 classes (guidance)."""
    return _make(NoiseConditionalClassifier, dict(num_classes=10, ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=1,
                                                  attn_resolutions=(8,), image_size=32, num_channels=3), overrides)


# DiT's published configurations (Peebles & Xie 2023, Table 1): depth / width / heads, patch 2, MLP ratio 4. With
# ImageNet-256's latent input (input_size=32, in_channels=4, num_classes=1000, learn_sigma=True) they have 33.0 M,
# 130.5 M, 458.1 M and 675.1 M parameters; here they default to unconditional, any input size, no variance head.
def dit_s2(**overrides) -> DiT:
    """DiT-S/2: 12 blocks of width 384, 6 heads, patch 2."""
    return _make(DiT, dict(patch_size=2, hidden_size=384, depth=12, num_heads=6), overrides)


def dit_b2(**overrides) -> DiT:
    """DiT-B/2: 12 blocks of width 768, 12 heads, patch 2."""
    return _make(DiT, dict(patch_size=2, hidden_size=768, depth=12, num_heads=12), overrides)


def dit_l2(**overrides) -> DiT:
    """DiT-L/2: 24 blocks of width 1024, 16 heads, patch 2."""
    return _make(DiT, dict(patch_size=2, hidden_size=1024, depth=24, num_heads=16), overrides)


def dit_xl2(**overrides) -> DiT:
    """DiT-XL/2: 28 blocks of width 1152, 16 heads, patch 2."""
    return _make(DiT, dict(patch_size=2, hidden_size=1152, depth=28, num_heads=16), overrides)


def dit_fashion_mnist(**overrides) -> DiT:
    """A small DiT for 28x28x1 that trains on a CPU: patch 2 (196 tokens), 5 blocks of width 128, 4 heads; about
    1.57 M parameters (the size of :func:`fashion_mnist_small`)."""
    return _make(DiT, dict(patch_size=2, hidden_size=128, depth=5, num_heads=4, input_size=28, in_channels=1),
                 overrides)


def dit_cifar10_small(**overrides) -> DiT:
    """A small DiT for 32x32x3: patch 2 (256 tokens), 6 blocks of width 256, 4 heads; 7.4 M parameters
    (near :func:`small32`'s 6.5 M)."""
    return _make(DiT, dict(patch_size=2, hidden_size=256, depth=6, num_heads=4, input_size=32, in_channels=3),
                 overrides)
