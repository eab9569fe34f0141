"""DDPM on CIFAR-10 (Ho et al. 2020; score-SDE's configs/vp/ddpm/cifar10.py): the 35.7 M-parameter UNet, linear betas
1e-4..0.02 over T=1000, L_simple, batch 128, Adam 2e-4 with 5000 warmup steps, grad clip 1, EMA 0.9999,
dropout 0.1, random flips, ancestral sampling."""
from configs import default


def get_config():
    config = default.get_config()
    t = config.training
    t.sde = "vpsde"
    t.continuous = False
    t.loss = "ddpm"
    t.reduce_mean = True
    config.data.dataset = "cifar10"
    m = config.model
    m.name = "ddpm_cifar10"
    m.parameterization = "eps"
    m.time_input = "index"
    m.ema_rate = 0.9999
    config.sampling.method = "ancestral"
    config.sampling.num_steps = 1000
    config.sampling.clip_denoised = True  # Ho et al.'s sampler clips the predicted x0 to [-1, 1]
    return config
