"""Progressive distillation (Salimans & Ho 2022) of the Fashion-MNIST budget model (configs/fashion_mnist_budget.py):
64 teacher DDIM steps halved in 4 rounds to a 4-step student (--config.distill.final_steps=1 for one step, 6 rounds).

The student is the teacher's UNet with the teacher's eps output, initialised from the teacher's EMA parameters (round
1's student is the teacher exactly); each round trains ``steps_per_round`` steps of pd_loss (truncated-SNR weighting,
uniform time grid) at batch 64 and makes its EMA student the next round's teacher. Train the teacher first:

    python -m diffjax.main --config configs/fashion_mnist_budget.py --workdir T
    python -m diffjax.main --config configs/fashion_mnist_progressive.py --workdir W --config.distill.teacher_workdir=T
    python -m diffjax.main --config configs/fashion_mnist_progressive.py --workdir W --mode sample \
        --config.distill.teacher_workdir=T

(``--mode sample`` draws ``sampling.num_samples`` with the distilled step count of the newest checkpoint's round.)
Consistency distillation of the same teacher (one-step sampling): add ``--config.distill.method=
consistency_distillation`` (Heun teacher steps on 18 Karras times, pseudo-Huber, stop-gradient target).
"""
from configs import fashion_mnist_budget


def get_config():
    config = fashion_mnist_budget.get_config()
    t = config.training
    t.snapshot_freq_for_preemption = 100
    t.checkpoint_freq = 500
    t.posthoc_ema_freq = 0
    m = config.model
    m.ema_rate = 0.999
    m.ema_schedule = "debiased"
    o = config.optim
    o.lr = 1e-4
    o.warmup = 0
    o.lr_decay = "constant"
    d = config.distill
    d.method = "progressive"
    d.start_steps = 64
    d.final_steps = 4
    d.steps_per_round = 500
    d.time_grid = "uniform"
    d.parameterization = ""  # the teacher's (eps): round 1 starts as the teacher exactly
    config.sampling.clip_denoised = False
    return config
