"""The command line as a user meets it: one-line user errors (exit status 2), unknown config fields named with the
fields that exist and score_sde's names mapped to diffjax's, config files loaded from any directory, and
``--mode describe`` on every config in configs/ (in-process: abstract shapes only, nothing compiled)."""
import contextlib
import glob
import importlib
import io
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import tiny  # noqa: E402
from diffjax import config_lib  # noqa: E402
from diffjax import main as dmain  # noqa: E402

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not os.path.basename(p).startswith("_"))
TINY = os.path.join(REPO, "configs", "tiny.py")


@pytest.mark.parametrize("name", CONFIGS)
def test_describe_every_config(name):
    cfg = importlib.import_module(f"configs.{name}").get_config()
    if name == "fashion_mnist_latent":  # the latent shape comes from the autoencoder's workdir: a one-line refusal
        with pytest.raises(ValueError, match="set latent.autoencoder_workdir"):
            dmain.run_mode(cfg, None, "describe")
        return
    with contextlib.redirect_stdout(io.StringIO()) as out:
        dmain.run_mode(cfg, None, "describe")
    text = out.getvalue()
    assert "total parameters:" in text
    # the network the config's task trains
    expected = {"classifier": "FeatureClassifier on input (1, 28, 28, 1)",
                "noisy_classifier": "NoiseConditionalClassifier on input (1, 28, 28, 1)",
                "clip": "CLIP on input (1, 28, 28, 1) and 16 tokens",
                "autoencoder": "AutoencoderKL on input (1, 28, 28, 1)"}.get(
                    cfg.task, f"model {cfg.model.name}: ")
    assert expected in text, text[-2000:]


@pytest.mark.parametrize("path,expected", [
    ("training.bogus", ["unknown config field 'training.bogus'", "training has: batch_size,", "weighting"]),
    ("sampling.snr", ["did you mean sampling.options.snr?", "score_sde", "sampling has: adapter_scale, batch_size,"]),
    ("sampling.n_steps_each", ["did you mean sampling.options.n_corrector_steps?"]),
    ("sampling.predictor", ["did you mean sampling.method?", "'reverse_diffusion'"]),
    ("sampling.corrector", ["did you mean sampling.options.corrector?"]),
    ("sampling.noise_removal", ["did you mean sampling.options.denoise?"]),
    ("sampling.probability_flow", ["did you mean sampling.method?", "'ode_adaptive'"]),
    ("training.likelihood_weighting", ["did you mean training.weighting?"]),
    ("model.nf", ["did you mean model.overrides.ch?"]),
    ("eval.enable_bpd", ["--mode likelihood"]),
    ("training.batchsize", ["did you mean training.batch_size?"]),
    ("trainig.batch_size", ["unknown config field 'trainig.batch_size' (there is no 'trainig')",
                            "did you mean training?", "the config has: adapt, autoencoder, cascade, classifier,"]),
    ("sampling.options.etaa", ["did you mean sampling.options.eta?", "ddim: eta, spacing"]),
    ("model.overrides.ch", ["model.overrides takes the fields the config file names (embedding_dim, hidden)",
                            "model.name='toy_mlp' has: hidden,"]),
    ("model.embedding_dim", ["did you mean model.overrides.embedding_dim?"]),
])
def test_unknown_field_names_path_fields_and_score_sde_equivalent(path, expected):
    cfg = tiny.get_config()
    with pytest.raises(ValueError) as e:
        config_lib.check_field_path(cfg, path)
    for part in expected:
        assert part in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path", ["training.batch_size", "sampling.options.snr", "model.overrides.hidden",
                                  "model.overrides.hidden[0]", "sampling.options"])
def test_known_fields_pass(path):
    config_lib.check_field_path(tiny.get_config(), path)


def test_score_sde_value_names():
    cfg = tiny.get_config()
    cfg.model.name = "ncsnpp"
    with pytest.raises(ValueError, match=r"model.name='ncsnpp' is not known; allowed values: .*did you mean "
                                         r"model.name='ncsnpp_cifar10' \(score_sde's 'ncsnpp'\)\?"):
        config_lib.validate(cfg)
    cfg = tiny.get_config()
    cfg.training.sde = "vpsdee"
    with pytest.raises(ValueError, match=r"did you mean 'vpsde'\?"):
        config_lib.validate(cfg)


def test_unknown_override_found_in_argv():
    argv = ["diffjax.main", "--config", TINY, "--mode=describe", "--config.training.batch_size=8",
            "--config.sampling.snr=0.1"]
    assert dmain._config_arg(argv) == TINY
    assert "did you mean sampling.options.snr?" in dmain._unknown_override(argv, TINY)
    assert dmain._unknown_override(argv[:-1], TINY) is None  # every override exists: the original error stands
    assert dmain._config_arg(["m", f"--config={TINY}:x"]) == f"{TINY}:x"


def test_user_errors_print_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(dmain.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        with dmain._user_errors():
            raise ValueError("training.sde='x' is not known;\n  allowed values: ...")
    assert e.value.code == 2
    assert capsys.readouterr().err == "diffjax: error: training.sde='x' is not known; allowed values: ...\n"
    with pytest.raises(SystemExit):
        with dmain._user_errors():
            raise KeyError("sampling.options.etaa is not an option")
    assert capsys.readouterr().err == ("diffjax: error: KeyError: sampling.options.etaa is not an option "
                                       f"({dmain.TRACEBACK_ENV}=1 shows the traceback)\n")
    with pytest.raises(ZeroDivisionError):  # not a user error: the traceback
        with dmain._user_errors():
            1 / 0
    monkeypatch.setenv(dmain.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="bad"):
        with dmain._user_errors():
            raise ValueError("bad")


def test_config_import_path_puts_the_configs_package_parent_first(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    dmain._config_import_path(TINY)
    assert sys.path[:2] == [REPO, str(tmp_path)]


def _cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop(dmain.TRACEBACK_ENV, None)
    return subprocess.run([sys.executable, "-m", "diffjax.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_from_another_directory(tmp_path):
    r = _cli("--config", TINY, "--mode", "describe", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "model toy_mlp: 4,930 parameters" in r.stdout


def test_cli_unknown_field_is_one_line_exit_2(tmp_path):
    r = _cli("--config", TINY, "--mode", "describe", "--config.sampling.snr=0.1", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("diffjax: error: unknown config field 'sampling.snr'; did you mean "
                               "sampling.options.snr?"), r.stderr[-3000:]
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_main_in_process_parses_runs_and_reports_user_errors(capsys):
    """``parse_flags`` + ``main`` as ``python -m diffjax.main`` calls them, in this process: describe runs; an unknown
    field, a missing config file and a missing --workdir each exit with status 2 and one line."""
    try:
        argv = ["diffjax.main", "--config", TINY, "--mode", "describe", "--noprogress"]
        dmain.parse_flags(argv)
        dmain.main(argv)
        out = capsys.readouterr().out
        assert "parameters" in out and "sampler" in out
        for bad, expected in [
            (argv + ["--config.sampling.snr=0.1"], "sampling.options.snr"),
            (["diffjax.main", "--config", os.path.join(REPO, "configs", "nonexistent.py")], "no such file"),
        ]:
            with pytest.raises(SystemExit) as e:
                dmain.parse_flags(bad)
            err = capsys.readouterr().err
            assert e.value.code == 2 and err.startswith("diffjax: error: ") and expected in err, err
            assert err.count("\n") == 1
        train = ["diffjax.main", "--config", TINY, "--mode", "train"]
        dmain.parse_flags(train)
        with pytest.raises(SystemExit) as e:
            dmain.main(train)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--workdir is required for --mode train" in err
    finally:
        dmain.FLAGS.unparse_flags()
