"""Consistency training (iCT, Song & Dhariwal 2024) on Fashion-MNIST from scratch: a one-step generator, no teacher.

The budget UNet (configs/fashion_mnist_budget.py) as the raw network of diffjax.distill.consistency_fn on EDM's
process (sigma in [0.002, 80], sigma_data = 0.5), trained with ct_loss: pseudo-Huber metric, 1 / (sigma_{i+1} -
sigma_i) weighting, log-normal noise levels, the discretization curriculum from 10 to 1280 intervals over
training.n_iters (1500: the budget teacher's training length, so CT and the models it is compared with see the
same 96,000 training images), no EMA teacher (stop-gradient student); Adam 1e-4, batch 64.

    python -m diffjax.main --config configs/fashion_mnist_consistency.py --workdir W
    python -m diffjax.main --config configs/fashion_mnist_consistency.py --workdir W --mode sample
    python -m diffjax.main --config configs/fashion_mnist_consistency.py --workdir W --mode sample \
        --config.distill.sample_steps=2
"""
from configs import fashion_mnist_budget


def get_config():
    config = fashion_mnist_budget.get_config()
    t = config.training
    t.sde = "edm"
    t.continuous = True
    t.loss = "dsm"
    t.n_iters = 1500  # the budget's length (the curriculum doubles its intervals every 1500 / 8 = 187.5 steps)
    t.posthoc_ema_freq = 0
    t.checkpoint_freq = 500
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 50
    m = config.model
    m.parameterization = "edm"
    m.time_input = "edm"
    m.sigma_data = 0.5
    m.ema_rate = 0.999  # averages the last ~1000 steps (0.9999 would average the whole short run)
    m.ema_schedule = "debiased"
    o = config.optim
    o.lr = 1e-4
    o.warmup = 0
    o.lr_decay = "constant"
    s = config.sampling
    s.method = "edm_heun"
    s.num_steps = 18
    s.clip_denoised = False
    d = config.distill
    d.method = "consistency_training"
    d.s0, d.s1 = 10, 1280
    d.p_mean, d.p_std = -1.1, 2.0
    d.metric = "pseudo_huber"
    d.sample_steps = 1
    return config
