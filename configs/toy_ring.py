"""The README's main job: 8 Gaussians on a circle (radius 4, std 0.35), VP SDE, continuous DSM, an MLP.

A minute or two on 2 CPU cores. Ends by writing samples/final.npz (``x``: EMA samples), samples/final.png (scatter
next to the true ring) and the energy distance to fresh ring samples.
"""
from configs import default


def get_config():
    config = default.get_config()
    t = config.training
    t.batch_size = 512
    t.n_iters = 6000
    t.n_jitted_steps = 100
    t.multi_step = "scan"  # an MLP: one lax.scan of the 100 steps (fast on CPU too), not 100 dispatches
    t.log_freq = 500
    t.snapshot_freq = 3000
    t.checkpoint_freq = 3000
    t.snapshot_freq_for_preemption = 1000
    t.reduce_mean = True
    config.data.dataset = "ring8"
    config.model.name = "toy_mlp"
    config.model.overrides.hidden = (128, 128, 128)
    config.model.ema_rate = 0.999
    config.optim.lr = 2e-3
    config.optim.warmup = 200
    config.sampling.method = "euler_maruyama"
    config.sampling.num_steps = 500
    config.sampling.snapshot_num = 1000
    config.sampling.num_samples = 2000
    config.sampling.batch_size = 2000
    config.sampling.final_num_samples = 2000
    return config
