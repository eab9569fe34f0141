"""Latent diffusion (Rombach et al. 2022) on Fashion-MNIST: rectified flow on the 7x7x4 latents of the KL autoencoder
of configs/fashion_mnist_autoencoder.py, the recipe of configs/fashion_mnist_budget_rf.py otherwise (1500 x 64
batches, Adam 1e-3 with cosine decay, EMA 0.995 and power EMAs, velocity prediction with logit-normal times, Heun's
method with 25 steps on the flow ODE).

Down factor 4 (7x7x4 = 196 numbers per image) rather than 2: 14x14x4 latents hold as many numbers as the 28x28x1
images (784), so a UNet on them costs what the pixel model costs (29.9 vs 32.7 GFLOP per forward pass of 64), while
on 7x7x4 a wider UNet (64 channels, levels 7 -> 4, attention at 7 and in the middle; 4.1 M parameters) takes 8.9
GFLOP, a quarter. The latents are the posterior means, multiplied by 1 / std of the encoded training set (estimated
when training starts, stored in WORKDIR/latent.json); samples are decoded to 28x28 uint8 images.

    python -m diffjax.main --config configs/fashion_mnist_autoencoder.py --workdir AE \\
        --config.eval.classifier_workdir=experiments/results/artifacts
    python -m diffjax.main --config configs/fashion_mnist_latent.py --workdir W --config.latent.autoencoder_workdir=AE
    python -m diffjax.main --config configs/fashion_mnist_latent.py --workdir W \\
        --config.latent.autoencoder_workdir=AE --mode sample
    python -m diffjax.main --config configs/fashion_mnist_latent.py --workdir W \\
        --config.latent.autoencoder_workdir=AE --mode eval \\
        --config.eval.classifier_workdir=experiments/results/artifacts

latent.autoencoder_workdir must be set (here it is "", pixel space, where this 7x7x4 UNet refuses the 28x28 images).
"""
from configs import fashion_mnist_budget_rf


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    lat = config.latent
    lat.autoencoder_workdir = ""  # the --workdir of configs/fashion_mnist_autoencoder.py (required)
    lat.encode = "mean"
    lat.scale_factor = 0.0        # 1 / std of the encoded training latents
    m = config.model
    m.overrides.ch = 64
    m.overrides.ch_mult = (1, 2)
    m.overrides.num_res_blocks = 2
    m.overrides.attn_resolutions = (7,)
    m.overrides.image_size = 7    # the latents: 28 / 4
    m.overrides.num_channels = 4  # the autoencoder's latent_channels
    return config
