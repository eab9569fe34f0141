"""FID Inception-v3 in Flax: shapes with random weights, FID-specific pooling, BatchNorm folding, and the
torch-free loader on hand-written checkpoints in both torch layouts (zip and legacy), plus .npz."""
import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.eval import inception as inc
from diffjax.eval import metrics

# ----------------------------------------------------------------------------- a torch.save stand-in
# torch.save pickles a state dict (protocol 2) whose tensors reduce to
#   torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, OrderedDict())
# and whose storages are persistent ids ('storage', torch.FloatStorage, key, 'cpu', numel[, view_metadata]).
# To write that byte layout without torch, fake `torch` / `torch._utils` modules are installed in sys.modules
# only while pickling; they are removed before the loader runs, and the test checks torch is absent then.


@contextlib.contextmanager
def _fake_torch_modules():
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {})
        cls.__module__, cls.__qualname__ = "torch", name
        setattr(torch, name, cls)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Storage:
    def __init__(self, key, array, view_of=None, view_offset=0):
        self.key, self.array, self.view_of, self.view_offset = key, array, view_of, view_offset


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, protocol):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return rebuild, args


def _storage_cls(torch, array):
    return torch.LongStorage if array.dtype == np.int64 else torch.FloatStorage


def _write_zip(path, state, storages):
    with _fake_torch_modules() as torch:
        buf = io.BytesIO()

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _Storage):
                    return ("storage", _storage_cls(torch, obj.array), obj.key, "cpu", obj.array.size)
                return None

        P(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for st in storages:
            zf.writestr(f"archive/data/{st.key}", st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())
        zf.writestr("archive/version", "3\n")


def _write_legacy(path, state, storages):
    roots = [s for s in storages if s.view_of is None]
    with _fake_torch_modules() as torch:
        buf = io.BytesIO()
        pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)
        pickle.dump(1001, buf, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, buf, protocol=2)

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if not isinstance(obj, _Storage):
                    return None
                root = obj.view_of or obj
                view = None if obj.view_of is None else (obj.key, obj.view_offset, obj.array.size)
                return ("storage", _storage_cls(torch, root.array), root.key, "cpu", root.array.size, view)

        P(buf, protocol=2).dump(state)
        pickle.dump([s.key for s in roots], buf, protocol=2)
        for s in roots:
            buf.write(np.int64(s.array.size).tobytes())
            buf.write(s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
    with open(path, "wb") as f:
        f.write(buf.getvalue())


# ----------------------------------------------------------------------------- generic reader


def _small_checkpoint():
    """Tensors with a storage offset, a transposed (non-contiguous) view, a shared storage, a 0-d int64."""
    shared = _Storage("0", np.arange(7, dtype=np.float32))
    other = _Storage("1", np.array([5.0, -1.0, 2.5], np.float32))
    count = _Storage("2", np.array([42], np.int64))
    state = collections.OrderedDict()
    state["a.weight"] = _Tensor(shared, 1, (2, 3), (1, 2))  # transpose of a (3, 2) block starting at offset 1
    state["a.bias"] = _Tensor(shared, 0, (2,), (3,))  # elements 0 and 3 of the same storage
    state["b"] = _Tensor(other, 0, (3,), (1,))
    state["b.num_batches_tracked"] = _Tensor(count, 0, (), ())
    expected = {
        "a.weight": np.arange(1, 7, dtype=np.float32).reshape(3, 2).T,
        "a.bias": np.array([0.0, 3.0], np.float32),
        "b": other.array,
        "b.num_batches_tracked": np.array(42, np.int64),
    }
    return state, [shared, other, count], expected


@pytest.mark.parametrize("writer", [_write_zip, _write_legacy], ids=["zip", "legacy"])
def test_read_torch_state_dict_without_torch(tmp_path, writer):
    state, storages, expected = _small_checkpoint()
    path = str(tmp_path / "small.pth")
    writer(path, state, storages)
    assert "torch" not in sys.modules
    got = inc.read_torch_state_dict(path)
    assert "torch" not in sys.modules
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)


def test_read_legacy_storage_view(tmp_path):
    root = _Storage("10", np.arange(10, dtype=np.float32))
    view = _Storage("11", np.zeros(4, np.float32), view_of=root, view_offset=3)
    state = collections.OrderedDict(v=_Tensor(view, 0, (2, 2), (2, 1)))
    path = str(tmp_path / "view.pth")
    _write_legacy(path, state, [root, view])
    np.testing.assert_array_equal(inc.read_torch_state_dict(path)["v"], [[3.0, 4.0], [5.0, 6.0]])


def test_reader_refuses_foreign_globals(tmp_path):
    payload = pickle.dumps(collections.OrderedDict(x=print), protocol=2)  # refers to builtins.print
    path = str(tmp_path / "evil.pth")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global .*print"):
        inc.read_torch_state_dict(path)
    with pytest.raises(ValueError, match="does not exist"):
        inc.read_torch_state_dict(str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="neither a zip nor a legacy"):
        inc.read_torch_state_dict(str(tmp_path / "junk.pth"))


# ----------------------------------------------------------------------------- folding and full mapping


def test_fold_conv_bn_matches_unfolded_conv_bn_relu():
    rng = np.random.default_rng(0)
    o, i = 4, 3
    w = rng.normal(size=(o, i, 3, 3)).astype(np.float32)
    g, b = rng.uniform(0.5, 2, o), rng.normal(size=o)
    mean, var = rng.normal(size=o), rng.uniform(0.1, 2, o)
    x = rng.normal(size=(2, i, 9, 7)).astype(np.float32)  # NCHW, torch layout
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    ref = np.maximum(g[:, None, None] * (np.asarray(y) - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3)
                     + b[:, None, None], 0.0)
    params = {"conv": inc.fold_conv_bn(w, g, b, mean, var)}
    got = inc.BasicConv(o, 3, padding=1).apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=1e-4, atol=1e-4)


def _broadcast_state_dict(rng):
    """Every FID Inception entry at full shape, each stored as a per-output-channel vector broadcast with
    stride 0 over the other axes (torch's layout for expanded tensors), so the file stays small."""
    abstract = inc._abstract_params()
    state, storages, arrays = collections.OrderedDict(), [], {}

    def add(name, shape, lo=-1.0, hi=1.0):
        vec = rng.uniform(lo, hi, size=shape[0]).astype(np.float32)
        st = _Storage(str(len(storages)), vec)
        storages.append(st)
        state[name] = _Tensor(st, 0, shape, (1,) + (0,) * (len(shape) - 1))
        arrays[name] = np.broadcast_to(vec.reshape((-1,) + (1,) * (len(shape) - 1)), shape)

    for path in inc._conv_modules(abstract):
        p = ".".join(path)
        node = abstract
        for k in path:
            node = node[k]
        kh, kw, ci, co = node["conv"]["kernel"].shape
        add(f"{p}.conv.weight", (co, ci, kh, kw))
        add(f"{p}.bn.weight", (co,), 0.5, 2.0)
        add(f"{p}.bn.bias", (co,))
        add(f"{p}.bn.running_mean", (co,))
        add(f"{p}.bn.running_var", (co,), 0.1, 2.0)
    add("fc.weight", (inc.NUM_LOGITS, inc.FEATURE_DIM))
    add("fc.bias", (inc.NUM_LOGITS,))
    return abstract, state, storages, arrays


def test_load_fid_inception_params_from_pth_and_npz(tmp_path):
    abstract, state, storages, arrays = _broadcast_state_dict(np.random.default_rng(1))
    pth = str(tmp_path / "pt_inception-fake.pth")
    _write_zip(pth, state, storages)
    assert "torch" not in sys.modules
    params = inc.load_fid_inception_params(pth)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, abstract)
    # spot-check the folding and the OIHW -> HWIO transpose on one asymmetric (1x7) conv and the head
    p = "Mixed_6b.branch7x7_2"
    want = inc.fold_conv_bn(*(arrays[f"{p}.{k}"] for k in
                              ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")))
    got = params["Mixed_6b"]["branch7x7_2"]["conv"]
    assert got["kernel"].shape == (1, 7, 128, 128)
    np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-6)
    np.testing.assert_allclose(got["bias"], want["bias"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(params["fc"]["kernel"], arrays["fc.weight"].T)
    # the .npz of the same named arrays loads to the same parameters
    npz = str(tmp_path / "fid.npz")
    np.savez(npz, **arrays)
    chex.assert_trees_all_close(inc.load_fid_inception_params(npz), params)
    # a missing entry is named
    del arrays["Mixed_7c.branch_pool.bn.running_var"]
    np.savez(npz, **arrays)
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.bn.running_var"):
        inc.load_fid_inception_params(npz)


def test_a_state_dict_without_the_head_loads_as_a_feature_extractor(tmp_path):
    from diffjax.eval import evaluate as ev
    abstract, _, _, arrays = _broadcast_state_dict(np.random.default_rng(2))
    headless = {k: v for k, v in arrays.items() if not k.startswith("fc.")}
    npz = str(tmp_path / "headless.npz")
    np.savez(npz, **headless)
    params = inc.load_fid_inception_params(npz)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, abstract)
    assert np.isnan(params["fc"]["kernel"]).all() and np.isnan(params["fc"]["bias"]).all()
    full = inc.load_fid_inception_params(_save(tmp_path / "full.npz", arrays))
    chex.assert_trees_all_close({k: v for k, v in params.items() if k != "fc"},
                                {k: v for k, v in full.items() if k != "fc"})
    # one of the pair alone is a damaged head, not a head-less network: named
    with pytest.raises(ValueError, match="fc.bias"):
        inc.load_fid_inception_params(_save(tmp_path / "half.npz", dict(headless, **{"fc.weight": arrays["fc.weight"]})))
    # the metrics report no IS-type score for NaN logits, and FD / KID as usual
    rng = np.random.default_rng(3)
    feats, ref = rng.normal(size=(20, 4)), rng.normal(size=(30, 4))
    mu, sigma = metrics.feature_statistics(ref)
    m = ev.image_metrics(feats, np.full((20, 5), np.nan), {"mu": mu, "sigma": sigma, "features": ref},
                         score_name="inception_score", kid_subsets=2, kid_subset_size=10)
    assert m["inception_score"] is None and m["inception_score_std"] is None
    assert np.isfinite(m["frechet_distance"]) and np.isfinite(m["kid"])


def _save(path, arrays):
    np.savez(str(path), **arrays)
    return str(path)


# ----------------------------------------------------------------------------- network


def test_fid_pooling_excludes_padding():
    x = jnp.ones((1, 5, 5, 2))
    np.testing.assert_allclose(inc._avg_pool_same(x), 1.0)  # torchvision's count_include_pad=True gives 4/9 at corners
    ramp = jnp.arange(25.0).reshape(1, 5, 5, 1)
    np.testing.assert_allclose(inc._avg_pool_same(ramp)[0, 0, 0, 0], (0 + 1 + 5 + 6) / 4)
    r = np.minimum(np.arange(5) + 1, 4)  # max over the 3x3 window of a ramp: its bottom-right valid pixel
    np.testing.assert_allclose(inc._max_pool(ramp, 1, 1)[0, :, :, 0], 5 * r[:, None] + r[None, :])


def test_forward_shapes_with_random_weights():
    params = inc.init_fid_inception(jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, inc._abstract_params())
    # torchvision's inception_v3(aux_logits=False) has 23,834,568 parameters; folding BatchNorm leaves one bias
    # per conv channel instead of BN weight + bias (17,216 channels), and the FID head has 1008 classes, not 1000.
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert n_params == 23_834_568 - 17_216 + 8 * (2048 + 1)
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    feats, logits = inc.inception_outputs(params, images, batch_size=2)
    assert feats.shape == (2, inc.FEATURE_DIM) and logits.shape == (2, inc.NUM_LOGITS)
    assert np.all(np.isfinite(feats)) and np.all(np.isfinite(logits)) and np.all(feats >= 0)
    assert not np.allclose(feats[0], feats[1])


# ----------------------------------------------------------------------------- parity with pytorch-fid (optional)


def test_features_and_fid_equal_pytorch_fid_on_one_weights_file(tmp_path):
    """experiments/parity/fid_vs_pytorch_fid.py on a few images: pytorch-fid's FID Inception and diffjax's, loaded
    from one random weights file in pytorch-fid's format, give the same features and Frechet distance. Runs only
    where torch, torchvision and pytorch-fid import (CI installs none of them); the full 1000-image run and its
    figures are in experiments/results/README.md."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    pytest.importorskip("pytorch_fid")
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "parity",
                        "fid_vs_pytorch_fid.py")
    spec = importlib.util.spec_from_file_location("fid_vs_pytorch_fid", path)
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    rng = np.random.default_rng(0)
    blobs = rng.normal(size=(14, 6, 6, 3))  # smooth random colour images (upsampled noise), uint8
    images = np.clip(128 + 60 * jax.image.resize(blobs, (14, 32, 32, 3), "bilinear"), 0, 255).astype(np.uint8)
    res = parity.run_parity(images[:4], images[4:8], images[8:], batch_size=4, weights_path=str(tmp_path / "w.pth"),
                            log=lambda *_: None)
    assert 0.1 < res["feature_abs_max"] < 100 and res["feature_fraction_zero"] < 0.5  # non-degenerate activations
    assert res["feature_max_abs_diff_over_max_abs"] < 1e-4 and res["feature_max_row_relative_l2"] < 2e-4, res
    assert res["logit_max_abs_diff_over_max_abs"] < 1e-4, res
    assert np.isfinite(res["fid_diffjax"]) and res["fid_diffjax"] > 0
    assert res["fid_relative_difference"] < 1e-3, res
