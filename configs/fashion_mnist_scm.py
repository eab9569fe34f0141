"""Continuous-time consistency training (sCM, Lu & Song 2025) on Fashion-MNIST from scratch, at the budget's training
length: the budget UNet (configs/fashion_mnist_budget_rf.py: same recipe, 1500 steps x 64 images) as TrigFlow's
network F(x / sigma_d, t) with sigma_d = 0.5 (the images in [-1, 1]), the consistency function
f = cos(t) x - sin(t) sigma_d F, trained with scm_loss: tau ~ N(-1, 1.4^2) (the paper's), the tangent warmed up over
the first 300 steps (a fifth of the run) and normalised, the network told t / T (the ring's best time label, see
configs/toy_ring_scm.py). One step from T, or two with a re-noising at t = 1.1 (distill.sample_steps=2).

    python -m diffjax.main --config configs/fashion_mnist_scm.py --workdir W
    python -m diffjax.main --config configs/fashion_mnist_scm.py --workdir W --mode sample \\
        --config.distill.sample_steps=2
"""
from configs import fashion_mnist_budget_rf


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    t = config.training
    t.sde = "trigflow"
    t.posthoc_ema_freq = 0
    t.snapshot_freq_for_preemption = 50
    config.model.sigma_data = 0.5
    d = config.distill
    d.method = "scm"
    d.p_mean = -1.0
    d.p_std = 1.4
    d.tangent_warmup = 300
    d.time_label_scale = 1.0
    d.sample_steps = 1
    return config
