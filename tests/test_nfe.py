"""Every sampler reports its score evaluations the same way: ``return_nfe=True`` gives ``(x, nfe)``, ``nfe`` an int32
0-d array, equal to the evaluations actually run and to the formula in the sampler's docstring.

The count is made on device: each case's ``score_fn`` runs a ``jax.debug.callback`` that increments a host-side
counter, so it counts every evaluation executed inside ``lax.scan`` / ``fori_loop`` / ``lax.switch`` / diffrax's
while loop (rejected adaptive steps included), not Python-level traces. All cases run inside one jit per step count.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from _fast_compile import FAST_COMPILE

# the module-scoped fixture is built once: every test of this file runs on one pytest-xdist worker
# (`--dist loadgroup` in .ci/run)
pytestmark = pytest.mark.xdist_group("test_nfe")

S = dj.samplers
VP, VE, EDM = dj.vp_sde(), dj.ve_sde(), dj.edm_sde()
MU, S0 = 0.7, 0.5


def gaussian_score(sde):
    def score_fn(x, t):
        a, s = sde.marginal(jnp.broadcast_to(t, (x.shape[0],)))
        a, s = a[:, None], s[:, None]
        return -(x - a * MU) / (a**2 * S0**2 + s**2)

    return score_fn


# name -> (sampler, process, kwargs of n, documented score evaluations of n); n runs over STEPS
CASES = {
    "euler_maruyama": (S.euler_maruyama, VP, lambda n: dict(num_steps=n), lambda n: n),
    "reverse_diffusion": (S.reverse_diffusion, VE, lambda n: dict(num_steps=n), lambda n: n),
    "pc": (S.pc, VP, lambda n: dict(num_steps=n), lambda n: 2 * n),
    "pc_em_2_langevin": (S.pc, VP, lambda n: dict(num_steps=n, predictor=S.euler_maruyama_step, n_corrector_steps=2),
                         lambda n: 3 * n),
    "pc_no_corrector": (S.pc, VP, lambda n: dict(num_steps=n, predictor=S.euler_maruyama_step, corrector=None),
                        lambda n: n),
    "pc_partial_langevin": (S.pc, VP, lambda n: dict(num_steps=n, predictor=None, corrector=functools.partial(
        S.langevin_corrector_step, n_steps=3)), lambda n: 3 * n),
    "ancestral_ddpm": (S.ancestral, VP, lambda n: dict(num_steps=20 + n), lambda n: 20 + n),  # > beta_max
    "ancestral_smld": (S.ancestral, VE, lambda n: dict(num_steps=n), lambda n: n),
    "annealed_langevin": (S.annealed_langevin, VE, lambda n: dict(num_steps=n, n_steps_each=3, denoise=True),
                          lambda n: 3 * n + 1),
    "ode_euler": (S.ode_euler, VP, lambda n: dict(num_steps=n, denoise=True), lambda n: n + 1),
    "ode_heun": (S.ode_heun, EDM, lambda n: dict(num_steps=n), lambda n: 2 * n),
    "ddim": (S.ddim, VP, lambda n: dict(num_steps=n, eta=0.5), lambda n: n),
    "edm_heun": (S.edm_heun, EDM, lambda n: dict(num_steps=n), lambda n: 2 * n - 1),
    "edm_heun_no_denoise": (S.edm_heun, VP, lambda n: dict(num_steps=n, denoise=False, s_churn=10.0),
                            lambda n: 2 * n - 2),
    "dpm_solver": (S.dpm_solver, VP, lambda n: dict(num_steps=n), lambda n: n),
    "dpm_solver_3s_denoise": (S.dpm_solver, EDM, lambda n: dict(num_steps=n, order=3, method="singlestep",
                                                                denoise=True), lambda n: n + 1),
    "dpm_solver_sde": (S.dpm_solver, VE, lambda n: dict(num_steps=n, sde_variant=True), lambda n: n),
    "unipc": (S.unipc, VP, lambda n: dict(num_steps=n, order=3), lambda n: n),
    "unipc_denoise": (S.unipc, EDM, lambda n: dict(num_steps=n, variant="bh1", denoise=True), lambda n: n + 1),
    # no num_steps: the controller's tolerance sets the count (3 and 5 -> rtol = atol = 1e-3, 1e-5)
    "ode_adaptive": (S.ode_adaptive, VP, lambda n: dict(rtol=10.0 ** -n, atol=10.0 ** -n), None),
}
STEPS = (3, 5)


class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1


def counting(score_fn, counter):
    """``score_fn`` that increments ``counter`` on the host each time it is evaluated on device."""

    def counted(x, t):
        jax.debug.callback(counter.add)
        return score_fn(x, t)

    return counted


@pytest.fixture(scope="module")
def counts():
    """``{(name, n): (reported nfe, counted evaluations)}`` for every case and step count."""
    out = {}
    for n in STEPS:
        counters = {name: Counter() for name in CASES}
        scores = {name: counting(gaussian_score(sde), counters[name]) for name, (_, sde, _, _) in CASES.items()}

        def run(key):
            res = {}
            for name, (sampler, sde, kwargs, _) in CASES.items():
                x_T = sde.prior_sample(jax.random.fold_in(key, len(res)), (2, 2))
                x, nfe = sampler(jax.random.fold_in(key, 100 + len(res)), x_T, scores[name], sde, return_nfe=True,
                                 **kwargs(n))
                res[name] = (x, nfe)
            return res

        key = jax.random.key(0)
        res = jax.jit(run).lower(key).compile(compiler_options=FAST_COMPILE)(key)
        jax.effects_barrier()
        for name, (x, nfe) in res.items():
            assert bool(jnp.all(jnp.isfinite(x))), (name, n, x)
            assert nfe.dtype == jnp.int32 and nfe.shape == (), (name, nfe)
            out[name, n] = (int(nfe), counters[name].n)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_reported_nfe_is_the_count_of_evaluations(name, counts):
    formula = CASES[name][3]
    for n in STEPS:
        reported, counted = counts[name, n]
        assert counted > 0, (name, n)
        assert reported == counted, f"{name}, n={n}: reported {reported}, evaluated {counted}"
        if formula is not None:
            assert reported == formula(n), f"{name}, n={n}: reported {reported}, documented {formula(n)}"
    if formula is None:  # adaptive: a tighter tolerance takes more evaluations
        assert counts[name, STEPS[1]][0] > counts[name, STEPS[0]][0]


def test_eager_call_reports_the_same_nfe():
    """Outside any jit (each sampler compiles itself) the count is the same; ``return_nfe=False`` returns x alone."""
    x_T = VP.prior_sample(jax.random.key(1), (2, 2))
    sc = gaussian_score(VP)
    x, nfe = S.pc(jax.random.key(2), x_T, sc, VP, num_steps=4, n_corrector_steps=2, return_nfe=True)
    assert isinstance(nfe, jax.Array) and nfe.dtype == jnp.int32 and int(nfe) == 12
    np.testing.assert_array_equal(x, S.pc(jax.random.key(2), x_T, sc, VP, num_steps=4, n_corrector_steps=2))
    assert isinstance(S.ode_euler(None, x_T, sc, VP, num_steps=3), jax.Array)


def _never_called(x, t):
    raise AssertionError("score_fn was traced before the arguments were checked")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_return_nfe_raises(name):
    sampler, sde, kwargs, _ = CASES[name]
    with pytest.raises(ValueError, match="return_nfe"):
        sampler(jax.random.key(0), jnp.zeros((2, 2)), _never_called, sde, return_nfe="yes", **kwargs(3))


def test_unknown_kernel_has_no_nfe():
    """pc's evaluation count is known for diffjax's kernels only: a user's kernel with return_nfe raises."""
    def my_predictor(key, x, t, t_next, score_fn, sde):
        return x, x

    with pytest.raises(ValueError, match="predictor"):
        S.pc(None, jnp.zeros((2, 2)), _never_called, VP, num_steps=3, predictor=my_predictor, return_nfe=True)
    with pytest.raises(ValueError, match="corrector"):
        S.pc(None, jnp.zeros((2, 2)), _never_called, VP, num_steps=3, corrector=functools.partial(my_predictor),
             return_nfe=True)
