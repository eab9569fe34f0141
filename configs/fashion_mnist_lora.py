"""A LoRA adapter (diffjax.adapt) of the budget rectified-flow model (configs/fashion_mnist_budget_rf.py): teach it a
concept from a few images, training only rank-4 factors of its Dense and Conv kernels.

    python -m diffjax.main --config configs/fashion_mnist_budget_rf.py --workdir BASE          # the base model
    python -m diffjax.main --config configs/fashion_mnist_lora.py --workdir W \\
        --config.adapt.base_workdir=BASE --config.adapt.images=concept.npz                    # uint8 x (N, 28, 28, 1)
    python -m diffjax.main --config configs/fashion_mnist_lora.py --workdir W --mode sample \\
        --config.adapt.base_workdir=BASE --config.sampling.adapter_scale=0.5

On the text-conditional model (configs/fashion_mnist_text.py is this base plus the four text fields below), the
images are taught under a prompt, and samples follow sampling.prompt (default: adapt.prompt):

    python -m diffjax.main --config configs/fashion_mnist_text.py --workdir TEXT_BASE
    python -m diffjax.main --config configs/fashion_mnist_lora.py --workdir W \
        --config.text.conditioning=cross_attention --config.text.caption_dropout=0.1 \
        --config.sampling.guidance_scale=2.0 --config.adapt.base_workdir=TEXT_BASE \
        --config.adapt.images=concept.npz --config.adapt.prompt="a slipper sneaker"
    python -m diffjax.main --config configs/fashion_mnist_lora.py --workdir W --mode sample \
        --config.text.conditioning=cross_attention --config.text.caption_dropout=0.1 \
        --config.sampling.guidance_scale=2.0 --config.adapt.base_workdir=TEXT_BASE \
        --config.adapt.prompt="a slipper sneaker" --config.sampling.prompt="a dark slipper sneaker"
"""
from configs import fashion_mnist_budget_rf


def adapter_of(config):
    """``config`` (a trained model's) as ``config.task="adapt"``: a rank-4 LoRA, 300 steps of 16 images at lr 1e-3,
    64 samples (configs/fashion_mnist_dreambooth.py and fashion_mnist_textual_inversion.py start from it too)."""
    config.task = "adapt"
    a = config.adapt
    a.method = "lora"
    a.rank = 4
    a.batch_size = 16
    a.n_iters = 300
    a.lr = 1e-3
    config.sampling.num_samples = 64
    config.sampling.batch_size = 64
    return config


def get_config():
    return adapter_of(fashion_mnist_budget_rf.get_config())
