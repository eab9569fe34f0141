"""Validation before compilation: the whole config (sampler settings included), sampler options from the command
line, bad library inputs with clear errors (or accepted correctly), and README's names."""
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import diffjax as dj  # noqa: E402
from configs import tiny  # noqa: E402
from diffjax import config_lib  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax.core import _checks  # noqa: E402

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
INF, NAN = float("inf"), float("nan")


def _parse(*overrides, config="configs/tiny.py"):
    """The config as ``python -m diffjax.main`` gets it: ml_collections' config-file flag, locked, with overrides."""
    argv = ["prog", "--config", config, *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True, sys_argv=argv)
    cwd = os.getcwd()
    os.chdir(REPO)  # config files import ``configs.default``
    try:
        fv(argv)
    finally:
        os.chdir(cwd)
    return fv.config


# ------------------------------------------------------------------------ item 7: the whole config, sampler included


@pytest.mark.parametrize("changes, match", [
    (dict(num_steps=-5), r"sampling.num_steps must be an integer >= 0 \(0: the sampler's default\), got -5"),
    (dict(t_eps=2.0), r"sampling.method='euler_maruyama' rejects.*t_eps must lie in the open interval \(0, T=1.0\)"),
    (dict(t_eps=-1e-3), r"sampling.t_eps must be 0 \(the sampler's default\) or a time in \(0, T\)"),
    (dict(method="ddim", sde="vesde"),
     r"sampling.method='ddim'.*training.sde='vesde'.*sde must be one of \('VPSDE',\)"),
    (dict(method="ancestral", num_steps=10), r"sampling.method='ancestral' rejects.*num_steps=10 is too few"),
    (dict(method="annealed_langevin"), r"sde must be one of \('VESDE',\) for annealed_langevin"),
    (dict(method="ddim", num_steps=2000), r"num_steps must be <= sde.N=1000 for ddim"),
    (dict(method="ddim", options=dict(eta=INF)), r"eta must be a finite number >= 0, got inf"),
    (dict(method="pc", options=dict(snr=-0.1)), r"snr must be a finite number > 0, got -0.1"),
    (dict(method="pc", options=dict(corrector="lang")), r"corrector must be one of \('langevin',\)"),
    (dict(method="ode_adaptive", options=dict(solver="rk4")), r"solver must be one of \('dopri5', 'tsit5'\)"),
    (dict(method="ode_heun", options=dict(time_grid="rho7")),
     r"sampling.options.time_grid must be one of \('default', 'uniform', 'log_snr', 'karras', 'quadratic', "
     r"'ddpm_leading', 'ddpm_trailing', 'ddpm_linspace'\), got 'rho7'"),
    (dict(method="edm_heun", sde="vesde", options=dict(time_grid="ddpm_leading")),
     r"sampling.method='edm_heun' rejects.*process must carry a DDPM chain"),
    (dict(method="edm_heun", options=dict(s_churn=-1.0)), r"s_churn must be a finite number >= 0, got -1.0"),
    (dict(guidance_scale=INF), r"sampling.guidance_scale must be a finite number >= 0"),
    (dict(batch_size=0), r"sampling.batch_size must be an integer >= 1, got 0"),
    (dict(sde="vesde", sigma_max=INF), r"training.sde='vesde' cannot be built.*sigma_max must be a finite number > 0"),
])
def test_validate_checks_the_sampler_settings(changes, match):
    cfg = tiny.get_config()
    for k, v in changes.items():
        if k == "sde":
            cfg.training.sde = v
        elif k == "sigma_max":
            cfg.model.sigma_max = v
        elif k == "options":
            for name, value in v.items():
                cfg.sampling.options[name] = value
        else:
            cfg.sampling[k] = v
    with pytest.raises(ValueError, match=match):
        config_lib.validate(cfg, device_count=1)


@pytest.mark.parametrize("field, value, match", [
    ("lr_decay", "cos", r"optim.lr_decay='cos' is not known; allowed values: \['constant', 'cosine', 'inverse_sqrt'\]"),
    ("lr_final", 1.5, r"optim.\* \(lr_decay='cosine'\): final must be in \[0, 1\], got 1.5"),
    ("lr_ref_steps", 0, r"optim.\* \(lr_decay='inverse_sqrt'\): ref_steps"),
])
def test_validate_checks_the_learning_rate_schedule(field, value, match):
    cfg = tiny.get_config()
    cfg.optim.lr_decay = "inverse_sqrt" if field == "lr_ref_steps" else "cosine"
    cfg.optim.warmup = 0
    cfg.optim[field] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate(cfg, device_count=1)


def test_validate_checks_the_multi_step_mode():
    cfg = tiny.get_config()
    cfg.training.multi_step = "unrolled"
    with pytest.raises(ValueError, match=r"training.multi_step='unrolled' is not known; allowed values: "
                                         r"\['auto', 'dispatch', 'scan', 'unroll'\]"):
        config_lib.validate(cfg, device_count=1)


def test_shipped_configs_and_every_sampler_validate():
    """Every file in configs/ (distillation configs also through validate_distill, their teacher given apart)."""
    import importlib
    names = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py") and f != "__init__.py")
    assert len(names) >= 22 and {"fashion_mnist_progressive", "fashion_mnist_consistency_distillation"} <= set(names)
    for name in names:
        cfg = importlib.import_module(f"configs.{name}").get_config()
        if name == "fashion_mnist_latent":  # its 7x7x4 network needs the autoencoder's workdir: refused, named
            with pytest.raises(ValueError, match="set latent.autoencoder_workdir"):
                config_lib.validate(cfg, device_count=1)
            continue
        config_lib.validate(cfg, device_count=1)
        if cfg.distill.method:
            config_lib.validate_distill(cfg, external_teacher=True)
    for method in config_lib.SAMPLERS:
        cfg = tiny.get_config()
        cfg.sampling.method, cfg.sampling.num_steps = method, 0
        cfg.training.sde = "vesde" if method == "annealed_langevin" else "vpsde"
        config_lib.validate(cfg, device_count=1)


@pytest.mark.parametrize("name, variant, sampler", [("fashion_mnist_budget_edm", "edm", "heun25_karras"),
                                                    ("fashion_mnist_budget_rf", "rectified_flow", "heun25")])
def test_budget_configs_are_the_measured_variants(name, variant, sampler):
    """The shipped budget configs are, field for field, the ablation variants of
    experiments/results/fmnist_budget.py that the results README measured (its overrides of the budget config and
    the sampler of the row)."""
    import importlib
    import importlib.util
    from configs import fashion_mnist_budget
    spec = importlib.util.spec_from_file_location(
        "fmnist_budget", os.path.join(REPO, "experiments", "results", "fmnist_budget.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, overrides, samplers = script.VARIANTS[variant]
    want = fashion_mnist_budget.get_config()
    for field, value in {**overrides, **dict(samplers)[sampler]}.items():
        *parents, leaf = field.split(".")
        node = want
        for part in parents:
            node = node[part]
        node[leaf] = value
    got = importlib.import_module(f"configs.{name}").get_config()
    assert got.to_dict() == want.to_dict()


def test_sampler_checks_see_a_learned_variance_model_as_one():
    """The stand-in score of the checks offers score_and_v exactly when the network has a learned variance."""
    from configs import fashion_mnist_ddpm
    cfg = fashion_mnist_ddpm.get_config()
    cfg.sampling.options.variance = "learned"
    with pytest.raises(ValueError, match=r"sampling.method='ancestral' rejects.*variance='learned'"):
        config_lib.validate(cfg, device_count=1)
    cfg.training.loss, cfg.model.overrides.learn_sigma = "hybrid", True
    config_lib.validate(cfg, device_count=1)


def test_cli_describe_rejects_bad_sampler_settings():
    """Item 7 through the command line: --mode describe (nothing to compile) fails on the sampler settings."""
    r = subprocess.run([sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--mode", "describe",
                        "--config.sampling.method=ddim", "--config.training.sde=vesde"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "sampling.method='ddim' rejects these settings" in r.stderr, r.stderr[-2000:]
    assert "model toy_mlp" not in r.stdout


def test_every_mode_validates_before_anything_else(tmp_path):
    """--mode stats never reached the sampler settings; now every mode checks the whole config first."""
    cfg = tiny.get_config()
    cfg.sampling.method = "ancestral"  # 10 steps: too few for the VP SDE's DDPM chain
    for mode in ("stats", "sample", "train"):
        with pytest.raises(ValueError, match="sampling.method='ancestral' rejects.*num_steps=10 is too few"):
            dmain.run_mode(cfg, str(tmp_path), mode)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------- item 8: options from the command line


def _cli_value(typ, default):
    """A command-line value of an option's type that differs from its default (strings: the default itself)."""
    if typ is bool:
        return ("false" if default else "true"), (not default)
    if typ is int:
        return str(default + 1), default + 1
    if typ is float:
        value = 2.0 * default if default else 0.5
        return repr(value), value
    return default, default


def test_every_sampler_option_is_settable_from_the_command_line():
    import inspect
    seen = 0
    for method, fn in config_lib.SAMPLERS.items():
        options = config_lib.sampler_options(method)
        params = inspect.signature(fn).parameters
        # everything else is Python-only: callables (pc's predictor) and return_nfe (it changes the return type)
        rest = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} - set(options) - {"num_steps", "t_eps"}
        assert all(n == "return_nfe" or callable(params[n].default) for n in rest), (method, rest)
        sde = "vesde" if method == "annealed_langevin" else "vpsde"
        for name, typ in options.items():
            args = [f"--config.sampling.method={method}", "--config.sampling.num_steps=0",
                    f"--config.training.sde={sde}"]
            if typ is object:  # a None default without a type annotation: read as a Python literal, else a string
                for text, value in (("some_word", "some_word"), ("1.5", 1.5), ("None", None)):
                    kw = config_lib.build_sampler(_parse(*args, f"--config.sampling.options.{name}={text}")).keywords
                    assert kw.get(name) == value and set(kw) <= {name}, (method, name, kw)
                seen += 1
                continue
            if name == "time_grid":  # a name of config_lib.TIME_GRIDS, resolved to the grid function
                cfg = _parse(*args, "--config.sampling.options.time_grid=karras")
                config_lib.validate(cfg, device_count=1)
                assert config_lib.build_sampler(cfg).keywords == {"time_grid": dj.samplers.karras_grid}, method
                seen += 1
                continue
            if name == "corrector":  # a name on the command line; config_lib resolves it to the kernel
                kw = config_lib.build_sampler(_parse(*args, "--config.sampling.options.corrector=langevin")).keywords
                assert kw == {"corrector": dj.samplers.langevin_corrector_step}, kw
                seen += 1
                continue
            if name == "solver":  # a name on the command line; config_lib resolves it to the diffrax solver object
                import diffrax
                kw = config_lib.build_sampler(_parse(*args, "--config.sampling.options.solver=tsit5")).keywords
                assert kw == {"solver": diffrax.Tsit5()}, kw
                seen += 1
                continue
            text, value = _cli_value(typ, params[name].default)
            cfg = _parse(*args, f"--config.sampling.options.{name}={text}")
            config_lib.validate(cfg, device_count=1)
            kw = config_lib.build_sampler(cfg).keywords
            assert kw[name] == value and type(kw[name]) is typ, (method, name, kw)
            assert set(kw) == {name}, kw  # unset options keep the sampler's defaults
            seen += 1
    assert seen >= 13  # eta, snr, n_corrector_steps, corrector, variance, rtol, atol, solver, max_steps, ...


def test_time_grid_from_the_command_line_is_the_grid_function():
    """--config.sampling.options.time_grid=karras builds the sampler with diffjax.samplers.karras_grid: same samples."""
    cfg = _parse("--config.sampling.method=ode_heun", "--config.sampling.num_steps=6",
                 "--config.sampling.options.time_grid=karras")
    config_lib.validate(cfg, device_count=1)
    sample = config_lib.build_sampler(cfg)
    assert sample.keywords == {"time_grid": dj.samplers.karras_grid, "num_steps": 6}
    sde = config_lib.build_sde(cfg)
    score_fn = dj.mixture_score_fn(dj.ring_mixture(), sde)
    x_T = sde.prior_sample(jax.random.key(0), (8, 2))
    got = sample(jax.random.key(1), x_T, score_fn, sde)
    want = dj.samplers.ode_heun(jax.random.key(1), x_T, score_fn, sde, num_steps=6, time_grid=dj.samplers.karras_grid)
    uniform = dj.samplers.ode_heun(jax.random.key(1), x_T, score_fn, sde, num_steps=6,
                                   time_grid=dj.samplers.uniform_time_grid)
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_array_equal(got, want)
    assert float(jnp.max(jnp.abs(got - uniform))) > 1e-3
    assert set(config_lib.TIME_GRIDS) == {"default", "uniform", "log_snr", "karras", "quadratic", "ddpm_leading",
                                          "ddpm_trailing", "ddpm_linspace"}
    assert config_lib.TIME_GRIDS["default"] is dj.samplers.process_default
    for name, grid in config_lib.TIME_GRIDS.items():  # every named grid runs on the tiny config's VP SDE
        times = grid(sde, 4, sde.t_eps)
        assert times.shape == (5,) and bool(jnp.all(jnp.diff(times) < 0)), name


def test_cli_options_reach_the_sampler_and_python_configs_still_set_them():
    cfg = _parse("--config.sampling.method=ddim", "--config.sampling.options.eta=1.0",
                 "--config.sampling.num_steps=20")
    config_lib.validate(cfg, device_count=1)
    sample = config_lib.build_sampler(cfg)
    assert sample.func is dj.samplers.ddim and sample.keywords == {"eta": 1.0, "num_steps": 20}
    cfg = _parse("--config.sampling.options.snr=0.2", "--config.sampling.options.n_corrector_steps=2",
                 config="configs/cifar10_ncsnpp_cont.py")
    assert config_lib.build_sampler(cfg).keywords == {"snr": 0.2, "n_corrector_steps": 2}
    from configs import fashion_mnist_ncsn
    assert config_lib.build_sampler(fashion_mnist_ncsn.get_config()).keywords["n_steps_each"] == 100


def test_unknown_option_on_the_command_line_lists_the_options():
    with pytest.raises(AttributeError, match=r"sampling.options.etaa is not an option of any sampler.*ddim: eta.*"
                                             r"pc: time_grid, corrector, snr, n_corrector_steps"):
        _parse("--config.sampling.options.etaa=1.0")
    with pytest.raises(flags.IllegalFlagValueError, match="could not convert string to float"):
        _parse("--config.sampling.method=ddim", "--config.sampling.options.eta=abc")


def test_option_of_another_sampler_is_an_error_listing_the_allowed_ones():
    cfg = _parse("--config.sampling.method=pc", "--config.sampling.options.eta=1.0")
    with pytest.raises(ValueError, match=r"sampling.options \['eta'\] are not options of sampler 'pc'; allowed: "
                                         r"\['corrector', 'denoise', 'n_corrector_steps', 'predictor', 'snr', "
                                         r"'time_grid'\]"):
        config_lib.validate(cfg, device_count=1)


# ------------------------------------------------------------------------------------------------ item 9: bad inputs


def _gauss():
    sde = dj.vp_sde()
    score_fn = lambda x, t: -x  # noqa: E731  (N(0, I) data: the score is -x at every t)
    return sde, score_fn


def test_integer_x_T_is_rejected_clearly():
    sde, score_fn = _gauss()
    x_T = jnp.zeros((4, 2), jnp.int32)
    for sampler in (dj.samplers.euler_maruyama, dj.samplers.ddim, dj.samplers.ode_euler):
        with pytest.raises(ValueError, match=r"x_T must be a floating-point array \(e.g. float32\), got dtype int32"):
            sampler(jax.random.PRNGKey(0), x_T, score_fn, sde, num_steps=3)


def test_dsm_loss_rejects_a_score_shaped_unlike_x():
    sde, _ = _gauss()
    x0 = jnp.ones((3, 3), jnp.float32)  # batch == dim: a (3,) score broadcasts against (3, 3) silently
    with pytest.raises(ValueError, match=r"score_fn\(x, t\) must return an array shaped like x0 \(3, 3\), got shape "
                                         r"\(3,\)"):
        dj.dsm_loss(jax.random.PRNGKey(0), x0, lambda x, t: -x.sum(axis=1), sde)
    with pytest.raises(ValueError, match=r"x0 must be a floating-point array"):
        dj.dsm_loss(jax.random.PRNGKey(0), jnp.ones((3, 3), jnp.int32), lambda x, t: -x, sde)
    loss = dj.dsm_loss(jax.random.PRNGKey(0), x0, lambda x, t: -x, sde)
    assert loss.shape == () and jnp.isfinite(loss)


@pytest.mark.parametrize("make, match", [
    (lambda: dj.ve_sde(sigma_max=INF), "sigma_max must be a finite number > 0, got inf"),
    (lambda: dj.ve_sde(sigma_min=NAN), "sigma_min must be a finite number > 0, got nan"),
    (lambda: dj.vp_sde(beta_max=INF), "beta_max must be a finite number > 0, got inf"),
    (lambda: dj.subvp_sde(beta_min=NAN), "beta_min must be a finite number > 0, got nan"),
    (lambda: dj.cosine_vp_sde(s=INF), "s must be a finite number > 0, got inf"),
    (lambda: dj.cosine_vp_sde(alpha_bar_end=NAN), "alpha_bar_end must be a finite number"),
])
def test_non_finite_sde_parameters_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_ddim_rejects_infinite_eta():
    sde, score_fn = _gauss()
    x_T = jnp.zeros((4, 2), jnp.float32)
    for eta in (INF, NAN):
        with pytest.raises(ValueError, match=f"eta must be a finite number >= 0, got {eta}"):
            dj.samplers.ddim(jax.random.PRNGKey(0), x_T, score_fn, sde, num_steps=5, eta=eta)


@pytest.mark.parametrize("check, value", [
    ("check_positive", INF), ("check_positive", NAN), ("check_positive", -INF), ("check_nonnegative", INF),
    ("check_nonnegative", NAN), ("check_finite", -INF), ("check_finite", NAN),
])
def test_real_checks_reject_nan_and_inf(check, value):
    with pytest.raises(ValueError, match=f"x must be a finite number.*got {value}"):
        getattr(_checks, check)("x", value)


def test_infinite_guidance_scale_is_rejected():
    cond = lambda x, t, y: -x  # noqa: E731
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0, got inf"):
        dj.classifier_free_guidance(cond, guidance_scale=INF, null_label=10)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0, got nan"):
        dj.classifier_guidance(lambda x, t: -x, lambda x, t: jnp.zeros((x.shape[0], 3)), scale=NAN)
    cfg = tiny.get_config()
    cfg.data.num_classes, cfg.training.label_dropout, cfg.sampling.guidance_scale = 4, 0.1, INF
    with pytest.raises(ValueError, match="sampling.guidance_scale must be a finite number >= 0"):
        config_lib.validate(cfg, device_count=1)


def test_concrete_array_scalars_are_accepted_as_num_steps_and_t_eps():
    sde, score_fn = _gauss()
    x_T = sde.prior_sample(jax.random.PRNGKey(0), (8, 2))
    want = dj.samplers.ode_euler(jax.random.PRNGKey(1), x_T, score_fn, sde, num_steps=5, t_eps=1e-3)
    assert jnp.all(jnp.isfinite(want))
    for n, eps in ((jnp.int32(5), jnp.float32(1e-3)), (np.int64(5), np.float32(1e-3)), (np.array(5), np.array(1e-3))):
        got = dj.samplers.ode_euler(jax.random.PRNGKey(1), x_T, score_fn, sde, num_steps=n, t_eps=eps)
        assert jnp.all(jnp.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got = dj.samplers.ddim(jax.random.PRNGKey(1), x_T, score_fn, sde, num_steps=jnp.int32(5), eta=jnp.float32(0.5))
    want = dj.samplers.ddim(jax.random.PRNGKey(1), x_T, score_fn, sde, num_steps=5, eta=0.5)
    assert jnp.all(jnp.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert dj.ve_sde(sigma_max=jnp.float32(50.0)).sigma_max == 50.0


def test_traced_num_steps_gets_a_clear_message():
    sde, score_fn = _gauss()
    x_T = jnp.zeros((4, 2), jnp.float32)
    run = jax.jit(lambda n: dj.samplers.ode_euler(jax.random.PRNGKey(0), x_T, score_fn, sde, num_steps=n))
    with pytest.raises(ValueError, match="num_steps must be a static Python number, got a traced value"):
        run(5)
    run = jax.jit(lambda e: dj.samplers.ode_euler(jax.random.PRNGKey(0), x_T, score_fn, sde, num_steps=3, t_eps=e))
    with pytest.raises(ValueError, match="t_eps must be a static Python number, got a traced value"):
        run(1e-3)


# ----------------------------------------------------------------------------------- item 14: README's names exist


def test_readme_library_names_exist():
    import diffjax.nets  # noqa: F401
    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index("## Using the library"):text.index("## Command line")]
    names = set(re.findall(r"`([A-Za-z_][\w.]*)`", section)) | set(re.findall(r"dj\.([A-Za-z_][\w.]*)", section))
    external = {"clip_sample"}  # diffusers' name for clip_denoised
    sde = dj.vp_sde()
    missing = sorted(n for n in names - external
                     if not any(hasattr(m, n.split(".")[-1]) for m in (dj, dj.samplers, dj.discrete, dj.nets, sde)))
    assert not missing, missing
    assert math.isfinite(float(dj.linear_betas(10)[-1]))


def test_chain_error_lists_every_sampler_that_works_on_every_process():
    """The "needs a discrete chain" message lists the samplers for every process, computed from the public
    samplers (all of config_lib.SAMPLERS but the three that need a chain)."""
    from diffjax.samplers import _common
    need_chain = {"ancestral", "annealed_langevin", "ddim"}
    assert set(_common.any_process_samplers()) == set(config_lib.SAMPLERS) - need_chain
    for name in need_chain:
        with pytest.raises(ValueError, match="needs a discrete chain") as e:
            getattr(dj.samplers, name)(jax.random.key(0), jnp.zeros((2, 2)), lambda x, t: x, dj.rectified_flow())
        listed = str(e.value).split("the samplers for every process are ")[1].split(", ")
        assert set(listed) == set(config_lib.SAMPLERS) - need_chain, listed
