"""Class-conditional DDPM on Fashion-MNIST trained for classifier-free guidance (Ho & Salimans 2022): the
configs/fashion_mnist_ddpm.py model with a label embedding (data.num_classes=10), labels dropped to the null label
(10) with probability training.label_dropout=0.1, and samples drawn with the guided score
(1 + w) s(x, t, y) - w s(x, t, null), w = sampling.guidance_scale, for labels y = arange(n) % 10:

    python -m diffjax.main --config configs/fashion_mnist_cfg.py --workdir /tmp/fmnist_cfg
    python -m diffjax.main --config configs/fashion_mnist_cfg.py --workdir /tmp/fmnist_cfg --mode sample \
        --config.sampling.guidance_scale=3.0
"""
from configs import fashion_mnist_ddpm


def get_config():
    config = fashion_mnist_ddpm.get_config()
    config.data.num_classes = 10
    config.training.label_dropout = 0.1
    config.sampling.guidance_scale = 1.0
    return config
