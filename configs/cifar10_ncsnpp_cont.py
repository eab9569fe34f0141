"""score-SDE's NCSN++ cont. (VE) on CIFAR-10 (configs/ve/cifar10_ncsnpp_continuous.py): VE SDE sigma 0.01..50,
continuous DSM summed over dimensions, NCSN++ (Fourier features of log sigma, FIR, residual input pyramid,
output / sigma), EMA 0.999, PC sampling: reverse-diffusion predictor + Langevin corrector (snr 0.16)."""
from configs import default


def get_config():
    config = default.get_config()
    t = config.training
    t.sde = "vesde"
    t.continuous = True
    t.loss = "dsm"
    t.reduce_mean = False
    m = config.model
    m.name = "ncsnpp_cifar10"
    m.parameterization = "score"
    m.scale_by_sigma = True
    m.time_input = "log_sigma"
    m.sigma_min = 0.01
    m.sigma_max = 50.0
    m.ema_rate = 0.999
    s = config.sampling
    s.method = "pc"
    s.options.snr = 0.16
    return config
