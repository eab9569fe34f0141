"""Rectified flow on the 8-Gaussian ring, the network told the raw time t in [0, 1] (model.time_input="t"): a
teacher whose network continuous-time consistency can tune (configs/toy_ring_scm.py with
distill.tune_teacher=True). A forward-mode derivative in t goes through the network's time embedding: with the
default labels 999 t the tuned student's tangent explodes (one-step energy distance 1.43), with t it does not.

    python -m diffjax.main --config configs/toy_ring_flow.py --workdir T
"""
from configs import toy_ring


def get_config():
    config = toy_ring.get_config()
    t = config.training
    t.sde = "rectified_flow"
    t.continuous = True
    t.loss = "dsm"
    t.weighting = "flow_matching"
    config.model.parameterization = "velocity"
    config.model.time_input = "t"
    config.sampling.method = "ode_heun"
    config.sampling.num_steps = 50
    return config
