"""The score functions of a config's network: the model's own (:func:`build_score_fn`, what losses and likelihoods
use) and the one the samplers use (:func:`build_sampling_score_fn`: guidance and the x0 range control on top).
A learned-variance model's score stays a :class:`~diffjax.LearnedVarianceScore` through every transform (the core
transforms keep ``v``), so the grid samplers sample with its learned variance by default."""
from __future__ import annotations

import diffjax.core as core
from diffjax.config_lib._clip_guidance import clip_guided, clip_scale
from diffjax.config_lib._names import _nets, is_conditional, num_classes
from diffjax.config_lib._network import network_marginal, score_kwargs
from diffjax.config_lib._noisy_classifier import classifier_guided, _classifier_scale
from diffjax.config_lib._text import null_condition, text_conditional


def _conditional_score_fn(config, model, sde, params, *, train: bool = False, rng=None):
    """``score_fn(x, t, y)`` of a class-conditional network (``y=None``: the null label)."""
    return _nets().make_conditional_score_fn(model.apply, params, network_marginal(config, sde), train=train,
                                             rng=rng, **score_kwargs(config))


def build_score_fn(config, model, sde, params, *, y=None, train: bool = False, rng=None):
    """``score_fn(x, t)`` of the network with ``params`` (``y``: class labels of a conditional model, caption token
    ids of a text-conditional one, or a super-resolution stage's :class:`~diffjax.core.cascade.LowResCondition`)."""
    if is_conditional(config):
        return core.with_label(_conditional_score_fn(config, model, sde, params, train=train, rng=rng), y)
    return _nets().make_score_fn(model.apply, params, network_marginal(config, sde), train=train, rng=rng,
                                 **score_kwargs(config))


def build_sampling_score_fn(config, model, sde, params, *, y=None):
    """The score the samplers use: :func:`build_score_fn`, with classifier-free guidance of scale
    ``sampling.guidance_scale`` (null label ``num_classes``; a text-conditional model's: the empty caption) and
    the x0 range control of ``sampling.clip_denoised`` / ``sampling.dynamic_threshold``. Not for likelihoods, which
    need the model's own score.

    With ``sampling.classifier_scale > 0`` the score (guided or not) is classifier-guided
    (:func:`~diffjax.classifier_guidance`) by the noise-conditional classifier trained in
    ``sampling.classifier_workdir`` (``config.task="noisy_classifier"``) for the labels ``y`` (required then; see
    :func:`~diffjax.config_lib.sampling_num_classes`), before the x0 range control; it works with every sampler.
    With ``sampling.clip_scale > 0`` an unconditional model's score is CLIP-guided (:func:`~diffjax.clip_guidance`)
    by the noise-aware CLIP of ``sampling.clip_workdir`` towards the prompts whose token ids are ``y``, likewise.

    A learned-variance model (``model.overrides.learn_sigma``) gives a :class:`~diffjax.LearnedVarianceScore`
    through all of these (with guidance ``v`` is the conditional model's, as in GLIDE)."""
    s = config.sampling
    if (num_classes(config) or text_conditional(config)) and s.guidance_scale > 0:
        cond = _conditional_score_fn(config, model, sde, params)
        null = null_condition(config) if text_conditional(config) else num_classes(config)  # the empty caption
        guided = core.classifier_free_guidance(cond, guidance_scale=s.guidance_scale, null_label=null)
        score_fn = core.with_label(guided, y)
    else:
        score_fn = build_score_fn(config, model, sde, params, y=y)
    if _classifier_scale(config) > 0:
        score_fn = classifier_guided(config, score_fn, y)
    if clip_scale(config) > 0:  # y: the prompts' token ids (an unconditional model ignores them)
        score_fn = clip_guided(config, score_fn, y)
    if s.clip_denoised:
        score_fn = core.clip_denoised(score_fn, network_marginal(config, sde))
    elif s.dynamic_threshold:
        score_fn = core.dynamic_threshold(score_fn, network_marginal(config, sde),
                                          percentile=float(s.dynamic_threshold))
    return score_fn
