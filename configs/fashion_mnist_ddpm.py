"""DDPM on Fashion-MNIST: VP SDE discretized as DDPM (linear betas 1e-4..0.02, T=1000), L_simple (eps prediction),
the step index as the network's time input, ancestral sampling. A small UNet that trains on a CPU."""
from configs import default


def get_config():
    config = default.get_config()
    t = config.training
    t.sde = "vpsde"
    t.continuous = False
    t.loss = "ddpm"
    t.reduce_mean = True
    t.batch_size = 128
    t.n_iters = 30000
    t.n_jitted_steps = 5
    t.log_freq = 100
    t.snapshot_freq = 5000
    t.checkpoint_freq = 5000
    t.snapshot_freq_for_preemption = 1000
    d = config.data
    d.dataset = "fashion_mnist"
    d.image_size = 28
    d.num_channels = 1
    d.random_flip = False
    m = config.model
    m.name = "fashion_mnist_small"
    # listed so that each can be overridden on the command line (--config.model.overrides.ch=64)
    m.overrides.ch = 32
    m.overrides.ch_mult = (1, 2, 2)
    m.overrides.num_res_blocks = 1
    m.overrides.attn_resolutions = (7,)
    m.overrides.dropout = 0.1
    m.parameterization = "eps"
    m.time_input = "index"
    m.num_scales = 1000         # vp_sde(0.1, 20, N=1000) discretizes to DDPM's betas 1e-4 .. 0.02
    m.ema_rate = 0.9995
    config.optim.warmup = 1000
    s = config.sampling
    s.method = "ancestral"
    s.num_steps = 1000
    s.clip_denoised = True  # Ho et al.'s sampler clips the predicted x0 to [-1, 1]
    return config
