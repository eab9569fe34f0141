"""Fashion-MNIST at the quality budget: 1500 optimizer steps x 64 images (96,000 images), a UNet of at most
1.7 M parameters, a sampler of at most 50 network evaluations (experiments/results/README.md, "Quality per compute").

The recipe, on top of configs/fashion_mnist_ddpm.py (DDPM's discrete VP chain, linear betas 1e-4 .. 0.02, T = 1000,
eps prediction, L_simple); each choice is to be measured in the ablation table there:

* a UNet (32, 64, 64) with two residual blocks per level and attention at 14x14 (1.6 M parameters), no dropout;
* Adam at 1e-3 with 100 warm-up steps and cosine decay to zero at step 1500, gradient clipping at 1;
* EMA 0.995 with debiasing (warm-up), and EDM2 power EMAs written every 100 steps for post-hoc EMA selection;
* DDIM with 50 steps and x0 clipping.

    python -m diffjax.main --config configs/fashion_mnist_budget.py --workdir W
    python -m diffjax.main --config configs/fashion_mnist_budget.py --workdir W --mode sample
"""
from configs import fashion_mnist_ddpm


def get_config():
    config = fashion_mnist_ddpm.get_config()
    t = config.training
    t.batch_size = 64
    t.n_iters = 1500
    t.n_jitted_steps = 1  # one step per call (with training.multi_step='unroll', five copies took 20+ min to compile)
    t.log_freq = 50
    t.snapshot_freq = 500
    t.checkpoint_freq = 500
    t.snapshot_freq_for_preemption = 100
    t.snapshot_sampling = False
    t.posthoc_ema_freq = 100
    m = config.model
    m.overrides.num_res_blocks = 2
    m.overrides.attn_resolutions = (14,)
    m.overrides.dropout = 0.0
    m.ema_rate = 0.995
    m.ema_schedule = "debiased"
    m.posthoc_sigma_rels = (0.05, 0.10)
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    o.lr_decay = "cosine"
    o.lr_final = 0.0
    s = config.sampling
    s.method = "ddim"
    s.num_steps = 50
    s.num_samples = 1000
    s.batch_size = 250
    return config
