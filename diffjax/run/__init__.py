"""What ``python -m diffjax.main`` runs for each mode, callable from Python (a notebook, a script, a test).

Part of the entry layer (with :mod:`diffjax.main` and :mod:`diffjax.config_lib`): every function here reads an
``ml_collections.ConfigDict`` and resolves it through :mod:`diffjax.config_lib`; :mod:`diffjax.main` keeps only the
flags and the mode dispatch (:func:`diffjax.main.run_mode`).

- :class:`Run`, :func:`train`, :func:`sample`, :func:`describe` (``diffjax/run/_run.py``);
- :func:`evaluate`, :func:`stats_mode`, :func:`likelihood`, :func:`evaluate_images`, :func:`build_feature_net`,
  :func:`reference_statistics`, ... (``diffjax/run/_eval.py``);
- :class:`SuperResolutionRun`: a cascade's super-resolution stage, sampled through its base model
  (``diffjax/run/_cascade.py``);
- :func:`train_classifier` and :data:`CLASSIFIER_FILE`, the Fashion-MNIST feature classifier task
  (``diffjax/run/_classifier.py``);
- :func:`train_noisy_classifier`, the noise-conditional classifier ``p(y | x_t, t)`` for classifier guidance, with
  :func:`make_noisy_classifier_step` and :func:`noisy_classifier_accuracy_by_time`
  (``diffjax/run/_noisy_classifier.py``).
- :func:`train_clip`, the contrastive text-image model (``config.task="clip"``) on captioned Fashion-MNIST, with
  :func:`make_clip_step`, :func:`clip_retrieval` and :func:`batch_captions` (``diffjax/run/_clip.py``).
- :func:`run_autoencoder`, :func:`train_autoencoder`, :func:`evaluate_autoencoder`, :func:`load_autoencoder`: the
  KL autoencoder of latent diffusion (``config.task="autoencoder"``) (``diffjax/run/_autoencoder.py``).
- :func:`train_distill`, :func:`sample_distill`, :func:`evaluate_distill`, :class:`Distiller`: few-step students (``config.distill``:
  progressive distillation, consistency distillation / training) (``diffjax/run/_distill.py``).
- :func:`train_adapter`, :func:`sample_adapter`: a LoRA adapter of a trained model (``config.task="adapt"``,
  ``config.adapt``) (``diffjax/run/_adapt.py``).
"""
from diffjax.run._autoencoder import (AUTOENCODER_JSON, AutoencoderRun, evaluate_autoencoder, load_autoencoder, psnr,
                                      run_autoencoder, train_autoencoder)
from diffjax.run._classifier import CLASSIFIER_FILE, train_classifier
from diffjax.run._noisy_classifier import (NOISY_CLASSIFIER_JSON, init_noisy_classifier, make_noisy_classifier_step,
                                           noisy_classifier_accuracy_by_time, train_noisy_classifier)
from diffjax.run._clip import CLIP_JSON, batch_captions, clip_retrieval, describe_clip, make_clip_step, train_clip
from diffjax.run._eval import (FEATURE_NETS, build_feature_net, eval_label, eval_samples, eval_settings, evaluate,
                               evaluate_images, feature_net_name, likelihood, reference_statistics, stats_mode,
                               validate_eval)
from diffjax.run._run import Run, describe, open_run, sample, sampler_label, train
from diffjax.run._cascade import SuperResolutionRun
from diffjax.run._distill import DistillState, Distiller, evaluate_distill, sample_distill, train_distill
from diffjax.run._adapt import AdapterRun, load_adapt_images, sample_adapter, train_adapter

__all__ = ["Run", "open_run", "SuperResolutionRun", "train", "sample", "sampler_label", "describe", "Distiller",
           "DistillState", "train_distill", "sample_distill", "evaluate_distill",
           "train_adapter", "sample_adapter", "AdapterRun", "load_adapt_images",
           "train_classifier", "CLASSIFIER_FILE", "train_noisy_classifier",
           "make_noisy_classifier_step", "init_noisy_classifier", "noisy_classifier_accuracy_by_time",
           "NOISY_CLASSIFIER_JSON", "FEATURE_NETS",
           "train_clip", "describe_clip", "make_clip_step", "clip_retrieval", "batch_captions", "CLIP_JSON",
           "validate_eval", "feature_net_name", "build_feature_net", "reference_statistics", "stats_mode",
           "evaluate_images", "eval_settings", "eval_label", "eval_samples", "evaluate", "likelihood",
           "AutoencoderRun", "run_autoencoder", "train_autoencoder", "evaluate_autoencoder", "load_autoencoder", "psnr",
           "AUTOENCODER_JSON"]
