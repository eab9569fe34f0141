"""Fashion-MNIST at the quality budget (configs/fashion_mnist_budget.py: the same process, loss, optimizer, EMA,
image budget and sampler) with a diffusion transformer instead of the UNet: ``dit_fashion_mnist`` (patch 2, 5 blocks
of width 128, 4 heads, adaLN-Zero; 1.57 M parameters against the UNet's 1.62 M). The budget config's UNet overrides
(``ch``, ``ch_mult``, ...) are cleared: they are not fields of a DiT.

    python -m diffjax.main --config configs/fashion_mnist_dit.py --mode describe
    python -m diffjax.main --config configs/fashion_mnist_dit.py --workdir W
"""
import ml_collections

from configs import fashion_mnist_budget


def get_config():
    config = fashion_mnist_budget.get_config()
    m = config.model
    m.name = "dit_fashion_mnist"
    m.overrides = ml_collections.ConfigDict()  # DiT fields may be set here (hidden_size, depth, patch_size, ...)
    return config
