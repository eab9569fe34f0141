"""The eval section's checks and the eval cache key's rendering of config values (no compilation)."""
import functools
import os
import sys

import ml_collections
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import fashion_mnist_budget, tiny  # noqa: E402
from diffjax.run import _eval  # noqa: E402


@pytest.mark.parametrize("field, value, match", [
    ("feature_net", "fid", r"eval.feature_net='fid' is not known"),
    ("likelihood_trace", "exactly", r"eval.likelihood_trace='exactly' is not known"),
    ("vlb_variance", "learned", r"eval.vlb_variance='learned' is not known"),
    ("vlb_clip_denoised", 1, r"eval.vlb_clip_denoised must be True or False, got 1"),
    ("reference_split", "validation", r"eval.reference_split='validation' is not known"),
    ("batch_size", 0, r"eval.batch_size must be >= 1, got 0"),
    ("num_samples", 1, r"eval.num_samples must be >= 2 \(a covariance needs two samples\), got 1"),
    ("reference_num_examples", -1, r"eval.reference_num_examples must be >= 0 \(0: the whole split\), got -1"),
])
def test_validate_eval_names_the_field(field, value, match):
    cfg = tiny.get_config()
    e = cfg.eval.to_dict()
    e[field] = value
    cfg.eval = ml_collections.ConfigDict(e)  # a fresh section: a value of another type than the default's
    with pytest.raises(ValueError, match=match):
        _eval.validate_eval(cfg)


def test_feature_net_choice_and_missing_weights(tmp_path):
    cfg = fashion_mnist_budget.get_config()
    assert _eval.feature_net_name(cfg) == "classifier"  # auto: 28x28x1
    cfg.eval.classifier_workdir = ""
    with pytest.raises(ValueError, match=r"needs eval.classifier_workdir"):
        _eval.build_feature_net(cfg)
    cfg.eval.classifier_workdir = str(tmp_path)
    with pytest.raises(ValueError, match=r"holds no .*train the classifier there first"):
        _eval.build_feature_net(cfg)
    cfg.eval.feature_net = "inception"
    assert _eval.feature_net_name(cfg) == "inception"
    cfg.eval.inception_weights, cfg.eval.allow_random_inception = "", False
    with pytest.raises(ValueError, match=r"needs eval.inception_weights"):
        _eval.build_feature_net(cfg)


def _scaled(a):
    def grid(n):
        return a * n
    return grid


def test_cache_key_renders_functions_partials_and_numpy_values():
    """Two settings that draw different samples never render alike: closures by their values, partials by their
    arguments, NumPy scalars by value."""
    v = _eval._json_value
    assert v(np.float32(0.5)) == 0.5
    assert v(_scaled(2)) != v(_scaled(3))
    assert v(_scaled(2)) == v(_scaled(2))
    assert v(functools.partial(_scaled, 2)) != v(functools.partial(_scaled, 3))
    assert v(functools.partial(_scaled, a=2)) == v(functools.partial(_scaled, a=2))
    assert v(len) == "builtins.len"
