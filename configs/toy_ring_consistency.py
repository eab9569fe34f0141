"""Consistency training (iCT, Song & Dhariwal 2024) on the 8-Gaussian ring, no teacher: a one-step generator.

The ring's toy MLP (configs/toy_ring.py) wrapped as a consistency model f(x, t) (diffjax.distill.consistency_fn,
sigma_data = the ring's per-coordinate std), trained with ct_loss (squared L2, iCT's curriculum and log-normal
noise levels) on the VP SDE; about a minute on 2 CPU cores. Ends with samples/final.npz (one-step samples) and their
energy distance to fresh ring samples (one run on this machine: 0.018; two independent data draws: 0.002).

    python -m diffjax.main --config configs/toy_ring_consistency.py --workdir W
    python -m diffjax.main --config configs/toy_ring_consistency.py --workdir W --mode sample
    python -m diffjax.main --config configs/toy_ring_consistency.py --workdir W --mode sample \
        --config.distill.sample_steps=2
"""
from configs import toy_ring


def get_config():
    config = toy_ring.get_config()
    t = config.training
    t.n_iters = 4000
    t.log_freq = 500
    t.snapshot_freq = 2000
    t.checkpoint_freq = 2000
    t.snapshot_freq_for_preemption = 1000
    config.model.sigma_data = 2.85  # E[x^2] per coordinate of the ring: (16 + 2 * 0.35^2) / 2
    config.model.ema_rate = 0.999
    config.optim.lr = 1e-3
    d = config.distill
    d.method = "consistency_training"
    d.s0 = 10
    d.s1 = 640
    d.p_mean = 0.5  # log-normal noise levels centred near the data scale (iCT's -1.1 is for sigma_data = 0.5)
    d.p_std = 2.0
    d.metric = "l2"  # pseudo-Huber with c = 0.00054 sqrt(2) is |x - y| in 2-D; squared L2 trains better here
    d.sample_steps = 1
    return config
