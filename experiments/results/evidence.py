"""The committed evidence behind the results tables: score sample sets against frozen reference statistics, record
every scored row, and re-score the whole record from the repository alone.

Everything lives in ``experiments/results/artifacts/``:

* ``classifier_params.npz`` / ``classifier.json``: the Fashion-MNIST feature classifier (``configs/
  fashion_mnist_classifier.py``) whose 128-d penultimate features give the Frechet distances;
* ``reference_stats.npz``: the feature mean and covariance of the two halves of the 10,000 test images,
  ``val`` (even indices: every choice of sampler, EMA length or recipe is made against it) and ``test`` (odd
  indices: what the tables report), tied to the classifier by its SHA-256;
* ``samples/*.npz``: uint8 sample sets, array ``x`` shaped (N, 28, 28, 1), the method in the file name;
* ``results.jsonl``: one row per scored set (file and its SHA-256, split, method, seed, sampler, NFE, command,
  date, Frechet distance with a bootstrap interval, classifier score, class fractions), chosen or not.

    python experiments/results/evidence.py reference          # once: the halves' statistics and the real floor set
    python experiments/results/evidence.py score FILE --split val --method rf --seed 0 --sampler heun25 --nfe 50 \\
        --command "python -m diffjax.main ..." --record       # score a set (and append its row)
    python experiments/results/evidence.py rescore --check    # re-score every row from the artifacts (< 1 min)
    python experiments/results/evidence.py table              # the report table: test rows, mean and spread over seeds

Only ``reference`` reads the dataset (Debian's ``dataset-fashion-mnist``); ``rescore`` and ``table`` need nothing but
this folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
SPLITS = ("val", "test")
BOOTSTRAP = 200  # resamples of the sample set for the interval (seeded: the interval is reproducible)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_images(path: str) -> np.ndarray:
    x = np.load(path)["x"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (28, 28, 1):
        raise ValueError(f"{path}: array x must be uint8 shaped (N, 28, 28, 1), got {x.dtype} {x.shape}")
    return x


def drawn_for(path: str) -> dict:
    """What a sample set was drawn for: its ``prompts`` and / or ``labels`` arrays (``--mode sample`` writes them for
    prompted and class-conditional models), else ``{}``."""
    with np.load(path) as z:
        return {k: z[k] for k in ("prompts", "labels") if k in z.files}


def test_halves(images: np.ndarray) -> dict:
    """The validation / report split of the test images: even indices validate, odd indices report."""
    return {"val": images[0::2], "test": images[1::2]}


class Scorer:
    """The frozen classifier and reference statistics of an artifacts folder."""

    def __init__(self, artifacts: str = ARTIFACTS):
        from diffjax.eval import feature_classifier as fc
        self.artifacts = artifacts
        self._features = {}
        path = os.path.join(artifacts, "classifier_params.npz")
        self.classifier_sha256 = sha256(path)
        self.params = fc.load_classifier_params(path)
        ref_path = os.path.join(artifacts, "reference_stats.npz")
        self.reference = dict(np.load(ref_path)) if os.path.exists(ref_path) else None
        if self.reference is not None and str(self.reference["classifier_sha256"]) != self.classifier_sha256:
            raise ValueError(f"{ref_path} was computed with another classifier (sha256 "
                             f"{self.reference['classifier_sha256']} != {self.classifier_sha256}); rerun "
                             f"`evidence.py reference`")

    def features(self, images):
        from diffjax.eval import feature_classifier as fc
        key = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
        if key not in self._features:  # a set scored on both splits is featurised once
            self._features[key] = (fc.classifier_features(self.params, images),
                                   fc.classifier_logits(self.params, images))
        return self._features[key]

    def score(self, images: np.ndarray, split: str, drawn_for: dict | None = None) -> dict:
        """Frechet distance to the split's reference with a 95% bootstrap interval over the samples, the
        classifier score and the fraction of samples per class; for samples ``drawn_for`` prompts or labels
        (:func:`drawn_for`) also how they follow them (:mod:`diffjax.eval.prompt_following`)."""
        from diffjax.eval import metrics
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.reference is None:
            raise ValueError(f"no reference_stats.npz in {self.artifacts}: run `evidence.py reference` first")
        mu_r, sigma_r = self.reference[f"{split}_mu"], self.reference[f"{split}_sigma"]
        feats, logits = self.features(images)
        fd = metrics.frechet_distance(*metrics.feature_statistics(feats), mu_r, sigma_r)
        boot = bootstrap_fd(feats, mu_r, sigma_r)
        # bias-corrected percentile interval: resampling with replacement repeats samples, which inflates every
        # resampled FD by about mean(boot) - fd; the spread around that mean is the sampling uncertainty
        interval = np.percentile(boot, [2.5, 97.5]) - (boot.mean() - fd)
        cs, _ = metrics.classifier_score(logits, splits=1)
        fractions = np.bincount(logits.argmax(-1), minlength=logits.shape[-1]) / len(images)
        out = dict(n=int(len(images)), frechet_distance=round(float(fd), 4),
                   fd_interval=[round(float(v), 4) for v in interval],
                   classifier_score=round(float(cs), 4), class_fractions=[round(float(f), 3) for f in fractions])
        from diffjax.eval.prompt_following import following
        return {**out, **following(images, logits, drawn_for or {})}


def bootstrap_fd(feats: np.ndarray, mu_r: np.ndarray, sigma_r: np.ndarray, *, resamples: int = BOOTSTRAP,
                 seed: int = 0) -> np.ndarray:
    """Frechet distances of ``resamples`` resamplings (with replacement, seeded) of the sample features to the
    reference, batched: the reference's square root once, one batched ``eigvalsh`` (as metrics.frechet_distance)."""
    f = np.asarray(feats, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(f), (resamples, len(f)))
    fb = f[idx]
    mu = fb.mean(1)
    centred = fb - mu[:, None]
    cov = np.matmul(np.swapaxes(centred, 1, 2), centred) / (len(f) - 1)
    w, v = np.linalg.eigh(sigma_r)
    s_half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = s_half @ cov @ s_half
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + np.swapaxes(m, 1, 2)) / 2), 0.0, None)).sum(-1)
    diff = mu - mu_r
    return (diff * diff).sum(-1) + np.trace(cov, axis1=1, axis2=2) + np.trace(sigma_r) - 2.0 * tr_covmean


def results_path(artifacts: str = ARTIFACTS) -> str:
    return os.path.join(artifacts, "results.jsonl")


def load_rows(artifacts: str = ARTIFACTS) -> list:
    path = results_path(artifacts)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def relative(path: str, artifacts: str = ARTIFACTS) -> str:
    return os.path.relpath(os.path.abspath(path), artifacts)


def rescore_row(scorer: Scorer, row: dict) -> dict:
    """The row's figures recomputed from its committed sample set; raises if the file changed since."""
    path = os.path.join(scorer.artifacts, row["file"])
    if sha256(path) != row["sha256"]:
        raise ValueError(f"{row['file']} changed since it was scored (sha256 {sha256(path)} != {row['sha256']})")
    return scorer.score(load_images(path), row["split"], drawn_for(path))


def reference(args) -> None:
    from diffjax.data import load_fashion_mnist
    scorer = Scorer(args.artifacts)
    test_images, _ = load_fashion_mnist("test")
    out = {"classifier_sha256": np.asarray(scorer.classifier_sha256)}
    from diffjax.eval import metrics
    for split, images in test_halves(np.asarray(test_images)).items():
        mu, sigma = metrics.feature_statistics(scorer.features(images)[0])
        out.update({f"{split}_mu": mu, f"{split}_sigma": sigma, f"{split}_count": np.asarray(len(images))})
        print(f"{split}: {len(images)} test images", flush=True)
    from diffjax.eval.stats import save_npz_atomic
    save_npz_atomic(os.path.join(args.artifacts, "reference_stats.npz"), **out)
    # the floor: real training images, scored like any sample set
    train_images, _ = load_fashion_mnist("train")
    idx = np.random.default_rng(0).choice(len(train_images), args.num_real, replace=False)
    os.makedirs(os.path.join(args.artifacts, "samples"), exist_ok=True)
    np.savez_compressed(os.path.join(args.artifacts, "samples", f"real_train_{args.num_real}.npz"),
                        x=np.asarray(train_images, np.uint8)[np.sort(idx)])


def score(args) -> None:
    scorer = Scorer(args.artifacts)
    m = scorer.score(load_images(args.file), args.split, drawn_for(args.file))
    row = dict(file=relative(args.file, args.artifacts), sha256=sha256(args.file), split=args.split,
               method=args.method, seed=args.seed, sampler=args.sampler, nfe=args.nfe, chosen=args.chosen,
               command=args.command, date=time.strftime("%Y-%m-%d"), **m)
    print(json.dumps(row), flush=True)
    if args.record:
        if not os.path.abspath(args.file).startswith(os.path.abspath(args.artifacts) + os.sep):
            raise SystemExit(f"--record needs the sample set inside {args.artifacts} (committed), got {args.file}")
        with open(results_path(args.artifacts), "a") as f:
            f.write(json.dumps(row) + "\n")


def rescore(args) -> None:
    t0 = time.perf_counter()
    scorer = Scorer(args.artifacts)
    bad = 0
    for row in load_rows(args.artifacts):
        m = rescore_row(scorer, row)
        same = all(np.allclose(m[k], row[k], rtol=1e-3, atol=1e-3)
                   for k in ("frechet_distance", "fd_interval", "classifier_score", "class_accuracy") if k in row)
        bad += not same
        print(f"{'ok  ' if same else 'DIFF'} {row['file']} ({row['split']}): FD {m['frechet_distance']:.3f} "
              f"(recorded {row['frechet_distance']:.3f}) [{m['fd_interval'][0]:.2f}, {m['fd_interval'][1]:.2f}]",
              flush=True)
    print(f"re-scored in {time.perf_counter() - t0:.1f} s")
    if args.check and bad:
        raise SystemExit(f"{bad} rows differ from the record")


def _fid_rows(artifacts: str) -> dict:
    """``evidence_fid.py``'s rows by (SHA-256, split); empty when it has not run."""
    path = os.path.join(artifacts, "fid.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {(r["sha256"], r["split"]): r for r in map(json.loads, filter(str.strip, f))}


def _mean_spread(values) -> str:
    v = np.array(values, float)
    return f"{v.mean():.2f} ({v.min():.2f}-{v.max():.2f})" if len(v) > 1 else f"{v.mean():.2f}"


def table(args) -> None:
    fid = _fid_rows(args.artifacts)
    rows = [r for r in load_rows(args.artifacts) if r["split"] == "test" and r["method"] != "real_train_images"]
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    print("| method | sampler chosen on val (NFE) | seeds | classifier FD, mean (range) | FID, mean (range) | "
          "per seed: FD [95% bootstrap]; FID [95%] |")
    print("|---|---|---|---|---|---|")
    for method, rs in sorted(groups.items(), key=lambda kv: np.mean([r["frechet_distance"] for r in kv[1]])):
        rs = sorted(rs, key=lambda r: r["seed"])
        fids = [fid.get((r["sha256"], "test")) for r in rs]
        fid_col = _mean_spread([f["fid"] for f in fids]) if all(fids) else "-"
        samplers = ", ".join(sorted({f"{r['sampler']} ({r['nfe']})" for r in rs}))
        per = "; ".join(f"s{r['seed']} {r['sampler']}: {r['frechet_distance']:.2f} [{r['fd_interval'][0]:.2f}, "
                        f"{r['fd_interval'][1]:.2f}]" + (f"; {f['fid']:.2f} [{f['fid_interval'][0]:.2f}, "
                                                         f"{f['fid_interval'][1]:.2f}]" if f else "")
                        for r, f in zip(rs, fids))
        print(f"| {method} | {samplers} | {len(rs)} | {_mean_spread([r['frechet_distance'] for r in rs])} | "
              f"{fid_col} | {per} |")
    for r in load_rows(args.artifacts):  # the floor: real images at the same n
        if r["method"] == "real_train_images":
            f = fid.get((r["sha256"], r["split"]))
            fid_col = f"{f['fid']:.2f}" if f else "-"
            print(f"| floor: real training images, n = {r['n']} ({r['split']} half) | - | - | "
                  f"{r['frechet_distance']:.2f} | {fid_col} | |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default=ARTIFACTS)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference", help="the test halves' reference statistics and a real-image floor set")
    r.add_argument("--num-real", type=int, default=1000)
    s = sub.add_parser("score", help="score one sample set")
    s.add_argument("file")
    s.add_argument("--split", choices=SPLITS, required=True)
    s.add_argument("--method", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sampler", default="")
    s.add_argument("--nfe", type=int, default=0)
    s.add_argument("--chosen", action="store_true", help="the setting chosen on the validation split")
    s.add_argument("--command", default="", help="the command that produced the set")
    s.add_argument("--record", action="store_true", help="append the row to results.jsonl")
    c = sub.add_parser("rescore", help="re-score every recorded row from the committed artifacts")
    c.add_argument("--check", action="store_true", help="exit non-zero when a figure differs from the record")
    sub.add_parser("table", help="the test rows: mean and spread over seeds, bootstrap intervals")
    args = p.parse_args(argv)
    {"reference": reference, "score": score, "rescore": rescore, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
