"""The base model of a two-stage cascade (Ho et al. 2021, "Cascaded Diffusion Models for High Fidelity Image
Generation") on Fashion-MNIST: rectified flow at 14x14, the images downsampled from 28 by 2x2 block means
(``data.resize="area"``, the downsampling the super-resolution stage is trained with).

configs/fashion_mnist_budget_rf.py (the flow-matching loss, logit-normal times, Heun on the flow ODE, the optimizer,
EMA and step budget) on 14x14 images with a UNet for that size: (32, 64, 64) channels, 14 -> 7 -> 4, two residual
blocks per level, attention at 7x7. configs/fashion_mnist_cascade_sr.py is the second stage.

    python -m diffjax.main --config configs/fashion_mnist_cascade_base.py --workdir BASE
    python -m diffjax.main --config configs/fashion_mnist_cascade_base.py --workdir BASE --mode sample
"""
from configs import fashion_mnist_budget_rf


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    d = config.data
    d.image_size = 14
    d.resize = "area"
    m = config.model
    m.overrides.image_size = 14
    m.overrides.attn_resolutions = (7,)
    return config
