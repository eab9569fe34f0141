"""CLIP on Fashion-MNIST and its templated captions (diffjax.data: class synonyms plus dark / light and small / large
measured from the pixels): a small transformer text encoder and a small residual CNN image encoder (config.clip.*,
defaults in configs/default.py) trained with CLIP's symmetric InfoNCE loss and a learned temperature. Retrieval
accuracy on the test split (image -> the 10 class prompts, and image <-> held-out captions whose sentence frames
training never used) goes to WORKDIR/clip.json:

    python -m diffjax.main --config configs/fashion_mnist_clip.py --workdir /tmp/fmnist_clip

writes /tmp/fmnist_clip/clip_params.npz, clip_config.json, clip.json and metrics.jsonl. The noise-aware variant, whose
image encoder sees x_t on this config's process (configs/fashion_mnist_ddpm.py's DDPM grid and time input), is for
CLIP guidance of that model:

    python -m diffjax.main --config configs/fashion_mnist_clip.py --workdir /tmp/fmnist_clip_noisy \
        --config.clip.noise_aware=True --config.clip.steps=4000

and guides an unconditional model of that process (another process: add its training.sde / model.* fields here):

    python -m diffjax.main --config configs/fashion_mnist_ddpm.py --workdir W --mode sample \
        --config.sampling.clip_workdir=/tmp/fmnist_clip_noisy --config.sampling.clip_scale=3 \
        --config.sampling.prompt="a dark sneaker"
"""
from configs import fashion_mnist_ddpm


def get_config():
    config = fashion_mnist_ddpm.get_config()
    config.task = "clip"
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    o.grad_clip = 1.0
    return config
