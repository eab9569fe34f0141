"""Text-conditional Fashion-MNIST with SD3's MMDiT blocks (Esser et al. 2024, Sec. 4): configs/fashion_mnist_text_dit.py
(the same DiT size, captions, text encoder, process, optimizer and sampler) whose blocks attend jointly over the image
tokens and the text tokens (one softmax over both, padding keys masked), each modality with its own adaLN-Zero
modulation, QKV, output projection and MLP; the pooled text vector joins the time embedding. An MMDiT block has
twice a DiT block's weights: 3 blocks (2.0 M parameters) against the cross-attention DiT's 5 (1.9 M), the same
budget.

    python -m diffjax.main --config configs/fashion_mnist_text_mmdit.py --workdir /tmp/fmnist_text_mmdit
    python -m diffjax.main --config configs/fashion_mnist_text_mmdit.py --workdir /tmp/fmnist_text_mmdit \
        --mode sample --config.sampling.prompt="a small dark sandal" --config.sampling.guidance_scale=3.0
"""
from configs import fashion_mnist_text_dit


def get_config():
    config = fashion_mnist_text_dit.get_config()
    config.text.conditioning = "mmdit"
    config.model.overrides.depth = 3
    return config
