"""Base config with score-SDE's field names. Experiment configs import this and override fields; never copy it.

Defaults: score-SDE's CIFAR-10 DDPM++ (VP, continuous) setup.
"""
import ml_collections

# The samplers' keyword options that sampling.options can set, per sampling.method, in the order of the samplers'
# signatures, with the type a command-line value is parsed as (object: any Python literal, else a string; str also
# for a name that diffjax.config_lib resolves: a solver, a time grid, a corrector). diffjax.config_lib reads the
# same from the signatures (config_lib.sampler_options(method)) and checks the options that are set against the
# chosen sampler; the tests keep this table equal to it. Configs do not import the library.
SAMPLER_OPTIONS = {
    "ancestral": dict(variance=object),
    "annealed_langevin": dict(n_steps_each=int, step_lr=float, denoise=bool),
    "ddim": dict(eta=float, spacing=str, variance=object, clip_x0=bool),
    "dpm_solver": dict(order=int, method=str, sde_variant=bool, lower_order_final=bool, time_grid=str, denoise=bool),
    "edm_heun": dict(time_grid=str, s_churn=float, s_tmin=float, s_tmax=float, s_noise=float, denoise=bool),
    "euler_maruyama": dict(time_grid=str, denoise=bool),
    "ode_adaptive": dict(rtol=float, atol=float, solver=str, max_steps=int, denoise=bool),
    "ode_euler": dict(time_grid=str, denoise=bool),
    "ode_heun": dict(time_grid=str, denoise=bool),
    "pc": dict(time_grid=str, corrector=str, snr=float, n_corrector_steps=int, denoise=bool),
    "reverse_diffusion": dict(time_grid=str, denoise=bool),
    "unipc": dict(order=int, variant=str, lower_order_final=bool, time_grid=str, denoise=bool),
}


class SamplerOptions(ml_collections.ConfigDict):
    """``sampling.options``: a ``None`` placeholder of its type per option of every sampler (the sampler's default
    until set). A name that is no option raises ``KeyError`` listing them all, so ``--config.sampling.options.etaa=1``
    fails while the flags are parsed, naming the options."""

    def __getitem__(self, key):
        if isinstance(key, str) and "." not in key and key not in self:
            listing = "; ".join(f"{m}: {', '.join(o)}" for m, o in sorted(SAMPLER_OPTIONS.items()))
            raise KeyError(f"sampling.options.{key} is not an option of any sampler; the options of each "
                           f"sampling.method are: {listing}")
        return super().__getitem__(key)


def sampler_options() -> SamplerOptions:
    types = {name: typ for options in SAMPLER_OPTIONS.values() for name, typ in options.items()}
    return SamplerOptions({name: ml_collections.config_dict.placeholder(types[name]) for name in sorted(types)})


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.task = "diffusion"                # diffusion | classifier (the Fashion-MNIST feature classifier)
                                             # | noisy_classifier (p(y | x_t, t) for classifier guidance)
                                             # | adapt (a LoRA adapter of a trained model, config.adapt)
                                             # | clip (contrastive text-image encoders on captioned images)
                                             # | autoencoder (the KL autoencoder of latent diffusion)

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300000
    training.snapshot_freq = 50000           # periodic checkpoint + EMA sample snapshot
    training.checkpoint_freq = 50000
    training.snapshot_freq_for_preemption = 10000
    training.checkpoint_keep = 5
    training.log_freq = 50
    training.eval_freq = 100
    training.n_jitted_steps = 5              # optimizer steps per call of the loop (score-SDE's n_jitted_steps)
    training.multi_step = "auto"             # how they run: dispatch (one compiled step, called n times) | scan
                                             # (one lax.scan) | unroll (n traced copies, n times the compile time);
                                             # auto: dispatch on CPU (XLA:CPU runs a conv net's backward 20-40x
                                             # slower inside a loop), scan on GPU/TPU
    training.snapshot_sampling = True
    training.posthoc_ema_freq = 0            # > 0: write the power EMAs to WORKDIR/posthoc_ema every this many steps
                                             # (EDM2 post-hoc EMA; sampling.ema_sigma_rel picks a length afterwards)
    training.sde = "vpsde"                   # vpsde | subvpsde | vesde | cosine | rectified_flow | edm
    training.continuous = True
    training.loss = "dsm"                    # dsm | ddpm | ncsn | hybrid
    training.weighting = "simple"            # simple (sigma^2) | likelihood (g^2) | min_snr | edm | sigmoid
                                             # | flow_matching (training.loss="dsm"; see diffjax.core.weighting)
    training.min_snr_gamma = 5.0             # min_snr: gamma (Hang et al. 2023)
    training.sigmoid_bias = 2.0              # sigmoid: b of sigmoid(b - log-SNR) (Kingma & Gao 2023)
    training.time_sampling = "uniform"       # uniform | logit_normal (SD3) | edm_lognormal (EDM's ln sigma ~ N)
                                             # | importance (as training.importance_sampling=True)
    training.logit_normal_mean = 0.0         # logit_normal: t = T sigmoid(mean + std n)
    training.logit_normal_std = 1.0
    training.edm_p_mean = -1.2               # edm_lognormal: ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022)
    training.edm_p_std = 1.2
    training.importance_sampling = False
    training.reduce_mean = False
    training.t_eps = 1e-5
    training.label_dropout = 0.0             # classifier-free guidance (needs data.num_classes)
    training.vlb_weight = 1e-3               # hybrid loss lambda

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"                   # see diffjax.config_lib.SAMPLERS
    sampling.num_steps = 0                   # 0: the sampler's published default
    sampling.t_eps = 0.0                     # 0: the sampler's default
    # The samplers' keyword options (eta, snr, rtol, ...), each None (the sampler's default) until set, e.g.
    # --config.sampling.options.eta=1.0; an option the chosen sampler lacks is an error (SAMPLER_OPTIONS above)
    sampling.options = sampler_options()
    sampling.ema_sigma_rel = 0.0             # > 0: sample the post-hoc EMA of this length (needs posthoc_ema_freq)
    sampling.guidance_scale = 0.0            # classifier-free guidance w (class- or text-conditional models)
    sampling.prompt = ""                     # text-conditional models: the prompt of every sample
    sampling.prompt_file = ""                # ... or a file of prompts, one a line (default: one per class)
    sampling.classifier_scale = 0.0          # classifier guidance scale (0: off); labels y = arange(n) % classes
    sampling.adapter_scale = 1.0             # config.task="adapt": the LoRA's strength (0: the base model)
    sampling.extra_adapters = ()             # config.task="adapt": workdirs of more LoRA adapters of the same base,
    sampling.extra_adapter_scales = ()       # merged too, each at its scale (one per workdir; (): all 1.0)
    sampling.classifier_workdir = ""         # workdir of a config.task="noisy_classifier" run (same process)
    sampling.clip_scale = 0.0                # CLIP guidance scale of an unconditional model (0: off); the prompts:
    sampling.clip_workdir = ""               # ... sampling.prompt(_file); a clip.noise_aware=True run (same process)
    sampling.clip_denoised = False           # clip the predicted x0 to [-1, 1] (DDPM's sampler; diffusers' clip_sample)
    sampling.dynamic_threshold = 0.0         # Imagen's dynamic thresholding percentile (0: off)
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
    data.verify_files = True                 # TFDS: read every shard once before training (damage fails early,
                                             # naming the file; ~0.1 s per 10 MB); False for huge datasets
    data.num_classes = 0                     # > 0: class-conditional model
    data.crop = 0
    data.resize = "bicubic"                  # to data.image_size: bicubic (PIL) | area (integer factors: block means,
                                             # the downsampling of a cascade's stages, diffjax.core.cascade)
    data.exclude_classes = ()                # classes held out of the training split (Fashion-MNIST), e.g. (5,):
                                             # a concept the model never saw, for adaptation (config.task="adapt")

    config.model = model = ml_collections.ConfigDict()
    model.name = "ddpmpp_cifar10"            # see diffjax.config_lib.MODELS
    model.overrides = ml_collections.ConfigDict()  # keyword overrides of the preset's fields
    model.parameterization = "eps"           # eps | x0 | v | score | edm | velocity (u = a' x0 + s' eps)
    model.sigma_data = 0.5                   # EDM's data std (parameterization "edm", training.weighting "edm")
    model.time_input = ""                    # "": make_score_fn's default
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.ema_schedule = "debiased"          # debiased (optax.ema(debias=True)) | warmup (min(rate, (1+n)/(10+n)))
                                             # | power_warmup (min(rate, 1-(1+n)^-ema_power), diffusers' EMA warm-up)
                                             # | constant
    model.ema_power = 2 / 3                  # power_warmup's exponent (diffusers' EMAModel default)
                                             # | constant (score-SDE: keeps rate^n of the initialisation)
    model.posthoc_sigma_rels = (0.05, 0.10)  # EDM2 power EMAs tracked when training.posthoc_ema_freq > 0
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.edm_sigma_min = 0.002              # training.sde="edm": EDM's sigma range (Karras et al. 2022)
    model.edm_sigma_max = 80.0
    model.num_scales = 1000

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.lr_decay = "constant"              # constant | cosine (to lr_final x lr at training.n_iters)
                                             # | inverse_sqrt (lr / sqrt(max(step / lr_ref_steps, 1)), EDM2)
    optim.lr_final = 0.0
    optim.lr_ref_steps = 70000               # EDM2's t_ref (70k iterations at batch 2048)
    optim.grad_clip = 1.0

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.feature_net = "auto"            # auto (classifier for 28x28x1 data, else inception) | inception | classifier
    evaluate.inception_weights = ""          # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .npz)
    evaluate.allow_random_inception = False  # no weights: random-weight Inception (tests / smoke runs only)
    evaluate.classifier_workdir = ""         # workdir of a --config configs/fashion_mnist_classifier.py run
    evaluate.num_samples = 10000             # samples generated for FID / KID / IS
    evaluate.batch_size = 500                # samples per sampler call (one eval/samples_STEP_LABEL_*.npz each)
    evaluate.feature_batch_size = 100        # images per feature-network call
    evaluate.stats_dir = ""                  # cache of reference statistics; "": WORKDIR/stats
    evaluate.reference_split = "test"
    evaluate.reference_num_examples = 0      # first examples of the split used as reference; 0: all
    evaluate.kid_subsets = 100
    evaluate.kid_subset_size = 1000
    evaluate.score_splits = 10               # splits of the Inception / classifier score
    evaluate.bpd_num_repeats = 5             # passes over the examples (fresh dequantization + Hutchinson noise)
    evaluate.bpd_num_examples = 1000         # first examples of the test split (toy data: fresh samples)
    evaluate.bpd_batch_size = 100
    evaluate.likelihood_trace = "hutchinson"  # hutchinson | exact
    evaluate.likelihood_rtol = 1e-5
    evaluate.likelihood_atol = 1e-5
    evaluate.likelihood_t_eps = 1e-5
    evaluate.vlb_variance = "beta"           # fixed-variance DDPM bound: beta | posterior (learned sigma: ignored)
    evaluate.vlb_clip_denoised = True        # DDPM bound with x0 clipped to [-1, 1] (Ho et al., improved DDPM)

    config.classifier = clf = ml_collections.ConfigDict()  # config.task = "classifier"
    clf.num_train_examples = 0               # first examples of the train split; 0: all
    clf.num_test_examples = 0                # first examples of the test split for the accuracy; 0: all
    clf.epochs = 3.0
    clf.batch_size = 128
    clf.learning_rate = 1e-3
    clf.log_every = 100

    # config.task = "noisy_classifier": p(y | x_t, t) on training.sde's process (t ~ U[training.t_eps, T), the
    # score network's time input model.time_input), optimizer optim.*, data data.*; a NoiseConditionalClassifier
    config.noisy_classifier = ncl = ml_collections.ConfigDict()
    ncl.ch = 32
    ncl.ch_mult = (1, 2, 2)
    ncl.num_res_blocks = 1
    ncl.attn_resolutions = ()
    ncl.dropout = 0.0
    ncl.embedding_type = "positional"
    ncl.norm_groups = 8
    ncl.num_classes = 0                      # 0: data.num_classes, else the dataset's (fashion_mnist: 10)
    ncl.steps = 3000
    ncl.batch_size = 128
    ncl.log_every = 100
    ncl.num_train_examples = 0               # first examples of the train split; 0: all
    ncl.num_test_examples = 2000             # first examples of the test split for the accuracy; 0: all
    ncl.num_noise_bins = 10                  # test accuracy in this many equal bins of t in [training.t_eps, T]
    ncl.eval_batch_size = 500

    # text-conditional diffusion (config_lib._text): the batches' y are caption token ids (one training caption per
    # image and step); the backbone of model.name gets context blocks (UNet: cross_attention; DiT: cross_attention
    # or mmdit); data.num_classes must be 0
    config.text = txt = ml_collections.ConfigDict()
    txt.conditioning = ""                    # "" (off) | cross_attention | mmdit
    txt.caption_dropout = 0.1                # empty captions (the null condition) for classifier-free guidance
    txt.max_length = 16                      # tokens per caption with BOS / EOS
    txt.width = 64                           # the text encoder trained jointly (unless encoder_workdir)
    txt.depth = 2
    txt.num_heads = 4
    txt.pool = "eos"
    txt.encoder_workdir = ""                 # a config.task="clip" workdir: its text encoder, frozen

    # config.task = "clip": a text encoder and an image encoder trained contrastively (CLIP) on Fashion-MNIST and
    # its templated captions (diffjax.data.captions), optimizer optim.*; with noise_aware the image encoder sees x_t
    # on training.sde's process (t ~ U[training.t_eps, T), time input model.time_input), for CLIP guidance
    config.clip = clp = ml_collections.ConfigDict()
    clp.embed_dim = 64                       # joint embedding width
    clp.init_temperature = 0.07              # softmax temperature at initialisation (learned)
    clp.noise_aware = False
    clp.consistent_positives = True          # every caption of the batch that fits an image is its positive
    clp.max_length = 16                      # tokens per caption with BOS / EOS (the longest caption has 13 words)
    clp.text_width = 64
    clp.text_depth = 2
    clp.text_heads = 4
    clp.pool = "eos"                         # eos | mean: the text embedding from the EOS token or the token mean
    clp.ch = 16                              # image tower (a NoiseConditionalClassifier trunk)
    clp.ch_mult = (1, 2, 2)
    clp.num_res_blocks = 1
    clp.norm_groups = 8
    clp.steps = 2000
    clp.batch_size = 128
    clp.log_every = 100
    clp.num_train_examples = 0               # first examples of the train split; 0: all
    clp.num_test_examples = 2000             # first examples of the test split for retrieval; 0: all
    clp.eval_batch_size = 500
    clp.num_noise_bins = 5                   # noise_aware: retrieval at the centres of this many bins of t
    # config.task = "autoencoder": the KL autoencoder of latent diffusion (diffusers' AutoencoderKL layout, down factor
    # 2 ** (len(block_out_channels) - 1)) trained on data.* with training.* (batch, steps, checkpoints), optim.* and
    # the EMA of model.ema_rate / model.ema_schedule; reconstruction + kl_weight x KL (no adversarial or perceptual
    # term); --mode eval (and the end of training) reports PSNR and the Frechet distance of reconstructions
    config.autoencoder = ae = ml_collections.ConfigDict()
    ae.block_out_channels = (32, 64, 64)
    ae.layers_per_block = 1
    ae.latent_channels = 4
    ae.norm_num_groups = 16
    ae.mid_attention = True
    ae.reconstruction_loss = "l1"           # l1 | l2 (per pixel, summed over the image)
    ae.kl_weight = 1e-6                      # beta of the KL to N(0, I) (latent diffusion's KL-reg., 1e-6)
    ae.sample_posterior = True               # decode a posterior sample in training (False: its mean)
    ae.eval_num_examples = 10000             # first test images reconstructed by --mode eval; 0: all
    ae.eval_batch_size = 500
    ae.eval_at_end = True                    # --mode train ends with --mode eval's report

    # Latent diffusion (Rombach et al. 2022; diffjax/run/_latent.py): with autoencoder_workdir set, the model trains
    # and samples on the latents of that workdir's frozen autoencoder (a config.task="autoencoder" run, EMA
    # parameters of its newest checkpoint); --mode sample / eval decode the samples to images
    config.latent = lat = ml_collections.ConfigDict()
    lat.autoencoder_workdir = ""             # "": pixel space
    lat.encode = "mean"                      # mean | sample: the posterior's mean, or a draw of it for each batch
    lat.scale_factor = 0.0                   # latents x this; 0: 1 / std of the encoded training latents, estimated
                                             # once and stored in WORKDIR/latent.json (latent diffusion's choice)

    # Few-step generation (diffjax/run/_distill.py): with distill.method set, --mode train distils / trains the
    # student (same network as model.*, on training.sde) and --mode sample samples it with its few steps
    config.distill = dst = ml_collections.ConfigDict()
    dst.method = ""                          # "" | progressive | consistency_distillation | consistency_training
                                             # | meanflow | shortcut | scm | scm_distillation
    dst.teacher_workdir = ""                 # the teacher's run directory (newest checkpoint's EMA parameters)
    dst.teacher_config = ""                  # the teacher's config file; "": this config's model / training.sde
    dst.t_eps = 0.0                          # boundary / last time of every distillation function; 0: the process's
    # progressive distillation (Salimans & Ho 2022): rounds halve start_steps down to final_steps
    dst.start_steps = 64                     # teacher DDIM steps of round 1 (its student takes half)
    dst.final_steps = 1
    dst.steps_per_round = 5000
    dst.time_grid = "default"                # the DDIM grid (config_lib.TIME_GRIDS; default: the process's own)
    dst.parameterization = ""                # the student network's output; "": the teacher's (round 1 starts
                                             # as the teacher exactly); x0 | v (Salimans & Ho's advice) | ...
    # consistency models (Song et al. 2023; iCT, Song & Dhariwal 2024)
    dst.num_scales = 18                      # consistency distillation: N grid times (Karras grid)
    dst.ode_step = "heun"                    # consistency distillation: teacher ODE step, euler | heun
    dst.target_ema = 0.0                     # consistency distillation: EMA rate mu of the target f_theta^-; 0: the
                                             # stop-gradient student (iCT's choice, Song & Dhariwal 2024). Unlike
                                             # Song et al. 2023, whose CD keeps an EMA target (mu = 0.95, Table 3):
                                             # set 0.95 to follow the paper
    dst.s0 = 10                              # consistency training: iCT's curriculum N(k) from s0 to s1 intervals
    dst.s1 = 1280
    dst.total_steps = 0                      # consistency training: K of the curriculum; 0: training.n_iters
    dst.rho = 7.0
    dst.p_mean = -1.1                        # consistency training and scm: log-normal noise levels (sCM: -1, 1.4)
    dst.p_std = 2.0
    dst.metric = "pseudo_huber"              # pseudo_huber | l2
    dst.weighting = ""                       # "": unit (distillation) / ict (training); unit | ict
    dst.sample_steps = 1                     # consistency sampling: 1 (one step) or multistep on the Karras grid;
                                             # flow maps: equal jumps from T to 0
    # flow maps u(x_t, t, s) trained from scratch (diffjax.distill.flow_map): meanflow | shortcut
    dst.time_sampling = "logit_normal"       # meanflow's (t, s): logit_normal (-0.4, 1; MeanFlow) | uniform
    dst.adaptive_power = 1.0                 # meanflow's adaptive loss weight 1 / (||err||^2 + c)^p; 0: plain MSE
    dst.shortcut_levels = 7                  # shortcut: jump lengths 2d, d = T / 2^k, k = 1..levels
    dst.time_label_scale = 50.0              # flow maps: the network sees c t / T and c (t - s) / T. MeanFlow
                                             # differentiates through these labels (jax.jvp in t): with score-SDE's
                                             # c = 999 the ring's 1-step energy distance was 1.56, with 50 0.0017
                                             # (two data draws: 0.0018), with 1 0.0069 (2026-12-07); scm: the
                                             # network sees c t / T of TrigFlow's time
    # continuous-time consistency (sCM, Lu & Song 2025; distill.method=scm, training.sde=trigflow)
    dst.tangent_warmup = 0                   # steps of the tangent warm-up r: 0 -> 1 (0: r = 1 from the start)
    dst.tangent_normalization = 0.1          # the tangent g divided by ||g|| + this
    dst.mid_time = 1.1                       # sample_steps > 1: re-noising times evenly from this down
    dst.tune_teacher = False                 # scm_distillation: the student is the teacher's network, from its
                                             # weights (its velocity converted to TrigFlow: SANA-Sprint's transform)

    # Cascaded diffusion (Ho et al. 2021): with cascade.low_res_size > 0 this model is the super-resolution stage,
    # conditioned on its image downsampled to that size (area) and upsampled back (bilinear), by channel
    # concatenation; --mode sample / eval then run the whole cascade from the base model in cascade.base_workdir
    config.cascade = cascade = ml_collections.ConfigDict()
    cascade.low_res_size = 0                 # 0: not a super-resolution stage
    cascade.base_workdir = ""                # the base model's --workdir (its config from its config.json)
    cascade.aug_level_max = 0.0              # noise conditioning augmentation in training: the condition corrupted
                                             # by training.sde's process at a level s ~ U[0, max] (a time in [0, T])
                                             # that the network is told; 0: no augmentation
    cascade.sampling_aug_level = 0.0         # the level at sampling, in [0, aug_level_max]
    cascade.sampling_low_res = "base"        # --mode sample / eval conditions on: base (the base model's samples:
                                             # the cascade) | train (the first training images downsampled: the
                                             # super-resolution stage alone, no base model)

    config.distributed = dist = ml_collections.ConfigDict()
    dist.initialize = False                  # call jax.distributed.initialize (multi-host)
    dist.coordinator_address = ""
    dist.num_processes = 0
    dist.process_id = -1
    dist.initialization_timeout_s = 300      # jax.distributed: wait this long for every process to join
    dist.heartbeat_timeout_s = 100           # a process silent this long is dead: the others exit with an error
    dist.fsdp = 1                            # size of the "fsdp" mesh axis
    dist.fsdp_min_size = 2 ** 18
    # config.task = "adapt": a LoRA adapter (diffjax.adapt) of the model this config describes, trained in
    # adapt.base_workdir; only the adapter is trained and checkpointed (diffjax/run/_adapt.py)
    config.adapt = ad = ml_collections.ConfigDict()
    ad.method = "lora"                       # lora | dreambooth | textual_inversion (text-conditional bases)
    ad.base_workdir = ""                     # the trained base model's workdir (read-only)
    ad.images = ""                           # the new concept: an .npz (uint8 x, (N, H, W, C)) or a folder of PNGs
    ad.label = -1                            # class-conditional bases: the class the images are taught under
    ad.prompt = ""                           # text-conditional bases: the caption the images are taught under
    ad.prior_prompt = ""                     # dreambooth: the class prompt of the prior images (e.g. "a bag")
    ad.prior_weight = 1.0                    # dreambooth: lambda of the prior-preservation loss
    ad.num_prior_images = 64                 # dreambooth: images the frozen base draws once for prior_prompt
    ad.dreambooth_lora = True                # dreambooth: train a LoRA adapter (False: fine-tune every parameter)
    ad.new_word = ""                         # textual_inversion: the word added to the vocabulary (e.g. "zwx")
    ad.init_word = ""                        # textual_inversion: its embedding starts as this word's ("": Gaussian)
    ad.rank = 4
    ad.alpha = 0.0                           # the update's scale alpha / rank; 0: alpha = rank
    ad.targets = ()                          # kernel path patterns (fnmatch, e.g. "*attn*"); (): every Dense / Conv
    ad.batch_size = 16
    ad.n_iters = 300
    ad.lr = 1e-3
    ad.ema_rate = 0.99                       # bias-corrected EMA of the adapter (what --mode sample uses)
    ad.log_freq = 50
    ad.checkpoint_freq = 100
    return config
