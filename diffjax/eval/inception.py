"""Inception-v3 as used for FID, in Flax, with a torch-free loader for the standard FID weights file.

The architecture is that of the TensorFlow "2015-12-05" Inception graph used by the reference FID code,
in the form pytorch-fid gives it (``FIDInceptionA/C/E_1/E_2``), which differs from torchvision's
Inception-v3 in three ways:

* the average pools in the A, C and E blocks do not count the zero padding (TF ``SAME`` pooling,
  ``count_include_pad=False``);
* the last block (``Mixed_7c``, FIDInceptionE_2) uses a 3x3 *max* pool in its pool branch;
* the classifier has 1008 outputs (the TF graph's logits), not 1000.

Input handling follows pytorch-fid: images in [0, 1], resized to 299x299 with bilinear interpolation
(half-pixel centres, no antialiasing, like ``F.interpolate(..., align_corners=False)``), then scaled to
[-1, 1]. Grayscale inputs are repeated to three channels. Outputs are the 2048-d pool3 features (FID,
KID) and the 1008 logits (Inception Score).

Weights: :func:`load_fid_inception_params` reads ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's
release file) without importing torch (:func:`~diffjax.eval.torch_state_dict.read_torch_state_dict`, re-exported
here), or an ``.npz`` holding the same named arrays. Each ``BasicConv2d``'s
BatchNorm (eps 1e-3) is folded into its convolution: ``W' = W * gamma / sqrt(var + eps)`` and
``b' = beta - mean * gamma / sqrt(var + eps)``; kernels go from torch's OIHW to Flax's HWIO.
Nothing here downloads anything.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core._checks import check_int
from diffjax.eval.torch_state_dict import read_torch_state_dict

__all__ = [
    "FIDInceptionV3",
    "init_fid_inception",
    "load_fid_inception_params",
    "read_torch_state_dict",
    "state_dict_to_params",
    "fold_conv_bn",
    "inception_outputs",
    "FEATURE_DIM",
    "NUM_LOGITS",
    "BN_EPS",
]

FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3
_MIN_SIZE = 75  # smallest input the valid-padded stem and reduction blocks accept


# ----------------------------------------------------------------------------------------------- network


def _pad(p) -> list[tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else p
    return [(ph, ph), (pw, pw)]


class BasicConv(nn.Module):
    """Conv (BatchNorm folded into its kernel and bias) followed by ReLU; torch's ``BasicConv2d``."""

    features: int
    kernel: tuple[int, int] | int
    strides: int = 1
    padding: tuple[int, int] | int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = (self.kernel, self.kernel) if isinstance(self.kernel, int) else tuple(self.kernel)
        x = nn.Conv(
            self.features, k, strides=(self.strides, self.strides), padding=_pad(self.padding),
            use_bias=True, dtype=self.dtype, name="conv",
        )(x)
        return nn.relu(x)


def _avg_pool_same(x):
    """3x3 stride-1 average pool over the valid pixels only (TF SAME pooling, ``count_include_pad=False``)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride, pad=0):
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=_pad(pad))


class InceptionA(nn.Module):
    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda f, k, p=0, name=None: BasicConv(f, k, padding=p, dtype=self.dtype, name=name)  # noqa: E731
        b1 = c(64, 1, name="branch1x1")(x)
        b5 = c(64, 5, 2, name="branch5x5_2")(c(48, 1, name="branch5x5_1")(x))
        b3 = c(64, 1, name="branch3x3dbl_1")(x)
        b3 = c(96, 3, 1, name="branch3x3dbl_3")(c(96, 3, 1, name="branch3x3dbl_2")(b3))
        bp = c(self.pool_features, 1, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, 3, strides=2, dtype=self.dtype, name="branch3x3")(x)
        bd = BasicConv(64, 1, dtype=self.dtype, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, 3, padding=1, dtype=self.dtype, name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, 3, strides=2, dtype=self.dtype, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        c = lambda f, k, p=0, name=None: BasicConv(f, k, padding=p, dtype=self.dtype, name=name)  # noqa: E731
        b1 = c(192, 1, name="branch1x1")(x)
        b7 = c(c7, 1, name="branch7x7_1")(x)
        b7 = c(c7, (1, 7), (0, 3), name="branch7x7_2")(b7)
        b7 = c(192, (7, 1), (3, 0), name="branch7x7_3")(b7)
        bd = c(c7, 1, name="branch7x7dbl_1")(x)
        bd = c(c7, (7, 1), (3, 0), name="branch7x7dbl_2")(bd)
        bd = c(c7, (1, 7), (0, 3), name="branch7x7dbl_3")(bd)
        bd = c(c7, (7, 1), (3, 0), name="branch7x7dbl_4")(bd)
        bd = c(192, (1, 7), (0, 3), name="branch7x7dbl_5")(bd)
        bp = c(192, 1, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda f, k, p=0, s=1, name=None: BasicConv(f, k, s, p, dtype=self.dtype, name=name)  # noqa: E731
        b3 = c(320, 3, s=2, name="branch3x3_2")(c(192, 1, name="branch3x3_1")(x))
        b7 = c(192, 1, name="branch7x7x3_1")(x)
        b7 = c(192, (1, 7), (0, 3), name="branch7x7x3_2")(b7)
        b7 = c(192, (7, 1), (3, 0), name="branch7x7x3_3")(b7)
        b7 = c(192, 3, s=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """``use_max_pool=False``: FIDInceptionE_1 (``Mixed_7b``); ``True``: FIDInceptionE_2 (``Mixed_7c``)."""

    use_max_pool: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda f, k, p=0, name=None: BasicConv(f, k, padding=p, dtype=self.dtype, name=name)  # noqa: E731
        b1 = c(320, 1, name="branch1x1")(x)
        b3 = c(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [c(384, (1, 3), (0, 1), name="branch3x3_2a")(b3), c(384, (3, 1), (1, 0), name="branch3x3_2b")(b3)], -1
        )
        bd = c(448, 1, name="branch3x3dbl_1")(x)
        bd = c(384, 3, 1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [c(384, (1, 3), (0, 1), name="branch3x3dbl_3a")(bd), c(384, (3, 1), (1, 0), name="branch3x3dbl_3b")(bd)],
            -1,
        )
        # The FID graph's Mixed_7c pools with max, not average (pytorch-fid's FIDInceptionE_2 note).
        pooled = _max_pool(x, 1, 1) if self.use_max_pool else _avg_pool_same(x)
        bp = c(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3; ``__call__(x) -> (pool_features (B, 2048), logits (B, 1008))``.

    Attributes:
        resize_input: bilinearly resize the input to 299x299 first (as pytorch-fid does).
        normalize_input: map [0, 1] inputs to [-1, 1].
        dtype: compute dtype of the convolutions (parameters stay float32).
    """

    resize_input: bool = True
    normalize_input: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """Args: x: (batch, H, W, C) images in [0, 1], C in {1, 3}."""
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        x = x.astype(jnp.float32)
        if self.resize_input:
            x = jax.image.resize(x, (x.shape[0], 299, 299, 3), method="bilinear", antialias=False)
        if self.normalize_input:
            x = 2.0 * x - 1.0
        d = self.dtype
        x = BasicConv(32, 3, strides=2, dtype=d, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, 3, dtype=d, name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, 3, padding=1, dtype=d, name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv(80, 1, dtype=d, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, 3, dtype=d, name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        x = InceptionA(32, dtype=d, name="Mixed_5b")(x)
        x = InceptionA(64, dtype=d, name="Mixed_5c")(x)
        x = InceptionA(64, dtype=d, name="Mixed_5d")(x)
        x = InceptionB(dtype=d, name="Mixed_6a")(x)
        x = InceptionC(128, dtype=d, name="Mixed_6b")(x)
        x = InceptionC(160, dtype=d, name="Mixed_6c")(x)
        x = InceptionC(160, dtype=d, name="Mixed_6d")(x)
        x = InceptionC(192, dtype=d, name="Mixed_6e")(x)
        x = InceptionD(dtype=d, name="Mixed_7a")(x)
        x = InceptionE(False, dtype=d, name="Mixed_7b")(x)
        x = InceptionE(True, dtype=d, name="Mixed_7c")(x)
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, name="fc")(pool)
        return pool, logits


def init_fid_inception(key: jax.Array):
    """Random parameters with the FID Inception's structure, for tests and smoke runs (not meaningful features).

    Kernels are He-normal (variance ``2 / fan_in``), biases zero, drawn with NumPy from a seed taken from
    ``key``: Flax's jitted ``init`` of this 24M-parameter network takes minutes to compile on CPU.

    Args:
        key: a JAX PRNG key (typed or raw uint32).

    Returns:
        A parameter tree with exactly the shapes :func:`load_fid_inception_params` returns.
    """
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['bias']"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), size=leaf.shape).astype(np.float32))

    return jax.tree_util.tree_map_with_path(draw, _abstract_params())


@functools.lru_cache(maxsize=1)
def _abstract_params():
    """Shapes of the parameter tree, from tracing ``init`` abstractly on a minimal 75x75 input."""
    model = FIDInceptionV3(resize_input=False)
    x = jax.ShapeDtypeStruct((1, _MIN_SIZE, _MIN_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init(k, x)["params"], jax.random.key(0), x)


@jax.jit
def _apply_default(params, x):
    return FIDInceptionV3().apply({"params": params}, x)


def inception_outputs(params, images, *, batch_size: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Pool features and logits of ``images`` in batches (the last batch is padded, one compiled shape).

    Args:
        params: FID Inception parameters (:func:`load_fid_inception_params` or :func:`init_fid_inception`).
        images: (N, H, W, C) in [0, 1] (float) or [0, 255] (uint8), C in {1, 3}.
        batch_size: images per forward pass.

    Returns:
        ``(features, logits)``: float32 (N, 2048) and (N, 1008) NumPy arrays.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be shaped (N, H, W, C) with C in (1, 3), got {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    feats, logits = [], []
    for i in range(0, images.shape[0], batch_size):
        xb = images[i : i + batch_size].astype(np.float32)
        nb = xb.shape[0]
        if nb < batch_size and images.shape[0] > batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - nb,) + xb.shape[1:], np.float32)])
        f, lg = _apply_default(params, jnp.asarray(xb))
        feats.append(np.asarray(f)[:nb])
        logits.append(np.asarray(lg)[:nb])
    return np.concatenate(feats), np.concatenate(logits)


# ----------------------------------------------------------------------------------------------- loading


def _conv_modules(tree, prefix=()):
    """Paths of all BasicConv modules (those holding a 'conv' child) in a params tree."""
    for k, v in tree.items():
        if k == "conv":
            yield prefix
        elif isinstance(v, dict) or hasattr(v, "items"):
            yield from _conv_modules(v, prefix + (k,))


def fold_conv_bn(weight, gamma, beta, mean, var, *, eps: float = BN_EPS) -> dict[str, np.ndarray]:
    """Fold inference-mode BatchNorm into a bias-free conv; torch OIHW weight -> Flax HWIO kernel.

    .. math:: W' = W\\,\\gamma/\\sqrt{\\sigma^2+\\epsilon},\\qquad b' = \\beta - \\mu\\,\\gamma/\\sqrt{\\sigma^2+\\epsilon}

    Args:
        weight: (O, I, H, W) conv weight.
        gamma: (O,) BatchNorm scale.
        beta: (O,) BatchNorm shift.
        mean: (O,) running mean.
        var: (O,) running variance.
        eps: BatchNorm epsilon.

    Returns:
        ``{"kernel": (H, W, I, O), "bias": (O,)}`` float32, computed in float64.
    """
    weight, gamma, beta, mean, var = (np.asarray(a, np.float64) for a in (weight, gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    kernel = np.transpose(weight, (2, 3, 1, 0)) * scale  # OIHW -> HWIO, then scale each output channel
    return {"kernel": kernel.astype(np.float32), "bias": (beta - mean * scale).astype(np.float32)}


def state_dict_to_params(state_dict: dict[str, np.ndarray], *, bn_eps: float = BN_EPS):
    """Map a pytorch-fid Inception state dict to :class:`FIDInceptionV3` parameters (BatchNorm folded).

    For every ``BasicConv2d`` named ``P`` (e.g. ``Mixed_6b.branch7x7_2``):

    .. math:: W' = W\\,\\gamma/\\sqrt{\\sigma^2+\\epsilon},\\qquad b' = \\beta - \\mu\\,\\gamma/\\sqrt{\\sigma^2+\\epsilon}

    from ``P.conv.weight`` (OIHW -> HWIO) and ``P.bn.{weight,bias,running_mean,running_var}``; ``fc.weight``
    is transposed to the Dense kernel. Every parameter of the network must be present with its exact shape, except
    the classifier head: a state dict with neither ``fc.weight`` nor ``fc.bias`` (a pool3 feature extractor, such
    as the TorchScript detector ``experiments/parity/fid_inception_weights.py`` converts) gives NaN logits, and
    the Inception Score of such features is reported as None (FID and KID need only the features).

    Args:
        state_dict: ``{name: array}`` as from :func:`read_torch_state_dict` or an ``.npz``.
        bn_eps: BatchNorm epsilon of the FID network (1e-3).

    Returns:
        The Flax ``params`` tree (float32).
    """
    abstract = jax.tree_util.tree_map(lambda a: a, _abstract_params())
    params: dict = {}
    missing = []

    def get(name):
        if name not in state_dict:
            missing.append(name)
            return None
        return np.asarray(state_dict[name], np.float64)

    for path in _conv_modules(abstract):
        p = ".".join(path)
        w, g, b = get(f"{p}.conv.weight"), get(f"{p}.bn.weight"), get(f"{p}.bn.bias")
        mean, var = get(f"{p}.bn.running_mean"), get(f"{p}.bn.running_var")
        if any(a is None for a in (w, g, b, mean, var)):
            continue
        node = params
        for k in path:
            node = node.setdefault(k, {})
        node["conv"] = fold_conv_bn(w, g, b, mean, var, eps=bn_eps)
    if "fc.weight" in state_dict or "fc.bias" in state_dict:
        fw, fb = get("fc.weight"), get("fc.bias")
        if fw is not None and fb is not None:
            params["fc"] = {"kernel": fw.T.astype(np.float32), "bias": fb.astype(np.float32)}
    else:  # a feature extractor without the classifier (e.g. StyleGAN3's FID detector): NaN logits, no IS
        params["fc"] = {k: np.full(v.shape, np.nan, np.float32) for k, v in abstract["fc"].items()}
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"state_dict lacks {len(missing)} FID Inception entries: {shown}")
    bad = []

    def check(path, a, ref):
        if tuple(a.shape) != tuple(ref.shape):
            bad.append(f"{jax.tree_util.keystr(path)}: {a.shape} vs expected {ref.shape}")
        return a

    jax.tree_util.tree_map_with_path(check, params, jax.tree_util.tree_map(lambda a: a, abstract))
    if bad:
        raise ValueError("state_dict shapes do not match the FID Inception: " + "; ".join(bad[:5]))
    return jax.tree_util.tree_map(jnp.asarray, params)


def load_fid_inception_params(path: str):
    """Load FID Inception parameters from ``pt_inception-2015-12-05-6726825d.pth`` or an ``.npz``.

    Args:
        path: the pytorch-fid weights file (read without torch, see :func:`read_torch_state_dict`), or an
            ``.npz`` whose arrays are named like the state dict (``Conv2d_1a_3x3.conv.weight``, ...).

    Returns:
        Parameters for :class:`FIDInceptionV3` (``model.apply({"params": params}, x)``).
    """
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"path must be an existing FID Inception weights file (.pth or .npz), got {path!r}")
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            sd = {k: z[k] for k in z.files}
    else:
        sd = read_torch_state_dict(path)
    return state_dict_to_params(sd)
