"""The space a diffusion run works in (:func:`data_space`): images (:class:`PixelSpace`), or the latents of a frozen
KL autoencoder (:class:`LatentSpace`, ``latent.autoencoder_workdir`` set: latent diffusion, Rombach et al. 2022).

A :class:`~diffjax.run.Run` trains on ``space.dataset(images)`` and hands its samples through ``space.decode``, so
``--mode train`` (snapshots, final samples), ``sample`` and ``eval`` write and score images in both spaces. A latent
run encodes the training split once (EMA parameters of the autoencoder's newest checkpoint; batches of the same rows
as the image pipeline, exact resume) and multiplies the latents by ``latent.scale_factor``, or, where it is 0, by
``1 / std`` of the encoded training latents, estimated when training starts and stored in ``WORKDIR/latent.json``
with the autoencoder's checkpoint step, so that sampling decodes with the same value and the same autoencoder.

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

LATENT_FILE = "latent.json"
ENCODE_BATCH = 500  # images per encoder call


class PixelSpace:
    """A pixel-space model: it trains on the images and its samples are images."""

    def dataset(self, data):
        return data

    def decode(self, x):
        return x


class LatentSpace:
    """A latent model's frozen autoencoder (``latent.autoencoder_workdir``) and scale factor.

    ``read_only`` (sample, eval) with a ``workdir``: the scale factor is read at once (:attr:`scale_factor`); a
    training run fixes it in :meth:`dataset`.

    Raises:
      ValueError: the autoencoder's workdir holds no checkpoint (one line naming ``latent.autoencoder_workdir``); a
        read-only run's workdir holds no scale factor, or one of another autoencoder checkpoint.
    """

    def __init__(self, config, workdir, *, read_only: bool = True):
        import jax
        from diffjax import config_lib as cl
        from diffjax.run._autoencoder import autoencoder_checkpoint
        lat = config.latent
        self.config, self.workdir = config, workdir
        try:
            model, self.params, self.autoencoder_config, self.step = autoencoder_checkpoint(lat.autoencoder_workdir)
        except ValueError as e:
            raise ValueError(f"latent.autoencoder_workdir={lat.autoencoder_workdir!r}: {e}") from None
        self.shape = tuple(cl.latent_shape(config, 1)[1:])
        self._scale = None
        if read_only and workdir:  # sample / eval: the scale the model was trained with, checked before any sampling
            self._scale = self._stored_scale()

        def encode(params, x):
            posterior = model.apply({"params": params}, x, method="encode")
            return posterior.mean, posterior.std

        self._encode = jax.jit(encode)
        self._decode = jax.jit(lambda params, z: model.apply({"params": params}, z, method="decode"))

    @property
    def scale_factor(self) -> float:
        """The scale of the model's latents: ``WORKDIR/latent.json``'s, else ``latent.scale_factor`` when set."""
        if self._scale is None:
            self._scale = self._stored_scale()
        return self._scale

    def _stored_scale(self) -> float:
        record = self._record()
        if record is not None:
            return float(record["scale_factor"])
        if self.config.latent.scale_factor:
            return float(self.config.latent.scale_factor)
        raise ValueError(f"{os.path.join(self.workdir or '.', LATENT_FILE)} does not exist: the scale factor of "
                         f"latent.scale_factor=0 is estimated when training starts in the workdir and stored there; "
                         f"train there first, or set latent.scale_factor")

    def _record(self):
        """``WORKDIR/latent.json`` (checked against this autoencoder), or None."""
        path = os.path.join(self.workdir, LATENT_FILE) if self.workdir else ""
        if not path or not os.path.isfile(path):
            return None
        with open(path) as f:
            record = json.load(f)
        if record["autoencoder_step"] != self.step or tuple(record["latent_shape"]) != self.shape:
            raise ValueError(f"{path}: this model was trained on {'x'.join(map(str, record['latent_shape']))} "
                             f"latents of the autoencoder checkpoint at step {record['autoencoder_step']} of "
                             f"{record['autoencoder_workdir']}; latent.autoencoder_workdir="
                             f"{self.config.latent.autoencoder_workdir!r} holds step {self.step} "
                             f"({'x'.join(map(str, self.shape))} latents), whose latents differ (allowed: the "
                             f"autoencoder the model was trained with)")
        return record

    def encode_images(self, images_uint8):
        """The posterior's ``(mean, std)`` of uint8 images ``(N, H, W, C)``, float32 ``(N, h, w, c)`` each, in
        batches of :data:`ENCODE_BATCH` (the last one padded, so one program serves all)."""
        from diffjax.data import to_unit
        n = len(images_uint8)
        means, stds = [], []
        for a in range(0, n, ENCODE_BATCH):
            x = to_unit(images_uint8[a:a + ENCODE_BATCH])
            k = len(x)
            if k < min(ENCODE_BATCH, n):
                x = np.concatenate([x, np.zeros((min(ENCODE_BATCH, n) - k,) + x.shape[1:], x.dtype)])
            mean, std = self._encode(self.params, x)
            means.append(np.asarray(mean)[:k])
            stds.append(np.asarray(std)[:k])
        return np.concatenate(means), np.concatenate(stds)

    def dataset(self, data):
        """The training images of ``data`` (an :class:`~diffjax.data.ImageData`) encoded once, as a
        :class:`~diffjax.data.LatentData` of the same batches; fixes the scale factor and, on process 0, writes
        ``WORKDIR/latent.json`` when it is not there."""
        import jax
        from diffjax.data import LatentData, latent_scale_factor
        from diffjax.eval.evaluate import write_json_atomic
        t0 = time.perf_counter()
        images, labels = data.get(np.arange(data.size))
        mean, std = self.encode_images(np.asarray(images, np.uint8))
        std = std if self.config.latent.encode == "sample" else None
        record = self._record()
        if record is None:
            estimated = not self.config.latent.scale_factor
            scale = latent_scale_factor(mean, std) if estimated else float(self.config.latent.scale_factor)
            record = {"scale_factor": scale, "estimated": estimated, "encode": self.config.latent.encode,
                      "autoencoder_workdir": os.path.abspath(self.config.latent.autoencoder_workdir),
                      "autoencoder_step": self.step, "latent_shape": list(self.shape),
                      "num_examples": int(data.size)}
            if jax.process_index() == 0:
                write_json_atomic(os.path.join(self.workdir, LATENT_FILE), record)
        self._scale = float(record["scale_factor"])
        print(f"encoded {data.size} training images to {'x'.join(map(str, self.shape))} latents "
              f"({self.config.latent.encode}) with the autoencoder at step {self.step} in "
              f"{time.perf_counter() - t0:.1f} s; scale factor {self._scale:.5g} "
              f"({'estimated: 1 / std' if record['estimated'] else 'latent.scale_factor'}, "
              f"{os.path.join(self.workdir, LATENT_FILE)})", flush=True)
        return LatentData(mean, labels, std=std, scale=self._scale, global_batch=data.global_batch, seed=data.seed,
                          num_classes=data.num_classes)

    def decode(self, z):
        """Images (float, about ``[-1, 1]``) of the model's latents ``z`` (host numpy), divided by the scale."""
        z = np.asarray(z, np.float32) / self.scale_factor
        return np.concatenate([np.asarray(self._decode(self.params, z[a:a + ENCODE_BATCH]))
                               for a in range(0, len(z), ENCODE_BATCH)])


def data_space(config, workdir, *, read_only: bool = True):
    """The space the run of ``config`` in ``workdir`` works in: :class:`LatentSpace` with
    ``latent.autoencoder_workdir`` set, else :class:`PixelSpace`."""
    from diffjax import config_lib as cl
    return LatentSpace(config, workdir, read_only=read_only) if cl.is_latent(config) else PixelSpace()
