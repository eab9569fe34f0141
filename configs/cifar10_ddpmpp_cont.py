"""score-SDE's DDPM++ cont. (VP) on CIFAR-10 (configs/vp/cifar10_ddpmpp_continuous.py): VP SDE beta 0.1..20,
continuous DSM with reduce_mean, the DDPM++ network (4 BigGAN blocks per level, EMA 0.9999), Euler-Maruyama
predictor with no corrector."""
from configs import default


def get_config():
    config = default.get_config()
    t = config.training
    t.sde = "vpsde"
    t.continuous = True
    t.loss = "dsm"
    t.reduce_mean = True
    m = config.model
    m.name = "ddpmpp_cifar10"
    m.parameterization = "eps"
    m.time_input = "continuous"
    m.ema_rate = 0.9999
    config.sampling.method = "euler_maruyama"
    return config
