"""No sampler returns a non-finite value for finite input with settings it accepts.

Every sampler of ``diffjax.samplers`` (and score-SDE's conditional samplers ``inpaint`` / ``colorize``) runs on every
SDE it accepts, the cosine VP SDE included, with few (1, 3, 19) and many (1000) steps, driven by the exact score of
Gaussian data. Each setting either raises a ``ValueError`` that names ``num_steps`` and its value, or returns an
all-finite array; the largest step count is always accepted. The time goes into compiling (one scan per step count),
so one jit per (sampler, SDE) holds all the step counts and is compiled with XLA's cheap optimization level.
"""
import jax
import jax.numpy as jnp
import pytest

import diffjax as dj

S = dj.samplers
SDES = {"vp": dj.vp_sde(), "subvp": dj.subvp_sde(), "ve": dj.ve_sde(), "cosine_vp": dj.cosine_vp_sde(),
        "rectified_flow": dj.rectified_flow(), "edm": dj.edm_sde(),
        "gaussian_path": dj.gaussian_path(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t),
                                          T=0.999)}
ALL = tuple(SDES)
FEW = (1, 3, 19)  # 3: the contract tests' count; 19 < beta_max = 20 of vp_sde(); all < beta(1) = 439 of cosine
MANY = 1000
MU, S0 = 0.7, 0.5  # data N(MU, S0^2 I)
# Compile time dominates (the runs take milliseconds): XLA's backend optimizations off halve it. The same HLO runs.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# sampler -> (SDEs it accepts, step counts, options); every option not listed keeps its default.
SAMPLERS = {
    "euler_maruyama": (S.euler_maruyama, ALL, FEW + (MANY,), {}),
    "reverse_diffusion": (S.reverse_diffusion, ALL, FEW + (MANY,), {}),
    "pc": (S.pc, ALL, FEW + (MANY,), {}),
    "ancestral": (S.ancestral, ("vp", "ve", "cosine_vp"), FEW + (MANY,), {}),
    "annealed_langevin": (S.annealed_langevin, ("ve",), FEW + (232,), dict(n_steps_each=3)),  # levels
    "ode_euler": (S.ode_euler, ALL, FEW + (MANY,), {}),
    "ode_heun": (S.ode_heun, ALL, FEW + (MANY,), {}),
    "ode_adaptive": (S.ode_adaptive, ALL, (None,), dict(rtol=1e-3, atol=1e-3)),
    "ddim": (S.ddim, ("vp", "cosine_vp"), FEW + (MANY,), {}),
    "edm_heun": (S.edm_heun, ALL, FEW + (MANY,), {}),
    "edm_heun_churn": (S.edm_heun, ALL, FEW + (MANY,), dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)),
    "edm_heun_ddpm_grid": (S.edm_heun, ("vp", "cosine_vp"), FEW + (500,),  # 1000 levels: step 0's time < t_eps
                           dict(time_grid=S.ddpm_strided("trailing"))),
    "dpm_solver": (S.dpm_solver, ALL, FEW + (MANY,), {}),  # 2M; num_steps=1 < order: ValueError
    "dpm_solver_3m": (S.dpm_solver, ALL, FEW + (MANY,), dict(order=3)),
    "dpm_solver_3s": (S.dpm_solver, ALL, FEW + (MANY,), dict(order=3, method="singlestep")),
    "dpm_solver_sde": (S.dpm_solver, ALL, FEW + (MANY,), dict(sde_variant=True)),
    "unipc": (S.unipc, ALL, FEW + (MANY,), {}),  # UniPC-2, bh2
    "unipc_3_bh1": (S.unipc, ALL, FEW + (MANY,), dict(order=3, variant="bh1")),
}
CASES = [(name, sde) for name, (_, sdes, _, _) in SAMPLERS.items() for sde in sdes]


def gaussian_score(sde):
    """Exact score of the marginal of N(MU, S0^2 I) data, any shape ``(batch, *dims)``."""

    def score_fn(x, t):
        a, s = sde.marginal(jnp.broadcast_to(t, (x.shape[0],)))
        a, s = a.reshape((-1,) + (1,) * (x.ndim - 1)), s.reshape((-1,) + (1,) * (x.ndim - 1))
        return -(x - a * MU) / (a**2 * S0**2 + s**2)

    return score_fn


def _sweep(call, steps):
    """``call(key, n)`` for every ``n`` inside one jit: ``({n: output}, {n: ValueError message})``."""
    rejected = {}

    def run(key):
        outs = {}
        for n in steps:
            try:
                outs[n] = call(jax.random.fold_in(key, 0 if n is None else n), n)
            except ValueError as e:  # raised while tracing, before anything runs
                rejected[n] = str(e)
        return outs

    key = jax.random.key(0)
    return jax.jit(run).lower(key).compile(compiler_options=FAST_COMPILE)(key), rejected


def _check(outs, rejected, steps, shape):
    for n, msg in rejected.items():
        assert "num_steps" in msg and str(n) in msg, f"num_steps={n}: unclear ValueError {msg!r}"
    assert steps[-1] not in rejected, f"the largest step count {steps[-1]} was rejected: {rejected[steps[-1]]}"
    assert set(outs) | set(rejected) == set(steps)
    bad = {n: (out.shape, int(jnp.sum(~jnp.isfinite(out)))) for n, out in outs.items()
           if out.shape != shape or not bool(jnp.all(jnp.isfinite(out)))}
    assert not bad, f"non-finite (or misshapen) output, num_steps: (shape, non-finite entries): {bad}"


@pytest.mark.parametrize("name,sde_name", CASES)
def test_sampler_output_is_finite(name, sde_name):
    sampler, _, steps, options = SAMPLERS[name]
    sde = SDES[sde_name]
    x_T = sde.prior_sample(jax.random.key(1), (3, 2))
    score_fn = gaussian_score(sde)

    def call(key, n):
        kwargs = dict(options) if n is None else dict(options, num_steps=n)
        return sampler(key, x_T, score_fn, sde, **kwargs)

    outs, rejected = _sweep(call, steps)
    _check(outs, rejected, steps, x_T.shape)


INPAINT_STEPS = (1, 19, MANY)
COLORIZE_STEPS = (19,)  # the same PC-with-replacement loop as inpaint, in a rotated colour basis


@pytest.mark.parametrize("sde_name", ALL)
def test_inpaint_and_colorize_output_is_finite(sde_name):
    sde = SDES[sde_name]
    score_fn = gaussian_score(sde)
    image = MU + S0 * jax.random.normal(jax.random.key(2), (1, 4, 4, 3))
    mask = jnp.zeros((1, 4, 4, 1)).at[:, :, :2].set(1.0)
    outs, rejected = _sweep(lambda key, n: dj.inpaint(key, image, mask, score_fn, sde, num_steps=n), INPAINT_STEPS)
    _check(outs, rejected, INPAINT_STEPS, image.shape)
    gray = jnp.mean(image, axis=-1, keepdims=True)
    outs, rejected = _sweep(lambda key, n: dj.colorize(key, gray, score_fn, sde, num_steps=n), COLORIZE_STEPS)
    _check(outs, rejected, COLORIZE_STEPS, image.shape)


def test_sweep_detects_nan():
    """The check itself fails on a sampler that returns NaN for some step counts."""
    steps = (1, 3)
    outs, rejected = _sweep(lambda key, n: jnp.full((3, 2), jnp.nan if n == 3 else 0.0), steps)
    with pytest.raises(AssertionError, match="non-finite"):
        _check(outs, rejected, steps, (3, 2))
