"""Input pipelines: generated 2-D toys, Fashion-MNIST IDX files, TFDS datasets by name.

Batches are deterministic in ``(seed, step)`` (a resumed run sees the same data) and each JAX process produces
only its own rows of the global batch.
"""
from diffjax.data._images import (FASHION_MNIST_DIR, dequantize, from_unit, load_fashion_mnist, load_tfds,
                                  random_flip, to_unit, verify_array_record_shard)
from diffjax.data._pipeline import ImageData, ToyData
from diffjax.data._toy import TOY_DATASETS, checkerboard, ring8, swiss_roll, toy_sample, two_moons

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "load_tfds", "verify_array_record_shard", "to_unit", "from_unit",
           "random_flip", "dequantize", "ToyData", "ImageData", "TOY_DATASETS", "ring8", "swiss_roll", "checkerboard",
           "two_moons", "toy_sample"]
