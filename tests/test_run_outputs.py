"""What the run modes write and say (issue 35 item 10): sample files named by sampler and steps with the sampler and
NFE in the PNG's title, the paths printed, "compiling ..." before the first step, the learning rate, a sample grid
and the eval metrics in TensorBoard, and the end of --mode train naming what it wrote."""
import os
import struct
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import tiny  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax import run as drun  # noqa: E402


def _tensorboard(logdir):
    """``{tag: {step: value}}`` of every event file in ``logdir`` (scalars as floats, images as (H, W) sizes)."""
    from tensorboardX.proto import event_pb2
    out = {}
    for name in sorted(os.listdir(logdir)):
        data = open(os.path.join(logdir, name), "rb").read()
        i = 0
        while i < len(data):  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                value = (v.image.height, v.image.width) if v.HasField("image") else v.simple_value
                out.setdefault(v.tag, {})[event.step] = value
    return out


def _tiny(steps=2):
    cfg = tiny.get_config()
    t = cfg.training
    t.n_iters, t.n_jitted_steps, t.log_freq = steps, 1, 1
    t.checkpoint_freq = t.snapshot_freq = t.snapshot_freq_for_preemption = steps
    cfg.optim.warmup = 4  # the learning rate ramps: 1e-3 * k / 4 for the update from step k
    cfg.sampling.snapshot_num = cfg.sampling.num_samples = cfg.sampling.batch_size = 16
    cfg.sampling.final_num_samples = 0
    cfg.eval.num_samples, cfg.eval.batch_size = 16, 16
    return cfg


def test_train_sample_and_eval_say_and_log_what_they_do(tmp_path, capsys):
    cfg = _tiny()
    wd = str(tmp_path / "run")
    dmain.run_mode(cfg, wd, "train", progress=False)
    out = capsys.readouterr().out
    assert "compiling the train step" in out and "compiling the sampler (euler_maruyama_10, 16 samples)" in out
    assert out.index("compiling the train step") < out.index("compiled the train step")
    last = out.strip().splitlines()[-1]  # the job ends with where its outputs are
    ckpt = os.path.join(os.path.abspath(wd), "checkpoints", "2")
    assert last.startswith("trained to step 2") and f"checkpoint {ckpt};" in last and os.path.isdir(ckpt)
    assert os.path.join(os.path.abspath(wd), "tensorboard") in last
    assert any("params checksum" in ln for ln in out.splitlines())  # still there (tests compare it across runs)
    # the training snapshot names the sampler and its score evaluations
    assert Image.open(os.path.join(wd, "samples", "iter_00000002.png")).text["Title"] == \
        "EMA samples, step 2, euler_maruyama, NFE 10"

    # --mode sample: one file per sampler and steps, titled, paths printed; another sampler does not overwrite it
    x = dmain.run_mode(cfg, wd, "sample", progress=False)
    cfg.sampling.method, cfg.sampling.num_steps = "ddim", 5
    y = dmain.run_mode(cfg, wd, "sample", progress=False)
    out = capsys.readouterr().out
    samples = os.path.join(wd, "samples")
    for name, method, nfe, s in (("samples_00000002_euler_maruyama_10", "euler_maruyama", 10, x),
                                 ("samples_00000002_ddim_5", "ddim", 5, y)):
        npz, png = os.path.join(samples, name + ".npz"), os.path.join(samples, name + ".png")
        np.testing.assert_array_equal(np.load(npz)["x"], s.astype(np.float32))
        assert Image.open(png).text["Title"] == f"EMA samples, step 2, {method}, NFE {nfe}"
        assert f"wrote {npz} and {png}" in out
    assert "compiling the sampler (ddim_5, 16 samples)" in out
    assert "sampled 16 in" in out and "(ddim, NFE 5 score evaluations per sample, step 2)" in out
    assert not np.allclose(x, y)
    # default steps are named by their resolved count (sampling.num_steps=0: euler_maruyama takes the process's N)
    cfg.sampling.num_steps = 0
    cfg.sampling.method = "euler_maruyama"
    assert drun.sampler_label(cfg) == f"euler_maruyama_{cfg.model.num_scales}"
    cfg.sampling.method = "ode_adaptive"
    assert drun.sampler_label(cfg) == "ode_adaptive"

    # --mode eval: its metrics go to TensorBoard under the sampler's label
    cfg.sampling.method, cfg.sampling.num_steps = "ddim", 5
    rec = dmain.run_mode(cfg, wd, "eval", progress=False)
    tb = _tensorboard(os.path.join(wd, "tensorboard"))
    label = rec["sampler_label"]
    assert tb[f"eval/{label}/energy_distance"][2] == np.float32(rec["energy_distance"])
    assert tb[f"eval/{label}/mmd"][2] == np.float32(rec["mmd"])
    # the learning rate of the update that made each logged step (warmup 4: 1e-3 * (step - 1) / 4), and the
    # snapshot's picture
    lr = tb["train/learning_rate"]
    assert sorted(lr) == [1, 2] and np.allclose([lr[1], lr[2]], [0.0, 1e-3 / 4])
    assert tb["train/loss"].keys() == {1, 2}
    h, w = tb["samples"][2]
    assert np.asarray(Image.open(os.path.join(wd, "samples", "iter_00000002.png"))).shape[:2] == (h, w)


def test_progress_bars_in_sample_and_eval(tmp_path, capsys):
    """tqdm bars (stderr) with --progress; none without it."""
    cfg = _tiny()
    cfg.training.snapshot_sampling = False
    wd = str(tmp_path / "run")
    dmain.run_mode(cfg, wd, "train", progress=False)
    capsys.readouterr()
    dmain.run_mode(cfg, wd, "sample", progress=True)
    dmain.run_mode(cfg, wd, "eval", progress=True)
    err = capsys.readouterr().err
    assert "sampling (euler_maruyama_10): 100%" in err and "16/16" in err
    assert "eval samples (euler_maruyama_10_" in err
    dmain.run_mode(cfg, wd, "sample", progress=False)
    dmain.run_mode(cfg, wd, "eval", progress=False)
    assert "100%" not in capsys.readouterr().err


def test_image_grid_png_carries_its_title(tmp_path):
    from diffjax.train.images import image_grid, save_image_grid
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    path = str(tmp_path / "g.png")
    save_image_grid(path, images, title="EMA samples, step 3, ddim, NFE 50")
    img = Image.open(path)
    grid = image_grid(images)
    assert img.text["Title"] == "EMA samples, step 3, ddim, NFE 50"
    assert img.height > grid.shape[0] and img.width >= grid.shape[1]  # a strip with the title above the grid
    np.testing.assert_array_equal(np.asarray(img)[-grid.shape[0]:, :grid.shape[1]], grid[..., 0])
    save_image_grid(path, images)  # no title: the grid alone, as before
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grid[..., 0])
