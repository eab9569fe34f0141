"""MeanFlow (Geng et al. 2025) on Fashion-MNIST from scratch: a flow map u(x_t, t, s) on rectified flow's path,
sampled in one jump (or 2, 4: distill.sample_steps), at the budget's training length.

The budget UNet (configs/fashion_mnist_budget_rf.py: same recipe, 1500 steps x 64 images) told the jump's length as a
second time (diffjax.nets.FlowMapNet), trained with meanflow_loss: the target v - (t - s) du/dt from one jax.jvp of
the UNet, (t, s) uniform on 0 <= s <= t <= T with s = t on half the batch (long jumps as often as short ones: the
ring needed it for one-step samples), adaptive weight power 0.5; time labels 50 t / T (distill.time_label_scale).

    python -m diffjax.main --config configs/fashion_mnist_meanflow.py --workdir W
    python -m diffjax.main --config configs/fashion_mnist_meanflow.py --workdir W --mode sample \
        --config.distill.sample_steps=2
"""
from configs import fashion_mnist_budget_rf


def get_config():
    config = fashion_mnist_budget_rf.get_config()
    t = config.training
    t.posthoc_ema_freq = 0
    t.snapshot_freq_for_preemption = 50
    d = config.distill
    d.method = "meanflow"
    d.time_sampling = "uniform"
    d.adaptive_power = 0.5
    d.sample_steps = 1
    return config
