"""Consistency distillation (Song et al. 2023, Algorithm 2) of the Fashion-MNIST EDM budget model
(configs/fashion_mnist_budget_edm.py): a one- to few-step generator from a trained teacher.

The student is diffjax.distill.consistency_fn around the teacher's UNet, whose raw network already takes EDM's
preconditioned input and noise label, so it starts from the teacher's EMA parameters (the paper's initialisation;
the rectified-flow teacher's velocity network takes other inputs, so EDM is the teacher here). Each step: a Karras
time pair of N = 18 on EDM's grid, one Heun step of the teacher's probability-flow ODE between them, the
pseudo-Huber distance (LPIPS needs pretrained weights, not available offline) between the student at the later
time and the stop-gradient student at the earlier one (iCT's target, ``target_ema = 0``; Song et al. 2023's CD
uses an EMA target instead, ``target_ema = 0.95``); Adam 1e-4, batch 64.

    python -m diffjax.main --config configs/fashion_mnist_budget_edm.py --workdir T
    python -m diffjax.main --config configs/fashion_mnist_consistency_distillation.py --workdir W \
        --config.distill.teacher_workdir=T
    python -m diffjax.main --config configs/fashion_mnist_consistency_distillation.py --workdir W --mode sample \
        --config.distill.sample_steps=2
"""
import os

from configs import fashion_mnist_budget_edm


def get_config():
    config = fashion_mnist_budget_edm.get_config()
    t = config.training
    t.n_iters = 1500
    t.posthoc_ema_freq = 0
    t.snapshot_freq_for_preemption = 50
    t.checkpoint_freq = 500
    m = config.model
    m.ema_rate = 0.999
    m.ema_schedule = "debiased"
    m.sigma_data = 0.5
    o = config.optim
    o.lr = 1e-4
    o.warmup = 0
    o.lr_decay = "constant"
    d = config.distill
    # the teacher run's own config (its checkpoint holds its training state, post-hoc EMA profiles included)
    d.teacher_config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_budget_edm.py")
    d.method = "consistency_distillation"
    d.num_scales = 18
    d.ode_step = "heun"
    d.target_ema = 0.0
    d.metric = "pseudo_huber"
    d.sample_steps = 1
    return config
