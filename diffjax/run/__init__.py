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
- :func:`train_distill`, :func:`sample_distill`, :class:`Distiller`: few-step students (``config.distill``:
  progressive distillation, consistency distillation / training) (``diffjax/run/_distill.py``).
"""
from diffjax.run._classifier import CLASSIFIER_FILE, train_classifier
from diffjax.run._noisy_classifier import (NOISY_CLASSIFIER_JSON, init_noisy_classifier, make_noisy_classifier_step,
                                           noisy_classifier_accuracy_by_time, train_noisy_classifier)
from diffjax.run._eval import (FEATURE_NETS, build_feature_net, eval_label, eval_samples, eval_settings, evaluate,
                               evaluate_images, feature_net_name, likelihood, reference_statistics, stats_mode,
                               validate_eval)
from diffjax.run._run import Run, describe, open_run, sample, sampler_label, train
from diffjax.run._cascade import SuperResolutionRun
from diffjax.run._distill import DistillState, Distiller, sample_distill, train_distill

__all__ = ["Run", "open_run", "SuperResolutionRun", "train", "sample", "sampler_label", "describe", "Distiller", "DistillState", "train_distill", "sample_distill",
           "train_classifier", "CLASSIFIER_FILE", "train_noisy_classifier",
           "make_noisy_classifier_step", "init_noisy_classifier", "noisy_classifier_accuracy_by_time",
           "NOISY_CLASSIFIER_JSON", "FEATURE_NETS",
           "validate_eval", "feature_net_name", "build_feature_net", "reference_statistics", "stats_mode",
           "evaluate_images", "eval_settings", "eval_label", "eval_samples", "evaluate", "likelihood"]
