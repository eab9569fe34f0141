"""The noise-conditional classifier p(y | x_t, t) that guides configs/fashion_mnist_ddpm.py's samples (classifier
guidance, Dhariwal & Nichol 2021): the same process (training.sde, the DDPM grid) and the same time input as that
config's score network, a small NoiseConditionalClassifier trained with cross-entropy on x_t, t ~ U[t_eps, T).
A few minutes on 2 CPU cores:

    python -m diffjax.main --config configs/fashion_mnist_noisy_classifier.py --workdir /tmp/fmnist_ncl

writes /tmp/fmnist_ncl/noisy_classifier_params.npz, noisy_classifier_config.json and noisy_classifier.json (test
accuracy in 10 bins of t). Then guide a trained DDPM run's samples towards labels arange(n) % 10:

    python -m diffjax.main --config configs/fashion_mnist_ddpm.py --workdir /tmp/fmnist_ddpm --mode sample \
        --config.sampling.classifier_workdir=/tmp/fmnist_ncl --config.sampling.classifier_scale=2.0

Any diffusion config on the same process works the same way: build its classifier config on it like this one.
"""
from configs import fashion_mnist_ddpm


def get_config():
    config = fashion_mnist_ddpm.get_config()
    config.task = "noisy_classifier"
    c = config.noisy_classifier
    c.ch = 16
    c.ch_mult = (1, 2, 2)
    c.num_res_blocks = 1
    c.attn_resolutions = ()
    c.dropout = 0.0
    c.norm_groups = 8
    c.steps = 1500
    c.batch_size = 64
    c.log_every = 100
    c.num_test_examples = 2000
    c.num_noise_bins = 10
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    o.grad_clip = 1.0
    return config
