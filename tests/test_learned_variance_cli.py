"""A hybrid-loss (learned-variance) DDPM config samples with its learned variance through the CLI's sampling path
(config_lib.build_sampling_score_fn + build_sampler + main.Run.sample), clip_denoised included. (The subprocess
``python -m diffjax.main --mode sample`` on such a config was checked by hand: it trains for minutes on a CPU.)"""
import os
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import fashion_mnist_ddpm  # noqa: E402
from diffjax import config_lib  # noqa: E402
from diffjax import run as drun  # noqa: E402
import diffjax as dj  # noqa: E402
from _fast_compile import FAST_COMPILE  # noqa: E402



def _config(method):
    c = fashion_mnist_ddpm.get_config()
    c.training.loss = "hybrid"
    o = c.model.overrides
    o.learn_sigma = True
    o.ch, o.ch_mult, o.attn_resolutions, o.dropout = 8, (1,), (), 0.0
    c.model.num_scales = 40
    c.training.batch_size = 8
    c.sampling.method, c.sampling.num_steps, c.sampling.clip_denoised = method, (0 if method == "ancestral" else 8), True
    if method == "ddim":
        c.sampling.options.eta = 1.0
    return c


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
def test_hybrid_model_samples_with_learned_variance(method):
    cfg = _config(method)
    config_lib.validate(cfg, device_count=jax.device_count())
    run = drun.Run(cfg, None)
    key = jax.random.key(cfg.seed)  # run.fresh_state()'s program (the same initial state, bit for bit), compiled
    # without XLA's backend optimisations: the UNet's init runs once, and its optimised compile took most of this test
    params = jax.jit(run._create, out_shardings=run.shardings).lower(key).compile(compiler_options=FAST_COMPILE)(
        key).ema_params
    score_fn = config_lib.build_sampling_score_fn(cfg, run.model, run.sde, params)
    assert dj.has_learned_variance(score_fn)  # clip_denoised keeps v; the sampler's default is then "learned"
    x = run.sample(params, jax.random.key(0), 8)
    assert x.shape == (8, 28, 28, 1) and np.all(np.isfinite(x))
    assert np.abs(x).max() <= 1.0 + 1e-5  # clipped x0 at the last step
