"""Base config with score-SDE's field names. Experiment configs import this and override fields; never copy it.

Defaults: score-SDE's CIFAR-10 DDPM++ (VP, continuous) setup.
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 42

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300000
    training.snapshot_freq = 50000           # periodic checkpoint + EMA sample snapshot
    training.checkpoint_freq = 50000
    training.snapshot_freq_for_preemption = 10000
    training.checkpoint_keep = 5
    training.log_freq = 50
    training.eval_freq = 100
    training.n_jitted_steps = 5              # optimizer steps per dispatch (lax.scan)
    training.snapshot_sampling = True
    training.sde = "vpsde"                   # vpsde | subvpsde | vesde | cosine
    training.continuous = True
    training.loss = "dsm"                    # dsm | ddpm | ncsn | hybrid
    training.weighting = "simple"            # simple (sigma^2) | likelihood (g^2)
    training.importance_sampling = False
    training.reduce_mean = False
    training.t_eps = 1e-5
    training.label_dropout = 0.0             # classifier-free guidance (needs data.num_classes)
    training.vlb_weight = 1e-3               # hybrid loss lambda

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"                   # see diffjax.config_lib.SAMPLERS
    sampling.num_steps = 0                   # 0: the sampler's published default
    sampling.t_eps = 0.0                     # 0: the sampler's default
    sampling.options = ml_collections.ConfigDict()  # extra keyword options of the sampler (snr, eta, rtol, ...)
    sampling.num_samples = 64                # --mode sample
    sampling.batch_size = 64
    sampling.snapshot_num = 64               # samples per training snapshot
    sampling.final_num_samples = 0           # samples written to samples/final.npz at the end of training

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "cifar10"
    data.image_size = 32
    data.num_channels = 3
    data.random_flip = True
    data.uniform_dequantization = False
    data.centered = True                     # data in [-1, 1]
    data.data_dir = ""
    data.num_classes = 0                     # > 0: class-conditional model
    data.crop = 0

    config.model = model = ml_collections.ConfigDict()
    model.name = "ddpmpp_cifar10"            # see diffjax.config_lib.MODELS
    model.overrides = ml_collections.ConfigDict()  # keyword overrides of the preset's fields
    model.parameterization = "eps"
    model.time_input = ""                    # "": make_score_fn's default
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.distributed = dist = ml_collections.ConfigDict()
    dist.initialize = False                  # call jax.distributed.initialize (multi-host)
    dist.coordinator_address = ""
    dist.num_processes = 0
    dist.process_id = -1
    dist.fsdp = 1                            # size of the "fsdp" mesh axis
    dist.fsdp_min_size = 2 ** 18
    return config
