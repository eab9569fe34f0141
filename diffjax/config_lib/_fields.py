"""Config field paths from the command line (``--config.training.batch_size=8``): :func:`check_field_path` names
the fields that exist where a path fails, and diffjax's field where the path is score_sde's name for it."""
from __future__ import annotations

import dataclasses
import difflib

import ml_collections

from diffjax.config_lib._names import MODELS
from diffjax.config_lib._sampler import options_listing

# score_sde's config fields (yang-song/score_sde, configs/) that diffjax names differently or does not have:
# {score_sde's field: (diffjax's field or None, a note)}. The message of an unknown --config.FIELD points here.
SCORE_SDE_FIELDS = {
    "sampling.snr": ("sampling.options.snr", "pc's Langevin corrector"),
    "sampling.n_steps_each": ("sampling.options.n_corrector_steps",
                              "pc's; annealed_langevin's is sampling.options.n_steps_each"),
    "sampling.noise_removal": ("sampling.options.denoise", ""),
    "sampling.corrector": ("sampling.options.corrector", "pc's, 'langevin'; no corrector: "
                                                         "sampling.method='reverse_diffusion' (a predictor alone)"),
    "sampling.predictor": ("sampling.method", "pc's predictor is reverse diffusion; a predictor alone: "
                                              "sampling.method='reverse_diffusion' | 'euler_maruyama' | 'ancestral'"),
    "sampling.probability_flow": ("sampling.method", "the probability-flow ODE: sampling.method='ode_adaptive' "
                                                     "(score_sde's RK45) | 'ode_heun' | 'ode_euler' | ..."),
    "training.likelihood_weighting": ("training.weighting", "training.weighting='likelihood'"),
    "model.nf": ("model.overrides.ch", "the network's base width"),
    "model.normalization": (None, "diffjax's UNets use GroupNorm (model.overrides.norm_groups)"),
    "model.nonlinearity": (None, "diffjax's UNets use swish"),
    "eval.enable_sampling": (None, "samples and their FID / KID / IS: --mode eval"),
    "eval.enable_bpd": (None, "bits/dim: --mode likelihood"),
    "eval.enable_loss": (None, "the training loss is in WORKDIR/metrics.jsonl"),
    "eval.bpd_dataset": ("eval.bpd_num_examples", "bits/dim are measured on the test split"),
    "eval.begin_ckpt": (None, "--mode eval scores the newest checkpoint"),
    "eval.end_ckpt": (None, "--mode eval scores the newest checkpoint"),
}


def _network_fields(config) -> tuple:
    """The dataclass fields of ``model.name``'s network (what ``model.overrides`` may set), or () if unknown."""
    if config.get("model") is None or config.model.get("name") not in MODELS:
        return ()
    return tuple(f.name for f in dataclasses.fields(MODELS[config.model.name]()) if f.name not in ("parent", "name"))


def check_field_path(config, path: str) -> None:
    """Check that ``path`` (``"training.batch_size"``, as in ``--config.training.batch_size=8``) names a field of
    ``config``. ``ValueError`` naming the path, the fields that exist where it fails, and diffjax's field where
    ``path`` is score_sde's name for it (:data:`SCORE_SDE_FIELDS`) or close to an existing one."""
    holder, done = config, []
    for part in path.split("."):
        name = part.split("[", 1)[0]  # ml_collections' "a.b[0]": index into a sequence field
        if not isinstance(holder, ml_collections.ConfigDict):
            return  # into a value (a tuple, a dataclass): ml_collections checks it
        if name not in holder:
            break
        holder = holder[name]
        done.append(name)
    else:
        return
    where = ".".join(done)
    full = ".".join(done + [name])
    msg = f"unknown config field {path!r}" + (f" (there is no {full!r})" if full != path else "")
    hints = []
    if full in SCORE_SDE_FIELDS:
        target, note = SCORE_SDE_FIELDS[full]
        hints.append(f"did you mean {target}? (score_sde's name{'; ' + note if note else ''})" if target else
                     f"a score_sde field that diffjax does not have: {note}")
    elif where == "model" and name in _network_fields(config):
        hints.append(f"did you mean model.overrides.{name}? (a field of model.name={config.model.name!r})")
    else:
        close = difflib.get_close_matches(name, [k for k in holder.keys()], n=1)
        if close:
            hints.append(f"did you mean {'.'.join(done + close)}?")
    if where == "sampling.options":
        hints.append(f"the options of each sampling.method: {options_listing()}")
    elif where == "model.overrides":
        named = ", ".join(sorted(holder.keys())) or "none"
        hints.append(f"on the command line, model.overrides takes the fields the config file names ({named}); "
                     f"set others in a config file; model.name={config.model.name!r} has: "
                     f"{', '.join(_network_fields(config))}")
    else:
        hints.append(f"{where or 'the config'} has: {', '.join(sorted(holder.keys()))}")
    raise ValueError("; ".join([msg] + hints))
