"""Text-conditional Fashion-MNIST (latent diffusion's conditioning, Rombach et al. 2022, Sec. 3.3, in pixel space):
the rectified-flow budget recipe (configs/fashion_mnist_budget_rf.py: the same UNet, process, loss, optimizer, EMA,
image budget and sampler) with the self-attention blocks at 14x14 and 7x7 replaced by spatial transformers whose
cross-attention reads a small transformer text encoder's tokens (trained jointly; text.*), the pooled text vector
added to the time embedding. Each image gets one of its templated captions per step (class synonyms, dark / light
and small / large measured from its pixels: diffjax.data.captions), the empty caption with probability
text.caption_dropout=0.1 for classifier-free guidance (sampling.guidance_scale, null condition: the empty caption).

    python -m diffjax.main --config configs/fashion_mnist_text.py --workdir /tmp/fmnist_text
    python -m diffjax.main --config configs/fashion_mnist_text.py --workdir /tmp/fmnist_text --mode sample \
        --config.sampling.prompt="a dark sneaker" --config.sampling.guidance_scale=3.0
    python -m diffjax.main --config configs/fashion_mnist_text.py --workdir /tmp/fmnist_text --mode sample \
        --config.sampling.prompt_file=prompts.txt     # one prompt per line; samples cycle over them

Without a prompt the samples cycle over the ten class prompts ("a photo of a t-shirt", ...). The npz holds ``x``,
``prompts`` and ``labels`` (the class each prompt names). A frozen, CLIP-pre-trained text encoder instead of the
jointly trained one (the CLIP run's text tower decides the encoder's size):

    python -m diffjax.main --config configs/fashion_mnist_clip.py --workdir /tmp/fmnist_clip
    python -m diffjax.main --config configs/fashion_mnist_text.py --workdir /tmp/fmnist_text_clip \
        --config.text.encoder_workdir=/tmp/fmnist_clip
"""
from configs import fashion_mnist_budget_rf


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    config.text.conditioning = "cross_attention"
    config.text.caption_dropout = 0.1
    config.model.overrides.context_heads = 4
    config.sampling.guidance_scale = 2.0
    return config
