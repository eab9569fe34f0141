"""Textual inversion (Gal et al. 2022) on the text-conditional model (configs/fashion_mnist_text.py): a new word
adapt.new_word is added to the vocabulary, and its embedding row in the frozen text encoder (initialised from
adapt.init_word's) is learned from a few images captioned adapt.prompt; every other parameter stays the base's, the
checkpoints hold the new row only. The word then works inside any prompt (--config.sampling.prompt="a dark zwx");
prompts without it sample exactly as the base model does.

    python -m diffjax.main --config configs/fashion_mnist_text.py --workdir BASE        # the base model
    python -m diffjax.main --config configs/fashion_mnist_textual_inversion.py --workdir W \\
        --config.adapt.base_workdir=BASE --config.adapt.images=sandals16.npz            # uint8 x (N, 28, 28, 1)
    python -m diffjax.main --config configs/fashion_mnist_textual_inversion.py --workdir W --mode sample \\
        --config.adapt.base_workdir=BASE --config.sampling.prompt="a dark zwx"
"""
from configs import fashion_mnist_lora, fashion_mnist_text


def get_config():
    config = fashion_mnist_lora.adapter_of(fashion_mnist_text.get_config())
    a = config.adapt
    a.method = "textual_inversion"
    a.new_word = "zwx"
    a.init_word = "sneaker"
    a.prompt = "a zwx"
    a.n_iters = 1000
    a.lr = 5e-3
    return config
