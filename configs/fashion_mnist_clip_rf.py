"""Noise-aware CLIP on rectified flow's process, for CLIP guidance of the rectified-flow models (GLIDE Sec. 2.4;
issue 40 compares it with classifier-free guidance of the text-conditional model): configs/fashion_mnist_clip.py's
CLIP (text encoder, residual CNN image tower, symmetric InfoNCE) with its image tower on x_t of
configs/fashion_mnist_budget_rf.py's process and time input, 4000 steps of 128.

    python -m diffjax.main --config configs/fashion_mnist_clip_rf.py --workdir CLIP
    python -m diffjax.main --config configs/fashion_mnist_budget_rf.py --workdir RF --mode sample \\
        --config.sampling.clip_workdir=CLIP --config.sampling.clip_scale=4 --config.sampling.prompt="a dark sneaker"
"""
from configs import fashion_mnist_budget_rf, fashion_mnist_clip


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    clip = fashion_mnist_clip.get_config()
    config.task = clip.task
    config.optim = clip.optim
    config.clip.noise_aware = True
    config.clip.steps = 4000
    return config
