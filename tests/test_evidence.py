"""experiments/results/evidence.py: the committed sample sets re-score to their recorded figures from the repository
alone (classifier weights, reference statistics, sample sets), and the bootstrap interval is the batched form of
``metrics.frechet_distance``."""
import importlib.util
import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "experiments", "results", "evidence.py")


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("evidence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_recorded_file_is_committed_and_unchanged(evidence):
    rows = evidence.load_rows()
    assert rows, "results.jsonl holds no rows"
    for row in rows:
        path = os.path.join(evidence.ARTIFACTS, row["file"])
        assert evidence.sha256(path) == row["sha256"], row["file"]
        x = evidence.load_images(path)
        assert x.shape[0] == row["n"]
        assert row["split"] in evidence.SPLITS and np.isfinite(row["frechet_distance"])


@pytest.mark.parametrize("kind", ["real_train_images", "model"])
def test_a_committed_set_rescores_to_its_record(evidence, kind):
    rows = [r for r in evidence.load_rows() if (r["method"] == "real_train_images") == (kind != "model")]
    if not rows:
        pytest.skip(f"no {kind} rows recorded yet")
    row = rows[-1]
    m = evidence.rescore_row(evidence.Scorer(), row)
    for k in ("frechet_distance", "classifier_score"):
        assert np.isfinite(m[k]) and m[k] == pytest.approx(row[k], rel=1e-3, abs=1e-3), (k, m[k], row[k])
    lo, hi = m["fd_interval"]
    assert np.isfinite([lo, hi]).all() and lo < hi
    assert m["fd_interval"] == pytest.approx(row["fd_interval"], rel=1e-3, abs=1e-3)
    assert sum(m["class_fractions"]) == pytest.approx(1.0, abs=0.01)


def test_a_prompted_set_rescores_its_prompt_following(evidence):
    """A set drawn for prompts or labels (issue 40) carries them in its npz; re-scoring recomputes how it follows them
    from the classifier and the caption rules alone."""
    rows = [r for r in evidence.load_rows() if "class_accuracy" in r]
    if not rows:
        pytest.skip("no prompted rows recorded yet")
    for row in (rows[0], rows[-1]):
        m = evidence.rescore_row(evidence.Scorer(), row)
        for k in ("class_accuracy", "shade_accuracy", "size_accuracy", "prompt_accuracy"):
            if k in row:
                assert np.isfinite(m[k]) and m[k] == pytest.approx(row[k], abs=1e-6), (k, m[k], row[k])
        with np.load(os.path.join(evidence.ARTIFACTS, row["file"])) as z:
            assert "labels" in z.files and len(z["labels"]) == row["n"]


def test_bootstrap_is_the_batched_frechet_distance(evidence):
    from diffjax.eval import metrics
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    ref = rng.normal(size=(200, 6)) + 0.5
    mu_r, sigma_r = metrics.feature_statistics(ref)
    boot = evidence.bootstrap_fd(feats, mu_r, sigma_r, resamples=4, seed=3)
    idx = np.random.default_rng(3).integers(0, 50, (4, 50))
    want = [metrics.frechet_distance(*metrics.feature_statistics(feats[i]), mu_r, sigma_r) for i in idx]
    assert np.isfinite(boot).all()
    np.testing.assert_allclose(boot, want, rtol=1e-9, atol=1e-9)


def test_reference_statistics_belong_to_the_committed_classifier(evidence):
    scorer = evidence.Scorer()
    ref = scorer.reference
    for split in evidence.SPLITS:
        assert int(ref[f"{split}_count"]) == 5000
        assert ref[f"{split}_sigma"].shape == (128, 128) and np.isfinite(ref[f"{split}_sigma"]).all()
    assert json.load(open(os.path.join(evidence.ARTIFACTS, "classifier.json")))["test_accuracy"] > 0.85


def test_fid_reference_gram_form_is_the_frechet_distance():
    """evidence_fid.py's Frechet distance (the n x n Gram form for n < d, the d x d form otherwise) against
    ``metrics.frechet_distance`` on random features, and its bootstrap interval brackets the figure."""
    import sys
    from diffjax.eval import metrics
    sys.path.insert(0, os.path.dirname(SCRIPT))
    spec = importlib.util.spec_from_file_location("evidence_fid", os.path.join(os.path.dirname(SCRIPT),
                                                                                "evidence_fid.py"))
    fid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fid)
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 48)) @ rng.normal(size=(48, 48))
    ref = fid.Reference(real.mean(0), np.cov(real, rowvar=False))
    for n in (30, 200):  # fewer and more samples than dimensions
        feats = 1.2 * rng.normal(size=(n, 48)) + 0.3
        want = metrics.frechet_distance(*metrics.feature_statistics(feats), ref.mu, ref.sigma)
        got = ref.fid(feats)
        assert np.isfinite(got) and got == pytest.approx(want, rel=1e-7)
    m = ref.score(feats, resamples=20)
    lo, hi = m["fid_interval"]
    assert np.isfinite([m["fid"], lo, hi]).all() and lo < m["fid"] < hi
