"""score-SDE's NCSN++ on CelebA 64x64 with SMLD (configs/ve/celeba_ncsnpp.py): VE SDE sigma 0.01..90 with 1000
discrete levels (NCSN loss), NCSN++ with positional embedding of the level index, 4 BigGAN blocks per level,
EMA 0.999; images center-cropped to 140 and resized to 64; PC sampling (reverse diffusion + Langevin)."""
from configs import default


def get_config():
    config = default.get_config()
    t = config.training
    t.sde = "vesde"
    t.continuous = False
    t.loss = "ncsn"
    t.reduce_mean = False
    d = config.data
    d.dataset = "celeb_a"
    d.image_size = 64
    d.crop = 140
    m = config.model
    m.name = "ncsnpp_cifar10"
    m.overrides.embedding_type = "positional"
    m.overrides.image_size = 64
    m.parameterization = "score"
    m.scale_by_sigma = True
    m.time_input = "index"
    m.sigma_min = 0.01
    m.sigma_max = 90.0
    m.num_scales = 1000
    m.ema_rate = 0.999
    s = config.sampling
    s.method = "pc"
    s.options.snr = 0.16
    return config
