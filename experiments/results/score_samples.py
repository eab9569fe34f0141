"""Score Fashion-MNIST sample sets with the feature classifier: one command for diffjax's and the peer's samples.

    python experiments/results/score_samples.py --classifier /work/runs/fmnist_classifier \\
        diffjax=/work/runs/budget/best/samples/samples_00001500.npz diffusers=/work/runs/diffusers_budget/samples.npz

Each argument is ``LABEL=PATH`` of an ``.npz`` whose ``x`` holds uint8 images ``(N, 28, 28, 1)`` (diffjax's
``--mode sample`` writes that; so does ``experiments/baselines/diffusers_fashion_mnist.py``). Every set is scored
against the 10,000 test images by the same network (the classifier of ``configs/fashion_mnist_classifier.py``): the
Frechet distance of its 128-d penultimate features, KID, the classifier score, and the fraction of samples the
classifier assigns to each class. Real training images at the same ``n`` give the floor. Prints one JSON line per
set and a markdown table; ``--out F`` also writes the rows as JSON, ``--grid DIR`` an 8 x 8 grid of each set's first
64 samples as ``DIR/LABEL.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def load_run_config(path, overrides=()):
    """``get_config()`` of the config file ``path`` with ``FIELD=VALUE`` overrides (each value converted to the
    field's type; tuples and lists as Python literals): how the experiment scripts rebuild a run's config."""
    import ast
    import importlib.util
    spec = importlib.util.spec_from_file_location("_run_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"an override is FIELD=VALUE, got {item!r}")
        node = config
        *parents, leaf = field.split(".")
        for name in parents:
            node = node[name]
        old = node[leaf]
        if isinstance(old, bool):
            node[leaf] = value.lower() == "true"
        elif isinstance(old, (tuple, list)):
            node[leaf] = type(old)(ast.literal_eval(value))
        else:
            node[leaf] = type(old)(value)
    return config


def fashion_mnist_eval_config(classifier_workdir, stats_dir=""):
    """The evaluation settings every comparison uses (scored identically whatever produced the samples)."""
    from configs import fashion_mnist_classifier
    config = fashion_mnist_classifier.get_config()
    config.task = "diffusion"
    config.eval.feature_net = "classifier"
    config.eval.classifier_workdir = classifier_workdir
    config.eval.stats_dir = stats_dir or os.path.join(classifier_workdir, "stats")
    config.eval.kid_subsets = 20
    config.eval.score_splits = 1
    return config


def score(images, config, fnet, ref, *, labels=None):
    """Frechet distance, KID, classifier score and class fractions of ``images``; with ``labels`` (the class each
    sample was asked for) also ``intended_accuracy``, the fraction the classifier assigns to that class."""
    from diffjax import run as dr
    config.eval.kid_subset_size = min(1000, len(images))
    m = dr.evaluate_images(config, config.eval.stats_dir, images, feature_net=fnet, reference=ref)
    _, logits = fnet.fn(images)
    predicted = np.asarray(logits).argmax(-1)
    counts = np.bincount(predicted, minlength=10) / len(images)
    out = dict(n=int(len(images)), frechet_distance=float(m["frechet_distance"]), kid=float(m["kid"]),
               classifier_score=float(m["classifier_score"]), class_fractions=[round(float(c), 3) for c in counts])
    if labels is not None:
        out["intended_accuracy"] = float(np.mean(predicted == np.asarray(labels)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classifier", required=True, help="workdir of configs/fashion_mnist_classifier.py")
    p.add_argument("--real", type=int, default=1, help="add real training images at each n as the floor (0: no)")
    p.add_argument("--out", default="")
    p.add_argument("--grid", default="", help="also write DIR/LABEL.png: the first 64 samples of each set, 8 x 8")
    p.add_argument("sets", nargs="+", help="LABEL=PATH.npz")
    args = p.parse_args()
    from diffjax import config_lib as cl
    from diffjax import run as dr

    config = fashion_mnist_eval_config(args.classifier)
    fnet = dr.build_feature_net(config)
    ref = dr.reference_statistics(config, config.eval.stats_dir, feature_net=fnet)
    rows = []
    for item in args.sets:
        label, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"each set is LABEL=PATH, got {item!r}")
        images = np.load(path)["x"]
        if args.grid:
            from diffjax.train.images import save_image_grid
            os.makedirs(args.grid, exist_ok=True)
            save_image_grid(os.path.join(args.grid, f"{label}.png"), images[:64], ncol=8)
        rows.append(dict(label=label, path=path, **score(images, config, fnet, ref)))
        print(json.dumps(rows[-1]), flush=True)
    if args.real:
        train = cl.build_dataset(config).get(np.arange(60000))[0]
        for n in sorted({r["n"] for r in rows}):
            real = train[np.random.default_rng(0).choice(len(train), n, replace=False)]
            rows.append(dict(label="real training images", path="", **score(real, config, fnet, ref)))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| samples | n | Frechet distance | KID | classifier score |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['n']} | {r['frechet_distance']:.2f} | {r['kid']:.3f} | "
              f"{r['classifier_score']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
