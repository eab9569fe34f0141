"""The contracts as types (diffjax.core.contracts), the discrete chain as a method of the process, and the
``sde=`` keyword's deprecation shim."""
import pathlib
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.core import contracts
from diffjax.core._deprecation import renamed_keywords
from diffjax.discrete import DDPMGrid, SMLDChain, ddpm_grid, ncsn_grid

PROCESSES = [dj.vp_sde(), dj.cosine_vp_sde(), dj.subvp_sde(), dj.ve_sde(), dj.rectified_flow(), dj.edm_sde(),
             dj.gaussian_path(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t), T=0.999)]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_every_process_satisfies_the_protocol(process):
    assert isinstance(process, dj.Process) and isinstance(process, dj.Marginal)
    chain = process.chain()
    assert chain is None or isinstance(chain, dj.DiscreteChain)


def test_the_chain_a_process_offers():
    assert isinstance(dj.vp_sde().chain(), DDPMGrid) and isinstance(dj.cosine_vp_sde().chain(), DDPMGrid)
    assert isinstance(dj.ve_sde().chain(), SMLDChain)
    assert all(p.chain() is None for p in (dj.subvp_sde(), dj.rectified_flow(), dj.edm_sde()))
    np.testing.assert_array_equal(dj.vp_sde().chain().alpha_bars, ddpm_grid(dj.vp_sde()).alpha_bars)
    ve = dj.ve_sde(N=7)
    np.testing.assert_allclose(ve.chain().sigmas(), ve.sigma(ve.chain().time(jnp.arange(7))), rtol=1e-5)
    assert ve.chain().variances == () and dj.vp_sde().chain().variances[0] == "beta"
    with pytest.raises(ValueError, match=r"process must carry a DDPM chain .*RectifiedFlow.*chain\(\) is NoneType"):
        ddpm_grid(dj.rectified_flow())
    with pytest.raises(ValueError, match=r"process must carry SMLD's sigma chain .*VPSDE.*chain\(\) is DDPMGrid"):
        dj.discrete.smld_ancestral_step(jax.random.key(0), jnp.zeros((2, 2)), 3, lambda x, t: x, dj.vp_sde())


def test_grids_are_marginals_not_processes():
    grid, ngrid = ddpm_grid(dj.vp_sde()), ncsn_grid(dj.ve_sde())
    for g in (grid, ngrid):
        assert isinstance(g, dj.Marginal) and not isinstance(g, dj.Process)
    with pytest.raises(ValueError, match=r"(?s)process must be a forward process .*DDPMGrid.*lacks \["):
        dj.dsm_loss(jax.random.key(0), jnp.zeros((2, 2)), lambda x, t: x, grid, weighting=dj.likelihood_weighting)
    with pytest.raises(ValueError, match=r"process must be a forward process .* or a discrete grid .*lacks \['T'"):
        dj.dsm_loss(jax.random.key(0), jnp.zeros((2, 2)), lambda x, t: x, object())


def test_process_protocol_lists_what_check_process_requires():
    from diffjax.core.process import PROTOCOL
    assert set(PROTOCOL) == set(contracts.protocol_members(dj.Process))
    assert {"marginal", "t_from_log_snr", "importance_time_icdf", "chain"} <= set(PROTOCOL)


def test_core_has_no_hasattr_probes_of_the_process():
    root = pathlib.Path(dj.__file__).parent
    for f in list((root / "core").glob("*.py")) + list((root / "discrete").glob("*.py")):
        probes = re.findall(r"hasattr\((\w+), ", f.read_text())
        assert set(probes) <= {"obj", "value"}, (f, probes)  # the protocol's own message and _checks' .item()


def test_tabulated_importance_icdf_is_the_default_on_every_path():
    p = dj.subvp_sde()
    t, dens = p.importance_time_icdf(jnp.linspace(0.0, 0.99, 5), 1e-3)
    assert np.all((np.asarray(t) >= 0.999e-3) & (np.asarray(t) <= 1.0)) and np.all(np.asarray(dens) > 0)


# ---------------------------------------------------------------------------------------- sde= -> process=

X = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
T = jnp.full((4,), 0.3)
VP = dj.vp_sde()
SCORE = dj.mixture_score_fn(dj.ring_mixture(), VP)


@pytest.mark.parametrize("call", [
    lambda kw: dj.score_from_eps(X, X, T, **kw),
    lambda kw: dj.velocity_from_score(X, X, T, **kw),
    lambda kw: dj.dsm_loss(jax.random.key(1), X, SCORE, **kw),
    lambda kw: dj.flow_matching_loss(jax.random.key(1), X, lambda x, t: x, **kw),
    lambda kw: dj.importance_sample_time(jax.random.key(1), 4, **kw),
    lambda kw: dj.sigma2_weighting(t=T, **kw),
    lambda kw: dj.probability_flow_ode(score_fn=SCORE, **kw)(X, T),
    lambda kw: dj.mixture_score_fn(dj.ring_mixture(), **kw)(X, T),
    lambda kw: ddpm_grid(**kw).alpha_bars,
], ids=["score_from_eps", "velocity_from_score", "dsm_loss", "flow_matching_loss", "importance_sample_time",
        "sigma2_weighting", "probability_flow_ode", "mixture_score_fn", "ddpm_grid"])
def test_sde_keyword_warns_and_gives_the_same_result(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # process= itself warns about nothing
        want = call(dict(process=VP))
    with pytest.warns(DeprecationWarning, match=r"the keyword sde= is deprecated.*pass process="):
        got = call(dict(sde=VP))
    np.testing.assert_array_equal(np.asarray(jax.tree_util.tree_leaves(got)[0]),
                                  np.asarray(jax.tree_util.tree_leaves(want)[0]))


def test_renamed_keywords_rejects_both_names_and_unknown_targets():
    with pytest.raises(TypeError, match=r"got both sde= and process="):
        dj.sigma2_weighting(sde=VP, process=VP, t=T)
    with pytest.raises(ValueError, match=r"has no parameter \['process'\]"):
        renamed_keywords(sde="process")(lambda sde, t: t)
