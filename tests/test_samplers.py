"""Samplers against ground truth: exact Gaussian-mixture scores, a Gaussian with a closed-form flow, and the
pure-function contract (one trace per shape, vmap, sharding, validation before tracing)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import diffjax as dj
from diffjax.eval.sample_distances import energy_distance, mmd_rbf

S = dj.samplers
SDES = {"vp": dj.vp_sde(), "subvp": dj.subvp_sde(), "ve": dj.ve_sde()}
RING = dj.ring_mixture()
N_POINTS = 2000

# (sampler, SDEs it supports, options). Samplers whose published default is 1000 steps run with fewer here (the
# exact score makes them accurate well before that); test_all_defaults_cheap_case runs one with every default.
FEWER = dict(num_steps=200)
SAMPLERS = {
    "euler_maruyama": (S.euler_maruyama, ("vp", "subvp", "ve"), FEWER),
    "reverse_diffusion": (S.reverse_diffusion, ("vp", "subvp", "ve"), FEWER),
    "ancestral": (S.ancestral, ("vp", "ve"), FEWER),
    "pc": (S.pc, ("vp", "subvp", "ve"), dict(num_steps=100)),
    "pc_em": (S.pc, ("vp",), dict(num_steps=100, predictor=S.euler_maruyama_step)),
    "annealed_langevin": (S.annealed_langevin, ("ve",), dict(n_steps_each=20)),
    "ode_euler": (S.ode_euler, ("vp", "subvp", "ve"), FEWER),
    "ode_heun": (S.ode_heun, ("vp", "subvp", "ve"), {}),
    "ode_adaptive": (S.ode_adaptive, ("vp", "subvp", "ve"), {}),
    "ddim": (S.ddim, ("vp",), {}),
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

    for solver in ("tsit5",):
        calls.clear()
        x, nfe = S.ode_adaptive(jax.random.key(0), x_T, counting, sde, t_eps=t_eps, solver=solver, return_nfe=True)
        jax.effects_barrier()
        assert int(nfe) == len(calls) > 0
        assert float(jnp.max(jnp.abs(x - exact))) < 1e-3


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
    chex.assert_trees_all_close(batched(keys, xs), jnp.stack(looped), atol=1e-4, rtol=1e-4)


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
    chex.assert_trees_all_close(out, call(jax.random.key(0), x, COUNTED[sde_name]), atol=1e-4, rtol=1e-4)


def _no_trace(x, t):
    raise AssertionError("score_fn must not be traced when the arguments are invalid")


BAD = [
    (S.euler_maruyama, "vp", dict(num_steps=0), "num_steps.*0"),
    (S.reverse_diffusion, "vp", dict(num_steps=2.5), "num_steps.*2.5"),
    (S.pc, "ve", dict(t_eps=0.0), "t_eps.*0.0"),
    (S.ode_euler, "vp", dict(t_eps=1.5), "t_eps.*1.5"),
    (S.ode_heun, "vp", dict(t_eps=-1e-3), "t_eps.*-0.001"),
    (S.ode_adaptive, "vp", dict(solver="rk4"), "solver.*rk4"),
    (S.ode_adaptive, "vp", dict(rtol=0.0), "rtol.*0.0"),
    (S.ancestral, "vp", dict(variance="learned"), "variance.*learned"),
    (S.ancestral, "subvp", {}, "sde.*SubVPSDE"),
    (S.ancestral, "vp", dict(num_steps=10), "num_steps=10.*beta"),
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
