"""DreamBooth (Ruiz et al. 2023) on the text-conditional model (configs/fashion_mnist_text.py): fine-tune it on a few
images bound to a prompt with an identifier word (adapt.prompt), with the class-prior preservation loss on
adapt.num_prior_images images the frozen base draws once for adapt.prior_prompt (kept in WORKDIR/prior_images.npz),
weighted adapt.prior_weight. adapt.dreambooth_lora=True (default) trains a rank-4 LoRA adapter; False fine-tunes every
parameter (the checkpoints then hold the whole network).

The identifier is a word of the base's vocabulary (the caption grammar's words; DreamBooth's rare existing token):
with one class held out of the base's training, that class's synonyms are words the base never saw. Here the
held-out class is Sandal, the identifier its synonym "slipper", bound to the nearby seen class noun "sneaker":

    python -m diffjax.main --config configs/fashion_mnist_text.py --workdir BASE        # the base model
    python -m diffjax.main --config configs/fashion_mnist_dreambooth.py --workdir W \\
        --config.adapt.base_workdir=BASE --config.adapt.images=sandals16.npz            # uint8 x (N, 28, 28, 1)
    python -m diffjax.main --config configs/fashion_mnist_dreambooth.py --workdir W --mode sample \\
        --config.adapt.base_workdir=BASE --config.sampling.prompt="a dark slipper sneaker"
"""
from configs import fashion_mnist_lora, fashion_mnist_text


def get_config():
    config = fashion_mnist_lora.adapter_of(fashion_mnist_text.get_config())
    a = config.adapt
    a.method = "dreambooth"
    a.prompt = "a slipper sneaker"
    a.prior_prompt = "a sneaker"
    a.prior_weight = 1.0
    a.num_prior_images = 64
    a.dreambooth_lora = True
    return config
