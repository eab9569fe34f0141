"""Progressive distillation (Salimans & Ho 2022) of the best Fashion-MNIST budget model, rectified flow
(configs/fashion_mnist_budget_rf.py): 64 teacher DDIM steps halved in 6 rounds to a one-step student (the 32-, 16-,
8-, 4-, 2- and 1-step students are the round-end checkpoints).

On rectified flow's straight path DDIM is Euler's method on the flow ODE, so round 1's teacher is the budget model
sampled by 64 Euler steps. The student is the teacher's UNet with the teacher's velocity output, initialised from the
teacher's EMA parameters (round 1's student is the teacher exactly); each round trains ``steps_per_round`` steps of
pd_loss (truncated-SNR weighting, the process's grid: uniform in t) at batch 64 and makes its EMA student the next
round's teacher. Every round's last step is a kept checkpoint (``checkpoint_keep`` >= rounds). Train the teacher first:

    python -m diffjax.main --config configs/fashion_mnist_budget_rf.py --workdir T
    python -m diffjax.main --config configs/fashion_mnist_progressive.py --workdir W --config.distill.teacher_workdir=T
    python -m diffjax.main --config configs/fashion_mnist_progressive.py --workdir W --mode sample \
        --config.distill.teacher_workdir=T

(``--mode sample`` draws ``sampling.num_samples`` with the distilled step count of the newest checkpoint's round;
experiments/results/fmnist_few_step.py scores every round's student.)
"""
import os

from configs import fashion_mnist_budget_rf


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    t = config.training
    t.snapshot_freq_for_preemption = 50
    t.checkpoint_freq = 300
    t.checkpoint_keep = 8
    t.posthoc_ema_freq = 0
    m = config.model
    m.ema_rate = 0.999
    m.ema_schedule = "debiased"
    o = config.optim
    o.lr = 1e-4
    o.warmup = 0
    o.lr_decay = "constant"
    d = config.distill
    # the teacher run's own config (its checkpoint holds its training state, post-hoc EMA profiles included)
    d.teacher_config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_budget_rf.py")
    d.method = "progressive"
    d.start_steps = 64
    d.final_steps = 1
    d.steps_per_round = 300
    d.time_grid = "default"
    d.parameterization = ""  # the teacher's (velocity): round 1 starts as the teacher exactly
    return config
