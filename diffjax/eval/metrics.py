"""Sample-quality metrics on network features: Frechet distance (FID), kernel inception distance (KID),
Inception Score and its domain-classifier twin, plus streaming feature statistics.

Everything here is plain NumPy in float64: the features come off the device once per batch and the
statistics (a ``d x d`` covariance summed over tens of thousands of samples, a matrix square root) need
double precision to be reproducible to the digits people report. Nothing here traces or compiles.

Streaming statistics are an immutable :class:`FeatureStats` accumulator (count, mean, centred second
moment) combined with the pairwise update of Chan, Golub & LeVeque (1979), so an evaluation that is
interrupted can save the accumulator (``np.savez(path, **stats._asdict())``) and resume from it
(``FeatureStats(**np.load(path))``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from diffjax.core._checks import check_int

__all__ = [
    "FeatureStats",
    "init_feature_stats",
    "update_feature_stats",
    "finalize_feature_stats",
    "feature_statistics",
    "frechet_distance",
    "polynomial_kernel",
    "mmd2_unbiased",
    "kernel_inception_distance",
    "inception_score",
    "classifier_score",
]


class FeatureStats(NamedTuple):
    """Running first and second moments of a stream of feature vectors (float64, immutable).

    Attributes:
        count: number of feature vectors seen, a 0-d int64 array.
        mean: (d,) running mean.
        m2: (d, d) sum of outer products of deviations from the running mean.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray


def _as_features(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array shaped (num_samples, feature_dim), got shape {x.shape}")
    return x


def init_feature_stats(dim: int) -> FeatureStats:
    """Empty accumulator for ``dim``-dimensional features.

    Args:
        dim: feature dimension (e.g. 2048 for Inception pool3).

    Returns:
        A :class:`FeatureStats` with count 0.
    """
    dim = check_int("dim", dim, minimum=1)
    return FeatureStats(np.asarray(0, np.int64), np.zeros((dim,), np.float64), np.zeros((dim, dim), np.float64))


def update_feature_stats(stats: FeatureStats, features) -> FeatureStats:
    """Fold a batch of features into the accumulator (Chan et al. 1979 pairwise update); returns a new one.

    .. math:: \\mu = \\mu_a + \\delta\\,n_b/n,\\quad M_2 = M_{2,a} + M_{2,b} + \\delta\\delta^\\top n_a n_b / n

    Args:
        stats: the accumulator so far.
        features: (batch, d) features of the new batch (any float dtype; converted to float64).

    Returns:
        The updated :class:`FeatureStats`.
    """
    x = _as_features("features", features)
    d = stats.mean.shape[0]
    if x.shape[1] != d:
        raise ValueError(f"features must have feature_dim {d} to match the accumulator, got shape {x.shape}")
    n_b = x.shape[0]
    if n_b == 0:
        return stats
    n_a = int(stats.count)
    mean_b = x.mean(axis=0)
    xc = x - mean_b
    m2_b = xc.T @ xc
    n = n_a + n_b
    delta = mean_b - stats.mean
    mean = stats.mean + delta * (n_b / n)
    m2 = stats.m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
    return FeatureStats(np.asarray(n, np.int64), mean, m2)


def finalize_feature_stats(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``ddof=1``, as ``np.cov`` in the reference FID code) of everything seen.

    Args:
        stats: an accumulator with count >= 2.

    Returns:
        ``(mu, sigma)``: (d,) and (d, d) float64.
    """
    n = int(stats.count)
    if n < 2:
        raise ValueError(f"stats.count must be >= 2 to estimate a covariance, got {n}")
    return stats.mean.copy(), stats.m2 / (n - 1)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """One-shot mean and unbiased covariance of a (num_samples, d) feature array (float64).

    Args:
        features: (num_samples, d), num_samples >= 2.

    Returns:
        ``(mu, sigma)``: (d,) and (d, d) float64.
    """
    x = _as_features("features", features)
    return finalize_feature_stats(update_feature_stats(init_feature_stats(x.shape[1]), x))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein) distance between two Gaussians, the FID of Heusel et al. (2017).

    .. math:: d^2 = \\lVert\\mu_1-\\mu_2\\rVert^2 + \\operatorname{tr}\\Sigma_1 + \\operatorname{tr}\\Sigma_2
        - 2\\operatorname{tr}\\big(\\Sigma_1^{1/2}\\Sigma_2\\Sigma_1^{1/2}\\big)^{1/2}

    The trace term is computed in the symmetric form: :math:`\\Sigma_1\\Sigma_2` is similar to the PSD matrix
    :math:`\\Sigma_1^{1/2}\\Sigma_2\\Sigma_1^{1/2}`, so :math:`\\operatorname{tr}(\\Sigma_1\\Sigma_2)^{1/2}` is the sum
    of the square roots of that matrix's eigenvalues. Two ``eigh`` calls in float64 replace the
    non-symmetric ``scipy.linalg.sqrtm`` of the reference code: no complex parts, no scipy, and tiny
    negative eigenvalues from round-off are clipped to 0 (the covariances are PSD in exact arithmetic).

    Args:
        mu1: (d,) mean of the first feature set.
        sigma1: (d, d) covariance of the first feature set.
        mu2: (d,) mean of the second feature set.
        sigma2: (d, d) covariance of the second feature set.

    Returns:
        The squared Frechet distance as a Python float (this is the number reported as "FID").
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must be 1-D of the same length, got shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"sigma1 and sigma2 must be ({d}, {d}) to match the means, got shapes {sigma1.shape} and {sigma2.shape}"
        )
    s1_half = _sqrtm_psd(sigma1)
    m = s1_half @ sigma2 @ s1_half
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def polynomial_kernel(x, y, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """Polynomial kernel matrix, by default the cubic kernel of KID (Binkowski et al. 2018).

    .. math:: k(x, y) = (\\gamma\\, x^\\top y + c_0)^{p},\\quad \\gamma = 1/d

    Args:
        x: (n, d) features.
        y: (m, d) features.
        degree: the power ``p``.
        gamma: scale of the inner product; ``None`` means ``1/d``.
        coef0: the offset ``c_0``.

    Returns:
        (n, m) float64 kernel matrix.
    """
    x = _as_features("x", x)
    y = _as_features("y", y)
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased estimate of the squared MMD from kernel matrices (Gretton et al. 2012, Lemma 6).

    .. math:: \\widehat{\\mathrm{MMD}}^2_u = \\tfrac{1}{m(m-1)}\\sum_{i\\ne j}k(x_i,x_j)
        + \\tfrac{1}{n(n-1)}\\sum_{i\\ne j}k(y_i,y_j) - \\tfrac{2}{mn}\\sum_{i,j}k(x_i,y_j)

    Args:
        k_xx: (m, m) kernel matrix within the first sample.
        k_yy: (n, n) kernel matrix within the second sample.
        k_xy: (m, n) cross kernel matrix.

    Returns:
        The estimate (may be negative when the distributions are equal).
    """
    m, n = k_xx.shape[0], k_yy.shape[0]
    sxx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    syy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features1, features2, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets.

    As in Binkowski et al. (2018), "Demystifying MMD GANs": ``num_subsets`` times, draw ``subset_size``
    features without replacement from each set, compute :func:`mmd2_unbiased` with
    :func:`polynomial_kernel` (``(x.y/d + 1)^3``), and report the mean and standard deviation over subsets.
    ``subset_size`` is capped at the size of the smaller set.

    Args:
        features1: (n1, d) features, e.g. of generated samples.
        features2: (n2, d) features, e.g. of the reference data.
        num_subsets: number of random subsets.
        subset_size: samples per subset (capped at ``min(n1, n2)``; must end up >= 2).
        seed: seed of the NumPy generator that draws the subsets (same seed, same answer).

    Returns:
        ``(mean, std)`` of the per-subset unbiased MMD^2 estimates, as Python floats.
    """
    x = _as_features("features1", features1)
    y = _as_features("features2", features2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features1 and features2 must have the same feature_dim, got {x.shape} and {y.shape}")
    num_subsets = check_int("num_subsets", num_subsets, minimum=1)
    subset_size = check_int("subset_size", subset_size, minimum=2)
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"features1 and features2 need >= 2 rows each for KID, got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.default_rng(seed)
    vals = np.empty((num_subsets,), np.float64)
    for i in range(num_subsets):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        vals[i] = mmd2_unbiased(polynomial_kernel(xs, xs), polynomial_kernel(ys, ys), polynomial_kernel(xs, ys))
    return float(vals.mean()), float(vals.std())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits, *, splits: int = 10, from_probs: bool = False) -> tuple[float, float]:
    """Inception Score of Salimans et al. (2016), computed per split as in the reference code.

    .. math:: \\mathrm{IS} = \\exp\\big(\\mathbb{E}_x\\,\\mathrm{KL}(p(y\\mid x)\\,\\Vert\\,p(y))\\big)

    The samples are cut into ``splits`` equal consecutive parts (a remainder of ``N mod splits`` rows is
    dropped, as in the original implementation); ``p(y)`` is the mean prediction within a part.

    Args:
        logits: (N, num_classes) unnormalised logits, or probabilities when ``from_probs=True``.
        splits: number of parts, 1 <= splits <= N.
        from_probs: treat the input as probabilities (rows summing to 1) instead of logits.

    Returns:
        ``(mean, std)`` of the per-split scores, as Python floats. Between 1 and ``num_classes``.
    """
    z = _as_features("logits", logits)
    splits = check_int("splits", splits, minimum=1)
    n = z.shape[0]
    if splits > n:
        raise ValueError(f"splits must be <= the number of samples {n}, got {splits}")
    if from_probs:
        if np.any(z < 0):
            raise ValueError("logits must be non-negative probabilities when from_probs=True")
        p = z / z.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    else:
        logp = _log_softmax(z)
        p = np.exp(logp)
    part = n // splits
    scores = np.empty((splits,), np.float64)
    for k in range(splits):
        pk, lk = p[k * part : (k + 1) * part], logp[k * part : (k + 1) * part]
        py = pk.mean(axis=0)
        with np.errstate(divide="ignore"):
            log_py = np.log(np.where(py > 0, py, 1.0))
        # p(y|x) > 0 implies p(y) > 0, so 0*log(0) terms (masked to 0 above) are the only degenerate ones.
        kl = (pk * (lk - log_py)).sum(axis=1)
        scores[k] = np.exp(kl.mean())
    return float(scores.mean()), float(scores.std())


def classifier_score(logits, *, splits: int = 10, from_probs: bool = False) -> tuple[float, float]:
    """The Inception Score formula applied to a domain classifier's predictions (e.g. Fashion-MNIST).

    .. math:: \\mathrm{CS} = \\exp\\big(\\mathbb{E}_x\\,\\mathrm{KL}(p(y\\mid x)\\,\\Vert\\,p(y))\\big)

    Large when samples are classified confidently (sharp ``p(y|x)``) and cover all classes evenly
    (flat ``p(y)``); the maximum is the number of classes. See :func:`inception_score` for the arguments.

    Args:
        logits: (N, num_classes) classifier logits (or probabilities with ``from_probs=True``).
        splits: number of equal parts.
        from_probs: treat the input as probabilities.

    Returns:
        ``(mean, std)`` over splits.
    """
    return inception_score(logits, splits=splits, from_probs=from_probs)
