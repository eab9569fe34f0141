"""Parity of ``diffjax.nets.AutoencoderKL`` with diffusers' PyTorch ``AutoencoderKL`` on the same random weights.

For each small configuration below: build diffusers' ``AutoencoderKL`` (seeded), perturb every parameter (so that
GroupNorm scales and biases, zero-initialised biases and the attention projections all carry information), save its
state dict with ``safetensors.torch.save_file``, read that file with diffjax's torch-free reader
(:func:`diffjax.eval.safetensors.read_safetensors`), load it into the Flax model
(:func:`diffjax.nets.autoencoder_params_from_diffusers`) and compare on fixed inputs, in float32:

* the posterior's mean and log-variance (``vae.encode(x).latent_dist``),
* the decoder's output on fixed latents (``vae.decode(z).sample``),
* the same with the attention weights renamed to the legacy names (``query``, ``key``, ``value``, ``proj_attn``).

Run with the torch virtual environment (it also sees the system site-packages, so JAX and diffjax import there),
from the repository root::

    PYTHONPATH=$PWD /work/venv-torch/bin/python experiments/parity/autoencoder_kl_vs_diffusers.py

Writes ``experiments/parity/autoencoder_kl_parity.json`` (the configurations, the largest absolute differences,
the versions) and fails (exit status 1) if any difference reaches ``TOLERANCE``.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile

import numpy as np

TOLERANCE = 1e-4
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autoencoder_kl_parity.json")

CONFIGS = [  # diffusers AutoencoderKL keyword arguments, the image size and the batch
    dict(kwargs=dict(in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=2,
                     latent_channels=4, norm_num_groups=32), size=32, batch=2),
    dict(kwargs=dict(in_channels=1, out_channels=1, block_out_channels=(16, 32, 32), layers_per_block=1,
                     latent_channels=3, norm_num_groups=8), size=28, batch=3),
    dict(kwargs=dict(in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
                     latent_channels=4, norm_num_groups=16, use_quant_conv=False, use_post_quant_conv=False,
                     mid_block_add_attention=False), size=16, batch=2),
]


def _diffusers_model(kwargs, seed):
    import torch
    from diffusers import AutoencoderKL
    n = len(kwargs["block_out_channels"])
    torch.manual_seed(seed)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        **kwargs).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in vae.parameters():  # every parameter carries information (norm scales, biases, projections)
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return vae


def _flax_model(kwargs):
    from diffjax.nets import AutoencoderKL
    return AutoencoderKL(block_out_channels=tuple(kwargs["block_out_channels"]),
                         layers_per_block=kwargs["layers_per_block"], latent_channels=kwargs["latent_channels"],
                         norm_num_groups=kwargs["norm_num_groups"], in_channels=kwargs["in_channels"],
                         out_channels=kwargs["out_channels"],
                         mid_attention=kwargs.get("mid_block_add_attention", True),
                         use_quant_conv=kwargs.get("use_quant_conv", True),
                         use_post_quant_conv=kwargs.get("use_post_quant_conv", True))


def _legacy(state_dict):
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for k, v in state_dict.items():
        for new, old in names.items():
            if f".attentions.0.{new}." in k:
                k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        out[k] = v
    return out


def compare(case, seed, tmp):
    import jax
    import jax.numpy as jnp
    import torch
    from safetensors.torch import save_file
    from diffjax.eval.safetensors import read_safetensors
    from diffjax.nets import autoencoder_params_from_diffusers
    kw, size, batch = case["kwargs"], case["size"], case["batch"]
    vae = _diffusers_model(kw, seed)
    path = os.path.join(tmp, f"vae_{seed}.safetensors")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, path)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, kw["in_channels"], size, size)).astype(np.float32)
    f = 2 ** (len(kw["block_out_channels"]) - 1)
    z = rng.standard_normal((batch, kw["latent_channels"], size // f, size // f)).astype(np.float32)
    with torch.no_grad():
        post = vae.encode(torch.from_numpy(x)).latent_dist
        mean_t, logvar_t = post.mean.numpy(), post.logvar.numpy()
        dec_t = vae.decode(torch.from_numpy(z)).sample.numpy()
    model = _flax_model(kw)
    nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
    nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    row = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}, "image_size": size,
           "batch": batch, "num_tensors": len(vae.state_dict())}
    for label, state_dict in (("", read_safetensors(path)), ("legacy_names_", _legacy(read_safetensors(path)))):
        params = autoencoder_params_from_diffusers(state_dict, model)
        posterior = jax.jit(lambda p, a: model.apply({"params": p}, a, method="encode"))(params, nhwc(x))
        dec = jax.jit(lambda p, a: model.apply({"params": p}, a, method="decode"))(params, nhwc(z))
        row[f"{label}mean_max_abs_err"] = float(np.max(np.abs(nchw(posterior.mean) - mean_t)))
        row[f"{label}logvar_max_abs_err"] = float(np.max(np.abs(nchw(posterior.logvar) - logvar_t)))
        row[f"{label}decoder_max_abs_err"] = float(np.max(np.abs(nchw(dec) - dec_t)))
    row["mean_max_abs"] = float(np.max(np.abs(mean_t)))
    row["decoder_max_abs"] = float(np.max(np.abs(dec_t)))
    return row


def main():
    import diffusers
    import jax
    import torch
    torch.set_default_dtype(torch.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CONFIGS):
            row = compare(case, seed=i, tmp=tmp)
            errs = {k: v for k, v in row.items() if k.endswith("_err")}
            print(f"config {i}: {row['config']} at {row['image_size']}x{row['image_size']}: "
                  + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()), flush=True)
            rows.append(row)
    worst = max(v for r in rows for k, v in r.items() if k.endswith("_err"))
    ok = bool(np.isfinite(worst) and worst < TOLERANCE)
    record = {"what": "diffjax.nets.AutoencoderKL vs diffusers.AutoencoderKL, same random weights via safetensors, "
                      "float32 CPU, max |diffjax - diffusers|",
              "tolerance": TOLERANCE, "worst_max_abs_err": worst, "pass": ok, "cases": rows,
              "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__, "jax": jax.__version__,
                           "python": platform.python_version()}}
    with open(OUT, "w") as fh:
        json.dump(record, fh, indent=1)
        fh.write("\n")
    print(f"{'PASS' if ok else 'FAIL'}: worst max abs difference {worst:.2e} (tolerance {TOLERANCE}); wrote {OUT}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
