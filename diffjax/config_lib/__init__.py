"""The one place that reads a ``ConfigDict`` and turns its names into objects; with ``main.py`` and
:mod:`diffjax.run` (the entry layer) the only code that reads a config.

Every string in a config is resolved here with an explicit dict, after :func:`validate` has checked the whole
config (unknown names raise ``ValueError`` listing the allowed values, before anything is compiled). One file per
job:

* ``_names``: the tables of processes, networks and datasets; the field checks every other file uses.
* ``_fields``: config field paths of ``--config.X=...`` (:func:`check_field_path`, score_sde's field names).
* ``_build``: process, network, optimizer and learning rate, EMA decay, the loop's compiled steps, input pipeline.
* ``_network``: how a network sees the process (the marginal its output is converted with, its time input).
* ``_score``: the model's score function and the samplers' (guidance, x0 range control).
* ``_loss``: the training objective, from ``training.loss`` to ``loss_fn(params, key, batch)``.
* ``_sampler``: the sampler of ``sampling.*`` and the typing of ``sampling.options``.
* ``_noisy_classifier``: the noise-conditional classifier of classifier guidance.
* ``_clip``: the contrastive text-image model of ``config.task="clip"`` and its tokenizer.
* ``_clip_guidance``: CLIP guidance of an unconditional model by a noise-aware CLIP (``sampling.clip_*``).
* ``_distill``: the few-step method of ``config.distill`` as one object.
* ``_text``: text-conditional models (``text.*``): the wrapped network, captioned batches, the prompts.
* ``_autoencoder``: the KL autoencoder of ``config.autoencoder`` (``config.task="autoencoder"``).
* ``_latent``: latent diffusion: the autoencoder of ``latent.autoencoder_workdir``, its latents' shape.
* ``_cascade``: a cascade's super-resolution stage (``cascade.*``): its condition in training and sampling.
* ``_validate``: :func:`validate`, the whole diffusion config before anything is compiled.
"""
from diffjax.config_lib._autoencoder import (RECONSTRUCTION_LOSSES, autoencoder_loss_fn, build_autoencoder,
                                             validate_autoencoder)
from diffjax.config_lib._build import (EMA_SCHEDULES, LR_DECAYS, MULTI_STEPS, build_dataset, build_ema_decay,
                                       build_learning_rate, build_model, build_optimizer, build_sde,
                                       build_train_steps, posthoc_sigma_rels)
from diffjax.config_lib._clip import (CLIP_CONFIG, CLIP_DATASETS, CLIP_PARAMS, build_clip, clip_noise_labels,
                                     clip_record, clip_tokenizer, init_clip, load_clip, validate_clip)
from diffjax.config_lib._cascade import batch_condition, example_condition, sampling_condition, validate_cascade
from diffjax.config_lib._clip_guidance import clip_guided, guiding_clip, validate_clip_guidance
from diffjax.config_lib._distill import (DISTILL_METHODS, DISTILL_METRICS, DISTILL_ODE_STEPS,
                                         DISTILL_PARAMETERIZATIONS, DISTILL_WEIGHTINGS, distill_method,
                                         distill_rounds, distill_student_config, distill_total_steps,
                                         edm_preconditioned, validate_distill)
from diffjax.config_lib._fields import SCORE_SDE_FIELDS, check_field_path
from diffjax.config_lib._latent import LATENT_ENCODINGS, autoencoder_config, is_latent, latent_shape, validate_latent
from diffjax.config_lib._loss import LOSSES, TIME_SAMPLINGS, WEIGHTINGS, build_loss_fn
from diffjax.config_lib._names import (IMAGE_DATASETS, MODELS, SCORE_SDE_VALUES, SDES, TOY_DATASETS, image_shape,
                                       input_shape, is_conditional, is_super_resolution, is_toy, num_classes)
from diffjax.config_lib._network import classifier_time_input, network_marginal  # noqa: F401 (run/, tests)
from diffjax.config_lib._noisy_classifier import (NOISY_CLASSIFIER_CONFIG, NOISY_CLASSIFIER_PARAMS,
                                                  build_noisy_classifier, load_noisy_classifier,
                                                  noisy_classifier_logits_fn, noisy_classifier_num_classes,
                                                  noisy_classifier_record, sampling_num_classes,
                                                  validate_noisy_classifier)
from diffjax.config_lib._sampler import (CORRECTORS, SAMPLERS, SOLVERS, TIME_GRIDS, build_sampler, sampler_options,
                                         sampler_options_config)
from diffjax.config_lib._score import build_sampling_score_fn, build_score_fn
from diffjax.config_lib._text import (TEXT_CONDITIONINGS, captioned_dataset, null_condition, prompt_ids,
                                     prompt_record, prompted, sampling_prompts, text_conditional, text_model, validate_text,
                                     with_pretrained_text)
from diffjax.config_lib._text import adapter_words, text_tokenizer
from diffjax.config_lib._validate import validate

__all__ = ["SDES", "MODELS", "LOSSES", "WEIGHTINGS", "TIME_SAMPLINGS", "SAMPLERS", "SOLVERS", "TIME_GRIDS",
           "CORRECTORS", "TOY_DATASETS", "IMAGE_DATASETS", "validate",
           "build_sde", "build_model", "build_optimizer", "build_learning_rate", "build_train_steps", "MULTI_STEPS",
           "LR_DECAYS", "EMA_SCHEDULES", "build_ema_decay", "posthoc_sigma_rels", "build_loss_fn", "build_score_fn",
           "build_sampling_score_fn", "build_sampler", "sampler_options", "sampler_options_config",
           "build_dataset", "input_shape", "is_toy", "num_classes", "check_field_path", "SCORE_SDE_FIELDS",
           "SCORE_SDE_VALUES",
           "NOISY_CLASSIFIER_PARAMS", "NOISY_CLASSIFIER_CONFIG", "validate_noisy_classifier", "build_noisy_classifier",
           "noisy_classifier_num_classes", "noisy_classifier_logits_fn", "noisy_classifier_record",
           "load_noisy_classifier", "sampling_num_classes",
           "DISTILL_METHODS", "DISTILL_METRICS", "DISTILL_ODE_STEPS", "DISTILL_WEIGHTINGS", "DISTILL_PARAMETERIZATIONS",
           "distill_method", "validate_distill", "distill_rounds", "distill_total_steps", "distill_student_config",
           "edm_preconditioned",
           "CLIP_PARAMS", "CLIP_CONFIG", "CLIP_DATASETS", "build_clip", "clip_noise_labels", "clip_record",
           "clip_tokenizer", "init_clip", "load_clip", "validate_clip",
           "clip_guided", "guiding_clip", "validate_clip_guidance", "prompted",
           "RECONSTRUCTION_LOSSES", "build_autoencoder", "autoencoder_loss_fn", "validate_autoencoder",
           "LATENT_ENCODINGS", "is_latent", "latent_shape", "image_shape", "autoencoder_config", "validate_latent",
           "TEXT_CONDITIONINGS", "text_conditional", "text_model", "null_condition", "captioned_dataset",
           "with_pretrained_text", "sampling_prompts", "prompt_ids", "prompt_record", "validate_text",
           "is_super_resolution", "is_conditional", "validate_cascade", "batch_condition", "sampling_condition",
           "example_condition",
           "adapter_words", "text_tokenizer"]
