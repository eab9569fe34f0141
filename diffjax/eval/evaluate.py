"""Sample-quality evaluation of uint8 images against cached reference statistics (no config here).

A :class:`FeatureNet` maps uint8 images ``(N, H, W, C)`` to ``(features, logits)``: the Fashion-MNIST
:class:`~diffjax.eval.feature_classifier.FeatureClassifier` (128-d features, 10 logits; its score is the
*classifier score*) or the FID Inception-v3 (2048-d pool3 features, 1008 logits; the *Inception Score*).
:func:`image_metrics` turns the features of generated images and the reference statistics of
:func:`diffjax.eval.stats.reference_stats` into the Frechet distance, KID and the score.
``diffjax.run`` resolves the config into these calls (``--mode eval`` / ``--mode stats``,
:func:`diffjax.run.evaluate_images`).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, NamedTuple

import numpy as np

from diffjax.eval import metrics

__all__ = ["FeatureNet", "classifier_feature_net", "inception_feature_net", "image_metrics", "write_json_atomic"]


class FeatureNet(NamedTuple):
    """A feature network for sample-quality metrics.

    Attributes:
        cache_id: names the network *and its weights* in the reference-statistics cache (e.g.
            ``"classifier-3f2a..."``; letters, digits, ``. _ + -``).
        fn: ``fn(images_uint8 (N, H, W, C)) -> (features (N, d), logits (N, k))`` as float32 NumPy arrays.
        score_name: the name of the IS-type score of its logits: ``"classifier_score"`` or ``"inception_score"``.
    """

    cache_id: str
    fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    score_name: str


def classifier_feature_net(params, *, batch_size: int = 1000) -> FeatureNet:
    """The Fashion-MNIST feature classifier with ``params`` (see :mod:`diffjax.eval.feature_classifier`)."""
    from diffjax.eval import feature_classifier as fc
    from diffjax.eval.stats import params_fingerprint

    def fn(images):
        return (fc.classifier_features(params, images, batch_size=batch_size),
                fc.classifier_logits(params, images, batch_size=batch_size))

    return FeatureNet(f"classifier-{params_fingerprint(params)}", fn, "classifier_score")


def inception_feature_net(params, *, batch_size: int = 50) -> FeatureNet:
    """The FID Inception-v3 with ``params`` (see :mod:`diffjax.eval.inception`); grayscale is repeated to RGB."""
    from diffjax.eval import inception as inc
    from diffjax.eval.stats import params_fingerprint

    def fn(images):
        return inc.inception_outputs(params, images, batch_size=batch_size)

    return FeatureNet(f"inception-{params_fingerprint(params)}", fn, "inception_score")


def image_metrics(features, logits, reference: dict, *, score_name: str, kid_subsets: int = 100,
                  kid_subset_size: int = 1000, score_splits: int = 10, seed: int = 0) -> dict:
    """Frechet distance, KID and the IS-type score of generated images' features against a reference.

    Args:
        features: (N, d) features of the generated images, N >= 2.
        logits: (N, k) logits of the generated images.
        reference: ``{"mu": (d,), "sigma": (d, d), "features": (M, d)}`` of the real data
            (:func:`diffjax.eval.stats.reference_stats` with ``keep_features=True``).
        score_name: key of the score in the result (``"classifier_score"`` or ``"inception_score"``).
        kid_subsets, kid_subset_size: KID's subsets (the size is capped at ``min(N, M)``).
        score_splits: splits of the score (capped at N).
        seed: seed of KID's subset draws.

    Returns:
        ``{"frechet_distance", "kid", "kid_std", score_name, score_name + "_std", "num_samples"}`` (Python numbers;
        the score and its std are None when ``logits`` are not finite: a feature network without a head).
    """
    features = np.asarray(features, np.float64)
    mu, sigma = metrics.feature_statistics(features)
    fd = metrics.frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
    if "features" not in reference:
        raise ValueError("reference must hold the raw 'features' for KID (reference_stats(..., keep_features=True))")
    kid, kid_std = metrics.kernel_inception_distance(features, reference["features"], num_subsets=kid_subsets,
                                                     subset_size=kid_subset_size, seed=seed)
    if np.isfinite(logits).all():
        score, score_std = metrics.inception_score(logits, splits=min(int(score_splits), features.shape[0]))
    else:  # a feature network without a classifier head (NaN logits): there is no IS-type score
        score = score_std = None
    return {"frechet_distance": fd, "kid": kid, "kid_std": kid_std, score_name: score,
            f"{score_name}_std": score_std, "num_samples": int(features.shape[0])}


def write_json_atomic(path: str, record: dict) -> None:
    """Write ``record`` as JSON to ``path`` through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.json")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)
