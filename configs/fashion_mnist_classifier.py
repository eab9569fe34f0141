"""The Fashion-MNIST feature classifier used by ``--mode eval`` (its features give the Frechet distance, its logits
the classifier score): ``--mode train`` trains it on the train split, writes ``WORKDIR/classifier_params.npz`` and
appends the test accuracy to ``WORKDIR/metrics.jsonl``. Point a diffusion config at it with
``--config.eval.classifier_workdir=WORKDIR``. A few minutes on 2 CPU cores, about 91% test accuracy.
"""
from configs import default


def get_config():
    config = default.get_config()
    config.task = "classifier"
    d = config.data
    d.dataset = "fashion_mnist"
    d.image_size = 28
    d.num_channels = 1
    d.random_flip = False
    c = config.classifier
    c.epochs = 4.0
    c.batch_size = 128
    c.learning_rate = 1e-3
    c.log_every = 200
    return config
