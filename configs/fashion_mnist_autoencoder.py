"""The KL autoencoder of latent diffusion (Rombach et al. 2022) on Fashion-MNIST, diffusers' AutoencoderKL layout:
levels (32, 64, 64) with one residual block each (down factor 4: 28x28x1 images -> 7x7x4 latents), a middle
attention block, L1 reconstruction + 1e-6 KL (no adversarial or perceptual term), Adam at 1e-3 with cosine decay,
EMA 0.999. A few minutes on 2 CPU cores:

    python -m diffjax.main --config configs/fashion_mnist_autoencoder.py --workdir /tmp/fmnist_ae \
        --config.eval.classifier_workdir=experiments/results/artifacts

ends with the reconstruction floor of a latent model on the first 10,000 test images (WORKDIR/autoencoder_eval.json:
PSNR, and the Frechet distance of the reconstructions in the committed feature classifier's space beside that of the
originals); --mode eval recomputes it. A latent diffusion config (configs/fashion_mnist_latent.py) names this workdir
in latent.autoencoder_workdir. Down factor 2 (14x14x4 latents): --config.autoencoder.block_out_channels="(32, 64)".
"""
from configs import default


def get_config():
    config = default.get_config()
    config.task = "autoencoder"
    d = config.data
    d.dataset = "fashion_mnist"
    d.image_size = 28
    d.num_channels = 1
    d.random_flip = False
    a = config.autoencoder
    a.block_out_channels = (32, 64, 64)
    a.layers_per_block = 1
    a.latent_channels = 4
    a.norm_num_groups = 16
    a.mid_attention = True
    a.reconstruction_loss = "l1"
    a.kl_weight = 1e-6
    a.sample_posterior = True
    a.eval_num_examples = 10000
    a.eval_batch_size = 500
    t = config.training
    t.batch_size = 64
    t.n_iters = 1500
    t.n_jitted_steps = 1
    t.log_freq = 50
    t.checkpoint_freq = 500
    t.snapshot_freq_for_preemption = 100
    t.snapshot_sampling = False
    m = config.model
    m.ema_rate = 0.999
    m.ema_schedule = "debiased"
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    o.lr_decay = "cosine"
    o.lr_final = 0.0
    o.grad_clip = 1.0
    return config
