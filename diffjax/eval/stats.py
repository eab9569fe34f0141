"""Reference feature statistics, computed once per (dataset, split, feature network) and cached as ``.npz``.

FID and its domain-classifier variant compare the statistics of generated samples with those of real data;
the real-data side is the same for every evaluation, so it is computed once and stored as
``{cache_dir}/{dataset}__{split}__{feature_net}.npz`` holding ``mu``, ``sigma``, ``count`` and the three key
strings (checked on load), plus optionally the raw ``features`` (needed for KID).

Computation streams over batches with :class:`diffjax.eval.metrics.FeatureStats`; every
``checkpoint_every`` batches the accumulator is saved next to the target (``*.partial.npz``) so an
interrupted run resumes from the last saved batch (the batch iterable must yield the same batches in the
same order on every run). All writes go to a temporary file first and are renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from typing import Callable, Iterable

import jax
import numpy as np

from diffjax.core._checks import check_int
from diffjax.eval import metrics

__all__ = [
    "save_npz_atomic",
    "reference_stats_path",
    "params_fingerprint",
    "compute_feature_stats",
    "load_reference_stats",
    "reference_stats",
]

_SAFE = re.compile(r"^[A-Za-z0-9._+-]+$")


def _check_key(name: str, value) -> str:
    if not isinstance(value, str) or not _SAFE.match(value) or "__" in value:
        raise ValueError(
            f"{name} must be a non-empty string of letters, digits and . _ + - (no '__'), got {value!r}"
        )
    return value


def reference_stats_path(cache_dir: str, *, dataset: str, split: str, feature_net: str) -> str:
    """The cache file for one (dataset, split, feature network), e.g. ``cifar10__train__fid_inception.npz``.

    Args:
        cache_dir: folder of the cache.
        dataset: dataset name (``"cifar10"``, ``"fashion_mnist"``, ...).
        split: split name (``"train"``, ``"test"``).
        feature_net: identifier of the feature network and its weights (see :func:`params_fingerprint`).

    Returns:
        The ``.npz`` path.
    """
    parts = [_check_key("dataset", dataset), _check_key("split", split), _check_key("feature_net", feature_net)]
    return os.path.join(os.fspath(cache_dir), "__".join(parts) + ".npz")


def params_fingerprint(params, *, length: int = 12) -> str:
    """Short SHA-1 of a parameter tree's leaf bytes, shapes and dtypes: ties cached statistics to weights.

    Args:
        params: any pytree of arrays.
        length: number of hex digits kept.

    Returns:
        A hex string, equal for equal trees.
    """
    length = check_int("length", length, minimum=4)
    h = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        a = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:length]


def save_npz_atomic(path: str, **arrays) -> None:
    """``np.savez`` through a temporary file in the same folder and a rename (readers never see a partial file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def compute_feature_stats(
    feature_fn: Callable[[np.ndarray], np.ndarray],
    batches: Iterable,
    *,
    partial_path: str | None = None,
    checkpoint_every: int = 10,
    keep_features: bool = False,
) -> tuple[metrics.FeatureStats, np.ndarray | None]:
    """Stream ``feature_fn`` over ``batches`` into a :class:`~diffjax.eval.metrics.FeatureStats`, resumably.

    Args:
        feature_fn: maps a batch (e.g. images) to (batch, d) features.
        batches: iterable of batches, the same sequence on every run (needed for resuming).
        partial_path: where the accumulator is saved every ``checkpoint_every`` batches and read back on a
            restart (skipping the batches it covers); ``None`` disables resuming. Removed on completion.
        checkpoint_every: batches between saves of the accumulator.
        keep_features: also return all features, (N, d) float32 (for KID); saved with the accumulator.

    Returns:
        ``(stats, features_or_None)``.
    """
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    stats, feats, done = None, [], 0
    if partial_path is not None and os.path.exists(partial_path):
        with np.load(partial_path) as z:
            stats = metrics.FeatureStats(z["count"], z["mean"], z["m2"])
            done = int(z["batches_done"])
            if keep_features:
                if "features" not in z.files:
                    stats, done = None, 0  # saved without features: start over
                else:
                    feats = [z["features"]]
    for i, batch in enumerate(batches):
        if i < done:
            continue
        f = np.asarray(feature_fn(batch), np.float32)
        if stats is None:
            if f.ndim != 2:
                raise ValueError(f"feature_fn must return (batch, feature_dim) arrays, got shape {f.shape}")
            stats = metrics.init_feature_stats(f.shape[1])
        stats = metrics.update_feature_stats(stats, f)
        if keep_features:
            feats.append(f)
        done = i + 1
        if partial_path is not None and done % checkpoint_every == 0:
            extra = {"features": np.concatenate(feats)} if keep_features else {}
            save_npz_atomic(partial_path, batches_done=np.asarray(done), **stats._asdict(), **extra)
    if stats is None:
        raise ValueError("batches must yield at least one batch")
    if partial_path is not None and os.path.exists(partial_path):
        os.remove(partial_path)
    return stats, (np.concatenate(feats) if keep_features else None)


def load_reference_stats(path: str, *, dataset: str, split: str, feature_net: str) -> dict[str, np.ndarray]:
    """Read a cache file written by :func:`reference_stats`, checking that it belongs to the given keys.

    Returns:
        ``{"mu", "sigma", "count"[, "features"]}``.
    """
    with np.load(path) as z:
        for name, want in (("dataset", dataset), ("split", split), ("feature_net", feature_net)):
            got = str(z[name]) if name in z.files else None
            if got != want:
                raise ValueError(f"reference stats file {path!r} has {name}={got!r}, expected {want!r}")
        return {k: z[k] for k in ("mu", "sigma", "count", "features") if k in z.files}


def reference_stats(
    cache_dir: str,
    *,
    dataset: str,
    split: str,
    feature_net: str,
    feature_fn: Callable[[np.ndarray], np.ndarray],
    batches: Iterable | Callable[[], Iterable],
    keep_features: bool = False,
    checkpoint_every: int = 10,
) -> dict[str, np.ndarray]:
    """Load the cached reference statistics, or compute (resumably) and cache them first.

    Args:
        cache_dir: cache folder (created if needed).
        dataset: dataset name, part of the cache key.
        split: split name, part of the cache key.
        feature_net: feature network id, part of the cache key.
        feature_fn: batch -> (batch, d) features.
        batches: the real data, as an iterable of batches or a zero-argument callable returning one
            (only called when the cache is missing, so loading the data is skipped on a hit).
        keep_features: also store (and return) the raw features (for KID). A cache without them is
            recomputed when they are asked for.
        checkpoint_every: batches between saves of the partial accumulator.

    Returns:
        ``{"mu": (d,), "sigma": (d, d), "count": (), ["features": (N, d)]}``.
    """
    path = reference_stats_path(cache_dir, dataset=dataset, split=split, feature_net=feature_net)
    if os.path.exists(path):
        out = load_reference_stats(path, dataset=dataset, split=split, feature_net=feature_net)
        if not keep_features or "features" in out:
            return out
    if callable(batches):
        batches = batches()
    os.makedirs(os.fspath(cache_dir), exist_ok=True)
    stats, feats = compute_feature_stats(
        feature_fn, batches, partial_path=path[: -len(".npz")] + ".partial.npz",
        checkpoint_every=checkpoint_every, keep_features=keep_features,
    )
    mu, sigma = metrics.finalize_feature_stats(stats)
    out = {"mu": mu, "sigma": sigma, "count": np.asarray(stats.count)}
    if feats is not None:
        out["features"] = feats
    save_npz_atomic(path, dataset=np.asarray(dataset), split=np.asarray(split),
                     feature_net=np.asarray(feature_net), **out)
    return out
