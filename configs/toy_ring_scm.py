"""Continuous-time consistency training (sCM, Lu & Song 2025) on the 8-Gaussian ring, from scratch: the TrigFlow path
x_t = cos(t) x_0 + sin(t) z, z ~ N(0, sigma_d^2 I) (sigma_d = 2.85, the ring's per-coordinate std), the consistency
function f = cos(t) x - sin(t) sigma_d F(x / sigma_d, t) of the ring's toy MLP, trained with scm_loss: the tangent
cos(t) df/dt from one jax.jvp, warmed up over 1000 steps and normalised, times t = arctan(e^tau / sigma_d) with
tau ~ N(0.74, 1.4^2) (sCM's N(-1, 1.4^2) for sigma_d = 0.5, shifted by log(2.85 / 0.5)), the network told t / T. Ends with samples/final.npz
(one-step samples) and their energy distance to fresh ring samples; `--config.distill.sample_steps=2` re-noises once
at t = 1.1.

    python -m diffjax.main --config configs/toy_ring_scm.py --workdir W
    python -m diffjax.main --config configs/toy_ring_scm.py --workdir W --mode eval --config.distill.sample_steps=2
"""
from configs import toy_ring


def get_config():
    config = toy_ring.get_config()
    t = config.training
    t.sde = "trigflow"
    t.continuous = True
    t.n_iters = 6000
    config.model.sigma_data = 2.85
    config.model.time_input = ""
    config.optim.lr = 1e-3
    d = config.distill
    d.method = "scm"
    d.p_mean = 0.74
    d.p_std = 1.4
    d.tangent_warmup = 1000
    d.sample_steps = 1
    d.time_label_scale = 1.0  # the network sees t / T (sCM's c_noise(t) = t): 1-step energy distance -0.0015;
    # with MeanFlow's 50 t / T 0.052, with 5 t / T 0.0064 (2026-12-07, 6000 steps each)
    return config
