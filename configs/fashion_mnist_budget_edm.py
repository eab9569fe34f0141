"""Fashion-MNIST at the quality budget with EDM (Karras et al. 2022): second best at that budget, behind rectified
flow (configs/fashion_mnist_budget_rf.py; experiments/results/README.md, "The ablation table").

configs/fashion_mnist_budget.py (same UNet, optimizer, EMA, data and 1500 x 64 image budget) with EDM's process
(``a = 1``, ``s = sigma`` in [0.002, 80]), its preconditioning (``c_skip``, ``c_out``, ``c_in``, ``c_noise``), its loss
weighting ``lambda(sigma)`` and log-normal ``sigma`` (P_mean -1.2, P_std 1.2); sampled with Heun's method on
Karras' rho = 7 grid, 25 steps (50 network evaluations), no clipping.

    python -m diffjax.main --config configs/fashion_mnist_budget_edm.py --workdir W
    python -m diffjax.main --config configs/fashion_mnist_budget_edm.py --workdir W --mode sample
"""
from configs import fashion_mnist_budget


def get_config():
    config = fashion_mnist_budget.get_config()
    t = config.training
    t.sde = "edm"
    t.continuous = True
    t.loss = "dsm"
    t.weighting = "edm"
    t.time_sampling = "edm_lognormal"
    m = config.model
    m.parameterization = "edm"
    m.time_input = ""  # the parameterization's own: EDM's c_noise = ln(sigma) / 4
    s = config.sampling
    s.method = "ode_heun"
    s.num_steps = 25
    s.clip_denoised = False
    s.options.time_grid = "karras"
    return config
