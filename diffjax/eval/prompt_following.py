"""How well samples follow what they were drawn for: the class a prompt (or a class label) names against the feature
classifier's decision, and the attributes a prompt states against the caption grammar's pixel rules
(:func:`diffjax.data.measure_attributes`, the rules the training captions were written by).

Each accuracy is over the samples whose prompt states that field (``None`` where no prompt does), so "a photo of a
dark sneaker" counts towards the class and the shade accuracy and not towards the size accuracy.
"""
from __future__ import annotations

import numpy as np

__all__ = ["class_accuracy", "prompt_following", "following"]


def class_accuracy(logits, labels):
    """The fraction of samples the classifier (``logits`` ``(N, K)``) assigns to their intended class ``labels``
    ``(N,)``; samples with label ``-1`` (no class intended) are left out. ``None`` when none has a class."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    if labels.size and labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be < the classifier's {logits.shape[1]} classes (or -1), got "
                         f"{int(labels.max())}")
    keep = labels >= 0
    if not keep.any():
        return None
    return float(np.mean(logits[keep].argmax(-1) == labels[keep]))


def prompt_following(images, logits, prompts) -> dict:
    """Prompt following of uint8 ``images`` ``(N, H, W[, 1])`` drawn for ``prompts`` (``N`` strings), with the
    feature classifier's ``logits`` ``(N, K)`` of the same images.

    Returns:
        ``{"class_accuracy", "shade_accuracy", "size_accuracy", "prompt_accuracy", "num_class", "num_shade",
        "num_size"}``: each accuracy over the samples whose prompt states that field; ``prompt_accuracy`` over the
        samples whose prompt states anything: every stated field met (:func:`diffjax.data.prompt_matches` with the
        classifier's class and the measured attributes); ``num_*`` the samples each accuracy counts.
    """
    from diffjax.data import measure_attributes, parse_prompt, prompt_matches
    prompts = [str(p) for p in np.asarray(prompts).reshape(-1)]
    logits = np.asarray(logits)
    if len(prompts) != len(logits) or len(prompts) != len(images):
        raise ValueError(f"images, logits and prompts must be as many, got {len(images)}, {len(logits)} and "
                         f"{len(prompts)}")
    parsed = [parse_prompt(p) for p in prompts]
    want = {f: np.array([-2 if getattr(p, f) is None else getattr(p, f) for p in parsed], np.int32)
            for f in ("label", "shade", "size")}
    shade, size = measure_attributes(images)
    predicted = logits.argmax(-1)

    def stated_accuracy(field, got):
        keep = want[field] != -2
        return (float(np.mean(got[keep] == want[field][keep])) if keep.any() else None), int(keep.sum())

    acc_class = class_accuracy(logits, np.where(want["label"] == -2, -1, want["label"]))
    acc_shade, n_shade = stated_accuracy("shade", shade)
    acc_size, n_size = stated_accuracy("size", size)
    stating = [i for i, p in enumerate(parsed) if any(v is not None for v in p)]
    met = [prompt_matches(parsed[i], int(predicted[i]), int(shade[i]), int(size[i])) for i in stating]
    return {"class_accuracy": acc_class, "shade_accuracy": acc_shade, "size_accuracy": acc_size,
            "prompt_accuracy": float(np.mean(met)) if met else None, "num_class": int((want["label"] != -2).sum()),
            "num_shade": n_shade, "num_size": n_size}


def following(images, logits, drawn_for: dict) -> dict:
    """How samples follow what they were drawn for (``{"prompts"[, "labels"]}`` or ``{"labels"}``, as a sample npz
    holds them): :func:`prompt_following` for prompts, ``{"class_accuracy"}`` for labels alone, ``{}`` for nothing."""
    if "prompts" in drawn_for:
        return prompt_following(images, logits, drawn_for["prompts"])
    if "labels" in drawn_for:
        return {"class_accuracy": class_accuracy(logits, drawn_for["labels"])}
    return {}
