"""experiments/colab_tpu.ipynb: a valid notebook with the promised sections, executed end to end on the CPU with
a tiny Fashion-MNIST override (no kernel: its code cells run in order in one namespace; ``# colab-only`` cells and
shell / magic lines are skipped)."""
import importlib
import os
import warnings

import matplotlib
import nbformat
import numpy as np
import pytest

matplotlib.use("Agg")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab_tpu.ipynb")
COLAB_ONLY = "# colab-only"

# Fashion-MNIST from Debian's IDX files (offline), a one-level 8-channel DDPM++ UNet, 2 steps, a 4-step sampler.
TINY = {
    "data.dataset": "fashion_mnist",
    "data.image_size": 28,
    "data.num_channels": 1,
    "data.random_flip": False,
    "model.overrides": {"ch": 8, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": (), "dropout": 0.0,
                        "image_size": 28, "num_channels": 1},
    "model.ema_rate": 0.9,
    "optim.warmup": 1,
    "training.batch_size": 8,
    "training.n_iters": 2,
    "training.n_jitted_steps": 1,
    "training.log_freq": 1,
    "training.snapshot_freq": 2,
    "training.checkpoint_freq": 2,
    "training.snapshot_freq_for_preemption": 2,
    "training.snapshot_sampling": False,
    "sampling.num_steps": 4,
    "sampling.num_samples": 8,
    "sampling.batch_size": 8,
}


def _load():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def _runnable(source: str) -> str:
    """The cell's code without shell (``!``) and magic (``%``) lines; empty for ``# colab-only`` cells."""
    lines = source.splitlines()
    if lines and lines[0].strip() == COLAB_ONLY:
        return ""
    return "\n".join(line for line in lines if not line.lstrip().startswith(("!", "%")))


def _run(nb, params, *, until=None):
    """Execute the notebook's runnable code cells in order in one namespace; ``params`` are assigned right after
    the cell tagged ``parameters`` (as papermill does); stop after the first cell containing ``until``."""
    ns = {"__name__": "__colab_notebook__"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() under Agg
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            src = _runnable(cell.source)
            if src.strip():
                exec(compile(src, f"colab_tpu.ipynb[cell {i}]", "exec"), ns)
                ns["_cells_run"] = ns.get("_cells_run", 0) + 1
            if "parameters" in cell.metadata.get("tags", []):
                assert ns["overrides"] == {} and ns["SMALL"] is False  # the Colab defaults
                ns.update(params)
            if until is not None and until in cell.source:
                break
    return ns


def test_notebook_is_valid_and_has_the_sections():
    nb = _load()
    assert nb.nbformat == 4
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "pip install" in code and "git+https://github.com/diffjax/diffjax" in code
    for needle in ("jax.devices()", "jax.device_count()", "drun.train(config, WORKDIR)",
                   "drun.sample(config, WORKDIR)", "plt.imshow", "config_lib.validate(config)"):
        assert needle in code, needle
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for heading in ("Install", "Devices", "Settings", "Config", "Data", "Training", "Sampling", "Samples"):
        assert any(heading in h for h in headings), (heading, headings)
    # installs and Colab-runtime cells are marked, so nothing here tries to reach the network
    for c in nb.cells:
        if c.cell_type == "code" and any(line.lstrip().startswith("!") for line in c.source.splitlines()):
            assert c.source.splitlines()[0].strip() == COLAB_ONLY, c.source
        if c.cell_type == "code" and ("tfds.data_source" in c.source or "google.colab" in c.source):
            assert c.source.splitlines()[0].strip() == COLAB_ONLY, c.source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "overrides = {}" in params[0].source and "SMALL = False" in params[0].source
    assert "cifar10" in params[0].source
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                    reason="needs Debian's dataset-fashion-mnist")
def test_notebook_runs_on_cpu_with_tiny_overrides(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    nb = _load()
    monkeypatch.chdir(REPO)
    workdir = str(tmp_path / "run")
    ns = _run(nb, dict(WORKDIR=workdir, overrides=dict(TINY), NUM_TRAIN_STEPS=TINY["training.n_iters"]))
    plt.close("all")
    assert ns["_cells_run"] >= 8
    cfg = ns["config"]
    assert cfg.data.dataset == "fashion_mnist" and cfg.model.overrides.ch == 8 and cfg.training.n_iters == 2
    assert int(ns["state"].step) == 2
    samples = os.path.join(workdir, "samples")
    from diffjax.run import sampler_label
    name = f"samples_00000002_{sampler_label(cfg)}"  # named by the sampler and its steps
    assert os.path.exists(os.path.join(samples, name + ".png"))
    x = np.load(os.path.join(samples, name + ".npz"))["x"]
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.uint8
    assert ns["images"].shape == (8, 28, 28, 1) and ns["grid"].ndim == 3
    assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))


@pytest.mark.parametrize("config_name", ["cifar10_ddpmpp_cont", "cifar10_ddpm", "cifar10_ncsnpp_cont"])
@pytest.mark.parametrize("small", [False, True])
def test_colab_settings_give_valid_configs(config_name, small, monkeypatch):
    """The Colab path (no overrides) assembles a valid CIFAR-10 config for each documented config and SMALL."""
    monkeypatch.chdir(REPO)
    ns = _run(_load(), dict(CONFIG=config_name, SMALL=small), until="config_lib.validate(config)")
    cfg = ns["config"]
    assert cfg.data.dataset == "cifar10" and cfg.training.n_iters == ns["NUM_TRAIN_STEPS"]
    assert cfg.model.name == ("small32" if small else importlib.import_module(f"configs.{config_name}")
                              .get_config().model.name)
    model = ns["config_lib"].build_model(cfg)
    assert (model.image_size, model.num_channels) == (32, 3)
