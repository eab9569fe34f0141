"""Inception FID beside the classifier distances of ``evidence.py``: the same committed sample sets, the same
validation / report halves of the test images, in the feature space of the FID Inception (pool3, 2048-d).

    python experiments/parity/fid_inception_weights.py convert ...   # once: the TorchScript weights -> W.npz
    python experiments/results/evidence_fid.py --inception W.npz score          # every test row and the real floor
    python experiments/results/evidence_fid.py --inception W.npz score --files F.npz --split test   # one set
    python experiments/results/evidence_fid.py rescore --check --inception W.npz  # recompute the recorded rows

The weights are not in the repository (96 MB; ``experiments/parity/README.md`` converts them and records their
provenance and parity); the halves' Inception statistics are computed once and cached in ``--cache`` (not committed,
32 MB each). Rows go to ``artifacts/fid.jsonl``: file and its SHA-256, split, n, FID with a 95% bootstrap interval
(the bias-corrected percentile interval of ``evidence.py``), the weights' SHA-256, command and date. ``evidence.py
table`` shows them beside the classifier distances. FID at n = 1000 is biased upward (the real-image floor at the
same n is the row ``real_train_images``); the Fashion-MNIST papers' convention is 10k samples.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evidence  # noqa: E402

RESAMPLES = 50  # bootstrap resamples of a sample set (seeded)


def fid_path(artifacts: str = evidence.ARTIFACTS) -> str:
    return os.path.join(artifacts, "fid.jsonl")


def load_fid_rows(artifacts: str = evidence.ARTIFACTS) -> list:
    path = fid_path(artifacts)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Reference:
    """A split's Inception statistics, with the reference covariance's square root computed once."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu, self.sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        w, v = np.linalg.eigh(self.sigma)
        self.half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        self.trace = float(np.trace(self.sigma))

    def fid(self, feats: np.ndarray) -> float:
        """The Frechet distance of ``feats`` to the reference. ``tr sqrt(S_r^1/2 C S_r^1/2)`` from the nonzero
        eigenvalues of the n x n Gram matrix ``A A^T`` (``A = X_c S_r^1/2 / sqrt(n-1)``) when n < d: the same
        spectrum as ``A^T A``, at a fraction of the cost for 1000 samples in 2048 dimensions."""
        f = np.asarray(feats, np.float64)
        mu = f.mean(0)
        a = (f - mu) @ self.half / np.sqrt(len(f) - 1)
        m = a @ a.T if len(f) < f.shape[1] else a.T @ a
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
        trace_c = float(((f - mu) ** 2).sum() / (len(f) - 1))
        return float(((mu - self.mu) ** 2).sum() + trace_c + self.trace - 2.0 * tr_covmean)

    def score(self, feats: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
        fid = self.fid(feats)
        rng = np.random.default_rng(seed)
        boot = np.array([self.fid(feats[rng.integers(0, len(feats), len(feats))]) for _ in range(resamples)])
        interval = np.percentile(boot, [2.5, 97.5]) - (boot.mean() - fid)
        return dict(n=int(len(feats)), fid=round(fid, 4), fid_interval=[round(float(v), 4) for v in interval])


class InceptionScorer:
    def __init__(self, weights: str, cache: str):
        from diffjax.eval import inception
        self.weights_sha256 = evidence.sha256(weights)
        self.params = inception.load_fid_inception_params(weights)
        self.cache = cache
        self._refs = {}

    def features(self, images: np.ndarray) -> np.ndarray:
        from diffjax.eval import inception
        feats, _ = inception.inception_outputs(self.params, images, batch_size=50)
        if not np.isfinite(feats).all():
            raise ValueError("non-finite Inception features")
        return feats

    def reference(self, split: str) -> Reference:
        if split not in self._refs:
            path = os.path.join(self.cache, f"inception_{split}_{self.weights_sha256[:12]}.npz")
            if not os.path.exists(path):
                from diffjax.data import load_fashion_mnist
                test = evidence.test_halves(np.asarray(load_fashion_mnist("test")[0]))[split]
                print(f"Inception statistics of the {split} half ({len(test)} test images) ...", flush=True)
                feats = self.features(test)
                os.makedirs(self.cache, exist_ok=True)
                np.savez(path + ".tmp.npz", mu=feats.mean(0), sigma=np.cov(feats.astype(np.float64), rowvar=False))
                os.replace(path + ".tmp.npz", path)
            z = np.load(path)
            self._refs[split] = Reference(z["mu"], z["sigma"])
        return self._refs[split]

    def score(self, images: np.ndarray, split: str) -> dict:
        return dict(self.reference(split).score(self.features(images)), inception_sha256=self.weights_sha256)


def score(args) -> None:
    scorer = InceptionScorer(args.inception, args.cache)
    done = {(r["sha256"], r["split"]) for r in load_fid_rows(args.artifacts)}
    if args.files:
        todo = [(f, args.split, "") for f in args.files]
    else:  # every report row, and the real-image floor on both halves
        todo = [(os.path.join(args.artifacts, r["file"]), r["split"], r.get("command", ""))
                for r in evidence.load_rows(args.artifacts)
                if r["split"] == "test" or r["method"] == "real_train_images"]
    for path, split, command in todo:
        sha = evidence.sha256(path)
        if (sha, split) in done:
            continue
        t0 = time.perf_counter()
        m = scorer.score(evidence.load_images(path), split)
        row = dict(file=evidence.relative(path, args.artifacts), sha256=sha, split=split, **m,
                   command=args.command or command, date=time.strftime("%Y-%m-%d"))
        with open(fid_path(args.artifacts), "a") as f:
            f.write(json.dumps(row) + "\n")
        done.add((sha, split))
        print(f"{row['file']} ({split}): FID {m['fid']:.3f} {m['fid_interval']} ({time.perf_counter() - t0:.0f} s)",
              flush=True)


def rescore(args) -> None:
    scorer = InceptionScorer(args.inception, args.cache)
    bad = 0
    for r in load_fid_rows(args.artifacts):
        path = os.path.join(args.artifacts, r["file"])
        if evidence.sha256(path) != r["sha256"]:
            raise ValueError(f"{r['file']} changed since it was scored")
        if r["inception_sha256"] != scorer.weights_sha256:
            raise ValueError(f"{r['file']} was scored with other Inception weights ({r['inception_sha256']})")
        m = scorer.score(evidence.load_images(path), r["split"])
        ok = abs(m["fid"] - r["fid"]) <= 1e-3 * max(1.0, r["fid"])
        bad += not ok
        print(f"{'ok  ' if ok else 'DIFF'} {r['file']} ({r['split']}): recorded {r['fid']}, now {m['fid']}")
    if args.check and bad:
        raise SystemExit(f"{bad} FID rows differ from the record")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default=evidence.ARTIFACTS)
    p.add_argument("--inception", required=True, help="FID Inception weights (.npz of fid_inception_weights.py)")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "evidence_fid"))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="FID of the report rows (or of --files) not yet in fid.jsonl")
    s.add_argument("--files", nargs="*", default=[])
    s.add_argument("--split", choices=evidence.SPLITS, default="test")
    s.add_argument("--command", default="", help="the command that produced --files")
    c = sub.add_parser("rescore", help="recompute every recorded FID row")
    c.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    {"score": score, "rescore": rescore}[args.cmd](args)


if __name__ == "__main__":
    main()
