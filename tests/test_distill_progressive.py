"""Progressive distillation (diffjax.distill.progressive): the one-step target against two teacher DDIM steps written
out by hand and against the library's DDIM (dpm_solver, order 1), with exact mixture-score teachers on every process."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import distill

MIX = dj.gaussian_mixture(jnp.array([1.0, 2.0]), jnp.array([[1.5, -0.5], [-1.0, 1.0]]), jnp.array([0.3, 0.5]))
PROCESSES = {
    "vp": dj.vp_sde(),
    "ve": dj.ve_sde(),
    "edm": dj.edm_sde(),
    "rf": dj.rectified_flow(),
}


def teacher_x0(process):
    score = dj.mixture_score_fn(MIX, process)
    return lambda x, t: dj.x0_from_score(score(x, t), x, t, process)


def three_times(process):
    """``t > t_mid > t_next`` inside ``[t_eps, T]`` of the process."""
    grid = np.asarray(dj.samplers.uniform_time_grid(process, 8, process.t_eps))
    return float(grid[3]), float(grid[4]), float(grid[5])


def _three_point_grid(process, num_steps, t_eps, *, t, t_mid):
    del num_steps
    return jnp.array([t, t_mid, t_eps], jnp.float32)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_target_equals_two_teacher_ddim_steps(name):
    p = PROCESSES[name]
    t, t_mid, t_next = three_times(p)
    x0 = MIX.sample(jax.random.key(0), 64)
    x_t = p.perturb(x0, jnp.float32(t), jax.random.normal(jax.random.key(1), x0.shape))
    f = teacher_x0(p)

    # two teacher DDIM steps by hand: x' = a' x0_hat + s' eps_hat, eps_hat = (x - a x0_hat) / s
    def ddim(x, u, u_next):
        (a, s), (a_n, s_n) = p.marginal(jnp.float32(u)), p.marginal(jnp.float32(u_next))
        xh = f(x, jnp.full((x.shape[0],), u, jnp.float32))
        return a_n * xh + s_n * (x - a * xh) / s

    z2 = ddim(ddim(x_t, t, t_mid), t_mid, t_next)
    # the same two steps by the library's DDIM on any process (DPM-Solver++ of order 1) on the grid (t, t_mid, t_next)
    score = dj.mixture_score_fn(MIX, p)
    grid = functools.partial(_three_point_grid, t=t, t_mid=t_mid)
    z2_lib = dj.samplers.dpm_solver(jax.random.key(2), x_t, score, p, num_steps=2, t_eps=t_next, order=1,
                                    time_grid=grid)
    scale = float(jnp.max(jnp.abs(z2))) + 1.0
    np.testing.assert_allclose(z2_lib, z2, atol=2e-5 * scale, rtol=0)

    target = distill.pd_target(x_t, t, t_mid, t_next, f, p)
    (a, s), (a_n, s_n) = p.marginal(jnp.float32(t)), p.marginal(jnp.float32(t_next))
    one_step = a_n * target + s_n * (x_t - a * target) / s
    assert bool(jnp.all(jnp.isfinite(target)))
    np.testing.assert_allclose(one_step, z2, atol=2e-5 * scale, rtol=0)
    np.testing.assert_allclose(distill.ddim_x0_step(x_t, t, t_next, target, p), z2, atol=2e-5 * scale, rtol=0)
    # the target is not the teacher's own one-step prediction (two steps differ from one)
    assert float(jnp.max(jnp.abs(target - f(x_t, jnp.full((64,), t))))) > 1e-3


def _grid_student(process, n, teacher):
    """The exact two-step teacher map as a student: its x0 prediction is pd_target on the teacher's 2n grid (the
    process's own, pd_sample's default: uniform in t on VP, EDM's rho-grid on EDM's process)."""
    grid = dj.samplers.process_default(process, 2 * n, process.t_eps)

    def student(x, t):
        j = jnp.argmin(jnp.abs(grid[None, :] - t[:, None]), axis=1)
        return distill.pd_target(x, t, grid[j + 1], grid[j + 2], teacher, process)

    return student


@pytest.mark.parametrize("name", ["vp", "rf"])
def test_loss_zero_for_the_two_step_teacher_map(name):
    p = PROCESSES[name]
    f = teacher_x0(p)
    x0 = MIX.sample(jax.random.key(3), 128)
    n = 4
    # the teacher itself is not a distilled student: its loss is clearly positive
    zero, nonzero = jax.jit(lambda k: (distill.pd_loss(k, x0, _grid_student(p, n, f), f, p, num_student_steps=n),
                                       distill.pd_loss(k, x0, f, f, p, num_student_steps=n)))(jax.random.key(4))
    assert bool(jnp.isfinite(zero))
    assert float(zero) < 1e-8
    assert bool(jnp.isfinite(nonzero)) and float(nonzero) > 1e-4


def test_loss_by_hand():
    """pd_loss's key usage, grid, truncated-SNR weight and reduction, written out."""
    p = PROCESSES["vp"]
    f = teacher_x0(p)
    x0 = MIX.sample(jax.random.key(5), 32)
    student = lambda x, t: 0.5 * x  # noqa: E731
    n = 3
    key = jax.random.key(6)
    got = jax.jit(lambda k: distill.pd_loss(k, x0, student, f, p, num_student_steps=n))(key)
    want = jax.jit(lambda key: by_hand(key, x0, student, f, p, n))(key)
    assert bool(jnp.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def by_hand(key, x0, student, f, p, n):
    key_i, key_z = jax.random.split(key)
    i = jax.random.randint(key_i, (32,), 0, n)
    grid = jnp.linspace(p.T, p.t_eps, 2 * n + 1)
    t, tm, tn = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    a, s = p.marginal(t)
    z = a[:, None] * x0 + s[:, None] * jax.random.normal(key_z, x0.shape)
    target = distill.pd_target(z, t, tm, tn, f, p)
    w = jnp.maximum(a**2 / s**2, 1.0)
    return jnp.mean(w * jnp.mean((student(z, t) - target) ** 2, axis=1))


@pytest.mark.parametrize("name", ["vp", "edm"])
def test_distilled_sampler_equals_teacher_with_twice_the_steps(name):
    p = PROCESSES[name]
    f = teacher_x0(p)
    n = 3
    x_T = p.prior_sample(jax.random.key(7), (256, 2))
    student = _grid_student(p, n, f)
    got = distill.pd_sample(jax.random.key(8), x_T, student, p, num_steps=n)
    want = dj.samplers.dpm_solver(jax.random.key(8), x_T, dj.mixture_score_fn(MIX, p), p, num_steps=2 * n, order=1,
                                  time_grid=dj.samplers.process_default)
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)


def test_gradient_step_reduces_loss():
    """A 2-parameter student x0 = w1 x + w2 x * c(t) trained by plain gradient descent on pd_loss: finite gradients
    and a lower loss (the student learns something)."""
    p = PROCESSES["vp"]
    f = teacher_x0(p)
    x0 = MIX.sample(jax.random.key(9), 256)

    @jax.jit
    def loss(w, key):
        student = lambda x, t: w[0] * x + w[1] * x * (1.0 - t)[:, None]  # noqa: E731
        return distill.pd_loss(key, x0, student, f, p, num_student_steps=2)

    w = jnp.zeros(2)
    key = jax.random.key(10)
    before = loss(w, key)
    step = jax.jit(lambda w: w - 0.02 * jax.grad(loss)(w, key))
    for _ in range(10):
        w = step(w)
    after = loss(w, key)
    assert bool(jnp.all(jnp.isfinite(w))) and bool(jnp.isfinite(after))
    assert float(after) < 0.8 * float(before)


def test_nan_student_gives_nan_loss():
    p = PROCESSES["vp"]
    f = teacher_x0(p)
    x0 = MIX.sample(jax.random.key(11), 8)
    loss = jax.jit(lambda k: distill.pd_loss(k, x0, lambda x, t: x * jnp.nan, f, p, num_student_steps=2))(
        jax.random.key(0))
    assert not bool(jnp.isfinite(loss))


def test_validation():
    p = PROCESSES["vp"]
    f = teacher_x0(p)
    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="num_student_steps"):
        distill.pd_loss(jax.random.key(0), x0, f, f, p, num_student_steps=0)
    with pytest.raises(ValueError, match="student_fn"):
        distill.pd_loss(jax.random.key(0), x0, "net", f, p, num_student_steps=2)
    with pytest.raises(ValueError, match="t_eps"):
        distill.pd_loss(jax.random.key(0), x0, f, f, p, num_student_steps=2, t_eps=2.0)
    with pytest.raises(ValueError, match="x0"):
        distill.pd_loss(jax.random.key(0), jnp.zeros((4, 2), jnp.int32), f, f, p, num_student_steps=2)
    with pytest.raises(ValueError, match="process"):
        distill.pd_target(x0, 0.5, 0.4, 0.3, f, object())
    with pytest.raises(ValueError, match="time_grid"):
        distill.pd_loss(jax.random.key(0), x0, f, f, p, num_student_steps=2, time_grid="uniform")
