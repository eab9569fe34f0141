"""Known-answer tests of the FID / KID / IS metrics and the streaming feature statistics."""
import numpy as np
import pytest

from diffjax.eval import metrics as M


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# ----------------------------------------------------------------------------- streaming statistics


def test_streaming_stats_equal_one_shot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 12)) * 3.0 + 100.0  # large offset: the naive sum-of-squares formula would lose digits
    stats = M.init_feature_stats(12)
    for chunk in np.array_split(x, [1, 7, 300, 301, 650]):
        stats = M.update_feature_stats(stats, chunk)
    mu, sigma = M.finalize_feature_stats(stats)
    x_ref = x
    np.testing.assert_allclose(mu, x_ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x_ref, rowvar=False), rtol=1e-9, atol=1e-12)
    mu1, sigma1 = M.feature_statistics(x_ref)
    np.testing.assert_allclose(mu1, mu, rtol=1e-12)
    np.testing.assert_allclose(sigma1, sigma, rtol=1e-9, atol=1e-12)
    assert int(stats.count) == 1000


def test_streaming_stats_resume_from_npz(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5))
    s = M.update_feature_stats(M.init_feature_stats(5), x[:30])
    np.savez(tmp_path / "partial.npz", **s._asdict())
    s2 = M.FeatureStats(**np.load(tmp_path / "partial.npz"))
    s2 = M.update_feature_stats(s2, x[30:])
    mu, sigma = M.finalize_feature_stats(s2)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10)


def test_stats_bad_input():
    with pytest.raises(ValueError, match="feature_dim 4"):
        M.update_feature_stats(M.init_feature_stats(4), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="count"):
        M.finalize_feature_stats(M.update_feature_stats(M.init_feature_stats(4), np.zeros((1, 4))))
    with pytest.raises(ValueError, match="dim"):
        M.init_feature_stats(0)


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_identical_feature_sets_is_zero():
    f = np.random.default_rng(2).normal(size=(500, 64))
    mu, sigma = M.feature_statistics(f)
    assert abs(M.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(3)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
    got = M.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # a common rotation of both covariances leaves the distance unchanged: tests the non-diagonal path
    q = _rotation(d, 4)
    got_rot = M.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    np.testing.assert_allclose(got_rot, expected, rtol=1e-9)


def test_frechet_general_covariances_match_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10, 10)), rng.normal(size=(10, 10))
    s1, s2 = a @ a.T + 0.1 * np.eye(10), b @ b.T + 0.1 * np.eye(10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    np.testing.assert_allclose(M.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)


def test_frechet_from_samples_of_known_gaussians():
    rng = np.random.default_rng(6)
    n, d = 200_000, 3
    x = rng.normal(size=(n, d)) * np.sqrt([1.0, 2.0, 0.5]) + [0.0, 1.0, 0.0]
    y = rng.normal(size=(n, d)) * np.sqrt([2.0, 2.0, 1.0]) + [1.0, 1.0, -1.0]
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.0])
    expected = 2.0 + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = M.frechet_distance(*M.feature_statistics(x), *M.feature_statistics(y))
    assert abs(got - expected) < 0.03, (got, expected)


def test_frechet_bad_shapes():
    with pytest.raises(ValueError, match="sigma1 and sigma2"):
        M.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="mu1 and mu2"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))


# ----------------------------------------------------------------------------- KID


def test_mmd2_unbiased_matches_hand_loop():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 1.0
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 5
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    got = M.mmd2_unbiased(M.polynomial_kernel(x, x), M.polynomial_kernel(y, y), M.polynomial_kernel(x, y))
    np.testing.assert_allclose(got, sxx + syy - 2 * sxy, rtol=1e-12)


def test_kid_same_distribution_is_unbiased_around_zero():
    rng = np.random.default_rng(8)
    reps, m, d = 200, 50, 8
    kid, biased = [], []
    for _ in range(reps):
        x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d))
        kid.append(M.kernel_inception_distance(x, y, num_subsets=1, subset_size=m, seed=0)[0])
        kxx, kyy, kxy = M.polynomial_kernel(x, x), M.polynomial_kernel(y, y), M.polynomial_kernel(x, y)
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())  # V-statistic: includes the diagonals
    kid, biased = np.array(kid), np.array(biased)
    se = kid.std() / np.sqrt(reps)
    assert abs(kid.mean()) < 3 * se, (kid.mean(), se)
    # the test has power: the biased estimator on the same data sits clearly above zero
    assert biased.mean() > 10 * se


def test_kid_shifted_distribution_positive_and_deterministic():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.5
    mean, std = M.kernel_inception_distance(x, y, num_subsets=20, subset_size=100, seed=1)
    assert mean > 5 * std > 0
    assert (mean, std) == M.kernel_inception_distance(x, y, num_subsets=20, subset_size=100, seed=1)
    same_mean, _ = M.kernel_inception_distance(x, rng.normal(size=(300, 8)), num_subsets=20, subset_size=100)
    assert abs(same_mean) < mean / 10


def test_kid_bad_input():
    with pytest.raises(ValueError, match="feature_dim"):
        M.kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="num_subsets"):
        M.kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 3)), num_subsets=0)


# ----------------------------------------------------------------------------- Inception / classifier score


def test_inception_score_uniform_logits_is_one():
    mean, std = M.inception_score(np.zeros((100, 1008)), splits=10)
    np.testing.assert_allclose(mean, 1.0, rtol=1e-12)
    assert std < 1e-12


def test_inception_score_confident_distinct_classes_is_num_classes():
    n, c = 100, 10
    onehot = np.eye(c)[np.arange(n) % c]
    mean, std = M.inception_score(onehot, splits=10, from_probs=True)
    np.testing.assert_allclose(mean, c, rtol=1e-12)
    assert std < 1e-9
    mean_l, _ = M.classifier_score(60.0 * onehot, splits=5)  # confident logits: softmax is one-hot to ~1e-25
    np.testing.assert_allclose(mean_l, c, rtol=1e-9)
    # all samples in one class: no diversity, score 1
    np.testing.assert_allclose(M.inception_score(np.eye(c)[np.zeros(n, int)], from_probs=True)[0], 1.0)


def test_inception_score_known_two_class_value():
    # half the samples p=(0.9, 0.1), half (0.1, 0.9): p(y) uniform, KL = 0.9 log 1.8 + 0.1 log 0.2
    p = np.array([[0.9, 0.1], [0.1, 0.9]] * 10)
    expected = np.exp(0.9 * np.log(1.8) + 0.1 * np.log(0.2))
    np.testing.assert_allclose(M.inception_score(p, splits=2, from_probs=True)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(M.inception_score(np.log(p), splits=2)[0], expected, rtol=1e-12)


def test_inception_score_bad_splits():
    with pytest.raises(ValueError, match="splits"):
        M.inception_score(np.zeros((5, 3)), splits=6)


# ----------------------------------------------------------------------------- reference-statistics cache


def _counting_feature_fn(calls):
    def fn(batch):
        calls.append(len(batch))
        return np.asarray(batch, np.float64) * 2.0 + 1.0

    return fn


def test_reference_stats_cached_and_reused(tmp_path):
    from diffjax.eval import stats as S

    data = np.random.default_rng(10).normal(size=(90, 6))
    calls = []
    keys = dict(dataset="toy", split="test", feature_net="double-v1")
    out = S.reference_stats(tmp_path, **keys, feature_fn=_counting_feature_fn(calls),
                            batches=lambda: np.array_split(data, 9), keep_features=True)
    mu, sigma = M.feature_statistics(data * 2.0 + 1.0)
    np.testing.assert_allclose(out["mu"], mu, rtol=1e-6)
    np.testing.assert_allclose(out["sigma"], sigma, rtol=1e-5)
    assert out["features"].shape == (90, 6) and int(out["count"]) == 90 and len(calls) == 9
    path = S.reference_stats_path(tmp_path, **keys)
    assert path.endswith("toy__test__double-v1.npz") and sorted(p.name for p in tmp_path.iterdir()) == [
        "toy__test__double-v1.npz"]

    def no_data():
        raise AssertionError("the cache should have been used")

    again = S.reference_stats(tmp_path, **keys, feature_fn=no_data, batches=no_data, keep_features=True)
    np.testing.assert_array_equal(again["sigma"], out["sigma"])
    assert len(calls) == 9
    with pytest.raises(ValueError, match="feature_net='double-v1', expected 'other'"):
        S.load_reference_stats(path, dataset="toy", split="test", feature_net="other")
    with pytest.raises(ValueError, match="split"):
        S.reference_stats_path(tmp_path, dataset="toy", split="a/b", feature_net="x")


def test_reference_stats_resume_after_interruption(tmp_path):
    from diffjax.eval import stats as S

    data = np.random.default_rng(11).normal(size=(100, 4))
    chunks = np.array_split(data, 10)
    keys = dict(dataset="toy", split="train", feature_net="f")

    def interrupted():
        for i, c in enumerate(chunks):
            if i == 7:
                raise KeyboardInterrupt
            yield c

    calls = []
    with pytest.raises(KeyboardInterrupt):
        S.reference_stats(tmp_path, **keys, feature_fn=_counting_feature_fn(calls), batches=interrupted(),
                          checkpoint_every=3)
    assert len(calls) == 7 and (tmp_path / "toy__train__f.partial.npz").exists()
    calls.clear()
    out = S.reference_stats(tmp_path, **keys, feature_fn=_counting_feature_fn(calls), batches=chunks,
                            checkpoint_every=3)
    assert len(calls) == 4  # batches 6..9: the accumulator was saved after batch 6
    mu, sigma = M.feature_statistics(data * 2.0 + 1.0)
    np.testing.assert_allclose(out["mu"], mu, rtol=1e-6)
    np.testing.assert_allclose(out["sigma"], sigma, rtol=1e-5)
    assert not (tmp_path / "toy__train__f.partial.npz").exists()


def test_params_fingerprint():
    from diffjax.eval import stats as S

    a = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    b = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    assert S.params_fingerprint(a) == S.params_fingerprint(b)
    b["b"] = b["b"] + 1e-3
    assert S.params_fingerprint(a) != S.params_fingerprint(b)
