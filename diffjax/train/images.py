"""Writing sample pictures: PNG grids of images and 2-D scatter plots (process 0 calls these)."""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

__all__ = ["image_grid", "save_image_grid", "save_scatter"]


def image_grid(images: np.ndarray, *, ncol: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images ``(N, H, W, C)`` into one ``(rows*(H+pad)+pad, cols*(W+pad)+pad, C)`` image."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), images.dtype)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return grid


def save_image_grid(path: str, images_uint8: np.ndarray, *, title: str = "", **kwargs) -> None:
    """Write the :func:`image_grid` of uint8 images ``(N, H, W, C)`` as a PNG; a ``title`` is drawn in a white strip
    above the grid (widened to fit it) and stored as the PNG's ``Title`` text."""
    from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
    grid = image_grid(images_uint8, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if not title:
        img.save(path)
        return
    font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(img).textbbox((0, 0), title, font=font)
    white = 255 if img.mode == "L" else (255,) * len(img.getbands())
    canvas = Image.new(img.mode, (max(img.width, right + 4), img.height + bottom + 4), white)
    canvas.paste(img, (0, bottom + 4))
    ImageDraw.Draw(canvas).text((2, 2 - top // 2), title, fill=0 if img.mode == "L" else (0,) * len(white), font=font)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    canvas.save(path, pnginfo=info)


def save_scatter(path: str, x: np.ndarray, *, reference: Optional[np.ndarray] = None, title: str = "") -> None:
    """Scatter plot of 2-D points ``x`` (left: ``reference`` data if given, right: ``x``); ``title`` above the plot
    and as the PNG's ``Title`` text."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("data", reference), ("samples", x)] if reference is not None else [("samples", x)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    pts_all = np.abs(np.concatenate([np.asarray(p, np.float32) for _, p in panels]))
    lim = 1.1 * float(np.max(pts_all[np.isfinite(pts_all)], initial=1.0))
    for ax, (name, pts) in zip(axes[0], panels):
        pts = np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(name)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Title": title} if title else None)
    plt.close(fig)
