"""MeanFlow (Geng et al. 2025) on the 8-Gaussian ring, from scratch: a flow map u(x_t, t, s) on rectified flow's
straight path whose one jump from T to 0 is a sample (diffjax.distill.flow_map).

The ring's toy MLP (configs/toy_ring.py) told the jump's length t - s as a second time (diffjax.nets.FlowMapNet),
trained with meanflow_loss: the target v - (t - s) du/dt from one jax.jvp, (t, s) uniform on 0 <= s <= t <= T with
s = t on half the batch, adaptive weight power 0.5. Ends with samples/final.npz (one-step samples) and their energy
distance to fresh ring samples; `--mode sample` with `--config.distill.sample_steps=2` jumps twice.

    python -m diffjax.main --config configs/toy_ring_meanflow.py --workdir W
    python -m diffjax.main --config configs/toy_ring_meanflow.py --workdir W --mode sample
"""
from configs import toy_ring


def get_config():
    config = toy_ring.get_config()
    t = config.training
    t.sde = "rectified_flow"
    t.continuous = True
    t.loss = "dsm"
    t.weighting = "flow_matching"
    t.n_iters = 6000
    t.log_freq = 500
    t.snapshot_freq = 3000
    t.checkpoint_freq = 3000
    t.snapshot_freq_for_preemption = 1000
    config.model.parameterization = "velocity"
    config.model.time_input = ""
    config.model.ema_rate = 0.999
    config.optim.lr = 2e-3
    d = config.distill
    d.method = "meanflow"
    d.time_sampling = "uniform"
    d.adaptive_power = 0.5
    d.sample_steps = 1
    return config
