"""The config a workdir was trained with: ``WORKDIR/config.json``.

The first training run in a workdir writes its resolved config there; a later training run compares its own config
with it and refuses (``ValueError``, one line naming the differing fields) when a field that changes what the saved
state means, or how the run continues, differs. Fields that do not (sampling, evaluation, logging, checkpoint and
dispatch frequencies, the data's location, the device layout, the run's length ``training.n_iters``) may differ; the
file is then rewritten with the new values. Read-only modes only warn. A workdir from before this file existed
(checkpoints, no ``config.json``) is accepted and the file is written then; the checkpoints' own check
(:class:`~diffjax.train.CheckpointMismatchError`) still refuses a state of another shape.

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

__all__ = ["CONFIG_FILE", "read_workdir_config", "config_differences", "check_workdir_config",
           "write_workdir_config", "workdir_has_state", "claim_workdir"]

CONFIG_FILE = "config.json"

# fields that may differ between runs in one workdir: they change neither the saved state's meaning nor the way
# training continues (a prefix ending in "." covers a whole section)
FREE_FIELDS = (
    "sampling.", "eval.", "distributed.",
    "training.log_freq", "training.eval_freq", "training.snapshot_freq", "training.checkpoint_freq",
    "training.snapshot_freq_for_preemption", "training.checkpoint_keep", "training.n_jitted_steps",
    "training.multi_step", "training.snapshot_sampling",
    "data.data_dir", "data.verify_files",
    "distill.teacher_workdir",  # read once, at step 0; the teacher is in the checkpoint from then on
    "distill.sample_steps",     # consistency sampling only
    "cascade.base_workdir", "cascade.sampling_aug_level",  # a super-resolution stage's sampling only
    "classifier.log_every", "classifier.num_test_examples",
    "noisy_classifier.log_every", "noisy_classifier.num_test_examples", "noisy_classifier.num_noise_bins",
    "noisy_classifier.eval_batch_size",
)
# read-only modes (sample, eval, likelihood) also ignore these: they change how training goes on, not the network
READ_ONLY_FREE_FIELDS = ("seed", "training.n_iters")
# config.task="noisy_classifier" reads these fields outside its own section (config_lib.noisy_classifier_record)
_NOISY_CLASSIFIER_FIELDS = ("training.sde", "training.continuous", "training.loss", "training.t_eps",
                            "model.beta_min", "model.beta_max", "model.sigma_min", "model.sigma_max",
                            "model.edm_sigma_min", "model.edm_sigma_max", "model.num_scales", "model.time_input",
                            "model.parameterization")
# config.task="autoencoder" reads these fields outside its own section (diffjax/run/_autoencoder.py)
_AUTOENCODER_FIELDS = ("training.batch_size", "model.ema_rate", "model.ema_schedule")
# open-ended sections: a key on one side only is a difference (elsewhere it is a field added or removed by another
# version of diffjax, and is not compared)
_OPEN_SECTIONS = ("model.overrides.",)


def _matches(path: str, patterns) -> bool:
    return any(path == p or (p.endswith(".") and path.startswith(p)) for p in patterns)


def _flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _as_json(config) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _distill_method(current: dict):
    """The few-step method of the config ``current`` (a nested dict), or None
    (:func:`~diffjax.config_lib.distill_method`)."""
    import ml_collections
    from diffjax import config_lib as cl
    return cl.distill_method(ml_collections.ConfigDict(current))


def _compared(path: str, current: dict, *, distilling: bool) -> bool:
    """Whether ``path`` matters for the task of the config ``current`` (flattened); ``distilling``: it trains a
    few-step student."""
    if path in ("seed", "task"):
        return True
    task = current.get("task", "diffusion")
    top = path.split(".")[0]
    if task == "classifier":
        return top in ("data", "classifier")
    if task == "noisy_classifier":
        return top in ("data", "optim", "noisy_classifier") or path in _NOISY_CLASSIFIER_FIELDS
    if task == "autoencoder":
        return top in ("data", "optim", "autoencoder") or path in _AUTOENCODER_FIELDS
    if top in ("classifier", "noisy_classifier"):
        return False
    if top == "distill" and not distilling:
        return path == "distill.method"  # a diffusion run: the distill section matters only as the task
    if path == "model.posthoc_sigma_rels":  # tracked only with training.posthoc_ema_freq > 0
        return bool(current.get("training.posthoc_ema_freq"))
    return True


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_differences(stored: dict, current: dict, *, resume: bool = True) -> List[str]:
    """The fields of ``current`` (a config as ``json.loads(config.to_json_best_effort())``) that differ from the
    workdir's ``stored`` one in a way that matters: ``["model.overrides.hidden: [32, 32] -> [64, 64]", ...]``.

    ``resume``: a training run continuing the stored one (``training.n_iters`` may change: a longer run, or a stop
    earlier; not where it sets consistency training's curriculum, ``distill.total_steps = 0``); else a read-only mode,
    which also ignores :data:`READ_ONLY_FREE_FIELDS`.
    """
    s, c = _flatten(stored), _flatten(current)
    method = _distill_method(current)
    out = []
    for path in sorted(set(s) | set(c)):
        if _matches(path, FREE_FIELDS) or not _compared(path, c, distilling=method is not None):
            continue
        if not resume and _matches(path, READ_ONLY_FREE_FIELDS):
            continue
        if (path in s) != (path in c):
            if _matches(path, _OPEN_SECTIONS):
                out.append(f"{path}: {_short(s[path]) if path in s else 'unset'} -> "
                           f"{_short(c[path]) if path in c else 'unset'}")
            continue
        old, new = s[path], c[path]
        if path == "training.posthoc_ema_freq":  # the state holds the power EMAs iff > 0; the period is free
            old, new = bool(old), bool(new)
        if old == new:
            continue
        if path == "training.n_iters" and not (method is not None and method.length_sets_schedule):
            continue  # the same training, run longer (or stopped earlier)
        out.append(f"{path}: {_short(s[path])} -> {_short(c[path])}")
    return out


def read_workdir_config(workdir: str) -> Optional[dict]:
    """The config stored in ``WORKDIR/config.json`` (a nested dict), or ``None`` when there is none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} (the config this workdir was trained with) is unreadable ({e}); restore it, or "
                         f"delete it to take this config as the workdir's") from None


def check_workdir_config(config, workdir: str, *, has_state: bool, resume: bool = True) -> List[str]:
    """Compare ``config`` with the workdir's stored config (:func:`config_differences`).

    Args:
      has_state: the workdir holds a trained state (checkpoints, a classifier's parameters). Without one there is
        nothing to protect: a training run may replace the stored config.
      resume: a training run (refuses); else a read-only mode (returns the differences, the caller warns).

    Raises:
      ValueError: a training run whose config differs from the stored one in a field that matters (one line: the
        fields, the stored and the new values, what to do).
    """
    stored = read_workdir_config(workdir)
    if stored is None:
        return []
    diffs = config_differences(stored, _as_json(config), resume=resume)
    if diffs and resume and has_state:
        path = os.path.join(workdir, CONFIG_FILE)
        raise ValueError(
            f"workdir {workdir} holds a run of another config: {len(diffs)} field(s) differ from {path} "
            f"(stored -> this config): {'; '.join(diffs)}. Training would mix two runs and delete the stored one's "
            f"checkpoints; use the stored values, another --workdir, or (to continue this run under the new values "
            f"on purpose) edit {path}")
    return diffs


def write_workdir_config(config, workdir: str) -> str:
    """Write ``config`` (resolved, as JSON) to ``WORKDIR/config.json`` atomically; process 0 only. Returns the
    path."""
    import jax
    path = os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(_as_json(config), f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    return path


def workdir_has_state(workdir: str) -> bool:
    """Whether ``workdir`` holds a trained state of any task: a checkpoint step (``checkpoints/`` or
    ``checkpoints-meta/``), a feature classifier's or a noisy classifier's parameters."""
    from diffjax import config_lib as cl
    from diffjax.run._classifier import CLASSIFIER_FILE
    for name in ("checkpoints", "checkpoints-meta"):
        d = os.path.join(workdir, name)
        if os.path.isdir(d) and any(entry.isdigit() for entry in os.listdir(d)):
            return True
    return any(os.path.exists(os.path.join(workdir, f)) for f in (CLASSIFIER_FILE, cl.NOISY_CLASSIFIER_PARAMS))


def claim_workdir(config, workdir: str) -> str:
    """A training run that starts over each time (the classifier tasks): :func:`check_workdir_config` (refuses a
    workdir that holds a state trained by another config, :func:`workdir_has_state`), then
    :func:`write_workdir_config`."""
    check_workdir_config(config, workdir, has_state=workdir_has_state(workdir))
    return write_workdir_config(config, workdir)
