"""Fashion-MNIST at the quality budget (configs/fashion_mnist_budget.py: the same process, loss, optimizer, EMA,
image budget and sampler) with a diffusion transformer instead of the UNet: ``dit_fashion_mnist`` (patch 2, 5 blocks
of width 128, 4 heads, adaLN-Zero; 1.57 M parameters against the UNet's 1.62 M). The budget config's UNet overrides
(``ch``, ``ch_mult``, ...) are cleared: they are not fields of a DiT.

    python -m diffjax.main --config configs/fashion_mnist_dit.py --mode describe
    python -m diffjax.main --config configs/fashion_mnist_dit.py --workdir W

DiT's published sizes on ImageNet-256's latents (33.0 M, 130.5 M, 458.1 M, 675.1 M parameters), described:

    python -m diffjax.main --config configs/fashion_mnist_dit.py --mode describe --config.model.name=dit_xl2 \
        --config.data.image_size=32 --config.data.num_channels=4 --config.data.num_classes=1000 \
        --config.model.overrides.learn_sigma=True
"""
import ml_collections

from configs import fashion_mnist_budget


def get_config():
    config = fashion_mnist_budget.get_config()
    m = config.model
    m.name = "dit_fashion_mnist"
    m.overrides = ml_collections.ConfigDict()  # DiT fields may be set here (hidden_size, depth, patch_size, ...)
    m.overrides.learn_sigma = False  # named, so that the command line can set it
    return config
