"""Forward-mode differentiation of the networks: the fused CPU kernels (chunked attention, GroupNorm) are custom
JVPs whose transposes are their hand-written backward passes, so ``jax.jvp``, ``jax.jacfwd``, ``jax.grad`` and their
compositions all apply and equal the reference (plain JAX) formulation's, on every backend.

Ground truth: the reference layers' JVPs (``impl="reference"``, plain JAX autodiff), central finite differences, and
``jax.jacrev`` of the reference. Tiny shapes; every comparison also asserts finiteness (``chex`` treats NaN == NaN).
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
import diffjax.nets as nets
from diffjax.nets import _attention, _norm
from _fast_compile import fast_jit

TOL = dict(rtol=1e-5, atol=1e-5)


def _close(got, want, **tol):
    for leaf in jax.tree.leaves((got, want)):
        assert np.all(np.isfinite(leaf)), "non-finite values"
    chex.assert_trees_all_close(got, want, **(tol or TOL))


def _finite_difference(f, primals, tangents, h=1e-2):
    """Central difference ``(f(x + h t) - f(x - h t)) / 2h`` in float32: truncation O(h^2), rounding O(1e-7 / h)."""
    shift = lambda s: [p + s * h * t for p, t in zip(primals, tangents)]  # noqa: E731
    return jax.tree.map(lambda a, b: (a - b) / (2 * h), f(*shift(1.0)), f(*shift(-1.0)))


def _rel_err(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)  # numpy: no eager XLA op (each compiles) for a few numbers
    return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))


def _normals(key, shapes):
    return tuple(jax.random.normal(k, s) for k, s in zip(jax.random.split(key, len(shapes)), shapes))


# ------------------------------------------------------------------------------------------------- kernels


@pytest.fixture(scope="module")
def qkv():
    q, k, v, dq, dk, dv = _normals(jax.random.key(0), [(2, 10, 4, 3)] * 6)
    return (q, 2.0 * k, v), (dq, dk, dv)  # 2 k: peaked softmax rows


@pytest.mark.parametrize("heads_per_step", [None, 1, 3])
def test_attention_jvp_equals_reference_and_finite_differences(qkv, heads_per_step):
    primals, tangents = qkv
    fused = functools.partial(_attention.dot_product_attention, heads_per_step=heads_per_step)

    @fast_jit
    def run(primals, tangents):  # every value of the test in one compiled program
        return (jax.jvp(fused, primals, tangents), jax.jvp(_attention.reference_attention, primals, tangents),
                _finite_difference(fused, primals, tangents),
                # jacfwd (vmap of jvp) and the reference's reverse-mode Jacobian
                jax.jacfwd(fused, (0, 1, 2))(*primals), jax.jacrev(_attention.reference_attention, (0, 1, 2))(*primals))

    (out, dout), (ref_out, ref_dout), fd, jac_fwd, jac_rev = run(primals, tangents)
    _close(out, ref_out)
    _close(dout, ref_dout)
    assert float(jnp.max(jnp.abs(dout))) > 0.1
    assert np.all(np.isfinite(fd)) and _rel_err(dout, fd) < 2e-3
    # jacfwd (vmap of jvp) equals the reference's reverse-mode Jacobian
    _close(jac_fwd, jac_rev)


@pytest.mark.parametrize("heads_per_step", [None, 3])
def test_attention_reverse_and_mixed_modes_equal_reference(qkv, heads_per_step):
    """Gradients (JAX's transpose of the fused tangent), jvp-of-grad and grad-of-jvp equal the reference's."""
    primals, tangents = qkv
    cot = jax.random.normal(jax.random.key(5), primals[0].shape)
    fused = functools.partial(_attention.dot_product_attention, heads_per_step=heads_per_step)
    loss = lambda f: lambda *p: jnp.sum(jnp.sin(f(*p)) * cot)  # noqa: E731
    grad = lambda f: jax.grad(loss(f), (0, 1, 2))  # noqa: E731

    @fast_jit
    def run(primals, tangents):  # the fused and the reference values, in one compiled program
        hvp = lambda f: jax.jvp(grad(f), primals, tangents)[1]  # noqa: E731
        goj = lambda f: jax.grad(lambda *p: jnp.sum(jnp.sin(jax.jvp(f, p, tangents)[1])), (0, 1, 2))(*primals)  # noqa
        return [(grad(f)(*primals), hvp(f), goj(f)) for f in (fused, _attention.reference_attention)]

    (g, h, j), (ref_g, ref_h, ref_j) = run(primals, tangents)
    _close(g, ref_g)
    _close(h, ref_h, rtol=1e-4, atol=1e-4)
    _close(j, ref_j, rtol=1e-4, atol=1e-4)


def test_attention_reverse_mode_stores_no_score_matrix():
    """The gradient recomputes the N x N probabilities: nothing N x N crosses from the forward to the backward pass
    (no (N, N)-shaped residual of jax.vjp)."""
    q, k, v = _normals(jax.random.key(1), [(1, 64, 2, 4)] * 3)
    _, vjp = jax.vjp(functools.partial(_attention.dot_product_attention, heads_per_step=1), q, k, v)
    shapes = [leaf.shape for leaf in jax.tree.leaves(vjp)]
    assert shapes and not any(s[-2:] == (64, 64) for s in shapes), shapes


@pytest.fixture(scope="module")
def gn_args():
    x, dx = _normals(jax.random.key(3), [(2, 5, 5, 12)] * 2)
    scale, bias = jnp.linspace(0.5, 1.5, 12), jnp.linspace(-1.0, 1.0, 12)
    return (3.0 * x + 1.5, scale, bias), (dx, jnp.cos(jnp.arange(12.0)), jnp.linspace(-1.0, 1.0, 12))


def test_group_norm_jvp_equals_reference_and_finite_differences(gn_args):
    primals, tangents = gn_args
    fused = lambda x, s, b: _norm.group_norm_fused(x, s, b, 4)  # noqa: E731
    ref = lambda x, s, b: _norm.group_norm(x, s, b, 4)  # noqa: E731

    @fast_jit
    def run(primals, tangents):  # every value of the test in one compiled program
        # only some inputs differentiated (the others' tangents are zeros)
        partial = [jax.jvp(lambda x, f=f: f(x, *primals[1:]), primals[:1], tangents[:1])[1] for f in (fused, ref)]
        return (jax.jvp(fused, primals, tangents), jax.jvp(ref, primals, tangents),
                _finite_difference(fused, primals, tangents),
                jax.jacfwd(fused, (0, 1, 2))(*primals), jax.jacrev(ref, (0, 1, 2))(*primals), partial)

    (out, dout), (ref_out, ref_dout), fd, jac_fwd, jac_rev, partial = run(primals, tangents)
    _close(out, ref_out)
    _close(dout, ref_dout, rtol=1e-5, atol=2e-5)
    assert float(jnp.max(jnp.abs(dout))) > 0.1
    assert np.all(np.isfinite(fd)) and _rel_err(dout, fd) < 2e-3
    _close(jac_fwd, jac_rev, rtol=1e-5, atol=2e-5)
    _close(*partial, rtol=1e-5, atol=2e-5)


def test_group_norm_reverse_and_mixed_modes_equal_reference(gn_args):
    primals, tangents = gn_args
    fused = lambda x, s, b: _norm.group_norm_fused(x, s, b, 4)  # noqa: E731
    ref = lambda x, s, b: _norm.group_norm(x, s, b, 4)  # noqa: E731
    loss = lambda f: lambda *p: jnp.sum(jnp.sin(f(*p)))  # noqa: E731
    grad = lambda f: jax.grad(loss(f), (0, 1, 2))  # noqa: E731

    @fast_jit
    def run(primals, tangents):  # the fused and the reference values, in one compiled program
        hvp = lambda f: jax.jvp(grad(f), primals, tangents)[1]  # noqa: E731
        goj = lambda f: jax.grad(lambda *p: jnp.sum(jnp.sin(jax.jvp(f, p, tangents)[1])), (0, 1, 2))(*primals)  # noqa
        return [(grad(f)(*primals), hvp(f), goj(f)) for f in (fused, ref)]

    (g, h, j), (ref_g, ref_h, ref_j) = run(primals, tangents)
    _close(g, ref_g, rtol=1e-4, atol=1e-4)
    _close(h, ref_h, rtol=1e-4, atol=1e-4)
    _close(j, ref_j, rtol=1e-4, atol=1e-4)


def test_group_norm_bfloat16_jvp_keeps_dtype(gn_args):
    (x, scale, bias), (dx, ds, db) = gn_args
    out, dout = jax.jvp(lambda x: _norm.group_norm_fused(x, scale, bias, 4), (x.astype(jnp.bfloat16),),
                        (dx.astype(jnp.bfloat16),))
    assert out.dtype == dout.dtype == jnp.bfloat16
    ref = jax.jvp(lambda x: _norm.group_norm(x, scale, bias, 4), (x,), (dx,))[1]
    assert bool(jnp.all(jnp.isfinite(dout))) and _rel_err(dout.astype(jnp.float32), ref) < 0.05


# ------------------------------------------------------------------------------------------------ networks


def _filled(model, x, labels, seed=0):
    """Variables shaped like ``model.init``'s, filled from numpy (no compiled init): kernels N(0, 1/fan_in), norm
    scales near 1, biases small, so that every layer (also the zero-initialised ones) matters."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, labels, train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if leaf.ndim >= 2:
            return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.asarray(1.0 + 0.1 * z if "scale" in jax.tree_util.keystr(path[-1:]) else 0.1 * z)

    return jax.tree_util.tree_map_with_path(fill, abstract)


TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, norm_groups=4,
            image_size=8, num_channels=1)
TINY_NETS = {
    "ddpm": lambda impl: nets.ddpm_cifar10(**TINY, layer_impl=impl),
    "ncsnpp": lambda impl: nets.ncsnpp_cifar10(**TINY, num_head_channels=4, layer_impl=impl),
    "classifier": lambda impl: nets.noise_classifier_cifar10(**TINY, layer_impl=impl),
    "dit": lambda impl: nets.dit_s2(hidden_size=16, depth=2, num_heads=2, frequency_embedding_size=16,
                                   input_size=8, in_channels=1, layer_impl=impl),
}


def _close_scaled(got, want, tol=1e-5):
    """Each leaf within ``tol * max|want|`` (float32 rounding of outputs of size ~50)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(jnp.isfinite(w))), "non-finite values"
        assert _rel_err(g, w) < tol, _rel_err(g, w)


def _jitted_jvp(f):
    return fast_jit(lambda x, l, dx, dl: jax.jvp(f, (x, l), (dx, dl)))


@pytest.mark.parametrize("family", list(TINY_NETS))
def test_network_jvp_fused_equals_reference(family):
    """A whole tiny network (UNets, the noise-conditional classifier, DiT) with the fused kernels: jax.jvp (in x and in the noise label) equals the reference layers'
    JVP and finite differences; for DDPM also the parameter gradients equal the reference's."""
    x, dx = _normals(jax.random.key(7), [(2, 8, 8, 1)] * 2)
    labels = jnp.array([0.3, 2.0]) if family == "ncsnpp" else jnp.array([30.0, 700.0])
    models = {impl: TINY_NETS[family](impl) for impl in ("fused", "reference")}
    variables = _filled(models["fused"], x, labels)
    dl = jnp.ones_like(labels)
    jvps = {impl: _jitted_jvp(lambda x, l, m=m: m.apply(variables, x, l, train=False)) for impl, m in models.items()}
    got = {impl: f(x, labels, dx, dl) for impl, f in jvps.items()}
    _close_scaled(got["fused"], got["reference"])
    assert float(jnp.max(jnp.abs(got["fused"][1]))) > 1e-2
    if family != "ddpm":
        return
    fd = _finite_difference(lambda x, l: jvps["fused"](x, l, dx, dl)[0], (x, labels), (dx, dl), h=1e-2)
    assert _rel_err(got["fused"][1], fd) < 1e-2
    grad = {impl: fast_jit(jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x, labels, train=False)))))(variables)
            for impl, m in models.items()}
    _close_scaled(grad["fused"], grad["reference"], tol=1e-4)


def test_mlp_jvp_jacfwd_and_finite_differences():
    model = nets.toy_mlp(hidden=(16, 16))
    x, dx = _normals(jax.random.key(8), [(3, 2)] * 2)
    labels = jnp.array([1.0, 10.0, 100.0])
    variables = _filled(model, x, labels)
    apply = lambda x: model.apply(variables, x, labels, train=False)  # noqa: E731
    f = fast_jit(apply)
    out, dout = fast_jit(lambda x, dx: jax.jvp(apply, (x,), (dx,)))(x, dx)
    _close(out, f(x))
    assert _rel_err(dout, _finite_difference(f, (x,), (dx,))) < 2e-3
    _close(fast_jit(jax.jacfwd(apply))(x), fast_jit(jax.jacrev(apply))(x))


def test_jvp_through_make_score_fn():
    """What continuous-time consistency models need: directional derivatives and d/dt of score_fn(x, t) of a UNet
    with the (CPU-default) fused kernels, equal to the reference layers' and to finite differences in t."""
    sde = dj.vp_sde(beta_min=0.1, beta_max=20.0)
    x, dx = _normals(jax.random.key(9), [(2, 8, 8, 1)] * 2)
    t = jnp.array([0.3, 0.7])
    models = {impl: TINY_NETS["ddpm"](impl) for impl in ("fused", "reference")}
    params = _filled(models["fused"], x, t)["params"]
    # time_input="t": labels vary on the scale of t, so that a finite difference in t resolves them
    jvps = {impl: _jitted_jvp(nets.make_score_fn(m.apply, params, sde, time_input="t"))
            for impl, m in models.items()}
    dt = jnp.ones_like(t)
    got = {impl: f(x, t, dx, dt) for impl, f in jvps.items()}
    _close_scaled(got["fused"], got["reference"])
    zero = jnp.zeros_like(x)
    _, d_dt = jvps["fused"](x, t, zero, dt)
    fd = _finite_difference(lambda t: jvps["fused"](x, t, zero, dt)[0], (t,), (dt,), h=1e-3)
    assert float(jnp.max(jnp.abs(d_dt))) > 1e-2 and _rel_err(d_dt, fd) < 2e-2
