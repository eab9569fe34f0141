"""Fashion-MNIST with the continuous VP SDE (beta 0.1 .. 20): continuous DSM (sigma^2 weighting, eps prediction,
time input 999 t), reverse-SDE Euler-Maruyama sampling."""
from configs import fashion_mnist_ddpm


def get_config():
    config = fashion_mnist_ddpm.get_config()
    config.training.continuous = True
    config.training.loss = "dsm"
    config.model.time_input = "continuous"
    config.sampling.method = "euler_maruyama"
    config.sampling.num_steps = 1000
    return config
