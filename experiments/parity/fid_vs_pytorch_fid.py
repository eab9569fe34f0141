"""Parity of diffjax's FID Inception and Frechet distance with pytorch-fid, on one weights file.

pytorch-fid is the implementation people compare FID numbers against. This script

1. builds pytorch-fid's FID Inception-v3 (``InceptionV3([3], resize_input=True, normalize_input=True,
   use_fid_inception=True)``: the ``pt_inception-2015-12-05`` architecture with its ``FIDInceptionA/C/E_1/E_2``
   blocks) with *random* weights, written in pytorch-fid's own format (``torch.save`` of the state dict, the key
   names of ``pt_inception-2015-12-05-6726825d.pth``). Nothing is downloaded: pytorch-fid's
   ``load_state_dict_from_url`` is pointed at that local file;
2. loads the same file into diffjax with :func:`diffjax.eval.inception.load_fid_inception_params` (torch-free
   reader, BatchNorm folded into the convolutions);
3. runs both on the same uint8 images (Fashion-MNIST, 28x28 grayscale repeated to RGB the way pytorch-fid's
   ``convert('RGB')`` does, bilinearly resized to 299 inside both networks) and reports the largest feature
   difference, the largest logit difference, and the Frechet distance of two image sets computed end to end by
   each library (pytorch-fid: its features, ``np.mean`` / ``np.cov`` and ``calculate_frechet_distance``; diffjax:
   its features, ``feature_statistics`` and ``frechet_distance``), plus each Frechet-distance implementation on
   the other's features.

The random weights are made so that activations stay O(1) through all 94 convolutions: He-normal convolution
kernels, BatchNorm scales uniform in [0.5, 1.5] and shifts normal(0, 0.2), and BatchNorm running statistics set
to the statistics of the pre-normalisation activations on 64 calibration images (Fashion-MNIST training images
not used in the comparison; torch ``BatchNorm2d(momentum=None)`` in training mode), so every BatchNorm actually
normalises. The classifier head (1008 logits) is normal(0, 1/sqrt(2048)).

Needs torch, torchvision and pytorch-fid in a separate environment (the library itself never imports torch), e.g.
``python3 -m venv --system-site-packages /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 pytorch-fid``.
Run from the repository root::

    /tmp/torchenv/bin/python experiments/parity/fid_vs_pytorch_fid.py --num-images 1000 --out /tmp/fid_parity.json

``--torchvision-without-ops`` imports a torchvision whose C extension cannot load next to the installed torch (the
CUDA torchvision 0.28.0 wheel with torch 2.13.0+cpu fails with "operator torchvision::nms does not exist"):
pytorch-fid uses none of those operators, only ``torchvision.models.inception``'s modules.

The runs are in experiments/parity/README.md (and the first in experiments/results/README.md, "FID parity with
pytorch-fid").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def import_torchvision_without_ops():
    """Import torchvision with its custom operators' fake-kernel registrations skipped, for a torchvision build whose
    C extension (nms, roi_align, ...) cannot load next to this torch. pytorch-fid uses none of those operators, only
    ``torchvision.models.inception``'s ``nn`` modules, so nothing it computes changes."""
    import torch.library
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
        import torchvision  # noqa: F401
        import torchvision.models  # noqa: F401
    finally:
        torch.library.register_fake = register_fake


def _torch():
    import torch
    import torchvision  # noqa: F401  (pytorch-fid's blocks subclass torchvision's)
    import pytorch_fid.inception  # noqa: F401
    return torch


def _to_torch_input(images_uint8):
    """(N, H, W, C) uint8, C in {1, 3} -> (N, 3, H, W) float32 in [0, 1] (pytorch-fid's ToTensor of an RGB image)."""
    torch = _torch()
    x = np.asarray(images_uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float() / 255.0


def random_fid_state_dict(calibration_images, *, seed: int = 0) -> dict:
    """A state dict with the keys and shapes of pytorch-fid's weights file, random but with calibrated BatchNorms.

    The network is pytorch-fid's own ``fid_inception_v3()`` (torchvision's Inception3 with 1008 classes and the FID
    blocks), built from a random state dict; its BatchNorm running statistics are then measured on
    ``calibration_images`` after pytorch-fid's input transform (bilinear resize to 299, ``2x - 1``).

    Args:
        calibration_images: (M, H, W, C) uint8 images.
        seed: torch seed of the random draws.

    Returns:
        ``{name: torch.Tensor}``, ready for ``torch.save``.
    """
    torch = _torch()
    import torch.nn.functional as F
    import torchvision
    from pytorch_fid import inception as pfi

    gen = torch.Generator().manual_seed(seed)
    template = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                               init_weights=False).state_dict()
    sd = {}
    for name, t in template.items():
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.zeros_like(t)
        elif name == "fc.weight":
            sd[name] = torch.randn(t.shape, generator=gen) / np.sqrt(t.shape[1])
        elif name == "fc.bias":
            sd[name] = 0.1 * torch.randn(t.shape, generator=gen)
        elif name.endswith("conv.weight"):
            fan_in = t.shape[1] * t.shape[2] * t.shape[3]
            sd[name] = torch.randn(t.shape, generator=gen) * np.sqrt(2.0 / fan_in)
        elif name.endswith("bn.weight"):
            sd[name] = 0.5 + torch.rand(t.shape, generator=gen)
        elif name.endswith("bn.bias"):
            sd[name] = 0.2 * torch.randn(t.shape, generator=gen)
        elif name.endswith("bn.running_mean"):
            sd[name] = torch.zeros_like(t)
        elif name.endswith("bn.running_var"):
            sd[name] = torch.ones_like(t)
        else:
            raise ValueError(f"unexpected entry {name} in torchvision's Inception-v3 state dict")
    saved = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: sd
    try:
        net = pfi.fid_inception_v3()  # pytorch-fid's FID network, loading `sd` instead of downloading
    finally:
        pfi.load_state_dict_from_url = saved
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for a in range(0, len(calibration_images), 32):
            x = _to_torch_input(calibration_images[a:a + 32])
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            net(2 * x - 1)
    net.eval()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def pytorch_fid_network(weights_path: str):
    """pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)`` on a
    local weights file (its ``load_state_dict_from_url`` is pointed at the file), plus the 1008-way ``fc`` head."""
    torch = _torch()
    from pytorch_fid import inception as pfi

    saved = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: torch.load(weights_path, map_location="cpu")
    try:
        net = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    finally:
        pfi.load_state_dict_from_url = saved
    sd = torch.load(weights_path, map_location="cpu")
    fc = torch.nn.Linear(2048, 1008)
    fc.load_state_dict({"weight": sd["fc.weight"], "bias": sd["fc.bias"]})
    return net, fc.eval()


def torch_outputs(net, fc, images_uint8, *, batch_size: int = 50):
    """pool3 features (N, 2048) and logits (N, 1008) from pytorch-fid's network, as in its get_activations."""
    torch = _torch()
    feats, logits = [], []
    with torch.no_grad():
        for a in range(0, len(images_uint8), batch_size):
            pred = net(_to_torch_input(images_uint8[a:a + batch_size]))[0]
            pred = pred.squeeze(3).squeeze(2)
            feats.append(pred.numpy())
            logits.append(fc(pred).numpy())
    return np.concatenate(feats), np.concatenate(logits)


def pytorch_fid_distance(feats1, feats2) -> float:
    """pytorch-fid's statistics (``np.mean``, ``np.cov(rowvar=False)``) and ``calculate_frechet_distance``."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    s = [(np.mean(f, axis=0), np.cov(f, rowvar=False)) for f in (feats1, feats2)]
    return float(calculate_frechet_distance(s[0][0], s[0][1], s[1][0], s[1][1]))


def diffjax_distance(feats1, feats2) -> float:
    from diffjax.eval import metrics

    return metrics.frechet_distance(*metrics.feature_statistics(feats1), *metrics.feature_statistics(feats2))


def _relative(a, b):
    """max |a - b| / max |b| and the largest per-row ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    rows = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(a - b)) / scale), float(rows.max())


def run_parity(set_a, set_b, calibration, *, batch_size: int = 50, seed: int = 0, weights_path: str | None = None,
               log=print) -> dict:
    """Write random FID weights, load them into pytorch-fid and diffjax, compare on ``set_a`` and ``set_b``.

    Args:
        set_a, set_b: (N, H, W, C) uint8 image sets (their FID is compared; features are compared on both).
        calibration: uint8 images for the BatchNorm statistics of the random weights.
        batch_size: images per forward pass (both libraries).
        seed: seed of the random weights.
        weights_path: where the ``.pth`` is written (a temporary file when ``None``).
        log: progress printer.

    Returns:
        A dict of the figures (see the README).
    """
    torch = _torch()
    from diffjax.eval import inception as inc

    tmp = None
    if weights_path is None:
        tmp = tempfile.TemporaryDirectory()
        weights_path = os.path.join(tmp.name, "pt_inception-random.pth")
    try:
        t0 = time.perf_counter()
        torch.save(random_fid_state_dict(calibration, seed=seed), weights_path)
        log(f"random FID weights written to {weights_path} ({time.perf_counter() - t0:.0f} s)")
        net, fc = pytorch_fid_network(weights_path)
        params = inc.load_fid_inception_params(weights_path)  # diffjax's torch-free reader
        out = {}
        for name, images in (("a", set_a), ("b", set_b)):
            t0 = time.perf_counter()
            out[f"torch_{name}"] = torch_outputs(net, fc, images, batch_size=batch_size)
            log(f"pytorch-fid features of set {name}: {time.perf_counter() - t0:.0f} s")
            t0 = time.perf_counter()
            out[f"jax_{name}"] = inc.inception_outputs(params, images, batch_size=batch_size)
            log(f"diffjax features of set {name}: {time.perf_counter() - t0:.0f} s")
    finally:
        if tmp is not None:
            tmp.cleanup()
    tf = np.concatenate([out["torch_a"][0], out["torch_b"][0]])
    jf = np.concatenate([out["jax_a"][0], out["jax_b"][0]])
    tl = np.concatenate([out["torch_a"][1], out["torch_b"][1]])
    jl = np.concatenate([out["jax_a"][1], out["jax_b"][1]])
    f_abs, f_rel, f_row = _relative(jf, tf)
    l_abs, l_rel, l_row = _relative(jl, tl)
    fid_ref = pytorch_fid_distance(out["torch_a"][0], out["torch_b"][0])
    fid_dj = diffjax_distance(out["jax_a"][0], out["jax_b"][0])
    return {
        "num_images_per_set": int(len(set_a)),
        "feature_abs_max": float(np.max(np.abs(tf))),
        "feature_mean": float(np.mean(tf)),
        "feature_fraction_zero": float(np.mean(tf == 0)),
        "feature_max_abs_diff": f_abs,
        "feature_max_abs_diff_over_max_abs": f_rel,
        "feature_max_row_relative_l2": f_row,
        "logit_max_abs_diff": l_abs,
        "logit_max_abs_diff_over_max_abs": l_rel,
        "logit_max_row_relative_l2": l_row,
        "fid_pytorch_fid": fid_ref,
        "fid_diffjax": fid_dj,
        "fid_relative_difference": abs(fid_dj - fid_ref) / abs(fid_ref),
        "fid_pytorch_fid_on_diffjax_features": pytorch_fid_distance(out["jax_a"][0], out["jax_b"][0]),
        "fid_diffjax_on_pytorch_fid_features": diffjax_distance(out["torch_a"][0], out["torch_b"][0]),
    }


def fashion_mnist_sets(num_images: int):
    """Set a: the first ``num_images`` test images; set b: the first ``num_images`` training images; calibration:
    the 64 training images after those."""
    from diffjax.data import load_fashion_mnist

    test, _ = load_fashion_mnist("test")
    train, _ = load_fashion_mnist("train")
    return test[:num_images], train[:num_images], train[num_images:num_images + 64]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=1000, help="images per set (two sets)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="where to write the random .pth (default: a temporary file)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--torchvision-without-ops", action="store_true",
                   help="import torchvision without its C operators (see the module docstring)")
    args = p.parse_args(argv)
    if args.torchvision_without_ops:
        import_torchvision_without_ops()
    torch = _torch()
    import jax
    import pytorch_fid
    import torchvision

    set_a, set_b, calib = fashion_mnist_sets(args.num_images)
    t0 = time.perf_counter()
    res = run_parity(set_a, set_b, calib, batch_size=args.batch_size, seed=args.seed, weights_path=args.weights)
    res.update(torch=torch.__version__, torchvision=torchvision.__version__, pytorch_fid=pytorch_fid.__version__,
               jax=jax.__version__, wall_s=round(time.perf_counter() - t0, 1))
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
