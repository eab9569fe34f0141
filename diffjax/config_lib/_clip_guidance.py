"""CLIP guidance of an unconditional diffusion model: ``sampling.clip_workdir`` (a ``config.task="clip"`` run with
``clip.noise_aware=True`` on this config's process) and ``sampling.clip_scale`` steer every sampler towards the
prompts of ``sampling.prompt`` / ``sampling.prompt_file`` (default: one per class) with
:func:`~diffjax.clip_guidance`. The prompts go to CLIP's text tower only (tokenized to its ``clip.max_length``); the
samples cycle through them as a text-conditional model's do, and the sample file records them."""
from __future__ import annotations

import functools
import os

import diffjax.core as core
from diffjax.config_lib._build import build_sde
from diffjax.config_lib._clip import CLIP_PARAMS, clip_noise_labels, clip_tokenizer, load_clip
from diffjax.config_lib._names import num_classes
from diffjax.config_lib._noisy_classifier import check_guide_fits, guidance_fields


def clip_scale(config) -> float:
    """``sampling.clip_scale`` (0: no CLIP guidance)."""
    return config.sampling.get("clip_scale", 0.0)


@functools.lru_cache(maxsize=4)
def _load_cached(workdir: str, mtime: float):
    del mtime  # part of the cache key: a retrained CLIP is read again
    return load_clip(workdir)


def guiding_clip(config):
    """``(config_record, model, params)`` of the CLIP of ``sampling.clip_workdir`` (read once per file version);
    ``ValueError`` naming the field when the directory is no CLIP workdir."""
    workdir = config.sampling.clip_workdir
    try:
        mtime = os.path.getmtime(os.path.join(workdir, CLIP_PARAMS))
    except OSError:
        mtime = -1.0
    try:
        return _load_cached(os.path.abspath(workdir), mtime)
    except ValueError as e:
        raise ValueError(f"sampling.clip_workdir: {e}") from None


def clip_prompt_length(config) -> int:
    """The token length prompts are encoded to for the guiding CLIP's text tower (its ``clip.max_length``)."""
    return int(guiding_clip(config)[0].clip.max_length)


def validate_clip_guidance(config, sde) -> None:
    """``sampling.clip_scale`` (finite, >= 0; 0: off) and ``sampling.clip_workdir`` (a noise-aware CLIP of this
    config's images and process) for an unconditional image model, and the prompts, before anything is compiled."""
    from diffjax.config_lib._text import sampling_prompts, text_conditional
    s = config.sampling
    scale, workdir = guidance_fields(config, "clip", "the workdir of a config.task='clip' run with "
                                     "clip.noise_aware=True", "CLIP's image tower")
    if not scale:
        return
    if num_classes(config) or text_conditional(config):
        raise ValueError(f"sampling.clip_scale={scale} guides an unconditional model; this one is conditional "
                         f"(data.num_classes={num_classes(config) or 0}, text.conditioning="
                         f"{config.get('text', {}).get('conditioning', '')!r}): use sampling.guidance_scale")
    if s.get("classifier_scale", 0.0):
        raise ValueError(f"sampling.clip_scale={scale} and sampling.classifier_scale={s.classifier_scale} are "
                         f"alternatives; set one")
    rec = guiding_clip(config)[0]
    if not rec.clip.noise_aware:
        raise ValueError(f"sampling.clip_workdir={workdir!r} holds a clean-image CLIP (clip.noise_aware=False); CLIP "
                         f"guidance needs one trained on x_t: retrain it with --config.clip.noise_aware=True")
    check_guide_fits(config, sde, rec, "clip", "CLIP")
    sampling_prompts(config)


def clip_guided(config, score_fn, y):
    """``score_fn`` guided by the CLIP of ``sampling.clip_workdir`` towards the prompts ``y`` (token ids
    ``(batch, clip.max_length)``; :func:`~diffjax.clip_guidance` at ``sampling.clip_scale``, the image tower fed
    the noise labels of its own record, the logit scale its learned one; a learned variance ``v`` is kept)."""
    import jax
    import jax.numpy as jnp
    if y is None:
        raise ValueError("sampling.clip_scale > 0 needs the prompts' token ids y to guide towards; got y=None")
    rec, model, params = guiding_clip(config)
    labels_of = clip_noise_labels(rec, build_sde(rec))
    ids = jnp.asarray(y, jnp.int32)
    text_emb = model.apply({"params": params}, ids, ids != clip_tokenizer(rec).PAD, method=model.encode_text)[0]
    with jax.ensure_compile_time_eval():  # 1 / temperature: a number, also while a sampler is being traced
        tau = float(model.apply({"params": params}, method=model.logit_scale))

    def image_embed_fn(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        return model.apply({"params": params}, x, labels_of(t), method=model.encode_image)

    return core.with_label(core.clip_guidance(score_fn, image_embed_fn, scale=float(clip_scale(config)),
                                              logit_scale=tau), text_emb)
