"""Time grids as sampler arguments: every grid against its formula written out by hand, on VP, VE, rectified flow
and EDM; the DDPM chain's strided steps against diffusers' multistep spacings; the samplers' ``time_grid`` argument
(used, validated before tracing, default the process's own grid)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.discrete import ddpm_grid

S = dj.samplers
PROCESSES = {"vp": dj.vp_sde(), "ve": dj.ve_sde(), "rectified_flow": dj.rectified_flow(), "edm": dj.edm_sde()}
GRIDS = ("uniform_time_grid", "uniform_log_snr_grid", "karras_grid", "quadratic_time_grid")


def _ratio(p, t):
    a, s = p.marginal(jnp.asarray(t, jnp.float32))
    return np.asarray(s, np.float64) / np.asarray(a, np.float64)


def _by_hand(name, p, n, t_eps):
    """The grid's defining coordinate at the returned times and the same coordinate by the formula (float64)."""
    i = np.arange(n + 1) / n
    T = float(p.T)
    if name == "uniform_time_grid":
        return (lambda t: np.asarray(t, np.float64)), T + i * (t_eps - T)
    if name == "quadratic_time_grid":
        return (lambda t: np.asarray(t, np.float64)), t_eps + (T - t_eps) * (1.0 - i) ** 2
    if name == "uniform_log_snr_grid":  # equal steps of lambda = log(a^2 / s^2)
        lo, hi = (2.0 * np.log(1.0 / _ratio(p, t)) for t in (T, t_eps))
        return (lambda t: -2.0 * np.log(_ratio(p, t))), lo + i * (hi - lo)
    smax, smin = _ratio(p, T), _ratio(p, t_eps)  # karras: EDM eq. 5 on sigma = s / a, rho = 7
    return (lambda t: _ratio(p, t)), (smax ** (1 / 7) + i * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7


@pytest.mark.parametrize("n", [1, 12])
@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("name", GRIDS)
def test_grid_is_its_formula(name, proc, n):
    p = PROCESSES[proc]
    t_eps = float(p.t_eps)
    times = getattr(S, name)(p, n, t_eps)
    assert times.shape == (n + 1,) and times.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(times)))
    t = np.asarray(times)
    assert np.all(np.diff(t) < 0), t
    assert t[0] == np.float32(p.T) and t[-1] == np.float32(t_eps), (t[0], t[-1])  # exact ends
    coordinate, want = _by_hand(name, p, n, t_eps)
    got = coordinate(times)
    if name == "uniform_log_snr_grid":  # log-SNR spans ~25 nats; float32 inversion: absolute tolerance
        np.testing.assert_allclose(got, want, atol=2e-3)
        np.testing.assert_allclose(np.diff(got), np.full(n, (want[-1] - want[0]) / n), atol=3e-3)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-7)


def test_karras_on_edm_is_edm_sigmas():
    """On edm_sde time is sigma: the grid is EDM's 18 sigmas from 80 to 0.002 (its CIFAR-10 sampler), float32."""
    i = np.arange(18) / 17
    want = (80.0 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(S.karras_grid(dj.edm_sde(), 17, 0.002), want, rtol=2e-6)


def _diffusers_steps(spacing, N, n):
    """diffusers' DPMSolverMultistepScheduler.set_timesteps (steps_offset 0), written out: decreasing steps."""
    if spacing == "leading":
        return (np.arange(n + 1) * (N // (n + 1))).round()[::-1][:-1].astype(np.int64)
    if spacing == "linspace":
        return np.linspace(0, N - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    return np.arange(N, 0, -N / n).round().astype(np.int64) - 1


@functools.lru_cache(maxsize=None)
def _chain_times(proc):
    return np.asarray(ddpm_grid(dj.vp_sde() if proc == "vp" else dj.cosine_vp_sde()).times)


@pytest.mark.parametrize("n", [1, 10, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("proc", ["vp", "cosine_vp"])
def test_ddpm_strided_is_the_chains_strided_steps(proc, spacing, n):
    p = dj.vp_sde() if proc == "vp" else dj.cosine_vp_sde()
    times = S.ddpm_strided(spacing)(p, n, 1e-3)
    assert times.shape == (n + 1,) and times.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(times)))
    steps = _diffusers_steps(spacing, p.N, n)
    assert steps.shape == (n,)
    want = _chain_times(proc)[steps]  # step i's time: where the SDE's alpha_bar is the grid's alpha_bar_i
    np.testing.assert_allclose(np.asarray(times[:-1]), want, rtol=3e-7)
    assert float(times[-1]) == np.float32(1e-3) and np.all(np.diff(np.asarray(times)) < 0)


def test_ddpm_strided_is_one_hashable_object_per_spacing_and_validates():
    assert S.ddpm_strided("trailing") is S.ddpm_strided("trailing") and hash(S.ddpm_strided("leading"))
    with pytest.raises(ValueError, match=r"spacing must be one of \('leading', 'trailing', 'linspace'\), got 'mid'"):
        S.ddpm_strided("mid")
    for proc in ("ve", "rectified_flow", "edm"):
        with pytest.raises(ValueError, match=r"process must carry a DDPM chain .*chain\(\) is .*uniform_time"):
            S.ddpm_strided("leading")(PROCESSES[proc], 5, 1e-3)
    with pytest.raises(ValueError, match=r"num_steps must be <= 999 for ddpm_strided\(spacing='leading'\).*got 1000"):
        S.ddpm_strided("leading")(dj.vp_sde(), 1000, 1e-3)
    with pytest.raises(ValueError, match=r"t_eps must lie below the time 0.0009\d+ of the lowest strided step \(0\)"):
        S.ddpm_strided("trailing")(dj.vp_sde(), 1000, 1e-3)


@pytest.mark.parametrize("call, match", [
    (lambda: S.uniform_time_grid(dj.vp_sde(), 0, 1e-3), r"num_steps must be >= 1, got 0"),
    (lambda: S.uniform_time_grid(dj.vp_sde(), 2.5, 1e-3), r"num_steps must be an integer, got 2.5"),
    (lambda: S.quadratic_time_grid(dj.vp_sde(), 4, 1.5), r"t_eps must lie in \[0, T=1.0\).*got 1.5"),
    (lambda: S.uniform_log_snr_grid(dj.vp_sde(), 4, 0.0), r"t_eps=0.0 gives an infinite log-SNR"),
    (lambda: S.karras_grid(dj.edm_sde(), 4, 0.0), r"karras needs t_eps > 0"),
    (lambda: S.karras_grid(dj.edm_sde(), 4, 0.002, rho=-1.0), r"rho must be a finite number > 0, got -1.0"),
    (lambda: S.uniform_time_grid("vp", 4, 1e-3), r"process must be a forward process"),
])
def test_bad_grid_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------- the samplers' time_grid


def _never_called(x, t):
    raise AssertionError("the score was evaluated: validation must come before tracing")


def _short_grid(process, num_steps, t_eps):
    return jnp.linspace(process.T, t_eps, num_steps)


def _increasing_grid(process, num_steps, t_eps):
    return jnp.linspace(t_eps, process.T, num_steps + 1)


class _Unhashable:
    __hash__ = None

    def __call__(self, process, num_steps, t_eps):
        return S.uniform_time_grid(process, num_steps, t_eps)


@pytest.mark.parametrize("sampler", ["euler_maruyama", "reverse_diffusion", "pc", "ode_euler", "ode_heun",
                                     "edm_heun"])
@pytest.mark.parametrize("grid, match", [
    ("karras", r"time_grid must be a grid function time_grid\(process, num_steps, t_eps\)"),
    (_short_grid, r"time_grid must return num_steps \+ 1 = \d+ finite times"),
    (_increasing_grid, r"time_grid must return strictly decreasing times"),
    (_Unhashable(), r"time_grid must be hashable"),
    (S.ddpm_strided("leading"), r"process must carry a DDPM chain"),
])
def test_bad_time_grid_raises_before_tracing(sampler, grid, match):
    sde = dj.ve_sde()
    with pytest.raises(ValueError, match=match):
        getattr(S, sampler)(jax.random.key(0), jnp.ones((2, 2)), _never_called, sde, num_steps=4, time_grid=grid)


def _gauss_score(sde, mu=0.7, s0=0.5):
    def score_fn(x, t):
        a, s = sde.marginal(jnp.broadcast_to(t, (x.shape[0],)))
        return -(x - a[:, None] * mu) / (a[:, None] ** 2 * s0**2 + s[:, None] ** 2)

    return score_fn


def test_ode_euler_walks_the_given_grid():
    """On edm_sde the probability-flow ODE is dx/dt = -t score: Euler on the rho-grid, written out by hand."""
    sde = dj.edm_sde()
    score_fn = _gauss_score(sde)
    x_T = sde.prior_sample(jax.random.key(1), (4, 2))
    got = S.ode_euler(jax.random.key(0), x_T, score_fn, sde, num_steps=9, time_grid=S.karras_grid)
    t = np.asarray(S.karras_grid(sde, 9, sde.t_eps))
    x = x_T
    for k in range(9):
        x = x + (t[k + 1] - t[k]) * (-t[k]) * score_fn(x, jnp.float32(t[k]))
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)
    uniform = S.ode_euler(jax.random.key(0), x_T, score_fn, sde, num_steps=9, time_grid=S.uniform_time_grid)
    assert float(jnp.max(jnp.abs(uniform - got))) > 1e-2  # the grid matters


def _time_summing_predictor(key, x, t, t_next, score_fn, sde):
    """Adds each step's start time to column 0 (and nothing else): the output reveals the grid."""
    del key, score_fn, sde
    x = x.at[:, 0].add(t)
    return x, x


@pytest.mark.parametrize("name, grid", [("uniform", S.uniform_time_grid), ("karras", S.karras_grid),
                                        ("ddpm_trailing", S.ddpm_strided("trailing"))])
def test_pc_runs_the_grid_of_the_callers_process(name, grid):
    """pc holds the process with N = num_steps (its corrector's step rule); the grid still sees the caller's
    process, so the DDPM strided steps are those of its own N = 1000-step chain."""
    sde = dj.vp_sde()
    x_T = jnp.zeros((2, 1))
    out = S.pc(jax.random.key(0), x_T, _never_called, sde, num_steps=10, time_grid=grid,
               predictor=_time_summing_predictor, corrector=None, denoise=False)
    want = float(np.sum(np.asarray(grid(sde, 10, sde.t_eps), np.float64)[:-1]))
    np.testing.assert_allclose(np.asarray(out)[:, 0], want, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 12])
@pytest.mark.parametrize("proc", list(PROCESSES))
def test_process_default_is_the_process_s_own_grid(proc, n):
    """Equal steps in t on VP, VE and rectified flow; EDM's rho-grid on EDM's process (whose time is sigma)."""
    p = PROCESSES[proc]
    own = S.karras_grid if proc == "edm" else S.uniform_time_grid
    got = S.process_default(p, n, float(p.t_eps))
    assert got.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(own(p, n, float(p.t_eps))), rtol=1e-6)


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("sampler", ["euler_maruyama", "reverse_diffusion", "pc", "ode_euler", "ode_heun"])
def test_default_grid_is_process_default(sampler, proc):
    sde = PROCESSES[proc]
    own = S.karras_grid if proc == "edm" else S.uniform_time_grid
    score_fn = _gauss_score(sde)
    x_T = sde.prior_sample(jax.random.key(1), (4, 2))
    a = getattr(S, sampler)(jax.random.key(2), x_T, score_fn, sde, num_steps=5)
    b = getattr(S, sampler)(jax.random.key(2), x_T, score_fn, sde, num_steps=5, time_grid=own)
    c = getattr(S, sampler)(jax.random.key(2), x_T, score_fn, sde, num_steps=5, time_grid=S.process_default)
    assert bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(sde.prior_std))
    np.testing.assert_array_equal(a, c)
