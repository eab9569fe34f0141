"""NCSN on Fashion-MNIST: VE SDE with L=10 geometric noise levels (NCSN's sigma_1 = 1 .. sigma_10 = 0.01, doubled
for data in [-1, 1]), NCSN's loss, a noise-conditional score network fed log(sigma) (Fourier features, output
divided by sigma), annealed Langevin dynamics (100 steps per level)."""
from configs import fashion_mnist_ddpm


def get_config():
    config = fashion_mnist_ddpm.get_config()
    t = config.training
    t.sde = "vesde"
    t.loss = "ncsn"
    m = config.model
    m.sigma_min = 0.02
    m.sigma_max = 2.0
    m.num_scales = 10
    m.parameterization = "score"
    m.scale_by_sigma = True
    m.time_input = "log_sigma"
    m.overrides.embedding_type = "fourier"
    s = config.sampling
    s.method = "annealed_langevin"
    s.num_steps = 10
    s.options.n_steps_each = 100
    return config
