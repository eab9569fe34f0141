"""Fashion-MNIST at the quality budget with rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023):
the best recipe measured so far (experiments/results/README.md, "The ablation table").

configs/fashion_mnist_budget.py (same UNet, optimizer, EMA, data and 1500 x 64 image budget) on the straight path
``x_t = (1 - t) x_0 + t eps``, the network predicting the velocity ``eps - x_0`` with the conditional flow-matching
loss and logit-normal times (SD3, Esser et al. 2024); sampled by Heun's method on the flow ODE, 25 uniform steps
(50 network evaluations; Euler's 50 steps, rectified flow's own sampler, scores a little worse), no clipping.

    python -m diffjax.main --config configs/fashion_mnist_budget_rf.py --workdir W
    python -m diffjax.main --config configs/fashion_mnist_budget_rf.py --workdir W --mode sample
"""
from configs import fashion_mnist_budget


def get_config():
    config = fashion_mnist_budget.get_config()
    t = config.training
    t.sde = "rectified_flow"
    t.continuous = True
    t.loss = "dsm"
    t.weighting = "flow_matching"
    t.time_sampling = "logit_normal"
    m = config.model
    m.parameterization = "velocity"
    m.time_input = ""  # the parameterization's own
    s = config.sampling
    s.method = "ode_heun"
    s.num_steps = 25
    s.clip_denoised = False
    return config
