"""Shortcut models (Frans et al. 2025) on Fashion-MNIST from scratch: a flow map u(x_t, t, s) trained by
self-consistency on a dyadic grid of jump lengths (two half jumps as the target of one; no forward-mode derivative),
sampled in 1, 2, 4, ... jumps, at the budget's training length (configs/fashion_mnist_budget_rf.py's recipe).

    python -m diffjax.main --config configs/fashion_mnist_shortcut.py --workdir W
    python -m diffjax.main --config configs/fashion_mnist_shortcut.py --workdir W --mode sample \
        --config.distill.sample_steps=2
"""
from configs import fashion_mnist_meanflow


def get_config():
    config = fashion_mnist_meanflow.get_config()
    d = config.distill
    d.method = "shortcut"
    d.shortcut_levels = 7
    return config
