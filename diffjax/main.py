"""Command line: ``python -m diffjax.main --config configs/X.py --workdir DIR --mode MODE``.

Modes: ``train`` (a diffusion model, the Fashion-MNIST feature classifier when ``config.task="classifier"``, or the
noise-conditional classifier of classifier guidance when ``config.task="noisy_classifier"``, the contrastive
text-image model when ``config.task="clip"``, the KL autoencoder of latent diffusion when
``config.task="autoencoder"``, or a LoRA adapter of a trained model when ``config.task="adapt"``),
``sample``, ``eval`` (FID-type metrics of EMA samples, resumable), ``likelihood`` (bits/dim through the
probability-flow ODE, plus the DDPM variational bound for discrete DDPM models; NLL in nats on toy data),
``stats`` (cache the reference statistics only) and ``describe``.

Config fields can be overridden on the command line: ``--config.training.batch_size=8``. The config file may lie
anywhere: its ``from configs import default`` finds the ``configs`` package the file belongs to (see
:func:`_config_import_path`). This module holds the flags, the mode dispatch and the error reporting only; what
each mode does is in :mod:`diffjax.run` (callable from Python), and :mod:`diffjax.config_lib` resolves the config
(the entry layer).

A user error (a bad flag or config value, an unknown config field, a missing file) prints one line,
``diffjax: error: ...``, to stderr and exits with status 2; ``DIFFJAX_TRACEBACK=1`` shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

import diffjax.run as dr
from diffjax.run._common import _choice

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, samples).")
MODES = ("train", "sample", "eval", "likelihood", "stats", "describe")
TASKS = ("diffusion", "classifier", "noisy_classifier", "clip", "autoencoder", "adapt")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_string("compile_cache", os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                  "diffjax", "jax_compilation_cache"),
                    "JAX's persistent compilation cache: a resumed run, --mode sample and --mode eval reuse the "
                    "programs an earlier run compiled (jax keys them on the program, devices and jax version). "
                    "'' turns it off; JAX_COMPILATION_CACHE_DIR in the environment wins.")
flags.mark_flags_as_required(["config"])


def _init_distributed(config):
    import jax
    d = config.distributed
    if d.initialize:
        # a dead peer is detected after heartbeat_timeout_s and every survivor exits with an error instead of
        # waiting forever in a collective (jax's coordination service terminates them)
        kw = dict(initialization_timeout=int(d.get("initialization_timeout_s", 300)),
                  heartbeat_timeout_seconds=int(d.get("heartbeat_timeout_s", 100)))
        if d.coordinator_address:
            kw.update(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                      process_id=d.process_id)
        jax.distributed.initialize(**kw)


# the entry point of each task's modes (config, workdir, progress) -> result; the autoencoder dispatches its own
_TASK_MODES = {
    "classifier": {"train": lambda c, w, p: dr.train_classifier(c, w)},
    "noisy_classifier": {"train": lambda c, w, p: dr.train_noisy_classifier(c, w)},
    "clip": {"train": lambda c, w, p: dr.train_clip(c, w)},
    "adapt": {"train": lambda c, w, p: dr.train_adapter(c, w, progress=p),
              "sample": lambda c, w, p: dr.sample_adapter(c, w, progress=p)},
}
# a diffusion config with distill.method set: the few-step student's (--mode stats is the data's, as below)
_DISTILL_MODES = {
    "train": lambda c, w, p: dr.train_distill(c, w, progress=p),
    "sample": lambda c, w, p: dr.sample_distill(c, w),
    "eval": lambda c, w, p: dr.evaluate_distill(c, w),
    "stats": lambda c, w, p: dr.stats_mode(c, w),
}
_DIFFUSION_MODES = {
    "train": lambda c, w, p: dr.train(c, w, progress=p),
    "sample": lambda c, w, p: dr.sample(c, w, progress=p),
    "eval": lambda c, w, p: dr.evaluate(c, w, progress=p),
    "likelihood": lambda c, w, p: dr.likelihood(c, w),
    "stats": lambda c, w, p: dr.stats_mode(c, w),
}


def _modes_text(modes) -> str:
    """``train only`` / ``train and sample`` / ``train, sample and eval``."""
    modes = list(modes)
    return f"{modes[0]} only" if len(modes) == 1 else ", ".join(modes[:-1]) + f" and {modes[-1]}"


def run_mode(config, workdir, mode, *, progress: bool = True):
    """Dispatch ``mode`` for ``config.task`` (what ``main`` does after parsing flags). A diffusion config is
    validated whole first (:func:`diffjax.config_lib.validate`: names, arithmetic, SDE, sampler settings), in every
    mode, before anything is compiled or read from disk."""
    from diffjax import config_lib as cl
    _choice("mode", mode, MODES)
    _choice("task", config.task, TASKS)
    if config.task in ("diffusion", "adapt"):  # an adapter's config is its base model's plus adapt.*
        cl.validate(config)
    if config.task == "autoencoder":
        return dr.run_autoencoder(config, workdir, mode, progress=progress)
    if mode == "describe":
        return dr.describe_clip(config) if config.task == "clip" else dr.describe(config)
    if not workdir:
        raise ValueError(f"--workdir is required for --mode {mode}")
    if config.task in _TASK_MODES:
        modes, who = _TASK_MODES[config.task], f"config.task={config.task!r}"
    elif (method := cl.distill_method(config)) is not None:
        modes, who = _DISTILL_MODES, f"distill.method={method.name!r}"
    else:
        if cl.is_super_resolution(config) and mode == "likelihood":
            raise ValueError("--mode likelihood is not defined for a cascade's super-resolution stage "
                             "(cascade.low_res_size > 0); allowed modes: train, sample, eval, stats, describe")
        modes, who = _DIFFUSION_MODES, "a diffusion model"
    if mode not in modes:
        shown = [m for m in modes if m != "stats"] if modes is _DISTILL_MODES else modes
        raise ValueError(f"{who} supports --mode {_modes_text(shown)}, got --mode {mode}")
    return modes[mode](config, workdir, progress)


TRACEBACK_ENV = "DIFFJAX_TRACEBACK"  # set (not "0"): user errors raise with their traceback
USER_ERROR_EXIT = 2
# errors raised on purpose for the user: bad flag or config values, unknown config fields, missing files or packages
_USER_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OSError, ImportError, SyntaxError, flags.Error,
                app.UsageError)


def _is_user_error(e: BaseException) -> bool:
    # diffjax's own error classes (a workdir in use by another run, a full disk, a diverged loss) carry their message
    return isinstance(e, _USER_ERRORS) or type(e).__module__.startswith("diffjax.")


def _one_line(e: BaseException, config_file: str | None = None) -> str:
    """``e``'s message on one line; the type first (and how to see the traceback) unless ``e`` is a ``ValueError``,
    a flag error or one of diffjax's own error classes, whose messages are written for the user."""
    prefix = ""
    while "Error whilst parsing config file" in str(e) and e.__context__ is not None:
        e = e.__context__  # ml_collections / absl wrap an error of the config file's get_config() in a traceback
        prefix = f"--config {config_file}: " if config_file else "the config file: "
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
    text = prefix + " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
    if isinstance(e, ModuleNotFoundError) and e.name == "configs":
        text += (" (a config file imports its siblings as configs.NAME: keep it in a folder configs/ with an "
                 "__init__.py, next to default.py, e.g. the repository's configs/)")
    if isinstance(e, (ValueError, flags.Error, app.UsageError)) or type(e).__module__.startswith("diffjax."):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text} ({TRACEBACK_ENV}=1 shows the traceback)"


@contextlib.contextmanager
def _user_errors(diagnose=lambda: None, config_file=None):
    """Turn a user error into ``diffjax: error: <one line>`` on stderr and exit status 2 (unless
    ``DIFFJAX_TRACEBACK`` is set); ``diagnose()`` may give a better line (or None)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 (re-raised unless it is a user error)
        if not _is_user_error(e) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        sys.stderr.write(f"diffjax: error: {diagnose() or _one_line(e, config_file)}\n")
        sys.stderr.flush()
        sys.exit(USER_ERROR_EXIT)


def _config_arg(argv) -> str | None:
    """The value of ``--config`` in ``argv`` (``PATH`` or ml_collections' ``PATH:ARGUMENT``), or None."""
    for i, arg in enumerate(argv[1:], 1):
        m = re.match(r"^--?config(=|$)", arg)
        if m:
            return arg[m.end():] if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else "")
    return None


def _config_import_path(config_file: str) -> None:
    """Let the config file's ``from configs import default`` work from any working directory: the folder above the
    file's package (``REPO`` for ``REPO/configs/X.py``) goes first on ``sys.path``; then the working directory;
    last, as a fallback for a config file kept outside a ``configs/`` package, the source checkout diffjax is
    installed from (``pip install -e``) where it has ``configs/``."""
    import diffjax
    folder = os.path.dirname(os.path.abspath(config_file))
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(diffjax.__file__)))  # the folder holding diffjax/
    first = [os.path.dirname(folder)] if os.path.isfile(os.path.join(folder, "__init__.py")) else []
    for path in reversed(first + [os.getcwd()]):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    if os.path.isfile(os.path.join(checkout, "configs", "default.py")) and checkout not in sys.path:
        sys.path.append(checkout)


def _unknown_override(argv, config_arg) -> str | None:
    """The message of the first ``--config.FIELD=...`` of ``argv`` that names no field of the config file's config
    (:func:`diffjax.config_lib.check_field_path`), or None."""
    import importlib.util

    from diffjax import config_lib as cl
    fields = [re.sub(r"^--?(no)?config\.", "", a).split("=", 1)[0] for a in argv[1:]
              if re.match(r"^--?(no)?config\.", a)]
    if not fields or not config_arg:
        return None
    try:  # the config as the flag loads it (ml_collections: get_config(ARGUMENT) for PATH:ARGUMENT)
        path, *argument = config_arg.split(":", 1)
        spec = importlib.util.spec_from_file_location("_diffjax_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*argument)
    except Exception:  # noqa: BLE001 (the original error is reported)
        return None
    for field in fields:
        try:
            cl.check_field_path(config, field)
        except ValueError as e:
            return str(e)
    return None


def parse_flags(argv):
    """``app.run``'s flags parser: ``FLAGS(argv)`` (which loads the config file and applies the ``--config.*``
    overrides) after :func:`_config_import_path`; a bad flag, a missing config file or an unknown config field is
    a one-line user error (:func:`_user_errors`)."""
    config_arg = _config_arg(argv)
    config_file = config_arg.split(":", 1)[0] if config_arg is not None else None
    with _user_errors(lambda: _unknown_override(argv, config_arg), config_file):
        if config_file is not None:
            if not os.path.isfile(config_file):
                raise ValueError(f"--config {config_file}: no such file (working directory {os.getcwd()})")
            _config_import_path(config_file)
        return FLAGS(argv)


def _use_compile_cache(path: str) -> None:
    import jax
    if path and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", path)


def main(argv):
    with _user_errors():
        _main(argv)


def _main(argv):
    del argv
    from diffjax import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts; this process is ours (diffjax/_host_memory.py)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    config = FLAGS.config
    _choice("task", config.task, TASKS)
    _init_distributed(config)
    _use_compile_cache(FLAGS.compile_cache)
    if FLAGS.mode != "describe" and not FLAGS.workdir:
        raise ValueError(f"--workdir is required for --mode {FLAGS.mode}")
    run_mode(config, FLAGS.workdir, FLAGS.mode, progress=FLAGS.progress)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
