"""A small CNN classifier for 28x28 grayscale images (Fashion-MNIST) used as a domain feature network.

Inception-v3 features mean little for 28x28 grayscale clothing and its weights cannot be fetched on an
offline machine, so for small grayscale datasets the evaluation uses this network instead: its
penultimate layer (:func:`features`, 128-d) feeds the Frechet distance and its logits feed the
classifier score (:func:`diffjax.eval.metrics.classifier_score`).

Images are float arrays in [0, 1] shaped (batch, 28, 28) or (batch, 28, 28, 1); uint8 arrays in
[0, 255] are accepted too and divided by 255. The data itself comes from :func:`diffjax.data.load_fashion_mnist`.
Trained parameters are stored as one ``.npz`` (:func:`save_classifier_params`, written atomically).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.core._checks import check_int, check_positive

__all__ = [
    "FeatureClassifier",
    "init_feature_classifier",
    "train_feature_classifier",
    "classifier_features",
    "classifier_logits",
    "accuracy",
    "save_classifier_params",
    "load_classifier_params",
]

# Fashion-MNIST training-set pixel mean / std in [0, 1] units, used to standardise the input.
_MEAN, _STD = 0.2860, 0.3530


class FeatureClassifier(nn.Module):
    """Conv(3x3)-ReLU-MaxPool blocks, then a dense ReLU feature layer, then a linear head.

    Attributes:
        num_classes: number of output logits.
        widths: channels of the conv blocks (each halves the resolution).
        feature_dim: width of the penultimate (feature) layer.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    feature_dim: int = 128

    def setup(self):
        self.convs = [nn.Conv(w, (3, 3), padding="SAME", name=f"conv{i}") for i, w in enumerate(self.widths)]
        self.dense = nn.Dense(self.feature_dim, name="dense")
        self.head = nn.Dense(self.num_classes, name="head")

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate-layer features, (batch, feature_dim), of images (batch, 28, 28[, 1]) in [0, 1]."""
        if x.ndim == 3:
            x = x[..., None]
        x = (x.astype(jnp.float32) - _MEAN) / _STD
        for conv in self.convs:
            x = nn.max_pool(nn.relu(conv(x)), (2, 2), strides=(2, 2))
        return nn.relu(self.dense(x.reshape(x.shape[0], -1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits, (batch, num_classes)."""
        return self.head(self.features(x))


def _to_unit(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _check_images(name: str, images, model: FeatureClassifier) -> None:
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] != 1):
        raise ValueError(f"{name} must be grayscale images shaped (batch, H, W) or (batch, H, W, 1), got {shape!r}")


def init_feature_classifier(key: jax.Array, *, model: FeatureClassifier | None = None, image_size: int = 28):
    """Random parameters of ``model`` (default :class:`FeatureClassifier()`)."""
    model = FeatureClassifier() if model is None else model
    image_size = check_int("image_size", image_size, minimum=4)
    return model.init(key, jnp.zeros((1, image_size, image_size, 1), jnp.float32))["params"]


def train_feature_classifier(
    train_images,
    train_labels,
    *,
    steps: int,
    batch_size: int = 128,
    seed: int = 0,
    learning_rate: float = 1e-3,
    log_every: int = 100,
    model: FeatureClassifier | None = None,
    callback: Callable[[int, float, dict], None] | None = None,
):
    """Train the classifier with Adam on softmax cross-entropy; returns the parameters.

    The data set lives on the device; each jitted step draws its batch uniformly with replacement from
    ``fold_in(key, step)``, so the result depends only on ``seed`` (and the data), not on ``log_every``.

    Args:
        train_images: (N, 28, 28[, 1]) uint8 in [0, 255] or float in [0, 1].
        train_labels: (N,) integer labels in [0, num_classes).
        steps: number of optimizer steps.
        batch_size: examples per step.
        seed: seed of the parameter init and batch draws (same seed, same parameters).
        learning_rate: Adam step size.
        log_every: how often (in steps) ``callback`` is called.
        model: the module (default :class:`FeatureClassifier()`).
        callback: called as ``callback(step, mean_loss_since_last_call, params)`` every ``log_every`` steps and at the end.

    Returns:
        The trained Flax parameter tree (``params`` collection).
    """
    model = FeatureClassifier() if model is None else model
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    log_every = check_int("log_every", log_every, minimum=1)
    learning_rate = check_positive("learning_rate", learning_rate)
    _check_images("train_images", train_images, model)
    labels = np.asarray(train_labels)
    if labels.shape != (train_images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"train_labels must be integers shaped ({train_images.shape[0]},), got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"train_labels must lie in [0, {model.num_classes}), got range [{labels.min()}, {labels.max()}]")

    images = jnp.asarray(np.asarray(train_images))  # keep uint8 on device (4x smaller); scaled per batch
    scale = 1.0 / 255.0 if images.dtype == jnp.uint8 else 1.0
    labels = jnp.asarray(labels.astype(np.int32))
    n = images.shape[0]
    key = jax.random.key(seed)
    init_key, data_key = jax.random.split(key)
    params = init_feature_classifier(init_key, model=model, image_size=images.shape[1])
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # One jitted step per dispatch: XLA:CPU runs convolutions inside a scan/while body several times
    # slower than at top level (measured ~10x), so no lax.scan here. The batch is drawn on the device.
    @jax.jit
    def train_step(p, s, data_x, data_y, i):
        idx = jax.random.randint(jax.random.fold_in(data_key, i), (batch_size,), 0, n)
        x = data_x[idx].astype(jnp.float32) * scale
        loss, g = jax.value_and_grad(loss_fn)(p, x, data_y[idx])
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for i in range(steps):
        params, opt_state, loss = train_step(params, opt_state, images, labels, jnp.asarray(i, jnp.int32))
        losses.append(loss)
        if callback is not None and ((i + 1) % log_every == 0 or i + 1 == steps):
            callback(i + 1, float(jnp.mean(jnp.stack(losses))), params)
            losses = []
    return params


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, params, x, method):
    return model.apply({"params": params}, x, method=method)


def _batched(model, params, images, method, batch_size):
    _check_images("images", images, model)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    x = _to_unit(images)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        nb = xb.shape[0]
        if nb < batch_size and x.shape[0] > batch_size:  # pad the last batch: one compiled shape only
            xb = np.concatenate([xb, np.zeros((batch_size - nb,) + xb.shape[1:], xb.dtype)])
        out.append(np.asarray(_apply(model, params, jnp.asarray(xb), method))[:nb])
    return np.concatenate(out)


def classifier_features(params, images, *, model: FeatureClassifier | None = None, batch_size: int = 1000) -> np.ndarray:
    """Penultimate-layer features (N, feature_dim) float32 of images (N, 28, 28[, 1]), computed in batches."""
    model = FeatureClassifier() if model is None else model
    return _batched(model, params, images, "features", batch_size)


def classifier_logits(params, images, *, model: FeatureClassifier | None = None, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, num_classes) float32 of images (N, 28, 28[, 1]), computed in batches."""
    model = FeatureClassifier() if model is None else model
    return _batched(model, params, images, "__call__", batch_size)


def accuracy(params, images, labels, *, model: FeatureClassifier | None = None, batch_size: int = 1000) -> float:
    """Fraction of ``images`` whose arg-max logit equals ``labels`` (N,)."""
    labels = np.asarray(labels)
    if labels.shape != (np.shape(images)[0],):
        raise ValueError(f"labels must be shaped ({np.shape(images)[0]},) to match images, got {labels.shape}")
    logits = classifier_logits(params, images, model=model, batch_size=batch_size)
    return float((logits.argmax(-1) == labels).mean())



def save_classifier_params(path: str, params) -> None:
    """Write ``params`` to ``path`` (``.npz``, one array per leaf named by its key path), atomically.

    Args:
        path: target file; the folder is created if needed.
        params: the classifier's parameter tree.
    """
    from diffjax.eval.stats import save_npz_atomic
    save_npz_atomic(path, **{jax.tree_util.keystr(p): np.asarray(leaf)
                             for p, leaf in jax.tree_util.tree_leaves_with_path(params)})


def load_classifier_params(path: str, *, model: FeatureClassifier | None = None, image_size: int = 28):
    """Read parameters written by :func:`save_classifier_params`, checked against ``model``'s structure.

    Args:
        path: the ``.npz`` file.
        model: the module they belong to (default :class:`FeatureClassifier()`).
        image_size: input size the module was built for.

    Returns:
        The parameter tree (``params`` collection) as device arrays.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"path must be an existing classifier parameter file (.npz), got {path!r}")
    model = FeatureClassifier() if model is None else model
    abstract = jax.eval_shape(lambda k: init_feature_classifier(k, model=model, image_size=image_size),
                              jax.random.key(0))
    with np.load(path, allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}

    def fill(p, leaf):
        name = jax.tree_util.keystr(p)
        if name not in stored or stored[name].shape != leaf.shape:
            got = stored[name].shape if name in stored else "missing"
            raise ValueError(f"classifier parameters in {path!r} do not match the model: {name} expected shape "
                             f"{leaf.shape}, got {got}")
        return jnp.asarray(stored[name], leaf.dtype)

    params = jax.tree_util.tree_map_with_path(fill, abstract)
    extra = set(stored) - {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract)}
    if extra:
        raise ValueError(f"classifier parameters in {path!r} have entries the model lacks: {sorted(extra)[:5]}")
    return params
