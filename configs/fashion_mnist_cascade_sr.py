"""The super-resolution stage 14 -> 28 of a two-stage cascade on Fashion-MNIST (Ho et al. 2021): rectified flow at
28x28 conditioned on the 14x14 image upsampled bilinearly, concatenated to the UNet's input channels, with noise
conditioning augmentation: in training the condition is corrupted by the flow's path, ``z_s = (1 - s) z + s eps``,
at ``s ~ U[0, cascade.aug_level_max]`` and the network is told ``s``; at sampling ``s = cascade.sampling_aug_level``.

configs/fashion_mnist_budget_rf.py (loss, times, optimizer, EMA, step budget) with a cheaper UNet than the
single-stage model (attention at 7x7 only: the condition already fixes the layout) and 10 Heun steps (20
evaluations). ``--mode sample`` and ``--mode eval`` run the whole cascade: the base model of
``cascade.base_workdir`` (configs/fashion_mnist_cascade_base.py, its own config from its config.json) samples
14x14 images, this model turns them into 28x28 samples. Training needs no base model (the conditions come from the
training images; its snapshots upsample test images).

    python -m diffjax.main --config configs/fashion_mnist_cascade_sr.py --workdir SR
    python -m diffjax.main --config configs/fashion_mnist_cascade_sr.py --workdir SR --mode sample \\
        --config.cascade.base_workdir=BASE
    # the augmentation ablation: no augmentation in training or sampling
    python -m diffjax.main --config configs/fashion_mnist_cascade_sr.py --workdir SR_NOAUG \\
        --config.cascade.aug_level_max=0 --config.cascade.sampling_aug_level=0
"""
from configs import fashion_mnist_budget_rf


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    c = config.cascade
    c.low_res_size = 14
    c.base_workdir = ""          # set it to the base model's --workdir for --mode sample / eval
    c.aug_level_max = 0.3
    c.sampling_aug_level = 0.1
    config.model.overrides.attn_resolutions = (7,)
    config.sampling.num_steps = 10
    return config
