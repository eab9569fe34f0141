"""How a network of this config sees the process: the marginal its output is converted with (the DDPM grid for a
discrete-time VP model) and its time input. The score network (``_score``) and the noise-conditional classifier
(``_noisy_classifier``) read both from here, so the classifier sees ``t`` as the score network does."""
from __future__ import annotations

from diffjax.discrete import ddpm as _ddpm


def _discrete_vp(config) -> bool:
    """A discrete-time VP model: trained on the DDPM grid (``training.continuous=False`` or the DDPM / hybrid loss)."""
    t = config.training
    return (not t.continuous or t.loss in ("ddpm", "hybrid")) and t.sde in ("vpsde", "cosine")


def network_marginal(config, sde):
    """What converts the network's output to a score: a discrete-time VP model (``training.continuous=False``, or
    the DDPM / hybrid loss) was trained on the DDPM grid, whose ``alpha_bar_i`` differ from the continuous VP
    marginal (at ``i = 0`` the grid's std is ``sqrt(beta_1)``, the SDE's is 0), so its score uses the grid, as
    score-SDE's discrete DDPM models do. The grid's step ``i`` sits at the time where the SDE's marginal equals
    ``alpha_bar_i`` (:func:`~diffjax.discrete.ddpm_grid`), where the grid samplers evaluate it."""
    discrete = not config.training.continuous or config.training.loss in ("ddpm", "hybrid")
    chain = sde.chain() if discrete else None
    return chain if isinstance(chain, _ddpm.DDPMGrid) else sde


def score_kwargs(config):
    """The keyword arguments of :func:`~diffjax.nets.make_score_fn` from ``model.*``."""
    m = config.model
    kw = dict(parameterization=m.parameterization, scale_by_sigma=m.scale_by_sigma, sigma_data=m.sigma_data,
              learned_sigma=bool(m.overrides.get("learn_sigma", False)))
    if m.time_input:
        kw["time_input"] = m.time_input
    elif _discrete_vp(config) and m.parameterization != "edm":
        kw["time_input"] = "index"  # DDPM's timestep, what the hybrid loss feeds too: grid.index(grid.time(i)) = i
    return kw


def classifier_time_input(config) -> str:
    """The score network's time input (``model.time_input`` or :func:`score_kwargs`' default, else
    :func:`~diffjax.nets.make_score_fn`'s), so that the classifier sees ``t`` as the score network does."""
    m = config.model
    if m.time_input:
        return m.time_input
    if m.parameterization == "edm":
        return "edm"
    return "index" if _discrete_vp(config) else "continuous"
