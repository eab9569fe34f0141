"""Text-conditional Fashion-MNIST with a diffusion transformer and PixArt-alpha's conditioning (Chen et al. 2023,
Sec. 2.3): configs/fashion_mnist_text.py (captions, caption dropout, text encoder, rectified flow, optimizer, EMA,
sampler) with configs/fashion_mnist_dit.py's DiT (patch 2, 5 blocks of width 128, adaLN-Zero on the time embedding
plus the pooled text vector) and a cross-attention layer in every block (queries from the image tokens, keys and
values from the text tokens, padding masked; its output projection starts at zero).

    python -m diffjax.main --config configs/fashion_mnist_text_dit.py --workdir /tmp/fmnist_text_dit
    python -m diffjax.main --config configs/fashion_mnist_text_dit.py --workdir /tmp/fmnist_text_dit --mode sample \
        --config.sampling.prompt="a photo of a large bright bag" --config.sampling.guidance_scale=3.0
"""
import ml_collections

from configs import fashion_mnist_text


def get_config():
    config = fashion_mnist_text.get_config()
    config.model.name = "dit_fashion_mnist"
    config.model.overrides = ml_collections.ConfigDict()  # DiT fields (hidden_size, depth, ...) may be set here
    config.model.overrides.learn_sigma = False  # named, so that the command line can set it
    config.text.conditioning = "cross_attention"
    return config
