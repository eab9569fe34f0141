"""Samplers against ground truth: exact Gaussian-mixture scores, a Gaussian with a closed-form flow, and the
pure-function contract (one trace per shape, vmap, sharding, validation before tracing)."""
import dataclasses
import functools

import chex
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import diffjax as dj
from diffjax.eval.sample_distances import energy_distance, mmd_rbf

S = dj.samplers
SDES = {"vp": dj.vp_sde(), "subvp": dj.subvp_sde(), "ve": dj.ve_sde(), "cosine_vp": dj.cosine_vp_sde()}
RING = dj.ring_mixture()
N_POINTS = 2000

# (sampler, SDEs it supports, options). Samplers whose published default is 1000 steps run with fewer here (the
# exact score makes them accurate well before that); test_all_defaults_cheap_case runs one with every default.
FEWER = dict(num_steps=200)
SAMPLERS = {
    "euler_maruyama": (S.euler_maruyama, ("vp", "subvp", "ve"), FEWER),
    "reverse_diffusion": (S.reverse_diffusion, ("vp", "subvp", "ve"), FEWER),
    "ancestral": (S.ancestral, ("vp", "ve", "cosine_vp"), FEWER),
    "pc": (S.pc, ("vp", "subvp", "ve", "cosine_vp"), dict(num_steps=100)),
    "pc_em": (S.pc, ("vp",), dict(num_steps=100, predictor=S.euler_maruyama_step)),
    "annealed_langevin": (S.annealed_langevin, ("ve",), dict(n_steps_each=20)),
    "ode_euler": (S.ode_euler, ("vp", "subvp", "ve"), FEWER),
    "ode_heun": (S.ode_heun, ("vp", "subvp", "ve", "cosine_vp"), {}),
    "ode_adaptive": (S.ode_adaptive, ("vp", "subvp", "ve"), {}),
    "ddim": (S.ddim, ("vp", "cosine_vp"), {}),
    "ddim_eta1": (S.ddim, ("vp",), dict(eta=1.0)),
}
CASES = [(name, sde) for name, (_, sdes, _) in SAMPLERS.items() for sde in sdes]


@pytest.fixture(scope="module")
def data():
    return RING.sample(jax.random.key(1), N_POINTS)


@pytest.fixture(scope="module")
def tolerance():
    """4 x the RMS energy distance between two independent data draws of the sampler's size (8 pairs)."""
    eds = [float(energy_distance(RING.sample(jax.random.key(100 + 2 * i), N_POINTS),
                                 RING.sample(jax.random.key(101 + 2 * i), N_POINTS))) for i in range(8)]
    return 4.0 * float(np.sqrt(np.mean(np.square(eds))))


def _prior(sde, n=N_POINTS, seed=7):
    return sde.prior_sample(jax.random.key(seed), (n, 2))


@pytest.mark.parametrize("name,sde_name", CASES)
def test_sampler_reproduces_mixture(name, sde_name, data, tolerance):
    sampler, _, options = SAMPLERS[name]
    sde = SDES[sde_name]
    out = sampler(jax.random.key(3), _prior(sde), dj.mixture_score_fn(RING, sde), sde, **options)
    assert out.shape == (N_POINTS, 2) and bool(jnp.all(jnp.isfinite(out)))
    ed = float(energy_distance(out, data))
    assert ed < tolerance, f"{name} on {sde_name}: energy distance {ed:.4f} >= tolerance {tolerance:.4f}"


def test_distance_detects_wrong_distribution(data, tolerance):
    """The same pipeline with a 10%-too-small ring, or with far too few steps, fails the tolerance."""
    sde = SDES["vp"]
    wrong = dj.mixture_score_fn(dj.ring_mixture(radius=3.6), sde)
    out = S.ode_heun(jax.random.key(3), _prior(sde), wrong, sde)
    assert float(energy_distance(out, data)) > tolerance
    out = S.ode_euler(jax.random.key(3), _prior(sde), dj.mixture_score_fn(RING, sde), sde, num_steps=3)
    assert float(energy_distance(out, data)) > tolerance


def test_all_defaults_cheap_case(data, tolerance):
    sde = SDES["vp"]
    score_fn = dj.mixture_score_fn(RING, sde)
    out = S.ancestral(jax.random.key(4), _prior(sde), score_fn, sde)  # DDPM: 1000 steps
    assert float(energy_distance(out, data)) < tolerance


def test_sample_distances():
    a = RING.sample(jax.random.key(0), 500)
    b = RING.sample(jax.random.key(1), 500)
    # Exact definition on a small case.
    x, y = a[:20], b[:30]
    d = lambda u, v: np.linalg.norm(np.asarray(u)[:, None] - np.asarray(v)[None], axis=-1)  # noqa: E731
    ref = 2 * d(x, y).mean() - d(x, x).sum() / (20 * 19) - d(y, y).sum() / (30 * 29)
    np.testing.assert_allclose(float(energy_distance(x, y)), ref, rtol=1e-4)
    k = lambda u, v: np.exp(-d(u, v) ** 2 / 2.0)  # noqa: E731
    ref = (k(x, x).sum() - 20) / (20 * 19) + (k(y, y).sum() - 30) / (30 * 29) - 2 * k(x, y).mean()
    np.testing.assert_allclose(float(mmd_rbf(x, y, bandwidth=1.0)), ref, rtol=1e-4, atol=1e-7)
    # Same law ~ 0, shifted law clearly positive; extra dims are flattened.
    assert abs(float(mmd_rbf(a, b))) < 0.01 < float(mmd_rbf(a, b + 1.0))
    np.testing.assert_allclose(float(energy_distance(a.reshape(500, 1, 2), b.reshape(500, 2, 1))),
                               float(energy_distance(a, b)), rtol=1e-5)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(a, b, bandwidth=-1.0)


# ------------------------------------------------------------------------------------ convergence order


def _gaussian_case():
    """Data N(mu, s0^2 I): the flow maps x_T to a(t) mu + sigma(t)/sigma(T) (x_T - a(T) mu) exactly,
    sigma(t)^2 = a(t)^2 s0^2 + std(t)^2."""
    sde = dj.vp_sde()
    mu, s0 = jnp.array([[1.5, -0.5]]), 0.5
    gauss = dj.gaussian_mixture(jnp.ones(1), mu, s0)
    x_T = sde.prior_sample(jax.random.key(0), (256, 2))
    t_eps = 1e-3

    def marg(t):
        a, s = sde.marginal(jnp.float32(t))
        return a, jnp.sqrt(a**2 * s0**2 + s**2)

    (a0, sig0), (aT, sigT) = marg(t_eps), marg(sde.T)
    exact = a0 * mu + sig0 / sigT * (x_T - aT * mu)
    return sde, dj.mixture_score_fn(gauss, sde), x_T, exact, t_eps


@pytest.mark.parametrize("sampler,order,steps", [(S.ode_euler, 1.0, (16, 32, 64)), (S.ode_heun, 2.0, (4, 8, 16))])
def test_convergence_order(sampler, order, steps):
    sde, score_fn, x_T, exact, t_eps = _gaussian_case()
    errs = [float(jnp.max(jnp.abs(sampler(jax.random.key(0), x_T, score_fn, sde, num_steps=n, t_eps=t_eps) - exact)))
            for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.25, (slope, errs)


def test_ode_adaptive_accuracy_and_nfe():
    sde, score_fn, x_T, exact, t_eps = _gaussian_case()
    calls = []

    def counting(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return score_fn(x, t)

    for solver in (None, diffrax.Tsit5(), diffrax.Bosh3()):  # None: diffrax.Dopri5()
        calls.clear()
        x, nfe = S.ode_adaptive(jax.random.key(0), x_T, counting, sde, t_eps=t_eps, solver=solver, return_nfe=True)
        jax.effects_barrier()
        assert int(nfe) == len(calls) > 0
        assert bool(jnp.all(jnp.isfinite(x)))
        assert float(jnp.max(jnp.abs(x - exact))) < 1e-3


def test_ode_adaptive_solver_objects_compare_by_value_no_retrace():
    """The solver is a diffrax object and a jit static argument: a fresh ``diffrax.Tsit5()`` equals (and hashes
    like) the last one, so a second call compiles nothing; another solver traces once more."""
    sde, score_fn, x_T, _, t_eps = _gaussian_case()
    traces = []

    def traced_score(x, t):
        traces.append(1)  # Python side effect: runs only while tracing
        return score_fn(x, t)

    run = lambda solver: S.ode_adaptive(jax.random.key(0), x_T, traced_score, sde, t_eps=t_eps, rtol=1e-3,  # noqa
                                        atol=1e-3, solver=solver)
    first = run(diffrax.Tsit5())
    n = len(traces)
    assert n > 0
    chex.assert_trees_all_equal(run(diffrax.Tsit5()), first)
    assert len(traces) == n
    run(diffrax.Dopri5())
    assert len(traces) > n
    assert bool(jnp.all(jnp.isfinite(first)))


# ----------------------------------------------------------------------------------------- the contract

SCORES = {name: dj.mixture_score_fn(RING, sde) for name, sde in SDES.items()}
CONTRACT_BATCH = 16


def _contract_calls():
    """(name, call(key, x, score_fn), sde name) for every sampler, few steps; VE only where VP is unsupported."""
    few = dict(num_steps=3)
    vp = [
        ("euler_maruyama", functools.partial(S.euler_maruyama, **few)),
        ("reverse_diffusion", functools.partial(S.reverse_diffusion, **few)),
        ("pc", functools.partial(S.pc, **few)),
        ("ancestral", functools.partial(S.ancestral, num_steps=25)),  # DDPM betas beta(t)/N < 1 needs N > 20
        ("ddim", functools.partial(S.ddim, eta=0.5, **few)),
        ("ode_euler", functools.partial(S.ode_euler, **few)),
        ("ode_heun", functools.partial(S.ode_heun, **few)),
        ("ode_adaptive", functools.partial(S.ode_adaptive, rtol=1e-3, atol=1e-3)),
    ]
    ve = [("annealed_langevin", functools.partial(S.annealed_langevin, num_steps=2, n_steps_each=2))]
    return [(name, lambda k, x, s, f=f, e=SDES[e]: f(k, x, s, e), e) for e, group in (("vp", vp), ("ve", ve))
            for name, f in group]


CONTRACT = _contract_calls()


TRACES = {name: [] for name in SDES}


def _counting(sde_name):
    def score_fn(x, t):
        TRACES[sde_name].append(1)  # runs only while tracing
        return SCORES[sde_name](x, t)

    return score_fn


COUNTED = {name: _counting(name) for name in SDES}


@pytest.mark.parametrize("name,call,sde_name", CONTRACT, ids=[c[0] for c in CONTRACT])
def test_traces_once_per_shape_and_vmaps(name, call, sde_name):
    sde, score_fn, traces = SDES[sde_name], COUNTED[sde_name], TRACES[sde_name]
    xs = sde.prior_sample(jax.random.key(6), (2, CONTRACT_BATCH, 2))
    keys = jax.random.split(jax.random.key(5), 2)
    looped = [call(keys[i], xs[i], score_fn) for i in range(2)]  # same shape, new values and key: no retrace
    n = len(traces)
    call(keys[0], xs[1] + 1.0, score_fn)
    assert len(traces) == n > 0
    # Inside a user's jit and vmap: traced once for one shape, and the same numbers as the direct calls.
    chex.clear_trace_counter()
    batched = jax.jit(chex.assert_max_traces(lambda k, x: jax.vmap(lambda k, x: call(k, x, score_fn))(k, x), n=1))
    batched(keys, xs + 1.0)
    out = batched(keys, xs)
    # assert_trees_all_close treats NaN as equal to NaN: the outputs must also be finite.
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(jnp.stack(looped)))), name
    chex.assert_trees_all_close(out, jnp.stack(looped), atol=1e-4, rtol=1e-4)


def _mesh_sharding(axis_type):
    assert jax.device_count() == 8
    types = (jax.sharding.AxisType.Explicit if axis_type == "explicit" else jax.sharding.AxisType.Auto,)
    return NamedSharding(jax.make_mesh((8,), ("data",), axis_types=types), P("data", None))


SHARDING_CASES = [(c, "explicit") for c in CONTRACT] + [(c, "auto") for c in CONTRACT
                                                       if c[0] == "ode_adaptive"]


@pytest.mark.parametrize("case,axis_type", SHARDING_CASES, ids=[f"{c[0]}-{a}" for c, a in SHARDING_CASES])
def test_output_keeps_input_sharding(case, axis_type):
    """Batch sharded over 8 devices (jax.make_mesh's default Explicit axes, and Auto): same sharding out,
    same numbers as unsharded."""
    name, call, sde_name = case
    sharding = _mesh_sharding(axis_type)
    x = SDES[sde_name].prior_sample(jax.random.key(6), (2, CONTRACT_BATCH, 2))[0]
    out = call(jax.random.key(0), jax.device_put(x, sharding), COUNTED[sde_name])
    assert out.sharding.is_equivalent_to(sharding, 2), out.sharding
    ref = call(jax.random.key(0), x, COUNTED[sde_name])
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(ref))), name  # NaN == NaN in chex
    chex.assert_trees_all_close(out, ref, atol=1e-4, rtol=1e-4)


def _no_trace(x, t):
    raise AssertionError("score_fn must not be traced when the arguments are invalid")


BAD = [
    (S.euler_maruyama, "vp", dict(num_steps=0), "num_steps.*0"),
    (S.reverse_diffusion, "vp", dict(num_steps=2.5), "num_steps.*2.5"),
    (S.pc, "ve", dict(t_eps=0.0), "t_eps.*0.0"),
    (S.ode_euler, "vp", dict(t_eps=1.5), "t_eps.*1.5"),
    (S.ode_heun, "vp", dict(t_eps=-1e-3), "t_eps.*-0.001"),
    (S.ode_adaptive, "vp", dict(solver="dopri5"), "solver must be an explicit Runge-Kutta solver of diffrax.*dopri5"),
    (S.ode_adaptive, "vp", dict(solver=diffrax.Euler()), "solver.*Euler"),
    (S.ode_adaptive, "vp", dict(rtol=0.0), "rtol.*0.0"),
    (S.ancestral, "vp", dict(variance="learned"), "variance.*learned"),
    (S.ancestral, "subvp", {}, "sde.*SubVPSDE"),
    (S.ancestral, "vp", dict(num_steps=10), "num_steps=10.*beta"),
    (S.ancestral, "vp", dict(num_steps=2), "num_steps=2 .*num_steps=1 .*ddim.*eta=1.0.*trailing"),
    (S.ancestral, "vp", dict(num_steps=20), "num_steps=20 .*beta"),
    (S.ddim, "ve", {}, "sde.*VESDE"),
    (S.ddim, "vp", dict(num_steps=2000), "num_steps.*2000"),
    (S.ddim, "vp", dict(eta=-1.0), "eta.*-1.0"),
    (S.annealed_langevin, "vp", {}, "sde.*VPSDE"),
    (S.annealed_langevin, "ve", dict(n_steps_each=0), "n_steps_each.*0"),
    (S.pc, "vp", dict(corrector="ald"), "corrector.*ald"),
    (S.pc, "vp", dict(snr=-0.1), "snr.*-0.1"),
    (S.pc, "vp", dict(predictor="em"), "predictor.*em"),
    (S.euler_maruyama, "vp", dict(denoise="yes"), "denoise.*yes"),
]


@pytest.mark.parametrize("sampler,sde_name,options,match", BAD)
def test_bad_input_raises_before_tracing(sampler, sde_name, options, match):
    sde = SDES[sde_name]
    with pytest.raises(ValueError, match=match):
        sampler(jax.random.key(0), jnp.zeros((4, 2)), _no_trace, sde, **options)


@pytest.mark.parametrize("sampler", [S.euler_maruyama, S.ode_adaptive, S.ddim])
def test_unbatched_x_T_raises(sampler):
    with pytest.raises(ValueError, match=r"x_T.*\(2,\)"):
        sampler(jax.random.key(0), jnp.zeros((2,)), _no_trace, SDES["vp"])
    with pytest.raises(ValueError, match="score_fn"):
        sampler(jax.random.key(0), jnp.zeros((4, 2)), "not a function", SDES["vp"])


# --------------------------------------------------------------------------- one step of the grid samplers

ONE_STEP = [("ancestral", "vp", None), ("ancestral", "ve", None), ("ancestral", "cosine_vp", None),
            ("ddim", "vp", "leading"), ("ddim", "vp", "trailing"), ("ddim", "vp", "linspace"),
            ("ddim", "cosine_vp", "leading")]


@pytest.mark.parametrize("name,sde_name,spacing", ONE_STEP)
def test_one_step_grid_samplers_go_from_the_top_to_the_data(name, sde_name, spacing):
    """One step of ancestral / DDIM is the one exact step from the chain's top level to the data: the posterior mean
    E[x_0 | x] = (x + s^2 score(x, t)) / a at the top (ancestral: t = T; DDIM: the top step N - 1 of the sde.N grid,
    for every spacing). Before: ancestral's 1-step chain was score-SDE's N = 1 discretization, beta_min or sigma_min
    alone (about x_T returned), and DDIM's "leading" / "linspace" one step was step 0 (x_T returned)."""
    sde, score_fn = SDES[sde_name], SCORES[sde_name]
    x_T = _prior(sde, n=64)
    if name == "ancestral":
        out = S.ancestral(jax.random.key(3), x_T, score_fn, sde, num_steps=1)
        t = sde.T
        a, s = (float(v) for v in sde.marginal(jnp.float32(t)))
    else:
        out = S.ddim(jax.random.key(3), x_T, score_fn, sde, num_steps=1, spacing=spacing, eta=1.0)
        grid = dj.discrete.ddpm_grid(sde)
        t, abar = grid.time(grid.N - 1), float(grid.alpha_bars[grid.N - 1])
        a, s = np.sqrt(abar), np.sqrt(1.0 - abar)
    score = np.asarray(score_fn(x_T, jnp.full((64,), t)), np.float64)
    expect = (np.asarray(x_T, np.float64) + s**2 * score) / a
    assert bool(jnp.all(jnp.isfinite(out)))
    # x + s^2 score cancels to about a x_0 (a(T) = 0.007 on VP): float32's rounding of x_T, amplified by 1 / a
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=2e-6 * float(jnp.max(jnp.abs(x_T))) / a)
    assert float(np.min(np.linalg.norm(np.asarray(x_T) - expect, axis=-1))) > 0.1  # x_T returned would fail


# ------------------------------------------------------------------------------- step rules and defaults


def _batch_norm_mean(a):
    return np.mean(np.sqrt(np.sum(np.asarray(a, np.float64).reshape(a.shape[0], -1) ** 2, axis=-1)))


@pytest.mark.parametrize("n", [1000, 3])
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "cosine_vp", "ve"])
def test_langevin_corrector_step_is_score_sde_algorithm_4(sde_name, n):
    """eps = 2 alpha (snr ||z|| / ||s||)^2, x' = x + eps s + sqrt(2 eps) z with
    alpha = alpha_bar(t) / alpha_bar(t - T/N) (VE: 1): finite for any N, and at score-SDE's N = 1000 its
    alpha = 1 - beta_i to 2.5e-4."""
    import dataclasses

    sde = dataclasses.replace(SDES[sde_name], N=n)
    score_fn, key, t = SCORES[sde_name], jax.random.key(11), 0.9
    x = sde.prior_sample(jax.random.key(12), (16, 2))
    got, got_mean = S.langevin_corrector_step(key, x, t, score_fn, sde, snr=0.16)
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), x.shape), np.float64)
    s = np.asarray(score_fn(x, jnp.full((16,), t)), np.float64)
    (a_t, _), (a_prev, _) = sde.marginal(jnp.float32(t)), sde.marginal(jnp.float32(t - 1.0 / n))
    alpha = (float(a_t) / float(a_prev)) ** 2
    eps = 2.0 * alpha * (0.16 * _batch_norm_mean(z) / _batch_norm_mean(s)) ** 2
    assert bool(jnp.all(jnp.isfinite(got))) and bool(jnp.all(jnp.isfinite(got_mean)))
    np.testing.assert_allclose(got_mean, np.asarray(x, np.float64) + eps * s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, np.asarray(x, np.float64) + eps * s + np.sqrt(2 * eps) * z, rtol=1e-4, atol=1e-5)
    if sde_name == "vp" and n == 1000:  # score-SDE: alpha = sde.alphas[timestep] = 1 - discrete_betas[index(t)]
        score_sde_alpha = 1.0 - float(sde.discrete_betas()[sde.index(t)])
        assert abs(alpha / score_sde_alpha - 1) < 2.5e-4
    if sde_name == "ve":
        assert alpha == 1.0


def test_annealed_langevin_defaults_are_ncsn_paper_setting():
    """Song & Ermon 2019 (Algorithm 1, Sec. 4.2): L = 10 levels, T = 100 steps, eps = 2e-5, no final denoising
    step (that step is NCSNv2's, available as denoise=True / NCSNV2_CIFAR10_SAMPLING)."""
    import inspect

    from diffjax.discrete import ncsn

    paper = dict(num_steps=10, n_steps_each=100, step_lr=2e-5, denoise=False)
    params = inspect.signature(S.annealed_langevin).parameters
    assert {k: params[k].default for k in paper} == paper == dict(ncsn.NCSN_SAMPLING)
    # The default run ends on the last Langevin step: no Tweedie step.
    sde, score_fn = SDES["ve"], SCORES["ve"]
    x = sde.prior_sample(jax.random.key(6), (8, 2))
    run = functools.partial(S.annealed_langevin, jax.random.key(0), x, score_fn, sde, num_steps=3, n_steps_each=2)
    plain, noisy_end, denoised = run(), run(denoise=False), run(denoise=True)
    assert bool(jnp.all(jnp.isfinite(plain))) and bool(jnp.all(jnp.isfinite(denoised)))
    np.testing.assert_array_equal(plain, noisy_end)
    assert not np.allclose(plain, denoised)
    # NCSNv2 CIFAR-10 (configs/cifar10.yml): 232 levels, T = 5, denoise, and its eps = 6.2e-6 in the update
    # x + a s + sqrt(2 a) z, a = eps sigma_i^2 / sigma_L^2, which this module's step reproduces with step_lr = 2 eps.
    v2 = ncsn.NCSNV2_CIFAR10_SAMPLING
    assert (v2["num_steps"], v2["n_steps_each"], v2["denoise"]) == (232, 5, True)
    sigma, sigma_last = 3.0, 0.01
    a = 6.2e-6 * (sigma / sigma_last) ** 2
    t = jnp.full((8,), 0.5)
    z = np.asarray(jax.random.normal(jax.random.key(1), x.shape), np.float64)
    hand = np.asarray(x, np.float64) + a * np.asarray(score_fn(x, t), np.float64) + np.sqrt(2 * a) * z
    step = dj.discrete.ncsn_step_size(sigma, sigma_last, step_lr=v2["step_lr"])
    np.testing.assert_allclose(dj.discrete.langevin_step(jax.random.key(1), x, t, score_fn, step_size=step), hand,
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- the process keyword

KEYWORD_CASES = [(S.euler_maruyama, {}), (S.reverse_diffusion, {}), (S.pc, {}), (S.ode_euler, {}), (S.ode_heun, {}),
                 (S.ode_adaptive, dict(rtol=1e-2, atol=1e-2)), (S.ddim, {}), (S.ancestral, dict(num_steps=25)),
                 (S.edm_heun, {}), (S.dpm_solver, {}), (S.unipc, {})]


@pytest.mark.parametrize("sampler,options", KEYWORD_CASES, ids=[c[0].__name__ for c in KEYWORD_CASES])
def test_process_keyword_and_deprecated_sde_keyword(sampler, options):
    """``process`` is the parameter's name (positional use unchanged); ``sde=`` still works for one release, with a
    DeprecationWarning, and gives the same samples; both at once is a TypeError."""
    sde, score_fn = SDES["vp"], SCORES["vp"]
    options = dict(dict(num_steps=3), **options) if sampler is not S.ode_adaptive else options
    x_T, key = _prior(sde, n=4), jax.random.key(3)
    want = sampler(key, x_T, score_fn, sde, **options)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(sampler(key, x_T, score_fn, process=sde, **options), want)
    with pytest.warns(DeprecationWarning, match="process"):
        got = sampler(key, x_T, score_fn, sde=sde, **options)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="sde"):
        sampler(key, x_T, score_fn, sde, sde=sde, **options)


def test_conditional_samplers_and_kernels_take_the_deprecated_sde_keyword():
    sde, image = SDES["vp"], jnp.ones((1, 2, 2, 3))
    mask = jnp.zeros((1, 2, 2, 1)).at[:, 0].set(1.0)
    normal_score = lambda x, t: -x  # noqa: E731  (N(0, I) data under VP)
    with pytest.warns(DeprecationWarning):
        got = dj.inpaint(jax.random.key(0), image, mask, normal_score, sde=sde, num_steps=3)
    np.testing.assert_array_equal(got, dj.inpaint(jax.random.key(0), image, mask, normal_score, sde, num_steps=3))
    x = _prior(sde, n=4)
    with pytest.warns(DeprecationWarning):
        got = S.ode_euler_step(x, 1.0, 0.5, SCORES["vp"], sde=sde)
    np.testing.assert_array_equal(got, S.ode_euler_step(x, 1.0, 0.5, SCORES["vp"], sde))


# ------------------------------------------------------------------------------------------ the sampler loop


@dataclasses.dataclass(frozen=True)
class _MidpointStep:
    """A user's step object: the explicit midpoint rule on the probability-flow ODE (2 evaluations a step)."""
    score_fn: object
    process: object

    def init(self, x_T, t):
        return x_T

    def step(self, key, x, t, t_next):
        vf = dj.probability_flow_ode(self.process, self.score_fn)
        h = t_next - t
        half = x + 0.5 * h * vf(x, jnp.broadcast_to(t, x.shape[:1]))
        return x + h * vf(half, jnp.broadcast_to(t + 0.5 * h, x.shape[:1]))

    def output(self, key, x):
        return x

    def nfe(self, num_steps):
        return 2 * num_steps


def test_a_new_sampler_is_a_step_object_over_the_one_loop():
    """``sample_steps`` runs any SamplerStep over a grid: the midpoint rule equals its own loop written out, beats
    Euler at the same evaluations (second order), and keeps the samplers' dtype rule."""
    sde, score_fn = SDES["vp"], SCORES["vp"]
    x_T = _prior(sde, n=64)
    times = np.asarray(S.uniform_time_grid(sde, 40, 1e-3))
    step = _MidpointStep(score_fn, sde)
    mid, nfe = S.sample_steps(None, x_T, times, step, return_nfe=True)
    x = x_T
    for t, t_next in zip(times[:-1], times[1:]):
        x = step.step(None, x, jnp.float32(t), jnp.float32(t_next))
    np.testing.assert_allclose(mid, x, rtol=1e-5, atol=1e-5)
    exact = S.ode_heun(None, x_T, score_fn, sde, num_steps=400, t_eps=1e-3)
    euler = S.ode_euler(None, x_T, score_fn, sde, num_steps=80, t_eps=1e-3)  # the same 80 evaluations
    assert int(nfe) == 80
    assert float(jnp.max(jnp.abs(mid - exact))) < 0.5 * float(jnp.max(jnp.abs(euler - exact)))
    half = S.sample_steps(None, x_T.astype(jnp.bfloat16), times, step)
    assert half.dtype == jnp.bfloat16
    full = S.sample_steps(None, x_T.astype(jnp.bfloat16).astype(jnp.float32), times, step)
    np.testing.assert_array_equal(np.asarray(half, np.float32), np.asarray(full.astype(jnp.bfloat16), np.float32))
