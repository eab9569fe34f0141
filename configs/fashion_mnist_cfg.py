"""Class-conditional Fashion-MNIST trained for classifier-free guidance (Ho & Salimans 2022): the budget recipe
(configs/fashion_mnist_budget.py: the same UNet, process, optimizer, EMA and image budget, so that its guided samples
compare with the unconditional model's) with a label embedding (data.num_classes=10), labels dropped to the null label
(10) with probability training.label_dropout=0.1, and samples drawn with the guided score
(1 + w) s(x, t, y) - w s(x, t, null), w = sampling.guidance_scale, for labels y = arange(n) % 10:
    python -m diffjax.main --config configs/fashion_mnist_cfg.py --workdir /tmp/fmnist_cfg
    python -m diffjax.main --config configs/fashion_mnist_cfg.py --workdir /tmp/fmnist_cfg --mode sample \
        --config.sampling.guidance_scale=3.0
experiments/results/fmnist_guidance.py sweeps w and scores the samples.
"""
from configs import fashion_mnist_budget


def get_config():
    config = fashion_mnist_budget.get_config()
    config.data.num_classes = 10
    config.training.label_dropout = 0.1
    config.sampling.guidance_scale = 1.0
    return config
