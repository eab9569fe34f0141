"""CPU smoke test: a tiny MLP on the 8-Gaussian ring, a few steps, everything (logs, checkpoints, snapshots)."""
from configs import default


def get_config():
    config = default.get_config()
    t = config.training
    t.batch_size = 16
    t.n_iters = 8
    t.n_jitted_steps = 2
    t.log_freq = 2
    t.snapshot_freq = 4
    t.checkpoint_freq = 4
    t.snapshot_freq_for_preemption = 2
    t.checkpoint_keep = 2
    t.reduce_mean = True
    config.data.dataset = "ring8"
    config.model.name = "toy_mlp"
    config.model.overrides.hidden = (32, 32)
    config.model.overrides.embedding_dim = 16
    config.model.ema_rate = 0.9
    config.optim.warmup = 2
    config.optim.lr = 1e-3
    config.sampling.method = "euler_maruyama"
    config.sampling.num_steps = 10
    config.sampling.snapshot_num = 64
    config.sampling.num_samples = 32
    config.sampling.batch_size = 32
    config.sampling.final_num_samples = 64
    return config
